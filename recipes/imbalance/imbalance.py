# %% [markdown]
# # Class imbalance: eight ways to train on a long-tailed dataset, measured
#
# **Description:** take a balanced image dataset, throw most of its rare classes away to make
# a long-tailed training set (class sizes fall exponentially from the head class to a tail
# that is `--ratio` times smaller, 100:1 by default), keep the test set balanced, and compare
# eight ways of training a small CNN on it: the plain baseline, oversampling, undersampling,
# class weights, focal loss, oversampling with heavier augmentation of the rare classes,
# post-hoc logit adjustment and a small bagging ensemble. Each method is scored by balanced
# accuracy, macro-F1, the recall of the rarest classes and per-class PR-AUC.
#
# **Concepts:** a network trained on skewed data learns the skew - it predicts the frequent
# classes and the rare classes lose recall. The remedies act at three places: on the *data*
# (resample it so that every class is seen equally often, or augment the rare classes -
# shifts, zooms, contrast and occluding patches - so that their few images count for more), on
# the *loss* (weight each class by its rarity, or focus on hard examples with focal loss), and
# on the *decision* (move the decision threshold towards the rare classes after training, or
# average an ensemble trained on different resampled subsets). Global pooling lets one model
# take any image size.
#
# Run: `make imbalance` or `python -m recipes.imbalance --help`. In a notebook, pass flags in
# a cell above the setup cell:
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
import math

from common import UserError, cli

METHODS = ("baseline", "oversample", "undersample", "class_weight", "focal", "minority_augment",
           "logit_adjust", "ensemble")
TAIL_SHARE = 0.3  # "minority classes" = the rarest 30% of classes by training count
# synthetic:shapes is generated at the size asked for: --train-size balanced training images,
# 6,000 when not given (600 per class before the long tail is cut), and a fifth as many test images.
SYNTHETIC_TRAIN_SIZE = 6000

parser = cli.parser(
    "imbalance", dataset="synthetic:shapes", epochs=50, batch_size=64, budget_steps=1200,
    description="Train on a long-tailed dataset: eight remedies compared. --train-size applies "
                "to the balanced training split before the long tail is cut; synthetic:shapes "
                f"is generated with --train-size images ({SYNTHETIC_TRAIN_SIZE:,} when not "
                "given). An epoch is one pass over the long-tailed set; the default budget, "
                "about 1,200 optimisation steps per training, is 50 epochs on the default data "
                "(1,489 long-tailed images at batch 64) and fewer on larger datasets.")
parser.add_argument("--ratio", type=float, default=100.0,
                    help="imbalance ratio: head class size / tail class size (>= 1)")
parser.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated subset of: " + ", ".join(METHODS))
parser.add_argument("--image-size", type=int, default=None,
                    help="resize images to N x N; None keeps the dataset's own size")
parser.add_argument("--tau", type=float, default=1.0,
                    help="logit adjustment strength: logits - tau * log(class prior)")
parser.add_argument("--ensemble-size", type=int, default=3, help="members of the bagging ensemble")
args = cli.parse_args(parser)
cli.classifier_commands(args)  # `predict` / `evaluate`: runs the saved model and stops here

methods = [m.strip() for m in args.methods.split(",") if m.strip()]
unknown = [m for m in methods if m not in METHODS]
if unknown or not methods:
    raise UserError(f"unknown method(s) {', '.join(unknown) or '(none given)'} in --methods; "
                    f"valid methods: {', '.join(METHODS)}")
if not (math.isfinite(args.ratio) and args.ratio >= 1):
    raise UserError(f"--ratio must be a number >= 1 (head class size / tail class size), got "
                    f"{args.ratio}; 1 means balanced, 100 means the rarest class is 100x smaller")
if args.ensemble_size < 1 or not math.isfinite(args.tau):
    raise UserError("--ensemble-size must be at least 1 and --tau a finite number")
if args.smoke:
    args.epochs, args.ensemble_size, args.batch_size = 2, 2, 32
    args.train_size = min(args.train_size or 600, 600)

# %%
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.metrics import average_precision_score

from common import callbacks, data, metrics, pipeline, plots, results, saving

out = Path(args.out)

