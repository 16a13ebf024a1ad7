# %% [markdown]
# # Data augmentation: which transformation buys which robustness
#
# **Description:** augmentation as Keras preprocessing layers inside the `tf.data` pipeline
# (flips, rotation, crop-and-resize, translation, brightness/contrast/gamma, random erasing,
# MixUp, CutMix, RandAugment), a grid of samples for each technique, and a controlled
# comparison: the same model, data and training budget under each augmentation policy, scored
# on the clean test set and on test sets corrupted by occlusion, illumination changes,
# rotation and translation at three severities each.
#
# **Concepts:** augmentation multiplies a small training set by label-preserving
# transformations, so the network learns that the class does not depend on orientation,
# position, scale or lighting. Occlusion (part of the object hidden) is a failure mode that
# training-time erasing and patch mixing address directly. Pooling gives a network a little
# tolerance to shifts; augmentation gives much more. And augmenting the images you have is one
# of the standard answers when data is scarce (the `imbalance` recipe applies it to the rare
# classes only).
#
# Run: `make augmentation` or `python -m recipes.augmentation --help`. In a notebook, pass
# flags in a cell above the setup cell:
# `import os; os.environ["RECIPE_ARGS"] = "--epochs 5 --dataset npz:/content/my.npz"`
# (RECIPE_ARGS replaces the command line; unset or empty = the defaults).

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

# %%
# The flags come first, before TensorFlow is imported, so that `--help` answers at once.
from common import UserError, cli

POLICIES = ("none", "geometric", "photometric", "occlusion", "mixing", "randaugment", "combined")
# One grid of samples per technique; the policies below combine them.
TECHNIQUES = ("flip", "rotation", "zoom", "translation", "brightness", "contrast", "gamma",
              "random_erasing", "mixup", "cutmix", "randaugment")
# Corrupted test sets: name -> severities (the number in the metric name, e.g. occlusion_25).
CORRUPTIONS = {
    "occlusion": (10, 25, 40),  # % of the image hidden under one square patch of random colour
    "darker": (30, 50, 70),  # % of brightness removed (pixel values scaled down)
    "brighter": (20, 35, 50),  # % of full scale added to every pixel (clipped at white)
    "low_contrast": (50, 70, 85),  # % of contrast removed (pixels pulled towards their mean)
    "rotation": (15, 30, 45),  # degrees, random sign
    "translation": (10, 20, 30),  # % of the image side, random direction
}
FLIPS = ("auto", "none", "horizontal", "vertical", "horizontal_and_vertical")
# synthetic:shapes is generated at the size asked for: --train-size training images, 1,000 when
# not given (a small training set leaves augmentation something to fix), and 600 test images.
SYNTHETIC_TRAIN_SIZE, SYNTHETIC_TEST_SIZE = 1000, 600

parser = cli.parser(
    "augmentation", dataset="synthetic:shapes", epochs=60, batch_size=64, budget_steps=960,
    time_budget="per policy (each policy gets the same SECONDS)",
    description="Augmentation policies compared on clean and corrupted test sets. "
                f"synthetic:shapes is generated with --train-size training images "
                f"({SYNTHETIC_TRAIN_SIZE:,} when not given) and {SYNTHETIC_TEST_SIZE} test "
                "images; other datasets use all their training images unless --train-size is "
                "given. The default budget, about 960 optimisation steps per policy, is 60 "
                "epochs on 1,000 images at batch 64 and 2 epochs on 60,000.")
parser.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated policies to train and compare")
parser.add_argument("--flips", default="auto", choices=FLIPS,
                    help="flips used by the geometric policies; auto: both flips for "
                         "synthetic:shapes (flip-invariant classes), none otherwise (a flipped "
                         "digit or letter can change class)")
parser.add_argument("--image-size", type=int, default=None,
                    help="resize images to N x N; None keeps the dataset's own size")
parser.add_argument("--learning-rate", type=float, default=2e-3,
                    help="peak learning rate of AdamW (10%% linear warm-up, then cosine decay)")
parser.add_argument("--widths", default="16,32,64",
                    help="filters of the classifier's three stages; 8,16,32 trains about twice "
                         "as many images per CPU second (better on short --time-budget runs "
                         "of large datasets)")
