# %% [markdown]
# # Knowledge distillation: a small student learns from a large teacher
#
# **Description:** a large teacher (the collection's generic pretrained backbone, fine-tuned
# on a task with few labels) guides a student CNN with more than 10 times fewer parameters,
# through Keras's own `keras.distillation.Distiller`. Four rows get the same labelled images
# and the same number of epochs: the **teacher**, the student trained alone (**scratch**),
# the student trained on the teacher's softened class probabilities (**distilled**, with
# `LogitsDistillation`), and the student that also matches one of the teacher's intermediate
# feature maps (**feature_distilled**, with `FeatureDistillation` added). Every student row
# is trained with several seeds, so we can say whether distillation helps beyond
# seed-to-seed noise; a temperature sweep and a sweep of the loss weighting show what the two
# knobs do. We also measure what the student saves: parameters and CPU latency.
#
# **Concepts:** the teacher's probabilities at a temperature T (softmax of logits / T) are
# *soft targets*: besides the right class they say which wrong classes look alike (a star
# is more like a cross than like a ring), information a one-hot label does not carry. The
# student minimises a weighted sum of the usual cross-entropy on the labels (weight alpha)
# and the KL divergence to the teacher's soft targets (weight 1 - alpha, times T^2 so that
# its gradients keep their size as T grows). A smaller model is cheaper to run; distillation
# is one way to keep more of the large model's accuracy at that size.
#
# Run: `make distillation` or `python -m recipes.distillation --help`. In a notebook, pass
# flags through `RECIPE_ARGS` in a cell above the setup cell, e.g.
# `os.environ["RECIPE_ARGS"] = "--seeds 5 --dataset npz:/content/my.npz"` (there it replaces
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
# The flags are read before the heavy imports, so that `--help` answers at once. Every model
# trains `--epochs` epochs of at least 10 steps (a small labelled set is repeated, with
# light augmentation), the teacher included.

# %%
from common import UserError, cli


def number_list(text, flag, kind=float):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"{flag} {text!r}: pass comma-separated numbers, e.g. {flag} 1,2,4,8")
    return values


parser = cli.parser("distillation", "Distil a large teacher CNN into a small student, measured over seeds.",
                    dataset="synthetic:shapes", epochs=20, batch_size=64)
parser.add_argument("--labels-per-class", default="25",
                    help="labelled training images per class (N or 'all'): few labels leave the student "
                    "room to gain from the teacher")
parser.add_argument("--seeds", type=int, default=3,
                    help="seeds per student row (initial weights, shuffling, augmentation); the "
                    "labelled images and the teacher are the same for all")
parser.add_argument("--temperature", type=float, default=4.0, help="softmax temperature T of the distilled rows")
parser.add_argument("--alpha", type=float, default=0.1,
                    help="weight of the labels' cross-entropy; the teacher's term gets 1 - alpha "
                    "(Distiller's student_loss_weight)")
parser.add_argument("--temperatures", default="1,2,4,8", help="temperature sweep (at --alpha)")
parser.add_argument("--alphas", default="0.1,0.5,0.9", help="loss-weighting sweep (at --temperature)")
parser.add_argument("--feature-weight", type=float, default=1.0,
                    help="weight of the feature-map term beside the logits term in feature_distilled")
parser.add_argument("--teacher", default=None, metavar="PATH",
                    help="a saved teacher classifier (.keras, e.g. OUT/teacher.keras of an earlier run) "
                    "instead of fine-tuning the generic backbone")
parser.add_argument("--teacher-layer", default="stage3",
                    help="the teacher layer whose feature maps feature_distilled matches (stride 4)")
parser.add_argument("--student-width", type=int, default=16, help="channels of the student's first convolution")
args = cli.parse_args(parser)

# %%
import math
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from keras.distillation import Distiller, FeatureDistillation, LogitsDistillation
from scipy import stats

from common import backbone as generic
from common import callbacks, data, pipeline, plots, saving

# Every row scores a new model with predict(): TensorFlow then warns about retracing, which
# is expected here and says nothing about the results.
tf.get_logger().setLevel("ERROR")
cli.classifier_commands(args)  # predict / evaluate on the saved student stop here
out = Path(args.out)
temperatures = number_list(args.temperatures, "--temperatures")
alphas = number_list(args.alphas, "--alphas")
if args.seeds < 1 or args.student_width < 1 or args.feature_weight < 0:
    raise UserError("--seeds and --student-width must be at least 1, --feature-weight at least 0")
