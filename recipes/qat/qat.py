# %% [markdown]
# # Quantization: post-training vs quantization-aware training, measured on int8 LiteRT
#
# **Description:** train a float CNN (plain, or MobileNet-style with `--arch mobilenet`),
# then make it smaller and faster four ways and measure what each keeps: post-training
# dynamic-range quantization, post-training full-integer int8 quantization (calibrated on a
# representative dataset), quantization-aware training with tensorflow-model-optimization
# (fine-tuned, then converted to an int8 `.tflite`), and Keras 3's own `model.quantize("int8")`.
# Every `.tflite` is scored with the LiteRT interpreter (`ai_edge_litert`): test accuracy, file
# size, median batch-1 CPU latency over many runs (with LiteRT's default XNNPACK kernels and
# with its built-in kernels) and peak memory.
#
# **Concepts:** quantization stores weights (and, for full-integer models, activations) as
# 8-bit integers `q` with a scale and a zero point, `real = scale * (q - zero_point)`: a
# quarter of the bytes of float32, and integer arithmetic at inference. Post-training
# quantization (PTQ) rounds a trained model: dynamic range quantizes the weights only and
# quantizes activations on the fly; full-integer PTQ also fixes the range of every activation
# from a few hundred calibration images. Quantization-aware training (QAT) inserts
# "fake-quant" ops (round to the int8 grid in the forward pass, straight-through gradient in
# the backward pass) and fine-tunes, so the weights learn to live on the grid; its learned
# ranges then become the int8 model's.
#
# Run: `make qat` or `python -m recipes.qat --help`. In a notebook, pass flags in a cell above
# the setup cell: `import os; os.environ["RECIPE_ARGS"] = "--dataset npz:/content/my.npz"`
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
# tensorflow-model-optimization works on tf_keras (Keras 2) models only, and tf.keras is
# tf_keras only when this is set before TensorFlow is imported. `import keras` stays Keras 3,
# so the float model, the common pipeline and callbacks, and `model.quantize` use Keras 3;
# only the quantization-aware copy of the model is a tf_keras model.
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from common import UserError, cli  # noqa: E402

ROWS = ("float", "float_tflite", "ptq_dynamic", "ptq_int8", "qat_int8", "keras_int8")
# synthetic:shapes is generated at the size asked for: --train-size images, 6,000 when not given.
SYNTHETIC_TRAIN_SIZE = 6000

parser = cli.parser(
    "qat", dataset="synthetic:shapes", epochs=15, batch_size=64, budget_steps=1500,
    description="Float CNN, then post-training dynamic-range and int8 quantization, "
                "quantization-aware training (tfmot) and Keras int8, each scored as a LiteRT "
                "model: accuracy, size, batch-1 latency, peak memory. `predict` and `evaluate` "
                "take a .tflite (or the float model.keras).")
parser.add_argument("--arch", choices=("cnn", "mobilenet"), default="cnn",
                    help="cnn: plain convolutions; mobilenet: depthwise-separable blocks with "
                         "ReLU6, the architecture of the published int8 MobileNet results")
parser.add_argument("--qat-epochs", type=int, default=2,
                    help="quantization-aware fine-tuning epochs (after the float training)")
parser.add_argument("--calibration-images", type=int, default=256,
                    help="representative training images for full-integer PTQ")
parser.add_argument("--latency-runs", type=int, default=500,
                    help="timed batch-1 invocations per model and round (median reported)")
parser.add_argument("--rounds", type=int, default=3,
                    help="timing rounds, models taken in turn, so that a busy moment of a "
                         "shared machine hits them all alike")
parser.add_argument("--threads", type=int, default=1, help="LiteRT interpreter threads")
for sub in (parser.predict, parser.evaluate):
    sub.add_argument("--threads", type=int, default=1, help="LiteRT interpreter threads")
parser.evaluate.add_argument("--latency-runs", type=int, default=500,
                             help="timed batch-1 invocations (median reported)")
