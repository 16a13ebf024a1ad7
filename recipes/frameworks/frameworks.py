# %% [markdown]
# # Frameworks: one CNN on TensorFlow, JAX and PyTorch (Keras 3), and in native PyTorch
#
# **Description:** train the collection's reference CNN with one Keras 3 script on the
# `tensorflow`, `jax` and `torch` backends, and the same network and schedule written in native
# PyTorch (`torch.nn`, a `DataLoader`, a plain loop). Same arrays, same hyper-parameters, three
# seeds each; measured: test accuracy and its spread over seeds, training and inference speed,
# peak memory, the cost of the first (tracing/compiling) epoch, lines of code, eager against
# compiled execution, and every export format each framework offers, run in its own runtime.
#
# **Concepts:** a *framework* turns the same mathematics (convolutions, a loss, its gradient,
# an optimiser step) into work on a processor, and they differ in *how*. **Dynamic graphs**
# (PyTorch's default, TensorFlow's eager mode) run each operation as Python reaches it: easy
# to debug with print and a debugger, any Python control flow, but every operation pays
# Python's overhead. **Static graphs** (`tf.function`, `jax.jit`, `torch.compile`) trace the
# step once into a graph that a compiler (TensorFlow's graph runtime, XLA, TorchInductor) can
# fuse and schedule: faster steps once compiled, a compile cost up front, and Python side
# effects that run only while tracing. **Ease of use** is how much code a model and its
# training take and how clear the errors are: Keras's `fit()` against a hand-written loop.
# **Deployment** is getting the trained network out of Python: TensorFlow's SavedModel and
# LiteRT (TFLite) for servers and phones, ONNX as the exchange format many runtimes read,
# TorchScript and `torch.export` for PyTorch's own. The **ecosystem** (pretrained models,
# tools, hiring) is not measured here, but which export path works from which backend is.
# **Performance** depends on the device: on a small CPU the framework's per-operation overhead
# and its CPU kernels decide; on a GPU (many thousands of parallel cores, its own memory) the
# input pipeline and the compiler's fusion do, and `bench/bench_frameworks.py` measures that
# when a GPU machine is available.
#
# Run: `make frameworks` (after `make frameworks-deps`, which installs JAX, the PyTorch CPU
# build and onnxruntime) or `python -m recipes.frameworks --help`. In a notebook, pass flags
# through `RECIPE_ARGS` in a cell above the setup cell, e.g.
# `os.environ["RECIPE_ARGS"] = "--rows keras_tensorflow,torch_native --seeds 2"`.

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
# The budget: about 160 optimisation steps per model (at most 8 epochs, at least 2), three
# seeds per row, four rows. `--rows` picks the rows; each needs its framework installed
# (`make frameworks-deps`, or in Colab `pip install -r requirements-frameworks.txt`).

# %%
from common import UserError, cli

ROWS = {"keras_tensorflow": "tensorflow", "keras_jax": "jax", "keras_torch": "torch",
        "torch_native": "torch"}
# the packages each row imports: its framework, and the runtimes its exports are run with
NEEDS = {"keras_tensorflow": ["tensorflow", "ai_edge_litert", "tf2onnx", "onnxruntime"],
         "keras_jax": ["jax", "jaxlib"],
         "keras_torch": ["torch", "onnxruntime", "onnxscript"],
         "torch_native": ["torch", "onnx", "onnxruntime", "onnxscript"]}
MIN_SIDE = 8  # three 2x2 poolings: a smaller image has no pixels left for the classifier

parser = cli.parser("frameworks", "The same CNN on Keras 3 (TensorFlow, JAX, PyTorch backends) "
                    "and in native PyTorch: accuracy, speed, memory, deployment.",
                    epochs=8, batch_size=64, budget_steps=160, min_epochs=2)
parser.add_argument("--rows", default=",".join(ROWS),
                    help=f"comma-separated rows to run, from: {', '.join(ROWS)}")
parser.add_argument("--seeds", type=int, default=3,
                    help="training runs per row (seeds SEED, SEED+1, ...): the spread of "
                    "test accuracy over them says which differences are real")
parser.add_argument("--image-size", type=int, default=None,
                    help="resize images to this side (default: as the dataset has them)")
parser.add_argument("--mode-steps", type=int, default=10,
                    help="training steps timed per eager/compiled mode (0: no mode timings)")
