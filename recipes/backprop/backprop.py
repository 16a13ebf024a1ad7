# %% [markdown]
# # Backpropagation made explicit
#
# **Description:** open up the training step that `fit()` hides. We write the backward pass of
# a small network by hand (the chain rule) and compare it with `tf.GradientTape`; train a CNN
# with our own GradientTape loop and show that it gives the same weights as `fit()`; check the
# tape's gradients of a tiny CNN against central finite differences in float64; compare
# cross-entropy with mean squared error as the loss; and watch gradients vanish in a deep
# sigmoid network but not in the same network with ReLU.
#
# **Concepts:** forward propagation computes a prediction layer by layer; a loss function
# (cross-entropy, mean squared error) scores how wrong it is; backward propagation applies the
# chain rule from the loss back to every weight, giving the gradient; gradient descent moves
# each weight a small step against its gradient. The activation function (sigmoid or ReLU)
# decides how much gradient survives each layer on the way back.
#
# Run: `make backprop` or `python -m recipes.backprop --help`. In a notebook, flags come from
# the `RECIPE_ARGS` environment variable instead of a command line: add a cell above the setup
# cell with, e.g., `os.environ["RECIPE_ARGS"] = "--epochs 5 --dataset npz:/content/my.npz"`
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
from common import UserError, cli

parser = cli.parser("backprop", "Forward and backward propagation made explicit: GradientTape vs "
                    "fit(), a gradient check, cross-entropy vs MSE, vanishing gradients",
                    dataset="synthetic:shapes", epochs=12, batch_size=64, budget_steps=1500)
parser.add_argument("--equivalence-steps", type=int, default=30,
                    help="training steps compared between fit() and the GradientTape loop")
parser.add_argument("--learning-rate", type=float, default=0.02,
                    help="SGD learning rate (momentum 0.9) of every model")
parser.add_argument("--depth", type=int, default=8,
                    help="conv layers of the plain network for sigmoid vs ReLU")
args = cli.parse_args(parser)
cli.classifier_commands(args)  # `predict` / `evaluate`: runs the saved model and stops here
if args.equivalence_steps < 1 or args.depth < 2 or not args.learning_rate > 0:
    raise UserError("--equivalence-steps must be >= 1, --depth >= 2 and --learning-rate > 0")
synthetic_size = None  # the dataset's default: 3,000 training images of synthetic:shapes
if args.smoke:  # every section runs, on less data and fewer epochs (explicit flags still win)
    args.epochs, args.equivalence_steps = args.epochs or 2, min(args.equivalence_steps, 5)
    args.train_size, synthetic_size = min(args.train_size or 800, 800), 800

# %%
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from matplotlib import pyplot as plt

from common import callbacks, data, metrics, pipeline, plots, saving

out = Path(args.out)

# %% [markdown]
# ## Prepare the data
#
# Images stay in [0, 255]; every model starts with `Rescaling(1/255)`, so the saved model takes
# raw images. The GradientTape loops read the same shuffled `tf.data` pipeline that `fit()` would.
# `--train-size N` keeps a class-balanced subset of N training images (all by default).
#
# Four models are trained with our own loop (sections 4 and 5), each for about 1,500
# optimisation steps by default: at most 12 epochs, at least 2, so 12 epochs on the default
# data and 2 on a 60,000-image dataset (`--epochs` overrides it).

# %%
ds = data.require(data.load(args.dataset, seed=args.seed, num_examples=(
    synthetic_size if args.dataset.startswith("synthetic:") else None)),
    data.Classification, args.dataset)
ds.x_train, ds.y_train = cli.train_subset(args, ds.x_train, ds.y_train)
steps_per_epoch = cli.training_budget(args, len(ds.x_train))  # resolves args.epochs
input_shape, num_classes = ds.x_train.shape[1:], ds.num_classes
if args.equivalence_steps * args.batch_size > len(ds.x_train):
    raise UserError(f"--equivalence-steps {args.equivalence_steps} x --batch-size "
                    f"{args.batch_size} needs more than the {len(ds.x_train)} training images: "
                    "use fewer steps")
train = pipeline.for_training(ds.x_train, ds.y_train, args.batch_size, seed=args.seed)
test_images = pipeline.for_eval(ds.x_test)
print(f"{args.dataset}: {len(ds.x_train)} train / {len(ds.x_test)} test images of shape "
      f"{input_shape}, {num_classes} classes")

# The four training loops of sections 4 and 5. Loops that finished before an interrupt are
# loaded on the rerun, not trained again (their record is written last, once complete).
finished = callbacks.Finished(out, args)
to_train = [name for name in ("cross_entropy", "mse", "plain_sigmoid", "plain_relu")
            if not (finished.directory / f"{name}.json").is_file()]
