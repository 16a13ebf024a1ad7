# %% [markdown]
# # Object tracking: a Siamese CNN (SiamFC) against template matching, CSRT and KCF
#
# **Description:** follow one object through a video, given only its box in the first frame.
# A Siamese network in the style of SiamFC embeds the first-frame crop (the *exemplar*) and a
# larger search region of each new frame with one shared CNN; the cross-correlation of the two
# feature maps is a score map whose peak, after a motion prior and a search over a few scales,
# gives the new box. It is trained on exemplar/search pairs cut from synthetic videos in which
# the target moves smoothly or abruptly, changes scale, rotates, is lit differently, passes
# behind occluders and meets distractors that look like it. A template-update strategy and an
# occlusion rule are each measured on and off, and the tracker is scored against OpenCV's
# template matching and its CSRT and KCF correlation-filter trackers with the OTB benchmark's
# metrics (success plot and its AUC, precision at 20 px, failures), overall and per challenge.
#
# **Concepts:** tracking starts from a box in the first frame, drawn by hand or given by a
# detector, and must find the same object in every later frame: a *matching* problem, not a
# classification one, because the tracker has never seen this object class before. A CNN
# encodes the target's appearance as a feature map; candidate regions of the next frame are
# encoded by the same network (a Siamese network: two branches, shared weights), and a
# similarity (here correlation, elsewhere cosine) scores every candidate position at once:
# correlating the exemplar's features over the search region's is a convolution with the
# exemplar as the kernel. What makes tracking hard: the appearance changes (lighting,
# rotation, deformation, partial occlusion), the motion changes (sudden jumps and turns,
# growth and shrinking), the target can disappear (full occlusion), and similar objects nearby
# compete for its identity. A motion prior (objects move little between frames: a cosine
# window that favours the previous position) keeps the identity among look-alikes; a search
# over scales follows growth; updating the template follows appearance change but can learn
# the occluder instead; and a low peak score says "not found", when keeping the last box
# beats jumping to a distractor. Applications: surveillance and traffic analysis, sports
# analytics, robotics and drones following a person or object, video editing (rotoscoping),
# and the association step of multi-object tracking.
#
# Run: `make tracking` or `python -m recipes.tracking --help`. In a notebook, pass flags
# through `RECIPE_ARGS` in a cell above the setup cell, e.g.
# `os.environ["RECIPE_ARGS"] = "--epochs 20"` (there it replaces the command line; empty or
# unset: the defaults).

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
# Read before the heavy imports, so that `--help` answers at once. The default budget: 48
# training videos, 8 epochs of 50 batches of 16 exemplar/search pairs (400 optimisation
# steps), then 24 test videos of 60 frames (three per challenge) tracked by every tracker.

# %%
from common import UserError, cli

SPECS = ("synthetic:videos | folder:DIR (one subfolder per sequence: frames, directly or in "
         "img/, or one video file, and groundtruth.txt of x,y,w,h per frame)")
parser = cli.parser("tracking", "Train a Siamese (SiamFC) tracker and score it against "
                    "classical trackers (OTB success AUC, precision, failures).",
                    dataset="synthetic:videos", epochs=8, batch_size=16, specs=SPECS,
                    train_size=False)
parser.add_argument("--weights", default="generic",
                    help="embedding start: generic (the collection's pretrained backbone, "
                    "offline) | none (random) | PATH.weights.h5 (generic architecture)")
parser.add_argument("--steps-per-epoch", type=int, default=50, help="batches of fresh pairs "
                    "per epoch")
parser.add_argument("--train-videos", type=int, default=48, help="synthetic training videos")
parser.add_argument("--test-videos", type=int, default=24, help="synthetic test videos "
                    "(the challenges in turn)")
parser.add_argument("--length", type=int, default=60, help="frames per synthetic video")
parser.add_argument("--image-size", type=int, default=128, help="synthetic frame side (px)")
parser.add_argument("--update-rate", type=float, default=0.05,
                    help="template update: each frame the template moves this far towards "
                    "the features of the new box (0: never updated)")
parser.add_argument("--occlusion-threshold", default="auto",
                    help="peak score (a logit) below which the target counts as hidden (keep "
                    "the last box, no template update): auto (calibrated on the validation "
                    "videos) | a number | none (rule off)")
parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam, cosine)")
# predict takes a frame folder or video (--frames) or frame files as its positional files
for action in parser.predict._actions:  # the shared parser makes FILE... required
    if action.dest == "files":
        action.nargs, action.metavar = "*", "FRAME"
        action.help = "frame image files in order (instead of --frames)"
parser.predict.add_argument("--frames", default=None, metavar="DIR_OR_VIDEO",
                            help="a folder of frame images (sorted by name) or a video file")
parser.predict.add_argument("--init", required=True, metavar="x,y,w,h",
                            help="the target's box in the first frame (pixels, top-left x,y)")
parser.predict.add_argument("--draw", default=None, metavar="OUT.gif",
                            help="also write the frames with the tracked box drawn")
args = cli.parse_args(parser)

# %%
import json
import math
import sys
import time
from pathlib import Path

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from common import backbone, callbacks, plots, results, saving, video

out = Path(args.out)
cv2.setNumThreads(1)  # frames are small: threads cost more than they save on a shared CPU

