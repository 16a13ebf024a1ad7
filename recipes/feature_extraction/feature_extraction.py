# %% [markdown]
# # Feature extraction: what a small CNN learns, layer by layer
#
# **Description:** train a small convolutional network, then open it up: the filters of its
# first layer, the feature maps at every stage, ReLU against sigmoid, max against average
# pooling against spatial pyramid pooling (with a measured translation-invariance score), and
# the network used as a feature extractor for a linear classifier.
#
# **Concepts:** a convolutional layer is a bank of small learned filters slid over the image;
# each filter produces a feature map that lights up where its pattern occurs. Activation
# functions make the stack of layers non-linear (without them it would collapse into one
# linear map). Pooling shrinks the maps and buys some tolerance to small shifts. Fully
# connected layers turn the pooled features into a decision.
#
# Run: `make feature_extraction` or `python -m recipes.feature_extraction --help`. In a
# notebook, flags come from the `RECIPE_ARGS` environment variable instead of a command line:
# add a cell above the setup cell with, e.g.,
# `os.environ["RECIPE_ARGS"] = "--variants relu,spp --dataset npz:/content/my.npz"`
# (after `import os`; empty or unset means the defaults).

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
import argparse

from common import cli

# The variants compared: one piece of the reference network (ReLU, max pooling, flattened
# last maps) changed at a time. `relu` is the reference and is also reported as `max_pool`.
VARIANTS = {
    "relu": dict(activation="relu", pooling="max"),
    "sigmoid": dict(activation="sigmoid", pooling="max"),
    "average_pool": dict(activation="relu", pooling="average"),
    "spp": dict(activation="relu", pooling="max", head="spp"),
}
SYNTHETIC_SIZE = 6000  # training images drawn for synthetic:shapes (1,200 more for the test)


def variant_list(value: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown variant {', '.join(unknown) or repr(value)}; valid variants: "
            f"{', '.join(VARIANTS)} (comma-separated, e.g. relu,spp)")
    return names


parser = cli.parser("feature_extraction", "What a small CNN extracts, layer by layer.",
                    dataset="synthetic:shapes", epochs=12, batch_size=64, budget_steps=1500,
                    time_budget="per variant (each variant gets the same SECONDS)")
parser.add_argument("--variants", type=variant_list, default=",".join(VARIANTS),
                    help="comma-separated variants to train and compare; relu is the "
                         "reference (ReLU, max pooling) and the saved model")
parser.add_argument("--max-shift", type=int, default=8,
                    help="largest shift in pixels for the translation test")
args = cli.parse_args(parser)
cli.classifier_commands(args)  # `predict` / `evaluate`: runs the saved model and stops here
if args.max_shift < 1:
    parser.error(f"--max-shift must be at least 1 pixel, got {args.max_shift}")
synthetic_size = SYNTHETIC_SIZE
epochs_given = args.epochs is not None  # with --time-budget, --epochs is only a cap
if args.smoke:  # every code path on a small budget (explicit flags still win)
    args.epochs, args.batch_size, args.max_shift = args.epochs or 4, 32, min(args.max_shift, 4)
    args.train_size, synthetic_size = min(args.train_size or 1500, 1500), 1500

# %%
import time
import warnings
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import callbacks, data, metrics, pipeline, plots, saving

out = Path(args.out)

# %% [markdown]
# ## Prepare the data
#
# The offline default is `synthetic:shapes`: ten shape classes drawn with random size,
# position, rotation, colours, textures and backgrounds (6,000 training images). Any
# classification spec works, e.g. real MNIST digits with
# `--dataset npz:../shared/data/mnist10k.npz`; `--train-size N` keeps a class-balanced subset
# of N training images of any dataset (all of them by default).

# %%
ds = data.require(data.load(args.dataset, seed=args.seed, num_examples=(
    max(synthetic_size, args.train_size or 0) if args.dataset.startswith("synthetic:") else None)),
    data.Classification, args.dataset)
ds.x_train, ds.y_train = cli.train_subset(args, ds.x_train, ds.y_train)
steps_per_epoch = cli.training_budget(args, len(ds.x_train))  # resolves args.epochs
input_shape = ds.x_train.shape[1:]
print(f"{len(ds.x_train)} train / {len(ds.x_test)} test images of shape {input_shape}, "
      f"{ds.num_classes} classes")
