# %% [markdown]
# # Distributed training: many devices, many machines, and runs that survive a crash
#
# **Description:** train a small ResNet with TensorFlow's own distribution engine:
# `MirroredStrategy` with `fit()` over the devices of one machine (here: logical CPU devices),
# `MultiWorkerMirroredStrategy` with a custom training loop across worker processes configured
# by `TF_CONFIG`, checked against a single device step by step; kill a run with SIGKILL and
# resume it from its checkpoint; and look at Keras 3's layout API for model parallelism.
#
# **Concepts:** *data parallelism* copies the model to every device (a *replica*), splits each
# global batch between them, and adds up their gradients (*all-reduce*) before every replica
# applies the same update, so the copies never drift apart: *synchronous* training. The global
# batch is the per-replica batch times the number of replicas; a larger batch gives a less noisy
# gradient, so the learning rate is scaled with it. *Model parallelism* instead splits the model
# itself (a layer's weights) across devices, for models too large for one. GPUs speed training
# up with thousands of parallel cores and a high memory bandwidth, which large batches keep busy.
#
# Run: `make distributed` or `python -m recipes.distributed --help`; `--workers 2` trains with
# two worker processes on this machine. In a notebook, flags come from the `RECIPE_ARGS`
# environment variable: add a cell above the setup cell with, e.g.,
# `os.environ["RECIPE_ARGS"] = "--epochs 5"` (after `import os`).

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

parser = cli.parser("distributed", "Data-parallel training on many devices and machines "
                    "(MirroredStrategy, MultiWorkerMirroredStrategy), step-by-step equivalence, "
                    "resume after a crash, model-parallel layouts",
                    dataset="synthetic:shapes", epochs=8, batch_size=32, train_size=True)
parser.add_argument("--strategy", choices=("none", "mirrored", "multiworker"), default=None,
                    help="how the recipe's model is trained: one device, MirroredStrategy "
                         "with fit() over --replicas devices, or MultiWorkerMirroredStrategy "
                         "with a custom loop (default: mirrored; multiworker with --workers)")
parser.add_argument("--workers", type=int, default=0,
                    help="start N worker processes on 127.0.0.1 (implies --strategy "
                         "multiworker); 0 with --strategy multiworker and TF_CONFIG set: this "
                         "process is one worker of the cluster TF_CONFIG describes")
parser.add_argument("--replicas", type=int, default=2,
                    help="devices of MirroredStrategy: every GPU, or this many logical CPU "
                         "devices when there is no GPU")
parser.add_argument("--global-batch", type=int, default=None,
                    help="images per optimisation step over all replicas (default: "
                         "--batch-size x replicas); must be divisible by the replicas")
parser.add_argument("--learning-rate", type=float, default=0.05,
                    help="SGD learning rate for a global batch of 64, scaled linearly with the "
                         "global batch")
parser.add_argument("--width", type=int, default=16, help="filters of the ResNet's first stage")
parser.add_argument("--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"),
                    default="float32", help="compute dtype (variables stay float32)")
parser.add_argument("--jit-compile", action="store_true", help="compile steps with XLA")
parser.add_argument("--equivalence-steps", type=int, default=24,
                    help="steps of the 1 device / 2 replicas / 2 workers comparison")
parser.add_argument("--timeout", type=float, default=60,
                    help="seconds a worker waits for an unreachable or dead peer before it "
                         "exits with a clear error")
args = cli.parse_args(parser)
cli.classifier_commands(args)  # `predict` / `evaluate`: runs the saved model and stops here

# %%
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf  # already imported (quietly) by cli.parse_args

from common import data
from recipes.distributed import worker

out = Path(args.out)
cluster_config = os.environ.get("TF_CONFIG")
if args.workers < 0 or args.replicas < 1 or args.equivalence_steps < 3 or args.timeout <= 0:
    raise UserError("--workers must be >= 0, --replicas >= 1, --equivalence-steps >= 3 and "
                    "--timeout > 0")
if args.workers and args.strategy not in (None, "multiworker"):
    raise UserError(f"--workers starts MultiWorkerMirroredStrategy workers: drop --strategy "
                    f"{args.strategy}, or drop --workers")