# %% [markdown]
# ## The data: videos with a box per frame
#
# `synthetic:videos` (default) makes 128x128 videos with `common.video.make_sequences`: a
# textured shape (the target) among static clutter and two distractors of similar appearance
# (the same shape in close colours, or another shape in the same colours). Each video tests
# one challenge: `smooth_motion`, `abrupt_motion` (sudden turns, speed changes and jumps),
# `scale_change` (grows or shrinks about 2x), `rotation`, `illumination` (the scene darkens
# and brightens while a light sweeps across), `partial_occlusion`, `full_occlusion` (behind a
# bar for about ten frames) and `distractors` (four look-alikes that pass close by). Every
# frame has the target's box (its whole silhouette, hidden parts included) and a visibility
# flag (a quarter of it or more in view). Training, validation and test videos come from
# different seeds.
#
# `folder:DIR` reads real sequences in the OTB / GOT-10k layout: one subfolder per sequence
# with its frames (or one video file) and `groundtruth.txt`; an optional `challenge.txt` per
# sequence names its challenge (scored per challenge), an optional `absence.label` marks
# frames where the target is absent. Sequences are split 70/10/20 by `--seed`.

# %%
def load_videos(spec, evaluate=False):
    """(train, validation, test) lists of video.Sequence; for `evaluate`, (None, None, all)."""
    kind, _, value = spec.partition(":")
    if spec == "synthetic:videos":
        small = args.smoke  # 24 frames: long enough for a full occlusion
        length = 24 if small else args.length
        make = lambda n, seed, frames=length: video.make_sequences(  # noqa: E731
            n, frames, args.image_size, seed)
        if evaluate:
            return None, None, make(8 if small else args.test_videos, args.seed + 12_345)
        return (make(8 if small else args.train_videos, args.seed, 16 if small else length),
                make(8 if small else 16, args.seed + 1),
                make(8 if small else args.test_videos, args.seed + 2))
    if kind == "synthetic":
        raise UserError(f"unknown synthetic dataset {spec!r}: use synthetic:videos")
    sequences = video.read_sequences(value if kind == "folder" else spec)
    for s in sequences:
        if s.boxes is None:
            raise UserError(f"sequence {s.source} has no groundtruth.txt (x,y,w,h per frame): "
                            "a tracker can be trained and scored only on sequences with boxes")
    if evaluate:
        return None, None, sequences
    if len(sequences) < 3:
        raise UserError(f"{spec} holds {len(sequences)} sequence(s): training needs at least 3 "
                        "(train, validation, test); score a trained model with `evaluate`")
    order = np.random.default_rng(args.seed).permutation(len(sequences))
    n_test, n_val = max(1, round(0.2 * len(order))), max(1, round(0.1 * len(order)))
    pick = lambda idx: [sequences[i] for i in idx]  # noqa: E731
    return (pick(order[n_test + n_val:]), pick(order[n_test:n_test + n_val]),
            pick(order[:n_test]))


# %% [markdown]
# ## Crops: exemplar and search region
#
# As in SiamFC, the exemplar is a square around the target with some context: side
# `sqrt((w + p) * (h + p))` with `p = (w + h) / 2`, resized to 32x32 pixels; the search region
# is twice that side around the previous position, resized to 64x64. Parts outside the
# frame are filled with the frame's mean colour. The embedding has stride 4, so the exemplar
# becomes an 8x8 feature map, the search region 16x16, and their correlation a 9x9 score map:
# cell (i, j) scores the target moved by 4 (j - 4), 4 (i - 4) crop pixels (up to 16, about
# 20 frame pixels for a 20-pixel target).

# %%
EXEMPLAR, SEARCH, STRIDE = 32, 64, 4
RADIUS = 4  # crop pixels: positives within one score cell of the target
SCORE = (SEARCH - EXEMPLAR) // STRIDE + 1  # 9
CENTRE = SCORE // 2


def context_side(box):
    w, h = float(box[2]), float(box[3])
    p = (w + h) / 2
    return math.sqrt((w + p) * (h + p))


def crop(frame, centre, side, size, fill):
    """The square of `side` pixels around `centre` (x, y) resized to size x size."""
    scale = size / side
    matrix = np.array([[scale, 0, size / 2 - 0.5 - scale * centre[0]],
                       [0, scale, size / 2 - 0.5 - scale * centre[1]]], np.float32)
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def box_centre(box):  # pixel-index coordinates: pixel i covers [i, i + 1)
    return np.array([box[0] + box[2] / 2 - 0.5, box[1] + box[3] / 2 - 0.5], np.float32)


def mean_colour(frame):
    return tuple(float(v) for v in frame.reshape(-1, 3).mean(0))


# %% [markdown]
# ## Training pairs
#
# A pair is an exemplar from one frame and a search region from another frame of the same
# video, up to 30 frames later or earlier, both with the target in view. The search region is
# centred near the target with a random shift of up to 12 pixels and a random scale of
# +-15 %, so that the target is not always in the middle. The label map is 1 within 4 crop
# pixels (one score cell, a quarter of the target's side) of where the target is, 0
# elsewhere; a wider disc (8 pixels) trains a flat top on which the peak can sit anywhere,
# and tracks less well. Distractors in the search region are the hard negatives. Pairs are drawn fresh for every batch. More targets than the videos hold: both
# crops of a pair get the same random swap of colour channels and the same mirroring; and
# 30 % of search regions are made darker or brighter (the light changed).