plan = None
if to_train:
    plan = callbacks.Plan(to_train, args.epochs, steps_per_epoch, what="training loops")

# %% [markdown]
# ## 1. The chain rule by hand
#
# A two-layer network `x -> Dense+ReLU -> Dense+softmax -> cross-entropy`. Forward propagation
# computes `a = x W1 + b1`, `h = relu(a)`, `z = h W2 + b2`, `p = softmax(z)` and the loss
# `L = mean(-log p[y])`. Backward propagation starts at the loss: for softmax followed by
# cross-entropy the gradient with respect to the logits is simply `dL/dz = (p - onehot(y)) / B`.
# From there each layer passes the gradient back: `dW2 = hᵀ dz`, `dh = dz W2ᵀ`,
# `da = dh * (a > 0)` (ReLU lets the gradient through where it was active), `dW1 = xᵀ da`.
# We compute this with NumPy and compare with what `tf.GradientTape` records.

# %%
x_batch = ds.x_train[: args.batch_size].reshape(args.batch_size, -1).astype("float32") / 255
y_batch = ds.y_train[: args.batch_size]
mlp = keras.Sequential([keras.Input(x_batch.shape[1:]), keras.layers.Dense(32, activation="relu"),
                        keras.layers.Dense(num_classes, activation="softmax")])
with tf.GradientTape() as tape:
    loss = keras.losses.SparseCategoricalCrossentropy()(y_batch, mlp(x_batch))
tape_gradients = [g.numpy() for g in tape.gradient(loss, mlp.trainable_variables)]

