# %% [markdown]
# # Pretraining a generic backbone offline: many classes of glyphs, symbols and textures
#
# **Description:** pretrain a small convolutional backbone on a large, varied synthetic corpus
# (about 800 classes of letters, symbols, pictograms and line art, drawn in 16 fonts at random
# sizes, rotations, shears and stroke weights, filled or outlined, over textured and cluttered
# backgrounds, in colour and in gray), then keep only its convolutional layers. The result is
# the collection's **generic backbone**, shipped in `common/weights/` and loaded with
# `--weights generic` by the recipes that reuse a backbone (transfer learning, embeddings, and
# detectors or segmenters that want a pretrained encoder).
#
# **Concepts:** a network's early and middle layers learn edges, strokes, corners, blobs and
# textures: features that are useful far beyond the classes they were trained on. How far they
# transfer depends on how large and varied the source task is; a network pretrained on six
# shapes learns features for six shapes. Many classes and strong variation force general
# features, the reason ImageNet pretraining works. Offline, without ImageNet, a procedurally
# drawn corpus is the next best thing, and we *measure* what it is worth: a linear probe on
# frozen features of datasets the backbone never saw, against the same probe on random features
# and on raw pixels.
#
# Run: `make pretrain` (writes `runs/pretrain/` and replaces the shipped weights) or
# `python -m recipes.pretrain --help`. In a notebook, pass flags through `RECIPE_ARGS` in a cell
# above the setup cell, e.g. `os.environ["RECIPE_ARGS"] = "--num-examples 20000 --epochs 2"`
# (there it replaces the command line; empty or unset: the defaults).

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
# Read before the heavy imports, so that `--help` answers at once. `--ship` copies the trained
# backbone over the shipped weights, with a provenance record beside them (`make pretrain`
# passes it; a plain run only writes to `--out`).

# %%
from common import UserError, cli

parser = cli.parser("pretrain", "Pretrain the generic backbone on a large synthetic corpus.",
                    dataset="synthetic:glyphs", epochs=5, batch_size=128)
parser.add_argument("--num-examples", type=int, default=80_000,
                    help="synthetic:glyphs only: corpus images drawn for training (a fresh set "
                         "of a twentieth as many validates)")
parser.add_argument("--image-size", type=int, default=32, help="corpus image size in pixels")
parser.add_argument("--max-classes", type=int, default=None,
                    help="synthetic:glyphs only: keep this many glyph classes, evenly spread "
                         "over the Unicode blocks (default: all, about 800)")
parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
parser.add_argument("--probe", default="synthetic:shapes",
                    help="dataset for the linear probe of the frozen features (classification "
                         "spec; its images are never used for pretraining)")
parser.add_argument("--ship", action="store_true",
                    help="replace common/weights/generic_backbone.weights.h5 and its record")
args = cli.parse_args(parser)
if args.command == "evaluate" and args.dataset == "synthetic:glyphs":
    # The corpus is not a `data.load` spec: score the glyph classifier on freshly drawn images
    # of its classes (10 per class, the validation seed stream), then stop.
    import time

    from common import metrics, results, saving, synthetic

    model, class_names = saving.load_classifier(args.model)
    glyphs = synthetic.glyph_classes(len(class_names))
    if [char for char, _ in glyphs] != class_names:
        raise UserError(f"{args.model} does not classify the synthetic:glyphs corpus (its "
                        f"{len(class_names)} class names differ): evaluate it on its own dataset")
    x, y, _ = synthetic.make_glyphs(10 * len(class_names), model.input_shape[1], [args.seed, 1],
                                    glyphs)
    y_pred = model.predict(x.astype("float32"), batch_size=args.batch_size, verbose=0).argmax(-1)
    scores = metrics.classification(y, y_pred, len(class_names))
    results.write(args.out, args.recipe, args.dataset, scores, time.time() - args.started,
                  vars(args), model=str(args.model))
    print(results.summary(scores, f"evaluate {args.model} on {args.dataset}"))
    raise SystemExit
cli.classifier_commands(args)  # `predict`, or `evaluate` on another dataset, then stop
if min(args.num_examples, args.image_size) < 1 or (
        args.max_classes is not None and args.max_classes < 2):
    raise UserError("valid values: --num-examples >= 1, --image-size >= 1, --max-classes >= 2")
probe_train, probe_test = 2000, 1000
if args.smoke:  # every code path in well under a minute of training
    args.num_examples, args.epochs, args.max_classes = 2000, 2, args.max_classes or 40
    probe_train, probe_test = 400, 200

# %%
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import backbone, callbacks, data, pipeline, plots, results, saving, synthetic

out = Path(args.out)