# %%
class Pairs(keras.utils.PyDataset):
    def __init__(self, sequences, batches, batch_size, seed, fresh=True):
        super().__init__()
        self.sequences, self.batches, self.batch_size = sequences, batches, batch_size
        self.seed, self.fresh, self.epoch = seed, fresh, 0
        self.usable = []  # (sequence, frame) pairs with the target in view and a real box
        for s, sequence in enumerate(sequences):
            ok = ~np.isnan(sequence.boxes).any(1) & (sequence.boxes[:, 2:] >= 2).all(1)
            if sequence.visible is not None:
                ok &= sequence.visible
            self.usable += [(s, int(i)) for i in np.nonzero(ok)[0]]
        if len(self.usable) < 2:
            raise UserError("the training videos have fewer than 2 frames with the target in "
                            "view: nothing to learn from")

    def __len__(self):
        return self.batches

    def on_epoch_end(self):
        self.epoch += self.fresh

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        exemplars = np.empty((self.batch_size, EXEMPLAR, EXEMPLAR, 3), np.float32)
        searches = np.empty((self.batch_size, SEARCH, SEARCH, 3), np.float32)
        labels = np.empty((self.batch_size, SCORE, SCORE), np.float32)
        cells = (np.arange(SCORE) - CENTRE) * STRIDE
        for b in range(self.batch_size):
            s, i = self.usable[rng.integers(len(self.usable))]
            sequence = self.sequences[s]
            near = [j for t, j in self.usable if t == s and abs(j - i) <= 30]
            j = near[rng.integers(len(near))]
            first, second = sequence.frames[i], sequence.frames[j]
            exemplars[b] = crop(first, box_centre(sequence.boxes[i]),
                                context_side(sequence.boxes[i]), EXEMPLAR, mean_colour(first))
            side = context_side(sequence.boxes[j]) * SEARCH / EXEMPLAR * math.exp(
                rng.uniform(-0.15, 0.15))
            shift = rng.uniform(-12, 12, 2)  # where the target will be, in crop pixels
            centre = box_centre(sequence.boxes[j]) - shift * side / SEARCH
            searches[b] = crop(second, centre, side, SEARCH, mean_colour(second))
            if rng.random() < 0.3:  # the light changed between the two frames
                searches[b] *= rng.uniform(0.6, 1.4)
            distance = np.hypot(cells[None, :] - shift[0], cells[:, None] - shift[1])
            labels[b] = distance <= RADIUS
            # new targets from old ones: the same colour swap and mirroring for both crops
            order = rng.permutation(3)
            exemplars[b], searches[b] = exemplars[b][..., order], searches[b][..., order]
            if rng.random() < 0.5:
                exemplars[b], searches[b] = exemplars[b][:, ::-1], searches[b][:, ::-1]
                labels[b] = labels[b][:, ::-1]
        np.clip(searches, 0, 255, out=searches)
        return (exemplars, searches), labels


# %% [markdown]
# ## The Siamese network
#
# The embedding is the collection's generic pretrained backbone up to its stride-4 stage (96
# channels; fully convolutional, so one network takes both crop sizes), plus a 1x1 convolution
# to 64 channels and batch normalisation. Both crops go through the same embedding (shared
# weights); `Correlation` slides each exemplar's feature map over its own search region's
# (computed as a product of Fourier spectra, much faster on a CPU than a convolution with an
# 8x8 kernel per sample), and a learned scale and bias turn the mean product into a logit per
# position. The loss is SiamFC's
# logistic loss with positives and negatives weighted equally.

# %%
def build_embedding(weights):
    if weights == "none":
        base = backbone.generic_backbone((None, None, 3))
    else:
        base = backbone.load_generic((None, None, 3),
                                     **({} if weights == "generic" else {"path": weights}))
    x = base.get_layer("stage3").output  # stride 4, 96 channels
    x = keras.layers.Conv2D(64, 1, name="embed_conv")(x)
    # momentum 0.9: the moving statistics used when tracking settle within the short training
    x = keras.layers.BatchNormalization(momentum=0.9, name="embed_bn")(x)
    return keras.Model(base.input, x, name="siamese_embedding")


class Correlation(keras.layers.Layer):
    """Per-sample cross-correlation of exemplar features (B, h, w, C) over search features
    (B, H, W, C): (B, H - h + 1, W - w + 1) logits = scale * mean product + bias."""

    def build(self, input_shapes):
        # the features are batch-normalised: a mean product near 1 is a match, near 0 none;
        # scale 10 and bias -5 make those logits +5 and -5 from the first step
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(10.0),
                                     name="scale")
        self.bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(-5.0),
                                    name="bias")

    def call(self, inputs):
        # through the Fourier domain: a sliding product is a pointwise product of spectra,
        # 5-10x faster to train on a CPU than the same correlation as a depthwise convolution
        # with a large kernel; the exemplar is zero-padded to the search region's size, and the
        # valid positions never wrap around
        z, x = inputs
        h, w, height, width, channels = z.shape[1], z.shape[2], x.shape[1], x.shape[2], z.shape[3]
        z = tf.pad(tf.transpose(z, (0, 3, 1, 2)), [[0, 0], [0, 0], [0, height - h],
                                                   [0, width - w]])
        spectrum = tf.reduce_sum(tf.signal.rfft2d(tf.transpose(x, (0, 3, 1, 2)))
                                 * tf.math.conj(tf.signal.rfft2d(z)), axis=1)
        y = tf.signal.irfft2d(spectrum, fft_length=[height, width])[:, :height - h + 1,
                                                                     :width - w + 1]
        return self.scale * y / (h * w * channels) + self.bias


def build_siamese(embedding):
    exemplar = keras.Input((EXEMPLAR, EXEMPLAR, 3), name="exemplar")
    search = keras.Input((SEARCH, SEARCH, 3), name="search")
    scores = Correlation(name="correlation")([embedding(exemplar), embedding(search)])
    return keras.Model([exemplar, search], scores, name="siamfc")


def balanced_logistic_loss(labels, logits):
    positive = labels / keras.ops.maximum(keras.ops.sum(labels, axis=(1, 2), keepdims=True), 1)
    negative = (1 - labels) / keras.ops.maximum(
        keras.ops.sum(1 - labels, axis=(1, 2), keepdims=True), 1)
    per_cell = keras.ops.softplus(logits) - labels * logits  # binary cross-entropy on logits
    return keras.ops.sum((positive + negative) * per_cell / 2, axis=(1, 2))


