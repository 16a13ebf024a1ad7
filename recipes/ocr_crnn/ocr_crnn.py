# %% [markdown]
# # Reading printed text lines: a CRNN trained with CTC, tested on fonts it never saw
#
# **Description:** read a whole line of printed text (letters, digits, spaces, punctuation)
# from an image, with no character segmentation, using a convolutional recurrent network
# (CRNN) trained with the connectionist temporal classification (CTC) loss. Training lines
# come from an unlimited, seeded stream rendered in 11 font families (regular, bold, italic,
# light, ... weights) under clean to badly degraded conditions; the score is the character
# error rate (CER), word error rate (WER) and exact-line accuracy on lines in two font
# families the model never saw, clean and degraded.
#
# **Concepts:** optical character recognition (OCR) turns images of text into text. Reading
# letter by letter would need each letter cut out first, which breaks on touching, blurred or
# italic letters; a CRNN reads the line like a person scans it, left to right. Its
# convolutional layers turn the line image (fixed height, any width: the aspect ratio is kept)
# into a feature map whose columns each describe a narrow vertical slice of the line; the map
# is read column by column as a sequence by a bidirectional LSTM, which sees the context on
# both sides of each slice; a softmax per column gives the probability of every character,
# plus a "blank" for "no new character here". CTC sums the probability of every way the
# columns can spell the transcription (repeats merged, blanks dropped), so training needs
# only the text of each line, not where each letter is. Decoding takes the best label per
# column (greedy) or keeps the most probable prefixes (beam search). Lines of different
# widths share a batch by padding on the right; the real width of each line goes into the
# model, so that neither the normalisation, the LSTM nor the loss reads the padding.
# Preprocessing: grayscale, fixed height, per-line contrast normalisation; augmentation is
# part of the generator (fonts, sizes, weights, rotation, shear, stretch, blur, noise, JPEG
# artefacts, textured and coloured paper, low contrast). Applications: reading documents,
# forms, receipts, labels, signs and screens.
#
# Run: `make ocr_crnn` or `python -m recipes.ocr_crnn --help`. In a notebook, pass flags
# through `RECIPE_ARGS` in a cell above the setup cell, e.g.
# `os.environ["RECIPE_ARGS"] = "--epochs 30"` (there it replaces the command line; empty or
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
# Read before the heavy imports, so that `--help` answers at once. An epoch is
# `--steps-per-epoch` batches of new lines from the stream (no line is seen twice), so
# `--epochs` and `--steps-per-epoch` both buy more training.

# %%
from common import UserError, cli

SPECS = ("synthetic:textlines (an unlimited stream of rendered lines) | lines:LABELS.tsv "
         "(rows FILE<TAB>TEXT, FILE relative to the TSV's folder)")
parser = cli.parser("ocr_crnn", "Train and score a CRNN + CTC text-line reader (CER, WER).",
                    dataset="synthetic:textlines", epochs=12, batch_size=16, specs=SPECS,
                    train_size=False)
parser.add_argument("--steps-per-epoch", type=int, default=125,
                    help="batches per epoch (synthetic:textlines: each batch is new lines)")
parser.add_argument("--test-lines", type=int, default=400,
                    help="held-out lines per condition (clean, degraded), unseen fonts")
parser.add_argument("--max-chars", type=int, default=32, help="longest synthetic line")
parser.add_argument("--units", type=int, default=128, help="LSTM units per direction")
parser.add_argument("--rnn-layers", type=int, default=1,
                    help="bidirectional LSTM layers (2 reads a little better, costs more)")
parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (Adam, cosine)")
parser.add_argument("--beam-width", type=int, default=10,
                    help="beam search width for the reported metrics (greedy is reported too)")
parser.evaluate.add_argument("--beam-width", type=int, default=10,
                             help="beam search width (0: greedy decoding)")
parser.predict.add_argument("--beam-width", type=int, default=0,
                            help="beam search width (0: greedy decoding, the fastest)")