args = cli.parse_args(parser)
cli.classifier_commands(args)  # `predict` / `evaluate`: runs the saved model and stops here

# Check every flag before anything is trained or written.
policies = list(dict.fromkeys(p.strip() for p in args.policies.split(",") if p.strip()))
unknown = [p for p in policies if p not in POLICIES]
if unknown or not policies:
    raise UserError(f"unknown policy {', '.join(unknown) or repr(args.policies)}; valid "
                    f"policies: {', '.join(POLICIES)} (comma-separated, e.g. none,combined)")
if not args.learning_rate > 0:
    raise UserError(f"--learning-rate must be positive, got {args.learning_rate}")
try:
    widths = tuple(int(w) for w in args.widths.split(","))
except ValueError:
    widths = ()
if len(widths) != 3 or min(widths) < 1:
    raise UserError(f"--widths takes three positive integers, e.g. 16,32,64; got {args.widths!r}")
if args.image_size is not None and args.image_size < 8:
    raise UserError(f"--image-size must be at least 8 pixels, got {args.image_size}")
epochs_given = args.epochs is not None  # with --time-budget, --epochs is only a cap
if args.smoke:  # every code path, a few steps each
    args.epochs, args.batch_size = 4, 32
    args.train_size = min(args.train_size or 240, 240)

# %%
import math
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from keras import layers

from common import callbacks, data, metrics, pipeline, plots, saving

out = Path(args.out)

# %% [markdown]
# ## Prepare the data
#
# The offline default is `synthetic:shapes` (ten shape classes with random colours, textures,
# backgrounds, sizes and positions). Any classification spec works, in grayscale or RGB and at
# any size, e.g. real digits with `--dataset npz:../shared/data/mnist10k.npz`. Augmentation
# matters most when training images are few: with thousands of images per class a network
# learns most invariances from the data itself, and augmentation has less to fix. So the
# synthetic default is small (1,000 training images), and `--train-size N` keeps a
# class-balanced subset of N training images of any dataset (e.g. `--train-size 1000` on
# mnist10k, as in the README); without it, npz and folder datasets are used whole.
#
# The training budget follows the data: by default about 960 optimisation steps per policy,
# which is 60 epochs on 1,000 images at batch 64 and the 2-epoch minimum on 60,000 images, so
# that a large dataset takes minutes per policy, not hours (`--epochs` fixes it).

# %%
synthetic = {}
if args.dataset.startswith("synthetic:"):  # generated at the size asked for
    n = args.train_size or SYNTHETIC_TRAIN_SIZE
    synthetic = {"num_examples": n, "test_fraction": SYNTHETIC_TEST_SIZE / n}
ds = data.require(data.load(args.dataset, seed=args.seed, image_size=args.image_size,
                            **synthetic), data.Classification, args.dataset)
x_train, y_train = cli.train_subset(args, ds.x_train, ds.y_train)
x_test, y_test = ds.x_test, ds.y_test
if args.smoke:
    x_test, y_test = x_test[:200], y_test[:200]
steps_per_epoch = cli.training_budget(args, len(x_train))  # sets args.epochs when auto
num_classes, input_shape = ds.num_classes, x_train.shape[1:]
flips = args.flips
if flips == "auto":
    flips = "horizontal_and_vertical" if args.dataset == "synthetic:shapes" else "none"
length = (f"{args.time_budget:g} s of training" + (f" (at most {args.epochs} epochs)" if
                                                     epochs_given or args.smoke else "")
          if args.time_budget else f"{args.epochs} epochs") + f" of {steps_per_epoch} steps"
print(f"{len(x_train)} train / {len(x_test)} test images of shape {input_shape}, {num_classes} "
      f"classes; {length} per policy; flips in the geometric policies: {flips}")