parser.add_argument("--no-export", action="store_true",
                    help="skip the export formats (deployment)")
parser.add_argument("--jobs", type=int, default=None,
                    help="row processes run at the same time (default 1, so that no row's speed "
                    "is measured while another row shares the CPU; --smoke: 2)")
args = cli.parse_args(parser)
cli.classifier_commands(args)  # predict / evaluate a saved model.keras, then stop

rows = [r.strip() for r in args.rows.split(",") if r.strip()]
unknown = [r for r in rows if r not in ROWS]
if unknown or not rows:
    raise UserError(f"unknown row or backend {', '.join(unknown) or repr(args.rows)} in --rows: "
                    f"choose from {', '.join(ROWS)} (comma-separated)")
if args.jobs is not None and args.jobs < 1:
    raise UserError(f"--jobs {args.jobs}: use 1 or more row processes at a time")
if args.seeds < 2 and not args.smoke:
    raise UserError(f"--seeds {args.seeds}: use at least 2, the spread needs two runs per row")
for row in rows:
    missing = [name for name in NEEDS[row] if find_spec(name) is None]
    if missing:
        raise UserError(f"row {row} needs {', '.join(missing)}, which is not installed: run "
                        "`make frameworks-deps` (pip-installs requirements-frameworks.txt into "
                        f".venv), or leave the row out, e.g. --rows keras_tensorflow")

# %%
import hashlib
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from common import data, plots
from recipes.frameworks.measure import code_lines, marked_code

out = Path(args.out)
HERE = Path(cli.__file__).resolve().parent.parent / "recipes" / "frameworks"

# %% [markdown]
# ## The data
#
# Any classification spec: `synthetic:shapes` (default: 3,000 training and 600 test images,
# 32x32 RGB, ten shapes), `npz:FILE` (e.g. `npz:../shared/data/mnist10k.npz`), `folder:DIR`,
# `tfds:NAME`. It is loaded once, here, as uint8 NumPy arrays and written to `OUT/data.npz`;
# every framework reads that file, so all of them train and test on exactly the same numbers
# (PyTorch gets them transposed to channels-first, the layout its convolutions expect).

# %%
ds = data.require(data.load(args.dataset, seed=args.seed, image_size=args.image_size,
                            num_examples=160 if args.smoke else None),
                  data.Classification, args.dataset)
x_train, y_train = cli.train_subset(args, ds.x_train, ds.y_train)
x_test, y_test = ds.x_test, ds.y_test
if args.smoke and len(x_train) > 160:  # a class-balanced 160 images: seconds per row
    x_train, _, y_train, _ = data.stratified_split(x_train, y_train, len(x_train) - 160,
                                                   args.seed)
if args.smoke:
    x_test, y_test = x_test[:64], y_test[:64]
height, width, channels = x_train.shape[1:]
if min(height, width) < MIN_SIDE:
    raise UserError(f"{args.dataset} has {height}x{width} images; the CNN pools three times and "
                    f"needs at least {MIN_SIDE}x{MIN_SIDE}: pass --image-size {MIN_SIDE * 4}")
if args.smoke:  # one seed, two epochs (one after the compiling one) unless asked
    args.seeds, args.epochs = 1, args.epochs or 2
steps_per_epoch = cli.training_budget(args, len(x_train))
if len(x_train) % args.batch_size and len(x_train) > args.batch_size:
    # whole batches only: a last, smaller batch has another shape, which JAX, XLA and
    # torch.compile compile a second time; the same images are dropped for every framework
    keep = len(x_train) - len(x_train) % args.batch_size
    print(f"note: {len(x_train) - keep} training images dropped for whole batches of "
          f"{args.batch_size}")
    x_train, _, y_train, _ = data.stratified_split(x_train, y_train, len(x_train) - keep,
                                                   args.seed)
    steps_per_epoch = keep // args.batch_size
out.mkdir(parents=True, exist_ok=True)
np.savez(out / "data.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
         num_classes=ds.num_classes)
print(f"{args.dataset}: {len(x_train)} training and {len(x_test)} test images, "
      f"{height}x{width}x{channels}, {ds.num_classes} classes")