train = pipeline.for_training(ds.x_train, ds.y_train, args.batch_size, seed=args.seed)
test = pipeline.for_eval(ds.x_test, ds.y_test)
plots.image_grid(ds.x_train[:24], [ds.class_names[y] for y in ds.y_train[:24]],
                 out / "samples.png", title="training samples")

# %% [markdown]
# ## Build the model
#
# Three convolution stages (3x3 filters, 32/64/128 of them) with pooling in between, then a
# "head" that turns the last feature maps into one vector, a fully connected layer and the
# softmax classifier. The activation, the pooling between stages and the head are arguments,
# so that the same network can be compared with one piece swapped:
#
# - `flatten` keeps every position of the last maps (position-sensitive);
# - `spp` is spatial pyramid pooling: max-pool the last maps over 1x1, 2x2 and 4x4 grids and
#   concatenate, a fixed-length summary at several scales, whatever the input size.


# %%
def spatial_pyramid_pool(x, levels=(1, 2, 4)):
    """Max over an n x n grid of bins for each level, concatenated: n*n*C values per level.

    (keras.layers.AdaptiveMaxPooling2D does this job, but crashes on this stack; slicing
    symbolic tensors keeps the model a plain Functional graph.)
    """
    height, width = x.shape[1], x.shape[2]
    pooled = []
    for n in levels:
        for i in range(n):
            for j in range(n):
                rows = slice(i * height // n, -(-(i + 1) * height // n))
                cols = slice(j * width // n, -(-(j + 1) * width // n))
                pooled.append(keras.ops.max(x[:, rows, cols, :], axis=(1, 2)))
    return layers.Concatenate(name="spp")(pooled)


LEARNING_RATE = 1e-3  # Adam's; the peak of the schedule on a --time-budget


def make_cnn(activation="relu", pooling="max", head="flatten", name="cnn"):
    pool = {"max": layers.MaxPooling2D, "average": layers.AveragePooling2D}[pooling]
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    for stage, filters in enumerate((32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation=activation,
                          name=f"conv{stage}")(x)
        x = pool(2, name=f"pool{stage}")(x)
    x = layers.Conv2D(128, 3, padding="same", activation=activation, name="conv3")(x)
    if head == "spp":
        x = spatial_pyramid_pool(x)
    else:
        x = layers.Flatten()(pool(2, name="pool3")(x))
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(128, activation=activation, name="features")(x)
    outputs = layers.Dense(ds.num_classes, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs, name=name)
    # on a --time-budget, callbacks.TimeBudget sets the learning rate before each step
    model.compile(keras.optimizers.Adam(0.0 if args.time_budget else LEARNING_RATE),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


make_cnn().summary()

# %% [markdown]
# ## Train the variants
#
# Same data, same budget, one piece changed at a time (`--variants` picks which). By default
# each variant trains for about 1,500 optimisation steps, at most 12 epochs and at least 2:
# 12 epochs on the default data, 2 on a 60,000-image dataset (`--epochs` overrides it). The
# plan line says how many steps that is, and the first epochs measure how long it will take.
#
# `--time-budget SECONDS` gives each variant the same wall-clock training time instead (the
# fair comparison when variants differ in speed): the speed of the first steps sets how many
# steps fit, and the learning rate warms up to Adam's 1e-3 and decays to 0 exactly when the
# budget ends (`callbacks.TimeBudget`). Evaluation is not counted in the budget.
#
# Each epoch is backed up: an interrupted run (Ctrl-C) continues where it stopped when rerun
# with the same command, and variants that had already finished are loaded, not retrained.
# On a time budget, the interrupted variant restarts (its schedule depends on the time it had
# spent); the finished ones are still loaded.

# %%
finished = callbacks.Finished(out, args)
# variants that finished before an interrupt are loaded below (their record is written last)
to_train = [n for n in args.variants if not (finished.directory / f"{n}.json").is_file()]
plan = callbacks.Plan(to_train, args.epochs, steps_per_epoch,
                      time_budget=args.time_budget) if to_train else None
models, histories, seconds = {}, {}, {}
for name in args.variants:
    keras.utils.set_random_seed(args.seed)  # every variant starts from the same random state
    models[name] = make_cnn(**VARIANTS[name], name=name)
    record = finished.load(name, models[name])
    if record is None:
        progress = [plan.callback(name)] if name in to_train else []
        standard, epochs, budget = callbacks.standard(out, name, args), args.epochs, None
        if args.time_budget:  # no per-epoch backup: a budgeted variant restarts on resume
            budget = callbacks.TimeBudget(args.time_budget, LEARNING_RATE, steps_per_epoch,
                                          max_epochs=args.epochs if epochs_given else None,
                                          name=name)
            standard = [c for c in standard if not isinstance(c, callbacks.Backup)] + [budget]
            epochs = budget.max_epochs
        start = time.time()
        history = models[name].fit(train, validation_data=test, epochs=epochs,
                                   verbose=callbacks.verbose(), callbacks=progress + standard)
        record = {"history": history.history,  # training seconds (validation not counted)
                  "seconds": budget.seconds if budget else time.time() - start}
        finished.save(name, models[name], record)
    histories[name], seconds[name] = record["history"], record["seconds"]

if {"relu", "sigmoid"} <= set(histories):
    plots.training_curves({k: histories[k] for k in ("relu", "sigmoid")},
                          out / "relu_vs_sigmoid.png",
                          title="ReLU vs sigmoid: same network, same budget")
pooling = [k for k in ("relu", "average_pool", "spp") if k in histories]
if len(pooling) > 1:
    plots.training_curves({k: histories[k] for k in pooling}, out / "pooling_curves.png",
                          title="max vs average vs pyramid pooling")

# %% [markdown]
# ## Evaluate: accuracy and translation invariance
#
# Pooling is supposed to make a network tolerant to small shifts. We measure it: shift every
# test image by d = 1..8 pixels in a random direction (edges replicated) and count how often
# the predicted class stays the same as for the unshifted image (`shift_consistency`), and
# how often it is still right (`shifted_accuracy`).


# %%
def predict(model, images, batch_size=256):
    """The model's outputs for `images`, one plain call per batch. (`model.predict` would
    compile a new function for each model, and TensorFlow warns about the retracing.)"""
    return np.concatenate([
        keras.ops.convert_to_numpy(model(images[i : i + batch_size].astype("float32"),
                                         training=False))
        for i in range(0, len(images), batch_size)])


def shift(images, dy, dx):
    """Translate a batch by (dy, dx) pixels, replicating the border instead of adding black."""
    p = max(abs(dy), abs(dx))
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return padded[:, p - dy : p - dy + h, p - dx : p - dx + w]


rng = np.random.default_rng(args.seed)
directions = rng.integers(0, 8, len(ds.x_test))
unit = np.array([(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)])
shifts = range(1, args.max_shift + 1)
shifted = np.empty((len(shifts), *ds.x_test.shape), np.uint8)  # every shift, every image
for i, d in enumerate(shifts):
    for k, (dy, dx) in enumerate(unit):
        chosen = directions == k
        shifted[i, chosen] = shift(ds.x_test[chosen], dy * d, dx * d)
shifted = shifted.reshape(-1, *input_shape)

scores, consistency, shifted_accuracy, test_predictions = {}, {}, {}, {}
for name, model in models.items():
    y_pred = test_predictions[name] = predict(model, ds.x_test).argmax(-1)
    y_shifted = predict(model, shifted).argmax(-1).reshape(len(shifts), -1)
    scores[name] = metrics.classification(ds.y_test, y_pred, ds.num_classes)
    scores[name]["train_seconds"] = seconds[name]
    consistency[name] = (y_shifted == y_pred).mean(axis=1).tolist()
    scores[name]["shift_consistency"] = float(np.mean(consistency[name]))
    # a model that always says the same class is perfectly "invariant": read both numbers
    shifted_accuracy[name] = (y_shifted == ds.y_test).mean(axis=1).tolist()
    scores[name]["shifted_accuracy"] = float(np.mean(shifted_accuracy[name]))
if "relu" in scores:
    scores["max_pool"] = scores["relu"]

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name in models:
    label = "max_pool (relu)" if name == "relu" else name
    axes[0].plot(list(shifts), consistency[name], marker="o", label=label)
    axes[1].plot(list(shifts), shifted_accuracy[name], marker="o", label=label)
for ax, ylabel in zip(axes, ("prediction unchanged (share)", "accuracy on shifted images")):
    ax.set_xlabel("shift (pixels)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
axes[0].set_title("translation invariance")
axes[1].set_title("still right after the shift")
axes[0].legend()
plots.save(fig, out / "translation_invariance.png")

# the reference network (ReLU, max pooling) is the one saved; without it, the first variant
reference_name = "relu" if "relu" in models else args.variants[0]
reference = models[reference_name]
plots.confusion_matrix(ds.y_test, test_predictions[reference_name], ds.class_names,
                       out / "confusion.png", title=f"confusion matrix: {reference_name}")
saving.save_classifier(reference, out, ds.class_names)

# %% [markdown]
# ## Look inside: filters and feature maps
#
# The first layer's 3x3 filters are small colour/edge detectors. Feature maps show, for a few
# test images, where each stage's channels respond: early maps follow edges and textures,
# later maps are coarser and more abstract.

# %%
kernels = reference.get_layer("conv1").kernel.numpy()  # (3, 3, channels, 32)
kernels = (kernels - kernels.min()) / (kernels.max() - kernels.min())
filters = [kernels[..., i] if kernels.shape[2] == 3 else kernels[..., 0, i]
           for i in range(kernels.shape[-1])]
plots.image_grid(filters, [f"#{i}" for i in range(len(filters))], out / "filters_conv1.png",
                 title="first-layer filters (3x3, min-max scaled)", cmap="gray")

stages = ["conv1", "pool1", "conv2", "pool2", "conv3"]
probe = keras.Model(reference.input, [reference.get_layer(s).output for s in stages])
examples = ds.x_test[:2]
maps = [keras.ops.convert_to_numpy(m) for m in probe(examples.astype("float32"))]
tiles, titles = [], []
for i, image in enumerate(examples):
    for stage, stage_maps in zip(stages, maps):
        tiles.append(image)
        titles.append(f"{ds.class_names[ds.y_test[i]]} -> {stage}")
        # the six channels that respond most (highest spatial spread) to this input
        for channel in np.argsort(stage_maps[i].std(axis=(0, 1)))[::-1][:6]:
            tiles.append(stage_maps[i, ..., channel])
            titles.append(f"{stage} {stage_maps.shape[1]}px ch{channel}")
plots.image_grid(tiles, titles, out / "feature_maps.png", ncols=7, cmap="viridis",
                 title="feature maps: one row per stage and input, its 6 strongest channels")

# %% [markdown]
# ## The CNN as a feature extractor
#
# Cut the trained network at its penultimate layer (`features`, 128 values per image) and fit
# a plain logistic regression on those vectors. If the features are good, a linear model on
# top of them does nearly as well as the network; on raw pixels it does much worse. Both
# probes see the same 2,000 training images (a logistic regression on thousands of raw pixel
# values is slow to fit on a CPU).

# %%
extractor = keras.Model(reference.input, reference.get_layer("features").output)
train_features, test_features = predict(extractor, ds.x_train), predict(extractor, ds.x_test)


def linear_probe(x_train, x_test, name, n=2000):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    with warnings.catch_warnings(record=True) as caught:  # our note instead of sklearn's
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train[:n], ds.y_train[:n])
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            print(f"note: the {name} probe stopped at its 200-iteration cap (a time limit) "
                  "before the fit converged")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return float((model.predict(x_test) == ds.y_test).mean())


scores["linear_probe"] = {
    "cnn_features_accuracy": linear_probe(train_features, test_features, "CNN-features"),
    "raw_pixels_accuracy": linear_probe(ds.x_train.reshape(len(ds.x_train), -1) / 255.0,
                                        ds.x_test.reshape(len(ds.x_test), -1) / 255.0,
                                        "raw-pixel"),
}
plots.bars({name: scores[name]["test_accuracy"] for name in models}
           | {"probe_cnn": scores["linear_probe"]["cnn_features_accuracy"],
              "probe_pixels": scores["linear_probe"]["raw_pixels_accuracy"]},
           out / "accuracy.png", "test accuracy", "variants and linear probes")

# %% [markdown]
# ## Results
#
# `metrics.test_accuracy` is the reference network (ReLU, max pooling); every variant has its
# own block with `test_accuracy`, `balanced_accuracy`, `macro_f1`, `shift_consistency` (share of
# predictions unchanged under 1..8 pixel shifts), `shifted_accuracy` and `train_seconds`.

# %%
results = {"test_accuracy": scores[reference_name]["test_accuracy"], **scores}
cli.finish(args, results, args.dataset)
finished.clear()  # results.json is written: a rerun starts a new run
