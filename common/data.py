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
RGBA loses its alpha, float images in [0, 1] are scaled to [0, 255], and images of mixed
sizes are resized to `image_size` (default: the first image's size). Everything else that is
wrong with the input raises `UserError` with the problem and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
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


@dataclass
class TextLines:
    images: np.ndarray  # (N, H, W) uint8
    texts: list[str]
    spec: str = ""
    files: list[str] = field(default_factory=list)


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
        data = _load_lines(Path(value))
    else:
        raise UserError(f"unknown dataset kind {kind!r} in {spec!r}; {SPECS_HELP}")
    if isinstance(data, Classification):
        if num_examples and kind != "synthetic":
            data.x_train, data.y_train = data.x_train[:num_examples], data.y_train[:num_examples]
        data.x_train = conform(data.x_train, size, channels)
        data.x_test = conform(data.x_test, size, channels)
        _check_labels(data)
    data.spec = spec
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


def conform(x: np.ndarray, size=None, channels=None) -> np.ndarray:
    """Images to uint8 (N, H, W, C): add a channel axis, drop alpha, fix channels, resize."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise UserError(
            f"images must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got shape {x.shape}"
        )
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.size and x.max() <= 1.0:
            x = x * 255.0  # floats in [0, 1] are scaled to [0, 255]
        x = np.clip(x, 0, 255).astype(np.uint8)
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


def stratified_split(x, y, test_fraction: float, seed: int):
    """Split arrays so that every class keeps the same share in train and test."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError:  # a class with a single example cannot be stratified
        return train_test_split(x, y, test_size=test_fraction, random_state=seed)


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
        )
    if name == "textlines":
        images, texts = synthetic.make_textlines(num_examples or 2000, seed=seed)
        return TextLines(images, texts)
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
    num_classes = int(max(arrays[0][1].max(), arrays[1][1].max())) + 1
    names = names or [str(i) for i in range(num_classes)]
    return Classification(*arrays[0], *arrays[1], list(names))


def read_image(path: str | Path) -> np.ndarray:
    """One image file as uint8 (H, W, C); a missing or corrupt file raises UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGBA" if "A" in img.mode else "RGB").convert("RGB")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}. Remove or replace the file.") from None
    return array[..., None] if array.ndim == 2 else array


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
        paths += files
        labels += [names.index(d.name)] * len(files)
    if not paths:
        raise UserError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return read_images(paths, size), np.asarray(labels, np.int64), names


def _load_segmentation_folder(root: Path) -> Scenes:
    images, semantic = [], []
    for image_path in _image_files(root / "images"):
        mask_paths = sorted((root / "masks").glob(image_path.stem + ".*"))
        if not mask_paths:
            raise UserError(f"no mask for {image_path} in {root / 'masks'} (same file name)")
        image, mask = read_image(image_path), read_image(mask_paths[0])[..., 0]
        if mask.shape != image.shape[:2]:
            raise UserError(f"{mask_paths[0]} is {mask.shape}, its image is {image.shape[:2]}")
        images.append(conform(image[None], channels=3)[0])
        semantic.append(mask)
    if not images:
        raise UserError(f"{root / 'images'} holds no images")
    num_classes = int(max(m.max() for m in semantic))
    empty = [np.zeros((0, 4), np.float32)] * len(images)
    return Scenes(images, empty, [np.zeros(0, np.int64)] * len(images),
                  [str(i) for i in range(1, num_classes + 1)], semantic=semantic)


def load_coco(annotations: Path) -> Scenes:
    """COCO boxes and masks (polygons or RLE); category ids are mapped to 0..K-1."""
    from pycocotools.coco import COCO

    if not annotations.is_file():
        raise UserError(f"COCO annotation file not found: {annotations}")
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            coco = COCO(str(annotations))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{annotations} is not COCO JSON ({err})") from None
    categories = sorted(coco.getCatIds())
    class_names = [coco.cats[c]["name"] for c in categories]
    images, boxes, labels, masks = [], [], [], []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        candidates = [annotations.parent / info["file_name"],
                      annotations.parent / "images" / info["file_name"],
                      annotations.parent.parent / "images" / info["file_name"]]
        path = next((p for p in candidates if p.is_file()), candidates[0])
        image = conform(read_image(path)[None], channels=3)[0]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))]
        b = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns]
        images.append(image)
        boxes.append(np.array(b, np.float32).reshape(-1, 4))
        labels.append(np.array([categories.index(a["category_id"]) for a in anns], np.int64))
        has_masks = all(a.get("segmentation") for a in anns)
        masks.append(np.array([coco.annToMask(a).astype(bool) for a in anns]).reshape(
            -1, *image.shape[:2]) if has_masks else None)
    if not images:
        raise UserError(f"{annotations} lists no images")
    return Scenes(images, boxes, labels, class_names,
                  masks=masks if all(m is not None for m in masks) else None)


NPZ_KEYS = "x_train, y_train, x_test, y_test (or x, y)"


def _load_npz(path: Path, seed, test_fraction):
    if not path.is_file():
        raise UserError(f"npz file not found: {path}")
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as .npz: {err}") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        x, y = arrays["x_train"], _labels(arrays["y_train"], "y_train")
        xt, yt = arrays["x_test"], _labels(arrays["y_test"], "y_test")
    elif {"x", "y"} <= keys:
        x, xt, y, yt = stratified_split(arrays["x"], _labels(arrays["y"], "y"), test_fraction,
                                        seed)
    else:
        raise UserError(f"{path} has keys {sorted(keys)}; expected {NPZ_KEYS}")
    if "class_names" in keys:
        names = [str(n) for n in arrays["class_names"]]
    else:
        names = [str(i) for i in range(int(max(y.max(initial=0), yt.max(initial=0))) + 1)]
    return Classification(conform(x), y, conform(xt), yt, names)


def _load_lines(path: Path) -> TextLines:
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    files, texts = [], []
    for number, row in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not row.strip():
            continue
        if "\t" not in row:
            raise UserError(f"{path}:{number}: expected FILE<TAB>TEXT, got {row!r}")
        name, text = row.split("\t", 1)
        files.append(str(path.parent / name))
        texts.append(text)
    if not files:
        raise UserError(f"{path} has no rows")
    images = [conform(read_image(f)[None], channels=1)[0, ..., 0] for f in files]
    if len({i.shape for i in images}) > 1:
        height = images[0].shape[0]  # mixed sizes: scale each line to the first line's height
        images = [np.asarray(Image.fromarray(i).resize(
            (max(1, round(i.shape[1] * height / i.shape[0])), height))) for i in images]
        width = max(i.shape[1] for i in images)
        images = [np.pad(i, ((0, 0), (0, width - i.shape[1])), constant_values=int(i.max()))
                  for i in images]
    return TextLines(np.stack(images), texts, files=files)