# %% [markdown]
# ## The model and its training, in Keras 3 and in PyTorch
#
# The collection's reference CNN (the network of `recipes/feature_extraction`): three 3x3
# convolutions (32, 64, 128 filters) each followed by 2x2 max pooling, dropout 0.3, a dense
# layer of 128 and the classifier; Adam at 1e-3, batch 64, cross-entropy. The Keras code is one
# script for all three backends (`recipes/frameworks/keras_train.py`); the PyTorch code is what a
# PyTorch user writes (`recipes/frameworks/torch_train.py`). Here are the lines that define and
# train each one (the rest of those files measures): the "model_lines" metric counts them.

# %%
SCRIPTS = {row: HERE / ("torch_train.py" if row == "torch_native" else "keras_train.py")
           for row in ROWS}
for name in ("keras_train.py", "torch_train.py"):
    print(f"# ---- {name}: {code_lines(marked_code(HERE / name))} lines of model and training code")
    print("\n".join(marked_code(HERE / name)) + "\n")

# %% [markdown]
# ## Train every row, each in its own process
#
# A fresh Python process per row: `KERAS_BACKEND` must be set before Keras is imported, and a
# process of its own gives each framework its own start-up, threads and peak memory. Each
# process trains one model per seed (timing every epoch; the first one includes tracing and
# compiling), scores it on the test images, then times batch-1 and batch-256 inference, the
# eager and compiled modes of one training step, and exports the first seed's model in every
# format its framework offers. A row that finished is loaded on a rerun with the same flags.

# %%
seeds = list(range(args.seed, args.seed + args.seeds))
mode_steps = 2 if args.smoke else args.mode_steps
repeats = 5 if args.smoke else 50
print(f"plan: {len(rows)} rows x {len(seeds)} seeds x {args.epochs} epochs of "
      f"{steps_per_epoch} steps (batch {args.batch_size}), then {mode_steps} steps per "
      "eager/compiled mode and the exports; one process per row")