# %% [markdown]
# ## The augmentation techniques
#
# Each technique is a Keras preprocessing layer applied to a whole batch of raw [0, 255]
# images inside the `tf.data` pipeline (`pipeline.for_training` maps it with
# `num_parallel_calls=AUTOTUNE` and prefetches), so augmentation runs on the CPU in parallel
# with the training step. Random crop-and-resize is `RandomZoom` (zooming in crops, zooming
# out shrinks); random erasing is Cutout with a random position, size and noise fill. Gamma
# has no built-in layer: a short function is enough. MixUp and CutMix change the labels too
# (one-hot labels become soft mixtures), so the pipeline hands them `(images, labels)`.
# Every random draw goes through a Keras `SeedGenerator` (the layers have their own, gamma and
# the policies below get one): the pipeline then derives each batch's draws from a seed of its
# own, so the parallel map gives bit-identical batches on a rerun with the same `--seed`.

# %%
def random_gamma(images, seed):
    """Gamma correction with gamma log-uniform in [1/2, 2] per image: shadows and highlights."""
    log_gamma = keras.random.uniform([tf.shape(images)[0], 1, 1, 1], -math.log(2), math.log(2),
                                     seed=seed)
    return 255.0 * tf.pow(images / 255.0, tf.exp(log_gamma))


def rand_augment(seed, num_ops=2):
    """Keras' RandAugment (its eleven operations and magnitudes), computing only the ones drawn.

    `layers.RandAugment` draws `num_ops` operations per batch, but computes all eleven on the
    whole batch for each draw and keeps the drawn one: 22 operations' work for 2. Here
    `tf.switch_case` runs only the drawn operation.
    """
    keras_layer = layers.RandAugment(value_range=(0, 255), num_ops=num_ops, factor=0.5, seed=seed)
    operations = [getattr(keras_layer, name) for name in keras_layer._AUGMENT_LAYERS]
    generator = keras.random.SeedGenerator(seed)

    def augment(images):
        for _ in range(num_ops):
            drawn = keras.random.randint([], 0, len(operations), seed=generator)
            images = tf.switch_case(drawn, [lambda op=op, x=images: op(x, training=True)
                                            for op in operations])
        return images
    return augment


def technique(name, seed):
    """One augmentation, as a function of a batch of images (or of images and labels)."""
    if name == "flip":
        return layers.RandomFlip(flips if flips != "none" else "horizontal", seed=seed)
    if name == "rotation":
        return layers.RandomRotation(20 / 360, fill_mode="reflect", seed=seed)  # +-20 degrees
    if name == "zoom":
        return layers.RandomZoom((-0.15, 0.15), seed=seed)  # crop up to 15%, or shrink, and resize
    if name == "translation":
        return layers.RandomTranslation(0.15, 0.15, seed=seed)  # up to 15% of the side
    if name == "brightness":
        return layers.RandomBrightness(0.3, value_range=(0, 255), seed=seed)
    if name == "contrast":
        return layers.RandomContrast(0.6, value_range=(0, 255), seed=seed)
    if name == "gamma":
        generator = keras.random.SeedGenerator(seed)
        return lambda images: random_gamma(images, generator)
    if name in ("random_erasing", "light_erasing"):  # 2-40% of the area, noise-filled
        probability = 0.5 if name == "random_erasing" else 0.25  # per image
        return layers.RandomErasing(factor=(probability, probability), scale=(0.02, 0.4),
                                    seed=seed)
    if name == "randaugment":
        return rand_augment(seed)
    if name in ("mixup", "cutmix"):
        layer = layers.MixUp(alpha=0.4, seed=seed) if name == "mixup" else layers.CutMix(seed=seed)

        def mix(images, labels):
            mixed = layer({"images": images, "labels": labels}, training=True)
            return mixed["images"], mixed["labels"]
        return mix
    raise ValueError(name)


# %% [markdown]
# ## The policies
#
# `geometric` = flips (only where they keep the class) + rotation + crop-and-resize +
# translation; `photometric` = brightness + contrast + gamma; `occlusion` = random erasing;
# `mixing` = MixUp or CutMix (a coin flip per batch); `randaugment` = Keras' RandAugment (two
# of its eleven operations, the same two for a whole batch; only those two are computed, which
# makes it several times cheaper than the `layers.RandAugment` layer itself). `combined` draws
# on all three families, but each with a probability: the geometric chain on a random half of
# the images, the photometric chain on an independent random half, random erasing on a
# quarter. Stacking every family on every image looked like the obvious "combined", but in our
# trials it was no better than `none` on synthetic:shapes in the same number of epochs: each
# extra transformation makes the training task harder, and a small model with a fixed budget
# underfits. How often and how strongly each image is changed matters more than how many
# techniques are listed.

