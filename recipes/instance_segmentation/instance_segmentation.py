# %% [markdown]
# # Instance segmentation: a YOLOv8 detector plus a Mask R-CNN-style mask head, scored with mask AP
#
# **Description:** find every object in an image and outline each one with its own mask.
# The detector is the `detection` recipe's keras-cv `YOLOV8Detector` on the collection's
# generic backbone; each detected box is cut out of the backbone's fine feature maps
# (ROIAlign, with `tf.image.crop_and_resize`) and a small fully convolutional mask head turns
# the crop into a 28x28 mask of the detected class, which is pasted back into the image.
# Training runs in **two stages**: first the detector (boxes and classes), then the mask head
# on the frozen detector's features, with the ground-truth boxes, randomly jittered, as
# regions. Scores are the COCO metrics from pycocotools: mask AP and box AP. The default data
# is synthetic scenes (offline); any COCO-format dataset with polygons or RLE masks works
# (`--dataset coco:ANNOTATIONS.json`).
#
# **Concepts:** *semantic* segmentation gives every pixel a class ("shape" or "background"),
# so two touching objects of one class merge into one blob; *instance* segmentation gives
# every object its own mask, so they can be counted, measured and tracked one by one. The
# usual recipe (Mask R-CNN) is detect, then segment: a detector proposes boxes, and a mask
# branch predicts, inside each box only, which pixels belong to the object. Because the box
# already says where the object is and what it is, the mask branch only has to separate the
# object from what surrounds it, at a fixed resolution (28x28) whatever the object's size.
# ROIAlign is what makes that fixed grid: it samples the feature map with bilinear
# interpolation at evenly spaced points inside the box, with no rounding of the box to the
# feature grid (the older ROIPool rounded, and its masks came out shifted by up to a stride).
# Mask R-CNN trains detection and masks together with one multi-task loss (classification +
# box regression + per-pixel sigmoid cross-entropy of the mask of the true class); this recipe
# trains them one after the other, which costs less on a CPU and keeps the detector exactly as
# good as the `detection` recipe's (see "Two stages" below). Applications: counting and
# measuring cells, fruit or parts; robot picking; photo editing (cut out one person); traffic
# scenes where each car or pedestrian must be kept apart.
#
# Run: `make instance_segmentation` or `python -m recipes.instance_segmentation --help`. In a
# notebook, pass flags through `RECIPE_ARGS` in a cell above the setup cell, e.g.
# `os.environ["RECIPE_ARGS"] = "--dataset coco:/content/data/train.json"` (there it replaces
# the command line; empty or unset: the defaults).

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
# Read before the heavy imports, so that `--help` answers at once. The budget: about 500
# detector steps (at most 60 epochs, at least 6), early stopping on the validation box mAP,
# then up to 10 epochs of the mask head, early stopping on the validation mask mAP; the best
# epoch of each stage is kept.

# %%
from common import UserError, cli

SPECS = ("synthetic:scenes | coco:ANNOTATIONS.json (polygon or RLE masks; images beside it or "
         "in images/)")
parser = cli.parser("instance_segmentation", "Detect objects and segment each one (mask AP).",
                    dataset="synthetic:scenes", epochs=60, batch_size=16, budget_steps=500,
                    min_epochs=6, specs=SPECS, train_size=False)
parser.add_argument("--detector", default=None, metavar="MODEL",
                    help="skip stage 1: use a trained detector, e.g. runs/detection/model.keras "
                    "of the detection recipe (class_names.json beside it; same classes)")
parser.add_argument("--weights", default="generic",
                    help="backbone weights of a new detector: generic (the collection's "
                    "pretrained backbone, offline) | none (random) | PATH.weights.h5")
parser.add_argument("--val-dataset", default=None,
                    help="a second COCO file to report on (default: a seeded split of --dataset)")
parser.add_argument("--image-size", type=int, default=None,
                    help="model input side in pixels, a multiple of 32; images are resized and "
                    "padded to it (default: 128, or the data's median longest side up to 320)")
parser.add_argument("--num-scenes", type=int, default=1000, help="synthetic:scenes images")
parser.add_argument("--mask-epochs", type=int, default=10, help="epochs of the mask head")
parser.add_argument("--patience", type=int, default=8,
                    help="early stopping: epochs without a better validation mAP")
parser.add_argument("--lr", type=float, default=2e-3, help="detector peak learning rate")
parser.add_argument("--mask-lr", type=float, default=1e-3, help="mask head learning rate")
parser.predict.add_argument("--score-threshold", type=float, default=0.3,
                            help="keep objects scoring at least this")
parser.predict.add_argument("--draw", default=None, metavar="DIR",
                            help="also write each image with its masks to DIR")
args = cli.parse_args(parser)

# %%
import json
import math
import time
from pathlib import Path

import keras
import keras_cv
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from common import callbacks, data, export_coco, metrics, pipeline, plots, results, saving
from common.detectors import GenericYoloBackbone