# %% [markdown]
# ## Prepare the data: a long-tailed training set, a balanced test set
#
# The source dataset is (roughly) balanced. We keep `n_c = n_head * ratio^(-c / (K - 1))`
# training images of class `c` (class 0 is the head, class K-1 the tail), where `n_head` is
# the size of the smallest source class, so every class can supply its share. The test set
# is left alone: balanced, so that plain test accuracy there equals balanced accuracy, and a
# method cannot score by favouring the head. `--train-size N` first keeps a class-balanced
# subset of N images of the source training split (on any dataset; synthetic:shapes is simply
# generated with N images).

# %%
synthetic = {"num_examples": args.train_size or SYNTHETIC_TRAIN_SIZE} if args.dataset.startswith(
    "synthetic:") else {}
ds = data.require(data.load(args.dataset, seed=args.seed, image_size=args.image_size,
                            **synthetic), data.Classification, args.dataset)
ds.x_train, ds.y_train = cli.train_subset(args, ds.x_train, ds.y_train)
K, names = ds.num_classes, ds.class_names
if K < 2:
    raise UserError(f"{args.dataset} has {K} class; imbalance needs at least 2")
available = np.bincount(ds.y_train, minlength=K)
test_counts = np.bincount(ds.y_test, minlength=K)
for c in range(K):
    if available[c] == 0 or test_counts[c] == 0:
        split = "training" if available[c] == 0 else "test"
        raise UserError(f"class {names[c]!r} has no {split} examples in {args.dataset}; add "
                        "images of it or remove the class")
n_head = int(available.min())
counts = np.round(n_head * args.ratio ** (-np.arange(K) / (K - 1))).astype(int)
if counts.min() < 1:
    empty = ", ".join(repr(names[c]) for c in np.flatnonzero(counts < 1))
    raise UserError(f"--ratio {args.ratio:g} would leave class(es) {empty} with no training "
                    f"examples: the head class keeps {n_head}, so the largest ratio is about "
                    f"{n_head}; lower --ratio or use more data (synthetic: a larger --train-size)")

rng = np.random.default_rng(args.seed)
keep = np.concatenate([rng.choice(np.flatnonzero(ds.y_train == c), counts[c], replace=False)
                       for c in range(K)])
x_train, y_train = ds.x_train[keep], ds.y_train[keep]
x_test, y_test = ds.x_test, ds.y_test
prior = counts / counts.sum()
tail = np.argsort(counts, kind="stable")[: max(1, round(TAIL_SHARE * K))]
if args.smoke:  # the tests' tiny datasets: no batch larger than the long-tailed set
    args.batch_size = min(args.batch_size, len(y_train))
# An epoch is one pass over the long-tailed set; with the default --epochs (auto), the data
# size sets the number of epochs (about 1,200 optimisation steps per training).
steps = cli.training_budget(args, len(y_train))
if args.smoke:
    steps = 20  # enough for the tests' easy tasks, still seconds per method
print(f"long-tailed train set: {len(y_train)} images, {counts.max()}..{counts.min()} per class "
      f"(ratio {args.ratio:g}); balanced test set: {len(y_test)} images; shape "
      f"{x_train.shape[1:]}; minority classes: {[names[c] for c in tail]}; {args.epochs} "
      f"epochs of {steps} steps per training")

fig, ax = plt.subplots(figsize=(max(5, 0.5 * K + 2), 3.4))
ax.bar(np.arange(K) - 0.2, counts, 0.4, label="train (long-tailed)")
ax.bar(np.arange(K) + 0.2, test_counts, 0.4, label="test (balanced)")
ax.set_yscale("log")
ax.set_xticks(range(K), names, rotation=45, ha="right")
ax.set_ylabel("images (log scale)")
ax.set_title(f"class sizes, imbalance ratio {args.ratio:g}")
ax.legend()
plots.save(fig, out / "class_histogram.png")

# %% [markdown]
# ## Build the model and the training streams
#
# A small CNN (three conv-BN-ReLU-pool blocks, global average pooling) that takes raw [0, 255]
# images of any size and either one or three channels. Its last Dense layer is named `logits`:
# logit adjustment later edits its bias. Every method trains for the same number of gradient
# steps (`--epochs` passes over the long-tailed set), so the comparison is at equal compute.
#
# Oversampling uses `tf.data.Dataset.sample_from_datasets` over one endlessly repeating
# dataset per class with equal weights: every batch is class-balanced in expectation, and
# the rare images are simply seen more often.