args = cli.parse_args(parser)
if args.threads < 1 or (args.command != "predict" and args.latency_runs < 1):
    raise UserError("--threads and --latency-runs must be at least 1")
if args.command == "train" and min(args.qat_epochs, args.calibration_images, args.rounds) < 1:
    raise UserError("--qat-epochs, --calibration-images and --rounds must be at least 1")
if args.smoke:
    args.epochs, args.qat_epochs, args.batch_size = 4, 3, 32
    args.train_size = min(args.train_size or 400, 400)
    args.calibration_images, args.latency_runs, args.rounds = 32, 30, 1

# %%
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from matplotlib.ticker import FuncFormatter

from common import callbacks, data, metrics, pipeline, plots, results, saving

out = Path(args.out)

# %% [markdown]
# ## Running a `.tflite` with the LiteRT interpreter
#
# A full-integer model takes int8 images and returns int8 scores: the input is quantized with
# the model's own scale and zero point, the output dequantized the same way. For accuracy the
# batch dimension is resized to score many images per call; latency is measured at batch 1,
# in a fresh process per model that imports only the LiteRT runtime, so that its peak memory
# (how far the process's resident set size rises while loading and running the model) belongs
# to that model alone.


# %%
def open_tflite(path, threads=1):
    """A LiteRT interpreter for an image classifier, or a UserError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path} (train first, or pass --model PATH)")
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
    except ValueError as err:
        raise UserError(f"{path} is not a LiteRT (.tflite) model ({str(err).strip()}): pass a "
                        f".tflite written by this recipe, e.g. runs/qat/model_qat_int8.tflite"
                        ) from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or len(outputs) != 1 or len(
            outputs[0]["shape"]) != 2:
        raise UserError(f"{path} is not an image classifier (inputs "
                        f"{[list(i['shape']) for i in inputs]}, outputs "
                        f"{[list(o['shape']) for o in outputs]}; expected [1, H, W, C] -> "
                        "[1, classes])")
    return interpreter


def tflite_probabilities(interpreter, images, batch_size=256):
    """Class scores of uint8 images (N, H, W, C), `batch_size` images per invocation."""
    scores = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        if interpreter.get_input_details()[0]["shape"][0] != len(batch):
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [len(batch), *batch.shape[1:]])
            interpreter.allocate_tensors()
        given, wanted = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        if given["dtype"] != np.float32:  # full-integer model: quantize with its parameters
            scale, zero_point = given["quantization"]
            limits = np.iinfo(given["dtype"])
            batch = np.clip(np.round(batch / scale + zero_point), limits.min, limits.max)
        interpreter.set_tensor(given["index"], batch.astype(given["dtype"]))
        interpreter.invoke()
        result = interpreter.get_tensor(wanted["index"]).astype(np.float32)
        if wanted["dtype"] != np.float32:
            scale, zero_point = wanted["quantization"]
            result = scale * (result - zero_point)
        scores.append(result)
    return np.concatenate(scores)


# Run as `python -c MEASURE PATH RUNS THREADS KERNELS`: prints the batch-1 times (ms) and the
# peak memory (bytes) of one model as JSON. KERNELS: `xnnpack` is LiteRT's default (the XNNPACK
# delegate takes every op it supports), `builtin` the interpreter's own kernels alone. The peak is the rise of the resident set size above its
# level once the runtime is imported (Linux: the high-water mark is reset there; elsewhere the
# process's maximum resident set size stands in, which includes the imports).
MEASURE = """
import json, resource, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
def memory(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))
try:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = memory("VmRSS:")
except OSError:
    before = None
