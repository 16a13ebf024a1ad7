"""`results.json`: what a run measured, with the command, commit and versions to reproduce it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from common import in_notebook

PACKAGES = ("tensorflow", "keras", "keras-hub", "keras-cv", "numpy", "scikit-learn")


def commit() -> str:
    """The git commit of the code that ran, with '-dirty' when it had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The code that ran is the code at the start of the run: recipes import this module first thing,
# and a long run can outlive a commit made meanwhile (then both are recorded).
COMMIT_AT_START = commit()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write(out: str | Path, recipe: str, dataset: str, metrics: dict, seconds: float,
          args: dict | None = None, **extra) -> Path:
    """Write OUT/results.json atomically (a crash never leaves half a file) and return its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": recipe,
        "dataset": dataset,
        "metrics": metrics,
        "seconds": round(float(seconds), 1),
        # CPU time of this process (all threads): comparable even when the machine is shared
        "cpu_seconds": round(time.process_time(), 1),
        "args": {k: v for k, v in (args or {}).items() if _jsonable(v)},
        "command": " ".join(["python -m recipes." + recipe, *sys.argv[1:]])
        if not in_notebook() else None,
        "commit": COMMIT_AT_START,
        **({"commit_at_end": end} if (end := commit()) != COMMIT_AT_START else {}),
        "versions": versions(),
        **extra,
    }
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def _rows(metrics: dict, prefix: str = ""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _rows(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def summary(metrics: dict, title: str = "results") -> str:
    """A plain-text table of (possibly nested) metrics; variants become 'variant.metric' rows."""
    rows = list(_rows(metrics))
    width = max([len(k) for k, _ in rows] + [len(title)])
    lines = [title, "-" * (width + 12)]
    for key, value in rows:
        if isinstance(value, float):
            shown = f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
        else:
            shown = str(value)
        lines.append(f"{key:<{width}}  {shown:>10}")
    return "\n".join(lines)