# %%
def build_model(name: str) -> keras.Model:
    inputs = keras.Input(x_train.shape[1:])
    x = layers.Rescaling(1 / 255)(inputs)
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(padding="same")(x)  # "same": odd and tiny sizes never vanish
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(K, name="logits")(x)
    return keras.Model(inputs, layers.Softmax()(logits), name=name)


def shuffled(x, y, seed, one_hot=False):
    """The long-tailed data as it is (or a resampled copy), reshuffled each pass."""
    return pipeline.for_training(x, y, args.batch_size, seed=seed,
                                 num_classes=K if one_hot else None).repeat()


# Heavier augmentation for rare classes: an image of class c is augmented with probability
# 1 - n_c / n_head (never for the head class, almost always for the tail). No flips and only
# +-11 degrees of rotation: flips change digits and letters, and a square turned by 45
# degrees is a diamond.
# Random erasing hides part of the object (occlusion), so the few tail images cannot be
# recognised by one memorised detail.
augmentations = [layers.RandomTranslation(0.12, 0.12), layers.RandomRotation(0.03),
                 layers.RandomZoom(0.15), layers.RandomContrast(0.3), layers.RandomBrightness(0.2),
                 layers.RandomErasing(factor=0.5, scale=(0.02, 0.15))]
if x_train.shape[-1] == 3:  # colour jitter needs RGB; grayscale data goes without
    augmentations += [layers.RandomHue(0.1), layers.RandomSaturation((0.3, 0.7))]
augmenter = keras.Sequential(augmentations)
augment_probability = tf.constant(1 - counts / counts.max(), tf.float32)
# The choice of images to augment draws through a Keras SeedGenerator, like the layers, so
# the pipeline can give each batch its own stateless seeds: parallel and reproducible.
choice_seed = keras.random.SeedGenerator(args.seed)


def augment_minority(images, labels):
    chosen = (keras.random.uniform(tf.shape(labels), seed=choice_seed)
              < tf.gather(augment_probability, labels))
    augmented = augmenter(images, training=True)
    return tf.where(chosen[:, None, None, None], augmented, images), labels


def balanced(x, y, seed, augment=False):
    """Class-balanced batches: sample_from_datasets over one repeating dataset per class."""
    per_class = [tf.data.Dataset.from_tensor_slices((x[y == c], y[y == c]))
                 .shuffle(counts[c], seed=seed + c).repeat() for c in range(K)]
    stream = tf.data.Dataset.sample_from_datasets(per_class, [1 / K] * K, seed=seed)
    stream = stream.batch(args.batch_size).map(lambda i, t: (tf.cast(i, tf.float32), t))
    if augment:
        stream = pipeline.augmented(stream, augment_minority, seed)  # all cores, reproducible
    return stream.prefetch(tf.data.AUTOTUNE)


def compiled_model(name, loss="sparse_categorical_crossentropy"):
    model = build_model(name)
    # Cosine decay to zero: the final weights are a settled model, not one noisy step.
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps * args.epochs)
    model.compile(keras.optimizers.Adam(schedule), loss, metrics=["accuracy"])
    return model


# %% [markdown]
# ## Train each method
#
# * **baseline** - the long-tailed data as it is, cross-entropy.
# * **oversample** - class-balanced batches (above).
# * **undersample** - every class cut down to the tail's size: balanced but tiny.
# * **class_weight** - each example's loss weighted by `n / (K n_c)` (Keras `class_weight`).
# * **focal** - `CategoricalFocalCrossentropy` (gamma 2): easy, confidently right examples
#   (mostly the head) contribute little, hard ones dominate.
# * **minority_augment** - oversampling plus the class-dependent augmentation above, so the
#   repeated tail images are not the same pixels every time.
# * **logit_adjust** - no retraining: the baseline's logits minus `tau * log(prior)` (Menon et
#   al., 2021), which moves the decision threshold towards the rare classes. On a linear last
#   layer that is a bias shift, so the adjusted model is an ordinary Keras model.
# * **ensemble** - bagging: `--ensemble-size` members trained on different class-balanced
#   bootstrap samples (each draws a different subset of the head and repeats the tail),
#   probabilities averaged. It costs `--ensemble-size` times the training of the others.