path, runs, threads, kernels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resolver = {"xnnpack": OpResolverType.AUTO,
            "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[kernels]
interpreter = Interpreter(model_path=path, num_threads=threads,
                          experimental_op_resolver_type=resolver)
interpreter.allocate_tensors()
given = interpreter.get_input_details()[0]
image = np.random.default_rng(0).integers(0, 256, given["shape"]).astype(np.float32)
if given["dtype"] != np.float32:
    image = np.clip(image - 128, -128, 127)
image = image.astype(given["dtype"])
times = []
for _ in range(runs + 20):  # the first 20: warm-up
    started = time.perf_counter()
    interpreter.set_tensor(given["index"], image)
    interpreter.invoke()
    interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    times.append(1000 * (time.perf_counter() - started))
if before is None:
    peak = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
else:
    peak = memory("VmHWM:") - before
print(json.dumps({"times_ms": times[20:], "peak_memory_bytes": peak}))
"""


KERNELS = ("xnnpack", "builtin")


def measure_tflite(paths, runs, threads=1, rounds=1):
    """{path: {"latency_ms_KERNELS": median batch-1 ms for each kernel set, "latency_ms": the
    fastest of them, "kernels": which, "peak_memory_bytes": peak memory with those kernels}},
    every (model, kernels) in turn in each round."""
    times = {(p, k): [] for p in paths for k in KERNELS}
    peaks = {(p, k): 0 for p in paths for k in KERNELS}
    for _ in range(rounds):
        for path, kernels in times:
            done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(runs),
                                   str(threads), kernels], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"timing {path} failed:\n{done.stderr[-2000:]}")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            times[path, kernels] += found["times_ms"]
            peaks[path, kernels] = max(peaks[path, kernels], found["peak_memory_bytes"])
    measured = {}
    for path in paths:
        median = {k: float(np.median(times[path, k])) for k in KERNELS}
        fastest = min(median, key=median.get)
        measured[path] = {"latency_ms": median[fastest], "kernels": fastest,
                          **{f"latency_ms_{k}": median[k] for k in KERNELS},
                          "peak_memory_bytes": peaks[path, fastest]}
    return measured


def cpu():
    """The CPU's model name and the SIMD flags that decide the int8 vs float race."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": []}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return {"model": model, "flags": sorted(f for f in flags if f.startswith(
        ("avx", "fma", "amx")) or "vnni" in f)}


