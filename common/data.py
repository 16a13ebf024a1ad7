"""`load(spec)`: every dataset a recipe can use, behind one dataset spec string.

| spec                   | gives                                                       |
|------------------------|-------------------------------------------------------------|
| synthetic:shapes       | Classification: one shape per image, 10 classes (offline)   |
| synthetic:scenes       | Scenes: several shapes per image, boxes + masks (offline)   |
| synthetic:textlines    | TextLines: printed text with transcriptions (offline)       |
| tfds:NAME              | Classification from TensorFlow Datasets (needs a download)  |
| folder:DIR             | Classification (DIR/CLASS/*.png) or Scenes (DIR/images + DIR/masks) |
| coco:ANNOTATIONS.json  | Scenes: COCO boxes and polygon/RLE instance masks            |
| npz:FILE               | Classification: x_train, y_train, x_test, y_test (or x, y)  |
| lines:LABELS.tsv       | TextLines: rows FILE<TAB>TEXT                               |

Images come back as uint8 arrays (N, H, W, C) with C = 1 or 3. Conversions are documented
and deliberate: grayscale/RGB are unified to `channels` (default: 3 if any image is RGB),
RGBA loses its alpha, float images in [0, 1] are scaled to [0, 255] (floats in [0, 255] are
kept), 16-bit images (uint16 arrays, 16-bit PNG/TIFF, integers above 255 up to 65535) are
divided by 257, and images of mixed sizes are resized to `image_size` (default: the first
image's size). Labels are class ids 0..K-1 (a few unused ids are allowed; when more than half
of 0..max are unused, the labels are refused rather than turned into empty classes), and the
train split needs at least 2 classes. Everything else that is wrong with the input (NaN
pixels, damaged files, too few images to split, ...) raises `UserError` with the problem and
the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common import UserError, synthetic

SPECS_HELP = (
    "valid dataset specs: synthetic:shapes | synthetic:scenes | synthetic:textlines | "
    "tfds:NAME | folder:DIR | coco:ANNOTATIONS.json | npz:FILE | lines:LABELS.tsv"
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
OFFLINE_ALTERNATIVES = (
    "offline alternatives: synthetic:shapes, npz:FILE (e.g. npz:../shared/data/mnist10k.npz), "
    "folder:DIR"
)


@dataclass
class Classification:
    x_train: np.ndarray  # (N, H, W, C) uint8
    y_train: np.ndarray  # (N,) int64 in [0, num_classes)
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    spec: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Scenes:
    """Images with objects. Boxes are [x1, y1, x2, y2] pixels; masks/semantic may be None."""

    images: list[np.ndarray]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    class_names: list[str]
    masks: list[np.ndarray] | None = None  # per image (k, H, W) bool
    semantic: list[np.ndarray] | None = None  # per image (H, W) uint8, 0 = background
    spec: str = ""
    visible: list[np.ndarray] | None = None  # per image (k,) float32: visible share per object
    files: list[str] | None = None  # per image: where it was read from (for error messages)


@dataclass
class TextLines:
    """Text-line images of one height, padded on the right to one width with each line's own
    paper colour; `widths` says where each line really ends (a reader must not read the
    padding). `files`: where each line was read from (for error messages), if from files."""

    images: np.ndarray  # (N, H, W) uint8
    texts: list[str]
    spec: str = ""
    files: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)


def load(
    spec: str,
    *,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    num_examples: int | None = None,
    test_fraction: float = 0.2,
):
    """Load the dataset named by `spec` (see the module docstring for the table)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"malformed dataset spec {spec!r}; {SPECS_HELP}")
    kind, _, value = spec.partition(":")
    if not value:
        raise UserError(f"dataset spec {spec!r} is missing its value after ':'; {SPECS_HELP}")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if kind == "synthetic":
        data = _load_synthetic(value, seed, size, num_examples, test_fraction)
    elif kind == "tfds":
        data = _load_tfds(value, num_examples, size)
    elif kind == "folder":
        data = _load_folder(Path(value), seed, size, test_fraction)
    elif kind == "coco":
        data = load_coco(Path(value))
    elif kind == "npz":
        data = _load_npz(Path(value), seed, test_fraction)
    elif kind == "lines":
        data = _load_lines(Path(value), size[0] if size else None)
    else:
        raise UserError(f"unknown dataset kind {kind!r} in {spec!r}; {SPECS_HELP}")
    if isinstance(data, Classification):
        if num_examples and kind not in ("synthetic", "tfds") and num_examples < len(
                data.x_train):  # a class-balanced subset, not the first N of a sorted file
            data.x_train, _, data.y_train, _ = stratified_split(
                data.x_train, data.y_train, len(data.x_train) - num_examples, seed)
        data.x_train = conform(data.x_train, size, channels)
        data.x_test = conform(data.x_test, size, channels)
    data.spec = spec
    if isinstance(data, Classification):
        _check_labels(data)
    return data