out = Path(args.out)
MAX_BOXES = 100  # objects per image trained on (COCO's own cap); instance ids must stay < 114
ROI = 14  # ROIAlign output of the feature maps, as Mask R-CNN
MASK = 28  # mask resolution: the head upsamples 14 -> 28
STRIDES = (2, 4, 8)  # the backbone levels the masks read (objects are 5-50 pixels)
MIN_SCORE = 0.05  # detections kept for scoring, as Mask R-CNN's test setting
FILL = 114  # the letterbox grey; augmentation fills the instance-id map with it too

# %% [markdown]
# ## Resize and pad: any image size in, boxes and masks back in the image's own pixels
#
# The detector takes square images of one size (`--image-size`). Each image is scaled so its
# longer side fits and padded at the bottom and right ("letterbox"); its boxes are scaled by
# the same factor, and its instance masks become one *instance-id map* per image (0 background,
# k + 1 where object k is), which the augmentation layers move with the pixels like a
# segmentation mask. Where two annotated masks overlap, the later object keeps the pixel
# (synthetic masks never overlap: they are the visible parts).

# %%
def letterbox(image, size, resample=Image.BILINEAR):
    """(size, size, ...) uint8 canvas holding `image` scaled to fit, and the scale used."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = np.asarray(Image.fromarray(image).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), resample))
    canvas = np.full((size, size, *image.shape[2:]), FILL if image.ndim == 3 else 0, np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas, scale


def to_model_input(scenes, size):
    """Letterboxed images, targets (boxes, classes with -1 padding rows; the instance-id map)
    and the per-image scale."""
    n, rows = len(scenes.images), max(1, min(MAX_BOXES, max(len(b) for b in scenes.boxes)))
    x = np.zeros((n, size, size, 3), np.uint8)
    ids = np.zeros((n, size, size, 1), np.uint8)
    boxes = np.full((n, rows, 4), -1, np.float32)
    classes = np.full((n, rows), -1, np.float32)
    scales = np.zeros(n, np.float32)
    for i, (image, b, c) in enumerate(zip(scenes.images, scenes.boxes, scenes.labels)):
        x[i], scales[i] = letterbox(image, size)
        boxes[i, : len(b[:rows])] = b[:rows] * scales[i]
        classes[i, : len(c[:rows])] = c[:rows]
        for k, mask in enumerate(scenes.masks[i][:rows]):
            # bilinear, then >= half: edges land where the object covers half a pixel
            scaled = letterbox(mask.astype(np.uint8) * 255, size)[0]
            ids[i, scaled >= 128, 0] = k + 1
    dropped = sum(max(0, len(b) - rows) for b in scenes.boxes)
    if dropped:
        print(f"note: {dropped} objects beyond {MAX_BOXES} per image were left out of training")
    return x, {"boxes": boxes, "classes": classes, "ids": ids}, scales


# %% [markdown]
# ## The data
#
# `synthetic:scenes`: 64x64 images with one to four of ten shapes in random colours and
# textures on random backgrounds; later shapes occlude earlier ones, and each object's mask is
# its visible part. A COCO file needs a polygon or RLE "segmentation" on every annotation; it
# is split by `--seed` (80/20) unless `--val-dataset` names the test set. 10 % of the training
# images are held out for early stopping and choosing the best epochs, so the test images
# never influence training. The split is the `detection` recipe's, so a detector trained
# there with the same flags has never seen these test images (`--detector`).

# %%
def check_masks(scenes, spec):
    """Instance segmentation needs a mask, with pixels, for every object."""
    if scenes.masks is None:
        raise UserError(f"{spec} has no instance masks (some annotations lack 'segmentation'): "
                        "give every annotation a polygon or RLE, or use recipes.detection for "
                        "boxes only")
    files = getattr(scenes, "files", None)
    empty = [(i, k) for i, m in enumerate(scenes.masks) for k in range(len(m)) if not m[k].any()]
    if empty:
        i, k = empty[0]
        where = files[i] if files else f"image {i + 1}"
        raise UserError(f"{spec}: {len(empty)} objects have an empty mask, first object {k + 1} "
                        f"of {where} ({scenes.images[i].shape[1]}x{scenes.images[i].shape[0]} "
                        "pixels): its polygon or RLE lies outside the image or covers no pixel; "
                        "fix the coordinates (pixels of the image) or remove the annotation")
    return scenes


def load_scenes(spec, **kwargs):
    return check_masks(data.require(data.load(spec, **kwargs), data.Scenes, spec), spec)


def load_splits():
    size = 64 if args.dataset == "synthetic:scenes" else None
    everything = load_scenes(args.dataset, seed=args.seed, image_size=size,
                             num_examples=args.num_scenes)
    if args.val_dataset:
        train, test = everything, load_scenes(args.val_dataset)
        if test.class_names != train.class_names:
            raise UserError(f"{args.val_dataset} names its classes {test.class_names[:5]}, "
                            f"{args.dataset} {train.class_names[:5]}: use one category list")
    else:
        train, test = data.split_scenes(everything, 0.2, args.seed)
    train, val = data.split_scenes(train, 0.1, args.seed + 1)
    return train, val, test


# %% [markdown]
# ## Stage 1: the detector
#
# The `detection` recipe's default detector: keras-cv's YOLOv8 (anchor points on the stride
# 8/16/32 maps of a path-aggregation FPN, task-aligned assignment, CIoU box loss) on the
# collection's generic backbone, pretrained offline on glyph classification. Its backbone
# first halves the image (2x2 average pooling), then four stages give maps of stride 2, 4, 8
# and 16; a new stage adds stride 32.

# %%
def build_detector(num_classes, size, weights):
    model = keras_cv.models.YOLOV8Detector(
        backbone=GenericYoloBackbone((size, size, 3), weights), num_classes=num_classes,
        bounding_box_format="xyxy", fpn_depth=1,
        # a low threshold for mAP (the whole precision-recall curve); `predict` filters
        prediction_decoder=keras_cv.layers.NonMaxSuppression(
            bounding_box_format="xyxy", from_logits=False, confidence_threshold=0.01,
            iou_threshold=0.6, max_detections=100))
    # every class score starts near p = 0.01 (the focal-loss prior), not 0.5
    for layer in model.layers:
        if layer.name.startswith("yolo_v8_head") and layer.name.endswith("class_3_conv"):
            layer.bias.assign(np.full(layer.bias.shape, -math.log(99.0), "float32"))
    return model


def compile_detector(model, lr, total_steps):
    schedule = keras.optimizers.schedules.CosineDecay(
        lr / 10, max(1, total_steps), alpha=0.02, warmup_target=lr,
        warmup_steps=min(200, total_steps // 10))
    # no XLA: on a 2-core CPU it made the first (tracing) epoch 2.4x longer
    model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=10.0),
                  classification_loss="binary_crossentropy", box_loss="ciou", jit_compile=False)


def feature_maps(detector):
    """The detector's backbone as a model of its stride 2, 4 and 8 maps (24, 48, 96 channels):
    the same layers and weights, read at the levels fine enough for masks."""
    backbone = detector.backbone
    images = keras.Input(backbone.input_shape[1:], name="image")
    maps = backbone.get_layer("generic_backbone_pyramid")(backbone.get_layer("stem_pool")(images))
    return keras.Model(images, maps[: len(STRIDES)], name="mask_features")


def detect(detector, x, scales, shapes, batch_size=16, min_score=None):
    """(boxes in the image's pixels, scores, classes) per image, scores >= `min_score`
    (default MIN_SCORE)."""
    min_score = MIN_SCORE if min_score is None else min_score
    # fixed batches (the last one padded): one trace of the prediction function
    padded = np.concatenate([x, np.zeros((-len(x) % batch_size, *x.shape[1:]), x.dtype)])
    batches = tf.data.Dataset.from_tensor_slices(padded).batch(batch_size, drop_remainder=True)
    raw = detector.predict(batches.map(lambda images: tf.cast(images, "float32")), verbose=0)
    raw = {k: np.asarray(v)[: len(x)] for k, v in raw.items()}
    found = []
    for i, n in enumerate(raw["num_detections"]):
        h, w = shapes[i]
        boxes = np.clip(raw["boxes"][i, :n] / scales[i], 0, [w, h, w, h])
        scores, classes = raw["confidence"][i, :n], raw["classes"][i, :n]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (scores >= min_score)
        found.append((boxes[keep], scores[keep], classes[keep].astype(int)))
    return found


# %% [markdown]
# ## ROIAlign and the mask head
#
# `roi_align` cuts a 14x14 grid out of each feature map for every box: the grid's points are
# the centres of 14x14 equal bins of the box, in the map's continuous coordinates (box / stride),
# read with bilinear interpolation by `tf.image.crop_and_resize` (one sample per bin). The
# three levels (strides 2, 4, 8: 24 + 48 + 96 channels) are stacked: stride 8 alone would give
# a 20-pixel object fewer than 3x3 cells. The head is Mask R-CNN's, narrowed for a CPU: four
# 3x3 convolutions, a 2x2 transposed convolution to 28x28, where a 28x28 crop of the image's
# own pixels joins (so mask edges can follow colour edges), one more convolution, and a 1x1
# convolution with one mask (logits) per class. Only the detected class's mask is used, so
# classes do not compete for pixels: each mask is a per-pixel sigmoid, trained with binary
# cross-entropy.

# %%
def crop_boxes(boxes, size, shape):
    """xyxy pixel boxes -> the normalised [y1, x1, y2, x2] crop_and_resize samples at the
    centres of size x size bins (its coordinates put pixel i's centre at i / (side - 1))."""
    x1, y1, x2, y2 = tf.unstack(tf.cast(boxes, "float32"), axis=-1)
    height, width = (tf.cast(s, "float32") for s in (shape[0], shape[1]))
    half_w, half_h = (x2 - x1) / (2 * size), (y2 - y1) / (2 * size)
    return tf.stack([(y1 + half_h - 0.5) / (height - 1), (x1 + half_w - 0.5) / (width - 1),
                     (y2 - half_h - 0.5) / (height - 1), (x2 - half_w - 0.5) / (width - 1)], -1)


def roi_align(maps, images, boxes, index):
    """ROI features (M, 14, 14, 168) and pixels (M, 28, 28, 3) of `boxes` (M, 4: input
    pixels) in the images `index` (M,) of the batch."""
    crops = [tf.image.crop_and_resize(m, crop_boxes(boxes / s, ROI, tf.shape(m)[1:3]), index,
                                      (ROI, ROI)) for m, s in zip(maps, STRIDES)]
    pixels = tf.image.crop_and_resize(images, crop_boxes(boxes, MASK, tf.shape(images)[1:3]),
                                      index, (MASK, MASK))
    return tf.concat(crops, -1), pixels


def build_mask_head(channels, num_classes, filters=64):
    features = keras.Input((ROI, ROI, channels), name="roi_features")
    pixels = keras.Input((MASK, MASK, 3), name="roi_pixels")
    x = features
    for k in range(4):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                name=f"mask_conv{k + 1}")(x)
    x = keras.layers.Conv2DTranspose(filters, 2, strides=2, activation="relu",
                                     name="mask_upsample")(x)
    p = keras.layers.Rescaling(1 / 255, name="pixels_scale")(pixels)
    p = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="pixels_conv")(p)
    x = keras.layers.Concatenate(name="mask_join")([x, p])
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="mask_conv5")(x)
    logits = keras.layers.Conv2D(num_classes, 1, name="mask_logits")(x)
    return keras.Model([features, pixels], logits, name="mask_head")