def class_names_for(model_path, num_classes):
    """The class names saved beside a model (class_names.json), else the class ids."""
    names_file = Path(model_path).with_name("class_names.json")
    names = json.loads(names_file.read_text()) if names_file.is_file() else [
        str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UserError(f"{names_file} lists {len(names)} classes, the model predicts "
                        f"{num_classes}: it belongs to another model")
    return names


# %% [markdown]
# ## `predict` and `evaluate` with a `.tflite`
#
# `predict` resizes each image file to the model's input (as every recipe's `predict` does);
# `evaluate` scores a dataset whose images already have the model's input shape and refuses
# others, since an int8 model's accuracy is only meaningful on the data it was calibrated for.
# A `.keras` model goes to the shared Keras commands.

# %%
if args.command in ("predict", "evaluate") and not args.model.endswith(".tflite"):
    cli.classifier_commands(args)  # the float model.keras: the shared commands, then stop
if args.command == "predict":
    interpreter = open_tflite(args.model, args.threads)
    _, height, width, channels = interpreter.get_input_details()[0]["shape"]
    images = data.read_images(args.files, (height, width), channels)
    scores = tflite_probabilities(interpreter, images)
    names = class_names_for(args.model, scores.shape[-1])
    for path, row in zip(args.files, scores):
        print(f"{path}\t{names[int(row.argmax())]}")
    raise SystemExit
if args.command == "evaluate":
    interpreter = open_tflite(args.model, args.threads)
    model_shape = tuple(int(n) for n in interpreter.get_input_details()[0]["shape"][1:])
    classes = int(interpreter.get_output_details()[0]["shape"][-1])
    ds = data.require(data.load(args.dataset, seed=args.seed), data.Classification, args.dataset)
    if ds.x_test.shape[1:] != model_shape:
        h, w, c = model_shape
        raise UserError(f"{args.model} takes {h}x{w} images with {c} channel(s), {args.dataset} "
                        f"has {ds.x_test.shape[1]}x{ds.x_test.shape[2]} with "
                        f"{ds.x_test.shape[3]}: evaluate on data of the model's input shape, or "
                        f"train a model on this data (python -m recipes.qat --dataset "
                        f"{args.dataset})")
    names = class_names_for(args.model, classes)
    if ds.num_classes > classes:
        raise UserError(f"{args.dataset} has {ds.num_classes} classes, the model predicts "
                        f"{classes}: evaluate on a dataset of the model's classes")
    y_pred = tflite_probabilities(interpreter, ds.x_test, args.batch_size).argmax(-1)
    timing = measure_tflite([args.model], args.latency_runs, args.threads)[args.model]
    kernels = timing.pop("kernels")
    scores = {**metrics.classification(ds.y_test, y_pred, classes),
              "size_bytes": Path(args.model).stat().st_size, **timing}
    plots.confusion_matrix(ds.y_test, y_pred, names, Path(args.out) / "confusion.png")
    results.write(args.out, args.recipe, args.dataset, scores, time.time() - args.started,
                  vars(args), model=str(args.model), fastest_kernels=kernels, cpu=cpu())
    print(results.summary(scores, f"evaluate {args.model} on {args.dataset}"))
    raise SystemExit

# The training run needs tfmot on tf_keras: that works only if TensorFlow was first imported
# in this process after TF_USE_LEGACY_KERAS was set (a notebook kernel that had imported it
# before must be restarted).
import tf_keras  # noqa: E402

if tf.keras.layers.Dense is not tf_keras.layers.Dense:
    raise UserError("TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set, so "
                    "tensorflow-model-optimization cannot run: restart the Python process or "
                    "notebook kernel and run this recipe first thing")
import tensorflow_model_optimization as tfmot  # noqa: E402

# %% [markdown]
# ## Prepare the data
#
# Images stay uint8 in [0, 255]; the model rescales inside itself, so every variant (Keras or
# LiteRT) takes raw pixels. The training split feeds the common tf.data pipeline (cached,
# shuffled, prefetched) for both the float training and the quantization-aware fine-tuning;
# the test split scores every row.

# %%
synthetic = {"num_examples": args.train_size or SYNTHETIC_TRAIN_SIZE} if args.dataset.startswith(
    "synthetic:") else {}
ds = data.require(data.load(args.dataset, seed=args.seed, **synthetic), data.Classification,
                  args.dataset)
ds.x_train, ds.y_train = cli.train_subset(args, ds.x_train, ds.y_train)
x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
K, names = ds.num_classes, ds.class_names
steps = cli.training_budget(args, len(x_train))
print(f"{args.dataset}: {len(x_train)} training / {len(x_test)} test images of "
      f"{'x'.join(map(str, x_train.shape[1:]))}, {K} classes; float model: {args.epochs} epochs "
      f"of {steps} steps ({args.arch}), then {args.qat_epochs} quantization-aware epochs")
train_stream = pipeline.for_training(x_train, y_train, args.batch_size, seed=args.seed)
val = pipeline.for_eval(x_test, y_test)

# %% [markdown]
# ## The float model
#
# `--arch cnn` (the default) is a plain CNN: three stages of convolution, batch normalization,
# ReLU and max pooling, then global average pooling and a dense classifier. `--arch mobilenet`
# is built like MobileNet v1, the model of the best-known int8 results: a stride-2
# convolution, then five depthwise-separable blocks (a 3x3 depthwise convolution, which
# filters each channel on its own, then a 1x1 pointwise convolution that mixes channels), each
# convolution followed by batch normalization and ReLU6 (`min(max(x, 0), 6)`, whose bounded
# range was chosen for 8-bit inference). Depthwise kernels are the classic hard case for int8:
# each channel has only 9 weights and their ranges differ a lot between channels. Every block
# is one that the int8 kernels and the QAT tooling know: a convolution followed by batch
# normalization and a ReLU is folded into one int8 convolution with a fused activation. The
# layers are named, so that a tf_keras copy can take the weights layer by layer.


# %%
# (pointwise filters, stride) of the depthwise-separable blocks after the first convolution
# (stride 2, as in MobileNet): 32x32 -> 16 -> 8 -> 4
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))