# %%
def policy_techniques(policy):
    """A list of technique names; (probability, names) applies that chain to a share of images."""
    geometric = (["flip"] if flips != "none" else []) + ["rotation", "zoom", "translation"]
    photometric = ["brightness", "contrast", "gamma"]
    return {"none": [], "geometric": geometric, "photometric": photometric,
            "occlusion": ["random_erasing"], "mixing": ["mixup|cutmix"],
            "randaugment": ["randaugment"],
            "combined": [(0.5, geometric), (0.5, photometric), "light_erasing"]}[policy]


def image_step(name, seed):
    step = technique(name, seed)
    return (lambda i: step(i, training=True)) if isinstance(step, layers.Layer) else step


def sometimes(images, chain, probability, seed):
    """Run `chain` on the batch, keep the result for a random `probability` share of images."""
    changed = images
    for step in chain:
        changed = step(changed)
    chosen = keras.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=seed) < probability
    return tf.where(chosen, changed, images)


def make_augment(policy, seed):
    """The policy as one function of a batch `(images, one_hot_labels)` for the pipeline."""
    generator = keras.random.SeedGenerator(seed)  # the policy's own draws: coin, `sometimes`
    steps = []
    for item in policy_techniques(policy):
        if item == "mixup|cutmix":  # a coin flip per batch: MixUp or CutMix
            mixup, cutmix = technique("mixup", seed), technique("cutmix", seed)
            steps.append(lambda i, t, a=mixup, b=cutmix: tf.cond(
                keras.random.uniform([], seed=generator) < 0.5, lambda: a(i, t), lambda: b(i, t)))
        elif isinstance(item, tuple):
            chain = [image_step(name, seed) for name in item[1]]
            steps.append(lambda i, t, c=chain, p=item[0]: (sometimes(i, c, p, generator), t))
        else:
            call = image_step(item, seed)
            steps.append(lambda i, t, c=call: (c(i), t))

    def augment(images, labels):
        for step in steps:
            images, labels = step(images, labels)
        return tf.clip_by_value(images, 0.0, 255.0), labels
    return augment


def technique_names(policy):
    names = [n for item in policy_techniques(policy)
             for n in (item[1] if isinstance(item, tuple) else item.split("|"))]
    return ["random_erasing" if n == "light_erasing" else n for n in names]


# %% [markdown]
# A grid of samples for each technique: the first row holds the originals, the rows below
# two independent random draws. MixUp and CutMix titles show the mixed labels.

# %%
def technique_grid(name, images, labels, path):
    step = technique(name, args.seed)
    x = tf.constant(images, tf.float32)
    t = tf.one_hot(labels, num_classes)
    rows, titles = [images], [ds.class_names[k] for k in labels]
    for _ in range(2):
        if name in ("mixup", "cutmix"):
            augmented, mixed = step(x, t)
            top = np.argsort(-mixed.numpy(), axis=1)[:, :2]
            titles += [f"{m[a]:.2f} {ds.class_names[a]}\n{m[b]:.2f} {ds.class_names[b]}"
                       if m[b] > 0.01 else ds.class_names[a] for m, (a, b) in zip(mixed.numpy(), top)]
        else:
            augmented = step(x, training=True) if isinstance(step, layers.Layer) else step(x)
            titles += [""] * len(images)
        rows.append(np.clip(np.asarray(augmented), 0, 255).astype(np.uint8))
    used = [p for p in policies if name in technique_names(p)]
    note = f"used by: {', '.join(used)}" if used else "not used by the policies run"
    if name == "flip" and flips == "none":
        note = "not used here: flips can change the class (6/9, b/d); --flips to force"
    plots.image_grid(np.concatenate(rows), titles, path, ncols=len(images),
                     title=f"{name} ({note})", cmap="gray" if images.shape[-1] == 1 else None)


first_of_class = [int(np.flatnonzero(y_train == k)[0]) for k in np.unique(y_train)][:8]
sample_images, sample_labels = x_train[first_of_class], y_train[first_of_class]
for name in TECHNIQUES:
    technique_grid(name, sample_images, sample_labels, out / "augmentations" / f"{name}.png")
