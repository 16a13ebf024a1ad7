"""Detection inference speed on the CPU: images per second at batch 1 and 16, side by side.

    .venv/bin/python bench/bench_detection_speed.py [--model runs/detection/model.keras]

Measures the recipe's two detectors (keras-cv YOLOv8 and keras-hub RetinaNet on the generic
backbone, 128x128 input, 10 classes) in one process, one after the other, so the ratio holds
even on a shared machine. A trained `--model` is timed as well (its number of boxes after the
score threshold changes the non-maximum suppression cost a little). Each measurement is the
median of 5 timed rounds of `model.predict` over 16 images after a warm-up call (tracing is
excluded); it includes decoding and NMS: the boxes come out ready to use.

Writes bench/out/detection_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_cv  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import detectors, synthetic  # noqa: E402
from common.data import load  # noqa: E402

SIZE, NUM_CLASSES = 128, len(synthetic.SHAPES)


def yolov8():
    return keras_cv.models.YOLOV8Detector(
        backbone=detectors.GenericYoloBackbone((SIZE, SIZE, 3)), num_classes=NUM_CLASSES,
        bounding_box_format="xyxy", fpn_depth=1)


def retinanet():
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=detectors.GenericPyramidEncoder((SIZE, SIZE, 3)), min_level=3,
        max_level=5, use_p5=False, image_shape=(SIZE, SIZE, 3))
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=NUM_CLASSES, bounding_box_format="xyxy",
        pre_logits_num_conv_layers=2)


def images_per_second(model, images, batch, rounds=5):
    """Median images/s of `model.predict` over 16 images in batches of `batch` (a dataset with
    a fixed batch size, as the recipe predicts: keras-hub's NMS needs a static batch)."""
    data = tf.data.Dataset.from_tensor_slices(images[:16]).batch(batch, drop_remainder=True)
    model.predict(data, verbose=0)  # trace
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.predict(data, verbose=0)
        times.append((time.perf_counter() - start) / 16)
    return 1 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "detection" / "model.keras",
                        help="a trained detector to time as well (skipped when missing)")
    args = parser.parse_args()
    scenes = load("synthetic:scenes", num_examples=16, seed=1)
    images = np.stack([np.kron(s, np.ones((2, 2, 1))) for s in scenes.images]).astype("float32")
    models = {"yolov8 (untrained)": yolov8, "retinanet (untrained)": retinanet}
    if args.model.is_file():
        models[f"trained {args.model}"] = lambda: keras.saving.load_model(args.model)
    rows = {}
    for name, build in models.items():
        rows[name] = {}
        for batch in (1, 16):  # a fresh model per batch size: a second traced size would
            model = build()    # make TensorFlow relax the batch size to None, which NMS refuses
            rows[name]["params"] = int(model.count_params())
            rows[name][f"batch_{batch}"] = round(images_per_second(model, images, batch), 1)
        print(f"{name:<45} {rows[name]['params']:>10,} params  batch 1: "
              f"{rows[name]['batch_1']:7.1f} img/s  batch 16: {rows[name]['batch_16']:7.1f} img/s",
              flush=True)
    record = {"input": f"{SIZE}x{SIZE}x3",
              "unit": "images per second, model.predict (incl. NMS)",
              "rows": rows, "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "versions": {"keras": keras.__version__,
                                                    "keras_cv": keras_cv.__version__,
                                                    "keras_hub": keras_hub.__version__}}
    out = ROOT / "bench" / "out" / "detection_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