# %% [markdown]
# ## Stage 2: the mask head on the frozen detector's features
#
# `MaskHeadTraining` is a Keras model whose `train_step` does what Mask R-CNN's mask branch
# does in training, with the ground-truth boxes as the regions: each box is jittered (centre
# moved by up to 10 % of its size, sides scaled by 0.9-1.15) so the head learns from boxes as
# imprecise as the detector's; the box's target is the object's own mask (from the
# instance-id map) cut out with the same ROIAlign at 28x28 and thresholded at 0.5; the loss is
# the binary cross-entropy of the mask of the object's class only. The backbone runs in
# inference mode and gets no gradient: only the head learns, so the detector stays exactly as
# stage 1 left it.

# %%
def mask_logits_of(logits, classes):
    """(M, 28, 28, K) logits -> (M, 28, 28): each ROI's mask for its class."""
    return tf.gather(tf.transpose(logits, [0, 3, 1, 2]), tf.cast(classes, "int32"), batch_dims=1)


class MaskHeadTraining(keras.Model):
    def __init__(self, features, head, jitter=0.1, seed=0):
        super().__init__()
        self.features, self.head, self.jitter = features, head, jitter
        self.features.trainable = False
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.iou_tracker = keras.metrics.Mean(name="mask_iou")

    @property
    def metrics(self):
        return [self.loss_tracker, self.iou_tracker]

    def call(self, images):
        return self.features(images, training=False)

    def train_step(self, batch):
        images, y = batch
        where = tf.where(y["classes"] >= 0)  # (M, 2): image, object slot
        index = tf.cast(where[:, 0], "int32")
        boxes, classes = tf.gather_nd(y["boxes"], where), tf.gather_nd(y["classes"], where)
        size = boxes[:, 2:] - boxes[:, :2]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + size * keras.random.uniform(
            tf.shape(size), -self.jitter, self.jitter, seed=self.seed_generator)
        size = size * keras.random.uniform(tf.shape(size), 0.9, 1.15, seed=self.seed_generator)
        rois = tf.concat([centre - size / 2, centre + size / 2], -1)
        # the object's own pixels in the instance-id map: slot k is id k + 1
        own = tf.cast(tf.equal(tf.gather(y["ids"], index)[..., 0],
                               tf.cast(where[:, 1:2, None] + 1, y["ids"].dtype)), "float32")
        targets = tf.image.crop_and_resize(own[..., None], crop_boxes(
            rois, MASK, tf.shape(own)[1:3]), tf.range(tf.shape(rois)[0]), (MASK, MASK))[..., 0]
        targets = tf.cast(targets >= 0.5, "float32")
        features, pixels = roi_align(self.features(images, training=False), images, rois, index)
        with tf.GradientTape() as tape:
            logits = mask_logits_of(self.head([features, pixels], training=True), classes)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(targets, logits))
        variables = self.head.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        predicted = tf.cast(logits > 0, "float32")
        overlap = tf.reduce_sum(predicted * targets, [1, 2])
        union = tf.reduce_sum(tf.maximum(predicted, targets), [1, 2])
        self.loss_tracker.update_state(loss)
        self.iou_tracker.update_state(tf.reduce_mean(overlap / tf.maximum(union, 1.0)))
        return {m.name: m.result() for m in self.metrics}