W1, b1, W2, b2 = [v.numpy() for v in mlp.trainable_variables]
a = x_batch @ W1 + b1  # forward
h = np.maximum(a, 0)
z = h @ W2 + b2
p = np.exp(z - z.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
dz = (p - np.eye(num_classes)[y_batch]) / len(x_batch)  # backward, from the loss to the input
dW2, db2 = h.T @ dz, dz.sum(0)
da = (dz @ W2.T) * (a > 0)
dW1, db1 = x_batch.T @ da, da.sum(0)
by_hand = {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
for (name, mine), taped in zip(by_hand.items(), tape_gradients):
    print(f"d loss / d {name}: max |by hand - tape| = {np.abs(mine - taped).max():.2e} "
          f"(gradient size {np.abs(taped).max():.2e})")
chain_rule_diff = max(float(np.abs(m - t).max()) for m, t in zip(by_hand.values(), tape_gradients))

# %% [markdown]
# ## 2. A training step with GradientTape, and `fit()` doing the same
#
# One training step is: forward pass under a `GradientTape`, loss, gradients of the loss with
# respect to every trainable variable (the tape applies the chain rule through each recorded
# operation, backwards), and an optimizer step that moves the weights against the gradient.
# The step also returns the norm of each layer's kernel gradient, which sections 4 and 5 plot.

# %%
def build_cnn(name="cnn"):
    """A small plain CNN: conv-conv-pool, conv-conv-pool, conv-pool, softmax classifier."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (16, 16, "pool", 32, 32, "pool", 64, "pool"):
        if filters == "pool":
            x = keras.layers.MaxPooling2D()(x)
        else:  # He initialisation keeps the signal's scale through ReLU layers
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                    kernel_initializer="he_normal")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def sgd():
    return keras.optimizers.SGD(args.learning_rate, momentum=0.9)


def make_train_step(model, loss_fn, optimizer):
    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)  # forward propagation
            loss = loss_fn(labels, probabilities)  # how wrong the prediction is
        gradients = tape.gradient(loss, model.trainable_variables)  # backward propagation
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # descend
        kernel_norms = [tf.norm(g) for g, v in zip(gradients, model.trainable_variables)
                        if v.path.endswith("kernel")]
        return loss, probabilities, tf.stack(kernel_norms)

    return train_step


# %% [markdown]
# To show that this loop *is* what `fit()` does, build the CNN twice with identical initial
# weights, train one with `fit()` and one with the loop on the same batches in the same order
# (no shuffling; no dropout or batch norm, so nothing random happens inside the model), with
# two identical SGD optimizers, and compare the weights after N steps. XLA is turned off in
# `compile()` because our `tf.function` does not use it either (on a GPU, `"auto"` would).

# %%
n = args.equivalence_steps * args.batch_size
x_eq, y_eq = ds.x_train[:n].astype("float32"), ds.y_train[:n]
with_fit, with_tape = build_cnn(name="with_fit"), build_cnn(name="with_tape")
initial_weights = with_fit.get_weights()
with_tape.set_weights(initial_weights)

with_fit.compile(optimizer=sgd(), loss=keras.losses.SparseCategoricalCrossentropy(),
                 jit_compile=False)
with_fit.fit(x_eq, y_eq, batch_size=args.batch_size, epochs=1, shuffle=False,
             verbose=callbacks.verbose())

tape_step = make_train_step(with_tape, keras.losses.SparseCategoricalCrossentropy(), sgd())
for start in range(0, n, args.batch_size):
    tape_step(x_eq[start : start + args.batch_size], y_eq[start : start + args.batch_size])

weight_diff = max(float(np.abs(a - b).max())
                  for a, b in zip(with_fit.get_weights(), with_tape.get_weights()))
weight_change = max(float(np.abs(a - b).max())
                    for a, b in zip(with_fit.get_weights(), initial_weights))
print(f"after {args.equivalence_steps} steps: weights moved up to {weight_change:.3f} from their "
      f"initial values; fit() and the tape loop differ by at most {weight_diff:.2e}")

# %% [markdown]
# ## 3. Gradient check against finite differences
#
# The tape's gradients should match the definition of a derivative. For every parameter θ of a
# tiny CNN (conv, ReLU, max pooling, dense, softmax cross-entropy) we compute the central
# difference `(L(θ + ε) - L(θ - ε)) / 2ε` in float64 and compare it with the tape's gradient.
# The relative error `|g_tape - g_numeric| / max(|g_tape|, |g_numeric|)` should be around 1e-7
# or smaller; 1e-2 would mean a bug. Entries with a tiny gradient show larger relative errors
# (round-off of about 1e-16 x L / ε is a larger share of them), so we also report the median and
# the relative error of the whole gradient vector. ReLU and max pooling have kinks: a
# perturbation that crosses one spoils that entry's check, which is rare at ε = 1e-5 unless many
# units sit exactly on a kink (see the biases below). A smaller ε is not better: float64
# round-off in `L(θ + ε) - L(θ - ε)` then dominates.

# %%
check_images = tf.image.resize(ds.x_train[:8].astype("float64") / 255, (10, 10)).numpy()
check_images, check_labels = check_images.astype("float64"), ds.y_train[:8]
tiny = keras.Sequential([
    keras.Input((10, 10, input_shape[-1]), dtype="float64"),
    # random (not zero) biases: a zero-bias ReLU on a blank patch (MNIST's black background)
    # sits exactly on the kink at 0, where the two sides of a derivative disagree
    keras.layers.Conv2D(4, 3, activation="relu", bias_initializer="random_normal",
                        dtype="float64"),
    keras.layers.MaxPooling2D(dtype="float64"),
    keras.layers.Flatten(dtype="float64"),
    keras.layers.Dense(num_classes, dtype="float64"),
], name="tiny_cnn")
# Keras losses compute in the global float type (float32) unless told otherwise.
tiny_cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


@tf.function
def tiny_loss():
    return tiny_cross_entropy(check_labels, tiny(check_images))


with tf.GradientTape() as tape:
    loss = tiny_loss()
tiny_gradients = [g.numpy() for g in tape.gradient(loss, tiny.trainable_variables)]

epsilon, relative_errors, absolute_errors, numeric_gradients = 1e-5, [], [], []
for variable, taped in zip(tiny.trainable_variables, tiny_gradients):
    values = variable.numpy()
    for index in np.ndindex(values.shape):
        shifted = values.copy()
        shifted[index] += epsilon
        variable.assign(shifted)
        loss_plus = float(tiny_loss())
        shifted[index] -= 2 * epsilon
        variable.assign(shifted)
        loss_minus = float(tiny_loss())
        numeric = (loss_plus - loss_minus) / (2 * epsilon)
        numeric_gradients.append(numeric)
        error = abs(taped[index] - numeric)
        absolute_errors.append(error)
        # gradients that are (numerically) zero are compared in absolute terms
        relative_errors.append(error / max(abs(taped[index]), abs(numeric), 1e-10))
    variable.assign(values)
# one number for the whole gradient vector: |g_tape - g_numeric| / (|g_tape| + |g_numeric|)
taped_vector = np.concatenate([g.ravel() for g in tiny_gradients])
numeric_vector = np.array(numeric_gradients)
vector_error = float(np.linalg.norm(taped_vector - numeric_vector)
                     / (np.linalg.norm(taped_vector) + np.linalg.norm(numeric_vector)))
num_checked = len(relative_errors)
print(f"gradient check of {num_checked} parameters: relative error max "
      f"{max(relative_errors):.2e}, median {np.median(relative_errors):.2e}; max absolute error "
      f"{max(absolute_errors):.2e}; whole-vector relative error {vector_error:.2e}")

# %% [markdown]
# ## 4. Cross-entropy vs mean squared error
#
# The same CNN, the same initial weights, optimizer and epochs, trained with our loop twice:
# once with cross-entropy, once with the mean squared error between the softmax output and the
# one-hot label. With softmax + cross-entropy the gradient at the logits is `p - y`: large while
# the prediction is wrong. MSE multiplies it by the softmax's derivative, which is small when the
# softmax is confidently wrong, so learning starts slower. The right panel of the plot shows the
# size of the gradient that reaches the output layer under each loss.

# %%
def predict(model):
    """Softmax outputs on the test split, one plain call per batch (`model.predict` would
    compile a new function for every model, and TensorFlow warns about the retracing)."""
    return np.concatenate([model(images, training=False).numpy() for images in test_images])


def train_with_tape(model, loss_fn, name):
    """Our training loop: history per epoch and every step's kernel-gradient norms per layer.
    Like fit() with BackupAndRestore, it saves after every epoch (weights, optimizer state,
    history) to OUT/backup/NAME, and a rerun after Ctrl-C continues from the last saved epoch;
    a loop that had finished before the interrupt is loaded instead of trained again."""
    record = finished.load(name, model)
    if record is not None:
        return record["history"], np.array(record["norms"])
    if plan is not None and name in to_train:
        plan.start(name)
    optimizer = sgd()
    train_step = make_train_step(model, loss_fn, optimizer)
    backup = callbacks.LoopBackup(out, name, model, optimizer, args)
    state = backup.restore() or {"epoch": 0, "norms": [], "history": {
        "loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}}
    history, norms = state["history"], state["norms"]
    for epoch in range(state["epoch"], args.epochs):
        print(f"{name}: epoch {epoch + 1}/{args.epochs}", flush=True)
        progress = keras.utils.Progbar(steps_per_epoch, verbose=callbacks.verbose(),
                                       stateful_metrics=["accuracy"])
        losses, correct, seen = [], 0, 0
        for step, (images, labels) in enumerate(train, start=1):
            loss, probabilities, kernel_norms = train_step(images, labels)
            losses.append(float(loss))
            correct += int((probabilities.numpy().argmax(-1) == labels.numpy()).sum())
            seen += len(labels)
            norms.append(kernel_norms.numpy().tolist())
            progress.update(step, [("loss", losses[-1]), ("accuracy", correct / seen)],
                            finalize=False)
        if not np.isfinite(losses).all():
            raise UserError(f"{name}: the loss diverged in epoch {epoch + 1}; use a smaller "
                            f"--learning-rate than {args.learning_rate}")
        probabilities = predict(model)
        history["loss"].append(float(np.mean(losses)))
        history["accuracy"].append(correct / seen)
        history["val_loss"].append(float(loss_fn(ds.y_test, probabilities)))
        history["val_accuracy"].append(float((probabilities.argmax(-1) == ds.y_test).mean()))
        state["epoch"] = epoch + 1
        backup.save(state)
        # the epoch's line comes once it is saved: an interrupt from here on loses nothing
        progress.update(step, [(k, v[-1]) for k, v in history.items()], finalize=True)
        if plan is not None:
            plan.epoch_done()
    finished.save(name, model, {"history": history, "norms": norms})
    backup.finish()
    return history, np.array(norms)


def mean_squared_error(labels, probabilities):
    return keras.losses.MeanSquaredError()(tf.one_hot(labels, num_classes), probabilities)


cross_entropy_model, mse_model = build_cnn(name="cross_entropy"), build_cnn(name="mse")
mse_model.set_weights(cross_entropy_model.get_weights())
runs = {  # name: (history, kernel-gradient norms per step and layer)
    "cross_entropy": train_with_tape(cross_entropy_model,
                                     keras.losses.SparseCategoricalCrossentropy(), "cross_entropy"),
    "mse": train_with_tape(mse_model, mean_squared_error, "mse"),
}

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for (name, (history, norms)), colour in zip(runs.items(), ("C0", "C1")):
    epochs = range(1, args.epochs + 1)
    axes[0].plot(epochs, history["accuracy"], color=colour, label=f"{name} train")
    axes[0].plot(epochs, history["val_accuracy"], color=colour, linestyle="--",
                 label=f"{name} test")
    axes[1].plot(norms[:, -1], color=colour, linewidth=0.8, label=name)
axes[0].set(xlabel="epoch", ylabel="accuracy", title="the same CNN, two losses")
axes[1].set(yscale="log", xlabel="training step", ylabel="gradient norm",
            title="gradient of the output layer's kernel")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plots.save(fig, out / "cross_entropy_vs_mse.png")

# %% [markdown]
# ## 5. Vanishing gradients: sigmoid vs ReLU
#
# Backpropagation multiplies, layer after layer, by the derivative of the activation. The
# sigmoid's derivative is at most 0.25, so in a deep plain network (no batch norm, no residual
# connections) the gradient shrinks on its way back and the first layers barely learn. ReLU's
# derivative is 1 where it is active. We train the same plain CNN of `--depth` conv layers with
# both activations, from the same (He-normal) initial weights, so that only the activation
# differs, and record each layer's kernel-gradient norm at every step.

# %%
def build_plain_deep(activation):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for i in range(args.depth):
        x = keras.layers.Conv2D(16, 3, padding="same", activation=activation,
                                kernel_initializer="he_normal", name=f"conv{i + 1}")(x)
        if i % 2 == 1 and i < args.depth - 1 and x.shape[1] >= 4:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name=f"plain_{activation}")


deep = {activation: build_plain_deep(activation) for activation in ("sigmoid", "relu")}
deep["relu"].set_weights(deep["sigmoid"].get_weights())
layer_names = [f"conv{i + 1}" for i in range(args.depth)] + ["output"]
deep_histories, grad_norms, deep_results = {}, {}, {}
for activation, model in deep.items():
    deep_histories[activation], grad_norms[activation] = train_with_tape(
        model, keras.losses.SparseCategoricalCrossentropy(), f"plain_{activation}")
    mean_norms = grad_norms[activation].mean(0)
    deep_results[activation] = {
        "test_accuracy": deep_histories[activation]["val_accuracy"][-1],
        "grad_norm_ratio_first_to_last": float(mean_norms[0] / mean_norms[-1]),
    }
    print(f"{activation}: mean gradient norm per layer "
          + " ".join(f"{n}={v:.1e}" for n, v in zip(layer_names, mean_norms)))

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
colours = plt.cm.viridis(np.linspace(0, 0.9, len(layer_names)))
for ax, activation in zip(axes[:2], deep):
    for layer, (name, colour) in enumerate(zip(layer_names, colours)):
        ax.plot(grad_norms[activation][:, layer], color=colour, linewidth=0.8, label=name)
    ax.set(yscale="log", xlabel="training step", ylabel="kernel gradient norm",
           title=f"plain {args.depth}-conv CNN, {activation}")
    ax.grid(alpha=0.3)
axes[1].sharey(axes[0])
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(layer_names),
           bbox_to_anchor=(0.36, -0.1), fontsize=8)
for activation, marker in zip(deep, "os"):
    axes[2].plot(layer_names, grad_norms[activation].mean(0), marker=marker, label=activation)
axes[2].set(yscale="log", xlabel="layer (input -> output)", ylabel="mean kernel gradient norm",
            title="gradient norm per layer, averaged over training")
axes[2].tick_params(axis="x", rotation=45)
axes[2].grid(alpha=0.3)
axes[2].legend()
plots.save(fig, out / "gradient_norms.png")
plots.training_curves(deep_histories, out / "deep_curves.png", metrics=("loss", "accuracy"),
                      title=f"plain {args.depth}-conv CNN: sigmoid vs ReLU")

# %% [markdown]
# ## Evaluate and save
#
# The cross-entropy CNN trained with our GradientTape loop is the recipe's model: scored on the
# test split, saved for `predict` and `evaluate`.

# %%
y_pred = predict(cross_entropy_model).argmax(-1)
plots.confusion_matrix(ds.y_test, y_pred, ds.class_names, out / "confusion.png")
saving.save_classifier(cross_entropy_model, out, ds.class_names)

results = {
    **metrics.classification(ds.y_test, y_pred, num_classes),
    "chain_rule": {"max_abs_diff": chain_rule_diff},
    "equivalence": {"steps": args.equivalence_steps, "max_abs_weight_diff": weight_diff,
                    "max_abs_weight_change": weight_change},
    "gradient_check": {"max_relative_error": float(max(relative_errors)),
                       "median_relative_error": float(np.median(relative_errors)),
                       "vector_relative_error": vector_error,
                       "max_abs_error": float(max(absolute_errors)),
                       "num_parameters": num_checked},
    "cross_entropy": {"test_accuracy": runs["cross_entropy"][0]["val_accuracy"][-1]},
    "mse": {"test_accuracy": runs["mse"][0]["val_accuracy"][-1]},
    **deep_results,
}
cli.finish(args, results, args.dataset)
finished.clear()  # results.json is written: a rerun starts a new run
