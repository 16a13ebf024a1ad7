# %% [markdown]
# # Transfer learning: feature extraction and fine-tuning with few labels
#
# **Description:** reuse a convolutional backbone pretrained on a large, varied *source* task
# for a *different* target task that has only a handful of labels per class. By default the
# backbone is the collection's generic one, pretrained offline on about 800 classes of glyphs,
# symbols and pictograms (`make pretrain`) and shipped with the repository. Three strategies
# get the same target data and the same training budget: training from scratch, a frozen
# feature extractor with a new head, and fine-tuning the top blocks with a lower learning
# rate. We measure test accuracy against the number of labels per class, the epochs and
# seconds each strategy needs to reach a fixed accuracy, what happens when the target images
# have other colours, backgrounds and textures, and (with `--compare-weights`) how the curve
# moves when the backbone comes from a narrow source instead.
#
# **Concepts:** the features a network learns on a large dataset (edges, textures, parts of
# shapes) are reusable: a frozen pretrained backbone is a ready-made feature extractor. Reusing
# them cuts the labelled data and the training time a new task needs, and fine-tuning adapts
# them to the new task, or to a new domain, with a low learning rate so that what was learned
# is not overwritten. Transfer has a limit too: a small source unrelated to the target can hurt.
#
# Run: `make transfer_learning` or `python -m recipes.transfer_learning --help`. In a notebook,
# pass flags through `RECIPE_ARGS` in a cell above the setup cell, e.g.
# `os.environ["RECIPE_ARGS"] = "--epochs 5 --dataset npz:/content/my.npz"` (there it replaces
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
# The flags are read before the heavy imports, so that `--help` answers at once. The budget:
# every model trains `--epochs` epochs, 15 by default, fewer when the largest labelled set is
# so large that 15 epochs would exceed about 2,000 optimisation steps per model.

# %%
from common import UserError, cli