# %% [markdown]
# ## Predict masks, paste them into the image, score with pycocotools
#
# `segment` runs the mask head on the detector's boxes (scores >= 0.05), takes each box's mask
# of its detected class, and pastes it into the image's own pixels: every pixel inside the box
# reads the 28x28 probabilities by bilinear interpolation at its centre, and >= 0.5 is the
# object. `score` writes the detections as COCO results (an RLE mask of the image's size per
# object) and asks pycocotools for mask AP (`iou_type="segm"`: IoU of masks) and box AP.

# %%
def paste(probabilities, box, shape):
    """A 28x28 mask of `box` (x1, y1, x2, y2 in image pixels) as an (H, W) bool mask."""
    h, w = shape
    x1, y1, x2, y2 = (float(v) for v in box)
    mask = np.zeros((h, w), bool)
    c0, c1 = max(0, math.floor(x1)), min(w, math.ceil(x2))
    r0, r1 = max(0, math.floor(y1)), min(h, math.ceil(y2))
    if c1 <= c0 or r1 <= r0:
        return mask
    cols = (np.arange(c0, c1) + 0.5 - x1) / (x2 - x1) * MASK - 0.5
    rows = (np.arange(r0, r1) + 0.5 - y1) / (y2 - y1) * MASK - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    mask[r0:r1, c0:c1] = ndimage.map_coordinates(probabilities, grid, order=1,
                                                 mode="nearest") >= 0.5
    return mask