args.strategy = args.strategy or ("multiworker" if args.workers else "mirrored")
if args.jit_compile and args.strategy == "mirrored" and not tf.config.list_physical_devices("GPU"):
    # measured (bench/bench_distributed.py): XLA compiles the step for one device and cannot
    # read the replica variables that live on the other logical CPU device
    raise UserError("--jit-compile with MirroredStrategy over logical CPU devices fails on "
                    "this stack: add --strategy none (one device, XLA works there), or drop "
                    "--jit-compile")
cluster_worker = args.strategy == "multiworker" and not args.workers
if cluster_worker:
    if not cluster_config:
        raise UserError("--strategy multiworker needs TF_CONFIG (this process is one worker "
                        "of a cluster; see the README) or --workers N to start N workers here")
    cluster = worker.parse_tf_config(cluster_config)
    replicas = len(cluster["cluster"]["worker"])
else:
    replicas = {"none": 1, "mirrored": args.replicas, "multiworker": args.workers}[args.strategy]
global_batch = args.global_batch or args.batch_size * replicas
if global_batch % replicas:
    raise UserError(f"--global-batch {global_batch} is not divisible by the {replicas} "
                    f"replicas: use a multiple of {replicas}, e.g. "
                    f"{max(replicas, global_batch // replicas * replicas)}")
learning_rate = args.learning_rate * global_batch / 64  # the linear scaling rule
equivalence_epochs, synthetic_size, blocks = 3, None, [1, 1, 1]
if args.smoke:  # every section runs, on a tiny model and a few steps (explicit flags win)
    args.epochs, args.width, blocks = min(args.epochs, 2), min(args.width, 8), [1, 1]
    args.equivalence_steps, args.train_size, synthetic_size = 6, args.train_size or 480, 480

# %% [markdown]
# ## Prepare the data
#
# Images stay in [0, 255]; the model starts with `Rescaling(1/255)`, so the saved model takes
# raw images. Each epoch's batches are a function of the seed and the epoch number only (see
# `epoch_batches` in `worker.py`): every worker reads the same global batches and keeps its
# share (`AutoShardPolicy.DATA`), and a run resumed at epoch k sees the batches an
# uninterrupted run would have seen there. The local worker processes read a copy of the
# dataset that this process writes once; on a real cluster each node loads `--dataset` itself.

# %%
ds = data.require(data.load(args.dataset, seed=args.seed, num_examples=(
    synthetic_size if args.dataset.startswith("synthetic:") else None)),
    data.Classification, args.dataset)
ds.x_train, ds.y_train = cli.train_subset(args, ds.x_train, ds.y_train)
if global_batch > len(ds.x_train):
    raise UserError(f"the global batch {global_batch} is larger than the {len(ds.x_train)} "
                    "training images: use a smaller --batch-size")
steps_per_epoch = len(ds.x_train) // global_batch
print(f"{args.dataset}: {len(ds.x_train)} train / {len(ds.x_test)} test images of shape "
      f"{ds.x_train.shape[1:]}, {ds.num_classes} classes; global batch {global_batch} "
      f"({replicas} replicas x {global_batch // replicas}), learning rate {learning_rate:.4g}")


def job(name: str, **changes) -> dict:
    """A training job for worker.run_job / worker.launch: this run's flags, plus `changes`."""
    return {**worker.JOB, "dataset": dataset_for_workers, "seed": args.seed,
            "epochs": args.epochs, "global_batch": global_batch, "learning_rate": learning_rate,
            "width": args.width, "blocks": blocks, "replicas": args.replicas, "precision": args.precision,
            "jit_compile": args.jit_compile, "timeout": args.timeout,
            "out": str(out / name), **changes}


main_loop = "fit" if args.strategy in ("none", "mirrored") else "custom"
dataset_for_workers = args.dataset if cluster_worker else f"npz:{out / 'data.npz'}"
# the local workers read an npz, whose classes are numbered: the model keeps the real names
main_job = job("", loop=main_loop, strategy=args.strategy, save_model=True,
               class_names=ds.class_names)
main_job["out"] = str(out)
# a checkpoint of another model or run in OUT/backup is refused now, before any training
if not cluster_worker or worker.is_chief():
    worker.claim_backup(out / "backup", worker.fingerprint(main_job, ds.x_train.shape[1:],
                                                           ds.num_classes))