print(f"sample grids: {out / 'augmentations'}/{{{','.join(TECHNIQUES)}}}.png")

# %% [markdown]
# ## Corrupted test sets
#
# Robustness is measured on deterministic corruptions of the test images (fixed seed, so
# every policy sees exactly the same corrupted images). Rotation and translation fill the
# uncovered border with the nearest edge pixels, unlike the training-time layers (which
# reflect), so the test is not a copy of the training distribution.

# %%
def corrupt(x, kind, severity, seed=args.seed):
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(kind), severity])
    n, h, w, c = x.shape
    s, x = severity / 100, x.astype(np.float32)
    if kind == "occlusion":
        ph, pw = max(1, round(h * math.sqrt(s))), max(1, round(w * math.sqrt(s)))
        top = rng.integers(0, h - ph + 1, n)[:, None, None]
        left = rng.integers(0, w - pw + 1, n)[:, None, None]
        rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
        inside = (rows >= top) & (rows < top + ph) & (cols >= left) & (cols < left + pw)
        x = np.where(inside[..., None], rng.uniform(0, 255, (n, 1, 1, c)), x)
    elif kind == "darker":
        x = x * (1 - s)
    elif kind == "brighter":
        x = x + 255 * s
    elif kind == "low_contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = mean + (x - mean) * (1 - s)
    else:  # rotation (degrees) or translation (% of the side): one affine map per image
        cx, cy, ones, zeros = (w - 1) / 2, (h - 1) / 2, np.ones(n), np.zeros(n)
        if kind == "rotation":
            angle = np.deg2rad(severity) * rng.choice([-1.0, 1.0], n)
            cos, sin = np.cos(angle), np.sin(angle)
            transform = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
        else:
            direction = rng.uniform(0, 2 * math.pi, n)
            dx, dy = s * w * np.cos(direction), s * h * np.sin(direction)
            transform = [ones, zeros, -dx, zeros, ones, -dy]
        matrix = np.stack(transform + [zeros, zeros], axis=1).astype(np.float32)
        x = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
            x, matrix, interpolation="bilinear", fill_mode="nearest"))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# Built once: every policy is scored on these same arrays.
corrupted = {f"{kind}_{severity}": corrupt(x_test, kind, severity)
             for kind, levels in CORRUPTIONS.items() for severity in levels}
plots.image_grid(np.concatenate([x_test[:1]] + [images[:1] for images in corrupted.values()]),
                 ["clean"] + [name.replace("_", " ") for name in corrupted],
                 out / "corruptions.png", ncols=10,
                 title="corrupted test sets (the same test image, every severity)",
                 cmap="gray" if input_shape[-1] == 1 else None)

# %% [markdown]
# ## Build the model
#
# A small plain CNN, cheap enough to train seven times on a laptop CPU: a 3x3 convolution at
# full resolution, 2x2 max pooling, two 3x3 convolutions, pooling, a third stage, then dropout
# and a softmax layer. Larger images get extra conv+pool stages so that the classifier head
# stays small; pooling rounds up, so tiny or odd-sized images never shrink to nothing. The
# model rescales raw [0, 255] pixels itself, so the saved model takes raw images. No batch
# normalisation: in our trials at this size it made the network memorise the small training
# set faster and generalise worse. `--widths` sets the three stages' filters (16, 32, 64 by
# default); halving them (8, 16, 32) roughly halves the cost of a step, which is what wins
# when the budget is a few minutes on a large dataset (see "Training efficiency" in the
# README). XLA (`jit_compile`) stays off: on CPU it made this model's training several times
# slower in our measurement.

# %%
def build_classifier(input_shape, num_classes, widths=(16, 32, 64)):
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    size = min(input_shape[:2])
    for filters, convs in zip(widths, (1, 2, 1)):
        for _ in range(convs):  # He initialisation keeps the signal's scale through ReLUs
            x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                              kernel_initializer="he_normal")(x)
        x = layers.MaxPooling2D(padding="same")(x)
        size = math.ceil(size / 2)
    while size > 6:
        x = layers.Conv2D(widths[-1], 3, padding="same", activation="relu",
                          kernel_initializer="he_normal")(x)
        x = layers.MaxPooling2D(padding="same")(x)
        size = math.ceil(size / 2)
    x = layers.Dropout(0.3)(layers.Flatten()(x))
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="small_convnet")


