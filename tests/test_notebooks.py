"""Notebooks are generated from the recipe scripts: they must be in sync, and they must run."""

import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from conftest import notebook_covered
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.parent.name for p in ROOT.glob("recipes/*/*.py") if p.stem == p.parent.name)


def _cells(notebook):
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_every_recipe_has_a_notebook():
    assert RECIPES, "no recipes found"
    missing = [r for r in RECIPES if not (ROOT / "notebooks" / f"{r}.ipynb").is_file()]
    assert not missing, f"run `make notebooks`: missing {missing}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_notebook_is_in_sync_with_script(recipe):
    script = jupytext.read(ROOT / "recipes" / recipe / f"{recipe}.py")
    notebook = nbformat.read(ROOT / "notebooks" / f"{recipe}.ipynb", as_version=4)
    assert _cells(notebook) == _cells(script), (
        f"notebooks/{recipe}.ipynb is out of date: run `make notebooks`")
    # Jupyter and Colab open it with a Python 3 kernel without asking
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"notebooks/{recipe}.ipynb has no python3 kernelspec: run `make notebooks`")


# A recipe whose own test module runs its smoke run as the notebook (conftest.run_notebook) has
# its notebook executed there; the others are executed here. Either way every notebook runs.
NOT_COVERED = [r for r in RECIPES if not notebook_covered(r)]


@pytest.mark.parametrize("recipe", NOT_COVERED)
def test_notebook_runs_in_smoke_mode(recipe, tmp_path, monkeypatch):
    notebook = nbformat.read(ROOT / "notebooks" / f"{recipe}.ipynb", as_version=4)
    monkeypatch.setenv("RECIPE_ARGS", f"--smoke --out {tmp_path / 'out'}")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    assert (tmp_path / "out" / "results.json").is_file()
