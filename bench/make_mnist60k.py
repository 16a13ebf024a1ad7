"""A 60,000-image training set from the 8,000 real MNIST training digits of mnist10k.npz.

    .venv/bin/python bench/make_mnist60k.py [--source ../shared/data/mnist10k.npz]
        [--out bench/out/mnist60k.npz] [--size 60000] [--seed 0]

No real 60,000-image set is on this machine, so this builds one in the keras.datasets layout
(`x_train, y_train, x_test, y_test`, uint8, 28x28): the 8,000 real training digits, plus
randomly distorted copies of them up to 60,000 (a small affine map per copy: rotation +-12
degrees, scale 0.9-1.1, shear +-0.15, shift +-2 pixels, and on a third of the copies a stroke
made thicker or thinner by one pixel). The 2,000 real test digits are the test set, untouched:
no test digit is used to make a training image. The same --seed gives the same file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent


def distorted_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random small affine distortion of a 28x28 uint8 digit (about its centre)."""
    angle = np.deg2rad(rng.uniform(-12, 12))
    scale = rng.uniform(0.9, 1.1)
    shear = rng.uniform(-0.15, 0.15)
    shift = rng.uniform(-2, 2, size=2)
    cos, sin = np.cos(angle), np.sin(angle)
    forward = scale * np.array([[cos, -sin], [sin, cos]]) @ np.array([[1, shear], [0, 1]])
    inverse = np.linalg.inv(forward)  # affine_transform maps output pixels to input pixels
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - inverse @ (centre + shift)
    out = ndimage.affine_transform(image.astype(np.float32), inverse, offset=offset, order=1,
                                   mode="constant", cval=0.0)
    stroke = rng.integers(0, 6)  # 0: thicker, 1: thinner, else unchanged (a third changed)
    if stroke == 0:
        out = ndimage.grey_dilation(out, size=(2, 2))
    elif stroke == 1:
        out = ndimage.grey_erosion(out, size=(2, 2))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def build(source: Path, size: int, seed: int) -> dict[str, np.ndarray]:
    with np.load(source, allow_pickle=False) as real:
        x_train, y_train = real["x_train"], real["y_train"]
        x_test, y_test = real["x_test"], real["y_test"]
    if x_train.ndim == 4:
        x_train, x_test = x_train[..., 0], x_test[..., 0]
    rng = np.random.default_rng(seed)
    extra = size - len(x_train)
    if extra < 0:
        raise SystemExit(f"error: --size {size} is smaller than the {len(x_train)} real digits")
    parents = rng.permutation(np.resize(np.arange(len(x_train)), extra))  # each ~equally often
    copies = np.stack([distorted_copy(x_train[i], rng) for i in parents]) if extra else \
        np.zeros((0, *x_train.shape[1:]), np.uint8)
    order = rng.permutation(size)  # real and distorted mixed, so a prefix is a fair subset
    return {"real_train": np.array(len(x_train)),
            "x_train": np.concatenate([x_train, copies])[order].astype(np.uint8),
            "y_train": np.concatenate([y_train, y_train[parents]])[order].astype(np.uint8),
            "x_test": x_test.astype(np.uint8), "y_test": y_test.astype(np.uint8)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "mnist10k.npz"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "mnist60k.npz"))
    p.add_argument("--size", type=int, default=60_000, help="training images in all")
    p.add_argument("--seed", type=int, default=0)
    options = p.parse_args()
    started = time.time()
    arrays = build(Path(options.source), options.size, options.seed)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    real = int(arrays.pop("real_train"))
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(arrays['x_train']):,} training images ({options.size - real:,} "
          f"distorted copies of the {real:,} real ones), {len(arrays['x_test']):,} real test "
          f"images, in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
