"""Training speed of a ResNet-style CNN (the ResNet-18 layout at half width, from
recipes/distributed/worker.py) at 32x32 and 224x224: float32 vs XLA, 1 vs 2 replicas.

    python bench/bench_distributed.py            # CPU: MirroredStrategy over logical CPUs
    KERAS_BACKEND=jax python bench/bench_distributed.py --gpu   # a GPU machine with JAX

CPU: every configuration runs in a fresh process (logical devices are fixed at TensorFlow's
start), one after another, timed after a warm-up (tracing, XLA compilation), with the process's
CPU seconds beside the wall time, since the machine may be shared. Writes
bench/results/distributed_cpu.json. The 2 replicas of a CPU share the same cores: the
comparison shows the cost of mirroring (copies, all-reduce), not a speed-up.

--gpu: the same Keras model on the JAX backend (TensorFlow's wheels are not on GPU machines
here): float32 vs mixed_bfloat16 vs mixed_float16, XLA always (JAX compiles everything), with the
share of the GPU's peak FLOP/s reached (FLOPs from XLA's cost analysis of the train step). This
path has not been run yet: no GPU was available when it was written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
WIDTH, BLOCKS = 32, (2, 2, 2, 2)  # ResNet-18's stages at half its width (64)
# per-replica batch and timed steps per image size: enough work to time, little enough for 2 cores
SETTINGS = {32: {"batch": 32, "steps": 30}, 224: {"batch": 8, "steps": 6}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def one_cpu_config(size: int, replicas: int, xla: bool) -> dict:
    """Images/s of fit() under MirroredStrategy over `replicas` logical CPU devices."""
    from common import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    from recipes.distributed import worker

    worker.use_cpu_replicas(replicas)
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    batch = SETTINGS[size]["batch"] * replicas
    steps = SETTINGS[size]["steps"]
    strategy = worker.make_strategy("mirrored" if replicas > 1 else "none", replicas)
    with strategy.scope():
        model = worker.build_resnet((size, size, 3), 10, WIDTH, BLOCKS)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      "sparse_categorical_crossentropy", jit_compile=xla)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, batch)
    data = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # tracing, compilation, warm-up
    warmup = time.perf_counter() - started
    cpu_before, started = time.process_time(), time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    return {"image_size": size, "replicas": replicas, "xla": xla, "global_batch": batch,
            "timed_steps": steps, "images_per_s": round(steps * batch / seconds, 2),
            "wall_s": round(seconds, 2), "cpu_s": round(cpu, 2), "warmup_s": round(warmup, 1),
            # robust to other jobs on the machine: images per CPU second of this process
            "images_per_cpu_s": round(steps * batch / cpu, 2),
            "params": model.count_params(), "devices": worker.device_names(strategy),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2)}


def cpu_bench(sizes=(32, 224)) -> dict:
    rows = []
    for size in sizes:
        for replicas in (1, 2):
            for xla in (False, True):
                done = subprocess.run(
                    [sys.executable, __file__, "--one", str(size), str(replicas), str(int(xla))],
                    cwd=ROOT, capture_output=True, text=True, timeout=1800,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                if done.returncode:  # recorded, not fatal: XLA under MirroredStrategy on
                    # logical CPU devices fails on this stack, and that is a finding too
                    lines = [line.strip() for line in done.stderr.splitlines()]
                    # the informative line follows TensorFlow's "Graph execution error:"
                    error = [line for line in lines if "Trying to access" in line or (
                        "Error" in line and not line.endswith("Graph execution error:"))]
                    rows.append({"image_size": size, "replicas": replicas, "xla": xla,
                                 "error": (error or lines or ["?"])[-1][:400]})
                    print(f"{size:>4}x{size:<4} replicas {replicas}  {'XLA' if xla else 'f32':<4}"
                          f" failed: {rows[-1]['error'][:200]}", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{size:>4}x{size:<4} replicas {replicas}  {'XLA' if xla else 'f32':<4}"
                      f" {row['images_per_s']:>8.1f} images/s  (wall {row['wall_s']} s, "
                      f"cpu {row['cpu_s']} s, load {row['load_average_1min_at_end']})",
                      flush=True)
                rows.append(row)
    import tensorflow as tf

    return {"bench": "distributed", "backend": "tensorflow", "tensorflow": tf.__version__,
            "model": f"ResNet-18 layout {BLOCKS}, width {WIDTH}",
            "device": f"CPU: {cpu_name()} x{os.cpu_count()} (logical devices share the cores)",
            "command": " ".join(["python bench/bench_distributed.py", *sys.argv[1:]]),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2), "rows": rows}


def gpu_bench() -> dict:
    """The same model on the JAX backend on one GPU: float32, mixed_bfloat16, mixed_float16."""
    import jax
    import keras
    import numpy as np

    from recipes.distributed import worker

    device = jax.devices()[0]
    rows = []
    for size, batch in ((32, 256), (224, 64)):
        for precision in ("float32", "mixed_bfloat16", "mixed_float16"):
            keras.mixed_precision.set_global_policy(precision)
            keras.utils.set_random_seed(0)
            # synchronized BatchNormalization is TensorFlow-only; one device needs no sync
            model = worker.build_resnet((size, size, 3), 10, WIDTH, BLOCKS, synchronized=False)
            model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                          "sparse_categorical_crossentropy", jit_compile=True)
            x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3)).astype(
                "float32")
            y = np.random.default_rng(1).integers(0, 10, batch)
            model.train_on_batch(x, y)  # compile
            flops = _train_step_flops(model, x, y)
            steps = 30
            started = time.perf_counter()
            for _ in range(steps):
                loss = model.train_on_batch(x, y)
            float(np.asarray(loss).ravel()[0])  # wait for the device
            seconds = time.perf_counter() - started
            rows.append({"image_size": size, "precision": precision, "batch": batch,
                         "images_per_s": round(steps * batch / seconds, 1),
                         "train_step_flops": flops,
                         "achieved_tflops": round(flops * steps / seconds / 1e12, 2)
                         if flops else None})
            print(rows[-1], flush=True)
    keras.mixed_precision.set_global_policy("float32")
    return {"bench": "distributed", "backend": "jax", "jax": jax.__version__,
            "keras": keras.__version__, "model": f"ResNet-18 layout {BLOCKS}, width {WIDTH}",
            "device": device.device_kind,
            "command": "KERAS_BACKEND=jax python bench/bench_distributed.py --gpu", "rows": rows,
            "note": "share of peak: divide achieved_tflops by the GPU's datasheet peak for "
                    "the precision"}


def _train_step_flops(model, x, y) -> float | None:
    """FLOPs of one training step from XLA's cost analysis (JAX backend), or None."""
    import jax

    try:
        state = (model.trainable_variables, model.non_trainable_variables,
                 model.optimizer.variables, [v.value for v in model.metrics_variables])
        state = tuple([v.value for v in vs] if i < 3 else vs for i, vs in enumerate(state))
        lowered = jax.jit(model.train_step).lower(state, (x, y))
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops")) if cost and cost.get("flops") else None
    except Exception:  # noqa: BLE001 - an estimate only; the images/s stand without it
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="JAX backend on a GPU machine")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], choices=[32, 224],
                   help="image sizes to measure on the CPU")
    p.add_argument("--one", nargs=3, type=int, metavar=("SIZE", "REPLICAS", "XLA"),
                   help=argparse.SUPPRESS)  # one CPU configuration, in its own process
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_cpu_config(args.one[0], args.one[1], bool(args.one[2]))))
        return
    record = gpu_bench() if args.gpu else cpu_bench(args.sizes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "distributed_gpu_jax.json" if args.gpu else "distributed_cpu.json"
    (RESULTS / name).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