# %% [markdown]
# ## Many machines: each node runs this recipe with its TF_CONFIG
#
# On a cluster every node runs the same command with its own `TF_CONFIG` (the README shows
# them, with Slurm and Kubernetes examples) and `--strategy multiworker`. Such a process is one
# worker: it trains with the custom loop below and stops; the chief (worker 0) writes the
# model and results.json. Everything after this cell is the one-machine tutorial.

# %%
if cluster_worker:
    record = worker.run_job(main_job)
    if record is not None:  # the chief
        cli.finish(args, {"test_accuracy": record["test_accuracy"],
                          "final_loss": record["final_loss"], "replicas": record["replicas"]},
                   args.dataset)
    raise SystemExit

# %% [markdown]
# ## One machine, many devices
#
# `MirroredStrategy` puts a replica of the model on every GPU. Without a GPU we split the CPU
# into `--replicas` *logical* devices, which must happen before TensorFlow runs its first op.
# They share the same cores, so this shows correctness, not speed (see `bench/` for speed).
#
# `worker.make_strategy` builds the strategy; under `strategy.scope()` the model's variables
# become *mirrored* variables, one copy per replica, and `fit()` splits each global batch
# between the replicas and all-reduces the gradients. The BatchNormalization layers are
# `synchronized=True`: their statistics come from the whole global batch, not from each
# replica's share, so N replicas compute what one device computes.

# %%
import keras

from common import callbacks, metrics, plots

worker.use_cpu_replicas(max(args.replicas, 2))
print("devices:", [d.name for d in tf.config.list_logical_devices()])
out.mkdir(parents=True, exist_ok=True)
np.savez(out / "data.npz", x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
         y_test=ds.y_test)
(out / "class_names.json").write_text(json.dumps(ds.class_names) + "\n")

# %% [markdown]
# ## Train the recipe's model
#
# With `--strategy mirrored` (the default) or `none`, this is `model.fit()` with
# `keras.callbacks.BackupAndRestore`: a run that is killed and started again with the same
# command continues after its last finished epoch. With `--workers N` it is N worker processes
# on this machine, started by `worker.launch` with one `TF_CONFIG` each (free ports on
# 127.0.0.1), running the custom loop of the next section. Mixed precision (`--precision`)
# and XLA (`--jit-compile`) apply to both paths.

# %%
plan = callbacks.Plan([f"{args.strategy} ({main_loop})"], args.epochs, steps_per_epoch)
if args.strategy == "multiworker":
    codes = worker.launch(main_job, args.workers, log_dir=out / "logs", echo=True)
    if any(codes):
        print(worker.describe(codes, out / "logs"), file=sys.stderr)
        raise SystemExit(worker.PEER_LOST if 2 not in codes else 2)
    main = json.loads((out / "history.json").read_text())
else:
    main = worker.run_job(main_job, callbacks=[plan.callback(f"{args.strategy} (fit)")])
print(f"trained on {main['devices']}: final loss {main['final_loss']:.4f}, test accuracy "
      f"{main['test_accuracy']:.4f}")

# %% [markdown]
# ## The custom loop that MultiWorkerMirroredStrategy needs
#
# In Keras 3 with TensorFlow 2.21, `fit()` under `MultiWorkerMirroredStrategy` fails (a
# PerReplica value cannot be converted to a tensor), so each worker runs its own loop. The
# heart of `worker.train_custom`:
#
# ```python
# def replica_step(images, labels):             # runs on every replica, on its share
#     with tf.GradientTape() as tape:
#         per_example = loss_fn(labels, model(images, training=True))
#         loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
#     grads = tape.gradient(loss, model.trainable_variables)
#     optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduce (sum)
#     return loss
#
# @tf.function
# def train_step(batch):
#     per_replica = strategy.run(replica_step, args=batch)
#     return strategy.reduce("SUM", per_replica, axis=None)  # the global batch's mean loss
# ```
#
# `compute_average_loss` divides by the *global* batch, so the all-reduced *sum* of the
# replicas' gradients is the gradient of the global batch's mean loss: the same number one
# device computes. The input is `strategy.experimental_distribute_dataset(batches)`.
#
# ## Equivalence: 1 device, 2 replicas, 2 workers
#
# With the same seed, initial weights and global batches, three runs of the custom loop should
# give the same loss at every step: on one device (no strategy), with `MirroredStrategy` over
# two devices, and with `MultiWorkerMirroredStrategy` over two worker processes. They differ
# only in the order of floating-point additions (each replica sums its half of the batch
# first). To see past that, the comparison runs in **float64**, where rounding is about 1e-16:
# a correct distributed step then agrees with the single device to about 1e-14 over the whole
# curve, and we allow 1e-9. A real mistake (batch statistics per replica instead of
# synchronized, a loss divided by the per-replica batch) is off by 1e-3 or more from the
# first step.
#
# In float32 the same runs agree at the first step (about 1e-7) and then drift apart: batch
# norm's backward pass subtracts nearly equal numbers, which turns rounding differences of
# 1e-7 into gradient differences of up to 1e-4 in the first layers, and SGD with momentum
# carries them on. The float32 pair below shows how far (plotted, not asserted beyond the
# first step).