parser.predict.add_argument("--batch-size", type=int, default=64, help="lines per batch")
args = cli.parse_args(parser)

# %%
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from keras import ops
from PIL import Image

from common import callbacks, data, plots, results, saving, synthetic

out = Path(args.out)
HEIGHT = 32  # every line is scaled to this height, its width following the aspect ratio
STRIDE = 4  # columns of the image per step of the sequence the LSTM reads
MAX_WIDTH = 1600  # the widest line (at HEIGHT) the model takes: 400 reading steps

# %% [markdown]
# ## The data
#
# `synthetic:textlines` (default) renders each line on the fly from its own seed: English
# words (with capitals, quotes, brackets and punctuation as in running text), numbers (dates,
# times, prices, phone numbers) and random strings, 1 to `--max-chars` characters, in a random
# font file of the training families, with random size, colours, paper texture and damage.
# Two families, Caladea (a serif) and Lato (a sans), are never used for training: the
# held-out test lines are rendered in them, in two conditions:
#
# - **clean**: text 22-34 px high, dark on light paper, slight blur and rotation;
# - **degraded**: text 13-18 px high, low contrast, coloured textured paper, noise, blur,
#   rotation and shear, JPEG quality 25-60.
#
# They are written to `OUT/heldout/{clean,degraded}/` as PNG files with a `labels.tsv`, so
# that `evaluate`, other OCR engines (`bench/bench_ocr.py`) and you can read the very same
# lines. `lines:LABELS.tsv` trains on your own labelled lines instead (80 % train, 10 %
# validation, 10 % test, split by `--seed`).

# %%
CHARSET = synthetic.TEXTLINE_CHARSET
CHAR_IDS = {c: i + 1 for i, c in enumerate(CHARSET)}  # 0 is the CTC blank


def to_height(image):
    """Grayscale uint8 (HEIGHT, width) of a line image of any size and channels."""
    gray = data.conform(image[None], channels=1)[0, ..., 0]
    if gray.shape[0] != HEIGHT:
        width = max(1, round(gray.shape[1] * HEIGHT / gray.shape[0]))
        # Pillow's bilinear filter widens with the scale when shrinking: antialiased
        gray = np.asarray(Image.fromarray(gray).resize((width, HEIGHT),
                                                       Image.Resampling.BILINEAR))
    return gray


def encode(text, where):
    """Character ids of `text`; characters the model cannot write are refused by name."""
    unknown = sorted({c for c in text if c not in CHAR_IDS})
    if unknown:
        raise UserError(f"{where}: the text {text!r} has characters outside the model's "
                        f"charset: {''.join(unknown)!r} ({', '.join(map(repr, unknown))}); the "
                        f"model reads {CHARSET!r}: fix the label or drop the line")
    return [CHAR_IDS[c] for c in text]