def segment(features, head, x, scales, found, batch_size=16):
    """Masks (k, H, W) bool for the detections `found` (see detect) of the images x."""
    masks = []
    for start in range(0, len(x), batch_size):
        part = range(start, min(len(x), start + batch_size))
        boxes = np.concatenate([found[i][0] * scales[i] for i in part]).reshape(-1, 4)
        if len(boxes) == 0:
            masks += [np.zeros((0, *found[i][3]), bool) for i in part]
            continue
        images = tf.constant(x[part.start: part.stop], "float32")
        index = np.concatenate([[i - start] * len(found[i][0]) for i in part]).astype("int32")
        rois, pixels = roi_align(features(images, training=False), images, boxes, index)
        classes = np.concatenate([found[i][2] for i in part])
        probabilities = tf.sigmoid(mask_logits_of(head([rois, pixels]), classes)).numpy()
        k = 0
        for i in part:
            n, shape = len(found[i][0]), found[i][3]
            masks.append(np.array([paste(probabilities[k + j], found[i][0][j], shape)
                                   for j in range(n)], bool).reshape(n, *shape))
            k += n
    return masks


def coco_results(found, masks=None):
    """COCO results: image ids 1..N, category ids 1..K (as export_coco), RLE masks if given."""
    detections = []
    for i, (boxes, scores, classes, _) in enumerate(found):
        for k, (b, s, c) in enumerate(zip(boxes, scores, classes)):
            detections.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                               "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                        float(b[3] - b[1])]})
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[i][k].astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON
                detections[-1]["segmentation"] = rle
    return detections


def score(gt, found, masks):
    detections = coco_results(found, masks)
    report = {}
    for kind, iou_type in (("mask", "segm"), ("box", "bbox")):
        m = metrics.coco_detection(gt, detections, iou_type=iou_type)
        for key in ("map", "map_50", "map_75", "ar_100", "map_small", "map_medium", "map_large"):
            report[f"{kind}_{key}"] = m[key]
        report[f"per_class_{kind}_ap"] = m["per_class"]
    return report


def with_shapes(found, images):
    return [(*f, image.shape[:2]) for f, image in zip(found, images)]


# %% [markdown]
# ## `predict` and `evaluate` on a saved model
#
# A run saves the detector as `OUT/model.keras` (the `detection` recipe's format) and the mask
# head as `OUT/mask_head.keras` beside it. `predict` prints one line per image:
# `PATH<TAB>[{"box": [x1, y1, x2, y2], "class": NAME, "score": S, "rle": RLE}, ...]` in the
# image's own pixels, the mask as COCO's compressed RLE of the image's size
# (`pycocotools.mask.decode` turns it into an (H, W) array); `--draw DIR` also saves the image
# with its masks. `evaluate` scores a saved model on any COCO file with masks (or fresh
# synthetic scenes) and writes the same metrics as training.

# %%
def draw(ax, image, masks, classes, class_names, boxes=None, scores=None, truth=None):
    """Masks filled in colour, their class and score; ground-truth outlines in white."""
    overlay = image.astype(np.float32) / 255
    colours = plt.get_cmap("tab10")
    for k, m in enumerate(masks):
        overlay[m] = 0.45 * overlay[m] + 0.55 * np.array(colours(k % 10)[:3])
    ax.imshow(overlay)
    for m in [] if truth is None else truth:
        ax.contour(m, levels=[0.5], colors="white", linewidths=0.8, linestyles="dotted")
    for k, c in enumerate(classes):
        if boxes is not None:
            b = boxes[k]
            text = class_names[int(c)] + ("" if scores is None else f" {scores[k]:.2f}")
            ax.text(b[0], b[1], text, color="black", fontsize=5, va="bottom",
                    bbox=dict(facecolor=colours(k % 10), alpha=0.7, pad=0.3, linewidth=0))
    ax.axis("off")


def load_model(path):
    """The detector, its feature maps, the mask head, the class names and the input size."""
    detector = saving.load_model(path)
    if not isinstance(detector, keras_cv.models.YOLOV8Detector):
        raise UserError(f"{path} is not a detector saved by this recipe (it is a "
                        f"{type(detector).__name__}): pass OUT/model.keras of a run")
    names, head_file = (Path(path).with_name(f) for f in ("class_names.json", "mask_head.keras"))
    if not names.is_file():
        raise UserError(f"{names} is missing: it is written beside model.keras by the training run")
    if not head_file.is_file():
        raise UserError(f"{head_file} is missing: {path} is a detector without a mask head (a "
                        "detection run?); train one with python -m recipes.instance_segmentation "
                        f"--detector {path}")
    return (detector, feature_maps(detector), saving.load_model(head_file),
            json.loads(names.read_text()), int(detector.input_shape[1]))


