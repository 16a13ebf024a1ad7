"""Detection: the detection recipe against Ultralytics YOLOv8n from scratch, same data, same score.

    make bench-yolo-env                                   # once: bench/.venv-yolo (Ultralytics)
    .venv/bin/python bench/bench_detection.py             # export, ours, baseline, score
    .venv/bin/python bench/bench_detection.py --skip-ours --minutes 2 --num-examples 200

1. `python -m common.export_coco` writes the recipe's synthetic:scenes split (default 1500
   scenes of 128 px, seed 0, 20 % test) as COCO JSON + PNG to bench/out/detection_coco/.
2. Our recipe trains on train.json and is scored on test.json (`python -m recipes.detection`,
   outputs in bench/out/detection_ours/); its results.json gives the metrics and cpu_seconds.
3. The baseline gets the same CPU time: bench/yolov8n_baseline.py (in bench/.venv-yolo) trains
   YOLO("yolov8n.yaml") from random weights with `threads` torch threads (default: every core,
   as TensorFlow uses) for a budget of our cpu_seconds / (60 * threads) minutes, counted on a
   clock of the baseline's CPU seconds / threads (on an idle machine, its wall clock; on a
   busy one the training takes longer, not less CPU). Both sides' measured CPU seconds are
   reported, so the match can be checked.
4. The baseline's detections are scored here with common.metrics.coco_detection on test.json:
   the same pycocotools code as the recipe. They are those of Ultralytics' validator (conf
   0.001, NMS IoU 0.7, a box may keep several classes, 100 per image: how Ultralytics scores
   YOLO on COCO); the last column scores model.predict's (one class per box) instead.

Writes bench/out/detection_vs_yolov8n.json and prints a table side by side. With --skip-ours
the last bench/out/detection_ours/results.json is reused if it was made on the same export
(else give --minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
YOLO_PYTHON = ROOT / "bench" / ".venv-yolo" / "bin" / "python"
KEYS = ("map", "map_50", "map_75", "ar_100", "map_small", "map_medium", "map_large", "recall_50")


def run(command: list[str], log: Path) -> tuple[float, float]:
    """Run `command` from the repository root, its output to the terminal and `log`.

    Returns (wall seconds, CPU seconds of the command and its children)."""
    print("$", shlex.join(command), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as f:
        # idle OpenMP threads sleep instead of spinning: on a shared machine torch's spinning
        # threads burn CPU seconds (the baseline's budget clock) without training
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        for line in process.stdout:
            sys.stdout.write(line)
            f.write(line)
    if process.wait():
        raise SystemExit(f"error: {command[0]} ... exited {process.returncode}; log: {log}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def pick(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in KEYS}


def fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) and value < 10 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=1500, help="scenes exported in all")
    parser.add_argument("--image-size", type=int, default=128,
                        help="scene side in pixels, also both detectors' input size (x32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=OUT / "detection_coco",
                        help="folder for the COCO export")
    parser.add_argument("--skip-ours", action="store_true",
                        help="do not train the recipe (reuse its last results.json, if any)")
    parser.add_argument("--ours-args", default="--occlusion none",
                        help="extra flags for recipes.detection (default: one model, so that its "
                        "CPU time is the time of the model it reports)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="baseline training budget in minutes of CPU seconds / threads "
                        "(default: our CPU seconds / 60 / threads)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads of the baseline")
    parser.add_argument("--out", type=Path, default=OUT / "detection_vs_yolov8n.json")
    args = parser.parse_args()

    if not YOLO_PYTHON.exists():
        # not an error for `make bench`, which runs every bench/bench_*.py without setup
        print(f"skipped: {YOLO_PYTHON.relative_to(ROOT)} is missing; run `make bench-yolo-env` "
              "(Ultralytics + torch, a separate venv of ~6 GB) first")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    ours_dir, yolo_dir = OUT / "detection_ours", OUT / "detection_yolov8n"

    # 1. the data both detectors see (exported again only when the flags changed)
    export = {"num_examples": args.num_examples, "image_size": args.image_size,
              "seed": args.seed, "test_fraction": 0.2}
    stamp = data / "bench_export.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == export):
        run([sys.executable, "-m", "common.export_coco", str(data), "--num-examples",
             str(args.num_examples), "--image-size", str(args.image_size), "--seed",
             str(args.seed), "--test-fraction", "0.2"], OUT / "detection_export.log")
        stamp.write_text(json.dumps(export) + "\n")

    # 2. ours
    ours = None
    if not args.skip_ours:
        wall, cpu = run([sys.executable, "-m", "recipes.detection",
                         "--dataset", f"coco:{data / 'train.json'}",
                         "--val-dataset", f"coco:{data / 'test.json'}",
                         "--image-size", str(args.image_size), "--seed", str(args.seed),
                         "--out", str(ours_dir), *shlex.split(args.ours_args)],
                        OUT / "detection_ours.log")
        ours = json.loads((ours_dir / "results.json").read_text())
        ours["measured"] = {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}
        (ours_dir / "bench_export.json").write_text(json.dumps(export) + "\n")
    elif (ours_dir / "bench_export.json").exists() and \
            json.loads((ours_dir / "bench_export.json").read_text()) == export:
        ours = json.loads((ours_dir / "results.json").read_text())
        print(f"reusing {ours_dir / 'results.json'} (command: {ours.get('command')})")

    # 3. the baseline, on the same CPU time
    if args.minutes is not None:
        minutes, rule = args.minutes, f"--minutes {args.minutes:g} (of CPU seconds / threads)"
    elif ours is not None:
        cpu = ours.get("cpu_seconds") or ours.get("measured", {}).get("cpu_seconds")
        minutes = cpu / (60 * args.threads)
        rule = (f"our cpu_seconds {cpu:.0f} / (60 * {args.threads} threads) = "
                f"{minutes:.1f} minutes of training, of CPU seconds / {args.threads}")
    else:
        raise SystemExit("error: --skip-ours and no bench/out/detection_ours/results.json of "
                         "this data: give the baseline a budget with --minutes M")
    print(f"baseline budget: {rule}")
    wall, cpu = run([str(YOLO_PYTHON), str(ROOT / "bench" / "yolov8n_baseline.py"),
                     "--train-json", str(data / "train.json"),
                     "--test-json", str(data / "test.json"), "--out", str(yolo_dir),
                     "--minutes", f"{minutes:.3f}", "--imgsz", str(args.image_size),
                     "--seed", str(args.seed), "--threads", str(args.threads)],
                    OUT / "detection_yolov8n.log")
    baseline = json.loads((yolo_dir / "baseline.json").read_text())

    # 4. the same scoring code for both
    from common import metrics

    gt = json.loads((data / "test.json").read_text())
    detections = json.loads((yolo_dir / "detections.json").read_text())
    yolo_metrics = metrics.coco_detection(gt, detections)
    single = json.loads((yolo_dir / "detections_predict.json").read_text())
    single_metrics = metrics.coco_detection(gt, single)

    record = {
        "data": {"spec": "synthetic:scenes via common.export_coco", "dir": str(data),
                 "num_examples": args.num_examples, "image_size": args.image_size,
                 "seed": args.seed, "test_images": len(gt["images"]),
                 "test_objects": len(gt["annotations"])},
        "budget_rule": rule,
        "ours": None if ours is None else {
            "metrics": pick(ours.get("metrics", {})), "seconds": ours.get("seconds"),
            "cpu_seconds": ours.get("cpu_seconds"), "measured": ours.get("measured"),
            "command": ours.get("command"),
            "model": ours.get("metrics", {}).get("model"),
            "weights": ours.get("metrics", {}).get("weights")},
        "yolov8n": {"metrics": pick(yolo_metrics), "per_class": yolo_metrics["per_class"],
                    "predict_metrics": pick(single_metrics),
                    "seconds": baseline["seconds"], "cpu_seconds": baseline["cpu_seconds"],
                    "measured": {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)},
                    **{k: baseline[k] for k in ("epochs_done", "threads", "budget_minutes",
                                                "train_seconds", "ultralytics_val",
                                                "network_attempts", "versions")}},
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")

    # the last column: the same YOLO weights through model.predict (one class per box)
    predict = {**record["yolov8n"], "metrics": record["yolov8n"]["predict_metrics"],
               "cpu_seconds": None, "seconds": None}
    ours_name = "ours" if ours is None else f"ours (weights={record['ours']['weights']})"
    columns = [(ours_name, record["ours"]), ("YOLOv8n from scratch",
               record["yolov8n"]), ("YOLOv8n, model.predict", predict)]
    columns = [(name, col) for name, col in columns if col is not None]
    print(f"\n{len(gt['images'])} test images of {args.image_size} px, "
          f"{len(gt['annotations'])} objects; baseline budget: {rule}")
    print(f"{'':<14}" + "".join(f"{name:>26}" for name, _ in columns))
    rows = [("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"), ("AR100", "ar_100")]
    for label, key in rows:
        print(f"{label:<14}" + "".join(f"{fmt(col['metrics'][key]):>26}" for _, col in columns))
    for label, key in (("CPU seconds", "cpu_seconds"), ("wall seconds", "seconds")):
        print(f"{label:<14}" + "".join(f"{fmt(col[key]):>26}" for _, col in columns))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