# keras.applications backbones: the constructor's name and the file Keras downloads for
# weights="imagenet"
APPLICATIONS = {
    "mobilenetv3small": ("MobileNetV3Small", "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    "efficientnetb0": ("EfficientNetB0", "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5"),
}
STRATEGIES = ("scratch", "frozen", "finetune")
COMPARED = ("frozen", "finetune")  # what --compare-weights measures with its backbone

parser = cli.parser("transfer_learning", "Reuse a pretrained backbone for a new task with few labels.",
                    dataset="synthetic:shapes", epochs=15, batch_size=64, budget_steps=2000)
parser.add_argument("--weights", default="generic",
                    help="generic: the collection's pretrained backbone, shipped with the repository "
                    "(offline), at the data's own image size and channels | pretrain: train small_cnn "
                    "here on a six-shape synthetic source task (saved as OUT/backbone.keras, reused when "
                    "present) | imagenet: keras.applications ImageNet weights (a download) | none: random "
                    "| PATH.keras: a saved backbone model | PATH.weights.h5 or PATH.h5: weights for --backbone")
parser.add_argument("--compare-weights", default=None, metavar="WEIGHTS",
                    help="also measure the frozen and finetune curve of a second backbone (any --weights "
                    "value, e.g. pretrain) on the same labelled sets, drawn beside the first in "
                    "data_efficiency.png; results under metrics.<WEIGHTS> (metrics.file for a PATH)")
parser.add_argument("--backbone", choices=["small_cnn", "generic", *APPLICATIONS], default=None,
                    help="architecture for --weights pretrain, none, imagenet and PATH.weights.h5 "
                    "(default: mobilenetv3small with imagenet, else small_cnn; --weights generic is "
                    "always the generic architecture, and --backbone generic with none or PATH.weights.h5 "
                    "gives it random weights or yours, e.g. from `make pretrain`)")
parser.add_argument("--image-size", type=int, default=None,
                    help="image side in pixels (default: the data's own size for the generic backbone, "
                    "32 for small_cnn, 96 for keras.applications; a .keras backbone brings its own)")
parser.add_argument("--labels-per-class", default="5,10,25,100,all",
                    help="labelled target examples per class, one run of each strategy per value")
parser.add_argument("--shift-labels", default="10,100",
                    help="labels per class for the domain-shift case, synthetic:shapes only")
parser.add_argument("--pretrain-epochs", type=int, default=6, help="epochs on the source task")
parser.add_argument("--unfreeze", type=float, default=0.5,
                    help="fine-tuning trains this top fraction of the backbone's layers")
parser.add_argument("--finetune-lr", type=float, default=3e-4,
                    help="learning rate of the fine-tuning phase")
parser.add_argument("--target-accuracy", type=float, default=0.8,
                    help="convergence: the test accuracy to reach")
args = cli.parse_args(parser)

# %%
import json
import math
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import matplotlib.pyplot as plt
import numpy as np

from common import backbone as generic
from common import callbacks, data, metrics, pipeline, plots, saving, synthetic

if args.command == "predict":
    cli.predict_classifier(args)
    raise SystemExit
out = Path(args.out)
# Source task of --weights pretrain: six shapes in many colours, backgrounds and textures.
# Target task: the four other shapes, same styles. Shifted target: the four other shapes, dark
# colours on noise. (The generic backbone's glyph corpus has none of the ten shapes.)
SOURCE_SHAPES, TARGET_SHAPES = synthetic.SHAPES[:6], synthetic.SHAPES[6:]
SOURCE_STYLE = dict(palette="any", backgrounds=("plain", "gradient", "stripes"), textures=("solid", "stripes", "checker"))
SHIFTED_STYLE = dict(palette="dark", backgrounds=("noise",), textures=("noise",))
sizes = dict(source=4800, target=300, test=150)  # source images; target train/test images per class
min_steps = 10  # an epoch has at least this many steps: tiny labelled sets are repeated
if args.smoke:
    args.epochs, args.pretrain_epochs, args.labels_per_class, args.shift_labels = 3, 3, "all", "3"
    sizes, min_steps = dict(source=1200, target=8, test=16), 4


# %% [markdown]
# ## Prepare the data
#
# With the default `synthetic:shapes`, the *target* task is four shapes (hexagon, star, cross,
# crescent) at 32x32 pixels. The generic backbone never saw them: its glyph corpus leaves out
# every shape of this dataset. `--weights pretrain` instead pretrains on the six other shapes
# (circle, ring, square, frame, triangle, diamond): a different task, not more data of the
# same one. Any other dataset spec (e.g. `npz:../shared/data/mnist10k.npz`) is used whole as
# the target task. The generic backbone takes the images at their own size and channels
# (MNIST stays 28x28 gray); the other backbones get the square RGB size they were built for.
# `--train-size N` keeps a class-balanced subset of N of the target's training images (all of
# them by default). From the target training set we draw `n` labelled examples per class for
# each point of the data-efficiency curve; the smaller sets are contained in the larger.

# %%
def target_task(spec, size, channels, shifted=False):
    """The target task: four new shapes for synthetic:shapes (optionally in other styles).
    `size` or `channels` None: the data's own (synthetic:shapes: 32 pixels, RGB)."""
    if spec != "synthetic:shapes":
        return data.require(data.load(spec, seed=args.seed, image_size=size, channels=channels),
                            data.Classification, spec)
    style, k, seed = (SHIFTED_STYLE if shifted else SOURCE_STYLE), len(TARGET_SHAPES), args.seed + 2 * shifted
    size = size or 32
    x, y = synthetic.make_shapes(sizes["target"] * k, size, seed + 1, TARGET_SHAPES, **style)
    xt, yt = synthetic.make_shapes(sizes["test"] * k, size, seed + 2, TARGET_SHAPES, **style)
    return data.Classification(data.conform(x, channels=channels), y, data.conform(xt, channels=channels),
                               yt, list(TARGET_SHAPES), spec)


def per_class(y, n, seed):
    """Indices of n examples of each class ('all': every example); smaller sets nest in larger."""
    order = np.random.default_rng(seed).permutation(len(y))
    if n == "all":
        return order
    return np.concatenate([order[y[order] == c][: int(n)] for c in np.unique(y)])


def parse_budgets(text, flag):
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v != "all" and not (v.isdigit() and int(v) > 0) for v in values):
        raise UserError(f"{flag} {text!r}: valid values are positive integers and 'all', "
                        "comma-separated, e.g. 5,10,25,100,all")
    return values


if args.command == "evaluate":  # the saved target model, scored on the target task
    if args.dataset != "synthetic:shapes":
        cli.evaluate_classifier(args)
        raise SystemExit
    model, class_names = saving.load_classifier(args.model)
    target = target_task(args.dataset, model.input_shape[1], model.input_shape[-1])
    y_pred = model.predict(target.x_test.astype("float32"), verbose=0).argmax(-1)
    plots.confusion_matrix(target.y_test, y_pred, class_names, out / "confusion.png")
    cli.finish(args, metrics.classification(target.y_test, y_pred, len(class_names)), args.dataset)
    raise SystemExit

budgets = parse_budgets(args.labels_per_class, "--labels-per-class")
shift_budgets = parse_budgets(args.shift_labels, "--shift-labels") if args.shift_labels else []
if not 0 < args.unfreeze <= 1 or not 0 < args.target_accuracy < 1:
    raise UserError("--unfreeze must be in (0, 1] and --target-accuracy in (0, 1)")
if args.finetune_lr <= 0 or args.pretrain_epochs < 1:
    raise UserError("--finetune-lr must be positive and --pretrain-epochs at least 1")