def peak_accuracy(labels, logits):
    """Share of pairs whose highest-scoring position is a positive one."""
    flat_labels = keras.ops.reshape(labels, (keras.ops.shape(labels)[0], -1))
    best = keras.ops.argmax(keras.ops.reshape(logits, keras.ops.shape(flat_labels)), axis=-1)
    return keras.ops.take_along_axis(flat_labels, best[:, None], axis=1)[:, 0]


# %% [markdown]
# ## The tracker
#
# Frame 1: embed the exemplar once. Each later frame: cut the search region around the last
# position at three scales (1.0375^-1, 1, 1.0375: a few percent bigger or smaller), embed the
# three at once, correlate with the template: a score map (logits) per scale. The other
# scales are penalised slightly (odds x0.97) so that the size changes only on evidence; the
# best scale's map is upsampled 8x (bicubic), normalised, and mixed with a cosine window
# (weight 0.18): the motion prior that favours small moves and so keeps the target's identity
# when a look-alike is as similar. Its peak gives the new centre; the size moves 59 % of the
# way to the chosen scale. Two options, each measured on and off:
#
# - **template update**: after each frame where the target is found, a running template
#   moves `--update-rate` (5 %) of the way towards the features of the new box, and the
#   template used is half the first frame's and half the running one: it follows a
#   rotating, relit or growing target, while the first frame's half, which is sure to show
#   the target, limits how much of an occluder or a distractor it can learn.
# - **occlusion rule**: when the best peak score is below a threshold, the target counts as
#   hidden: the box does not follow the score map (whose peak is then on something else)
#   but coasts on at the target's recent velocity (the centre's motion per frame, smoothed
#   over about five frames), since a target behind an occluder keeps moving; and the
#   template is not updated. The threshold is calibrated on the validation videos: the score
#   that best separates frames where the target is in view and tracked (overlap > 0.5) from
#   frames where it is hidden (balanced accuracy), among scores that would fire on at most a
#   tenth of the tracked frames.

# %%
TRACKER = {"scale_step": 1.0375, "scale_penalty": 0.9745, "scale_lr": 0.59,
           "window_influence": 0.176, "upsample": 8, "velocity_rate": 0.2, "anchor": 0.5}


class SiameseTracker:
    def __init__(self, embedding, config, update_rate, threshold):
        self.config, self.update_rate, self.threshold = config, update_rate, threshold
        self.embed = tf.function(lambda x: embedding(x, training=False), autograph=False)
        norm = EXEMPLAR * EXEMPLAR // STRIDE ** 2 * int(embedding.output_shape[-1])

        @tf.function(autograph=False)
        def score(searches, template):
            features = embedding(searches, training=False)
            correlation = tf.nn.conv2d(features, template[0, ..., None], 1, "VALID")[..., 0]
            return config["score_scale"] * correlation / norm + config["score_bias"]  # logits

        self.score = score
        size = SCORE * TRACKER["upsample"]
        hann = np.hanning(size)
        self.window = (np.outer(hann, hann) / np.outer(hann, hann).sum()).astype(np.float32)
        self.scales = TRACKER["scale_step"] ** np.array([-1.0, 0.0, 1.0])

    def template_at(self, frame, centre, size):
        patch = crop(frame, centre, context_side((0, 0, *size)), EXEMPLAR, mean_colour(frame))
        return self.embed(patch[None].astype(np.float32))

    def init(self, frame, box):
        self.centre, self.size = box_centre(box), np.array(box[2:], np.float32)
        self.template = self.template_at(frame, self.centre, self.size)
        self.first = self.recent = self.template
        self.velocity = np.zeros(2, np.float32)  # pixels per frame, smoothed
        self.frame_shape = frame.shape

    def update(self, frame):
        """The box (x, y, w, h) in this frame, the peak score, and whether the rule fired."""
        side = context_side((0, 0, *self.size)) * SEARCH / EXEMPLAR
        fill = mean_colour(frame)
        searches = np.stack([crop(frame, self.centre, side * s, SEARCH, fill)
                             for s in self.scales]).astype(np.float32)
        maps = self.score(searches, self.template).numpy()
        peaks = maps.reshape(3, -1).max(1)
        # the scores are logits: the penalty multiplies the odds of the other two scales
        penalty = TRACKER["scale_penalty"]
        penalised = peaks + np.log([penalty, 1.0, penalty])
        best = int(np.argmax(penalised))
        peak = float(maps[best].max())
        hidden = self.threshold is not None and peak < self.threshold
        height, width = self.frame_shape[:2]
        if hidden:  # coast: the target moves on behind the occluder as it moved before
            self.centre = np.clip(self.centre + self.velocity, 0, [width - 1, height - 1])
        else:
            before = self.centre
            u = TRACKER["upsample"]
            response = cv2.resize(maps[best], (SCORE * u, SCORE * u),
                                  interpolation=cv2.INTER_CUBIC)
            response -= response.min()
            response /= max(float(response.sum()), 1e-12)
            wi = TRACKER["window_influence"]
            response = (1 - wi) * response + wi * self.window
            row, col = np.unravel_index(int(np.argmax(response)), response.shape)
            cells = (np.array([col, row], np.float32) + 0.5) / u - 0.5 - CENTRE
            self.centre = self.centre + cells * STRIDE * side * self.scales[best] / SEARCH
            lr = TRACKER["scale_lr"]
            self.size = self.size * (1 - lr + lr * self.scales[best])
            self.centre = np.clip(self.centre, 0, [width - 1, height - 1])
            self.size = np.clip(self.size, 4, [width, height])
            rate = TRACKER["velocity_rate"]
            self.velocity = (1 - rate) * self.velocity + rate * (self.centre - before)
            if self.update_rate > 0:  # a running template, always half the first frame's
                new = self.template_at(frame, self.centre, self.size)
                self.recent = (1 - self.update_rate) * self.recent + self.update_rate * new
                anchor = TRACKER["anchor"]
                self.template = anchor * self.first + (1 - anchor) * self.recent
        box = np.array([*(self.centre + 0.5 - self.size / 2), *self.size], np.float32)
        return box, peak, hidden