def build_model(k, shape, rescale=True):
    """The `--arch` model in Keras module `k` (keras for Keras 3, tf_keras for tfmot). Without
    `rescale` the input scaling is left out: the caller folds it into the first convolution."""
    inputs = k.Input(shape)
    x = k.layers.Rescaling(1 / 255, name="rescale")(inputs) if rescale else inputs
    if args.arch == "cnn":
        for i, filters in enumerate((32, 64, 128)):
            x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
            x = k.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
            x = k.layers.ReLU(name=f"relu{i}")(x)
            x = k.layers.MaxPooling2D(padding="same", name=f"pool{i}")(x)
        x = k.layers.GlobalAveragePooling2D(name="gap")(x)
        x = k.layers.Dense(128, activation="relu", name="dense")(x)
    else:
        x = k.layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="conv0")(x)
        x = k.layers.BatchNormalization(momentum=0.9, name="bn0")(x)
        x = k.layers.ReLU(max_value=6.0, name="relu0")(x)
        for i, (filters, stride) in enumerate(MOBILENET_BLOCKS, 1):
            x = k.layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False,
                                         name=f"dw{i}")(x)
            x = k.layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(x)
            x = k.layers.ReLU(max_value=6.0, name=f"dw{i}_relu")(x)
            x = k.layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
            x = k.layers.BatchNormalization(momentum=0.9, name=f"pw{i}_bn")(x)
            x = k.layers.ReLU(max_value=6.0, name=f"pw{i}_relu")(x)
        x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    logits = k.layers.Dense(K, name="logits")(x)
    return k.Model(inputs, k.layers.Softmax(name="softmax")(logits), name=args.arch)


float_model = build_model(keras, x_train.shape[1:])
float_model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
    2e-3, steps * args.epochs)), "sparse_categorical_crossentropy", metrics=["accuracy"])
# After an interrupt the same command resumes: a finished float model is loaded, an
# unfinished one continues from its last epoch.
finished = callbacks.Finished(out, args)
record = finished.load("float", float_model)
if record is None:
    plan = callbacks.Plan(["float"], args.epochs, steps)
    history = float_model.fit(train_stream, epochs=args.epochs, validation_data=val,
                              callbacks=[plan.callback("float"),
                                         *callbacks.standard(out, "float", args)],
                              verbose=callbacks.verbose())
    record = {"history": history.history}
    finished.save("float", float_model, record)
saving.save_classifier(float_model, out, names)


def keras_accuracy(model):
    return float((model.predict(val, verbose=0).argmax(-1) == y_test).mean())


def keras_latency(model, runs):
    """Median batch-1 latency (ms) of a Keras model called through one traced tf.function."""
    infer = tf.function(lambda x: model(x, training=False))
    image = tf.constant(x_test[:1].astype(np.float32))
    times = []
    for _ in range(runs + 20):  # the first 20: tracing and warm-up
        started = time.perf_counter()
        infer(image).numpy()
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times[20:]))


def weight_bytes(model):
    """What a Keras model's weights take (an int8 kernel: one byte per weight)."""
    return int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights))


scores = {"float": {"test_accuracy": keras_accuracy(float_model),
                    "size_bytes": weight_bytes(float_model)}}
print(f"float model: test accuracy {scores['float']['test_accuracy']:.4f}, "
      f"{float_model.count_params():,} parameters")