build_classifier(input_shape, num_classes, widths).summary(line_length=80)

# %% [markdown]
# ## Train one model per policy
#
# Same initial weights, data order, epochs and learning-rate schedule (AdamW, linear warm-up
# then cosine decay, label smoothing 0.1) for every policy: the policy is the only variable.
# Labels are one-hot for all of them because MixUp and CutMix need soft labels.
#
# The plan line says how many optimisation steps the run will take, and once the first epochs
# are timed, how long. If the run is interrupted (Ctrl-C), the same command resumes it: the
# policies that had finished are loaded with their scores instead of being trained again, and
# the interrupted one continues from its last epoch.
#
# `--time-budget SECONDS` trains each policy for that much wall-clock time instead of a number
# of epochs: what a practitioner with ten minutes wants. `callbacks.TimeBudget` times the
# first 25 steps (they count against the budget), plans how many steps fit in the rest, and
# drives the same warm-up + cosine schedule so that the learning rate reaches 0 when the
# budget ends; it revises the plan as it goes (other jobs on the machine change the speed) and
# stops at the budget. Evaluation (and the per-epoch validation) is not counted. A budgeted
# policy is not backed up per epoch: after an interrupt, it restarts.

# %%
def predicted_classes(model, x, batch_size=256):
    """Class ids, batch by batch. The model is called directly: predict() would trace a new
    tf.function for every model (and TensorFlow warns about retracing)."""
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch_size].astype("float32"),
                                                             training=False)).argmax(-1)
                           for i in range(0, len(x), batch_size)])


def accuracy(model, x, y):
    return float((predicted_classes(model, x) == y).mean())


def compiled_classifier():
    """A fresh model; the seed is reset first, so that every policy starts from the same
    weights."""
    keras.utils.set_random_seed(args.seed)
    model = build_classifier(input_shape, num_classes, widths)
    if args.time_budget:  # TimeBudget sets the learning rate before each step
        learning_rate = 0.0
    else:
        steps = args.epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0, steps - steps // 10, warmup_target=args.learning_rate, warmup_steps=steps // 10)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=1e-4),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=["accuracy"])
    return model


def fit_policy(model, policy, progress=(), validation_data=None):
    """Train `model` under `policy` for --epochs, or for --time-budget seconds of training
    (`callbacks.TimeBudget`: the schedule is fitted to the speed of the first steps). A
    budgeted model is not backed up per epoch: its schedule depends on the time already spent,
    so after an interrupt it restarts. Returns the history and the training seconds."""
    keras.utils.set_random_seed(args.seed)  # the same random state whatever ran before
    train = pipeline.for_training(x_train, y_train, args.batch_size, seed=args.seed,
                                  augment=make_augment(policy, args.seed), num_classes=num_classes)
    standard = callbacks.standard(out, policy, args)
    epochs, budget = args.epochs, None
    if args.time_budget:
        budget = callbacks.TimeBudget(
            args.time_budget, args.learning_rate, math.ceil(len(x_train) / args.batch_size),
            max_epochs=args.epochs if epochs_given or args.smoke else None, name=policy)
        standard = [c for c in standard if not isinstance(c, callbacks.Backup)] + [budget]
        epochs = budget.max_epochs
    started = time.time()
    history = model.fit(train, validation_data=validation_data, epochs=epochs,
                        verbose=callbacks.verbose(), callbacks=[*progress, *standard])
    return history, (budget.seconds if budget else time.time() - started)


finished = callbacks.Finished(out, args)
models = {policy: compiled_classifier() for policy in policies}
records = {policy: finished.load(policy, models[policy]) for policy in policies}  # None: to do
to_train = [policy for policy in policies if records[policy] is None]
plan = callbacks.Plan(to_train, args.epochs, steps_per_epoch, what="policies",
                      time_budget=args.time_budget)