if args.command == "predict":
    if not 0 <= args.score_threshold <= 1:
        raise UserError(f"--score-threshold {args.score_threshold}: use a score from 0 to 1")
    detector, features, head, class_names, size = load_model(args.model)
    images = [data.conform(data.read_image(f)[None], channels=3)[0] for f in args.files]
    canvases = [letterbox(image, size) for image in images]
    x, scales = np.stack([c for c, _ in canvases]), np.array([s for _, s in canvases])
    found = with_shapes(detect(detector, x, scales, [i.shape[:2] for i in images],
                               min_score=args.score_threshold), images)
    masks = segment(features, head, x, scales, found)
    for path, image, (boxes, scores, classes, _), image_masks in zip(args.files, images, found,
                                                                     masks):
        objects = []
        for b, s, c, m in zip(boxes, scores, classes, image_masks):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            objects.append({"box": [round(float(v), 1) for v in b], "class": class_names[c],
                            "score": round(float(s), 3),
                            "rle": {"size": [int(v) for v in rle["size"]],
                                    "counts": rle["counts"].decode("ascii")}})
        print(f"{path}\t{json.dumps(objects)}")
        if args.draw:
            fig, ax = plt.subplots(figsize=(4, 4 * image.shape[0] / image.shape[1]))
            draw(ax, image, image_masks, classes, class_names, boxes, scores)
            Path(args.draw).mkdir(parents=True, exist_ok=True)
            fig.savefig(Path(args.draw) / (Path(path).stem + "_masks.png"), dpi=110,
                        bbox_inches="tight")
            plt.close(fig)
    raise SystemExit

if args.command == "evaluate":
    detector, features, head, class_names, size = load_model(args.model)
    synthetic_scenes = args.dataset == "synthetic:scenes"  # 200 fresh scenes, never trained on
    scenes = load_scenes(args.dataset, seed=args.seed + 12_345 * synthetic_scenes,
                         image_size=64 if synthetic_scenes else None,
                         num_examples=200 if synthetic_scenes else None)
    if scenes.class_names != class_names:
        raise UserError(f"{args.dataset} names its classes {scenes.class_names[:5]}..., the model "
                        f"{class_names[:5]}...: evaluate on a dataset of the model's classes")
    x, _, scales = to_model_input(scenes, size)
    found = with_shapes(detect(detector, x, scales, [i.shape[:2] for i in scenes.images]),
                        scenes.images)
    scores = score(export_coco.to_coco(scenes), found, segment(features, head, x, scales, found))
    results.write(args.out, "instance_segmentation", args.dataset, scores,
                  time.time() - args.started, vars(args), model=str(args.model))
    print(results.summary({k: v for k, v in scores.items() if not k.startswith("per_class")},
                          f"evaluate {args.model} on {args.dataset}"))
    raise SystemExit

# %% [markdown]
# ## Prepare the data
#
# The pipeline caches the letterboxed uint8 images and targets, shuffles, batches, and
# augments each batch with Keras layers that move boxes (`bounding_box_format="xyxy"`) and the
# instance-id map (as `segmentation_masks`) with the pixels: horizontal flip, translation and
# zoom. Both stages use it; stage 1 reads boxes and classes, stage 2 also the masks.

# %%
if args.command == "train" and (args.num_scenes < 20 or args.patience < 1 or args.lr <= 0
                                or args.mask_lr <= 0 or args.mask_epochs < 1):
    raise UserError("--num-scenes must be at least 20, --patience and --mask-epochs at least 1, "
                    "--lr and --mask-lr positive")
if args.smoke:  # and every box the decoder gives, so that an untrained detector has some
    args.epochs, args.mask_epochs, args.patience, args.num_scenes = 2, 2, 2, 80
    MIN_SCORE = 0.01
train, val, test = load_splits()
num_classes = len(train.class_names)
reused = None
if args.detector:  # stage 1 done elsewhere: its input size and classes rule
    reused = saving.load_model(args.detector)
    names = Path(args.detector).with_name("class_names.json")
    if not isinstance(reused, keras_cv.models.YOLOV8Detector) or not names.is_file():
        raise UserError(f"--detector {args.detector}: not a YOLOv8 detector with class_names.json "
                        "beside it (pass OUT/model.keras of a detection run)")
    if json.loads(names.read_text()) != train.class_names:
        raise UserError(f"--detector {args.detector} detects {json.loads(names.read_text())[:5]}"
                        f"..., {args.dataset} has {train.class_names[:5]}...: use one class list")
    args.image_size = int(reused.input_shape[1])
if args.image_size is None:
    sides = [max(image.shape[:2]) for image in train.images]
    args.image_size = int(min(320, max(128, 32 * round(float(np.median(sides)) / 32))))
if args.image_size % 32 or args.image_size < 64:
    raise UserError(f"--image-size {args.image_size}: use a multiple of 32, at least 64")