# %%
EQUIVALENCE_TOLERANCE, FIRST_STEP_TOLERANCE = 1e-9, 1e-5  # float64 curve; float32 first step
steps_each = -(-args.equivalence_steps // equivalence_epochs)  # 3 epochs of this many steps
equivalence_global = 2 * (global_batch // replicas)  # 2 replicas of the per-replica batch
equivalence, float32_curves = {}, {}
for name in ("none", "mirrored", "multiworker", "none_float32", "mirrored_float32"):
    strategy, precision = name.removesuffix("_float32"), (
        "float32" if name.endswith("_float32") else "float64")
    spec = job(f"equivalence/{name}", loop="custom", strategy=strategy,
               epochs=equivalence_epochs, steps_per_epoch=steps_each,
               global_batch=equivalence_global, replicas=2, precision=precision,
               jit_compile=False)
    shutil.rmtree(spec["out"], ignore_errors=True)  # a fresh comparison on every run
    print(f"equivalence: {strategy}, {precision}", flush=True)
    if strategy == "multiworker":
        codes = worker.launch(spec, 2, timeout=20 * args.timeout)
        if any(codes):
            raise SystemExit(worker.describe(codes, Path(spec["out"]) / "logs"))
        record = json.loads((Path(spec["out"]) / "history.json").read_text())
    else:
        record = worker.run_job(spec)
    (float32_curves if precision == "float32" else equivalence)[strategy] = record
    if name == "none":
        equivalence_job = spec
curves = {name: np.array(r["losses"]) for name, r in equivalence.items()}
loss_diff = {name: float(np.abs(curves[name] - curves["none"]).max())
             for name in ("mirrored", "multiworker")}
max_loss_diff = max(loss_diff.values())
f32 = {name: np.array(r["losses"]) for name, r in float32_curves.items()}
f32_diff = np.abs(f32["mirrored"] - f32["none"])
print(f"float64, max per-step loss difference from one device over {len(curves['none'])} "
      "steps: " + ", ".join(f"{k} {v:.1e}" for k, v in loss_diff.items())
      + f" (tolerance {EQUIVALENCE_TOLERANCE:g}); float32, 2 replicas vs one device: "
      f"{f32_diff[0]:.1e} at the first step (tolerance {FIRST_STEP_TOLERANCE:g}), "
      f"{f32_diff.max():.1e} at most")

# %%
fig, axes = plots.plt.subplots(1, 2, figsize=(11, 3.6))
for name, curve in curves.items():
    axes[0].plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    if name != "none":
        axes[1].plot(range(1, len(curve) + 1), np.abs(curve - curves["none"]) + 1e-17,
                     label=f"{name} vs none, float64")
axes[1].plot(range(1, len(f32_diff) + 1), f32_diff + 1e-17, label="mirrored vs none, float32")
axes[0].set(xlabel="step", ylabel="training loss (float64 runs)",
            title="the same global batches")
axes[1].axhline(EQUIVALENCE_TOLERANCE, color="grey", linestyle="--", label="float64 tolerance")
axes[1].set(xlabel="step", ylabel="|loss difference| (0 drawn at 1e-17)", yscale="log",
            title="difference from one device")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plots.save(fig, out / "equivalence.png")

# %% [markdown]
# ## Fault tolerance: SIGKILL, then the same command again
#
# A long job on many machines will see a machine die. Both paths save after every epoch:
# `BackupAndRestore` on the `fit()` path (weights, optimizer state and epoch), a
# `tf.train.CheckpointManager` in the custom loop (the chief keeps the real checkpoint; the
# other workers must save too, into a scratch folder, because saving can take part in
# collectives). A rerun of the same command restores the latest checkpoint and continues.
#
# 1. **One machine** (`fit()`, `MirroredStrategy`): a worker process is killed with SIGKILL
#    as soon as its first epoch is saved, then started again with the same command.
# 2. **Two workers**: worker 1 is killed. Worker 0 then waits in an all-reduce for a peer that
#    never answers; the collective timeout and a watchdog (`--timeout`) end it with a clear
#    message and exit code 3 instead of a hang. Rerunning both workers resumes from the
#    chief's checkpoint. (On a cluster the checkpoint folder must be on shared storage.)
#
# The uninterrupted references: an in-process `fit()` run, and the 2-worker run of the
# equivalence section. The resumed runs should end with the same test accuracy and loss.

# %%
RESUME_TOLERANCE = 0.02  # test accuracy; the batches are the same, only float order differs


def kill_and_resume(name: str, spec: dict, workers: int, victim: int, saved: str) -> dict:
    """Run `spec` in `workers` processes, SIGKILL worker `victim` once `saved` (a file under
    the job's backup folder) exists, report how every worker ended, then rerun it."""
    shutil.rmtree(spec["out"], ignore_errors=True)
    logs = Path(spec["out"]) / "logs"
    codes = worker.launch(spec, workers, timeout=20 * args.timeout,
                          kill=(victim, Path(spec["out"]) / "backup" / saved))
    print(f"{name}: killed run\n{worker.describe(codes, logs)}")
    rerun = worker.launch(spec, workers, timeout=20 * args.timeout, log_dir=logs / "rerun")
    print(f"{name}: the same command again\n{worker.describe(rerun, logs / 'rerun')}")
    if any(rerun):
        raise SystemExit(f"{name}: the resumed run failed (logs in {logs / 'rerun'})")
    record = json.loads((Path(spec["out"]) / "history.json").read_text())
    return {"record": record, "killed_exit_codes": codes}


one_machine_spec = job("resume/one_machine", loop="fit", strategy="mirrored",
                       epochs=equivalence_epochs, steps_per_epoch=steps_each)
reference_spec = {**one_machine_spec, "out": str(out / "resume/one_machine_reference")}
shutil.rmtree(reference_spec["out"], ignore_errors=True)
print("resume: uninterrupted fit() reference", flush=True)
references = {"one_machine": worker.run_job(reference_spec),
              "two_workers": equivalence["multiworker"]}
runs = {
    "one_machine": kill_and_resume("one machine", one_machine_spec, 1, 0,
                                   "training_metadata.json"),
    "two_workers": kill_and_resume("two workers", {
        **equivalence_job, "strategy": "multiworker", "out": str(out / "resume/two_workers")},
        2, 1, "state.json"),
}
resume = {}
for name, run in runs.items():
    record, reference = run["record"], references[name]
    resume[name] = {
        "final_metric_diff": abs(record["test_accuracy"] - reference["test_accuracy"]),
        "final_loss_diff": abs(record["final_loss"] - reference["final_loss"]),
        "resumed_from_epoch": record["resumed_from_epoch"],
        "killed_worker_exit_code": run["killed_exit_codes"][1 if name == "two_workers" else 0],
        **({"survivor_exit_code": run["killed_exit_codes"][0]} if name == "two_workers" else {}),
    }
    print(f"{name}: resumed after epoch {record['resumed_from_epoch']}; test accuracy "
          f"{record['test_accuracy']:.4f} vs {reference['test_accuracy']:.4f} uninterrupted")

# %% [markdown]
# ## Model parallelism
#
# Data parallelism needs the whole model on every device. When a model is too large for one,
# *model parallelism* splits its weights: a layer's kernel is cut along its output channels, and
# each device computes its slice of the layer's output (the devices then exchange activations
# instead of only gradients). Keras 3 describes this with `keras.distribution`: a `DeviceMesh`
# names the axes of a grid of devices (`batch` for data parallelism, `model` for the split), a
# `LayoutMap` maps variable paths (regular expressions) to the mesh axis each dimension is cut
# along, and `ModelParallel` applies both to every model built under it.
#
# In Keras 3.15 this runs on the **JAX backend only**. On TensorFlow, `DataParallel` and
# `ModelParallel` can be created and `fit()` runs, but the layouts are ignored: the backend's
# implementation is an unfinished prototype. We show the API and measure what it did here,
# then run the same layouts on the JAX backend in a process of its own
# (`recipes/distributed/layouts_jax.py`, 2 CPU devices), where JAX is installed
# (`make frameworks-deps`).

# %%
from keras import distribution

mesh = distribution.DeviceMesh((1, 2), ["batch", "model"],
                               devices=distribution.list_devices()[:2])
layout_map = distribution.LayoutMap(mesh)
layout_map[".*conv2d.*kernel"] = (None, None, None, "model")  # split the output channels
layout_map[".*dense.*kernel"] = (None, "model")
model_parallel = distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
distribution.set_distribution(model_parallel)
try:
    mp_model = worker.build_resnet(ds.x_train.shape[1:], ds.num_classes, args.width, blocks)
finally:
    distribution.set_distribution(None)
with_layout = [v for v in mp_model.weights if layout_map[v.path] is not None]
# a variable split across devices would hold one shard per device (JAX: a sharded array)
sharded = [v for v in with_layout if len(getattr(v.value, "sharding", None).device_set
                                          if hasattr(v.value, "sharding") else []) > 1]
print(f"{keras.backend.backend()} backend: {len(with_layout)} variables have a layout, e.g. "
      f"{with_layout[0].path} -> {layout_map[with_layout[0].path].axes}; "
      f"{len(sharded)} are split across devices; {with_layout[0].path} lives on "
      f"{getattr(with_layout[0].value, 'device', '?')}")

jax_layouts = None
if find_spec("jax") is None:
    print("JAX is not installed (make frameworks-deps): the JAX model-parallel run is skipped")
else:
    done = subprocess.run([sys.executable, "-m", "recipes.distributed.layouts_jax"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [os.getcwd(), os.environ.get("PYTHONPATH", "")])})
    if done.returncode:
        raise SystemExit(f"the JAX model-parallel run failed:\n{done.stderr[-2000:]}")
    jax_layouts = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"jax backend on {jax_layouts['devices']}: {jax_layouts['variables_split']} of "
          f"{jax_layouts['variables_with_layout']} variables split, e.g. "
          f"{jax_layouts['example']}; one epoch of fit(): loss {jax_layouts['fit_loss']:.3f}")