if min(temperatures + [args.temperature]) <= 0:
    raise UserError("temperatures must be positive (T=1 is the plain softmax)")
if not all(0 <= a <= 1 for a in alphas + [args.alpha]):
    raise UserError("alpha weights the labels' loss against the teacher's: pass values from 0 to 1")
min_steps, latency_runs, num_examples = 10, (200, 30), None
if args.smoke:
    args.epochs, args.seeds, args.labels_per_class = 2, 2, "4"
    temperatures, alphas = [1.0, args.temperature], [args.alpha]
    min_steps, latency_runs, num_examples = 2, (5, 2), 300
temperatures = sorted(set(temperatures) | {args.temperature})
alphas = sorted(set(alphas) | {args.alpha})
seeds = [args.seed + i for i in range(args.seeds)]

# %% [markdown]
# ## Prepare the data
#
# The default `synthetic:shapes` is ten shapes at 32x32 in random colours, textures and
# backgrounds (3,000 training and 600 test images). Only `--labels-per-class` training images
# per class (25 by default: 250 images) keep their labels, chosen once with `--seed`: with so
# few, a small network trained from scratch is far from what the pretrained teacher reaches,
# which leaves room for a gain. Every row trains on these same images; all are scored on the
# whole test set. Any other spec works the same (e.g. `npz:../shared/data/mnist10k.npz`).

# %%
ds = data.require(data.load(args.dataset, seed=args.seed, num_examples=num_examples if
                            args.dataset.startswith("synthetic:") else None),
                  data.Classification, args.dataset)
x_all, y_all = cli.train_subset(args, ds.x_train, ds.y_train)
order = np.random.default_rng(args.seed).permutation(len(y_all))
if args.labels_per_class != "all":
    if not args.labels_per_class.isdigit() or int(args.labels_per_class) < 1:
        raise UserError(f"--labels-per-class {args.labels_per_class!r}: pass a positive integer or 'all'")
    order = np.concatenate([order[y_all[order] == c][: int(args.labels_per_class)] for c in range(ds.num_classes)])
x_train, y_train = x_all[order], y_all[order]
shape = x_train.shape[1:]
steps = max(min_steps, math.ceil(len(x_train) / args.batch_size))
test_ds = pipeline.for_eval(ds.x_test, ds.y_test)
print(f"{args.dataset}: {len(x_train)} labelled training images ({args.labels_per_class} per class), "
      f"{len(ds.x_test)} test images, {ds.num_classes} classes, {'x'.join(map(str, shape))}")
augment = keras.Sequential([keras.layers.RandomTranslation(0.1, 0.1, seed=args.seed),
                           keras.layers.RandomZoom(0.1, seed=args.seed)], name="augment")


# %% [markdown]
# ## The teacher and the student
#
# The **teacher** is the generic backbone (four stages of two 3x3 conv + BatchNorm + ReLU,
# 24 to 192 channels, pretrained on about 800 classes of glyphs and symbols and shipped with
# the repository), with a global-average-pool + dense head that outputs *logits*: the soft
# targets are the softmax of logits / T, so the distiller needs them before any softmax.
# It is fine-tuned as in `recipes/transfer_learning`: a third of the epochs train the head
# on the frozen backbone, then stages 3 and 4 train with it at a lower learning rate
# (BatchNorm frozen). It is built flat (the backbone's layers are the teacher's own), so
# that `FeatureDistillation` can name one of them, `stage3`. It is trained once and shared
# by every student seed; `--teacher PATH` reuses a saved one.
#
# The **student** is three 3x3 conv + BatchNorm + ReLU layers (16, 32, 64 channels, max
# pooling after the first two), a 1x1 convolution to as many channels as the teacher layer
# it mimics (`hint`, 96 for `stage3`), global average pooling and a dense layer to logits.
# Every student row uses exactly this architecture; scratch simply never looks at the
# teacher.

# %%
def teacher_model(num_classes):
    backbone = generic.load_generic(shape, path=generic.WEIGHTS)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone.output)
    features = keras.layers.Dropout(0.2, name="dropout")(features)
    logits = keras.layers.Dense(num_classes, name="logits")(features)
    return keras.Model(backbone.input, logits, name="teacher")