x_train, y_train, _ = to_model_input(train, args.image_size)
x_val, _, val_scales = to_model_input(val, args.image_size)
x_test, _, test_scales = to_model_input(test, args.image_size)
steps = cli.training_budget(args, len(x_train))
print(f"data: {len(x_train)} train / {len(x_val)} validation / {len(x_test)} test images, "
      f"{num_classes} classes, input {args.image_size}x{args.image_size}; "
      f"{sum(len(b) for b in train.boxes)} training objects")


geometric = [keras.layers.RandomFlip("horizontal", bounding_box_format="xyxy"),
             keras.layers.RandomTranslation(0.1, 0.1, bounding_box_format="xyxy",
                                            fill_mode="constant", fill_value=FILL),
             keras.layers.RandomZoom((-0.2, 0.2), bounding_box_format="xyxy",
                                     fill_mode="constant", fill_value=FILL)]


def augment(images, y):
    ids = tf.cast(y["ids"], "float32")
    batch = {"images": images, "segmentation_masks": ids,
             "bounding_boxes": {"boxes": y["boxes"], "labels": y["classes"]}}
    for layer in geometric:
        batch = layer(batch, training=True)
    b, classes = batch["bounding_boxes"]["boxes"], batch["bounding_boxes"]["labels"]
    # padding rows, and boxes squeezed to slivers, become -1 again
    ok = (classes >= 0) & (b[..., 2] - b[..., 0] >= 2) & (b[..., 3] - b[..., 1] >= 2)
    ids = batch["segmentation_masks"]  # nearest-neighbour moves; the fill (114) is no object
    return batch["images"], {"boxes": tf.where(ok[..., None], b, -1.0),
                             "classes": tf.where(ok, classes, -1.0),
                             "ids": tf.where(ids == FILL, 0.0, ids)}


batches = pipeline.for_training(x_train, y_train, args.batch_size, seed=args.seed,
                                augment=augment)
finished = callbacks.Finished(out, args)  # a stage done before an interrupt is not redone
gt_val = export_coco.to_coco(val)  # the validation ground truth, built once


class ValidationMap(keras.callbacks.Callback):
    """COCO mAP on the validation images after each epoch (`evaluate()` gives it); keeps the
    best epoch's weights of `model` and stops after `patience` epochs without improvement."""

    def __init__(self, name, evaluate, model):
        super().__init__()
        self.evaluate, self.target = evaluate, model
        self.weights = finished.directory / f"{name}_best.weights.h5"
        self.history, self.best, self.epoch = [], -1.0, -1

    def on_epoch_end(self, epoch, logs=None):
        value = self.evaluate()
        self.history.append(value)
        if value > self.best:
            self.best, self.epoch = value, epoch
            self.target.save_weights(self.weights)
        print(f" val mAP {value:.3f} (best {self.best:.3f} at epoch {self.epoch + 1})", flush=True)
        if epoch - self.epoch >= args.patience:
            print(f"early stop: no better validation mAP for {args.patience} epochs")
            self.model.stop_training = True


# %% [markdown]
# ## Train stage 1: the detector
#
# Skipped with `--detector MODEL` (the `detection` recipe's model, trained with the same
# data flags, so its test images are these). Otherwise the detection recipe's schedule: Adam
# with warm-up and cosine decay, early stopping on the validation box mAP, the best epoch kept.

# %%
started_cpu = time.process_time()
detector = reused or build_detector(num_classes, args.image_size, args.weights)
record = None if reused else finished.load("detector", detector)
if reused:
    record = {"history": {}, "steps": 0}
    print(f"stage 1: reusing the detector {args.detector}")
elif record is None:
    compile_detector(detector, args.lr, args.epochs * steps)
    plan = callbacks.Plan(["detector"], args.epochs, steps, what="detectors")

    def val_box_map():
        found = with_shapes(detect(detector, x_val, val_scales, [i.shape[:2] for i in
                                                                 val.images]), val.images)
        return metrics.coco_detection(gt_val, coco_results(found))["map"]

    best = ValidationMap("detector", val_box_map, detector)
    history = detector.fit(
        batches.map(lambda images, y: (images, {"boxes": y["boxes"], "classes": y["classes"]})),
        epochs=args.epochs, verbose=callbacks.verbose(),
        callbacks=[plan.callback("detector"), best, *callbacks.standard(out, "detector", args)])
    detector.load_weights(best.weights)
    record = {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
              "steps": len(history.history["loss"]) * steps}
    record["history"]["val_map"] = best.history
    finished.save("detector", detector, record)
stage1_cpu = time.process_time() - started_cpu
features = feature_maps(detector)
found_val = with_shapes(detect(detector, x_val, val_scales, [i.shape[:2] for i in val.images]),
                        val.images)  # the detector is frozen from here: its boxes are fixed

# %% [markdown]
# ## Train stage 2: the mask head
#
# The validation score is the mask AP of the frozen detector's validation detections with the
# head's masks: exactly what the test will measure, so the best epoch is chosen for it.

