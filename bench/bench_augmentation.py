"""Augmentation bench: our best policy against the keras-io "Simple MNIST convnet", and the
throughput of the augmentation pipeline against what the training step consumes.

    .venv/bin/python bench/bench_augmentation.py [--data ../shared/data/mnist10k.npz]
                                                 [--epochs 10] [--repeats 2]

1. Quality and speed, side by side in one process on the same data and machine: the recipe
   itself (`python -m recipes.augmentation --policies combined --train-size all
   --batch-size 128`) against the keras-io example's model and settings (Conv32-Pool-Conv64-Pool-
   Flatten-Dropout(0.5)-Dense, Adam, batch 128, 15 epochs). keras-io holds out 10% of the
   training set for validation; here it trains on all of it, like ours, and both validate on
   the test set after every epoch. Both are scored on the recipe's corrupted test sets too.
2. Pipeline throughput: images/s of each policy's tf.data pipeline alone (no model), with one
   augmentation thread (the default: reproducible) and with --parallel-augmentation, against
   the images/s the training step consumes when fed from memory, and the end-to-end training
   speed with each policy's (default) pipeline.

Fit times are wall-clock seconds of `model.fit` and CPU seconds of this process (all threads)
during it; on a machine shared with other jobs the wall times are noisy, the CPU times less so.
Writes bench/out/augmentation.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

cli_args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
cli_args.add_argument("--data", default="../shared/data/mnist10k.npz")
cli_args.add_argument("--epochs", type=int, default=10,
                      help="epochs of our model (default: %(default)s)")
cli_args.add_argument("--repeats", type=int, default=2,
                      help="timed passes per throughput measurement (after one warm-up)")
options = cli_args.parse_args()
if not Path(options.data).is_file():
    sys.exit(f"error: {options.data} not found (pass --data FILE, a keras.datasets-layout npz)")
started = time.time()
load_before = os.getloadavg()

# ---------------------------------------------------------------- 1. ours: the recipe itself
recipe_out = ROOT / "bench" / "out" / "augmentation_recipe"
sys.argv = ["augmentation", "--dataset", f"npz:{options.data}", "--train-size", "all",
            "--policies", "combined", "--epochs", str(options.epochs), "--batch-size", "128",
            "--out", str(recipe_out)]
recipe = runpy.run_path(str(ROOT / "recipes" / "augmentation" / "augmentation.py"),
                        run_name="__main__")
ours = recipe["results"]["combined"]

import keras  # noqa: E402  (the recipe has set the seeds and the backend)
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from common import pipeline, results  # noqa: E402

x_train, y_train = recipe["x_train"], recipe["y_train"]
x_test, y_test = recipe["x_test"], recipe["y_test"]
num_classes, input_shape = recipe["num_classes"], recipe["input_shape"]
corrupted = recipe["corrupted"]

# ---------------------------------------------------------------- 1. keras-io, same data
keras.utils.set_random_seed(0)
keras_io = keras.Sequential([
    keras.Input(shape=input_shape),
    layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)),
    layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)),
    layers.Flatten(),
    layers.Dropout(0.5),
    layers.Dense(num_classes, activation="softmax"),
])
keras_io.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
scale = np.float32(1 / 255)  # keras-io scales to [0, 1] outside the model
one_hot = keras.utils.to_categorical
wall, cpu = time.time(), time.process_time()
keras_io.fit(x_train.astype("float32") * scale, one_hot(y_train, num_classes), batch_size=128,
             epochs=15, validation_data=(x_test.astype("float32") * scale,
                                         one_hot(y_test, num_classes)), verbose=0)
keras_io_wall, keras_io_cpu = time.time() - wall, time.process_time() - cpu


def keras_io_accuracy(x):
    predicted = keras_io.predict(x.astype("float32") * scale, batch_size=256, verbose=0)
    return float((predicted.argmax(-1) == y_test).mean())


theirs = {"clean_accuracy": keras_io_accuracy(x_test), "train_seconds": round(keras_io_wall, 1),
          "train_cpu_seconds": round(keras_io_cpu, 1)}
for name, images in corrupted.items():  # the recipe's corrupted test sets, built once
    theirs[name] = keras_io_accuracy(images)
theirs["mean_corrupted_accuracy"] = float(np.mean([theirs[name] for name in corrupted]))

# ---------------------------------------------------------------- 2. pipeline throughput
# Each rate is measured in wall-clock images/s and in images per CPU-second of this process
# (all threads). On a shared machine the CPU rates are the steadier ones; on 2 cores the
# pipeline and the training step share the same cores, so the pipeline must cost a small
# fraction of the step's CPU, not merely be faster than it.


def rates(run_one_epoch) -> tuple[float, float]:
    run_one_epoch()  # warm-up: tracing, caches
    wall, cpu = time.time(), time.process_time()
    for _ in range(options.repeats):
        run_one_epoch()
    images = options.repeats * len(x_train)
    return images / (time.time() - wall), images / (time.process_time() - cpu)


def compiled_model():
    keras.utils.set_random_seed(0)
    model = recipe["build_classifier"](input_shape, num_classes)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    return model


# The training step alone (batches already float and one-hot, cached in memory) is measured
# again right before each policy's training, so that each pair shares the machine's load.
in_memory = pipeline.for_training(x_train, y_train, 128, num_classes=num_classes).cache()
throughput = {}
for policy in recipe["POLICIES"]:
    model = compiled_model()
    step_wall, step_cpu = rates(lambda model=model: model.fit(in_memory, epochs=1, verbose=0))
    train = pipeline.for_training(x_train, y_train, 128, num_classes=num_classes,
                                  augment=recipe["make_augment"](policy, 0))
    alone_wall, alone_cpu = rates(lambda train=train: [None for _ in train])
    # the same pipeline with --parallel-augmentation (all cores, not bit-reproducible)
    pipeline.PARALLEL_AUGMENTATION = True
    parallel = pipeline.for_training(x_train, y_train, 128, num_classes=num_classes,
                                     augment=recipe["make_augment"](policy, 0))
    parallel_wall, _ = rates(lambda parallel=parallel: [None for _ in parallel])
    pipeline.PARALLEL_AUGMENTATION = False
    model = compiled_model()
    fit_wall, fit_cpu = rates(lambda train=train, model=model: model.fit(train, epochs=1,
                                                                         verbose=0))
    throughput[policy] = {
        "pipeline_images_per_s": round(alone_wall), "pipeline_images_per_cpu_s": round(alone_cpu),
        "parallel_pipeline_images_per_s": round(parallel_wall),
        "step_images_per_s": round(step_wall), "step_images_per_cpu_s": round(step_cpu),
        "pipeline_over_step": round(alone_wall / step_wall, 1),
        "pipeline_cpu_vs_step_cpu": round(step_cpu / alone_cpu, 3),
        "fit_images_per_s": round(fit_wall), "fit_images_per_cpu_s": round(fit_cpu),
        "fit_vs_step": round(fit_wall / step_wall, 2)}
    print(f"{policy:>12}: pipeline {alone_wall:7.0f} img/s, step from memory {step_wall:5.0f} "
          f"img/s, training with the pipeline {fit_wall:5.0f} img/s", flush=True)

# ---------------------------------------------------------------- report
record = {
    "dataset": f"npz:{options.data}", "train_images": len(x_train), "test_images": len(x_test),
    "ours": {"model": "recipe small_convnet, combined policy", "epochs": options.epochs,
             "batch_size": 128, **{k: v for k, v in ours.items()}},
    "keras_io": {"model": "keras-io Simple MNIST convnet", "epochs": 15, "batch_size": 128,
                 **theirs},
    "pipeline": throughput,
    "commit": results.commit(), "versions": results.versions(),
    "cpu_count": os.cpu_count(), "load_average_before": load_before,
    "load_average_after": os.getloadavg(), "bench_seconds": round(time.time() - started, 1),
}
out = ROOT / "bench" / "out" / "augmentation.json"
out.write_text(json.dumps(record, indent=2, default=float) + "\n")

rows = ["clean_accuracy", "mean_corrupted_accuracy", "occlusion_25", "darker_50",
        "low_contrast_70", "rotation_30", "translation_20", "train_seconds", "train_cpu_seconds"]
print(f"\n{'':<26}{'ours (combined)':>18}{'keras-io':>12}")
for row in rows:
    print(f"{row:<26}{ours[row]:>18.4g}{theirs[row]:>12.4g}")
print(f"\n{'policy':<13}{'pipeline':>10}{'parallel':>10}{'step':>7}{'ratio':>7}"
      f"{'pipeline CPU':>14}{'fit with it':>13}{'fit/step':>10}")
print(f"{'':<13}{'img/s':>10}{'img/s':>10}{'img/s':>7}{'':>7}{'per image':>14}{'img/s':>13}")
for policy, t in throughput.items():
    print(f"{policy:<13}{t['pipeline_images_per_s']:>10}{t['parallel_pipeline_images_per_s']:>10}"
          f"{t['step_images_per_s']:>7}{t['pipeline_over_step']:>7}"
          f"{t['pipeline_cpu_vs_step_cpu']:>13.1%}{t['fit_images_per_s']:>13}{t['fit_vs_step']:>10}")
print("pipeline: one augmentation thread (the default, reproducible); parallel: "
      "--parallel-augmentation; ratio: pipeline / step;\npipeline CPU per image: as a share of "
      "the training step's CPU per image")
print(f"\nwrote {out} ({record['bench_seconds']:.0f} s, load average {load_before[0]:.1f} before, "
      f"{record['load_average_after'][0]:.1f} after)")
