# %% [markdown]
# # Object detection: YOLOv8 (keras-cv) and RetinaNet (keras-hub) on boxes, scored with COCO mAP
#
# **Description:** train a maintained Keras detector on images with several, sometimes
# overlapping objects, and score it with the COCO metrics (pycocotools): AP averaged over
# IoU thresholds .50:.95, AP@.5, AP@.75, recall, per-class AP. The default data is synthetic
# scenes (offline); any COCO-format dataset works (`--dataset coco:ANNOTATIONS.json`). Two
# detectors from the Keras libraries share one generic pretrained backbone:
# keras-cv's `YOLOV8Detector` (anchor-free, the default) and keras-hub's
# `RetinaNetObjectDetector` (anchor boxes, focal loss). An occlusion study measures recall by
# how much of each object is hidden, with and without occlusion-style augmentation.
#
# **Concepts:** a detector proposes candidate regions densely, at every position of several
# feature maps of different strides (a feature pyramid: coarse maps for large objects, fine
# maps for small ones) and at several scales and aspect ratios (anchor boxes, or for YOLOv8
# anchor *points*). For each candidate it predicts an objectness/class score and a box
# regression (how to move and resize the candidate to fit the object). Non-maximum
# suppression keeps the best of overlapping predictions. Occlusion hurts detection in
# predictable ways: part of an object's features are missing, so boxes are misplaced, objects
# are fragmented or missed, and recall falls; training with occluders makes models lean on
# the parts that stay visible.
#
# Run: `make detection` or `python -m recipes.detection --help`. In a notebook, pass flags
# through `RECIPE_ARGS` in a cell above the setup cell, e.g.
# `os.environ["RECIPE_ARGS"] = "--epochs 5 --dataset coco:/content/data/train.json"` (there
# it replaces the command line; empty or unset: the defaults).

# %%
# Setup: make `common` importable. From a clone: go to the repository root (outputs land in
# runs/). In Colab: clone the repository named by CNN_RECIPES_REPO and install its pinned stack.
import os
import subprocess
import sys
from importlib.util import find_spec

root = os.getcwd()
while not os.path.isfile(os.path.join(root, "common", "__init__.py")) and root != os.path.dirname(root):
    root = os.path.dirname(root)
if not os.path.isfile(os.path.join(root, "common", "__init__.py")) and find_spec("common") is None:
    if "google.colab" not in sys.modules:
        raise SystemExit("setup: run this from inside a clone of the repository (the folder holding common/), or `pip install -e CLONE`")
    repo = os.environ.get("CNN_RECIPES_REPO", "")
    if not repo:
        raise SystemExit("setup: set the repository's git URL first, e.g. os.environ['CNN_RECIPES_REPO'] = 'https://github.com/OWNER/REPO'")
    root = os.path.abspath("cnn-recipes")
    if not os.path.isdir(root) and subprocess.run(["git", "clone", "--depth", "1", repo, root]).returncode:
        raise SystemExit(f"setup: git clone {repo} failed (message above): check CNN_RECIPES_REPO")
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", os.path.join(root, "requirements.txt")]).returncode:
        raise SystemExit("setup: pip install of requirements.txt failed (message above)")
if os.path.isfile(os.path.join(root, "common", "__init__.py")):
    os.chdir(root)
    sys.path.insert(0, root)

# %% [markdown]
# ## Flags
#
# Read before the heavy imports, so that `--help` answers at once. The budget: about 900
# optimisation steps per run (at most 60 epochs, at least 6 per model), shared by the two
# models of the occlusion study (450 each); early stopping on the validation mAP, and the
# best epoch's weights kept.

# %%
from common import UserError, cli

SPECS = "synthetic:scenes | coco:ANNOTATIONS.json (images beside it or in images/) | tfds:voc/2007"
parser = cli.parser("detection", "Train and score an object detector (COCO mAP).",
                    dataset="synthetic:scenes", epochs=60, batch_size=16, budget_steps=900,
                    min_epochs=6, specs=SPECS, train_size=False)
parser.add_argument("--model", choices=["yolov8", "retinanet"], default="yolov8",
                    help="yolov8: keras-cv YOLOV8Detector (anchor-free) | retinanet: keras-hub "
                    "RetinaNetObjectDetector (anchor boxes, focal loss)")
