# %% [markdown]
# # Image embeddings that generalise to classes never seen in training
#
# **Description:** start from the collection's generic pretrained CNN backbone, fine-tune it
# to map an image to a 64-dimensional unit vector with a metric-learning objective (an
# additive-margin "CosFace" softmax, or a supervised contrastive loss), then use those vectors
# for retrieval and k-NN classification of classes the network never saw. Baselines keep the
# result honest: the penultimate features of a plain softmax classifier trained on the same
# images, the pretrained backbone's features with no training at all, and raw pixels compared
# by cosine similarity. Cheap additions are measured one by one: GeM pooling, features from two
# depths, PCA whitening, and test-time flip averaging.
#
# **Concepts:** an image embedding is a short vector that keeps what matters about an image's
# content, so that downstream tasks (search, de-duplication, k-NN classification, clustering)
# work on vectors instead of pixels; and features a network learns on one set of classes carry
# over to new, related classes, which is why the embedding can be judged on classes it never saw;
# a backbone pretrained on a large, varied corpus carries over further, to classes that look
# unlike the ones it is fine-tuned on.
#
# Run: `make embeddings` or `python -m recipes.embeddings --help`. In a notebook, pass flags
# through `RECIPE_ARGS` in a cell above the setup cell, e.g.
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
# The flags are read before the heavy imports, so that `--help` answers at once. The training
# budget scales with the data: by default each network gets about 1,000 optimisation steps,
# 25 epochs at most (what the default data needs) and fewer on a large dataset.
# `--weights generic` (the default) starts both networks from the generic backbone that ships
# with the repository (pretrained offline by `make pretrain`); `--weights none` trains a
# smaller backbone from scratch, the comparison. `--unseen-style shifted` draws the held-out
# shapes in another style than the seen ones: a domain gap that can be measured offline.

# %%
from common import UserError, cli

SYNTHETIC_IMAGES = 10_000  # training images generated for a synthetic dataset by default

parser = cli.parser("embeddings", "Metric-learning image embeddings, evaluated on unseen classes",
                    dataset="synthetic:shapes", epochs=25, batch_size=128, budget_steps=1000)
parser.add_argument("--loss", choices=("cosface", "supcon"), default="cosface",
                    help="additive-margin softmax (cosface) or supervised contrastive (supcon)")
parser.add_argument("--embedding-dim", type=int, default=64, help="length of the embedding")
parser.add_argument("--temperature", type=float, default=0.1, help="supcon temperature")
parser.add_argument("--margin", type=float, default=0.1, help="cosface cosine margin")
parser.add_argument("--scale", type=float, default=10.0, help="cosface logit scale")
parser.add_argument("--seen-classes", type=int, default=None,
                    help="train on the first N classes, evaluate on the rest (default: half)")
parser.add_argument("--weights", choices=("generic", "none"), default="generic",
                    help="start from the generic pretrained backbone, or train a small backbone "
                         "from scratch")
unseen_style_help = ("synthetic:shapes only: 'shifted' draws the seen classes in shades of "
                     "gray, solid on plain or gradient backgrounds, and the unseen classes in "
                     "colour, textured on noisy or striped backgrounds (a domain gap)")
parser.add_argument("--unseen-style", choices=("same", "shifted"), default="same",
                    help=unseen_style_help)
num_examples_help = (f"synthetic datasets only: how many training images to generate (default: "
                     f"{SYNTHETIC_IMAGES:,}; the test split gets a fifth as many). To train on "
                     "fewer images of any dataset, use --train-size")
parser.add_argument("--num-examples", type=int, default=None, help=num_examples_help)
parser.evaluate.add_argument("--seen-classes", type=int, default=None,
                             help="as in training: the first N classes were seen (default: half)")
parser.evaluate.add_argument("--num-examples", type=int, default=None, help=num_examples_help)
parser.evaluate.add_argument("--unseen-style", choices=("same", "shifted"), default="same",
                             help=unseen_style_help)
parser.predict.add_argument("--gallery", default=None,
                            help="folder of images: print each file's nearest gallery images")
parser.predict.add_argument("--top-k", type=int, default=5, help="neighbours per file")
args = cli.parse_args(parser)

# %%
import json
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from common import backbone, callbacks, data, pipeline, plots, results, saving, synthetic