WEIGHT_KEYWORDS = ("generic", "pretrain", "imagenet", "none")


def check_weights_value(value, flag):
    if value not in WEIGHT_KEYWORDS and not value.endswith((".keras", ".h5")):
        raise UserError(f"{flag} {value!r}: valid values are generic, pretrain, imagenet, none, "
                        "PATH.keras, PATH.weights.h5 or PATH.h5")


check_weights_value(args.weights, "--weights")
compared = [args.weights]
if args.compare_weights is not None:
    check_weights_value(args.compare_weights, "--compare-weights")
    if args.compare_weights == args.weights:
        raise UserError(f"--compare-weights {args.compare_weights} is --weights already: pass "
                        "another backbone to compare with, e.g. --compare-weights pretrain")
    compared.append(args.compare_weights)
# --backbone names the architecture that pretrain, none, imagenet and PATH.h5 weights go into;
# the generic weights have their own, and a .keras file brings its own
if args.backbone not in (None, "generic") and "generic" in compared and all(
        w == "generic" or w.endswith(".keras") for w in compared):
    raise UserError(f"--backbone {args.backbone} does not apply to --weights generic: the generic "
                    "backbone is its own architecture. Leave out --backbone, or pass --weights (or "
                    f"--compare-weights) pretrain, none, imagenet or PATH.weights.h5 to use {args.backbone}")
if args.backbone == "generic" and "pretrain" in compared:
    raise UserError("--weights pretrain trains small_cnn or a keras.applications backbone on six "
                    "shapes; the generic architecture is pretrained by `make pretrain`: pass --weights "
                    "generic, or --weights runs/pretrain/backbone.weights.h5 --backbone generic")


# %% [markdown]
# ## The backbone and where its weights come from
#
# One function, `load_backbone`, turns `--weights` into a backbone, whatever the source:
#
# - `generic` (default, offline): the collection's generic backbone, pretrained by
#   `recipes/pretrain` on a large synthetic corpus (about 800 classes of letters, symbols,
#   pictograms and line art, in colour and gray) and shipped in `common/weights`. It is fully
#   convolutional (four stages of two 3x3 convolutions with BatchNorm, the run prints its
#   size), so it is built for the target's own image size. For gray images its
#   first convolution's kernel is summed over the three colour channels, which gives a gray
#   image exactly the features of its RGB copy;
# - `imagenet`: a standard `keras.applications` model (MobileNetV3Small, EfficientNetB0)
#   with ImageNet weights, for online users (Keras downloads them once, then caches them);
# - `PATH.weights.h5` / `PATH.h5`: weights for the `--backbone` architecture, e.g. the
#   ImageNet file downloaded elsewhere. Shapes are compared *before* loading, so a file for
#   another architecture fails with both shapes named, not with a Keras stack trace;
# - `PATH.keras`: a whole saved backbone (architecture and weights);
# - `pretrain` (offline, narrow): the recipe first trains `small_cnn` on a source task of six
#   synthetic shapes, saves it as `OUT/backbone.keras` and loads it back through the
#   `PATH.keras` branch. This was the recipe's default before the generic backbone existed;
#   `--compare-weights pretrain` measures what the generic backbone gains over it.
#
# `small_cnn` is four blocks of two 3x3 convolutions with BatchNorm (0.3M parameters); it is
# fast on a CPU at 32x32 pixels. All backbones take raw [0, 255] pixels (their rescaling is
# inside).

# %%
def small_cnn(input_shape, width=16):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for block, filters in enumerate([width, 2 * width, 4 * width, 8 * width], 1):
        for i in (1, 2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{i}")(x)
            # momentum 0.9: the running statistics settle within the few hundred steps of a short run
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{i}")(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{i}")(x)
        if block < 4:
            x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


def build_backbone(name, shape, weights=None):
    """The `name` architecture for (H, W, C) images, with random weights unless `weights`."""
    if name == "generic":
        return generic.generic_backbone(shape)
    if name == "small_cnn":
        return small_cnn(shape)
    application = getattr(keras.applications, APPLICATIONS[name][0])  # preprocessing included
    return application(input_shape=shape, include_top=False, weights=weights)


def imagenet_weights_reachable(name):
    """Cached by Keras already, or the download host answers (a closed network says no fast)."""
    cached = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / APPLICATIONS[name][1].rsplit("/", 1)[1]
    return cached.is_file() or data.is_online()