# %%
# What to train: a training stream (and a loss or class weights) per model.
seed = args.seed
trainings = {}
if "baseline" in methods or "logit_adjust" in methods:  # logit_adjust edits the baseline
    trainings["baseline"] = {"stream": shuffled(x_train, y_train, seed)}
if "oversample" in methods:
    trainings["oversample"] = {"stream": balanced(x_train, y_train, seed)}
if "undersample" in methods:
    few = np.concatenate([rng.choice(np.flatnonzero(y_train == c), counts.min(), replace=False)
                          for c in range(K)])
    trainings["undersample"] = {"stream": shuffled(x_train[few], y_train[few], seed)}
if "class_weight" in methods:
    trainings["class_weight"] = {"stream": shuffled(x_train, y_train, seed), "class_weight": {
        c: len(y_train) / (K * counts[c]) for c in range(K)}}
if "focal" in methods:  # the Keras focal loss takes one-hot labels
    trainings["focal"] = {"stream": shuffled(x_train, y_train, seed, one_hot=True), "one_hot": True,
                          "loss": keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0)}
if "minority_augment" in methods:
    trainings["minority_augment"] = {"stream": balanced(x_train, y_train, seed, augment=True)}
if "ensemble" in methods:
    p = 1 / counts[y_train]
    for i in range(args.ensemble_size):
        bag = rng.choice(len(y_train), len(y_train), replace=True, p=p / p.sum())
        trainings[f"ensemble_member{i}"] = {"stream": shuffled(x_train[bag], y_train[bag],
                                                               seed + i)}

# After an interrupt, the same command resumes: the trainings that had finished are loaded,
# not redone, and the interrupted one continues from its last epoch.
finished = callbacks.Finished(out, args)
trained = {name: compiled_model(name, spec.get("loss", "sparse_categorical_crossentropy"))
           for name, spec in trainings.items()}
records = {name: finished.load(name, trained[name]) for name in trainings}  # None: to train
to_train = [name for name in trainings if records[name] is None]
plan = callbacks.Plan(to_train, args.epochs, steps, what="trainings")
# The balanced test set as validation: val_accuracy is the balanced accuracy per epoch.
val = pipeline.for_eval(x_test, y_test)
val_one_hot = pipeline.for_eval(x_test, y_test, num_classes=K)
for name in to_train:
    spec, started = trainings[name], time.time()
    history = trained[name].fit(
        spec["stream"], steps_per_epoch=steps, epochs=args.epochs,
        validation_data=val_one_hot if spec.get("one_hot") else val,
        class_weight=spec.get("class_weight"),
        callbacks=[plan.callback(name), *callbacks.standard(out, name, args)],
        shuffle=False, verbose=callbacks.verbose())  # the streams shuffle themselves
    records[name] = {"history": history.history, "seconds": round(time.time() - started, 1)}
    finished.save(name, trained[name], records[name])
    print(f"  trained {name}: {records[name]['seconds']:.0f} s, final val balanced accuracy "
          f"{history.history['val_accuracy'][-1]:.3f}")
histories = {name: record["history"] for name, record in records.items()}

models = {name: model for name, model in trained.items() if name in methods}
if "logit_adjust" in methods:
    adjusted = keras.models.clone_model(trained["baseline"])
    adjusted.set_weights(trained["baseline"].get_weights())
    kernel, bias = adjusted.get_layer("logits").get_weights()
    adjusted.get_layer("logits").set_weights([kernel, bias - args.tau * np.log(prior)])
    models["logit_adjust"] = adjusted
if "ensemble" in methods:
    inputs = keras.Input(x_train.shape[1:])
    averaged = layers.Average()([trained[f"ensemble_member{i}"](inputs)
                                 for i in range(args.ensemble_size)])
    models["ensemble"] = keras.Model(inputs, averaged, name="ensemble")

