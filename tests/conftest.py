"""Shared test helpers: run a recipe as a user would, in a subprocess, and read its results."""

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# A shell that starts a job in the background (`make test &`, CI runners) ignores SIGINT, and
# children inherit "ignored": the recipes would then never see the Ctrl-C the resume tests
# press. A handler here (not "ignored") becomes the default disposition in every child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def run_recipe(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m recipes.NAME ARGS...` from the repository root."""
    return subprocess.run([sys.executable, "-m", f"recipes.{name}", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def smoke(name: str, out: Path, *args: str, notebook: bool = False) -> dict:
    """A --smoke run that must succeed; returns its results.json. notebook=True runs it as
    the recipe's notebook (run_notebook) instead of `python -m`."""
    done = (run_notebook(name, out, *args) if notebook
            else run_recipe(name, "--smoke", "--out", str(out), *args))
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"] == name
    assert {"dataset", "metrics", "seconds", "args", "commit", "versions"} <= set(results)
    return results


@pytest.fixture
def recipe_runner():
    return run_recipe


@pytest.fixture
def run_here(monkeypatch, capsys):
    """run_recipe's twin for input that must be refused: `python -m recipes.NAME ARGS...`
    through the same entry point (cli.run_script: a user error is one line on stderr and exit
    2), but in this process, which has TensorFlow loaded already: no new interpreter and
    TensorFlow import (10-15 s) per case. Any other exception is raised, as a traceback is
    printed by a real run. Returns what run_recipe returns."""
    from common import cli

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        returncode = 0
        with monkeypatch.context() as patch:
            patch.chdir(ROOT)  # as in run_recipe: the setup cell finds the repository from here
            patch.setattr(sys, "argv", [f"recipes.{name}", *args])
            try:
                cli.run_script(str(ROOT / "recipes" / name / "__main__.py"), f"{name}.py")
            except SystemExit as exit_:
                code = exit_.code
                returncode = code if isinstance(code, int) else int(code is not None)
        printed = capsys.readouterr()
        return subprocess.CompletedProcess([name, *args], returncode, printed.out, printed.err)

    return run


def run_notebook(name: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """Execute notebooks/NAME.ipynb with RECIPE_ARGS="--smoke --out OUT ARGS...", as Jupyter
    would: one run that checks both the recipe and its notebook (tests/test_notebooks.py then
    leaves this notebook out). Returns what run_recipe returns, built from the cell outputs:
    returncode 0, or 1 with the failing cell's error in stderr."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    flags = ["--smoke", "--out", str(out), *args]
    returncode, error = 0, ""
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits this process's environment
        env.setenv("RECIPE_ARGS", shlex.join(flags))
        env.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        env.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            NotebookClient(notebook, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        except CellExecutionError as err:
            returncode, error = 1, str(err)
    streams = {"stdout": [], "stderr": []}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                streams[output["name"]].append(output["text"])
    return subprocess.CompletedProcess(["notebook", name, *flags], returncode,
                                       "".join(streams["stdout"]),
                                       "".join(streams["stderr"]) + error)


def notebook_covered(recipe: str) -> bool:
    """Whether tests/test_recipe_RECIPE.py runs the recipe's notebook (through run_notebook or
    smoke(..., notebook=True)): tests/test_notebooks.py then need not run it again."""
    path = ROOT / "tests" / f"test_recipe_{recipe}.py"
    if not path.is_file():
        return False
    source = path.read_text()
    return (f'run_notebook("{recipe}"' in source
            or re.search(rf'smoke\(\s*"{recipe}"[^)]*notebook=True', source) is not None)


# A module-scoped fixture (one smoke run shared by several tests) runs once in every xdist
# worker that runs one of its tests: with `-n 2 --dist load` a fixture that trains would train
# twice. So `-n N` sends the tests of a module that use such a fixture to one worker, as one
# unit; every other test is still sent on its own. (Not xdist_group: with pytest 9 xdist can no
# longer add the group to the test ids, so `--dist loadgroup` groups nothing.)
def shared_fixture_tests(path: Path) -> set[str]:
    """Names of the test functions in `path` that use (directly or through another fixture)
    a fixture of module, package or session scope defined there."""
    tree = ast.parse(path.read_text())
    functions = [f for f in tree.body if isinstance(f, ast.FunctionDef)]

    def scope(function) -> str | None:
        for decorator in function.decorator_list:
            for keyword in getattr(decorator, "keywords", []):
                if keyword.arg == "scope" and isinstance(keyword.value, ast.Constant):
                    return keyword.value.value
        return None

    fixtures = {f.name: f for f in functions if not f.name.startswith("test_")}
    shared = {name for name, f in fixtures.items() if scope(f) in ("module", "package",
                                                                     "session")}
    grew = True
    while grew:  # a function-scoped fixture built on a shared one shares it too
        users = {name for name, f in fixtures.items()
                 if {a.arg for a in f.args.args} & shared} - shared
        shared |= users
        grew = bool(users)
    return {f.name for f in functions
            if f.name.startswith("test_") and {a.arg for a in f.args.args} & shared}


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None  # another --dist was asked for explicitly
    from xdist.scheduler import LoadScopeScheduling

    grouped = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        for name in shared_fixture_tests(path):
            grouped[(path.name, name)] = path.relative_to(ROOT).as_posix()

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, rest = nodeid.partition("::")
            return grouped.get((Path(path).name, rest.split("[")[0]), nodeid)

    return SharedFixtureScheduling(config, log)


def stripe_classes(n_per_class: int, shape: tuple, seed: int):
    """A tiny real-looking classification set: class c is a noisy pattern (horizontal,
    vertical, diagonal stripes or a checkerboard); uint8 grayscale (N, H, W) and labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class)
    r, c = np.mgrid[: shape[0], : shape[1]]
    patterns = np.stack([np.sin(1.2 * r), np.sin(1.2 * c), np.sin(0.9 * (r + c)),
                         np.sin(1.2 * r) * np.sin(1.2 * c)])
    x = 128 + 90 * patterns[y] + rng.normal(0, 20, (len(y), *shape))
    return np.clip(x, 0, 255).astype(np.uint8), y