def check_weights_fit(model, path, name):
    """Compare the weight shapes a .h5 file holds with those the architecture needs."""
    stored = []
    try:
        with h5py.File(path, "r") as f:  # save_weights of a compiled model also stores optimizer state
            f.visititems(lambda key, item: stored.append(tuple(item.shape)) if isinstance(item, h5py.Dataset) and not key.startswith("optimizer") else None)
    except OSError as err:
        raise UserError(f"cannot read weights file {path}: {err}") from None
    needed = Counter(tuple(w.shape) for w in model.weights)
    missing, extra = needed - Counter(stored), Counter(stored) - needed
    if missing or extra:
        where = {tuple(w.shape): w.path for w in reversed(model.weights)}
        needs = ", ".join(f"{s} ({where[s]})" for s in list(missing)[:3]) or "nothing more"
        holds = ", ".join(str(s) for s in list(extra)[:3]) or "nothing else"
        raise UserError(f"{path} does not match the {name} backbone for {model.input_shape[1:]} inputs: "
                        f"the model needs weights of shape {needs} that the file lacks, and the file "
                        f"holds shape {holds} that the model has no place for ({len(stored)} arrays in "
                        f"the file, {len(model.weights)} in the model). Pass weights saved from the same "
                        "--backbone and --image-size, or a whole backbone as PATH.keras")


def load_backbone(weights, name, shape):
    """The backbone that --weights names, for (H, W, C) images: the one code path for every
    source of weights."""
    if weights == "generic":
        # generic.WEIGHTS is read here, at call time, so that a test can point it elsewhere
        return generic.load_generic(shape, path=generic.WEIGHTS)
    if weights == "imagenet":
        if name not in APPLICATIONS:
            raise UserError(f"ImageNet weights exist for {', '.join(APPLICATIONS)}, not {name}: "
                            "pass --backbone mobilenetv3small (or leave --backbone out)")
        if not imagenet_weights_reachable(name):
            url = APPLICATIONS[name][1]
            raise UserError(f"--weights imagenet needs a download: Keras fetches the {name} ImageNet "
                            f"weights from {url}, and this machine cannot reach it. Download that file "
                            f"where you have a network and pass it with --weights PATH.h5 --backbone {name}, "
                            "or leave out --weights to use the generic backbone shipped with the "
                            "repository, offline")
        return build_backbone(name, shape, "imagenet")
    if weights == "none":
        return build_backbone(name, shape)
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".keras":
        backbone = saving.load_model(path)
        if len(backbone.output_shape) not in (2, 4):
            raise UserError(f"{path}: a backbone outputs feature maps (N, H, W, C) or features "
                            f"(N, C); this model outputs {backbone.output_shape}")
        return backbone
    if name == "generic":  # e.g. a `make pretrain` run's weights: the same checks as the shipped file
        return generic.load_generic(shape, path=path)
    backbone = build_backbone(name, shape)
    check_weights_fit(backbone, path, name)
    try:
        backbone.load_weights(path)
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"cannot load {path} into {name}: {str(err).splitlines()[0]}") from None
    return backbone


def prepare(weights):
    """The backbone that `weights` names (None for pretrain: trained below) and the target task
    prepared for its input. A generic backbone takes the images at their own size and channels;
    the others get square RGB images of --image-size, or of the size a .keras backbone has."""
    name = "generic" if weights == "generic" else args.backbone or (
        "mobilenetv3small" if weights == "imagenet" else "small_cnn")
    size = None
    if name == "generic" and not weights.endswith(".keras"):
        task = target_task(args.dataset, args.image_size, None)
        reference = load_backbone(weights, name, task.x_train.shape[1:])
    else:
        size = args.image_size or (32 if name == "small_cnn" else 96)
        if size < (8 if name == "small_cnn" else 32):
            raise UserError(f"--image-size {size} is too small for {name} (valid: 8 or more for "
                            "small_cnn, 32 or more for the keras.applications backbones)")
        reference = None if weights == "pretrain" else load_backbone(weights, name, (size, size, 3))
        channels = 3
        if reference is not None:  # a loaded backbone decides the input size
            size, channels = reference.input_shape[1], reference.input_shape[-1]
        task = target_task(args.dataset, size, channels)
    task.x_train, task.y_train = cli.train_subset(args, task.x_train, task.y_train)
    # the name of its results (metrics.<label>) and runs, when it is the backbone compared with
    label = weights if weights in WEIGHT_KEYWORDS else "file"
    return SimpleNamespace(weights=weights, label=label, name=name, size=size, reference=reference,
                           target=task)


setups = [prepare(weights) for weights in compared]  # the backbone, then the one compared with
target = setups[0].target
height, width, channels = target.x_train.shape[1:]
budgets.sort(key=lambda n: len(per_class(target.y_train, n, args.seed)))
# The epoch budget follows the largest labelled set. Smaller sets are repeated up to
# `min_steps` steps per epoch, so a batch larger than a small set is fine here.
cli.training_budget(args, max(len(per_class(target.y_train, budgets[-1], args.seed)), args.batch_size))
shifted = None  # the domain-shift task (see below)
if args.dataset == "synthetic:shapes" and shift_budgets:
    shifted = target_task(args.dataset, height, channels, shifted=True)