# %% [markdown]
# ## The corpus
#
# `synthetic:glyphs` (the default) draws its classes from Unicode blocks of letters (Latin,
# Greek, Cyrillic), arrows, mathematical operators, technical symbols, box drawing, pictograms
# (weather, chess, music, tools, hands, ...) and dingbats, each rendered with the fonts
# matplotlib ships (DejaVu Sans, Serif and Mono, STIX; 16 files), so every clone draws the same
# images. Look-alike characters (Latin A, Greek Alpha, Cyrillic A) are merged into one class by
# comparing thumbnails. **Digits, and every glyph whose Unicode name says circle, ring, square,
# triangle, diamond, hexagon, star, cross or crescent, are left out**: the digit datasets and the
# `synthetic:shapes` classes stay unseen, so transferring to them is a real test.
#
# Each image: a random font, size (45-90% of the image), position, rotation (±20°), shear,
# stroke weight; filled or outlined; solid or textured ink of a colour that contrasts with a
# plain, gradient, noise, striped or checkered background; clutter strokes behind the glyph;
# a third of the images in gray; noise and blur. Image `i` has class `i mod K` in a shuffled
# order (balanced classes); the same `--seed` draws the same corpus on any machine with the
# same package versions.
# Any other classification spec (`folder:DIR`, `npz:FILE`, `tfds:NAME`) pretrains on your data.