# %% [markdown]
# ## Evaluate on the balanced test set
#
# Balanced accuracy is the mean per-class recall; macro-F1 also punishes the false positives
# that a method buys when it pushes predictions towards the rare classes; `minority_recall` is
# the mean recall of the rarest 30% of classes (by training count); PR-AUC (average precision,
# one class against the rest) scores the ranking of each class's probability, independent of
# any threshold.

# %%
def probabilities(model, x, batch_size=256):
    """The model's class probabilities, batch by batch. The model is called directly: predict()
    would trace a new tf.function for every model (and TensorFlow warns about retracing)."""
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch_size].astype("float32"),
                                                             training=False))
                           for i in range(0, len(x), batch_size)])


scores, per_class = {}, {}
for method in methods:
    probs = probabilities(models[method], x_test)
    y_pred = probs.argmax(-1)
    recall = metrics.per_class_recall(y_test, y_pred, K)
    pr_auc = np.array([average_precision_score(y_test == c, probs[:, c]) for c in range(K)])
    scores[method] = {**metrics.classification(y_test, y_pred, K),
                      "minority_recall": float(recall[tail].mean()),
                      "macro_pr_auc": float(pr_auc.mean()),
                      "minority_pr_auc": float(pr_auc[tail].mean())}
    per_class[method] = {"recall": dict(zip(names, recall.round(4).tolist())),
                         "pr_auc": dict(zip(names, pr_auc.round(4).tolist()))}
    plots.confusion_matrix(y_test, y_pred, names, out / f"confusion_{method}.png",
                           title=f"{method}: balanced accuracy "
                                 f"{scores[method]['balanced_accuracy']:.3f}")

# %% [markdown]
# ## Plots: per-method balanced accuracy, per-class recall, training curves

# %%
plots.bars({m: s["balanced_accuracy"] for m, s in scores.items()}, out / "balanced_accuracy.png",
           "balanced accuracy", f"balanced test set, train ratio {args.ratio:g}")
recall_table = np.array([list(per_class[m]["recall"].values()) for m in methods])
fig, ax = plt.subplots(figsize=(max(5, 0.6 * K + 3), 0.45 * len(methods) + 1.5))
ax.imshow(recall_table, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
for (i, j), value in np.ndenumerate(recall_table):
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
ax.set_xticks(range(K), [f"{n}\n({c})" for n, c in zip(names, counts)], fontsize=7)
ax.set_yticks(range(len(methods)), methods)
ax.set_title("test recall per class (train count in brackets; head left, tail right)")
plots.save(fig, out / "per_class_recall.png")
plots.training_curves({name: {"val_accuracy": h["val_accuracy"]} for name, h in histories.items()},
                      out / "training_curves.png", metrics=("accuracy",),
                      title="balanced test accuracy per epoch")

# %% [markdown]
# ## Save the best model and report
#
# The method with the best balanced accuracy is saved as `OUT/model.keras` (for `predict` and
# `evaluate`). `results.json` also records the class sizes and the per-class numbers.

# %%
best = max(scores, key=lambda m: scores[m]["balanced_accuracy"])
saving.save_classifier(models[best], out, names)
for method in methods:
    row = scores[method]
    print(f"{method:>16}  balanced acc {row['balanced_accuracy']:.3f}  macro-F1 "
          f"{row['macro_f1']:.3f}  minority recall {row['minority_recall']:.3f}  "
          f"macro PR-AUC {row['macro_pr_auc']:.3f}")
verdict = f"best: {best} (balanced accuracy {scores[best]['balanced_accuracy']:.3f})"
if "baseline" in scores:
    gain = scores[best]["balanced_accuracy"] - scores["baseline"]["balanced_accuracy"]
    scores["best_gain_over_baseline"] = gain
    verdict += f", {gain:+.3f} over the baseline ({scores['baseline']['balanced_accuracy']:.3f})"
print(verdict)
# results.write (what cli.finish calls) with the extra fields this recipe records.
path = results.write(out, args.recipe, args.dataset, scores, time.time() - args.started, vars(args),
                     best_method=best, train_counts=dict(zip(names, counts.tolist())),
                     minority_classes=[names[c] for c in tail], per_class=per_class)
print(results.summary(scores, f"imbalance on {args.dataset} ({time.time() - args.started:.0f} s)"))
print(f"wrote {path}")
finished.clear()  # results.json is written: nothing left to resume