def as_logits(model):
    """A classifier that ends in a softmax, rebuilt to output the logits before it (same
    weights): a saved model of this collection outputs probabilities."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return keras.Model(model.input, last.input, name=model.name)
    if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
        dense = keras.layers.Dense(last.units, name="logits")
        logits = dense(last.input)
        dense.set_weights(last.get_weights())
        return keras.Model(model.input, logits, name=model.name)
    return model


def load_teacher(path):
    """The teacher of --teacher PATH, checked against the data before anything trains."""
    model, _ = saving.load_classifier(path)
    if tuple(model.input_shape[1:]) != tuple(shape):
        raise UserError(f"--teacher {path} takes {model.input_shape[1:]} images, {args.dataset} has "
                        f"{tuple(shape)}: pass a teacher trained on images of this size and channels")
    if model.output_shape[-1] != ds.num_classes:
        raise UserError(f"--teacher {path} predicts {model.output_shape[-1]} classes, {args.dataset} has "
                        f"{ds.num_classes} (the student's output): a teacher must have the student's "
                        "classes, in the same order. Pass a teacher trained on this dataset, or leave out "
                        "--teacher to fine-tune one here")
    return as_logits(model)


def student_model(num_classes, hint_channels):
    inputs = keras.Input(shape, name="images")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    for i, filters in enumerate((args.student_width, 2 * args.student_width, 4 * args.student_width), 1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i < 3:  # "same": ceil(H/2), as the teacher's stride-2 convolutions, for odd sizes too
            x = keras.layers.MaxPooling2D(padding="same", name=f"pool{i}")(x)
    x = keras.layers.ReLU(name="hint")(keras.layers.Conv2D(hint_channels, 1, name="hint_conv")(x))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="student")


teacher = load_teacher(args.teacher) if args.teacher else teacher_model(ds.num_classes)
try:
    teacher_layer = teacher.get_layer(args.teacher_layer)
except ValueError:
    raise UserError(f"the teacher has no layer named {args.teacher_layer!r} for feature_distilled "
                    f"(its top-level layers: {', '.join(layer.name for layer in teacher.layers[-8:])}, ...): "
                    "pass --teacher-layer NAME of a layer with feature maps at 1/4 of the image size") from None
hint_shape = teacher_layer.output.shape
student = student_model(ds.num_classes, hint_shape[-1] if len(hint_shape) == 4 else 1)
if len(hint_shape) != 4 or tuple(hint_shape[1:3]) != tuple(student.get_layer("hint").output.shape[1:3]):
    raise UserError(f"--teacher-layer {args.teacher_layer} outputs {tuple(hint_shape)}; feature_distilled "
                    f"matches it with the student's stride-4 maps {tuple(student.get_layer('hint').output.shape)}: "
                    "pass a layer with feature maps at 1/4 of the image size (generic backbone: stage3)")
print(f"teacher: {teacher.count_params():,} parameters; student: {student.count_params():,} "
      f"({teacher.count_params() / student.count_params():.0f}x fewer); feature_distilled matches "
      f"teacher layer {args.teacher_layer} {tuple(hint_shape[1:])} with the student's hint layer")


# %% [markdown]
# ## Distillation with `keras.distillation.Distiller`
#
# `Distiller(teacher, student, distillation_losses, student_loss_weight=alpha)` freezes the
# teacher, runs it (inference mode) on every training batch beside the student, and
# minimises `alpha * CE(labels, student) + (1 - alpha) * sum(weight_i * loss_i(teacher,
# student))`. The teacher sees the same augmented images as the student in every step, so
# the soft targets always describe the image the student is looking at.
#
# - `LogitsDistillation(T, loss=keras.losses.KLDivergence())`: KL divergence between
#   softmax(teacher logits / T) and softmax(student logits / T), times T^2. Pass the loss
#   *object*: in Keras 3.15 the default, the string `"kl_divergence"`, resolves to the plain
#   function, which the class's KL branch (`isinstance(loss, KLDivergence)`) does not
#   recognise, so neither the softmax nor the T^2 is applied and the "KL" is taken between
#   raw logits / T, clipped to [1e-7, 1] (the tests check this);
# - `FeatureDistillation("mse", teacher_layer_name, student_layer_name)`: mean squared error
#   between two feature maps of the same shape, here the teacher's `stage3` and the
#   student's `hint`, added to the logits term with `--feature-weight`.
#
# Students learn with Adam at 3e-3 (a small network from scratch), the same in every row.

# %%
def logits_distillation(temperature):
    return LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())


def test_accuracy(model):
    return float(np.mean(model.predict(test_ds, verbose=0).argmax(-1) == ds.y_test))


def fit(model, seed, name, learning_rate, first_epoch=0, last_epoch=None):
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(pipeline.for_training(x_train, y_train, args.batch_size, augment=augment, seed=seed).repeat(),
              steps_per_epoch=steps, epochs=last_epoch or args.epochs, initial_epoch=first_epoch,
              verbose=callbacks.verbose(), callbacks=[
                  keras.callbacks.TerminateOnNaN(), keras.callbacks.CSVLogger(str(out / "logs" / f"{name}_log.csv"), append=True),
                  *([plan.callback(name)] if first_epoch == 0 else [keras.callbacks.LambdaCallback(
                      on_epoch_end=lambda epoch, logs: plan.epoch_done())])])


def train_teacher():
    keras.utils.set_random_seed(args.seed)
    head_epochs = max(1, args.epochs // 3)
    for layer in teacher.layers:  # phase 1: the new head alone
        layer.trainable = layer.name in ("logits", "dropout", "pool")
    fit(teacher, args.seed, "teacher", 1e-2, last_epoch=head_epochs)
    for layer in teacher.layers:  # phase 2: stages 3 and 4 too, BatchNorm frozen (inference mode)
        layer.trainable = layer.trainable or (layer.name.startswith(("stage3", "stage4"))
                                              and isinstance(layer, keras.layers.Conv2D))
    fit(teacher, args.seed, "teacher", 3e-4, first_epoch=head_epochs)


def train_student(kind, seed, temperature=None, alpha=None):
    """One student run: its test accuracy, and the student itself."""
    name = f"{kind}_seed{seed}" + (f"_T{temperature:g}_alpha{alpha:g}" if kind == "distilled" else "")
    keras.utils.set_random_seed(seed)  # the same initial student for every row of one seed
    model = student_model(ds.num_classes, student.get_layer("hint").output.shape[-1])
    record, started = finished.load(name, model), time.time()
    if record is None:
        if kind == "scratch":
            fit(model, seed, name, 3e-3)
        else:
            losses, weights = [logits_distillation(temperature)], [1.0]
            if kind == "feature_distilled":
                losses.append(FeatureDistillation("mse", args.teacher_layer, "hint"))
                weights.append(args.feature_weight)
            fit(Distiller(teacher, model, losses, weights, student_loss_weight=alpha), seed, name, 3e-3)
        record = {"accuracy": test_accuracy(model)}
        finished.save(name, model, record)
        print(f"{name:>32}: test accuracy {record['accuracy']:.4f}, {time.time() - started:.0f} s", flush=True)
    return record["accuracy"], model


# %% [markdown]
# ## Train every row
#
# One plan for all runs: the teacher (unless `--teacher`), then for each seed the scratch
# student, the distilled students of the temperature and weighting sweeps (the default T and
# alpha among them: that is the `distilled` row) and the feature-distilled student. A run
# interrupted by Ctrl-C restarts with the same command and loads the runs that had finished.

# %%
configs = sorted({(t, args.alpha) for t in temperatures} | {(args.temperature, a) for a in alphas})
names = (["teacher"] if not args.teacher else []) + [
    n for s in seeds for n in [f"scratch_seed{s}", *[f"distilled_seed{s}_T{t:g}_alpha{a:g}" for t, a in configs],
                               f"feature_distilled_seed{s}"]]
(out / "logs").mkdir(parents=True, exist_ok=True)
finished = callbacks.Finished(out, args)
plan = callbacks.Plan([n for n in names if not (finished.directory / f"{n}.json").is_file()] or ["(all done)"],
                      args.epochs, steps, what="runs")
if args.teacher:
    print(f"teacher: {args.teacher} (not trained here)")
elif finished.load("teacher", teacher) is None:
    started = time.time()
    train_teacher()
    print(f"{'teacher':>32}: trained, {time.time() - started:.0f} s", flush=True)
    finished.save("teacher", teacher, {})
teacher_accuracy = test_accuracy(teacher)
print(f"{'teacher':>32}: test accuracy {teacher_accuracy:.4f}", flush=True)
accuracy = {}  # (kind, T, alpha) -> accuracy per seed
saved_student = None
for seed in seeds:
    accuracy.setdefault(("scratch", None, None), []).append(train_student("scratch", seed)[0])
    for t, a in configs:
        acc, model = train_student("distilled", seed, t, a)
        accuracy.setdefault(("distilled", t, a), []).append(acc)
        if seed == seeds[0] and (t, a) == (args.temperature, args.alpha):
            saved_student = model
    accuracy.setdefault(("feature_distilled", None, None), []).append(
        train_student("feature_distilled", seed, args.temperature, args.alpha)[0])


# %% [markdown]
# ## What the student saves: parameters and latency
#
# Median CPU time of one forward pass (a compiled `tf.function`, inference mode) at batch 1,
# what an application classifying one image at a time sees, and at batch 64, throughput.
# The three student rows share one architecture, so it is measured once for them.

# %%
def latency_ms(model, batch, runs):
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.zeros((batch, *shape))
    for _ in range(3):
        forward(x).numpy()  # trace and warm up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        forward(x).numpy()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


speed = {name: {"params": model.count_params(), "latency_ms_batch1": latency_ms(model, 1, latency_runs[0]),
                "latency_ms_batch64": latency_ms(model, 64, latency_runs[1])}
         for name, model in (("teacher", teacher), ("student", student))}

# %% [markdown]
# ## Results: does distillation beat scratch beyond seed noise?
#
# Each student row is the mean test accuracy over `--seeds` seeds with its standard
# deviation. A student of seed s starts from the same initial weights in every row, so the
# rows differ only in what the student learns from. Whether distilled is above scratch
# beyond noise is judged with Welch's t-test over the seeds (p < 0.05 and a positive
# difference); with three seeds only a clear gain passes it.

# %%
def summary(values):
    return {"test_accuracy": float(np.mean(values)),
            "test_accuracy_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "seeds": len(values)}


def versus_scratch(key):
    a, b = accuracy[key], accuracy[("scratch", None, None)]
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if len(a) > 1 else float("nan")
    gain = float(np.mean(a) - np.mean(b))
    return {"minus_scratch": gain, "p_value": None if math.isnan(p) else p,
            "beats_scratch_beyond_noise": bool(gain > 0 and p < 0.05)}


default = ("distilled", args.temperature, args.alpha)
rows = {"teacher": {**summary([teacher_accuracy]), **speed["teacher"]},
        "scratch": {**summary(accuracy[("scratch", None, None)]), **speed["student"]},
        "distilled": {**summary(accuracy[default]), **speed["student"], **versus_scratch(default),
                      "temperature": args.temperature, "alpha": args.alpha},
        "feature_distilled": {**summary(accuracy[("feature_distilled", None, None)]), **speed["student"],
                              **versus_scratch(("feature_distilled", None, None)),
                              "teacher_layer": args.teacher_layer, "feature_weight": args.feature_weight}}
for row in ("scratch", "distilled", "feature_distilled"):
    key = ("distilled", args.temperature, args.alpha) if row == "distilled" else (row, None, None)
    rows[row]["per_seed"] = {str(s): a for s, a in zip(seeds, accuracy[key])}
sweeps = {"temperature_sweep": {f"{t:g}": summary(accuracy[("distilled", t, args.alpha)]) for t in temperatures},
          "alpha_sweep": {f"{a:g}": summary(accuracy[("distilled", args.temperature, a)]) for a in alphas}}
verdict = rows["distilled"]
print(f"\ndistilled (T={args.temperature:g}, alpha={args.alpha:g}) {verdict['test_accuracy']:.4f} vs scratch "
      f"{rows['scratch']['test_accuracy']:.4f} over {len(seeds)} seeds: "
      f"{verdict['minus_scratch']:+.4f}, Welch p = {verdict['p_value']}: "
      + ("a gain beyond seed noise" if verdict["beats_scratch_beyond_noise"] else "NOT beyond seed noise"))

# %% [markdown]
# ## Plots and the saved student
#
# `rows.png`: test accuracy per row, mean and standard deviation over the seeds (the teacher:
# one run). `sweeps.png`: the distilled student against the temperature and against alpha,
# with scratch and the teacher as reference lines. `soft_targets.png`: what the student is
# taught: the teacher's class probabilities for a few test images at each temperature.
# The distilled student of the first seed is saved as `OUT/model.keras` (with a softmax at
# the end, so that it outputs probabilities) for `predict` and `evaluate`; the teacher as
# `OUT/teacher.keras` (logits), reusable with `--teacher`.

# %%
order_rows = ["teacher", "scratch", "distilled", "feature_distilled"]
fig, ax = plt.subplots(figsize=(6.4, 3.8))
means = [rows[r]["test_accuracy"] for r in order_rows]
ax.bar(order_rows, means, color=[f"C{i}" for i in range(4)])
ax.errorbar(order_rows[1:], means[1:], yerr=[rows[r]["test_accuracy_std"] or 0 for r in order_rows[1:]],
            fmt="none", ecolor="black", capsize=6)
for i, r in enumerate(order_rows):
    top = means[i] + (rows[r]["test_accuracy_std"] or 0)
    ax.text(i, top + 0.02, f"{means[i]:.3f}\n{rows[r]['params'] / 1000:.0f}k params", ha="center", fontsize=8)
ax.set(ylabel="test accuracy", ylim=(0, 1.1), title=f"{args.dataset}, {args.labels_per_class} labels per class "
       f"(mean ± std over {len(seeds)} seeds; teacher: 1 run)")
ax.title.set_fontsize(9)
plots.save(fig, out / "rows.png")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, (title, sweep, xs) in zip(axes, (("temperature T", "temperature_sweep", temperatures), ("alpha (weight of the labels)", "alpha_sweep", alphas))):
    points = [sweeps[sweep][f"{v:g}"] for v in xs]
    ax.errorbar(xs, [p["test_accuracy"] for p in points], yerr=[p["test_accuracy_std"] or 0 for p in points],
                fmt="o-", capsize=4, color="C2", label="distilled")
    mean, std = rows["scratch"]["test_accuracy"], rows["scratch"]["test_accuracy_std"] or 0
    ax.axhline(mean, color="C1", label="scratch (± std)")
    ax.axhspan(mean - std, mean + std, color="C1", alpha=0.15)
    ax.axhline(teacher_accuracy, color="C0", linestyle="--", label="teacher")
    if sweep == "temperature_sweep":
        ax.set_xscale("log", base=2)
    ax.minorticks_off()  # only the swept values are labelled
    ax.set(xlabel=title, xticks=xs, xticklabels=[f"{v:g}" for v in xs])
    ax.grid(alpha=0.3)
axes[0].set(ylabel="test accuracy", title=f"alpha = {args.alpha:g}")
axes[1].set(title=f"T = {args.temperature:g}")
axes[0].legend(fontsize=8, loc="best")
plots.save(fig, out / "sweeps.png")

teacher_logits = teacher.predict(ds.x_test[:4].astype("float32"), verbose=0)
fig, axes = plt.subplots(1, 4, figsize=(13, 3), sharey=True)
for ax, logits, label in zip(axes, teacher_logits, ds.y_test[:4]):
    for i, t in enumerate(temperatures):
        ax.plot(range(ds.num_classes), keras.ops.convert_to_numpy(keras.ops.softmax(logits / t)), "o-",
                markersize=3, color=plt.cm.viridis(i / max(1, len(temperatures) - 1)), label=f"T={t:g}")
    ax.set_xticks(range(ds.num_classes), ds.class_names, rotation=90, fontsize=7)
    ax.set_title(f"true: {ds.class_names[label]}", fontsize=9)
axes[0].set_ylabel("teacher probability")
axes[0].legend(fontsize=7)
plots.save(fig, out / "soft_targets.png")

teacher.save(out / "teacher.keras")
probabilities = keras.layers.Softmax(name="probabilities")(saved_student.output)
saving.save_classifier(keras.Model(saved_student.input, probabilities, name="student"), out, ds.class_names)
y_pred = saved_student.predict(test_ds, verbose=0).argmax(-1)
plots.confusion_matrix(ds.y_test, y_pred, ds.class_names, out / "confusion.png",
                       title=f"distilled student (seed {seeds[0]})")
labels = int(args.labels_per_class) if args.labels_per_class.isdigit() else args.labels_per_class
cli.finish(args, {**rows, **sweeps, "labels_per_class": labels, "train_images": len(x_train),
                  "test_images": len(ds.x_test), "compression": teacher.count_params() / student.count_params(),
                  "teacher_trained_here": not args.teacher}, args.dataset)
finished.clear()  # results.json is written: nothing left to resume