print(f"target: {len(target.x_train)} train / {len(target.x_test)} test images, "
      f"{target.num_classes} classes, {height}x{width}x{channels}; "
      f"{args.epochs} epochs per model")


# %% [markdown]
# ## Pretrain on the source task (`--weights pretrain`)
#
# A from-scratch classifier for the six source shapes; afterwards we keep only its backbone.
# The file is reused by later runs with the same settings, so the comparison below can be
# rerun without paying for pretraining again. (The generic backbone needs none of this: it
# was pretrained once, by `make pretrain`, and ships with the repository.)

# %%
augment = keras.Sequential([keras.layers.RandomTranslation(0.1, 0.1, seed=args.seed),
                           keras.layers.RandomZoom(0.1, seed=args.seed)], name="augment")


def classifier(backbone, num_classes, pretrained):
    inputs = keras.Input(backbone.input_shape[1:])
    # training=False: a reused backbone's BatchNorm layers keep their source statistics, also
    # while fine-tuning (the Keras guide's advice); a from-scratch backbone learns its own.
    features = backbone(inputs, training=False) if pretrained else backbone(inputs)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D()(features)
    features = keras.layers.Dropout(0.2)(features)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(features))


pretrain_metrics = {}
narrow = next((setup for setup in setups if setup.weights == "pretrain"), None)
if narrow is not None:
    backbone_file, info_file = out / "backbone.keras", out / "backbone.json"
    settings = dict(backbone=narrow.name, image_size=narrow.size, source_shapes=list(SOURCE_SHAPES),
                    source_images=sizes["source"], pretrain_epochs=args.pretrain_epochs, seed=args.seed)
    info = json.loads(info_file.read_text()) if info_file.is_file() and backbone_file.is_file() else {}
    if {k: info.get(k) for k in settings} == settings:
        print(f"reusing the pretrained backbone {backbone_file} (delete it to pretrain again)")
    else:
        xs, ys = synthetic.make_shapes(sizes["source"], narrow.size, args.seed + 100, SOURCE_SHAPES, **SOURCE_STYLE)
        xv, yv = synthetic.make_shapes(sizes["source"] // 4, narrow.size, args.seed + 101, SOURCE_SHAPES, **SOURCE_STYLE)
        keras.utils.set_random_seed(args.seed)  # the same backbone whether compared with or not
        backbone = build_backbone(narrow.name, (narrow.size, narrow.size, 3))
        model = classifier(backbone, len(SOURCE_SHAPES), pretrained=False)
        model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        plan = callbacks.Plan(["pretrain"], args.pretrain_epochs, math.ceil(len(xs) / args.batch_size),
                              what="source model")
        model.fit(pipeline.for_training(xs, ys, args.batch_size, augment=augment, seed=args.seed),
                  validation_data=pipeline.for_eval(xv, yv), epochs=args.pretrain_epochs,
                  verbose=callbacks.verbose(),
                  callbacks=[plan.callback("pretrain"), *callbacks.standard(out / "logs", "pretrain", args)])
        accuracy = model.evaluate(pipeline.for_eval(xv, yv), verbose=0, return_dict=True)["accuracy"]
        backbone.save(backbone_file)
        info = {**settings, "source_test_accuracy": float(accuracy)}
        info_file.write_text(json.dumps(info, indent=2) + "\n")
    pretrain_metrics = {"source_test_accuracy": info["source_test_accuracy"], "source_classes": len(SOURCE_SHAPES)}
    narrow.reference = load_backbone(str(backbone_file), narrow.name, None)  # the --weights PATH code


# %% [markdown]
# ## Three strategies, same data, same budget
#
# - **scratch**: the same architecture, randomly initialised, everything trained (lr 1e-3);
# - **frozen**: the pretrained backbone is a fixed feature extractor; only a new head (global
#   average pooling, dropout, softmax) is trained (lr 1e-2: a single layer learns fast);
# - **finetune**: the Keras guide's two steps: a third of the epochs train the new head on the
#   frozen backbone, then the top `--unfreeze` fraction of the backbone's layers is unfrozen
#   and trained together with the head at a lower learning rate (`--finetune-lr`). BatchNorm
#   layers stay frozen and in inference mode: re-estimating their statistics from a few
#   dozen images would wreck the features they normalise. For the generic backbone the
#   default half is the convolutions of stages 3 and 4: the task-specific top of the network,
#   which also holds most of its weights, while the edge and stroke detectors of stages 1 and
#   2 stay as pretrained. The run prints what it unfreezes for each backbone.
#
# Every run gets `--epochs` epochs of at least `min_steps` steps (small sets are repeated, with
# light augmentation), so every strategy makes the same number of updates on the same images.
# Each run starts from the same random state (`--seed`), so its result does not depend on the
# runs before it: a run interrupted by Ctrl-C and restarted with the same command loads the
# models that had finished and gives the numbers an uninterrupted run gives.

# %%
def top_layers(backbone, fraction):
    """The layers fine-tuning trains: of the layers that hold weights, in the backbone's order,
    the top `fraction`, BatchNorm left out. For the generic backbone's 16 (8 convolutions, 8
    BatchNorm) the default 0.5 gives the four convolutions of stages 3 and 4."""
    layers = [layer for layer in backbone.layers if layer.weights]
    first = int(round(len(layers) * (1 - fraction)))
    return [layer for layer in layers[first:] if not isinstance(layer, keras.layers.BatchNormalization)]


def unfreeze_top(backbone, fraction):
    backbone.trainable = True
    trained = {id(layer) for layer in top_layers(backbone, fraction)}
    for layer in backbone.layers:
        if layer.weights:
            layer.trainable = id(layer) in trained


def steps_per_epoch(n_images):
    return max(min_steps, math.ceil(n_images / args.batch_size))


def train(strategy, reference, x, y, test_ds, num_classes, name, validate=False):
    """One strategy on one labelled set, starting from the `reference` backbone: the model, its
    test accuracy, and (with `validate`) the test accuracy after each epoch with the seconds
    spent until then."""
    keras.utils.set_random_seed(args.seed)  # the same start for every run, trained or loaded
    pretrained = strategy != "scratch"
    backbone = keras.models.clone_model(reference)  # new layers, freshly initialised
    if pretrained:
        backbone.set_weights(reference.get_weights())
    backbone.trainable = not pretrained
    model = classifier(backbone, num_classes, pretrained)
    record = finished.load(name, model)
    if record is not None:
        return model, record["accuracy"], record["history"]
    plan.start(name)
    train_ds = pipeline.for_training(x, y, args.batch_size, augment=augment, seed=args.seed).repeat()
    history, started = {"accuracy": [], "seconds": []}, time.time()

    def epoch_done(epoch, logs):
        history["seconds"].append(time.time() - started)
        plan.epoch_done()

    # the usual learning rates: 1e-3 (Adam) for a whole network, 1e-2 for a new head alone
    phases = [(args.epochs // 3 if strategy == "finetune" else args.epochs, 1e-2 if pretrained else 1e-3)]
    if strategy == "finetune":
        phases.append((args.epochs, args.finetune_lr))
    done = 0
    for phase, (until, learning_rate) in enumerate(phases):
        if phase == 1:
            unfreeze_top(backbone, args.unfreeze)
        model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
        if until > done:
            fit = model.fit(train_ds, steps_per_epoch=steps_per_epoch(len(x)), epochs=until, initial_epoch=done,
                            validation_data=test_ds if validate else None, verbose=callbacks.verbose(),
                            callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=epoch_done),
                                       *callbacks.standard(out / "logs", f"{name}_{phase}", args)])
            history["accuracy"] += fit.history.get("val_accuracy", [])
            done = until
    accuracy = float(model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])
    print(f"{name:>22}: {len(x):5d} images, test accuracy {accuracy:.3f}, {time.time() - started:.0f} s")
    finished.save(name, model, {"accuracy": accuracy, "history": history})
    return model, accuracy, history