# %% [markdown]
# ## A tf_keras copy, and quantization-aware training
#
# tfmot's `quantize_model` wraps a tf_keras model's layers with fake-quant ops: 8-bit
# per-channel weights, 8-bit activations with ranges tracked during training, batch
# normalization folded into the convolution before it. It does not know the `Rescaling`
# layer, so the copy leaves it out and folds the 1/255 into the first convolution's kernel
# (a convolution is linear: `conv(x / 255) = conv_with_kernel_divided_by_255(x)`). The copy
# computes the same function as the float model (checked below) and is also what the
# post-training conversions start from, so every `.tflite` comes from the same graph.
#
# tfmot starts every activation range at [-6, 6] and moves it with a moving average of decay
# 0.999, so a short fine-tuning would spend most of its steps with clipped activations (the
# logits here span about -50..25). The copy's ranges therefore start where full-integer PTQ
# puts them: at what the float model's activations span on the calibration images. The
# fine-tuning then starts from the trained float weights with a hundredth of the float
# learning rate: the weights only need to settle on the int8 grid.

# %%
def tf_keras_copy(model):
    copy = build_model(tf_keras, model.input_shape[1:], rescale=False)
    scale = model.get_layer("rescale").scale
    for layer in copy.layers:
        weights = model.get_layer(layer.name).get_weights() if layer.weights else []
        if layer.name == "conv0":
            weights = [weights[0] * scale]
        layer.set_weights(weights)
    return copy


def calibrate_ranges(qat_model, model, images):
    """Set each activation range of `qat_model` (tfmot's `*_min`/`*_max` variables) to what
    the same layer's output spans in the float tf_keras `model` on `images` (0 included)."""
    probe = tf_keras.Model(model.input, [layer.output for layer in model.layers[1:]])
    spans = {layer.name: (min(0.0, float(o.min())), max(0.0, float(o.max())))
             for layer, o in zip(model.layers[1:], probe.predict(images, verbose=0))}
    spans["input"] = (min(0.0, float(images.min())), max(0.0, float(images.max())))
    for wrapper in qat_model.layers:
        name = getattr(getattr(wrapper, "layer", None), "name", "input")
        for variable in wrapper.non_trainable_weights:
            kind = variable.name.split("/")[-1].split(":")[0]  # e.g. post_activation_max
            if kind in ("output_min", "post_activation_min", "quantize_layer_min"):
                variable.assign(spans[name][0])
            elif kind in ("output_max", "post_activation_max", "quantize_layer_max"):
                variable.assign(spans[name][1])


twin = tf_keras_copy(float_model)
difference = np.abs(twin.predict(x_test[:256].astype(np.float32), verbose=0)
                    - float_model.predict(x_test[:256].astype(np.float32), verbose=0)).max()
print(f"tf_keras copy: largest difference from the float model's scores {difference:.1e}")

# The representative images of full-integer PTQ below; here they calibrate the QAT ranges.
calibration = x_train[np.random.default_rng(args.seed).permutation(len(x_train))[
    :args.calibration_images]].astype(np.float32)
qat_model = tfmot.quantization.keras.quantize_model(twin)
calibrate_ranges(qat_model, twin, calibration)
qat_model.compile(tf_keras.optimizers.Adam(tf_keras.optimizers.schedules.CosineDecay(
    2e-5, steps * args.qat_epochs)), "sparse_categorical_crossentropy", metrics=["accuracy"])
qat_plan = callbacks.Plan(["qat"], args.qat_epochs, steps)  # Plan's hooks, in tf_keras
progress = tf_keras.callbacks.LambdaCallback(on_train_begin=lambda logs: qat_plan.start("qat"),
                                             on_epoch_end=lambda epoch, logs: qat_plan.epoch_done())
qat_history = qat_model.fit(train_stream, epochs=args.qat_epochs, validation_data=val,
                            callbacks=[progress], verbose=callbacks.verbose())

# %% [markdown]
# ## Convert: float, dynamic range, full-integer PTQ, QAT
#
# * **float_tflite**: the float graph as it is (the reference for size and speed).
# * **ptq_dynamic**: `Optimize.DEFAULT` alone: int8 weights, float activations (quantized
#   on the fly inside each int8 kernel). No data needed.
# * **ptq_int8**: plus a representative dataset (`--calibration-images` training images) that
#   fixes each activation's range; int8 in, int8 out, integer ops only.
# * **qat_int8**: the fine-tuned QAT model; its fake-quant ranges replace the calibration.

