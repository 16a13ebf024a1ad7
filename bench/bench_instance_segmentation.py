"""Instance segmentation: the recipe against Ultralytics YOLOv8n-seg from scratch, same data,
same CPU time, same score.

    make bench-yolo-env                                        # once: bench/.venv-yolo
    .venv/bin/python bench/bench_instance_segmentation.py      # export, ours, baseline, score
    .venv/bin/python bench/bench_instance_segmentation.py --skip-ours --minutes 2

1. `python -m common.export_coco` writes synthetic:scenes (default 1,500 scenes of 128 px,
   seed 0, 20 % test) as COCO JSON (an RLE mask per object) + PNG to
   bench/out/instance_segmentation_coco/.
2. The recipe trains on train.json and is scored on test.json
   (`python -m recipes.instance_segmentation`, outputs in bench/out/instance_segmentation_ours/);
   its results.json gives the metrics and cpu_seconds (both stages, evaluation included).
3. The baseline gets the same CPU time: bench/yolov8n_baseline.py --task segment (in
   bench/.venv-yolo) converts the masks to YOLO polygons and trains YOLO("yolov8n-seg.yaml")
   from random weights for our cpu_seconds / (60 * threads) minutes of CPU seconds / threads
   (see bench_detection.py for the clock), then detects with Ultralytics' validator.
4. Both are scored here by common.metrics.coco_detection on test.json: iou_type "segm" (mask
   AP) and "bbox" (box AP), the same pycocotools code as the recipe.

Writes bench/out/instance_segmentation_vs_yolov8n_seg.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_detection import fmt, run  # noqa: E402  (the same runner and number format)

OUT = ROOT / "bench" / "out"
YOLO_PYTHON = ROOT / "bench" / ".venv-yolo" / "bin" / "python"
KEYS = ("map", "map_50", "map_75", "ar_100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=1500, help="scenes exported in all")
    parser.add_argument("--image-size", type=int, default=128,
                        help="scene side in pixels, also both models' input size (x32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=OUT / "instance_segmentation_coco",
                        help="folder for the COCO export")
    parser.add_argument("--skip-ours", action="store_true",
                        help="do not train the recipe (reuse its last results.json, if any)")
    parser.add_argument("--ours-args", default="", help="extra flags for the recipe")
    parser.add_argument("--minutes", type=float, default=None,
                        help="baseline training budget in minutes of CPU seconds / threads "
                        "(default: our CPU seconds / 60 / threads)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads of the baseline")
    parser.add_argument("--out", type=Path,
                        default=OUT / "instance_segmentation_vs_yolov8n_seg.json")
    args = parser.parse_args()

    if not YOLO_PYTHON.exists():  # not an error for `make bench`, which runs without setup
        print(f"skipped: {YOLO_PYTHON.relative_to(ROOT)} is missing; run `make bench-yolo-env` "
              "(Ultralytics + torch, a separate venv of ~6 GB) first")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    ours_dir, yolo_dir = OUT / "instance_segmentation_ours", OUT / "instance_segmentation_yolov8n"

    # 1. the data both see (exported again only when the flags changed)
    export = {"num_examples": args.num_examples, "image_size": args.image_size,
              "seed": args.seed, "test_fraction": 0.2}
    stamp = data / "bench_export.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == export):
        run([sys.executable, "-m", "common.export_coco", str(data), "--num-examples",
             str(args.num_examples), "--image-size", str(args.image_size), "--seed",
             str(args.seed), "--test-fraction", "0.2"], OUT / "instance_segmentation_export.log")
        stamp.write_text(json.dumps(export) + "\n")

    # 2. ours
    ours = None
    if not args.skip_ours:
        wall, cpu = run([sys.executable, "-m", "recipes.instance_segmentation",
                         "--dataset", f"coco:{data / 'train.json'}",
                         "--val-dataset", f"coco:{data / 'test.json'}",
                         "--image-size", str(args.image_size), "--seed", str(args.seed),
                         "--out", str(ours_dir), *shlex.split(args.ours_args)],
                        OUT / "instance_segmentation_ours.log")
        ours = json.loads((ours_dir / "results.json").read_text())
        ours["measured"] = {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}
        (ours_dir / "bench_export.json").write_text(json.dumps(export) + "\n")
        (ours_dir / "results.json").write_text(json.dumps(ours, indent=2) + "\n")
    elif (ours_dir / "bench_export.json").exists() and \
            json.loads((ours_dir / "bench_export.json").read_text()) == export:
        ours = json.loads((ours_dir / "results.json").read_text())
        print(f"reusing {ours_dir / 'results.json'} (command: {ours.get('command')})")

    # 3. the baseline, on the same CPU time
    if args.minutes is not None:
        minutes, rule = args.minutes, f"--minutes {args.minutes:g} (of CPU seconds / threads)"
    elif ours is not None:
        cpu = ours.get("cpu_seconds") or ours["measured"]["cpu_seconds"]
        minutes = cpu / (60 * args.threads)
        rule = (f"our cpu_seconds {cpu:.0f} / (60 * {args.threads} threads) = "
                f"{minutes:.1f} minutes of training, of CPU seconds / {args.threads}")
    else:
        raise SystemExit("error: --skip-ours and no results.json of this data in "
                         f"{ours_dir}: give the baseline a budget with --minutes M")
    print(f"baseline budget: {rule}")
    wall, cpu = run([str(YOLO_PYTHON), str(ROOT / "bench" / "yolov8n_baseline.py"),
                     "--task", "segment", "--train-json", str(data / "train.json"),
                     "--test-json", str(data / "test.json"), "--out", str(yolo_dir),
                     "--minutes", f"{minutes:.3f}", "--imgsz", str(args.image_size),
                     "--seed", str(args.seed), "--threads", str(args.threads)],
                    OUT / "instance_segmentation_yolov8n.log")
    baseline = json.loads((yolo_dir / "baseline.json").read_text())

    # 4. the same scoring code for both
    from common import metrics

    gt = json.loads((data / "test.json").read_text())
    detections = json.loads((yolo_dir / "detections.json").read_text())
    yolo = {kind: metrics.coco_detection(gt, detections, iou_type=iou)
            for kind, iou in (("mask", "segm"), ("box", "bbox"))}
    ours_metrics = None if ours is None else {
        kind: {k: ours["metrics"].get(f"{kind}_{k}") for k in KEYS} for kind in ("mask", "box")}
    record = {
        "data": {"spec": "synthetic:scenes via common.export_coco", "dir": str(data),
                 **export, "test_images": len(gt["images"]),
                 "test_objects": len(gt["annotations"])},
        "budget_rule": rule,
        "ours": None if ours is None else {
            "metrics": ours_metrics, "seconds": ours.get("seconds"),
            "cpu_seconds": ours.get("cpu_seconds"), "measured": ours.get("measured"),
            "command": ours.get("command"), "commit": ours.get("commit")},
        "yolov8n_seg": {"metrics": {kind: {k: m[k] for k in KEYS} for kind, m in yolo.items()},
                        "per_class_mask_ap": yolo["mask"]["per_class"],
                        "seconds": baseline["seconds"], "cpu_seconds": baseline["cpu_seconds"],
                        "measured": {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)},
                        **{k: baseline[k] for k in ("epochs_done", "train_iterations", "threads",
                                                    "budget_minutes", "ultralytics_val",
                                                    "network_attempts", "versions")}},
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")

    columns = [(name, col) for name, col in (("ours", record["ours"]),
                                             ("YOLOv8n-seg from scratch", record["yolov8n_seg"]))
               if col is not None]
    print(f"\n{len(gt['images'])} test images of {args.image_size} px, "
          f"{len(gt['annotations'])} objects; baseline budget: {rule}")
    print(f"{'':<14}" + "".join(f"{name:>28}" for name, _ in columns))
    for kind in ("mask", "box"):
        for label, key in (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"),
                           ("AR100", "ar_100")):
            print(f"{kind + ' ' + label:<14}" + "".join(
                f"{fmt(col['metrics'][kind][key]):>28}" for _, col in columns))
    for label, key in (("CPU seconds", "cpu_seconds"), ("wall seconds", "seconds")):
        print(f"{label:<14}" + "".join(f"{fmt(col[key]):>28}" for _, col in columns))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