parser.add_argument("--weights", default="generic",
                    help="backbone weights: generic (the collection's pretrained backbone, offline) "
                    "| none (random) | PATH.weights.h5 (generic-architecture weights, e.g. from "
                    "`make pretrain`) | imagenet (keras-hub ResNet-18 ImageNet preset, a download)")
parser.add_argument("--val-dataset", default=None,
                    help="a second COCO file to report on (default: a seeded split of --dataset)")
parser.add_argument("--image-size", type=int, default=None,
                    help="model input side in pixels, a multiple of 32; images are resized and "
                    "padded to it (default: 128, or the data's median longest side up to 320)")
parser.add_argument("--num-scenes", type=int, default=1000, help="synthetic:scenes images")
parser.add_argument("--occlusion", choices=["none", "erase", "compare"], default="none",
                    help="occlusion-style augmentation (random erasing): none | erase | compare: "
                    "train both and report recall by occlusion bucket (synthetic data)")
parser.add_argument("--patience", type=int, default=8,
                    help="early stopping: epochs without a better validation mAP")
parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (Adam, cosine)")
parser.predict.add_argument("--score-threshold", type=float, default=0.3,
                            help="keep boxes scoring at least this")
parser.predict.add_argument("--draw", default=None, metavar="DIR",
                            help="also write each image with its boxes to DIR")
args = cli.parse_args(parser)

# %%
import json
import math
import time
from pathlib import Path

import keras
import keras_cv
import keras_hub
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from PIL import Image

from common import callbacks, data, export_coco, metrics, pipeline, plots, results, saving
from common.detectors import GenericPyramidEncoder, GenericYoloBackbone

out = Path(args.out)
MAX_BOXES = 100  # at most this many objects per image are trained on (COCO's own cap)
BUCKETS = {"0": (0.0, 0.0), "<25": (0.0, 0.25), "25-50": (0.25, 0.5), ">50": (0.5, 1.0)}

# %% [markdown]
# ## Resize and pad: any image size in, boxes back in the image's own pixels
#
# The detector takes square images of one size (`--image-size`). Each image is scaled so its
# longer side fits, then padded at the bottom and right ("letterbox"); its boxes are scaled by
# the same factor. Predictions are divided by that factor and clipped to the image, so boxes
# come back in the original image's pixels whatever its size.

