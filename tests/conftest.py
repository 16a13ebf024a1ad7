"""Shared test helpers: run a recipe as a user would, in a subprocess, and read its results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def run_recipe(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m recipes.NAME ARGS...` from the repository root."""
    return subprocess.run([sys.executable, "-m", f"recipes.{name}", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def smoke(name: str, out: Path, *args: str) -> dict:
    """A --smoke run that must succeed; returns its results.json."""
    done = run_recipe(name, "--smoke", "--out", str(out), *args)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"] == name
    assert {"dataset", "metrics", "seconds", "args", "commit", "versions"} <= set(results)
    return results


@pytest.fixture
def recipe_runner():
    return run_recipe