def run_siamese(tracker, frames, box):
    """Boxes (T, 4), peak scores (T,), hidden flags (T,) over all frames; frame 0 is given."""
    tracker.init(frames[0], box)
    boxes, peaks, hidden = [np.asarray(box, np.float32)], [1.0], [False]
    for i in range(1, len(frames)):
        b, p, h = tracker.update(frames[i])
        boxes.append(b)
        peaks.append(p)
        hidden.append(h)
    return np.array(boxes), np.array(peaks), np.array(hidden)


# %% [markdown]
# ## The classical baselines
#
# - **template matching** (`cv2.matchTemplate`, normalised cross-correlation): the first
#   frame's pixels slid over a window of three times the box around the last position; the
#   best match is the new box. No learning, fixed template and size.
# - **CSRT** and **KCF** (opencv-contrib): discriminative correlation filters learned online
#   from the first frame and updated every frame: KCF on HOG features with a kernel trick
#   (fast), CSRT with channel and spatial reliability maps (slower, more accurate). When one
#   reports a failure, its last box is kept.

# %%
def run_template_matching(frames, box):
    x, y, w, h = (int(round(v)) for v in box)
    height, width = frames[0].shape[:2]
    x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    w, h = max(1, min(w, width - x)), max(1, min(h, height - y))
    template = cv2.cvtColor(frames[0][y:y + h, x:x + w], cv2.COLOR_RGB2GRAY)
    boxes = [np.array([x, y, w, h], np.float32)]
    for i in range(1, len(frames)):
        gray = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
        left, top = max(0, x - w), max(0, y - h)
        right, bottom = min(width, x + 2 * w), min(height, y + 2 * h)
        window = gray[top:bottom, left:right]
        if window.shape[0] >= h and window.shape[1] >= w:
            match = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
            _, _, _, (dx, dy) = cv2.minMaxLoc(match)
            x, y = left + dx, top + dy
        boxes.append(np.array([x, y, w, h], np.float32))
    return np.array(boxes)


