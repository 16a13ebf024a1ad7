"""The project installs from a clean export (`pip install .`), and the installed recipes run
from any folder, not only from the repository root."""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def _export(destination: Path) -> Path:
    """The files git would commit (tracked or new, not ignored): what a fresh clone has."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True)
    files = listed.stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is skipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def test_installs_from_a_clean_export_and_runs_outside_the_repository(tmp_path):
    export = _export(tmp_path / "export")
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(export)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (site / "common" / "data.py").is_file()
    assert (site / "recipes" / "backprop" / "backprop.py").is_file()
    # the shipped generic backbone and its provenance record travel with the package
    assert (site / "common" / "weights" / "generic_backbone.weights.h5").stat().st_size > 100_000
    assert (site / "common" / "weights" / "generic_backbone.json").is_file()
    metadata = next(site.glob("cnn_recipes-*.dist-info")) / "METADATA"
    text = metadata.read_text()
    assert "Requires-Python: >=3.11" in text
    assert "Requires-Dist: tensorflow==" in text  # runtime pins come from requirements.txt
    assert 'Requires-Dist: pytest==' in text and 'extra == "dev"' in text  # dev tools apart

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    found = subprocess.run([sys.executable, "-c", "import common, recipes; print(common.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()).parent == site / "common"
    helped = subprocess.run([sys.executable, "-m", "recipes.backprop", "--help"], cwd=elsewhere,
                            env=env, capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "usage: python -m recipes.backprop" in helped.stdout


def test_runtime_and_development_pins_are_separate_and_exact():
    runtime = (ROOT / "requirements.txt").read_text().splitlines()
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    for lines in (runtime, dev):
        pins = [line for line in lines if line.strip() and not line.startswith("#")]
        assert pins and all("==" in line for line in pins), pins
    runtime_names = {line.split("==")[0] for line in runtime if "==" in line}
    assert {"tensorflow", "keras", "numpy", "pillow"} <= runtime_names
    assert not runtime_names & {"pytest", "ruff", "ipykernel", "pytest-xdist"}


def test_the_build_backend_pin_is_the_one_the_venv_installs():
    """The packaging test builds without isolation, with the venv's setuptools: an older one
    (Python 3.11's venv ships 65.5) rejects the SPDX `license` string in pyproject.toml."""
    import tomllib

    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    dev = [line.split("#")[0].strip() for line in
           (ROOT / "requirements-dev.txt").read_text().splitlines()]
    assert all(pin in dev for pin in backend), (backend, dev)