# %%
started = time.time()
if args.dataset == "synthetic:glyphs":
    glyphs = synthetic.glyph_classes(args.max_classes)
    class_names = [char for char, _ in glyphs]
    x_train, y_train, _ = synthetic.make_glyphs(args.num_examples, args.image_size, args.seed,
                                                glyphs)
    # validation: fresh images from another seed stream, never trained on
    x_val, y_val, _ = synthetic.make_glyphs(max(args.num_examples // 20, len(glyphs)),
                                            args.image_size, [args.seed, 1], glyphs)
else:
    ds = data.require(data.load(args.dataset, seed=args.seed, image_size=args.image_size,
                                channels=3), data.Classification, args.dataset)
    class_names, x_train, y_train = ds.class_names, ds.x_train, ds.y_train
    x_val, y_val = ds.x_test, ds.y_test
x_train, y_train = cli.train_subset(args, x_train, y_train)
corpus_seconds = time.time() - started
num_classes = len(class_names)
steps_per_epoch = cli.training_budget(args, len(x_train))
print(f"corpus: {len(x_train):,} training and {len(x_val):,} validation images of "
      f"{num_classes} classes, {x_train.shape[1]}x{x_train.shape[2]}, drawn in {corpus_seconds:.0f} s")
plots.image_grid(x_train[:48], [class_names[c] for c in y_train[:48]], out / "corpus.png",
                 ncols=12, title=f"pretraining corpus: {num_classes} classes")

# %% [markdown]
# ## The backbone and its training head
#
# `common.backbone.generic_backbone`: four stages of two 3x3 conv-BatchNorm-ReLU layers
# (24, 48, 96, 192 channels; stages 2-4 start with stride 2), 0.66 M parameters, raw
# [0, 255] pixels in (the rescaling is inside), feature maps at 1/8 of the input size out.
# Fully convolutional, so the same weights serve 28-pixel digits and 64-pixel scenes. For
# pretraining only, a head pools the last feature map and classifies; afterwards only the
# backbone is kept.

# %%
net = backbone.generic_backbone((x_train.shape[1], x_train.shape[2], 3))
inputs = keras.Input(net.input_shape[1:])
pooled = keras.layers.GlobalAveragePooling2D(name="pool")(net(inputs))
logits = keras.layers.Dense(num_classes, name="classes")(keras.layers.Dropout(0.2)(pooled))
model = keras.Model(inputs, logits, name="pretrain_classifier")
print(f"backbone: {net.count_params():,} parameters; head: {num_classes} classes")

# %% [markdown]
# ## Pretrain
#
# AdamW with a short warm-up and cosine decay, label smoothing 0.1 (with hundreds of classes,
# some nearly alike, hard targets would overfit to the corpus's quirks), small random shifts
# and zooms on top of the corpus's own variation. Top-1 and top-5 accuracy on the fresh
# validation images are the pretext task's score. Ctrl-C, then the same command: training
# resumes from the last epoch.

# %%
total_steps = args.epochs * steps_per_epoch
schedule = keras.optimizers.schedules.CosineDecay(
    0.0, total_steps - min(500, total_steps // 10), warmup_target=args.learning_rate,
    warmup_steps=min(500, total_steps // 10))
model.compile(keras.optimizers.AdamW(schedule, weight_decay=5e-4),
              keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
              metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                       keras.metrics.TopKCategoricalAccuracy(5, name="top5")])
augment = keras.Sequential([keras.layers.RandomTranslation(0.08, 0.08),
                            keras.layers.RandomZoom(0.15)], name="augment")
train = pipeline.for_training(x_train, y_train, args.batch_size, augment=augment,
                              seed=args.seed, num_classes=num_classes)
val = pipeline.for_eval(x_val, y_val, num_classes=num_classes)
plan = callbacks.Plan(["pretrain"], args.epochs, steps_per_epoch)
fit_started = time.time()
history = model.fit(train, validation_data=val, epochs=args.epochs, verbose=callbacks.verbose(),
                    callbacks=[plan.callback("pretrain"),
                               *callbacks.standard(out, "pretrain", args)])
train_seconds = time.time() - fit_started
plots.training_curves({"pretrain": history.history}, out / "training_curves.png",
                      metrics=("loss", "accuracy", "top5"),
                      title=f"pretext task: {num_classes}-way classification")
val_scores = model.evaluate(val, verbose=0, return_dict=True)
saving.save_classifier(model, out, class_names)
net.save_weights(out / "backbone.weights.h5")

# %% [markdown]
# ## What the features are worth: a linear probe on data the backbone never saw
#
# The standard test of a representation: freeze it, pool its last feature map into one
# 192-number vector per image, and fit a logistic regression on a few thousand images of an
# *unseen* dataset (default `synthetic:shapes`, none of whose shapes are in the corpus; try
# `--probe npz:../shared/data/mnist10k.npz` for real digits, also absent from the corpus).
# The same probe on the same architecture with random weights, and on raw pixels, says how much
# of the score the pretraining earned.

# %%
probe = data.require(data.load(args.probe, seed=args.seed, num_examples=(
    probe_train if args.probe.startswith("synthetic:") else None)),
    data.Classification, args.probe)
px_train, py_train = cli.train_subset(SimpleNamespace(train_size=probe_train, seed=args.seed),
                                      probe.x_train, probe.y_train)
px_test, py_test = probe.x_test[:probe_test], probe.y_test[:probe_test]


def pooled_features(network, images):
    """Global-average-pooled last feature map: one 192-number vector per image."""
    return np.concatenate([keras.ops.convert_to_numpy(keras.ops.mean(
        network(batch, training=False), axis=(1, 2))) for batch in pipeline.for_eval(images)])


def linear_probe(train_x, test_x):
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    classifier.fit(train_x.reshape(len(train_x), -1), py_train)
    return float(classifier.score(test_x.reshape(len(test_x), -1), py_test))


probe_shape = probe.x_train.shape[1:]
pretrained = backbone.load_generic(probe_shape, out / "backbone.weights.h5")
keras.utils.set_random_seed(args.seed)
random_net = backbone.generic_backbone(probe_shape)  # same architecture, random weights
probe_scores = {
    "pretrained": linear_probe(pooled_features(pretrained, px_train),
                               pooled_features(pretrained, px_test)),
    "random_weights": linear_probe(pooled_features(random_net, px_train),
                                   pooled_features(random_net, px_test)),
    "raw_pixels": linear_probe(px_train.astype(np.float32), px_test.astype(np.float32)),
}
print(results.summary(probe_scores, f"linear probe on {args.probe} ({len(px_train)} training images)"))
plots.bars(probe_scores, out / "probe.png", "test accuracy",
           title=f"linear probe of frozen features on {args.probe}")

# %% [markdown]
# ### The first layer's filters
#
# Each tile is one 3x3x3 filter, scaled to the full colour range: the colour and the small
# gradient each first-layer unit responds to. At 3x3 pixels there is little structure to see
# (large-kernel ImageNet stems show their Gabor-like edges better); deeper layers combine these
# into strokes and corners, and the linear probe above is the real measure of what they are worth.

# %%
kernels = net.get_layer("stage1_a_conv").get_weights()[0]  # (3, 3, 3, 32)
tiles = [(k - k.min()) / max(float(np.ptp(k)), 1e-8) for k in np.moveaxis(kernels, -1, 0)]
plots.image_grid(tiles, path=out / "filters.png", ncols=16,
                 title="first-layer filters of the pretrained backbone")

# %% [markdown]
# ## Results, and shipping the backbone
#
# `results.json` holds the pretext task's validation accuracy (top-1 and top-5) and the probe.
# With `--ship` the backbone's weights replace `common/weights/generic_backbone.weights.h5`, and
# `generic_backbone.json` beside them records how they were made: the command, the commit, the
# corpus, the training time and these scores.

# %%
metrics = {
    "pretext": {"val_accuracy": val_scores["accuracy"], "val_top5": val_scores["top5"],
                "classes": num_classes, "train_images": len(x_train)},
    "probe": probe_scores,
    "backbone_params": net.count_params(),
    "corpus_seconds": corpus_seconds,
    "train_seconds": train_seconds,
}
cli.finish(args, metrics, args.dataset)
if args.ship:
    run = json.loads((out / "results.json").read_text())
    shutil.copyfile(out / "backbone.weights.h5", backbone.WEIGHTS)
    provenance = {key: run[key] for key in ("command", "commit", "versions", "seconds",
                                              "cpu_seconds", "metrics")}
    provenance.update(
        architecture="common.backbone.generic_backbone", input="raw RGB pixels in [0, 255]",
        data={"dataset": args.dataset, "seed": args.seed, "train_images": len(x_train),
              "val_images": len(x_val), "image_size": args.image_size, "classes": num_classes,
              "epochs": args.epochs, "batch_size": args.batch_size},
        file_size_bytes=backbone.WEIGHTS.stat().st_size)
    backbone.RECORD.write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"shipped: {backbone.WEIGHTS} and {backbone.RECORD}")