def check_readable(width, text, where):
    """A line the model can read: at most MAX_WIDTH wide and wide enough for its text (CTC
    needs a step per character plus one between each repeated pair)."""
    if width > MAX_WIDTH:
        raise UserError(f"{where} is {width} px wide at {HEIGHT} px high, longer than the "
                        f"{MAX_WIDTH} px this model reads: split it into shorter lines")
    if text is not None:
        needed = len(text) + sum(a == b for a, b in zip(text, text[1:]))
        if -(-width // STRIDE) < needed:
            raise UserError(f"{where}: {len(text)} characters in a line {width} px wide at "
                            f"{HEIGHT} px high ({-(-width // STRIDE)} reading steps, {needed} "
                            "needed): the image is too narrow for its text; check the label")


def batch_lines(lines):
    """Pad grayscale lines (HEIGHT, w) on the right to one width (a multiple of STRIDE)."""
    widths = np.array([line.shape[1] for line in lines], np.int32)
    most = int(-(-widths.max() // STRIDE) * STRIDE)
    images = np.zeros((len(lines), HEIGHT, most, 1), np.float32)
    for i, line in enumerate(lines):
        images[i, :, : line.shape[1], 0] = line
    return images, widths


def training_stream(seed, fonts):
    """Endless (image, width, label ids) of the synthetic stream `seed`, read by 2 threads
    (each takes every other line: the order, and so the run, stays deterministic)."""
    def lines(start):
        for image, text in synthetic.textline_stream(seed, fonts, "train", args.max_chars,
                                                     start=int(start), step=2):
            line = to_height(image)
            if line.shape[1] <= MAX_WIDTH:
                yield line[..., None], line.shape[1], encode(text, "synthetic line")

    signature = (tf.TensorSpec((HEIGHT, None, 1), tf.uint8), tf.TensorSpec((), tf.int32),
                 tf.TensorSpec((None,), tf.int32))
    return tf.data.Dataset.range(2).interleave(
        lambda start: tf.data.Dataset.from_generator(lines, args=(start,),
                                                     output_signature=signature),
        cycle_length=2, num_parallel_calls=2, deterministic=True)


def listed_lines(images, texts, where):
    """(image, width, label ids) of given lines, checked: the training data of lines:TSV."""
    lines = [to_height(image) for image in images]
    labels = [encode(text, name) for text, name in zip(texts, where)]
    for line, text, name in zip(lines, texts, where):
        check_readable(line.shape[1], text, name)
    signature = (tf.TensorSpec((HEIGHT, None, 1), tf.uint8), tf.TensorSpec((), tf.int32),
                 tf.TensorSpec((None,), tf.int32))
    return tf.data.Dataset.from_generator(
        lambda: ((line[..., None], line.shape[1], label) for line, label in zip(lines, labels)),
        output_signature=signature)


def batches(lines, batch_size):
    """Batches of lines of similar width (less padding to compute), as the model's inputs."""
    boundaries = [96, 144, 192, 256, 320, 416, 544, 768]
    def width_of(image, width, label):
        return width

    def as_inputs(image, width, label):
        return {"image": tf.cast(image, tf.float32), "width": width, "label": label}

    return lines.bucket_by_sequence_length(
        width_of, boundaries, [batch_size] * (len(boundaries) + 1),
        padding_values=(tf.constant(0, tf.uint8), 0, 0)).map(as_inputs).prefetch(2)


# %% [markdown]
# ## The model
#
# Four 3x3 convolutions (16, 32, 64, 96 filters, batch norm, ReLU) with max pooling: 2x2
# twice, then 2x1 twice, so the height shrinks from 32 to 2 while the width shrinks only 4
# times: one feature column per 4 image columns (about 2.7 per character). The 2 x 96
# features of each column become one step of a sequence read by a bidirectional LSTM
# (`--rnn-layers`, default 1); a dense layer gives, per step, the logits of the 77 characters
# and the blank. The network is kept small on purpose: on a 2-core CPU a training step of 16
# lines costs about half a CPU second, split roughly evenly between the convolutions and the
# LSTM (rendering the lines adds about 0.1 s). Twice the filters and a second LSTM layer
# cost about twice as much per step, and in a fixed time budget fewer steps read worse.
#
# The width of each line rides along as a second input: `LineNormalization` scales each line
# to zero mean and unit variance over its own columns and zeroes the padding, `MaskColumns`
# keeps the padding at zero after each convolution, and `ReadingSteps` turns the width into
# the LSTM's mask (ceil(width / 4) steps): a line reads the same alone or padded in a batch.
# Training wraps the reader in a model that also takes the labels and adds the CTC loss
# (`keras.ops.ctc_loss`); the saved model is the reader alone: image + width in, logits out.

# %%
@keras.saving.register_keras_serializable(package="ocr_crnn")
class LineNormalization(keras.layers.Layer):
    """Each line to zero mean and unit variance over its real columns; padding becomes 0."""

    def call(self, inputs):
        image, width = inputs
        columns = ops.arange(ops.shape(image)[2])
        valid = ops.cast(columns[None, :] < ops.cast(width, "int32")[:, None], image.dtype)
        valid = valid[:, None, :, None]
        count = ops.sum(valid, axis=(1, 2, 3), keepdims=True) * ops.cast(
            ops.shape(image)[1], image.dtype)
        mean = ops.sum(image * valid, axis=(1, 2, 3), keepdims=True) / count
        variance = ops.sum(ops.square((image - mean) * valid), axis=(1, 2, 3),
                           keepdims=True) / count
        # + 16 (4 grey levels): an empty line stays flat instead of becoming amplified noise
        return (image - mean) / ops.sqrt(variance + 16.0) * valid


@keras.saving.register_keras_serializable(package="ocr_crnn")
class MaskColumns(keras.layers.Layer):
    """Zeroes the feature columns past the line's end (ceil(width / stride) columns hold the
    line): batch norm and ReLU turn zero padding into non-zero values, which the next 3x3
    convolution would otherwise read into the line's last columns."""

    def __init__(self, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def call(self, inputs):
        features, width = inputs
        kept = (ops.cast(width, "int32") + self.stride - 1) // self.stride
        columns = ops.arange(ops.shape(features)[2])
        return features * ops.cast(columns[None, :] < kept[:, None],
                                   features.dtype)[:, None, :, None]

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package="ocr_crnn")
class ReadingSteps(keras.layers.Layer):
    """The mask of the steps that hold the line: ceil(width / stride) of them."""

    def __init__(self, stride=STRIDE, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def call(self, inputs):
        sequence, width = inputs
        steps = (ops.cast(width, "int32") + self.stride - 1) // self.stride
        return ops.arange(ops.shape(sequence)[1])[None, :] < steps[:, None]

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package="ocr_crnn")
class CTCLoss(keras.layers.Layer):
    """Adds the mean CTC loss of a batch (labels padded with 0, the blank) to the model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True  # the logits pass through with their mask

    def call(self, inputs):
        labels, logits, width = inputs
        label_length = ops.sum(ops.cast(labels > 0, "int32"), axis=1)
        steps = (ops.cast(width, "int32") + STRIDE - 1) // STRIDE
        self.add_loss(ops.mean(ops.ctc_loss(labels, logits, label_length, steps,
                                            mask_index=0)))
        return logits


def build_reader(num_classes, units, rnn_layers=1):
    image = keras.Input((HEIGHT, None, 1), name="image")
    width = keras.Input((), dtype="int32", name="width")
    x = LineNormalization(name="normalise")([image, width])
    stride = 1  # image columns per feature column
    for i, (filters, pool) in enumerate([(16, (2, 2)), (32, (2, 2)), (64, (2, 1)),
                                         (96, (2, 1))]):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = MaskColumns(stride, name=f"mask{i}")([x, width])
        if pool:
            x = keras.layers.MaxPooling2D(pool, name=f"pool{i}")(x)
            stride *= pool[1]
    x = keras.layers.Permute((2, 1, 3), name="columns")(x)  # (batch, steps, 2, 96)
    x = keras.layers.Reshape((-1, 2 * 96), name="sequence")(x)
    x = keras.layers.Dense(units, activation="relu", name="project")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    mask = ReadingSteps(name="steps")([x, width])
    for i in range(rnn_layers):
        x = keras.layers.Bidirectional(keras.layers.LSTM(units, return_sequences=True),
                                       name=f"bilstm{i}")(x, mask=mask)
    logits = keras.layers.Dense(num_classes + 1, name="logits")(x)  # + the blank
    return keras.Model({"image": image, "width": width}, logits, name="crnn")


def build_trainer(reader):
    image = keras.Input((HEIGHT, None, 1), name="image")
    width = keras.Input((), dtype="int32", name="width")
    label = keras.Input((None,), dtype="int32", name="label")
    logits = reader({"image": image, "width": width})
    return keras.Model({"image": image, "width": width, "label": label},
                       CTCLoss(name="ctc")([label, logits, width]), name="crnn_ctc")


# %% [markdown]
# ## Read and score
#
# `read` scales lines to 32 px high, batches them by width (sorted, so a batch holds lines of
# similar width), runs the reader and decodes with `keras.ops.ctc_decode`: greedy (the best
# label per step, repeats merged, blanks dropped) or beam search over the `beam_width` most
# probable prefixes. `score` gives the character error rate (edit distance / reference
# characters), the word error rate (the same over words) and the share of lines read exactly;
# `confusions` counts which reference characters became which (substitutions, and
# deletions/insertions against "" ) on the edit path.

# %%
def decode(logits, widths, beam_width):
    steps = np.minimum((widths + STRIDE - 1) // STRIDE, logits.shape[1]).astype(np.int32)
    strategy = "beam_search" if beam_width > 0 else "greedy"
    kwargs = {"beam_width": beam_width, "top_paths": 1} if beam_width > 0 else {}
    found, _ = ops.ctc_decode(logits, steps, strategy=strategy, mask_index=0, **kwargs)
    return ["".join(CHARSET[i - 1] for i in row if i > 0)
            for row in np.asarray(found[0])]


READING_FUNCTIONS = {}


def reading_function(reader):
    """The reader as one traced function for every batch shape (no retracing per width)."""
    if id(reader) not in READING_FUNCTIONS:
        READING_FUNCTIONS[id(reader)] = tf.function(
            lambda image, width: reader({"image": image, "width": width}, training=False),
            input_signature=[tf.TensorSpec((None, HEIGHT, None, 1), tf.float32),
                             tf.TensorSpec((None,), tf.int32)])
    return READING_FUNCTIONS[id(reader)]


def read(reader, lines, beam_widths=(0,), batch_size=64):
    """Texts read from grayscale HEIGHT-high lines, one list per beam width (0: greedy)."""
    run = reading_function(reader)
    order = np.argsort([line.shape[1] for line in lines], kind="stable")
    texts = {b: [""] * len(lines) for b in beam_widths}
    for start in range(0, len(lines), batch_size):
        chosen = order[start: start + batch_size]
        images, widths = batch_lines([lines[i] for i in chosen])
        logits = run(tf.constant(images), tf.constant(widths)).numpy()
        for b in beam_widths:
            for i, text in zip(chosen, decode(logits, widths, b)):
                texts[b][i] = text
    return texts


def edit_path(ref, hyp):
    """Levenshtein alignment of two sequences: [(ref item or "", hyp item or "")], where
    equal pairs are matches and the others the edits."""
    rows, cols = len(ref) + 1, len(hyp) + 1
    cost = np.zeros((rows, cols), np.int32)
    cost[:, 0], cost[0, :] = np.arange(rows), np.arange(cols)
    for i in range(1, rows):
        for j in range(1, cols):
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1,
                             cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    path, i, j = [], rows - 1, cols - 1
    while i or j:
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            path.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            path.append((ref[i - 1], ""))
            i -= 1
        else:
            path.append(("", hyp[j - 1]))
            j -= 1
    return path[::-1]


def edits(ref, hyp):
    return sum(a != b for a, b in edit_path(ref, hyp))


def score(refs, hyps):
    chars = sum(edits(r, h) for r, h in zip(refs, hyps))
    words = sum(edits(r.split(), h.split()) for r, h in zip(refs, hyps))
    return {"cer": chars / max(1, sum(len(r) for r in refs)),
            "wer": words / max(1, sum(len(r.split()) for r in refs)),
            "line_accuracy": float(np.mean([r == h for r, h in zip(refs, hyps)])),
            "lines": len(refs)}


def confusions(refs, hyps, top=15):
    """The most frequent character errors: [{"true", "read", "count"}], "" = nothing."""
    counts = {}
    for ref, hyp in zip(refs, hyps):
        for pair in edit_path(ref, hyp):
            if pair[0] != pair[1]:
                counts[pair] = counts.get(pair, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"true": a, "read": b, "count": n} for (a, b), n in ranked]


def confusion_table(rows):
    shown = lambda c: repr(c) if c else "(nothing)"  # noqa: E731
    lines = ["true -> read        count"]
    lines += [f"{shown(r['true']):>9} -> {shown(r['read']):<9} {r['count']:>5}" for r in rows]
    return "\n".join(lines)


# %% [markdown]
# ## `predict` and `evaluate` on a saved model
#
# `predict --model OUT/model.keras FILE...` prints `PATH<TAB>TEXT` for each image of one
# text line (any size, RGB or grayscale), in batches. `evaluate --dataset lines:LABELS.tsv`
# reads every line of the labels file and writes `metrics.cer`, `metrics.wer` and
# `metrics.line_accuracy` (plus the most-confused characters) to `OUT/results.json`.

# %%
def load_reader(path):
    model = saving.load_model(path)
    inputs = model.input if isinstance(model.input, dict) else {}
    if set(inputs) != {"image", "width"}:
        raise UserError(f"{path} is not a line reader saved by this recipe (inputs "
                        f"{model.input}): pass OUT/model.keras of an ocr_crnn run")
    if model.output_shape[-1] != len(CHARSET) + 1:
        raise UserError(f"{path} writes {model.output_shape[-1] - 1} characters, this recipe "
                        f"{len(CHARSET)}: it was trained with another charset")
    return model


def load_lines(spec):
    """Grayscale HEIGHT-high lines, texts and file names of a lines:LABELS.tsv spec."""
    if not spec.startswith("lines:"):
        raise UserError(f"--dataset {spec}: evaluate reads lines:LABELS.tsv (rows "
                        "FILE<TAB>TEXT); the synthetic test lines are written as such files to "
                        "OUT/heldout/ by training")
    lines = data.load(spec, image_size=HEIGHT)
    images = [image[:, :width] for image, width in zip(lines.images, lines.widths)]
    for image, text, name in zip(images, lines.texts, lines.files):
        encode(text, name)
        check_readable(image.shape[1], text, name)
    return images, lines.texts, lines.files


if args.command == "predict":
    if args.beam_width < 0 or args.batch_size < 1:
        raise UserError("--beam-width must be 0 or more and --batch-size at least 1")
    reader = load_reader(args.model)
    for start in range(0, len(args.files), 256):  # 256 files in memory at a time
        paths = args.files[start: start + 256]
        lines = []
        for path in paths:
            image = data.read_image(path)
            if min(image.shape[:2]) < 2:
                raise UserError(f"{path} is {image.shape[1]}x{image.shape[0]} pixels: too "
                                "small to hold a line of text")
            lines.append(to_height(image))
            check_readable(lines[-1].shape[1], None, path)
        texts = read(reader, lines, (args.beam_width,), args.batch_size)[args.beam_width]
        for path, text in zip(paths, texts):
            print(f"{path}\t{text}")
    raise SystemExit

if args.command == "evaluate":
    if args.beam_width < 0:
        raise UserError("--beam-width must be 0 (greedy) or more")
    reader = load_reader(args.model)
    lines, texts, files = load_lines(args.dataset)
    started = time.time()
    found = read(reader, lines, (args.beam_width,), args.batch_size)[args.beam_width]
    scores = score(texts, found)
    scores["lines_per_second"] = len(lines) / (time.time() - started)  # decoding included
    table = confusions(texts, found)
    results.write(args.out, "ocr_crnn", args.dataset, scores, time.time() - args.started,
                  vars(args), model=str(args.model), confused_characters=table)
    (Path(args.out) / "predictions.tsv").write_text("".join(
        f"{f}\t{t}\t{r}\n" for f, t, r in zip(files, texts, found)))
    print(results.summary(scores, f"evaluate {args.model} on {args.dataset}"))
    print(confusion_table(table))
    raise SystemExit

# %% [markdown]
# ## Train
#
# Adam with a short warm-up (150 steps) to a high peak rate (`--lr`, 3e-3) and a cosine
# decay, gradients clipped (CTC gradients can spike on hard lines early on). A CTC model
# first learns to emit only blanks (the loss plateau at a CER of 1.0) and leaves that phase
# only when alignments start to form; the high rate gets it out within the first few hundred
# steps (the README shows the validation CER per epoch). After each epoch the validation lines (training fonts, mixed
# conditions, never trained on) are read greedily for a validation CER; the plan prints the
# time per epoch and what is left.

# %%
for flag in ("steps_per_epoch", "test_lines", "max_chars", "units", "rnn_layers"):
    if getattr(args, flag) < 1:
        raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
if args.lr <= 0 or args.beam_width < 0:
    raise UserError("--lr must be positive and --beam-width 0 (greedy only) or more")
if args.smoke:
    args.epochs, args.steps_per_epoch, args.batch_size, args.test_lines = 2, 3, 8, 12
synthetic_data = args.dataset == "synthetic:textlines"
if synthetic_data:
    train_fonts, unseen_fonts = synthetic.textline_font_split()
    val_images, val_texts = synthetic.make_textline_set(
        24 if args.smoke else 200, args.seed + 3_000_003, train_fonts, "train", args.max_chars)
    val_names = [f"validation line {i}" for i in range(len(val_texts))]
    train_lines = training_stream(args.seed, train_fonts)
    tests = {}
    for offset, condition in ((1_000_003, "clean"), (2_000_003, "degraded")):
        images, texts = synthetic.make_textline_set(args.test_lines, args.seed + offset,
                                                    unseen_fonts, condition, args.max_chars)
        folder = out / "heldout" / condition
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            keras.utils.save_img(folder / f"{i:05d}.png", image, scale=False)
        (folder / "labels.tsv").write_text("".join(f"{i:05d}.png\t{t}\n"
                                                   for i, t in enumerate(texts)))
        tests[condition] = ([to_height(i) for i in images], texts)
    print(f"data: training stream of {len(train_fonts)} font files "
          f"({len(synthetic.textline_fonts()) - len(synthetic.UNSEEN_FONT_FAMILIES)} families); "
          f"{len(val_texts)} validation lines; {args.test_lines} clean + {args.test_lines} "
          f"degraded test lines in the unseen families {', '.join(synthetic.UNSEEN_FONT_FAMILIES)}"
          f" (written to {out / 'heldout'})")
else:
    kind = args.dataset.partition(":")[0]
    if kind != "lines":
        raise UserError(f"--dataset {args.dataset}: this recipe reads {SPECS}")
    lines, texts, files = load_lines(args.dataset)
    if len(lines) < 10:
        raise UserError(f"{args.dataset} has {len(lines)} lines: use at least 10 (80 % train, "
                        "10 % validation, 10 % test)")
    order = np.random.default_rng(args.seed).permutation(len(lines))
    n_test = n_val = max(1, len(lines) // 10)
    parts = {"test": order[:n_test], "val": order[n_test: n_test + n_val],
             "train": order[n_test + n_val:]}
    pick = lambda part, items: [items[i] for i in parts[part]]  # noqa: E731
    tests = {"test": (pick("test", lines), pick("test", texts))}
    val_images, val_texts, val_names = pick("val", lines), pick("val", texts), pick("val", files)
    train_lines = listed_lines(pick("train", lines), pick("train", texts),
                               pick("train", files)).shuffle(len(parts["train"]),
                                                             seed=args.seed).repeat()
    print(f"data: {len(parts['train'])} train / {n_val} validation / {n_test} test lines "
          f"from {args.dataset}")

val_lines = [to_height(image) for image in val_images]
val_data = batches(listed_lines(val_lines, val_texts, val_names), args.batch_size)
val_steps = sum(1 for _ in val_data)  # batches of similar width: counted, then repeated
val_data = val_data.repeat()


class ValidationCER(keras.callbacks.Callback):
    """val_cer in the logs (and so in the CSV log and the curves): greedy reading."""

    def on_epoch_end(self, epoch, logs=None):
        found = read(reader, val_lines)[0]
        logs["val_cer"] = score(val_texts, found)["cer"]


keras.utils.set_random_seed(args.seed)
reader = build_reader(len(CHARSET), args.units, args.rnn_layers)
trainer = build_trainer(reader)
total_steps = args.epochs * args.steps_per_epoch
schedule = keras.optimizers.schedules.CosineDecay(
    args.lr / 10, total_steps, alpha=0.02, warmup_target=args.lr,
    warmup_steps=min(150, total_steps // 10))
trainer.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0))
print(f"model: {reader.count_params():,} parameters; {total_steps:,} steps of "
      f"{args.batch_size} lines = {total_steps * args.batch_size:,} training lines")
plan = callbacks.Plan(["crnn"], args.epochs, args.steps_per_epoch, what="models")
history = trainer.fit(batches(train_lines, args.batch_size), epochs=args.epochs,
                      steps_per_epoch=args.steps_per_epoch, validation_data=val_data,
                      validation_steps=val_steps,
                      verbose=callbacks.verbose(),
                      callbacks=[ValidationCER(), plan.callback("crnn"),
                                 *callbacks.standard(out, "crnn", args)])
reader.save(out / "model.keras")

# %% [markdown]
# ## Evaluate on lines in unseen fonts
#
# Each held-out condition is read greedily and with beam search (`--beam-width`); the
# beam-search scores are the headline ones (`metrics.clean.cer`, ...), the greedy ones are
# under `greedy_clean`, `greedy_degraded`. Reading speed is measured on the clean lines.

# %%
metrics, found, confused = {}, {}, {}
beams = (0, args.beam_width) if args.beam_width else (0,)
for condition, (lines, texts) in tests.items():
    started = time.time()
    texts_read = read(reader, lines, beams)
    if condition in ("clean", "test"):
        seconds = time.time() - started
        metrics["lines_per_second"] = len(lines) / seconds  # greedy + beam, one core or two
    found[condition] = texts_read[beams[-1]]
    metrics[condition] = score(texts, found[condition])
    if args.beam_width:
        metrics[f"greedy_{condition}"] = score(texts, texts_read[0])
    confused[condition] = confusions(texts, found[condition])
metrics.update(params=int(reader.count_params()), beam_width=args.beam_width,
               training_lines=total_steps * args.batch_size,
               final_val_cer=float(history.history["val_cer"][-1]))
for condition, table in confused.items():
    print(f"most confused characters, {condition} lines:\n{confusion_table(table)}")

fig, axes = plt.subplots(12, 1, figsize=(9, 12))
shown = [(c, i) for c in tests for i in range(6)][:12]
for ax, (condition, i) in zip(axes, shown):
    ax.axis("off")
    lines, texts = tests[condition]
    if i >= len(lines):
        continue
    ax.imshow(lines[i], cmap="gray", aspect="equal")
    right = found[condition][i] == texts[i]
    ax.set_title(f"{condition}: read {found[condition][i]!r}" + ("" if right else
                 f"  (true {texts[i]!r})"), fontsize=8, loc="left",
                 color="black" if right else "crimson")
fig.suptitle("held-out lines in unseen fonts (red: misread)")
plots.save(fig, out / "samples.png")
plots.training_curves({"crnn": history.history}, out / "training_curves.png",
                      metrics=("loss", "cer"))
path = results.write(out, "ocr_crnn", args.dataset, metrics, time.time() - args.started,
                     vars(args), confused_characters=confused)
print(results.summary(metrics, f"ocr_crnn on {args.dataset} ({time.time() - args.started:.0f} s)"))
print(f"wrote {path}")
