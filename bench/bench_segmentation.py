"""Segmentation: our recipe against the keras-io U-Net example, same data, same CPU time.

    .venv/bin/python bench/bench_segmentation.py                 # data, ours, keras-io, table
    .venv/bin/python bench/bench_segmentation.py --train 200 --test 50 --ours-args "--smoke"

The data: "digit scenes", small real objects on a large plain background, unlike the
recipe's synthetic shapes. 128x128 images of one plain colour, each with one to four
handwritten MNIST digits (../shared/data/mnist10k.npz; training scenes use its training
digits, test scenes its test digits) scaled to 28-56 px in a contrasting colour; the mask
holds digit + 1 where the ink covers the pixel (11 classes, background about 96 % of the
pixels). Written to bench/out/digit_scenes/{train,test}/{images,masks} (folder:DIR layout).

1. Ours: `python -m recipes.segmentation --dataset folder:bench/out/digit_scenes` (its defaults:
   the generic-backbone U-Net, cross-entropy vs cross-entropy + Dice, 128 px from the data),
   outputs in bench/out/segmentation_ours/; results.json gives the metrics and cpu_seconds.
2. The keras-io example "Image segmentation with a U-Net-like architecture" (Oxford Pets):
   its model (an Xception-style encoder of separable convolutions with residual projections,
   a decoder of transposed convolutions and upsampling, softmax output), trained from scratch
   with its settings (RMSprop, sparse categorical cross-entropy, batch 32, raw pixels, no
   augmentation, 15 epochs), here stopped early if it reaches our CPU seconds first.
3. Both are scored by common.metrics.segmentation on the same test masks.

Writes bench/out/segmentation_vs_kerasio.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
MNIST = ROOT.parent / "shared" / "data" / "mnist10k.npz"

from bench_detection import run  # noqa: E402  (the same runner: wall and CPU seconds, a log)

KEYS = ("mean_iou", "foreground_mean_iou", "pixel_accuracy", "mean_class_accuracy")


def digit_scenes(digits, labels, n, size, seed):
    """`n` scenes of 1-3 digits on a plain background: (images, masks)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        background = rng.uniform(0, 255, 3)
        image = np.ones((size, size, 3)) * background
        for _ in range(rng.integers(1, 5)):
            k = rng.integers(len(digits))
            side = int(rng.integers(28, 57))
            ink = np.asarray(Image.fromarray(digits[k]).resize((side, side), Image.BILINEAR))
            alpha = ink.astype(float)[..., None] / 255
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - background).sum() < 150:  # visible against the background
                colour = rng.uniform(0, 255, 3)
            y, x = rng.integers(0, size - side, 2)
            patch = image[y: y + side, x: x + side]
            image[y: y + side, x: x + side] = patch * (1 - alpha) + colour * alpha
            masks[i, y: y + side, x: x + side][ink > 127] = labels[k] + 1
        images[i] = np.clip(image + rng.normal(0, 3, image.shape), 0, 255)
    return images, masks


def write_dataset(root: Path, train: int, test: int, seed: int) -> Path:
    arrays = np.load(MNIST)
    for part, n, x, y in (("train", train, arrays["x_train"], arrays["y_train"]),
                          ("test", test, arrays["x_test"], arrays["y_test"])):
        images, masks = digit_scenes(x.reshape(-1, 28, 28), y, n, 128, seed + (part == "test"))
        for folder in ("images", "masks"):
            (root / part / folder).mkdir(parents=True, exist_ok=True)
        for i, (image, mask) in enumerate(zip(images, masks)):
            Image.fromarray(image).save(root / part / "images" / f"{i:05d}.png")
            Image.fromarray(mask).save(root / part / "masks" / f"{i:05d}.png")
    return root