def require(data, kind: type, spec: str):
    """Raise a clear error when a spec gives another kind of data than the recipe needs."""
    if not isinstance(data, kind):
        raise UserError(
            f"{spec!r} is a {type(data).__name__} dataset, this recipe needs "
            f"{kind.__name__}; {SPECS_HELP}"
        )
    return data


# ---------------------------------------------------------------- conversions and checks


def conform(x: np.ndarray, size=None, channels=None, *, name: str = "images") -> np.ndarray:
    """Images to uint8 (N, H, W, C): add a channel axis, drop alpha, fix channels, resize.

    `name` (e.g. "FILE: x_train") is how error messages refer to the array.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise UserError(
            f"{name} must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got shape {x.shape}"
        )
    x = to_uint8(x, name)
    if x.shape[-1] == 4:
        x = x[..., :3]
    if channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif channels == 1 and x.shape[-1] == 3:
        x = np.round(x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        x = x.astype(np.uint8)[..., None]
    if size is not None and tuple(x.shape[1:3]) != tuple(size) and len(x):
        import tensorflow as tf

        x = np.concatenate([
            tf.image.resize(x[i : i + 512], size, antialias=True).numpy().round()
            for i in range(0, len(x), 512)
        ]).clip(0, 255).astype(np.uint8)
    return x


PIXEL_RULES = "expected uint8 0..255, 16-bit 0..65535, or floats in [0, 1] or [0, 255]"


def to_uint8(x: np.ndarray, name: str = "images") -> np.ndarray:
    """Pixel values to uint8 by the module's rules; values that no rule covers raise UserError."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == bool:
        return x.astype(np.uint8) * 255
    if x.dtype.kind not in "uif":
        raise UserError(f"{name} has dtype {x.dtype}, not numbers; {PIXEL_RULES}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise UserError(f"{name} holds {bad} NaN/inf pixel values; clean or drop those images")
    if x.size == 0:
        return x.astype(np.uint8)
    low, high = float(x.min()), float(x.max())
    sixteen_bit = x.dtype.kind in "ui" and low >= 0 and high <= 65535 and (
        high > 255 or (x.dtype.kind == "u" and x.dtype.itemsize == 2))
    if sixteen_bit:  # the full 16-bit range onto 8 bits: 65535 -> 255, 257 -> 1
        return np.round(x.astype(np.float32) / 257.0).astype(np.uint8)
    # floats a hair outside the range are rounding noise; anything further would be clipped away
    if low < -0.01 or high > 255.5:
        raise UserError(f"{name} values span {low:g}..{high:g}; {PIXEL_RULES}: rescale them "
                        "first, e.g. 255 * (x - x.min()) / (x.max() - x.min())")
    x = x.astype(np.float32)
    if high <= 1.0:
        x = x * 255.0  # floats in [0, 1] are scaled to [0, 255]
    return np.clip(x, 0, 255).astype(np.uint8)


def _check_labels(data: Classification) -> None:
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        if len(x) == 0:
            raise UserError(f"{data.spec or 'dataset'}: the {split} split is empty")
        if len(x) != len(y):
            raise UserError(f"{split}: {len(x)} images but {len(y)} labels")
        if y.min() < 0 or y.max() >= data.num_classes:
            raise UserError(
                f"{split} labels out of range: found {int(y.min())}..{int(y.max())}, "
                f"expected 0..{data.num_classes - 1} ({data.num_classes} classes); "
                "relabel to consecutive integers from 0"
            )
    present = np.unique(data.y_train)
    if len(present) < 2:
        raise UserError(
            f"{data.spec or 'dataset'}: the train split holds only one class "
            f"({data.class_names[present[0]]!r}, {len(data.y_train)} images); classification "
            "needs at least 2 classes: add images of the other classes"
        )


def _names_for_labels(*labels: np.ndarray) -> list[str]:
    """Class names "0".."K-1" for labels without names; refuses ids that are not 0..K-1."""
    ids = np.unique(np.concatenate(labels))
    if len(ids) == 0:
        return []  # an empty split: _check_labels says so
    relabel = f"relabel them to 0..{len(ids) - 1}, e.g. np.unique(y, return_inverse=True)[1]"
    if ids[0] < 0:
        raise UserError(f"labels out of range: found negative class ids (smallest {ids[0]}); "
                        f"labels must be class ids 0..K-1: {relabel}")
    # every id up to the largest becomes a class: when more than half of them would have no
    # example (a stray label of 100000, ids 1000, 2000, ...), the labels are not class ids
    if ids[-1] + 1 > 2 * len(ids):
        raise UserError(
            f"labels must be class ids 0..K-1; found {len(ids)} distinct values up to "
            f"{ids[-1]}, so more than half of the ids 0..{ids[-1]} would be classes without "
            f"images: {relabel}"
        )
    return [str(i) for i in range(int(ids[-1]) + 1)]


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{name} must be a 1-D array of integer class ids; got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise UserError(f"{name} must hold integer class ids; got dtype {y.dtype}")
    return y.astype(np.int64)


def stratified_split(x, y, test_fraction: float | int, seed: int):
    """Split arrays so that every class keeps the same share in train and test.

    `test_fraction` is a share in (0, 1), or an int: the number of test images.
    """
    from sklearn.model_selection import train_test_split

    if len(x) != len(y):
        raise UserError(f"{len(x)} images but {len(y)} labels: every image needs one label")
    whole = isinstance(test_fraction, (int, np.integer))
    n_test = int(test_fraction) if whole else math.ceil(len(y) * test_fraction)  # as sklearn
    if not 0 < n_test < len(y):
        raise UserError(
            f"cannot split {len(y)} images into train and test with test fraction "
            f"{test_fraction}: that leaves {n_test} test and {len(y) - n_test} train images, "
            "and both need at least one; add images, or give separate train and test sets "
            "(npz x_train/x_test, or folder DIR/train + DIR/test)"
        )
    try:
        return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError:  # a class with a single example cannot be stratified
        return train_test_split(x, y, test_size=test_fraction, random_state=seed)


# one item per image in each of these fields
SCENE_FIELDS = ("images", "boxes", "labels", "masks", "semantic", "visible", "files")


def split_scenes(scenes: Scenes, test_fraction: float, seed: int) -> tuple[Scenes, Scenes]:
    """A seeded random split of the images of `scenes` into (train, test).

    Every per-image field is split alike; each part keeps the images in their original order.
    The test part gets ceil(N * test_fraction) images, and each part at least one. The same
    (scenes, test_fraction, seed) always gives the same split, which is what lets
    `common.export_coco` write exactly the train and test sets a recipe uses.
    """
    n = len(scenes.images)
    if not 0 < test_fraction < 1:
        raise UserError(f"test fraction {test_fraction} must be between 0 and 1 (e.g. 0.2)")
    if n < 2:
        raise UserError(f"{scenes.spec or 'dataset'}: cannot split {n} image(s) into train and "
                        "test, both need at least one; add images")
    n_test = min(max(math.ceil(n * test_fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    parts = []
    for chosen in (np.sort(order[n_test:]), np.sort(order[:n_test])):
        fields = {}
        for name in SCENE_FIELDS:
            values = getattr(scenes, name)
            fields[name] = None if values is None else [values[i] for i in chosen]
        parts.append(dataclasses.replace(scenes, **fields))
    return parts[0], parts[1]


# ---------------------------------------------------------------- the sources


def _load_synthetic(name, seed, size, num_examples, test_fraction):
    if name == "shapes":
        n = num_examples or 3000
        image_size = size[0] if size else 32
        x, y = synthetic.make_shapes(n, image_size=image_size, seed=seed)
        n_test = max(len(synthetic.SHAPES), int(n * test_fraction))
        xt, yt = synthetic.make_shapes(n_test, image_size=image_size, seed=seed + 10_000)
        return Classification(x, y, xt, yt, list(synthetic.SHAPES))
    if name == "scenes":
        scenes = synthetic.make_scenes(num_examples or 500, image_size=size[0] if size else 64,
                                       seed=seed)
        return Scenes(
            images=[s.image for s in scenes], boxes=[s.boxes for s in scenes],
            labels=[s.labels for s in scenes], class_names=list(synthetic.SHAPES),
            masks=[s.masks for s in scenes], semantic=[s.semantic for s in scenes],
            visible=[s.visible for s in scenes],
        )
    if name == "textlines":  # lines in the training fonts and mixed conditions
        fonts, _ = synthetic.textline_font_split()
        images, texts = synthetic.make_textline_set(num_examples or 2000, seed, fonts)
        return stack_lines(images, texts, size[0] if size else 32)
    raise UserError(
        f"unknown synthetic dataset {name!r}: use synthetic:shapes, synthetic:scenes or "
        "synthetic:textlines"
    )


def is_online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """True when the TFDS download host answers; a closed network answers 'no' in seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_tfds(name, num_examples, size):
    import tensorflow_datasets as tfds

    def read(download):
        return tfds.load(name, split=["train", "test"], as_supervised=True, download=download)

    try:
        splits = read(download=False)
    except tfds.core.registered.DatasetNotFoundError as err:
        hint = next((line for line in str(err).splitlines() if "Did you mean" in line), "")
        raise UserError(f"tfds:{name} is not a TensorFlow Datasets name. {hint} "
                        "(list: tfds.list_builders())") from None
    except (AssertionError, FileNotFoundError, OSError):
        # not prepared locally: download it, but only when a download can work
        if not is_online():
            raise UserError(
                f"tfds:{name} is not in the local TFDS cache and needs a download, but there is "
                f"no network; {OFFLINE_ALTERNATIVES}"
            ) from None
        splits = read(download=True)
    except ValueError as err:  # e.g. the dataset has no 'test' split
        raise UserError(f"tfds:{name}: {err}") from None
    arrays = []
    for ds in splits:
        if num_examples:
            ds = ds.take(num_examples)
        xs, ys = [], []
        for image, label in tfds.as_numpy(ds):
            if size is not None and image.shape[:2] != tuple(size):
                image = conform(image[None], size)[0]
            xs.append(image)
            ys.append(label)
        if len({x.shape for x in xs}) > 1:
            raise UserError(f"tfds:{name} has images of mixed sizes: pass --image-size N")
        arrays.append((np.stack(xs), np.asarray(ys, np.int64)))
    builder_info = tfds.builder(name).info
    names = builder_info.features["label"].names if "label" in builder_info.features else None
    names = names or _names_for_labels(arrays[0][1], arrays[1][1])
    return Classification(*arrays[0], *arrays[1], list(names))


def load_tfds_scenes(name: str, num_examples: int | None = None) -> tuple[Scenes, Scenes]:
    """A TFDS detection dataset with `objects/bbox` + `objects/label` (e.g. voc/2007) as
    (train, test) Scenes, boxes in pixels; the local cache first, a download only when online."""
    import tensorflow_datasets as tfds

    splits = ["train+validation", "test"] if name.startswith("voc") else ["train", "test"]

    def read(download):
        return tfds.load(name, split=splits, with_info=True, download=download)

    try:
        parts, info = read(download=False)
    except tfds.core.registered.DatasetNotFoundError as err:
        hint = next((line for line in str(err).splitlines() if "Did you mean" in line), "")
        raise UserError(f"tfds:{name} is not a TensorFlow Datasets name. {hint}") from None
    except (AssertionError, FileNotFoundError, OSError):
        if not is_online():
            raise UserError(
                f"tfds:{name} is not in the local TFDS cache and needs a download, but there is "
                "no network; offline alternatives: synthetic:scenes, or coco:FILE.json (e.g. "
                "written by `python -m common.export_coco DIR`)") from None
        parts, info = read(download=True)
    if "objects" not in info.features or "bbox" not in info.features["objects"]:
        raise UserError(f"tfds:{name} has no objects/bbox feature: not a detection dataset")
    names = list(info.features["objects"]["label"].names)
    scenes, dropped = [], 0
    for ds in parts:
        images, boxes, labels = [], [], []
        for example in tfds.as_numpy(ds.take(num_examples) if num_examples else ds):
            h, w = example["image"].shape[:2]
            yxyx = np.asarray(example["objects"]["bbox"], np.float32).reshape(-1, 4)  # 0..1
            label = np.asarray(example["objects"]["label"], np.int64)
            k = min(len(yxyx), len(label))  # equal in real data; TFDS' mock data draws both
            xyxy = np.clip(yxyx[:k, [1, 0, 3, 2]], 0, 1) * np.array([w, h, w, h], np.float32)
            valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
            dropped += int((~valid).sum())
            images.append(conform(example["image"][None], channels=3)[0])
            boxes.append(xyxy[valid])
            labels.append(label[:k][valid])
        scenes.append(Scenes(images, boxes, labels, names, spec=f"tfds:{name}"))
    if dropped:
        print(f"note: tfds:{name}: dropped {dropped} boxes of zero area")
    return scenes[0], scenes[1]


def load_tfds_segmentation(name: str, num_examples: int | None = None,
                           ignore_index: int = 255) -> tuple[Scenes, Scenes]:
    """A TFDS dataset with `image` + `segmentation_mask` features as (train, test) Scenes with
    semantic masks; the local cache first, a download only when online. oxford_iiit_pet's
    trimaps (1 pet, 2 background, 3 outline) become 1 pet, 0 background, and `ignore_index`
    for the outline, which the annotators left undecided."""
    import tensorflow_datasets as tfds

    def read(download):
        return tfds.load(name, split=["train", "test"], with_info=True, download=download)

    try:
        parts, info = read(download=False)
    except tfds.core.registered.DatasetNotFoundError as err:
        hint = next((line for line in str(err).splitlines() if "Did you mean" in line), "")
        raise UserError(f"tfds:{name} is not a TensorFlow Datasets name. {hint}") from None
    except (AssertionError, FileNotFoundError, OSError):
        if not is_online():
            raise UserError(
                f"tfds:{name} is not in the local TFDS cache and needs a download, but there is "
                "no network; offline alternatives: synthetic:scenes, folder:DIR (DIR/images + "
                "DIR/masks), coco:FILE.json") from None
        parts, info = read(download=True)
    if "segmentation_mask" not in info.features:
        raise UserError(f"tfds:{name} has no segmentation_mask feature: not a segmentation "
                        "dataset (e.g. tfds:oxford_iiit_pet)")
    pets = name.startswith("oxford_iiit_pet")
    scenes, resized = [], 0
    for ds in parts:
        images, semantic = [], []
        for example in tfds.as_numpy(ds.take(num_examples) if num_examples else ds):
            mask, shape = np.asarray(example["segmentation_mask"]), example["image"].shape[:2]
            mask = mask[..., 0] if mask.ndim == 3 else mask
            if mask.shape != shape:  # nearest neighbour: class ids must not blend
                resized += 1
                mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(
                    shape[::-1], Image.NEAREST))
            if pets:
                mask = np.select([mask == 1, mask == 2], [1, 0], ignore_index)
            images.append(conform(example["image"][None], channels=3)[0])
            semantic.append(mask.astype(np.uint8))
        n = len(images)
        scenes.append(Scenes(images, [np.zeros((0, 4), np.float32)] * n,
                             [np.zeros(0, np.int64)] * n, ["pet"] if pets else [],
                             semantic=semantic, spec=f"tfds:{name}"))
    if resized:
        print(f"note: tfds:{name}: {resized} masks were not their image's size and were resized")
    if not pets:  # class names from the ids found
        top = max(int(m[m != ignore_index].max(initial=0)) for m in scenes[0].semantic)
        for part in scenes:
            part.class_names = [str(i) for i in range(1, top + 1)]
    return scenes[0], scenes[1]


def read_image(path: str | Path) -> np.ndarray:
    """One image file as uint8 (H, W, C); a missing, corrupt or oversized file raises UserError.

    16-bit (PIL modes I;16*), 32-bit integer (I) and float (F) images are converted by
    `to_uint8`'s rules, e.g. a 16-bit PNG is divided by 257 rather than clipped at 255.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory: pass image files (e.g. {path}/*.png)")
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice the limit; refuse both alike
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                array = _pixels(img, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(_too_many_pixels(path)) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}. Remove or replace the file.") from None
    return array[..., None] if array.ndim == 2 else array


def _pixels(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in ("L", "RGB"):
        return np.asarray(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return to_uint8(np.asarray(img), str(path))  # convert("RGB") would clip at 255
    return np.asarray(img.convert("RGBA" if "A" in img.mode else "RGB").convert("RGB"))


def _too_many_pixels(path: Path) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # opening reads only the header: safe, and names the size
    try:
        with Image.open(path) as img:
            width, height = img.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return (f"{path} is {width}x{height} = {width * height:,} pixels, over Pillow's "
            f"decompression-bomb limit of {limit:,}: resize it, or if you trust the file, raise "
            f"the limit (PIL.Image.MAX_IMAGE_PIXELS = {width * height})")


def read_images(paths, size=None, channels=None) -> np.ndarray:
    """Several image files to one uint8 array, unified to `channels` and resized to `size`."""
    images = [read_image(p) for p in paths]
    if not images:
        raise UserError("no images given")
    size = size or images[0].shape[:2]
    channels = channels or (3 if any(i.shape[-1] == 3 for i in images) else 1)
    return np.concatenate([conform(i[None], size, channels) for i in images])


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _load_folder(root: Path, seed, size, test_fraction):
    if not root.is_dir():
        raise UserError(f"folder not found: {root}")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return _load_segmentation_folder(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, names = _read_class_folders(root / "train", size)
        xt, yt, test_names = _read_class_folders(root / "test", size or x.shape[1:3], names)
        return Classification(x, y, xt, yt, names)
    x, y, names = _read_class_folders(root, size)
    x, xt, y, yt = stratified_split(x, y, test_fraction, seed)
    return Classification(x, y, xt, yt, names)


def _read_class_folders(root: Path, size, names=None):
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{root} has no class subfolders: expected {root}/CLASS_NAME/IMAGE files")
    names = names or [p.name for p in class_dirs]
    paths, labels = [], []
    for d in class_dirs:
        if d.name not in names:
            raise UserError(f"{d} is a class that the train folder does not have ({names})")
        files = [p for p in _image_files(d) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise UserError(f"class folder {d} holds no images ({suffixes}): add images of "
                            f"class {d.name!r} or remove the folder")
        paths += files
        labels += [names.index(d.name)] * len(files)
    return read_images(paths, size), np.asarray(labels, np.int64), names


def _load_segmentation_folder(root: Path) -> Scenes:
    """DIR/images/NAME.* + DIR/masks/NAME.* (class ids; 0 = background). An all-zero mask is
    a valid image with no foreground."""
    images, semantic, files = [], [], []
    for image_path in _image_files(root / "images"):
        mask_paths = sorted((root / "masks").glob(image_path.stem + ".*"))
        if not mask_paths:
            raise UserError(f"no mask for {image_path} in {root / 'masks'}: add "
                            f"{root / 'masks' / image_path.stem}.png (class ids), same file stem")
        image, mask = read_image(image_path), read_mask(mask_paths[0])
        if mask.shape != image.shape[:2]:
            raise UserError(f"{mask_paths[0]} is {mask.shape[1]}x{mask.shape[0]} pixels, its "
                            f"image {image_path} {image.shape[1]}x{image.shape[0]}: masks must "
                            "have their image's size")
        images.append(conform(image[None], channels=3)[0])
        semantic.append(mask)
        files.append(str(image_path))
    if not images:
        raise UserError(f"{root / 'images'} holds no images")
    num_classes = int(max(m.max() for m in semantic))
    empty = [np.zeros((0, 4), np.float32)] * len(images)
    return Scenes(images, empty, [np.zeros(0, np.int64)] * len(images),
                  [str(i) for i in range(1, num_classes + 1)], semantic=semantic, files=files)


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file of class ids as (H, W) uint8: grayscale or palette PNG (the palette index is
    the class id, as in Pascal VOC), or RGB with R = G = B. Colour masks are refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode, mask = img.mode, np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read mask {path}: {err}. Remove or replace the file.") from None
    if mask.ndim == 3:
        if mask.shape[-1] == 4:
            mask = mask[..., :3]
        if not (mask == mask[..., :1]).all():
            raise UserError(f"{path} is a colour ({mode}) image: a mask holds one class id per "
                            "pixel; save it as a grayscale or palette PNG of ids 0..K-1")
        mask = mask[..., 0]
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.min() < 0 or mask.max() > 255:
        raise UserError(f"{path} holds values {mask.min()}..{mask.max()}: class ids must be "
                        "0..255 (0 = background)")
    return mask.astype(np.uint8)


def load_coco(annotations: Path) -> Scenes:
    """COCO boxes and masks (polygons or RLE); category ids are mapped to 0..K-1.

    Image files are looked up next to the JSON, in its `images/` sibling folder, and in
    `../images`. Boxes reaching outside their image are clipped to it; boxes with no area left
    (outside the image, zero or negative width or height) are dropped, and a note counts both.
    Crowd annotations (iscrowd=1) are skipped. An image without annotations is a valid example
    with no objects. A "visible" number on every annotation (the visible share of the object,
    as `common.export_coco` writes) comes back as `Scenes.visible`.
    """
    from pycocotools.coco import COCO

    if not annotations.is_file():
        raise UserError(f"COCO annotation file not found: {annotations}")
    coco = COCO()
    coco.dataset = _read_coco_json(annotations)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        coco.createIndex()
    categories = sorted(coco.getCatIds())
    class_names = [coco.cats[c]["name"] for c in categories]
    image_ids = sorted(coco.getImgIds())
    if not image_ids:
        raise UserError(f"{annotations} lists no images")
    paths = _coco_image_paths(annotations, [coco.imgs[i]["file_name"] for i in image_ids])
    images, boxes, labels, masks, visible = [], [], [], [], []
    clipped = dropped = 0
    for image_id, path in zip(image_ids, paths):
        image = conform(read_image(path)[None], channels=3)[0]
        height, width = image.shape[:2]
        anns, kept_boxes = [], []
        for ann in coco.imgToAnns[image_id]:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = [x, y, x + w, y + h]
            inside = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                      min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
            if not (inside[2] > inside[0] and inside[3] > inside[1]):  # also catches NaN
                dropped += 1
                continue
            clipped += inside != box
            anns.append(ann)
            kept_boxes.append(inside)
        images.append(image)
        boxes.append(np.array(kept_boxes, np.float32).reshape(-1, 4))
        labels.append(np.array([categories.index(a["category_id"]) for a in anns], np.int64))
        has_masks = all(a.get("segmentation") for a in anns)
        masks.append(_coco_masks(coco, anns, image.shape[:2], annotations) if has_masks else None)
        visible.append(np.array([a.get("visible", np.nan) for a in anns], np.float32))
    if clipped or dropped:
        print(f"note: {annotations}: clipped {clipped} boxes to their image, dropped {dropped} "
              "boxes of zero area (outside the image, or zero/negative width or height)")
    # visibility only when the file gives it for every object (a partial column would be noise)
    has_visible = any(len(v) for v in visible) and not any(np.isnan(v).any() for v in visible)
    return Scenes(images, boxes, labels, class_names,
                  masks=masks if all(m is not None for m in masks) else None,
                  visible=visible if has_visible else None, files=[str(p) for p in paths])


def _coco_image_paths(annotations: Path, file_names: list[str]) -> list[Path]:
    """Where each listed image is; all are checked before any is read, so that a missing
    folder fails at once rather than after reading thousands of images."""
    folders = [annotations.parent, annotations.parent / "images", annotations.parent.parent /
               "images"]
    paths, missing = [], []
    for name in file_names:
        path = next((f / name for f in folders if (f / name).is_file()), None)
        if path is None:
            missing.append(name)
        paths.append(path)
    if missing:
        searched = ", ".join(str(f) for f in folders)
        raise UserError(
            f"{annotations}: {len(missing)} of {len(file_names)} listed images are not on disk, "
            f"first {missing[0]!r}; searched {searched}. Put the images next to the JSON or in "
            "an images/ folder beside it, or remove their entries")
    return paths


def _read_coco_json(path: Path) -> dict:
    """The annotation file, checked for what loading needs before pycocotools indexes it."""
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not COCO JSON ({err})") from None
    problem = _coco_problem(coco)
    if problem:
        raise UserError(f"{path} is not usable COCO JSON: {problem} "
                        "(format: https://cocodataset.org/#format-data)")
    return coco


def _coco_problem(coco) -> str | None:
    """What is wrong with a parsed COCO file, in words; None when nothing is."""
    if not isinstance(coco, dict):
        return f"the top level is a {type(coco).__name__}, expected an object"
    keys = ("images", "annotations", "categories")
    missing = [k for k in keys if not isinstance(coco.get(k), list)]
    if missing:
        return f"it has no {' / '.join(repr(k) for k in missing)} list"
    image_ids, category_ids = set(), set()
    for image in coco["images"]:
        if not isinstance(image, dict) or not {"id", "file_name"} <= set(image):
            return f"image entry {str(image)[:80]} lacks 'id' or 'file_name'"
        if image["id"] in image_ids:  # pycocotools would keep only the last of them
            return f"image id {image['id']!r} is listed twice (second: {image['file_name']!r})"
        image_ids.add(image["id"])
    for category in coco["categories"]:
        if not isinstance(category, dict) or not {"id", "name"} <= set(category):
            return f"category entry {str(category)[:80]} lacks 'id' or 'name'"
        category_ids.add(category["id"])
    for ann in coco["annotations"]:
        if not isinstance(ann, dict) or "id" not in ann:
            return f"annotation {str(ann)[:80]} lacks 'id'"
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) for v in box)):
            return f"annotation {ann['id']} has no 'bbox' [x, y, width, height] (got {box!r})"
        if ann.get("category_id") not in category_ids:
            return (f"annotation {ann['id']} names category_id {ann.get('category_id')!r}, "
                    f"which is not in 'categories' (ids {sorted(category_ids)})")
        if ann.get("image_id") not in image_ids:
            return f"annotation {ann['id']} names image_id {ann.get('image_id')!r}, not in 'images'"
        if "visible" in ann and not isinstance(ann["visible"], (int, float)):
            return (f"annotation {ann['id']} has 'visible' {ann['visible']!r}; expected a number "
                    "(the visible share of the object, 0..1)")
    return None


def _coco_masks(coco, anns: list[dict], shape: tuple[int, int], path: Path) -> np.ndarray:
    """(k, H, W) bool masks from polygons or RLE, drawn at the image's actual size."""
    masks = []
    for ann in anns:
        info = coco.imgs[ann["image_id"]]
        info.setdefault("height", shape[0])
        info.setdefault("width", shape[1])
        segmentation = ann["segmentation"]
        if isinstance(segmentation, dict) and list(segmentation.get("size") or []) != list(shape):
            # an RLE carries its own size: decoded at another size it is garbage or an error
            raise UserError(f"{path}: annotation {ann['id']} has an RLE mask of size (height, "
                            f"width) {segmentation.get('size')}, but its image "
                            f"{info['file_name']} is {shape[0]}x{shape[1]} (height x width); "
                            "encode the mask at the image's size")
        try:
            mask = coco.annToMask(ann).astype(bool)
        except Exception as err:  # pycocotools raises bare Exception, TypeError, ValueError...
            raise UserError(f"{path}: annotation {ann['id']} has an unreadable 'segmentation' "
                            f"({type(err).__name__}: {err}); use polygons or RLE") from None
        if mask.shape != tuple(shape):
            raise UserError(f"{path}: image {info['file_name']} is {shape[1]}x{shape[0]} pixels "
                            f"but the JSON says {info['width']}x{info['height']}; fix the entry")
        masks.append(mask)
    return np.array(masks).reshape(-1, *shape)


NPZ_KEYS = "x_train, y_train, x_test, y_test (or x, y)"
NPZ_SAVE = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read here so that a damaged file fails here, clearly."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise UserError(f"cannot read {path}: it is a single .npy array saved under an .npz name; "
                        f"save named arrays: {NPZ_SAVE}")
    if not head.startswith(b"PK"):
        raise UserError(f"cannot read {path}: not a valid .npz (zip) file; save it with {NPZ_SAVE}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as err:
        if "allow_pickle" in str(err):  # numpy's words for an object array
            raise UserError(f"cannot read {path}: it holds Python objects (pickled); save plain "
                            f"numeric arrays: {NPZ_SAVE}") from None
        problem = err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
        problem = err
    raise UserError(f"cannot read {path}: not a valid .npz (zip) file, damaged or truncated "
                    f"({problem}); save it again with {NPZ_SAVE}")


def _npz_pair(arrays: dict, path: Path, x_key: str, y_key: str):
    """Images and labels from an npz, converted and checked before they are split or used."""
    x, y = conform(arrays[x_key], name=f"{path}: {x_key}"), _labels(arrays[y_key], y_key)
    if len(x) != len(y):
        raise UserError(f"{path}: {x_key} has {len(x)} images but {y_key} has {len(y)} labels; "
                        "every image needs exactly one label")
    return x, y


def _load_npz(path: Path, seed, test_fraction):
    if not path.is_file():
        raise UserError(f"npz file not found: {path}")
    arrays = _read_npz(path)
    if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        x, y = _npz_pair(arrays, path, "x_train", "y_train")
        xt, yt = _npz_pair(arrays, path, "x_test", "y_test")
    elif {"x", "y"} <= set(arrays):
        x, xt, y, yt = stratified_split(*_npz_pair(arrays, path, "x", "y"), test_fraction, seed)
    else:
        raise UserError(f"{path} has keys {sorted(arrays)}; expected {NPZ_KEYS}")
    if "class_names" in arrays:
        names = [str(n) for n in arrays["class_names"].reshape(-1)]
    else:
        names = _names_for_labels(y, yt)
    return Classification(x, y, xt, yt, names)


def stack_lines(images: list[np.ndarray], texts: list[str], height: int | None = None,
                files: list[str] | None = None) -> TextLines:
    """TextLines from line images of any size and channels: grayscale, scaled to `height`
    (default: the first line's height) keeping the aspect ratio, padded on the right with each
    line's brightest value (its paper, for dark ink) to the widest line; `widths` keeps where
    each line ends."""
    gray = [conform(i[None], channels=1)[0, ..., 0] for i in images]
    height = height or gray[0].shape[0]
    scaled = []
    for line in gray:
        if line.shape[0] != height:
            width = max(1, round(line.shape[1] * height / line.shape[0]))
            line = np.asarray(Image.fromarray(line).resize((width, height),
                                                            Image.Resampling.BILINEAR))
        scaled.append(line)
    widths = [line.shape[1] for line in scaled]
    most = max(widths)
    padded = np.stack([np.pad(line, ((0, 0), (0, most - line.shape[1])),
                              constant_values=int(line.max())) for line in scaled])
    return TextLines(padded, list(texts), files=list(files or []), widths=widths)


def _load_lines(path: Path, height: int | None = None) -> TextLines:
    """A labels file of FILE<TAB>TEXT rows (FILE relative to its folder): every line image,
    scaled to `height` (default: the first line's height), and its text."""
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    try:
        rows = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start}); "
                        "lines: expects a TSV of FILE<TAB>TEXT rows") from None
    files, texts = [], []
    for number, row in enumerate(rows, 1):
        if not row.strip():
            continue
        if "\t" not in row:
            raise UserError(f"{path}:{number}: expected FILE<TAB>TEXT, got {row!r}")
        name, text = row.split("\t", 1)
        text = text.rstrip("\r")  # a file saved with Windows line ends
        if not text.strip():
            raise UserError(f"{path}:{number}: {name!r} has an empty text: every line image "
                            "needs its transcription (remove the row, or write the text)")
        files.append(str(path.parent / name))
        texts.append(text)
    if not files:
        raise UserError(f"{path} has no rows")
    images = []
    for file in files:
        image = read_image(file)
        if image.size == 0 or min(image.shape[:2]) < 2:
            raise UserError(f"{file} is {image.shape[1]}x{image.shape[0]} pixels: too small to "
                            "hold a line of text; remove the row or replace the image")
        images.append(image)
    return stack_lines(images, texts, height, files)