def run_opencv(kind, frames, box):
    tracker = {"csrt": cv2.TrackerCSRT_create, "kcf": cv2.TrackerKCF_create}[kind]()
    x, y, w, h = (int(round(v)) for v in box)
    tracker.init(cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR), (x, y, max(w, 1), max(h, 1)))
    boxes = [np.array([x, y, w, h], np.float32)]
    for i in range(1, len(frames)):
        found, new = tracker.update(cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
        boxes.append(np.array(new, np.float32) if found else boxes[-1])
    return np.array(boxes)


# %% [markdown]
# ## The OTB metrics
#
# For every frame after the first (which is given) whose ground truth is known: the overlap
# (IoU) of the tracked and the true box, and the distance of their centres.
#
# - **success plot**: the share of frames with overlap above each threshold from 0 to 1 (step
#   0.05), averaged over the sequences; `success_auc` is the area under it (the mean of the
#   21 points), the headline number of OTB.
# - **precision_20**: the share of frames whose centre is within 20 pixels of the truth,
#   averaged over the sequences.
# - **failures**: stretches of 10 or more frames in a row with overlap 0 (the tracker lost
#   the target and did not find it back), summed over the sequences.
#
# The same numbers per challenge come from the sequences of that challenge alone.

# %%
THRESHOLDS = video.OVERLAP_THRESHOLDS


def score_tracker(per_sequence, sequences):
    """metrics for one tracker: overall, and per challenge where sequences name one."""
    report, success, precision = video.summarise(per_sequence)
    for challenge in sorted({s.challenge for s in sequences if s.challenge}):
        chosen = [r for r, s in zip(per_sequence, sequences) if s.challenge == challenge]
        report[challenge] = video.summarise(chosen)[0]
    return report, success, precision


# %% [markdown]
# ## Run every tracker on a set of sequences
#
# `siamese` is the full tracker (template update and occlusion rule); the variants turn one
# option off (`siamese_no_update`, `siamese_no_occlusion_rule`) or both (`siamese_plain`, the
# original SiamFC). Frames per second are measured per tracker, on this CPU, frame loading
# excluded.

# %%
def siamese_variants(config, threshold):
    full = {"update_rate": args.update_rate, "threshold": threshold}
    variants = {"siamese": full,
                "siamese_no_update": {**full, "update_rate": 0.0},
                "siamese_no_occlusion_rule": {**full, "threshold": None},
                "siamese_plain": {"update_rate": 0.0, "threshold": None}}
    if threshold is None:  # --occlusion-threshold none: the rule is off everywhere
        variants = {k: v for k, v in variants.items() if "occlusion" not in k and k != "siamese"}
        variants["siamese"] = variants.pop("siamese_no_update") if args.update_rate == 0 else full
    if args.update_rate == 0:
        variants = {k: v for k, v in variants.items() if "no_update" not in k}
    return variants


def evaluate_all(embedding, config, sequences, threshold, variants=None):
    """metrics per tracker, success and precision curves, and the tracked boxes."""
    variants = variants or siamese_variants(config, threshold)
    trackers = [*variants, "template_matching", "csrt", "kcf"]
    metrics, curves, tracked = {}, {}, {}
    for n, name in enumerate(trackers, 1):
        seconds, frames_done, per_sequence, tracked[name] = 0.0, 0, [], []
        if name in variants:  # one tracker (one traced graph) for all sequences
            tracker = SiameseTracker(embedding, config, **variants[name])
        for sequence in sequences:
            frames = [sequence.frames[i] for i in range(len(sequence))]
            box = sequence.boxes[0]
            clock = time.time()  # frame loading excluded
            if name in variants:
                boxes, peaks, hidden = run_siamese(tracker, frames, box)
            elif name == "template_matching":
                boxes, peaks, hidden = run_template_matching(frames, box), None, None
            else:
                boxes, peaks, hidden = run_opencv(name, frames, box), None, None
            seconds += time.time() - clock
            frames_done += len(frames) - 1
            per_sequence.append(video.otb_scores(boxes, sequence.boxes))
            tracked[name].append((boxes, peaks, hidden))
        metrics[name], success, precision = score_tracker(per_sequence, sequences)
        metrics[name]["fps"] = round(frames_done / max(seconds, 1e-9), 1)
        curves[name] = (success, precision)
        print(f"[{n}/{len(trackers)}] {name}: success AUC {metrics[name]['success_auc']:.3f}, "
              f"precision@20 {metrics[name]['precision_20']:.3f}, failures "
              f"{metrics[name]['failures']}, {metrics[name]['fps']:.0f} frames/s", flush=True)
    return metrics, curves, tracked


def calibrate_threshold(embedding, config, sequences):
    """The peak score that best separates 'in view and tracked' from 'hidden' frames on the
    validation videos (balanced accuracy), with the plain tracker; and that accuracy."""
    tracker = SiameseTracker(embedding, config, 0.0, None)
    found, lost = [], []
    for sequence in sequences:
        frames = [sequence.frames[i] for i in range(len(sequence))]
        boxes, peaks, _ = run_siamese(tracker, frames, sequence.boxes[0])
        ious = video.overlap(boxes, sequence.boxes)
        visible = sequence.visible if sequence.visible is not None else ious > 0
        found += list(peaks[1:][visible[1:] & (ious[1:] > 0.5)])
        lost += list(peaks[1:][~visible[1:]])
    if not found:
        raise UserError("the tracker found the target in no validation frame: train longer "
                        "(--epochs) or pass --occlusion-threshold")
    if not lost:  # no hidden frames to learn from: fire only below almost every found peak
        print("note: the validation videos have no hidden frames: occlusion threshold = the "
              "2nd percentile of the peaks on tracked frames")
        return float(np.percentile(found, 2)), None
    found, lost = np.array(found), np.array(lost)
    # a rule that fires on more than a tenth of the tracked frames would lose the target itself
    candidates = np.unique(np.concatenate([found, lost]))
    candidates = candidates[candidates <= np.percentile(found, 10)]
    accuracy = [((found >= t).mean() + (lost < t).mean()) / 2 for t in candidates]
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


# %% [markdown]
# ## Pictures: success plot, per challenge, a tracked video

# %%
def success_plot(curves, metrics, path, title):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (success, precision) in curves.items():
        style = "-" if name.startswith("siamese") else "--"
        left.plot(THRESHOLDS, success, style, label=f"{name} [{metrics[name]['success_auc']:.3f}]")
        right.plot(range(51), precision, style,
                   label=f"{name} [{metrics[name]['precision_20']:.3f}]")
    left.set(xlabel="overlap threshold", ylabel="success rate", title="success plot (AUC)")
    right.set(xlabel="centre error threshold (px)", ylabel="precision",
              title="precision plot (at 20 px)")
    right.axvline(20, color="gray", linewidth=0.8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return plots.save(fig, path)


def challenge_plot(metrics, path):
    challenges = sorted({k for m in metrics.values() for k, v in m.items() if isinstance(v, dict)})
    if not challenges:
        return None
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(challenges)), 3.8))
    width = 0.8 / len(metrics)
    for k, (name, m) in enumerate(metrics.items()):
        ax.bar(np.arange(len(challenges)) + k * width, [m[c]["success_auc"] for c in challenges],
               width, label=name)
    ax.set_xticks(np.arange(len(challenges)) + 0.4 - width / 2, challenges, rotation=20,
                  fontsize=8)
    ax.set(ylabel="success AUC", title="success AUC per challenge", ylim=(0, 1))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return plots.save(fig, path)


def summary_table(metrics, title):
    """Trackers by AUC, precision, failures and speed; then AUC per challenge."""
    names = [n for n, m in metrics.items() if "success_auc" in m]
    lines = [title, f"{'tracker':<26}{'AUC':>7}{'prec@20':>9}{'failures':>9}{'fps':>8}"]
    for n in names:
        m = metrics[n]
        lines.append(f"{n:<26}{m['success_auc']:>7.3f}{m['precision_20']:>9.3f}"
                     f"{m['failures']:>9d}{m['fps']:>8.0f}")
    challenges = sorted({k for n in names for k, v in metrics[n].items() if isinstance(v, dict)})
    if challenges:
        short = [n.replace("siamese_", "s_")[:11] for n in names]
        lines += ["", "success AUC per challenge", f"{'':<18}" + "".join(f"{n:>12}" for n in short)]
        lines += [f"{c:<18}" + "".join(f"{metrics[n][c]['success_auc']:>12.3f}" for n in names)
                  for c in challenges]
    return "\n".join(lines)


COLOURS = {"truth": (0, 220, 0), "siamese": (255, 40, 40), "csrt": (60, 140, 255),
           "kcf": (255, 200, 0), "template_matching": (220, 0, 220)}