# %%
def convert(model, row):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if row != "float_tflite":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if row == "ptq_int8":
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if row in ("ptq_int8", "qat_int8"):
        converter.inference_input_type = converter.inference_output_type = tf.int8
    path = out / f"model_{row}.tflite"
    path.write_bytes(converter.convert())
    return path


tflite_paths = {row: convert(qat_model if row == "qat_int8" else twin, row)
                for row in ("float_tflite", "ptq_dynamic", "ptq_int8", "qat_int8")}
for row, path in tflite_paths.items():
    predicted = tflite_probabilities(open_tflite(path, args.threads), x_test).argmax(-1)
    scores[row] = {"test_accuracy": float((predicted == y_test).mean()),
                   "size_bytes": path.stat().st_size}
    if row == "qat_int8":
        qat_predicted = predicted

# %% [markdown]
# ## Keras 3's own int8: `model.quantize("int8")`
#
# Keras 3 quantizes in place, with no conversion: each layer that implements `quantize`
# stores an int8 kernel with a per-output-channel scale (abs-max) and quantizes its inputs on
# the fly, also with abs-max, per row. In Keras 3.15 the layers that implement it are
# `Dense`, `EinsumDense`, `Embedding` and `ReversibleEmbedding`: convolutions stay float. It
# is made for transformers and large language models, whose weights are almost all dense; on
# a CNN it reaches only the dense head. The row reports how much of the model it covers, the
# bytes its weights take (as for the `float` row: weights only, no file format around them)
# and its latency called from TensorFlow.

# %%
keras_int8 = keras.models.clone_model(float_model)
keras_int8.set_weights(float_model.get_weights())
keras_int8.quantize("int8")
quantized = [layer for layer in keras_int8.layers if getattr(layer, "quantization_mode", None)]
covered = sum(float_model.get_layer(layer.name).count_params() for layer in quantized)
keras_int8.save(out / "model_keras_int8.keras")
scores["keras_int8"] = {"test_accuracy": keras_accuracy(keras_int8),
                        "size_bytes": weight_bytes(keras_int8),
                        "quantized_weight_share": covered / float_model.count_params()}
print(f"keras int8 quantized {', '.join(layer.name for layer in quantized)}: "
      f"{covered:,} of {float_model.count_params():,} parameters")

# %% [markdown]
# ## Latency and peak memory
#
# Which model is faster depends on the kernels that run it as much as on the model. LiteRT's
# default hands every op it can to the XNNPACK delegate, whose float kernels are very fast on
# x86 CPUs with AVX2 and FMA; its int8 kernels gain most where the CPU has int8 dot-product
# instructions (VNNI on x86, dotprod on ARM). The interpreter's own built-in kernels are the
# other option. Each `.tflite` is therefore timed with both, and its row reports the faster
# (`latency_ms`; both are kept as `latency_ms_xnnpack` and `latency_ms_builtin`, and
# results.json names the winner per row and the CPU's model and flags): every model is
# compared at its best on this machine.
#
# Each (model, kernels) runs in its own process at batch 1 (`--latency-runs` invocations
# after a warm-up, `--threads` interpreter threads), taken in turn for `--rounds` rounds so
# that a busy moment on a shared machine does not fall on one model only; the median over all
# runs is reported. The two Keras rows are timed in this process, called through a traced
# `tf.function` on TensorFlow's own thread pool.

# %%
measured = measure_tflite(list(tflite_paths.values()), args.latency_runs, args.threads,
                          args.rounds)
fastest_kernels = {}
for row, path in tflite_paths.items():
    fastest_kernels[row] = measured[path].pop("kernels")
    scores[row].update(measured[path])
    print(f"{row}: xnnpack {scores[row]['latency_ms_xnnpack']:.3f} ms, built-in "
          f"{scores[row]['latency_ms_builtin']:.3f} ms: {fastest_kernels[row]} is faster")
