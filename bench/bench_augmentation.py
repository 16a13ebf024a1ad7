"""Augmentation bench: our best policy against the keras-io "Simple MNIST convnet", and the
throughput of each policy's augmentation pipeline against what the training step consumes.

    .venv/bin/python bench/bench_augmentation.py [--part all|quality|pipeline]
        [--data ../shared/data/mnist10k.npz] [--epochs 10] [--repeats 2]

1. quality: side by side in one process on the same data and machine: the recipe itself
   (`python -m recipes.augmentation --policies combined --train-size all --batch-size 128`)
   against the keras-io example's model and settings (Conv32-Pool-Conv64-Pool-Flatten-
   Dropout(0.5)-Dense, Adam, batch 128, 15 epochs). keras-io holds out 10% of the training set
   for validation; here it trains on all of it, like ours, and both validate on the test set
   after every epoch. Both are scored on the recipe's corrupted test sets too.
2. pipeline (a few minutes alone): images/s of each policy's `pipeline.for_training` alone (no
   model), in one tf.data thread and in parallel (the default, `num_parallel_calls=AUTOTUNE`,
   reproducible either way), against the images/s the training step consumes when fed
   pre-made batches from memory; the target is a parallel pipeline at least 3x the step. Then
   the end-to-end training speed with each pipeline, and the slowest policy's techniques
   one by one (what dominates its cost).

Rates are wall-clock images/s and images per CPU-second of this process (all threads); on a
machine shared with other jobs the wall rates are noisy, the CPU rates less so. Each policy's
step is measured right before its pipeline, so that each pair shares the machine's load.
Writes bench/out/augmentation_quality.json, bench/out/augmentation_pipeline.{json,md} and
prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def keras_io_convnet(input_shape, num_classes: int):
    """The keras-io "Simple MNIST convnet" model (Conv32-Pool-Conv64-Pool-Flatten-Dropout(0.5)-
    Dense), compiled as there (Adam, categorical cross-entropy); it takes images in [0, 1].
    Also used by bench/bench_frontier.py."""
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model



if __name__ == "__main__":  # importing this file (for keras_io_convnet) runs nothing
    cli_args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli_args.add_argument("--part", choices=("all", "quality", "pipeline"), default="all")
    cli_args.add_argument("--data", default="../shared/data/mnist10k.npz")
    cli_args.add_argument("--epochs", type=int, default=10,
                          help="epochs of our model in the quality part (default: %(default)s)")
    cli_args.add_argument("--repeats", type=int, default=2,
                          help="timed passes per throughput measurement (after one warm-up)")
    options = cli_args.parse_args()
    if not Path(options.data).is_file():
        sys.exit(f"error: {options.data} not found (pass --data FILE, a keras.datasets-layout npz)")
    started = time.time()
    load_before = os.getloadavg()
    OUT = ROOT / "bench" / "out"
    OUT.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- the recipe, as a module
    # Running the recipe gives its functions (build_classifier, make_augment, POLICIES, ...) with
    # the settings of this dataset (e.g. no flips on digits). The quality part is the full run;
    # the pipeline part alone only needs the definitions, so a smoke run of one policy is enough.
    if options.part in ("all", "quality"):
        recipe_args = ["--train-size", "all", "--policies", "combined", "--epochs",
                       str(options.epochs), "--batch-size", "128", "--out",
                       str(OUT / "augmentation_recipe")]
    else:
        recipe_args = ["--smoke", "--policies", "none", "--out", tempfile.mkdtemp()]
    sys.argv = ["augmentation", "--dataset", f"npz:{options.data}", *recipe_args]
    recipe = runpy.run_path(str(ROOT / "recipes" / "augmentation" / "augmentation.py"),
                            run_name="__main__")

    import keras  # noqa: E402  (the recipe has set the seeds and the backend)
    import numpy as np  # noqa: E402
    import tensorflow as tf  # noqa: E402

    from common import data, pipeline, results  # noqa: E402

    record = {"dataset": f"npz:{options.data}", "commit": results.commit(),
              "versions": results.versions(), "cpu_count": os.cpu_count(),
              "load_average_before": load_before}


    def report(name: str, extra: dict) -> Path:
        path = OUT / f"augmentation_{name}.json"
        path.write_text(json.dumps({**record, **extra, "load_average_after": os.getloadavg(),
                                    "bench_seconds": round(time.time() - started, 1)},
                                   indent=2, default=float) + "\n")
        return path


    # ---------------------------------------------------------------- 1. quality: ours vs keras-io
    def quality() -> None:
        ours = recipe["results"]["combined"]
        x_train, y_train = recipe["x_train"], recipe["y_train"]
        x_test, y_test = recipe["x_test"], recipe["y_test"]
        num_classes, input_shape = recipe["num_classes"], recipe["input_shape"]
        keras.utils.set_random_seed(0)
        keras_io = keras_io_convnet(input_shape, num_classes)
        scale = np.float32(1 / 255)  # keras-io scales to [0, 1] outside the model
        one_hot = keras.utils.to_categorical
        wall, cpu = time.time(), time.process_time()
        keras_io.fit(x_train.astype("float32") * scale, one_hot(y_train, num_classes),
                     batch_size=128, epochs=15, verbose=0,
                     validation_data=(x_test.astype("float32") * scale,
                                      one_hot(y_test, num_classes)))
        keras_io_wall, keras_io_cpu = time.time() - wall, time.process_time() - cpu

        def keras_io_accuracy(x):
            predicted = keras_io.predict(x.astype("float32") * scale, batch_size=256, verbose=0)
            return float((predicted.argmax(-1) == y_test).mean())

        theirs = {"clean_accuracy": keras_io_accuracy(x_test),
                  "train_seconds": round(keras_io_wall, 1),
                  "train_cpu_seconds": round(keras_io_cpu, 1)}
        for name, images in recipe["corrupted"].items():  # the recipe's corrupted sets, built once
            theirs[name] = keras_io_accuracy(images)
        theirs["mean_corrupted_accuracy"] = float(np.mean([theirs[n] for n in recipe["corrupted"]]))

        path = report("quality", {
            "train_images": len(x_train), "test_images": len(x_test),
            "ours": {"model": "recipe small_convnet, combined policy", "epochs": options.epochs,
                     "batch_size": 128, **ours},
            "keras_io": {"model": "keras-io Simple MNIST convnet", "epochs": 15, "batch_size": 128,
                         **theirs}})
        rows = ["clean_accuracy", "mean_corrupted_accuracy", "occlusion_25", "darker_50",
                "low_contrast_70", "rotation_30", "translation_20", "train_seconds",
                "train_cpu_seconds"]
        print(f"\n{'':<26}{'ours (combined)':>18}{'keras-io':>12}")
        for row in rows:
            print(f"{row:<26}{ours[row]:>18.4g}{theirs[row]:>12.4g}")
        print(f"wrote {path}")


    # ---------------------------------------------------------------- 2. pipeline throughput
    # On 2 cores the pipeline and the training step share the same cores, so the pipeline must
    # cost a small fraction of the step's CPU, not merely be faster than it alone.
    BATCH = 128


    def rates(run_one_epoch, images: int) -> tuple[float, float]:
        """(images/s, images per CPU-second) over `--repeats` epochs after one warm-up epoch."""
        run_one_epoch()  # warm-up: tracing, caches
        wall, cpu = time.time(), time.process_time()
        for _ in range(options.repeats):
            run_one_epoch()
        images *= options.repeats
        return images / (time.time() - wall), images / (time.process_time() - cpu)


    def one_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
        """The same pipeline with all of its tf.data work in one thread."""
        single = tf.data.Options()
        single.threading.private_threadpool_size = 1
        single.threading.max_intra_op_parallelism = 1
        return ds.with_options(single)


    def pipeline_throughput() -> None:
        ds = data.load(f"npz:{options.data}")
        x_train, y_train, num_classes = ds.x_train, ds.y_train, ds.num_classes
        n = len(x_train)

        def compiled_model():
            keras.utils.set_random_seed(0)
            model = recipe["build_classifier"](x_train.shape[1:], num_classes)
            model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                          loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
            return model

        def training_batches(augment):
            return pipeline.for_training(x_train, y_train, BATCH, num_classes=num_classes,
                                         augment=augment)

        def iterate(train):
            return lambda: [None for _ in train]

        # The training step alone: float one-hot batches, made once and cached in memory.
        in_memory = training_batches(None).cache()
        table = {}
        for policy in recipe["POLICIES"]:
            model = compiled_model()
            step_wall, step_cpu = rates(lambda m=model: m.fit(in_memory, epochs=1, verbose=0), n)
            train = training_batches(recipe["make_augment"](policy, 0))
            single_wall, _ = rates(iterate(one_thread(train)), n)
            parallel_wall, parallel_cpu = rates(iterate(train), n)
            model = compiled_model()
            fit_wall, _ = rates(lambda m=model, t=train: m.fit(t, epochs=1, verbose=0), n)
            table[policy] = {
                "one_thread_images_per_s": round(single_wall),
                "parallel_images_per_s": round(parallel_wall),
                "step_images_per_s": round(step_wall),
                "parallel_over_step": round(parallel_wall / step_wall, 2),
                # CPU per image of the pipeline as a share of the step's CPU per image
                "pipeline_cpu_share": round(step_cpu / parallel_cpu, 3),
                "fit_images_per_s": round(fit_wall),
                "fit_over_step": round(fit_wall / step_wall, 2)}
            print(f"{policy:>12}: pipeline {single_wall:6.0f} img/s one thread, "
                  f"{parallel_wall:6.0f} parallel; step {step_wall:5.0f} img/s; fit with it "
                  f"{fit_wall:5.0f}", flush=True)

        # What dominates the slowest policy: its techniques alone, in the same parallel pipeline.
        slowest = min(table, key=lambda p: table[p]["parallel_images_per_s"])
        breakdown = {}
        for name in recipe["technique_names"](slowest):
            step = recipe["technique"](name, 0)  # a Keras layer, or a function of images (gamma)
            if not isinstance(step, keras.layers.Layer) and name not in ("mixup", "cutmix"):
                step = lambda i, t, s=step: (s(i), t)  # noqa: E731
            breakdown[name] = round(rates(iterate(training_batches(step)), n)[0])
            if name == "randaugment":
                # The Keras layer computes all eleven operations for each of its two draws; the
                # recipe's version only the drawn ones. Each operation's own cost:
                layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5,
                                                 seed=0)
                breakdown["keras.layers.RandAugment"] = round(
                    rates(iterate(training_batches(layer)), n)[0])
                for op in layer._AUGMENT_LAYERS:  # the operations it draws from
                    augment = getattr(layer, op)
                    breakdown[f"  {op}"] = round(rates(iterate(training_batches(augment)), n)[0])
        breakdown["(no augmentation)"] = round(rates(iterate(training_batches(None)), n)[0])

        lines = [f"pipeline throughput on {record['dataset']} ({n} images, batch {BATCH}, "
                 f"{os.cpu_count()} CPUs; `python bench/bench_augmentation.py --part pipeline "
                 f"--repeats {options.repeats}`)", "",
                 "| policy | pipeline 1 thread img/s | pipeline parallel img/s | step img/s | "
                 "parallel / step | pipeline CPU share | fit with it img/s | fit / step |",
                 "|---|---|---|---|---|---|---|---|"]
        for policy, t in table.items():
            lines.append(
                f"| {policy} | {t['one_thread_images_per_s']} | {t['parallel_images_per_s']} | "
                f"{t['step_images_per_s']} | {t['parallel_over_step']:.1f}x | "
                f"{t['pipeline_cpu_share']:.0%} | {t['fit_images_per_s']} | {t['fit_over_step']} |")
        met = [p for p, t in table.items() if t["parallel_over_step"] >= 3]
        lines += ["", f"parallel pipeline >= 3x the step: {len(met)}/{len(table)} policies"
                  + (f" (not: {', '.join(p for p in table if p not in met)})"
                     if len(met) < len(table) else ""),
                  "step: `fit` on pre-made float batches from memory; pipeline CPU share: the "
                  "pipeline's CPU per image as a share of the step's", "",
                  f"slowest policy, {slowest}: each part alone in the parallel pipeline", "",
                  "| part | img/s |", "|---|---|"]
        lines += [f"| {name} | {rate} |" for name, rate in breakdown.items()]
        text = "\n".join(lines) + "\n"
        (OUT / "augmentation_pipeline.md").write_text(text)
        path = report("pipeline", {"train_images": n, "batch_size": BATCH,
                                   "repeats": options.repeats, "pipeline": table,
                                   "slowest_policy": slowest, "slowest_breakdown": breakdown})
        print("\n" + text + f"wrote {path} and {OUT / 'augmentation_pipeline.md'}")


    if options.part in ("all", "quality"):
        quality()
    if options.part in ("all", "pipeline"):
        pipeline_throughput()
    print(f"bench: {time.time() - started:.0f} s, load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