# %%
def letterbox(image, size):
    """(size, size, 3) uint8 canvas holding `image` scaled to fit, and the scale used."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                            Image.BILINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: resized.height, : resized.width] = np.asarray(resized)
    return canvas, scale


def to_model_input(scenes, size):
    """Letterboxed images, padded targets (-1 rows) and the per-image scale. The targets have
    as many rows as the busiest image (the label assigners' cost grows with it)."""
    n, rows = len(scenes.images), max(1, min(MAX_BOXES, max(len(b) for b in scenes.boxes)))
    x = np.zeros((n, size, size, 3), np.uint8)
    boxes = np.full((n, rows, 4), -1, np.float32)
    classes = np.full((n, rows), -1, np.float32)
    scales = np.zeros(n, np.float32)
    dropped = 0
    for i, (image, b, c) in enumerate(zip(scenes.images, scenes.boxes, scenes.labels)):
        x[i], scales[i] = letterbox(image, size)
        dropped += max(0, len(b) - rows)
        boxes[i, : len(b[:rows])] = b[:rows] * scales[i]
        classes[i, : len(c[:rows])] = c[:rows]
    if dropped:
        print(f"note: {dropped} objects beyond {MAX_BOXES} per image were left out of training")
    return x, {"boxes": boxes, "classes": classes}, scales


# %% [markdown]
# ## The data
#
# `synthetic:scenes`: 64x64 images with one to four of ten shapes, in random colours and
# textures on random backgrounds; later shapes occlude earlier ones, and every object knows
# how much of it is visible (objects less than 30 % visible are not labelled). A COCO file is
# split by `--seed` (80/20) unless `--val-dataset` names the test set. In both cases 10 % of
# the training images are held out for early stopping and choosing the best epoch, so the
# test images never influence training. `tfds:voc/2007` (Pascal VOC, 20 classes) downloads
# when online.

# %%
def load_splits():
    kind, _, value = args.dataset.partition(":")
    if kind == "tfds":
        train, test = data.load_tfds_scenes(value, args.num_scenes if args.smoke else None)
    else:
        size = 64 if args.dataset == "synthetic:scenes" else None
        everything = data.require(data.load(args.dataset, seed=args.seed, image_size=size,
                                            num_examples=args.num_scenes), data.Scenes, args.dataset)
        if args.val_dataset:
            train = everything
            test = data.require(data.load(args.val_dataset), data.Scenes, args.val_dataset)
            if test.class_names != train.class_names:
                raise UserError(f"{args.val_dataset} names its classes {test.class_names[:5]}, "
                                f"{args.dataset} {train.class_names[:5]}: use one category list")
        else:
            train, test = data.split_scenes(everything, 0.2, args.seed)
    train, val = data.split_scenes(train, 0.1, args.seed + 1)
    return train, val, test


# %% [markdown]
# ## The models: a generic backbone under two library detectors
#
# Both detectors get the collection's generic backbone (pretrained offline on about 800
# classes of glyphs and pictograms, `make pretrain`) as the bottom of a feature pyramid. Like
# the stem of YOLOv8's own backbone, ours first halves the resolution (2x2 average pooling),
# so its four stages give maps of stride 2, 4, 8 and 16 of the input; a new stride-2 stage adds
# stride 32. The detectors take the levels they were built for:
#
# - **YOLOv8** (keras-cv) uses strides 8, 16, 32 (keras-cv fixes them) with a path-aggregation
#   FPN and a decoupled head: at every position of every level an *anchor point* predicts
#   class scores and the distances from the point to the four box sides. Training matches
#   points to objects with a task-aligned assigner (points inside a box whose predicted score
#   and IoU are both high).
# - **RetinaNet** (keras-hub) uses strides 8, 16, 32 with an FPN, and at each position 9
#   *anchor boxes* (3 scales x 3 aspect ratios); an anchor with IoU >= 0.5 with an
#   object is positive, < 0.4 is background. Focal loss keeps the easy background anchors
#   from swamping the loss.
#
# Neither has a separate region-proposal network: the dense classification head over all
# anchors (or anchor points) plays its role, scoring every candidate region at once, with the
# objectness folded into per-class scores; non-maximum suppression then keeps the best box of
# each overlapping group. The two backbone adapters live in `common/detectors.py` (registered
# Keras classes: `import common.detectors`, then `keras.saving.load_model` rebuilds a saved
# detector in any program).

# %%
def build_detector(kind, num_classes, size, weights):
    shape = (size, size, 3)
    if kind == "yolov8":
        model = keras_cv.models.YOLOV8Detector(
            backbone=GenericYoloBackbone(shape, weights), num_classes=num_classes,
            bounding_box_format="xyxy", fpn_depth=1,
            # a low threshold for mAP (the whole precision-recall curve); `predict` filters
            prediction_decoder=keras_cv.layers.NonMaxSuppression(
                bounding_box_format="xyxy", from_logits=False, confidence_threshold=0.01,
                iou_threshold=0.6, max_detections=100))
        # start every class score near p = 0.01 (the focal-loss prior), not 0.5, so the
        # first steps are not spent pushing thousands of background points down
        for layer in model.layers:
            if layer.name.startswith("yolo_v8_head") and layer.name.endswith("class_3_conv"):
                layer.bias.assign(np.full(layer.bias.shape, -math.log(99.0), "float32"))
        return model
    if weights == "imagenet":
        if not data.is_online():
            raise UserError("--weights imagenet downloads the keras-hub preset resnet_18_imagenet "
                            "(Kaggle) and this machine is offline: leave out --weights to use the "
                            "generic backbone shipped with the repository")
        encoder = keras_hub.models.Backbone.from_preset("resnet_18_imagenet")
    else:
        encoder = GenericPyramidEncoder(shape, weights)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=5, use_p5=False, image_shape=shape)
    # anchor sizes 2**level * anchor_size * (1, 1.26, 1.59): 16-25 px on P3 at 128 px input,
    # scaled with the input size
    anchors = keras_hub.layers.AnchorGenerator(
        bounding_box_format="xyxy", min_level=3, max_level=5, num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0], anchor_size=2 * size / 128)
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="xyxy",
        anchor_generator=anchors, pre_logits_num_conv_layers=2,
        prediction_decoder=keras_hub.layers.NonMaxSuppression(
            bounding_box_format="xyxy", from_logits=True, confidence_threshold=0.01,
            iou_threshold=0.6, max_detections=100))
    # keras-hub 0.32 puts the focal-loss prior on the box head instead of the class head:
    # move it where it belongs (class logits start at p = 0.01, box deltas at 0)
    bias = model.classification_head.prediction_layer.bias
    bias.assign(np.full(bias.shape, -math.log(99.0), "float32"))
    bias = model.box_head.prediction_layer.bias
    bias.assign(np.zeros(bias.shape, "float32"))
    return model