for row, model in (("float", float_model), ("keras_int8", keras_int8)):
    scores[row]["latency_ms"] = keras_latency(model, args.latency_runs)

# %% [markdown]
# ## Results: what each variant keeps

# %%
scores = {row: scores[row] for row in ROWS}
accuracy = {row: s["test_accuracy"] for row, s in scores.items()}
scores["comparison"] = {
    "qat_drop_points": 100 * (accuracy["float"] - accuracy["qat_int8"]),
    "ptq_int8_drop_points": 100 * (accuracy["float"] - accuracy["ptq_int8"]),
    "qat_recovers_points": 100 * (accuracy["qat_int8"] - accuracy["ptq_int8"]),
    "int8_size_ratio": scores["float_tflite"]["size_bytes"] / scores["qat_int8"]["size_bytes"],
    # each at its fastest kernels, then both with the same kernels
    "int8_speedup": scores["float_tflite"]["latency_ms"] / scores["qat_int8"]["latency_ms"],
    **{f"int8_speedup_{k}": scores["float_tflite"][f"latency_ms_{k}"]
       / scores["qat_int8"][f"latency_ms_{k}"] for k in KERNELS},
}
print(f"{'row':<13}{'accuracy':>9}{'size KB':>10}{'latency ms':>12}{'kernels':>12}"
      f"{'peak MB':>9}")
for row in ROWS:
    s = scores[row]
    peak = f"{s['peak_memory_bytes'] / 2**20:9.1f}" if "peak_memory_bytes" in s else f"{'-':>9}"
    print(f"{row:<13}{s['test_accuracy']:9.4f}{s['size_bytes'] / 1024:10.1f}"
          f"{s['latency_ms']:12.3f}{fastest_kernels.get(row, 'tensorflow'):>12}{peak}")

for measure, unit, name in (
        ("size_bytes", "size (KB, log scale): LiteRT file, Keras weights", "size"),
        ("latency_ms", "median batch-1 latency (ms, log scale)", "latency")):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, row in enumerate(ROWS):
        value = scores[row][measure] / (1024 if measure == "size_bytes" else 1)
        ax.scatter(value, accuracy[row], s=70, color=f"C{i}", label=row, alpha=0.85,
                   marker="s" if row in ("float", "keras_int8") else "o")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(unit)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"accuracy vs {name} ({args.dataset}; squares: Keras, circles: LiteRT)",
                 fontsize=9)
    plots.save(fig, out / f"accuracy_vs_{name}.png")
float_epochs = len(record["history"]["loss"])  # QAT's epochs are drawn after the float ones
plots.training_curves({"float": record["history"], "qat": {
    key: [np.nan] * float_epochs + values for key, values in qat_history.history.items()}},
    out / "training_curves.png", title="float training, then QAT fine-tuning")
plots.confusion_matrix(y_test, qat_predicted, names, out / "confusion_qat_int8.png",
                       title=f"qat_int8: test accuracy {accuracy['qat_int8']:.3f}")

# %% [markdown]
# ## Save and report
#
# `OUT/model_qat_int8.tflite` is the deployable model (`predict --model` it); the other
# `.tflite` files, the float `model.keras` and the Keras int8 model lie beside it.

# %%
(out / "class_names.json").write_text(json.dumps(names) + "\n")  # read by predict/evaluate
path = results.write(out, args.recipe, args.dataset, scores, time.time() - args.started,
                     vars(args), parameters=float_model.count_params(),
                     fastest_kernels=fastest_kernels, cpu=cpu(),
                     keras_int8_layers=[layer.name for layer in quantized],
                     tf_keras_copy_difference=float(difference))
print(results.summary(scores, f"qat on {args.dataset} ({time.time() - args.started:.0f} s)"))
print(f"wrote {path}")
finished.clear()  # results.json is written: nothing left to resume