test = pipeline.for_eval(x_test, y_test, num_classes=num_classes)
for policy in to_train:
    cpu_started = time.process_time()
    history, seconds = fit_policy(models[policy], policy, [plan.callback(policy)], test)
    scores = {"clean_accuracy": accuracy(models[policy], x_test, y_test),
              "train_seconds": round(seconds, 1),  # wall clock (validation left out on a budget)
              "train_cpu_seconds": round(time.process_time() - cpu_started, 1),  # all threads
              "train_epochs": len(history.history["loss"])}
    for name, images in corrupted.items():
        scores[name] = accuracy(models[policy], images, y_test)
    scores["mean_corrupted_accuracy"] = float(np.mean([scores[name] for name in corrupted]))
    records[policy] = {"scores": scores, "history": history.history}
    finished.save(policy, models[policy], records[policy])
    print(f"{policy:>12}: clean {scores['clean_accuracy']:.3f}, mean corrupted "
          f"{scores['mean_corrupted_accuracy']:.3f} ({scores['train_seconds']:.0f} s training)")
results = {policy: records[policy]["scores"] for policy in policies}
histories = {policy: records[policy]["history"] for policy in policies}

# %% [markdown]
# ## Robustness: accuracy against corruption severity
#
# One table (rows: test sets, columns: policies, best of each row in bold) and one plot (a
# panel per corruption, accuracy against severity, one line per policy; severity 0 is the
# clean test set).

# %%
rows = ["clean_accuracy"] + [f"{k}_{s}" for k, v in CORRUPTIONS.items() for s in v] + [
    "mean_corrupted_accuracy"]
table = ["| test set | " + " | ".join(policies) + " |", "|---" * (len(policies) + 1) + "|"]
for row in rows:
    values = [results[p][row] for p in policies]
    cells = [f"**{v:.3f}**" if v == max(values) and len(policies) > 1 else f"{v:.3f}"
             for v in values]
    table.append(f"| {row} | " + " | ".join(cells) + " |")
(out / "robustness.md").write_text("\n".join(table) + "\n")
print("\n".join(table))

fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharey=True)
units = {"occlusion": "% of area", "darker": "% darker", "brighter": "% of full scale added",
         "low_contrast": "% contrast removed", "rotation": "degrees", "translation": "% of side"}
for ax, (kind, levels) in zip(axes.ravel(), CORRUPTIONS.items()):
    for i, policy in enumerate(policies):
        ax.plot([0, *levels], [results[policy]["clean_accuracy"]] + [
            results[policy][f"{kind}_{s}"] for s in levels], marker="o", color=f"C{i}",
            label=policy)
    ax.set_title(kind)
    ax.set_xlabel(f"severity ({units[kind]})")
    ax.grid(alpha=0.3)
for ax in axes[:, 0]:
    ax.set_ylabel("test accuracy")
axes[0, 0].legend(fontsize=8)
fig.suptitle(f"robustness per augmentation policy ({args.dataset}, {len(x_train)} training "
             f"images, {args.epochs} epochs)")
fig.tight_layout()
plots.save(fig, out / "robustness.png")
plots.training_curves(histories, out / "training_curves.png",
                      title="training (solid) and test (dashed) per policy")

# %% [markdown]
# ## Save the best policy's model
#
# The saved model is the `combined` policy's (or, when it was not run, the policy with the
# best mean of clean and corrupted accuracy). Run it on your own images with
# `python -m recipes.augmentation predict --model runs/augmentation/model.keras IMAGE...`,
# or score it on another dataset with `evaluate --model ... --dataset SPEC`.

# %%
saved = "combined" if "combined" in results else max(
    results, key=lambda p: results[p]["clean_accuracy"] + results[p]["mean_corrupted_accuracy"])
saving.save_classifier(models[saved], out, ds.class_names)
y_pred = predicted_classes(models[saved], x_test)
plots.confusion_matrix(y_test, y_pred, ds.class_names, out / "confusion.png",
                       title=f"{saved} policy on the clean test set")
saved_scores = metrics.classification(y_test, y_pred, num_classes)
print(f"saved the {saved} policy's model to {out / 'model.keras'}")
cli.finish(args, {**saved_scores, **results}, args.dataset)
finished.clear()  # results.json is written: nothing left to resume