# What each backbone is, and what fine-tuning will train of it
if "generic" in compared:
    made = generic.record()
    print(f"generic backbone: {generic.WEIGHTS} (" + (
        f"made by `{made.get('command')}` at commit {made.get('commit')})" if made else
        "no provenance record beside it: not the shipped weights)"))
for setup in setups:
    top = top_layers(setup.reference, args.unfreeze)
    print(f"{setup.label} backbone: {setup.name}, {setup.reference.count_params():,} parameters, "
          f"input {'x'.join(str(s) for s in setup.target.x_train.shape[1:])}; fine-tuning trains "
          f"{sum(layer.count_params() for layer in top):,} of them in {len(top)} layers: "
          f"{', '.join(layer.name for layer in top[:6])}{', ...' if len(top) > 6 else ''}")


# %% [markdown]
# ## Data efficiency and convergence
#
# For each number of labels per class, the three strategies train on the same images. The
# largest set also records test accuracy after every epoch, for the convergence comparison.
# The plan line counts every run, the domain-shift and compared-backbone ones below included.

# %%
planned = {f"{s}_{n}": steps_per_epoch(len(per_class(target.y_train, n, args.seed)))
           for n in budgets for s in STRATEGIES}
if shifted is not None:
    planned.update({f"shift_{s}_{n}": steps_per_epoch(len(per_class(shifted.y_train, n, args.seed)))
                    for n in shift_budgets for s in STRATEGIES})