# %% [markdown]
# ## Retrieval metrics
#
# Each held-out image is a query against all the others (leave-one-out). `recall_at_k`: the share
# of queries with at least one image of their class among the k nearest. `map_at_r` (Musgrave et
# al., "A Metric Learning Reality Check"): with R = the number of other images of the query's
# class, the average precision over the first R results only. Recall@1 is easy to max out with
# near-duplicates; MAP@R asks that the *whole* class sits closest, so it separates methods far
# better. `knn_accuracy`: a similarity-weighted vote of the 5 nearest neighbours.


# %%
def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """The baseline embedding: pixels minus the image's mean, unit length (cosine = correlation)."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    return normalise(flat - flat.mean(1, keepdims=True))


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool = False):
    """Indices and cosine similarities of the k most similar gallery vectors, best first."""
    k = min(k, len(gallery) - exclude_self)
    order, sims = [], []
    for start in range(0, len(queries), 1024):  # chunks keep the similarity matrix small
        sim = queries[start:start + 1024] @ gallery.T
        if exclude_self:
            sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sim, top, 1), 1), 1)
        order.append(top)
        sims.append(np.take_along_axis(sim, top, 1))
    return np.concatenate(order), np.concatenate(sims)


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, knn: int = 5) -> dict:
    vectors = normalise(vectors)
    r = np.bincount(labels)[labels] - 1  # other images of the query's class
    queries = r > 0
    order, sims = nearest(vectors, vectors, max(int(r.max()), knn), exclude_self=True)
    hits = labels[order] == labels[:, None]
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = np.cumsum(hits, 1) / ranks
    ap_at_r = (precision * hits * (ranks <= r[:, None])).sum(1) / np.maximum(r, 1)
    votes = np.zeros((len(labels), labels.max() + 1))
    np.add.at(votes, (np.arange(len(labels))[:, None], labels[order[:, :knn]]), sims[:, :knn])
    return {
        "recall_at_1": float(hits[queries, 0].mean()),
        "recall_at_5": float(hits[queries, :5].any(1).mean()),
        "map_at_r": float(ap_at_r[queries].mean()),
        "knn_accuracy": float((votes.argmax(1) == labels)[queries].mean()),
    }


# The two style families of `--unseen-style shifted` (arguments of synthetic.make_shapes): the
# seen shapes are plain gray silhouettes, the unseen ones coloured, textured and on busy
# backgrounds, so features that only separate the seen classes' look do not carry over. (Two
# colour palettes would not do: make_shapes gives a shape whose colour is too close to its
# background's the complementary background colour, so every palette meets every other.)
SEEN_STYLE = {"palette": "gray", "backgrounds": ("plain", "gradient"), "textures": ("solid",)}
UNSEEN_STYLE = {"palette": "any", "backgrounds": ("noise", "stripes"),
                "textures": ("stripes", "checker", "noise")}


def shifted_shapes(n: int, seen: int, image_size: int, seed: int):
    """`n` shapes: the first `seen` classes in SEEN_STYLE, the others in UNSEEN_STYLE."""
    n_seen = round(n * seen / len(synthetic.SHAPES))
    x_seen, y_seen = synthetic.make_shapes(n_seen, image_size, seed, synthetic.SHAPES[:seen],
                                           **SEEN_STYLE)
    x_unseen, y_unseen = synthetic.make_shapes(n - n_seen, image_size, seed + 1,
                                               synthetic.SHAPES[seen:], **UNSEEN_STYLE)
    order = np.random.default_rng(seed).permutation(n)
    return (np.concatenate([x_seen, x_unseen])[order],
            np.concatenate([y_seen, y_unseen + seen])[order])


def load_dataset(spec, seed, num_examples=None, image_size=None, channels=None,
                 unseen_style="same", seen_classes=None):
    """A labelled dataset; a synthetic one is generated with `num_examples` training images."""
    generated = spec.startswith("synthetic:")
    if num_examples is not None and not generated:
        raise UserError(f"--num-examples sets how many synthetic images to generate; {spec} is "
                        "not synthetic: use --train-size N to train on fewer of its images")
    if num_examples is not None and num_examples < 1:
        raise UserError(f"--num-examples {num_examples}: valid values are 1 or more")
    n = (num_examples or SYNTHETIC_IMAGES) if generated else None
    if unseen_style == "same":
        return data.require(data.load(spec, seed=seed, num_examples=n, image_size=image_size,
                                      channels=channels), data.Classification, spec)
    if spec != "synthetic:shapes":
        raise UserError(f"--unseen-style {unseen_style} draws synthetic shapes in two styles; "
                        f"{spec} is fixed data: drop the flag or use --dataset synthetic:shapes")
    seen = unseen_split(len(synthetic.SHAPES), seen_classes)
    size = image_size[0] if image_size else 32
    # the test split is a fifth of the training split's size, as synthetic:shapes makes it
    x, y = shifted_shapes(n, seen, size, seed)
    xt, yt = shifted_shapes(max(len(synthetic.SHAPES), n // 5), seen, size, seed + 10_000)
    return data.Classification(data.conform(x, image_size, channels), y,
                               data.conform(xt, image_size, channels), yt,
                               list(synthetic.SHAPES), spec)


def unseen_split(num_classes, seen_classes):
    """Train on the first classes, hold out the rest; checked before anything is trained."""
    seen = num_classes // 2 if seen_classes is None else seen_classes
    if not 2 <= seen <= num_classes - 2:
        raise UserError(f"--seen-classes {seen_classes}: valid values are 2..{num_classes - 2} "
                        f"({num_classes} classes; at least 2 must be left unseen)")
    return seen


# %% [markdown]
# ## Using a saved model: `predict` and `evaluate`
#
# The saved model takes raw images and returns unit vectors, so a user's own search is one
# matrix product: `predict FILES` prints each embedding; `predict --gallery DIR FILES` prints each
# file's nearest gallery images. Files in the gallery that are not images are skipped and counted.


# %%
def embed(model, images: np.ndarray) -> np.ndarray:
    return model.predict(images.astype(np.float32), batch_size=256, verbose=0)


def read_gallery(folder: Path, size, channels):
    if not folder.is_dir():
        raise UserError(f"gallery folder not found: {folder}")
    files, images, skipped = [], [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            images.append(data.conform(data.read_image(path)[None], size, channels))
            files.append(str(path))
        except UserError:
            skipped.append(path.name)
    if skipped:
        print(f"gallery: skipped {len(skipped)} non-image file(s) in {folder} "
              f"(e.g. {', '.join(skipped[:3])})", file=sys.stderr)
    if not files:
        raise UserError(f"gallery {folder} holds no readable images ({len(skipped)} other files)")
    return files, np.concatenate(images)


def predict_embeddings(args) -> None:
    model = saving.load_model(args.model)
    _, height, width, channels = model.input_shape
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: valid values are 1 or more")
    vectors = embed(model, data.read_images(args.files, (height, width), channels))
    if args.gallery is None:
        for path, vector in zip(args.files, vectors):
            print(f"{path}\t{json.dumps([round(float(v), 5) for v in vector])}")
        return
    files, images = read_gallery(Path(args.gallery), (height, width), channels)
    order, sims = nearest(vectors, embed(model, images), args.top_k)
    for path, row, sim in zip(args.files, order, sims):
        found = [[files[i], round(float(s), 4)] for i, s in zip(row, sim)]
        print(f"{path}\t{json.dumps({'neighbours': found})}")


def evaluate_embeddings(args) -> dict:
    """Retrieval metrics of a saved model on the held-out classes of `--dataset`."""
    model = saving.load_model(args.model)
    _, height, width, channels = model.input_shape
    ds = load_dataset(args.dataset, args.seed, args.num_examples, (height, width), channels,
                      args.unseen_style, args.seen_classes)
    unseen = ds.y_test >= unseen_split(ds.num_classes, args.seen_classes)
    x, y = ds.x_test[unseen], ds.y_test[unseen]
    scores = {"embedding": retrieval_metrics(embed(model, x), y),
              "raw_pixels": retrieval_metrics(raw_pixels(x), y)}
    results.write(args.out, args.recipe, args.dataset, scores, time.time() - args.started,
                  vars(args), model=str(args.model))
    print(results.summary(scores, f"evaluate {args.model} on unseen classes of {args.dataset}"))
    return scores


if args.command == "predict":
    predict_embeddings(args)
    raise SystemExit
if args.command == "evaluate":
    evaluate_embeddings(args)
    raise SystemExit
if args.embedding_dim < 2 or args.temperature <= 0 or args.scale <= 0 or args.margin < 0:
    raise UserError("valid values: --embedding-dim >= 2, --temperature > 0, --scale > 0, "
                    "--margin >= 0")
monitor_size, projection_size = 1000, 1000
if args.smoke:  # a tiny run: 2,000 synthetic images, or at most 1,000 training images of others
    args.epochs, args.batch_size = args.epochs or 6, 64
    args.num_examples = 2000 if args.dataset.startswith("synthetic:") else args.num_examples
    args.train_size = min(args.train_size or 1000, 1000)
    monitor_size, projection_size = 200, 200

# %% [markdown]
# ## Prepare the data
#
# The class split is the whole point: the networks train on the first half of the classes
# (shapes: circle, ring, square, frame, triangle; MNIST: digits 0-4) and every number below is
# measured on the other half. The held-out classes' *training-split* images, never trained on,
# serve as a validation set (a retrieval score per epoch); their *test-split* images give the
# final scores. `--train-size N` trains on a class-balanced subset of N of the seen classes'
# images. The budget: `--epochs` is resolved here, from the number of training images.
#
# New classes in real use often look unlike the ones a network was trained on (shoes and bags
# after shirts and coats). `--unseen-style shifted` builds that gap into the shapes: the seen
# classes are solid gray shapes on plain or gradient gray backgrounds, the unseen ones
# coloured, textured shapes on noisy or striped backgrounds.

# %%
ds = load_dataset(args.dataset, args.seed, args.num_examples, unseen_style=args.unseen_style,
                  seen_classes=args.seen_classes)
seen = unseen_split(ds.num_classes, args.seen_classes)
train_mask, test_seen = ds.y_train < seen, ds.y_test < seen
x_train, y_train = cli.train_subset(args, ds.x_train[train_mask], ds.y_train[train_mask])
steps_per_epoch = cli.training_budget(args, len(x_train))
x_val, y_val = ds.x_train[~train_mask][:monitor_size], ds.y_train[~train_mask][:monitor_size]
x_test, y_test = ds.x_test[~test_seen], ds.y_test[~test_seen]
if len(x_val) < 2 or len(x_test) < 2:
    raise UserError(f"{args.dataset}: too few images of the held-out classes to evaluate")
unseen_names = ds.class_names[seen:]
print(f"train: {len(x_train)} images of {seen} classes {ds.class_names[:seen]}; "
      f"test: {len(x_test)} images of unseen classes {unseen_names}")
augment = keras.Sequential([keras.layers.RandomTranslation(0.1, 0.1),
                            keras.layers.RandomRotation(0.05)], name="augment")
validation = pipeline.for_eval(ds.x_test[test_seen], ds.y_test[test_seen])
plots.image_grid(x_test[:16], [ds.class_names[c] for c in y_test[:16]],
                 Path(args.out) / "unseen_examples.png", title="held-out classes (never trained)")

# %% [markdown]
# ## Build the models
#
# Each network gets its own copy of the same backbone, followed by global average pooling.
# With `--weights generic` (the default) that is the collection's generic backbone: four
# stages of two 3x3 conv-BN-ReLU layers, pretrained offline on a large synthetic corpus of
# glyphs, symbols, line art and textures (none of them digits or the shapes used here). With
# `--weights none` it is a smaller backbone (four conv-BN-ReLU stages) trained from scratch.
# The **embedding network** ends in a 64-unit projection and a `UnitNormalization` layer: cosine
# similarity is then a dot product. The **classifier** ends in a 64-unit ReLU layer (its
# "penultimate features", our second baseline) and a softmax over the seen classes.
#
# A pretrained backbone is fine-tuned more gently than the new layers on top of it: its
# variables get a tenth of the learning rate (`BACKBONE_LR_FACTOR`). One optimiser with a
# per-variable factor keeps training one `fit()` call, so the interrupted-run resume works as it
# does from scratch; a head-only warm-up would need a second phase with its own optimiser.
# Adam divides each gradient by its own running scale, so scaling the gradients would change
# nothing: the factor has to act on the learning rate. Its BatchNorm layers are frozen
# (`trainable = False`, which in Keras also makes them normalise with their stored statistics):
# a few thousand images of a few classes would otherwise overwrite the statistics of the
# pretraining corpus, and the unseen classes would be normalised with those of the seen ones.

# %%
BACKBONE_LR_FACTOR = 0.1


def scratch_backbone(images):
    x = keras.layers.Rescaling(1 / 255)(images)
    for stage, filters in enumerate((32, 64, 128, 128)):
        if stage:
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    return keras.layers.GlobalAveragePooling2D()(x), []


def pretrained_backbone(images, name):
    """Pooled features of a fresh copy of the generic backbone, and its trainable variables."""
    net = backbone.load_generic(images.shape[1:], backbone.WEIGHTS, name=name)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return keras.layers.GlobalAveragePooling2D()(net(images)), net.trainable_weights


class SlowBackboneAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied by `factor` for the variables in `slow`."""

    def __init__(self, learning_rate, slow, factor: float):
        super().__init__(learning_rate)
        self.slow_ids, self.factor = {id(v) for v in slow}, factor

    def build(self, variables):
        super().build(variables)
        self.slow_mask = [id(v) in self.slow_ids for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        if self.slow_mask[self._get_variable_index(variable)]:
            learning_rate = learning_rate * self.factor
        super().update_step(gradient, variable, learning_rate)


def check_generic_input(shape):
    """The generic backbone downsamples 8x: say what to do about smaller images."""
    if min(shape[:2]) < backbone.MIN_SIZE:
        raise UserError(f"{args.dataset} has {shape[0]}x{shape[1]} images; the generic backbone "
                        f"needs at least {backbone.MIN_SIZE}x{backbone.MIN_SIZE}: resize the "
                        "images, or pass --weights none (a smaller backbone trained from scratch)")


images = keras.Input(ds.x_train.shape[1:])
if args.weights == "generic":
    check_generic_input(ds.x_train.shape[1:])
    print(f"backbone: generic, pretrained ({backbone.WEIGHTS})")
pooled, embedder_backbone = (pretrained_backbone(images, "embedder_backbone")
                             if args.weights == "generic" else scratch_backbone(images))
unnormalised = keras.layers.Dense(args.embedding_dim)(pooled)
embedder = keras.Model(images, keras.layers.UnitNormalization()(unnormalised), name="embedder")
embedder_unnormalised = keras.Model(images, unnormalised)  # for test-time flip averaging

pooled, classifier_backbone = (pretrained_backbone(images, "classifier_backbone")
                               if args.weights == "generic" else scratch_backbone(images))
features = keras.layers.Dense(args.embedding_dim, activation="relu")(pooled)
classifier = keras.Model(images, keras.layers.Dense(seen)(features), name="classifier")
classifier_features = keras.Model(images, features, name="classifier_features")

# %% [markdown]
# ## The metric-learning objectives
#
# **CosFace** (additive-margin softmax, Wang et al. 2018; the default): a softmax over the
# cosines between the embedding and one learned unit "proxy" vector per class, with a margin
# subtracted from the true class's cosine, so that an image must be closer to its own class than
# the decision boundary alone would ask. A modest scale (10) and margin (0.1) did better on the
# unseen classes in our short sweep than the larger 30 / 0.35 we tried first: squeezing each seen
# class ever tighter teaches features that separate only the seen classes.
# **Supervised contrastive** (Khosla et al. 2020, `--loss supcon`): within each batch, every
# image should be more similar to the other images of its class than to the rest; a softmax over
# the batch's cosine similarities divided by a temperature. Only `embedder` is saved: the proxies
# are a training device.


# %%
class CosineProxies(keras.layers.Layer):
    """Cosine similarity of each (unit) embedding to one learned unit vector per class."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def build(self, input_shape):
        self.proxies = self.add_weight(shape=(input_shape[-1], self.num_classes),
                                       initializer="glorot_uniform")

    def call(self, embeddings):
        return keras.ops.matmul(embeddings, keras.ops.normalize(self.proxies, axis=0))


def additive_margin_loss(scale: float, margin: float):
    def loss(labels, cosines):
        onehot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(labels, (-1,)), "int32"),
                                   keras.ops.shape(cosines)[-1])
        return keras.losses.categorical_crossentropy(
            onehot, scale * (cosines - margin * onehot), from_logits=True)
    return loss


def supervised_contrastive_loss(temperature: float):
    def loss(labels, embeddings):
        labels = keras.ops.reshape(labels, (-1,))
        self_mask = keras.ops.eye(keras.ops.shape(embeddings)[0])
        logits = keras.ops.matmul(embeddings, keras.ops.transpose(embeddings)) / temperature
        logits = logits - 1e9 * self_mask  # an image is not its own positive
        same = keras.ops.equal(labels[:, None], labels[None, :])
        positives = keras.ops.cast(same, "float32") - self_mask
        log_prob = logits - keras.ops.logsumexp(logits, axis=1, keepdims=True)
        return -keras.ops.sum(log_prob * positives, 1) / keras.ops.maximum(
            keras.ops.sum(positives, 1), 1.0)
    return loss


if args.loss == "cosface":
    trainer = keras.Model(images, CosineProxies(seen)(embedder(images)))
    loss, train_metrics = additive_margin_loss(args.scale, args.margin), ["accuracy"]
else:
    trainer = keras.Model(images, embedder(images))
    loss, train_metrics = supervised_contrastive_loss(args.temperature), []

# %% [markdown]
# ## Train
#
# Same data, augmentation (small shifts and rotations), optimiser and epochs for both networks.
# A callback embeds the held-out classes' validation images after each epoch and logs their
# MAP@R, so the curves show what the loss alone hides: whether the embedding is getting better
# *on classes it never sees*. Before training, a plan line gives the number of models, epochs
# and steps; after the first epochs, the estimated time. If a run is interrupted (Ctrl-C), the
# same command resumes it: a network that had finished is loaded, the other resumes from its
# last epoch.


# %%
class UnseenRetrieval(keras.callbacks.Callback):
    def __init__(self, model_to_embed):
        super().__init__()
        self.model_to_embed = model_to_embed

    def on_epoch_end(self, epoch, logs=None):
        vectors = embed(self.model_to_embed, x_val)
        logs["unseen_map_at_r"] = retrieval_metrics(vectors, y_val)["map_at_r"]


def fit(model, loss, metrics, name, model_to_embed, slow_variables):
    """Train one network; returns its history and seconds (kept until the run is complete)."""
    started = time.time()
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, args.epochs * steps_per_epoch)
    model.compile(SlowBackboneAdam(schedule, slow_variables, BACKBONE_LR_FACTOR), loss,
                  metrics=metrics)
    # a new pipeline per network: each sees the same batches whichever trained first
    train = pipeline.for_training(x_train, y_train, args.batch_size, augment=augment,
                                  seed=args.seed)
    history = model.fit(train, validation_data=validation, epochs=args.epochs,
                        verbose=callbacks.verbose(),
                        callbacks=[UnseenRetrieval(model_to_embed), plan.callback(name),
                                   *callbacks.standard(args.out, name, args)])
    record = {"history": history.history, "seconds": time.time() - started}
    finished.save(name, model, record)
    return record


networks = {  # name: (model trained, its loss and metrics, model whose output is the embedding,
    #               the pretrained variables that train more slowly)
    "embedding": (trainer, loss, train_metrics, embedder, embedder_backbone),
    "classifier": (classifier, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   ["accuracy"], classifier_features, classifier_backbone),
}
finished = callbacks.Finished(args.out, args)  # networks that finished before an interrupt
records = {name: finished.load(name, network[0]) for name, network in networks.items()}
to_train = [name for name, record in records.items() if record is None]
if to_train:
    plan = callbacks.Plan(to_train, args.epochs, steps_per_epoch)
for name in to_train:
    model, model_loss, model_metrics, model_to_embed, slow_variables = networks[name]
    records[name] = fit(model, model_loss, model_metrics, name, model_to_embed, slow_variables)
histories = {f"embedding ({args.loss})": records["embedding"]["history"],
             "classifier": records["classifier"]["history"]}
embedder.save(Path(args.out) / "model.keras")
plots.training_curves(histories, Path(args.out) / "training_curves.png",
                      metrics=("loss", "unseen_map_at_r"),
                      title="loss on seen classes; MAP@R on held-out classes")

# %% [markdown]
# ## Evaluate on the unseen classes
#
# Every embedding of the same held-out test images is scored the same way:
#
# - `embedding`, `classifier_features`, `raw_pixels`: the two trained networks and the pixels.
# - `generic_frozen`: the pretrained backbone with no training at all (zero-shot), its last
#   feature map average-pooled (one number per channel). It shows what the pretraining alone
#   brings, and what the fine-tuning adds to it.
# - `generic_frozen_gem`: the same map with generalised-mean pooling (GeM, Radenović et al.
#   2019), the cube root of the mean cube: strong local responses (a corner, a stroke end)
#   count more than in an average, without the noise of a maximum.
# - `generic_frozen_multi`: GeM of the last two stages, concatenated (each part unit length,
#   so that neither depth dominates). The earlier stage keeps finer, more generic
#   patterns that the last one, shaped by the pretraining classes, may have traded away.
# - `..._whiten`: PCA whitening fitted on the *seen* classes' training images (never on the
#   test images): it decorrelates the dimensions and gives each the same variance, so that a
#   few directions that vary a lot on every image (brightness, background) stop dominating the
#   cosine. It costs one matrix product per image and could be folded into the model.
# - `embedding_flip`: the (unnormalised) embedding of each image averaged with that of its
#   mirror image, then normalised: test-time augmentation at twice the cost of an embedding.
#
# The generic variants need `--weights generic`; with `--weights none` they are left out.

# %%
GEM_POWER = 3.0
WHITEN_FIT_IMAGES = 5000  # seen-class training images the whitening is fitted on, at most


def gem(maps: np.ndarray, power: float = GEM_POWER) -> np.ndarray:
    """Generalised mean over the spatial axes of ReLU feature maps (N, H, W, C) -> (N, C)."""
    return np.mean(np.maximum(maps, 1e-6) ** power, axis=(1, 2)) ** (1 / power)


def frozen_features(net, images: np.ndarray) -> dict:
    """The untrained pretrained backbone's features, pooled three ways, in chunks of images
    (the stage-3 maps of a large dataset would not fit in memory at once)."""
    pooled = {"generic_frozen": [], "generic_frozen_gem": [], "generic_frozen_multi": []}
    for start in range(0, len(images), 2048):
        stage3, stage4 = net.predict(images[start:start + 2048].astype(np.float32),
                                     batch_size=256, verbose=0)
        pooled["generic_frozen"].append(stage4.mean(axis=(1, 2)))
        pooled["generic_frozen_gem"].append(gem(stage4))
        pooled["generic_frozen_multi"].append(
            np.concatenate([normalise(gem(stage3)), normalise(gem(stage4))], axis=1))
    return {name: np.concatenate(chunks) for name, chunks in pooled.items()}


def embed_flipped(images: np.ndarray) -> np.ndarray:
    return normalise(embed(embedder_unnormalised, images)
                     + embed(embedder_unnormalised, images[:, :, ::-1]))


def whitened(fit_vectors: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """`vectors` PCA-whitened with statistics of `fit_vectors` (both made unit length first)."""
    fit_vectors = normalise(fit_vectors)
    # dimensions without variance on the fitting set would be divided by zero: drop them
    spectrum = np.linalg.svd(fit_vectors - fit_vectors.mean(0), compute_uv=False)
    rank = int((spectrum > spectrum[0] * 1e-4).sum())
    pca = PCA(rank, whiten=True, random_state=args.seed).fit(fit_vectors)
    return pca.transform(normalise(vectors))


started = time.time()
vectors = {"embedding": embed(embedder, x_test)}
images_per_second = len(x_test) / (time.time() - started)
fit_images = x_train[np.random.default_rng(args.seed).permutation(len(x_train))[
    :WHITEN_FIT_IMAGES]]
vectors["embedding_flip"] = embed_flipped(x_test)
vectors["embedding_whiten"] = whitened(embed(embedder, fit_images), vectors["embedding"])
vectors["embedding_flip_whiten"] = whitened(embed_flipped(fit_images), vectors["embedding_flip"])
vectors["classifier_features"] = embed(classifier_features, x_test)
if args.weights == "generic":
    frozen = backbone.pyramid(backbone.load_generic(x_test.shape[1:], backbone.WEIGHTS,
                                                    name="frozen_backbone"), (3, 4))
    vectors.update(frozen_features(frozen, x_test))
    fitted = frozen_features(frozen, fit_images)
    for name in ("generic_frozen", "generic_frozen_multi"):
        vectors[f"{name}_whiten"] = whitened(fitted[name], vectors[name])
vectors["raw_pixels"] = raw_pixels(x_test)
scores = {name: retrieval_metrics(v, y_test) for name, v in vectors.items()}
print(results.summary(scores, "retrieval on unseen classes"))

# one row per embedding, best MAP@R at the top; raw pixels, the bar to clear, in bold
names = sorted(scores, key=lambda name: scores[name]["map_at_r"])
fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.42 * len(names)))
rows = np.arange(len(names))
for offset, metric in ((0.2, "map_at_r"), (-0.2, "recall_at_1")):
    bars = ax.barh(rows + offset, [scores[name][metric] for name in names], 0.4, label=metric)
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
ax.set_yticks(rows, names)
for label in ax.get_yticklabels():
    label.set_fontweight("bold" if label.get_text() == "raw_pixels" else "normal")
ax.set_xlim(0, 1.12)
ax.set_title(f"retrieval on unseen classes ({args.weights} backbone)")
ax.set_xlabel("score on the unseen classes")
ax.legend(fontsize=7, ncols=2, loc="lower right")
plots.save(fig, Path(args.out) / "metrics.png")

# %% [markdown]
# ### A 2-D map of each embedding (t-SNE), coloured by unseen class
#
# Tight, separate clusters mean that neighbours share a class, which is what MAP@R measures.

# %%
subset = np.random.default_rng(args.seed).permutation(len(x_test))[:projection_size]
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
for ax, name in zip(axes, ("embedding", "classifier_features", "raw_pixels")):
    v = vectors[name]
    with threadpool_limits(1, "openmp"):  # t-SNE's threads stall on a busy 2-core machine
        points = TSNE(perplexity=min(30, len(subset) // 4), init="pca",
                      random_state=args.seed).fit_transform(normalise(v[subset]))
    for c in np.unique(y_test):
        keep = y_test[subset] == c
        ax.scatter(*points[keep].T, s=5, label=ds.class_names[c])
    ax.set_title(f"{name}  (MAP@R {scores[name]['map_at_r']:.3f})")
    ax.set_xticks([])
    ax.set_yticks([])
axes[-1].legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
plots.save(fig, Path(args.out) / "projection.png")

# %% [markdown]
# ### Queries and their nearest neighbours
#
# First column: a query from an unseen class; then its five nearest test images with their
# cosine similarity, green when the class matches. The same queries through raw pixels show why
# pixels fail on shapes: they match colour and background, not shape.

# %%
queries = subset[:8]
for name in ("embedding", "raw_pixels"):
    v = normalise(vectors[name])
    order, sims = nearest(v, v, 5, exclude_self=True)
    grid, titles, colours = [], [], []
    for q in queries:
        grid.append(x_test[q])
        titles.append(f"query: {ds.class_names[y_test[q]]}")
        colours.append("black")
        for i, s in zip(order[q], sims[q]):
            grid.append(x_test[i])
            titles.append(f"{ds.class_names[y_test[i]]} {s:.2f}")
            colours.append("green" if y_test[i] == y_test[q] else "red")
    plots.image_grid(grid, titles, Path(args.out) / f"neighbours_{name}.png", ncols=6,
                     title_colours=colours, title=f"nearest neighbours by {name}")

# %% [markdown]
# ## Results
#
# The headline is `embedding.recall_at_1` on the unseen classes; judge by `map_at_r` too, and
# against two bars: an embedding that does not clearly beat `raw_pixels` has learned nothing
# worth shipping, and one that does not beat `generic_frozen` was not worth fine-tuning.

# %%
scores.update({
    "seen_classes": seen,
    "unseen_test_images": len(x_test),
    "images_per_second": images_per_second,
    "train_images": len(x_train),
    "whiten_fit_images": len(fit_images),
    "embedding_train_seconds": records["embedding"]["seconds"],
    "classifier_train_seconds": records["classifier"]["seconds"],
})
cli.finish(args, scores, args.dataset)
finished.clear()  # results.json is written: nothing left to resume