# %%
channels = sum(int(m.shape[-1]) for m in features.outputs)
head = build_mask_head(channels, num_classes)
head_record = finished.load("mask_head", head)
if head_record is None:
    trainer = MaskHeadTraining(features, head, seed=args.seed)
    trainer.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        args.mask_lr, args.mask_epochs * steps, alpha=0.05)), jit_compile=False)
    plan = callbacks.Plan(["mask head"], args.mask_epochs, steps, what="mask heads")
    best = ValidationMap("mask_head", lambda: metrics.coco_detection(
        gt_val, coco_results(found_val, segment(features, head, x_val, val_scales, found_val)),
        iou_type="segm")["map"], head)
    history = trainer.fit(batches, epochs=args.mask_epochs, verbose=callbacks.verbose(),
                          callbacks=[plan.callback("mask head"), best,
                                     keras.callbacks.TerminateOnNaN(),
                                     keras.callbacks.CSVLogger(str(out / "mask_head_log.csv"))])
    head.load_weights(best.weights)
    head_record = {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    head_record["history"]["val_map"] = best.history
    finished.save("mask_head", head, head_record)
stage2_cpu = time.process_time() - started_cpu - stage1_cpu

# %% [markdown]
# ## Evaluate on the test images
#
# Box AP measures the detector alone; mask AP measures boxes and masks together (a mask can
# only be right where its box found the object), so mask AP <= box AP is the usual picture,
# and the gap is what the mask head loses.

# %%
shapes = [image.shape[:2] for image in test.images]
found = with_shapes(detect(detector, x_test, test_scales, shapes), test.images)
masks = segment(features, head, x_test, test_scales, found)
report = score(export_coco.to_coco(test), found, masks)
val_maps = record["history"].get("val_map") or [None]
report.update(image_size=args.image_size, detector=args.detector or "trained (stage 1)",
              weights=None if reused else args.weights,
              detector_params=int(detector.count_params()), mask_head_params=int(
                  head.count_params()), detector_steps=record["steps"],
              detector_best_epoch=None if reused else val_maps.index(max(val_maps)) + 1,
              mask_head_best_epoch=int(np.argmax(head_record["history"]["val_map"])) + 1,
              stage1_cpu_seconds=round(stage1_cpu, 1), stage2_cpu_seconds=round(stage2_cpu, 1))

# saved without the optimizer state: fresh, uncompiled copies
saved = build_detector(num_classes, args.image_size, "none")
saved.set_weights(detector.get_weights())
saved.save(out / "model.keras")
head.save(out / "mask_head.keras")
(out / "class_names.json").write_text(json.dumps(train.class_names) + "\n")

fig, axes = plt.subplots(3, 6, figsize=(15, 8))
for ax in axes.flat:
    ax.axis("off")
for ax, i in zip(axes.flat, range(len(test.images))):
    boxes, s, c, _ = found[i]
    keep = s >= 0.3
    draw(ax, test.images[i], masks[i][keep], c[keep], train.class_names, boxes[keep], s[keep],
         truth=test.masks[i])
fig.suptitle("test images: predicted masks with score >= 0.3 (colour, class and score), "
             "ground-truth outlines (dotted white)")
plots.save(fig, out / "overlays.png")

fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for name, history in (("detector", record["history"]), ("mask head", head_record["history"])):
    ax = axes[0] if name == "detector" else axes[1]
    if history.get("loss"):
        ax.plot(range(1, len(history["loss"]) + 1), history["loss"], label=f"{name} train")
    ax.set_title(f"{name} loss")
    if history.get("val_map"):
        axes[2].plot(range(1, len(history["val_map"]) + 1), history["val_map"],
                     label="detector: box mAP" if name == "detector" else "mask head: mask mAP")
for ax in axes:
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
axes[2].set_title("validation mAP")
axes[2].legend(fontsize=7)
plots.save(fig, out / "training_curves.png")

# %% [markdown]
# ## What the mask head sees
#
# One test detection, step by step: its box on the image, the ROIAlign crop of the stride-2
# map (mean over channels) and of the pixels, the head's 28x28 probabilities for the detected
# class, and the mask pasted back into the image.

# %%
i = next((i for i, f in enumerate(found) if len(f[0])), None)
if i is not None:
    box, cls = found[i][0][0], found[i][2][0]
    images = tf.constant(x_test[i: i + 1], "float32")
    rois, pixels = roi_align(features(images), images, box[None] * test_scales[i], [0])
    probabilities = tf.sigmoid(mask_logits_of(head([rois, pixels]), [cls]))[0].numpy()
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
    axes[0].imshow(test.images[i])
    axes[0].add_patch(plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                    ec="yellow", lw=2))
    axes[0].set_title(f"detection: {train.class_names[cls]}")
    axes[1].imshow(rois[0, ..., :24].numpy().mean(-1), cmap="viridis")
    axes[1].set_title(f"ROIAlign {ROI}x{ROI}, stride 2")
    axes[2].imshow(pixels[0].numpy().astype(np.uint8))
    axes[2].set_title(f"pixels {MASK}x{MASK}")
    axes[3].imshow(probabilities, cmap="gray", vmin=0, vmax=1)
    axes[3].set_title(f"mask head {MASK}x{MASK}")
    draw(axes[4], test.images[i], masks[i][:1], [cls], train.class_names)
    axes[4].set_title("pasted into the image")
    for ax in axes:
        ax.axis("off")
    plots.save(fig, out / "roi_align.png")

cli.finish(args, report, args.dataset)
finished.clear()  # results are written: the next run with these flags starts afresh