def draw_frames(frames, tracks, hidden=None, zoom=None):
    """Frames with boxes ({name: (T, 4)}) drawn in the COLOURS (white for other names), a
    dashed look (thin) where the siamese tracker declared the target hidden."""
    zoom = zoom or max(1, 256 // max(frames[0].shape[:2]))
    drawn = []
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame).resize((frame.shape[1] * zoom, frame.shape[0] * zoom),
                                              Image.NEAREST)
        pen = ImageDraw.Draw(image)
        for name, boxes in tracks.items():
            if boxes is None or np.isnan(boxes[i]).any():
                continue
            x, y, w, h = boxes[i] * zoom
            thin = name == "siamese" and hidden is not None and hidden[i]
            pen.rectangle((x, y, x + w - 1, y + h - 1), outline=COLOURS.get(name, (255,) * 3),
                          width=1 if thin else 2)
        pen.text((3, 2), str(i), fill=(255, 255, 255))
        drawn.append(image)
    return drawn


def save_gif(images, path, fps=12):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0)
    return path


# %% [markdown]
# ## Saving, `predict` and `evaluate`
#
# The model is the embedding network (`model.keras`: crops in, feature maps out); what the
# tracker needs beside it (the correlation's scale and bias, crop sizes, the occlusion
# threshold and the update rate) is in `tracking.json`.
#
# `predict --model M --frames DIR_OR_VIDEO --init x,y,w,h` tracks from the given box and prints
# one JSON line per frame: `{"frame", "file", "box": [x, y, w, h], "score", "hidden"}`
# (`score` is the peak score, `hidden` whether the occlusion rule kept the last box);
# `--draw OUT.gif` writes the frames with the box. `evaluate --model M --dataset DIR` scores
# the saved tracker and the baselines on any folder of sequences with ground truth.

# %%
def load_tracker(path):
    model = saving.load_model(path)
    info_file = Path(path).with_name("tracking.json")
    if len(model.inputs) != 1 or len(model.output_shape) != 4 or model.name != (
            "siamese_embedding"):
        raise UserError(f"{path} is not a tracker saved by this recipe: pass OUT/model.keras "
                        "of a tracking run")
    if not info_file.is_file():
        raise UserError(f"{info_file} is missing: it is written beside model.keras by training")
    return model, json.loads(info_file.read_text())


def frames_to_track():
    """(name, frame) pairs, streamed, from --frames or the FRAME files."""
    if args.frames and args.files:
        raise UserError("give the frames either as --frames DIR_OR_VIDEO or as files, not both")
    if args.frames:
        yield from video.iter_frames(args.frames)
        return
    if not args.files:
        raise UserError("no frames: pass --frames DIR_OR_VIDEO (a folder of frames or a video "
                        "file) or frame files")
    files = [Path(f) for f in args.files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"frame file not found: {missing[0]}")
    frames = video.FrameFiles(files)
    for i, file in enumerate(files):
        yield str(file), frames[i]


if args.command == "predict":  # the input is checked before the model is loaded
    init = video.parse_box(args.init, "--init")
    if args.draw and Path(args.draw).suffix.lower() != ".gif":
        raise UserError(f"--draw {args.draw}: give a file name ending in .gif")
    drawn = []
    for i, (name, frame) in enumerate(frames_to_track()):
        if i == 0:
            video.check_box(init, frame.shape, "--init")
            embedding, config = load_tracker(args.model)
            tracker = SiameseTracker(embedding, config, config["update_rate"],
                                     config["occlusion_threshold"])
            tracker.init(frame, init)
            box, peak, gone = init, None, False
        else:
            box, peak, gone = tracker.update(frame)
        print(json.dumps({"frame": i, "file": name, "box": [round(float(v), 1) for v in box],
                          "score": None if peak is None else round(peak, 4),
                          "hidden": bool(gone)}), flush=True)
        if args.draw:
            drawn += draw_frames([frame], {"siamese": np.asarray(box)[None]}, [gone])
    if args.draw:
        print(f"wrote {save_gif(drawn, args.draw)}", file=sys.stderr)
    raise SystemExit

if args.command == "evaluate":
    _, _, sequences = load_videos(args.dataset, evaluate=True)
    embedding, config = load_tracker(args.model)
    variants = {"siamese": {"update_rate": config["update_rate"],
                            "threshold": config["occlusion_threshold"]}}
    scores, curves, _ = evaluate_all(embedding, config, sequences, None, variants)
    success_plot(curves, scores, Path(args.out) / "success.png",
                 f"{args.model} on {args.dataset}: {len(sequences)} sequences")
    challenge_plot(scores, Path(args.out) / "success_per_challenge.png")
    results.write(args.out, "tracking", args.dataset, scores, time.time() - args.started,
                  vars(args), model=str(args.model))
    print(summary_table(scores, f"evaluate {args.model} on {args.dataset}"))
    raise SystemExit

# %% [markdown]
# ## Train
#
# Fresh pairs every batch (the generator never repeats), Adam with a cosine schedule, and the
# validation loss on a fixed set of pairs from the validation videos.

# %%
if args.steps_per_epoch < 1 or args.lr <= 0 or not 0 <= args.update_rate < 1:
    raise UserError("--steps-per-epoch must be at least 1, --lr positive and --update-rate "
                    "in [0, 1)")
if args.occlusion_threshold not in ("auto", "none"):
    try:
        threshold = float(args.occlusion_threshold)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise UserError(f"--occlusion-threshold {args.occlusion_threshold}: use auto, none, or "
                        "a number (a peak logit, e.g. 0)")
if min(args.train_videos, args.test_videos) < 1 or args.length < 2 or args.image_size < 48:
    raise UserError("--train-videos and --test-videos must be at least 1, --length at least 2 "
                    "and --image-size at least 48")