# %% [markdown]
# ## Evaluate and save
#
# The recipe's model (trained above with `--strategy`) is scored on the test split and saved
# as `OUT/model.keras` (with `OUT/class_names.json`) for `predict` and `evaluate`.

# %%
model = keras.saving.load_model(out / "model.keras")
y_pred = np.concatenate([model(ds.x_test[i:i + 256].astype("float32"), training=False).numpy()
                         for i in range(0, len(ds.x_test), 256)]).argmax(-1)
plots.confusion_matrix(ds.y_test, y_pred, ds.class_names, out / "confusion.png")
plots.training_curves({args.strategy: {"loss": main["epoch_loss"],
                                       "accuracy": main["epoch_accuracy"]}},
                      out / "training_curves.png", title=f"{args.strategy}, {replicas} replicas")
children = resource.getrusage(resource.RUSAGE_CHILDREN)
results = {
    **metrics.classification(ds.y_test, y_pred, ds.num_classes),
    "replicas": replicas,
    "global_batch": global_batch,
    "learning_rate": learning_rate,
    "final_loss": main["final_loss"],
    "equivalence": {"max_loss_diff": max_loss_diff, "tolerance": EQUIVALENCE_TOLERANCE,
                    "precision": "float64", "steps": len(curves["none"]),
                    **{f"{k}_max_loss_diff": v for k, v in loss_diff.items()},
                    "float32_first_step_loss_diff": float(f32_diff[0]),
                    "float32_first_step_tolerance": FIRST_STEP_TOLERANCE,
                    "float32_max_loss_diff": float(f32_diff.max())},
    "resume": {"final_metric_diff": max(r["final_metric_diff"] for r in resume.values()),
               "tolerance": RESUME_TOLERANCE, **resume},
    "model_parallel": {"variables_with_layout": len(with_layout),
                       "variables_split": len(sharded), "jax": jax_layouts},
    # results.json's cpu_seconds counts this process; the worker processes add theirs
    "cpu_seconds_all_processes": time.process_time() + children.ru_utime + children.ru_stime,
}
cli.finish(args, results, args.dataset)
