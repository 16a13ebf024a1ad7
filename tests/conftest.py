"""Shared test helpers: run a recipe as a user would, in a subprocess, and read its results."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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