for setup in setups[1:]:  # the compared backbone's runs are named after it
    planned.update({f"{setup.label}_{s}_{n}": steps_per_epoch(len(per_class(setup.target.y_train, n, args.seed)))
                    for n in budgets for s in COMPARED})
finished = callbacks.Finished(out, args)
# runs that finished before an interrupt are loaded in train(), not planned (record written last)
planned = {name: steps for name, steps in planned.items() if not (finished.directory / f"{name}.json").is_file()}
# one steps-per-epoch figure for all runs: their mean, so that the planned total is right
plan = callbacks.Plan(list(planned), args.epochs, round(sum(planned.values()) / len(planned)),
                      what="runs") if planned else None
reference = setups[0].reference
test_ds = pipeline.for_eval(target.x_test, target.y_test)
curve = {s: {} for s in STRATEGIES}
histories = {}
for n in budgets:
    chosen = per_class(target.y_train, n, args.seed)
    for strategy in STRATEGIES:
        last = n == budgets[-1]
        model, curve[strategy][n], history = train(strategy, reference, target.x_train[chosen], target.y_train[chosen],
                                                   test_ds, target.num_classes, f"{strategy}_{n}", validate=last)
        if last:
            histories[strategy] = history
            if strategy == "finetune":
                final_model = model


def reached(history, goal):
    """(epochs, seconds) until the test accuracy first reached `goal`; (None, None) if never."""
    for epoch, (accuracy, seconds) in enumerate(zip(history["accuracy"], history["seconds"]), 1):
        if accuracy >= goal:
            return epoch, round(seconds, 1)
    return None, None


convergence = {"target_accuracy": args.target_accuracy, "labels_per_class": budgets[-1]}
for strategy, history in histories.items():
    epochs, seconds = reached(history, args.target_accuracy)
    convergence[strategy] = {"epochs_to_target": epochs, "seconds_to_target": seconds,
                             "seconds_total": round(history["seconds"][-1], 1)}


# %% [markdown]
# ## Domain shift
#
# The same four target shapes, now dark on noisy backgrounds with noise textures: colours,
# backgrounds and textures the backbone never saw. First the fine-tuned target model as it is
# (no adaptation), then each strategy trained on a few labelled shifted images. (With another
# `--dataset`, the target is itself a shift away from the synthetic source, so this is skipped.)

# %%
shift_metrics = {}
if shifted is not None:
    shifted_test = pipeline.for_eval(shifted.x_test, shifted.y_test)
    shift_metrics = {s: {} for s in STRATEGIES}
    shift_metrics["no_adaptation"] = final_model.evaluate(shifted_test, verbose=0, return_dict=True)["accuracy"]
    for n in shift_budgets:
        chosen = per_class(shifted.y_train, n, args.seed)
        for strategy in STRATEGIES:
            _, shift_metrics[strategy][n], _ = train(strategy, reference, shifted.x_train[chosen], shifted.y_train[chosen],
                                                     shifted_test, shifted.num_classes, f"shift_{strategy}_{n}")

# %% [markdown]
# ## Another backbone on the same curve (`--compare-weights`)
#
# Which source to transfer from matters as much as how: `--compare-weights pretrain` trains
# the frozen and finetune strategies again, on the same labelled sets with the same budget,
# from the narrow six-shape backbone instead. (Scratch does not depend on the weights; with
# another architecture its curve would move too, but what is compared here is the source.)

# %%
other_curves = {}
for setup in setups[1:]:
    task = setup.target
    other_test = pipeline.for_eval(task.x_test, task.y_test)
    other_curves[setup.label] = {s: {} for s in COMPARED}
    for n in budgets:
        chosen = per_class(task.y_train, n, args.seed)
        for strategy in COMPARED:
            _, other_curves[setup.label][strategy][n], _ = train(
                strategy, setup.reference, task.x_train[chosen], task.y_train[chosen], other_test,
                task.num_classes, f"{setup.label}_{strategy}_{n}")

# %% [markdown]
# ## Plots and the saved model
#
# The fine-tuned model trained on the most labels is saved as `OUT/model.keras` for `predict`
# and `evaluate`.

# %%
saving.save_classifier(final_model, out, target.class_names)
tasks = [target, shifted] if shift_metrics else [target]
if narrow is not None:  # the six-shape source task, drawn at the target's size
    xs, ys = synthetic.make_shapes(12, narrow.size, args.seed + 102, SOURCE_SHAPES, **SOURCE_STYLE)
    tasks.insert(0, data.Classification(data.conform(xs, (height, width)), ys, *synthetic.make_shapes(0, height),
                                        list(SOURCE_SHAPES)))
