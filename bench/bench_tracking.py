"""Tracking speed on the CPU: frames per second of every tracker, side by side, on the same
synthetic sequences.

    .venv/bin/python bench/bench_tracking.py [--model runs/tracking/model.keras] [--videos 16]

Writes `--videos` synthetic test videos (the eight challenges in turn, 60 frames of 128x128)
in the GOT-10k layout, then runs the recipe's `evaluate` on them: the Siamese tracker of
`--model` and the classical baselines (template matching, CSRT, KCF) one after the other in
one process, so the ratios hold on a shared machine. Frames per second count tracking only
(frame reading excluded, the Siamese tracker's graph traced before timing its first video
included: a long video amortises it). Speed does not depend on how well the model was trained:
without a trained `--model`, a `--smoke` model is trained first (about a minute).

Writes bench/out/tracking_fps.json (with the success AUC of each tracker on these videos) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import video  # noqa: E402

OUT = ROOT / "bench" / "out"


def recipe(*flags: str) -> None:
    done = subprocess.run([sys.executable, "-m", "recipes.tracking", *flags], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"python -m recipes.tracking {' '.join(flags)} failed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "tracking" / "model.keras"))
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--length", type=int, default=60)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    model = Path(args.model)
    if not model.is_file():
        print(f"no model at {model}: training a smoke model (speed does not depend on training)")
        recipe("--smoke", "--out", str(OUT / "tracking_smoke"))
        model = OUT / "tracking_smoke" / "model.keras"
    folder = OUT / "tracking_videos"
    for i, sequence in enumerate(video.make_sequences(args.videos, args.length, 128,
                                                      seed=args.seed)):
        video.write_sequence(sequence, folder / f"{i:03d}_{sequence.challenge}")
    recipe("evaluate", "--model", str(model), "--dataset", f"folder:{folder}", "--out",
           str(OUT / "tracking_evaluate"))
    metrics = json.loads((OUT / "tracking_evaluate" / "results.json").read_text())["metrics"]
    rows = {name: {"fps": m["fps"], "success_auc": round(m["success_auc"], 4)}
            for name, m in metrics.items()}
    record = {"model": str(model), "videos": args.videos, "frames": args.videos * args.length,
              "frame_size": 128, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "trackers": rows}
    (OUT / "tracking_fps.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n{'tracker':<20}{'frames/s':>10}{'success AUC':>13}")
    for name, row in rows.items():
        print(f"{name:<20}{row['fps']:>10.1f}{row['success_auc']:>13.3f}")
    print(f"wrote {OUT / 'tracking_fps.json'}")


if __name__ == "__main__":
    main()