def to_targets(kind, y):
    """keras-cv reads {"boxes", "classes"}; keras-hub {"boxes", "labels"}."""
    return y if kind == "yolov8" else {"boxes": y["boxes"], "labels": tf.cast(y["classes"], "int32")}


def compile_detector(model, kind, lr, total_steps):
    schedule = keras.optimizers.schedules.CosineDecay(
        lr / 10, max(1, total_steps), alpha=0.02, warmup_target=lr,
        warmup_steps=min(200, total_steps // 10))
    # Adam without weight decay: AdamW's per-variable decay added about 20 s (a third) to
    # tracing the training step on a 2-core CPU (cProfile)
    optimizer = keras.optimizers.Adam(schedule, global_clipnorm=10.0)
    # no XLA: on a 2-core CPU it made the first (tracing) epoch 2.4x longer (161 s vs 68 s)
    if kind == "yolov8":
        model.compile(optimizer=optimizer, classification_loss="binary_crossentropy",
                      box_loss="ciou", jit_compile=False)
    else:
        model.compile(optimizer=optimizer, jit_compile=False)


# %% [markdown]
# ## Predict, and score with pycocotools
#
# `detect` runs the model on letterboxed images and maps the boxes back to each image's own
# pixels. `score` turns them into COCO results and asks pycocotools for the standard metrics
# (AP@[.5:.95], AP@.5, AP@.75, AR@100, AP by object size, per-class AP).

# %%
def detect(model, x, scales, shapes, batch_size=16):
    # always batches of 16 (the last one padded): keras-hub's NMS needs a static batch size,
    # and a second batch size would make TensorFlow retrace with the batch size unknown
    padded = np.concatenate([x, np.zeros((-len(x) % batch_size, *x.shape[1:]), x.dtype)])
    batches = tf.data.Dataset.from_tensor_slices(padded).batch(batch_size, drop_remainder=True)
    batches = batches.map(lambda images: tf.cast(images, "float32"))
    out_ = {k: np.asarray(v)[: len(x)] for k, v in model.predict(batches, verbose=0).items()}
    labels = out_["classes"] if "classes" in out_ else out_["labels"]
    found = []
    for i, n in enumerate(out_["num_detections"]):
        h, w = shapes[i]
        boxes = np.clip(out_["boxes"][i, :n] / scales[i], 0, [w, h, w, h])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        found.append((boxes[keep], out_["confidence"][i, :n][keep], labels[i, :n][keep]))
    return found


def detections_json(found):
    """COCO results: image ids 1..N and category ids 1..K as in export_coco.to_coco."""
    return [{"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for i, (boxes, scores, classes) in enumerate(found)
            for b, s, c in zip(boxes, scores, classes)]


def score(scenes, found, occlusion=False):
    gt = export_coco.to_coco(scenes)
    dets = detections_json(found)
    scores = metrics.coco_detection(gt, dets)
    if occlusion and scenes.visible is not None:
        hidden = {a["id"]: 1 - a["visible"] for a in gt["annotations"]}
        scores["occlusion"] = {}
        for name, (low, high) in BUCKETS.items():
            inside = {k for k, v in hidden.items() if (v <= 0 if high == 0 else low < v <= high)}
            if inside:
                bucket = metrics.coco_detection(gt, dets, ignore=set(hidden) - inside)
                scores["occlusion"][name] = {"objects": len(inside), "recall": bucket["recall_50"],
                                             "ap50": bucket["map_50"]}
    return scores


# %% [markdown]
# ## `predict` and `evaluate` on a saved model
#
# `predict` prints one line per image: `PATH<TAB>[{"box": [x1, y1, x2, y2], "class": NAME,
# "score": S}, ...]` in the image's own pixels; `--draw DIR` also saves the image with its
# boxes. `evaluate` scores a saved model on any COCO file (or the synthetic scenes) and writes
# the same metrics as training.

# %%
def draw(ax, image, boxes, classes, class_names, scores=None, colour="lime", text=True):
    ax.imshow(image)
    for k, (b, c) in enumerate(zip(boxes, classes)):
        ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                   edgecolor=colour, linewidth=1.5, linestyle="-" if text else ":"))
        if not text:
            continue
        text = class_names[int(c)] + ("" if scores is None else f" {scores[k]:.2f}")
        ax.text(b[0], b[1], text, color="black", fontsize=6, va="bottom",
                bbox=dict(facecolor=colour, alpha=0.7, pad=0.5, linewidth=0))
    ax.axis("off")


def load_detector(path):
    model = saving.load_model(path)
    names = Path(path).with_name("class_names.json")
    if not isinstance(model, (keras_cv.models.YOLOV8Detector, keras_hub.models.ObjectDetector)):
        raise UserError(f"{path} is not a detector saved by this recipe (it is a "
                        f"{type(model).__name__}): pass OUT/model.keras of a detection run")
    if not names.is_file():
        raise UserError(f"{names} is missing: it is written beside model.keras by the training run")
    return model, json.loads(names.read_text()), int(model.input_shape[1])


if args.command == "predict":
    if not 0 <= args.score_threshold <= 1:
        raise UserError(f"--score-threshold {args.score_threshold}: use a score from 0 to 1")
    model, class_names, size = load_detector(args.model)
    images = [data.conform(data.read_image(f)[None], channels=3)[0] for f in args.files]
    canvases = [letterbox(image, size) for image in images]
    found = detect(model, np.stack([c for c, _ in canvases]), np.array([s for _, s in canvases]),
                   [image.shape[:2] for image in images])
    for path, image, (boxes, scores, classes) in zip(args.files, images, found):
        keep = scores >= args.score_threshold
        objects = [{"box": [round(float(v), 1) for v in b], "class": class_names[int(c)],
                    "score": round(float(s), 3)}
                   for b, s, c in zip(boxes[keep], scores[keep], classes[keep])]
        print(f"{path}\t{json.dumps(objects)}")
        if args.draw:
            fig, ax = plt.subplots(figsize=(4, 4 * image.shape[0] / image.shape[1]))
            draw(ax, image, boxes[keep], classes[keep], class_names, scores[keep])
            Path(args.draw).mkdir(parents=True, exist_ok=True)
            fig.savefig(Path(args.draw) / (Path(path).stem + "_boxes.png"), dpi=110,
                        bbox_inches="tight")
            plt.close(fig)
    raise SystemExit

if args.command == "evaluate":
    model, class_names, size = load_detector(args.model)
    synthetic_scenes = args.dataset == "synthetic:scenes"  # 200 fresh scenes, never trained on
    if args.dataset.startswith("tfds:"):
        scenes = data.load_tfds_scenes(args.dataset.partition(":")[2])[1]  # the test split
    else:
        scenes = data.require(data.load(args.dataset, seed=args.seed + 12_345 * synthetic_scenes,
                                        image_size=64 if synthetic_scenes else None,
                                        num_examples=200 if synthetic_scenes else None),
                              data.Scenes, args.dataset)
    if scenes.class_names != class_names:
        raise UserError(f"{args.dataset} names its classes {scenes.class_names[:5]}..., the model "
                        f"{class_names[:5]}...: evaluate on a dataset of the model's classes")
    x, _, scales = to_model_input(scenes, size)
    found = detect(model, x, scales, [image.shape[:2] for image in scenes.images])
    scores = score(scenes, found, occlusion=True)
    results.write(args.out, "detection", args.dataset, scores, time.time() - args.started,
                  vars(args), model=str(args.model))
    print(results.summary({k: v for k, v in scores.items() if k != "per_class"},
                          f"evaluate {args.model} on {args.dataset}"))
    raise SystemExit

# %% [markdown]
# ## Train
#
# The pipeline caches the letterboxed uint8 images, shuffles, batches, and augments each
# batch with Keras layers that move the boxes with the pixels (`bounding_box_format="xyxy"`):
# horizontal flip, translation and zoom (boxes pushed out of the image are clipped or
# dropped). With occlusion-style augmentation, `RandomErasing` blanks random rectangles of
# the image (boxes unchanged: the object is still there, just partly hidden).

# %%
if args.command == "train" and (args.num_scenes < 20 or args.patience < 1 or args.lr <= 0):
    raise UserError("--num-scenes must be at least 20, --patience at least 1 and --lr positive")
if args.smoke:
    args.epochs, args.patience, args.num_scenes = 2, 2, 80
train, val, test = load_splits()
num_classes = len(train.class_names)
if args.image_size is None:
    sides = [max(image.shape[:2]) for image in train.images]
    args.image_size = int(min(320, max(128, 32 * round(float(np.median(sides)) / 32))))
if args.image_size % 32 or args.image_size < 64:
    raise UserError(f"--image-size {args.image_size}: use a multiple of 32, at least 64")
x_train, y_train, _ = to_model_input(train, args.image_size)
x_val, _, val_scales = to_model_input(val, args.image_size)
x_test, _, test_scales = to_model_input(test, args.image_size)
variants = {"none": ["none"], "erase": ["erase"], "compare": ["none", "erase"]}[args.occlusion]
if args.occlusion == "compare" and train.visible is None:
    print("note: the occlusion study needs objects' visible fractions (synthetic:scenes); "
          "training without occlusion augmentation only")
    variants = ["none"]
args.budget = (args.budget[0] // len(variants), *args.budget[1:])  # the models share the budget
steps = cli.training_budget(args, len(x_train))
print(f"data: {len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images, "
      f"{num_classes} classes, input {args.image_size}x{args.image_size}; "
      f"{sum(len(b) for b in train.boxes)} training objects")


def clean_targets(images, y):
    """After augmentation: padding rows and boxes squeezed to slivers become -1 again."""
    b = y["boxes"]
    ok = (y["classes"] >= 0) & (b[..., 2] - b[..., 0] >= 2) & (b[..., 3] - b[..., 1] >= 2)
    return images, {"boxes": tf.where(ok[..., None], b, -1.0),
                    "classes": tf.where(ok, y["classes"], -1.0)}


def augmenter(occlusion):
    geometric = [keras.layers.RandomFlip("horizontal", bounding_box_format="xyxy"),
                 keras.layers.RandomTranslation(0.1, 0.1, bounding_box_format="xyxy",
                                                fill_mode="constant", fill_value=114),
                 keras.layers.RandomZoom((-0.2, 0.2), bounding_box_format="xyxy",
                                         fill_mode="constant", fill_value=114)]
    erase = keras.layers.RandomErasing(factor=(0.7, 0.7), scale=(0.05, 0.25), fill_value=None,
                                       value_range=(0, 255))  # noise-filled rectangles

    def augment(images, y):
        batch = {"images": images, "bounding_boxes": {"boxes": y["boxes"], "labels": y["classes"]}}
        for layer in geometric:
            batch = layer(batch, training=True)
        images = batch["images"]
        if occlusion:
            images = erase(images, training=True)
        return clean_targets(images, {"boxes": batch["bounding_boxes"]["boxes"],
                                      "classes": batch["bounding_boxes"]["labels"]})
    return augment


class ValidationMap(keras.callbacks.Callback):
    """COCO mAP on the validation images after each epoch; saves the best epoch's weights and
    stops after `patience` epochs without improvement (the state survives a resume)."""

    def __init__(self, name):
        super().__init__()
        self.weights = finished.directory / f"{name}_best.weights.h5"
        self.state_file = finished.directory / f"{name}_best.json"
        self.gt = export_coco.to_coco(val)  # the validation ground truth, built once

    def on_train_begin(self, logs=None):
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {
            "best": -1.0, "epoch": -1, "history": []}

    def on_epoch_end(self, epoch, logs=None):
        found = detect(self.model, x_val, val_scales, [i.shape[:2] for i in val.images])
        value = metrics.coco_detection(self.gt, detections_json(found))["map"]
        self.state["history"].append(value)
        if value > self.state["best"]:
            self.state.update(best=value, epoch=epoch)
            self.model.save_weights(self.weights)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state))
        print(f" val mAP {value:.3f} (best {self.state['best']:.3f} at epoch "
              f"{self.state['epoch'] + 1})", flush=True)
        if epoch - self.state["epoch"] >= args.patience:
            print(f"early stop: no better validation mAP for {args.patience} epochs")
            self.model.stop_training = True