def run_row(row: str) -> dict:
    folder = out / row
    folder.mkdir(exist_ok=True)
    flags = ["--data", str(out / "data.npz"), "--out", str(folder), "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--seeds", *map(str, seeds),
             "--mode-steps", str(mode_steps), "--repeats", str(repeats),
             *(["--no-export"] if args.no_export else []),
             # torch.compile generates and compiles C++ for minutes on a small CPU: not in tests
             *(["--no-torch-compile"] if args.smoke else [])]
    done = folder / "record.json"
    if done.is_file() and (folder / "flags.json").is_file() and json.loads(
            (folder / "flags.json").read_text()) == flags and (
            folder / "data.sha").read_text() == data_hash:
        print(f"{row}: finished in an earlier run with the same flags, loaded")
        return json.loads(done.read_text())
    done.unlink(missing_ok=True)
    (folder / "flags.json").write_text(json.dumps(flags))
    (folder / "data.sha").write_text(data_hash)
    module = f"recipes.frameworks.{SCRIPTS[row].stem}"
    # OMP_WAIT_POLICY: OpenMP threads (PyTorch's) that spin while they wait for work made
    # PyTorch 4x slower on a busy shared CPU here; passive waiting costs nothing on an idle one
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "KERAS_BACKEND": ROWS[row],
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent.parent)}
    process = subprocess.Popen([sys.executable, "-m", module, *flags], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    tail = []
    for line in process.stdout:  # through print(), so that a notebook shows it too
        if line.startswith(("  keras_", "  torch_native", "  mode ", "  export ")):
            print(line, end="", flush=True)
        tail = (tail + [line])[-40:]
    if process.wait() != 0:
        raise RuntimeError(f"the {row} run failed (exit {process.returncode}):\n"
                           + "".join(tail))
    return json.loads(done.read_text())


data_hash = hashlib.sha256((out / "data.npz").read_bytes()).hexdigest()
jobs = args.jobs or (2 if args.smoke else 1)
if jobs == 1:
    records, started = {}, time.time()
    for i, row in enumerate(rows):
        eta = "" if not i else f", about {(time.time() - started) / i * (len(rows) - i) / 60:.0f} min left"
        print(f"== {row} ({i + 1}/{len(rows)}{eta})", flush=True)
        records[row] = run_row(row)
else:  # rows side by side: quicker, but each row's speed is then measured on a shared CPU
    print(f"== {len(rows)} rows, {jobs} at a time (their speeds share the CPU)", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        records = dict(zip(rows, pool.map(run_row, rows)))

# %% [markdown]
# ## Results per row
#
# Accuracy is the mean over seeds; the spread is max - min over seeds. Training speed is
# measured after the first epoch (which pays for tracing and compiling: shown separately), in
# images per second of wall time and in CPU milliseconds per image (all threads of the process;
# steadier than wall time on a shared machine). Peak memory is the process's peak resident
# memory after training, framework included.

# %%
metrics = {}
for row, record in records.items():
    accuracies = [s["test_accuracy"] for s in record["seeds"]]
    epochs = np.array([s["epoch_seconds"] for s in record["seeds"]])
    metrics[row] = {
        "test_accuracy": float(np.mean(accuracies)),
        "test_accuracy_spread": float(np.ptp(accuracies)),
        "test_accuracy_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
        "train_images_per_second": float(np.mean([s["train_images_per_second"]
                                                  for s in record["seeds"]])),
        "train_cpu_ms_per_image": float(np.mean([s["train_cpu_ms_per_image"]
                                                 for s in record["seeds"]])),
        "inference_ms_batch1": record["inference_ms_batch1"],
        "inference_images_per_second_batch256": record["inference_images_per_second_batch256"],
        "peak_memory_mb": record["training_memory_mb"],
        "import_memory_mb": record["import_memory_mb"],
        "first_epoch_seconds": float(epochs[:, 0].mean()),
        "steady_epoch_seconds": float(epochs[:, 1:].mean()),
        "model_lines": code_lines(marked_code(SCRIPTS[row])),
    }
    for mode, m in record["modes"].items():
        if "error" not in m:
            metrics.setdefault(f"{row}_modes", {}).update({
                f"{mode}_train_images_per_second": m["train_images_per_second"],
                f"{mode}_first_epoch_seconds": m["first_epoch_seconds"]})
    for fmt, d in record["deployment"].items():
        for key in ("size_kb", "latency_ms_batch1", "agreement"):
            if key in d:
                metrics.setdefault(f"{row}_deploy", {})[f"{fmt}_{key}"] = d[key]

header = (f"{'row':<17}{'accuracy':>16}{'train img/s':>12}{'CPU ms/img':>11}{'1st epoch s':>12}"
          f"{'ms batch1':>10}{'img/s b256':>11}{'peak MB':>9}{'lines':>6}")
print(header)
for row in records:
    m = metrics[row]
    print(f"{row:<17}{m['test_accuracy']:>9.3f} ±{m['test_accuracy_spread'] / 2:.3f}"
          f"{m['train_images_per_second']:>12.0f}{m['train_cpu_ms_per_image']:>11.2f}"
          f"{m['first_epoch_seconds']:>12.1f}{m['inference_ms_batch1']:>10.2f}"
          f"{m['inference_images_per_second_batch256']:>11.0f}{m['peak_memory_mb']:>9.0f}"
          f"{m['model_lines']:>6}")

# %% [markdown]
# Same seed does not mean the same numbers across frameworks: initial weights, shuffling and
# dropout masks come from different random generators (and PyTorch initialises layers
# differently from Keras). So a difference in accuracy counts only when it is larger than the
# seed spread of both rows.

# %%
verdicts = []
names = list(records)
for i, a in enumerate(names):
    for b in names[i + 1:]:
        gap = metrics[a]["test_accuracy"] - metrics[b]["test_accuracy"]
        spread = max(metrics[a]["test_accuracy_spread"], metrics[b]["test_accuracy_spread"])
        verdicts.append(f"{a} - {b}: {gap:+.3f} ({'exceeds' if abs(gap) > spread else 'within'} "
                        f"the seed spread {spread:.3f})")
print("\n".join(verdicts))

# %% [markdown]
# ## Dynamic against static graphs
#
# The same training step, eager (operation by operation, from Python) and compiled: TensorFlow
# as a `tf.function` graph and with XLA (`jit_compile=True`), JAX with and without `jax.jit`,
# PyTorch eager and through `torch.compile` (TorchInductor, which generates C++ for the CPU).
# "first epoch" is the time of the first pass over the timed steps, tracing and compiling
# included; images/s is the second pass.

# %%
print(f"{'row':<17}{'mode':<15}{'train img/s':>12}{'first epoch s':>14}")
for row, record in records.items():
    for mode, m in record["modes"].items():
        if "error" in m:
            print(f"{row:<17}{mode:<15}  fails: {m['error']}")
        else:
            print(f"{row:<17}{mode:<15}{m['train_images_per_second']:>12.0f}"
                  f"{m['first_epoch_seconds']:>14.1f}")

# %% [markdown]
# ## Deployment
#
# Each row's first-seed model, exported in every format its framework offers, reloaded in that
# format's runtime and run on the same test images one at a time: file size, median batch-1
# latency, and the share of images whose predicted class agrees with the framework's own.
# Keras exports `.keras` (any backend reloads it), a TensorFlow SavedModel, LiteRT (`.tflite`,
# run with `ai_edge_litert`), ONNX (run with onnxruntime) and a `torch.export` program; native
# PyTorch exports a state dict, TorchScript, `torch.export` and ONNX. A format that fails is
# reported with its error: that is the answer to "which path works from which backend".

# %%
print(f"{'row':<17}{'format':<15}{'size KB':>9}{'ms batch1':>10}{'agree':>7}")
for row, record in records.items():
    for fmt, d in record["deployment"].items():
        if "error" in d:
            print(f"{row:<17}{fmt:<15}  fails: {d['error'][:110]}")
        else:
            latency = f"{d['latency_ms_batch1']:>10.2f}{d['agreement']:>7.2f}" if (
                "latency_ms_batch1" in d) else f"{'-':>10}{'-':>7}"
            print(f"{row:<17}{fmt:<15}{d['size_kb']:>9.0f}{latency}")

# %% [markdown]
# ## Throughput per row
#
# Left: test accuracy of each seed (dots) and the mean (bar). Middle: training images per
# second in each eager and compiled mode. Right: inference images per second at batch 256.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
for i, row in enumerate(records):
    accuracies = [s["test_accuracy"] for s in records[row]["seeds"]]
    axes[0].bar(i, np.mean(accuracies), color=f"C{i}", alpha=0.6)
    axes[0].plot([i] * len(accuracies), accuracies, "ko", ms=4)
axes[0].set_xticks(range(len(records)), list(records), rotation=20)
axes[0].set_ylabel("test accuracy")
axes[0].set_title("accuracy per seed")
labels, values, colours = [], [], []
for i, (row, record) in enumerate(records.items()):
    for mode, m in record["modes"].items():
        if "error" not in m:
            labels.append(f"{row}\n{mode}")
            values.append(m["train_images_per_second"])
            colours.append(f"C{i}")
axes[1].barh(range(len(values)), values, color=colours)
axes[1].set_yticks(range(len(values)), labels, fontsize=7)
axes[1].invert_yaxis()
axes[1].set_xlabel("training images / s (after the first epoch)")
axes[1].set_title("eager and compiled training")
axes[2].bar(range(len(records)), [metrics[r]["inference_images_per_second_batch256"]
                                  for r in records],
            color=[f"C{i}" for i in range(len(records))])
axes[2].set_xticks(range(len(records)), list(records), rotation=20)
axes[2].set_ylabel("inference images / s (batch 256)")
axes[2].set_title("inference")
fig.suptitle(f"{args.dataset}: {len(x_train)} training images, {args.epochs} epochs, "
             f"{len(seeds)} seeds per row, {os.cpu_count()} CPU cores")
fig.tight_layout()
plots.save(fig, out / "throughput.png")

# %% [markdown]
# ## Save a model
#
# The Keras model of the first row and seed is saved as `OUT/model.keras`: the format reloads on
# any backend. Run it on your own images with
# `python -m recipes.frameworks predict --model runs/frameworks/model.keras IMAGE...`, or score
# it with `evaluate --model ... --dataset SPEC`.

# %%
keras_rows = [r for r in records if (out / r / "model.keras").is_file()]
if keras_rows:
    (out / "model.keras").write_bytes((out / keras_rows[0] / "model.keras").read_bytes())
    (out / "class_names.json").write_text(json.dumps(ds.class_names) + "\n")
    print(f"saved {keras_rows[0]}'s model to {out / 'model.keras'}")
detail = {"records": records, "verdicts": verdicts, "cpu_count": os.cpu_count(),
          "load_average_at_end": os.getloadavg(),
          "workers_cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]), 1)}
(out / "frameworks.json").write_text(json.dumps(detail, indent=2) + "\n")
cli.finish(args, metrics, args.dataset)