if args.smoke:
    args.epochs, args.steps_per_epoch, args.batch_size = 1, 3, 8
train, val, test = load_videos(args.dataset)
print(f"data: {len(train)} training / {len(val)} validation / {len(test)} test videos, "
      f"{sum(len(s) for s in test)} test frames; challenges: "
      f"{', '.join(sorted({s.challenge or 'unnamed' for s in test}))}", flush=True)

embedding = build_embedding(args.weights)
siamese = build_siamese(embedding)
total_steps = args.epochs * args.steps_per_epoch
schedule = keras.optimizers.schedules.CosineDecay(
    args.lr / 10, total_steps, alpha=0.05, warmup_target=args.lr,
    warmup_steps=min(50, total_steps // 10))
siamese.compile(optimizer=keras.optimizers.Adam(schedule), loss=balanced_logistic_loss,
                metrics=[peak_accuracy])
plan = callbacks.Plan(["siamese"], args.epochs, args.steps_per_epoch)
history = siamese.fit(
    Pairs(train, args.steps_per_epoch, args.batch_size, args.seed),
    validation_data=Pairs(val, max(2, args.steps_per_epoch // 5), args.batch_size,
                          args.seed + 1, fresh=False),
    epochs=args.epochs, verbose=callbacks.verbose(),
    callbacks=[plan.callback("siamese"), *callbacks.standard(out, "siamese", args)])
correlation = siamese.get_layer("correlation")
config = {"exemplar_size": EXEMPLAR, "search_size": SEARCH, "stride": STRIDE,
          "score_scale": float(correlation.scale.numpy()),
          "score_bias": float(correlation.bias.numpy()), **TRACKER,
          "update_rate": args.update_rate, "weights": args.weights}

# %% [markdown]
# ## The occlusion threshold, from the validation videos

# %%
occlusion_accuracy = None
if args.occlusion_threshold == "auto":
    threshold, occlusion_accuracy = calibrate_threshold(embedding, config, val)
    print(f"occlusion threshold {threshold:.3f} (peak score; validation balanced accuracy "
          f"{occlusion_accuracy if occlusion_accuracy is None else round(occlusion_accuracy, 3)}"
          ")")
elif args.occlusion_threshold == "none":
    threshold = None
config["occlusion_threshold"] = threshold

# %% [markdown]
# ## Evaluate on the test videos
#
# Every tracker starts from the true box of the first frame of every test video (OTB's
# one-pass evaluation) and is never re-initialised.

# %%
metrics, curves, tracked = evaluate_all(embedding, config, test, threshold)
embedding.save(out / "model.keras")
(out / "tracking.json").write_text(json.dumps(config, indent=1) + "\n")

report = {name: metrics[name] for name in metrics}
report["siamese"]["occlusion_threshold"] = threshold
if threshold is not None:  # how well the rule tells hidden frames on the test videos
    hidden = np.concatenate([h[1:] for _, _, h in tracked["siamese"]])
    truly = np.concatenate([~s.visible[1:] for s in test]) if all(
        s.visible is not None for s in test) else None
    if truly is not None and truly.any() and (~truly).any():
        report["siamese"]["hidden_recall"] = float(hidden[truly].mean())
        report["siamese"]["false_hidden_rate"] = float(hidden[~truly].mean())
report["training"] = {"final_loss": float(history.history["loss"][-1]),
                      "val_peak_accuracy": float(history.history["val_peak_accuracy"][-1]),
                      "weights": args.weights, "epochs": args.epochs,
                      "steps": total_steps}
if occlusion_accuracy is not None:
    report["training"]["occlusion_val_balanced_accuracy"] = occlusion_accuracy

success_plot(curves, metrics, out / "success.png",
             f"{len(test)} test videos, {sum(len(s) - 1 for s in test)} frames scored")
challenge_plot({k: v for k, v in metrics.items() if k in ("siamese", "siamese_plain",
                                                          "template_matching", "csrt", "kcf")},
               out / "success_per_challenge.png")
plots.training_curves({"siamese": history.history}, out / "training_curves.png",
                      metrics=("loss", "peak_accuracy"))

# %% [markdown]
# A test video with distractors and a full occlusion: the truth in green, the Siamese tracker
# in red (thin while it declares the target hidden), CSRT in blue, KCF in yellow, template
# matching in magenta (`tracked.gif`, and a few frames here).

# %%
pick = next((k for k, s in enumerate(test) if s.challenge == "full_occlusion"), 0)
sequence = test[pick]
frames = [sequence.frames[i] for i in range(len(sequence))]
shown = draw_frames(frames, {"truth": sequence.boxes, **{
    name: tracked[name][pick][0] for name in ("template_matching", "kcf", "csrt", "siamese")}},
    tracked["siamese"][pick][2])
save_gif(shown, out / "tracked.gif")
fig, axes = plt.subplots(1, 6, figsize=(15, 2.8))
for ax, i in zip(axes, np.linspace(0, len(frames) - 1, 6).astype(int)):
    ax.imshow(shown[i])
    ax.set_title(f"frame {i}" + ("" if sequence.visible is None or sequence.visible[i]
                                 else " (hidden)"), fontsize=9)
    ax.axis("off")
fig.suptitle(f"{sequence.name}: truth green, siamese red, csrt blue, kcf yellow, template "
             "matching magenta")
plots.save(fig, out / "tracked_frames.png")

path = results.write(out, "tracking", args.dataset, report, time.time() - args.started,
                     vars(args))
print(summary_table(report, f"tracking on {args.dataset} ({time.time() - args.started:.0f} s, "
                            f"{time.process_time():.0f} CPU s)"))
print(f"wrote {path}")