plan = callbacks.Plan(variants, args.epochs, steps, what="detectors")
finished = callbacks.Finished(out, args)  # detectors done before an interrupt are not retrained
# One model object for every variant: each starts from the same initial weights with a fresh
# optimizer state, and the traced training and prediction functions are reused (tracing the
# YOLOv8 training step takes about a minute on a CPU).
model = build_detector(args.model, num_classes, args.image_size, args.weights)
compile_detector(model, args.model, args.lr, args.epochs * steps)
initial = model.get_weights()
trained, histories = {}, {}
for variant in variants:
    model.set_weights(initial)
    for v in model.optimizer.variables:
        v.assign(tf.zeros_like(v))
    record = finished.load(variant, model)
    if record is None:
        ds = pipeline.for_training(x_train, y_train, args.batch_size, seed=args.seed,
                                   augment=augmenter(variant == "erase"))
        ds = ds.map(lambda images, y: (images, to_targets(args.model, y)))
        best = ValidationMap(variant)
        history = model.fit(ds, epochs=args.epochs, verbose=callbacks.verbose(), callbacks=[
            plan.callback(variant), best, *callbacks.standard(out, variant, args)])
        model.load_weights(best.weights)  # the best validation epoch
        record = {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
        record["history"]["val_map"] = best.state["history"]
        finished.save(variant, model, record)
    trained[variant], histories[variant] = model.get_weights(), record["history"]

# %% [markdown]
# ## Evaluate on the test images
#
# With `--occlusion compare`, both models are scored; the one with the better validation mAP
# (never the test set) is the recipe's model: it is saved, drawn, and its metrics are the
# top-level ones in results.json. `metrics.occlusion_study` holds both.

# %%
main = max(variants, key=lambda v: max(histories[v]["val_map"]))
shapes = [image.shape[:2] for image in test.images]
found, scores = {}, {}
for v in sorted(variants, key=lambda v: v == main):  # the main model last: it stays in `model`
    model.set_weights(trained[v])
    found[v] = detect(model, x_test, test_scales, shapes)
    scores[v] = score(test, found[v], occlusion=True)
report = dict(scores[main])
report.update(model=args.model, image_size=args.image_size, weights=args.weights,
              occlusion_augmentation=main, params=int(model.count_params()),
              best_epoch=histories[main]["val_map"].index(max(histories[main]["val_map"])) + 1)
if len(variants) > 1:
    report["occlusion_study"] = {v: {k: scores[v][k] for k in ("map", "map_50", "occlusion")}
                                 for v in variants}

# saved without the optimizer state (a third of the size): a fresh, uncompiled copy
saved = build_detector(args.model, num_classes, args.image_size, "none")
saved.set_weights(model.get_weights())
saved.save(out / "model.keras")
(out / "class_names.json").write_text(json.dumps(train.class_names) + "\n")

fig, axes = plt.subplots(3, 6, figsize=(15, 8))
for ax in axes.flat:
    ax.axis("off")
for ax, i in zip(axes.flat, range(len(test.images))):
    boxes, s, c = found[main][i]
    keep = s >= 0.3
    draw(ax, test.images[i], test.boxes[i], test.labels[i], train.class_names, colour="white",
         text=False)
    draw(ax, test.images[i], boxes[keep], c[keep], train.class_names, s[keep])
fig.suptitle(f"{args.model} on test images: predictions with score >= 0.3 (green, class and "
             "score), ground truth (dotted white)")
plots.save(fig, out / "predictions.png")
plots.training_curves(histories, out / "training_curves.png", metrics=("loss", "map"))

# %% [markdown]
# ## Anchors: the candidate regions
#
# The left panel shows the candidates of one pyramid level over a test image: for RetinaNet
# the 9 anchor boxes at a few positions (all positions carry the same 9), for YOLOv8 the
# anchor points of stride 8. The right panel shows which candidates training assigns to the
# image's objects: those are the only ones whose boxes are regressed, the rest learn to say
# "background".

# %%
image_index = int(np.argmax([len(b) for b in test.boxes[:50]]))
canvas = x_test[image_index: image_index + 1].astype("float32")
gt_boxes = test.boxes[image_index] * test_scales[image_index]
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
for ax in (left, right):
    ax.imshow(x_test[image_index])
    for b in gt_boxes:
        ax.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="white", lw=2))