shown = [(task, per_class(task.y_train, math.ceil(12 / task.num_classes), args.seed)[:12]) for task in tasks]
plots.image_grid(np.concatenate([data.conform(task.x_train[i], channels=3) for task, i in shown]),
                 [task.class_names[c] for task, i in shown for c in task.y_train[i]], out / "samples.png",
                 ncols=12, title="rows: " + ", ".join(
                     (["six-shape source task (--weights pretrain)"] if narrow is not None else [])
                     + ["target task"] + (["target after the domain shift"] if shift_metrics else [])))
count = {n: len(per_class(target.y_train, n, args.seed)) / target.num_classes for n in budgets}
fig, ax = plt.subplots(figsize=(6, 4))
suffix = f", {setups[0].label} backbone" if other_curves else ""
for i, strategy in enumerate(STRATEGIES):
    ax.plot([count[n] for n in budgets], [curve[strategy][n] for n in budgets], "o-", color=f"C{i}",
            label=strategy + (suffix if strategy != "scratch" else ""))
    if shift_metrics:
        ax.plot([len(per_class(shifted.y_train, n, args.seed)) / shifted.num_classes for n in shift_budgets],
                [shift_metrics[strategy][n] for n in shift_budgets], "s--", color=f"C{i}", label=f"{strategy}, domain shift")
    for label, other in other_curves.items():
        if strategy in other:
            ax.plot([count[n] for n in budgets], [other[strategy][n] for n in budgets], "^-.", color=f"C{i}",
                    alpha=0.6, label=f"{strategy}, {label} backbone")
ax.axhline(1 / target.num_classes, color="gray", linestyle=":", label="chance")
ax.set(xscale="log", xlabel="labelled examples per class", ylabel="target test accuracy", ylim=(0, 1.02),
       title="data efficiency: same data, same budget" + (f" ({' vs '.join(compared)})" if other_curves else ""))
ax.set_xticks([count[n] for n in budgets], [f"{count[n]:.0f}" for n in budgets])
# a compared backbone doubles the legend: beside the axes, so that it hides no point
ax.legend(fontsize=7, **(dict(loc="center left", bbox_to_anchor=(1.01, 0.5)) if other_curves else {}))
ax.grid(alpha=0.3)
plots.save(fig, out / "data_efficiency.png")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, key in zip(axes, ("epoch", "seconds")):
    for i, (strategy, history) in enumerate(histories.items()):
        xs = range(1, len(history["accuracy"]) + 1) if key == "epoch" else history["seconds"]
        ax.plot(list(xs), history["accuracy"], "o-", color=f"C{i}", markersize=3, label=strategy)
    ax.axhline(args.target_accuracy, color="gray", linestyle=":", label="target accuracy")
    ax.set(xlabel=key, ylabel="test accuracy", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.suptitle(f"convergence with {budgets[-1]} ({count[budgets[-1]]:.0f}) labels per class")
plots.save(fig, out / "convergence.png")
y_pred = final_model.predict(test_ds, verbose=0).argmax(-1)
plots.confusion_matrix(target.y_test, y_pred, target.class_names, out / "confusion.png",
                       title=f"fine-tuned, {budgets[-1]} labels per class")
plots.image_grid(target.x_test[:16], [target.class_names[p] for p in y_pred[:16]], out / "predictions.png",
                 title_colours=["green" if p == t else "red" for p, t in zip(y_pred[:16], target.y_test[:16])],
                 title="fine-tuned model: predicted class (red: wrong)")

# %% [markdown]
# ## Results
#
# `metrics.<strategy>.<labels per class>` is the target test accuracy with the `--weights`
# backbone; the headline compares fine-tuning with training from scratch at 10 labels per
# class. A compared backbone's curve is `metrics.<its --compare-weights>.<strategy>.<labels>`,
# e.g. `metrics.pretrain.finetune.10` (a PATH: `metrics.file...`).

# %%
head = "10" if "10" in budgets else budgets[0]
results_metrics = {**curve, "convergence": convergence, "train_examples_per_class": count,
                   "headline": {"labels_per_class": head, "finetune": curve["finetune"][head],
                                "scratch": curve["scratch"][head],
                                "finetune_minus_scratch": curve["finetune"][head] - curve["scratch"][head]}}
if pretrain_metrics:
    results_metrics["pretrain"] = pretrain_metrics
if shift_metrics:
    results_metrics["domain_shift"] = shift_metrics
for label, other in other_curves.items():  # beside the pretraining's own scores, for pretrain
    results_metrics[label] = {**results_metrics.get(label, {}), **other}
cli.finish(args, results_metrics, args.dataset)
finished.clear()  # results.json is written: nothing left to resume