def kerasio_model(size: int, num_classes: int):
    """The keras-io example's architecture (Xception-style U-Net, softmax output)."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3))
    x = layers.Activation("relu")(layers.BatchNormalization()(
        layers.Conv2D(32, 3, strides=2, padding="same")(inputs)))
    shortcut = x
    for filters in (64, 128, 256):  # down: two separable convolutions, pool, residual
        for _ in range(2):
            x = layers.BatchNormalization()(layers.SeparableConv2D(filters, 3, padding="same")(
                layers.Activation("relu")(x)))
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.add([x, layers.Conv2D(filters, 1, strides=2, padding="same")(shortcut)])
        shortcut = x
    for filters in (256, 128, 64, 32):  # up: two transposed convolutions, upsample, residual
        for _ in range(2):
            x = layers.BatchNormalization()(layers.Conv2DTranspose(filters, 3, padding="same")(
                layers.Activation("relu")(x)))
        x = layers.UpSampling2D(2)(x)
        x = layers.add([x, layers.Conv2D(filters, 1, padding="same")(
            layers.UpSampling2D(2)(shortcut))])
        shortcut = x
    outputs = layers.Conv2D(num_classes, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs)


def train_kerasio(root: Path, cpu_budget: float, epochs: int, num_classes: int) -> dict:
    from common import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from common import data, metrics

    keras.utils.set_random_seed(0)
    train, test = (data.load(f"folder:{root / part}") for part in ("train", "test"))
    x, y = np.stack(train.images).astype("float32"), np.stack(train.semantic)
    model = kerasio_model(x.shape[1], num_classes)
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    start_cpu, start = time.process_time(), time.perf_counter()

    class Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            used = time.process_time() - start_cpu
            print(f"keras-io epoch {epoch + 1}: loss {logs['loss']:.4f}, {used:.0f} CPU s",
                  flush=True)
            if used >= cpu_budget:
                self.model.stop_training = True

    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=2, callbacks=[Budget()])
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    pred = np.argmax(model.predict(np.stack(test.images).astype("float32"), verbose=0), -1)
    matrix = sum(metrics.confusion(m, p, num_classes) for m, p in zip(test.semantic, pred))
    names = ["background", *[str(d) for d in range(10)]]
    return {**metrics.segmentation(matrix, names), "epochs": len(history.history["loss"]),
            "cpu_seconds": round(cpu, 1), "seconds": round(wall, 1),
            "params": int(model.count_params())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=1200, help="training scenes")
    p.add_argument("--test", type=int, default=300, help="test scenes")
    p.add_argument("--ours-args", default="", help="extra flags for the recipe")
    p.add_argument("--epochs", type=int, default=15, help="keras-io epochs (its setting)")
    args = p.parse_args()
    if not MNIST.is_file():
        raise SystemExit(f"{MNIST} not found: this bench builds its scenes from MNIST digits")
    OUT.mkdir(parents=True, exist_ok=True)
    root = write_dataset(OUT / "digit_scenes", args.train, args.test, seed=0)
    ours_out = OUT / "segmentation_ours"
    wall, cpu = run([sys.executable, "-m", "recipes.segmentation", "--dataset", f"folder:{root}",
                     "--out", str(ours_out), *shlex.split(args.ours_args)],
                    OUT / "segmentation_ours.log")
    ours = json.loads((ours_out / "results.json").read_text())
    num_classes = ours["metrics"]["num_classes"]
    theirs = train_kerasio(root, cpu, args.epochs, num_classes)
    report = {"data": {"train": args.train, "test": args.test, "spec": f"folder:{root}"},
              "ours": {**{k: ours["metrics"][k] for k in KEYS}, "iou": ours["metrics"]["iou"],
                       "loss": ours["metrics"]["loss"], "cpu_seconds": round(cpu, 1),
                       "seconds": round(wall, 1), "params": ours["metrics"]["params"],
                       "command": ours["command"]},
              "kerasio_unet": theirs}
    (OUT / "segmentation_vs_kerasio.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'':24}{'ours':>12}{'keras-io':>12}")
    for key in (*KEYS, "cpu_seconds", "seconds", "params"):
        a, b = report["ours"][key], theirs[key]
        print(f"{key:24}{a:>12.4g}{b:>12.4g}" if a is not None and b is not None else key)
    print(f"wrote {OUT / 'segmentation_vs_kerasio.json'}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