if args.model == "retinanet":
    anchors = model.anchor_generator(canvas)
    level = anchors["P3"].numpy() if hasattr(anchors["P3"], "numpy") else np.asarray(anchors["P3"])
    grid = args.image_size // 8
    for position in (grid * (grid // 4) + grid // 4, grid * (grid // 2) + grid // 2):
        for b in level[position * 9: position * 9 + 9]:
            left.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="cyan"))
    left.set_title("RetinaNet P3 (stride 8): 9 anchors at 2 positions")
    all_anchors = np.concatenate([np.asarray(anchors[k]) for k in sorted(anchors)])
    _, cls_targets = model.label_encoder(images=canvas, gt_boxes=gt_boxes[None],
                                         gt_classes=test.labels[image_index][None].astype("int32"))
    matched = all_anchors[np.asarray(cls_targets)[0].reshape(-1) >= 0]
    for b in matched:
        right.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="yellow"))
    right.set_title(f"{len(matched)} anchors matched to the objects (IoU >= 0.5)")
else:
    from keras_cv.src.models.object_detection.yolo_v8.yolo_v8_detector import (
        decode_regression_to_boxes,
        dist2bbox,
        get_anchors,
    )

    points, strides = (np.asarray(t) for t in get_anchors((args.image_size, args.image_size)))
    first = strides == 8
    left.scatter(*(points[first] * 8).T, s=4, c="cyan")
    left.set_title(f"YOLOv8 stride-8 anchor points ({first.sum()})")
    raw = model(canvas, training=False)
    pred_boxes = dist2bbox(decode_regression_to_boxes(raw["boxes"]), points) * strides[:, None]
    gt_b = np.full((1, len(gt_boxes), 4), -1, "float32")
    gt_c = np.full((1, len(gt_boxes)), -1, "float32")
    gt_b[0, : len(gt_boxes)], gt_c[0, : len(gt_boxes)] = gt_boxes, test.labels[image_index]
    _, target_scores, _ = model.label_encoder(raw["classes"], pred_boxes, points * strides[:, None],
                                              gt_c, gt_b, np.all(gt_b > -1, axis=-1, keepdims=True))
    # the third output (the "foreground mask") is all ones in keras-cv 0.9: the assigned points
    # are the ones with a non-zero class target
    fg = np.asarray(target_scores)[0].sum(-1) > 0
    right.scatter(*(points[fg] * strides[fg, None]).T, s=30, c="yellow", marker="x")
    right.set_title(f"{fg.sum()} anchor points assigned to the objects (task-aligned)")
for ax in (left, right):
    ax.set_xlim(0, args.image_size)
    ax.set_ylim(args.image_size, 0)
    ax.axis("off")
plots.save(fig, out / "anchors.png")

# %% [markdown]
# ## The occlusion study
#
# Every synthetic object knows the fraction of it that later shapes hide. Recall at IoU 0.5
# and AP@.5 by bucket of hidden fraction show where occlusion hurts, and which buckets
# occlusion-style augmentation (random erasing) helps.

# %%
if "occlusion" in scores[main]:
    names = list(scores[main]["occlusion"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, v in enumerate(variants):
        ax.bar(np.arange(len(names)) + 0.4 * k, [scores[v]["occlusion"][n]["recall"]
                                                 for n in names], 0.4, label=v)
    ax.set_xticks(np.arange(len(names)) + 0.2 * (len(variants) - 1),
                  [f"{n} % hidden\n({scores[main]['occlusion'][n]['objects']} objects)"
                   for n in names])
    ax.set_ylabel("recall at IoU 0.5")
    ax.set_ylim(0, 1)
    ax.legend(title="occlusion augmentation")
    plots.save(fig, out / "occlusion.png")

cli.finish(args, report, args.dataset)
finished.clear()  # results are written: the next run with these flags starts afresh
