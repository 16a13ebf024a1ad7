"""Is int8 faster than float at batch 1 on this CPU? LiteRT latency of float and int8 models
under every runtime option, side by side in one process.

    .venv/bin/python bench/bench_qat.py [--run runs/qat] [--seconds 0.3] [--rounds 5]
    .venv/bin/python bench/bench_qat.py --per-tensor runs/qat_mobilenet [RUN...]

What is varied:

* the model: the recipe's CNN and its MobileNet-style variant at 32x32 (the default data),
  the CNN four times wider, and the CNN on 128x128 inputs (16 times the pixels): a tiny model
  may be bound by per-invocation overhead, not arithmetic. Weights are random (latency does
  not depend on their values); with `--run` the run's own `.tflite` files are timed too.
* the conversion: float; dynamic range; full int8 with int8 input and output (no quantize /
  dequantize ops), with uint8 input and output, with float input and output (a quantize op in
  front, a dequantize op behind), and with one weight scale per tensor instead of per channel.
* the runtime: LiteRT's default (the XNNPACK delegate) or the interpreter's built-in kernels
  (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`), each at 1 and 2 threads.

Every (model, conversion, runtime) is an interpreter in this one process; the rounds take them
in turn so a busy moment of a shared machine falls on all of them; each round runs a setup for
`--seconds` (at least 20 invocations, after 5 warm-up ones); the median is reported. Two
clocks: wall time (what a user waits) and, for 1-thread setups, the CPU time of the calling
thread (LiteRT runs a 1-thread model on it), which a busy shared machine disturbs far less:
time spent waiting for a core is not counted. Writes bench/results/qat_latency_<cpu>.json
with the CPU model and its SIMD flags. Converted models are cached in bench/out/qat_models/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # build with tf_keras, as the recipe converts

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

RUNTIMES = {"xnnpack_1thread": (OpResolverType.AUTO, 1),
            "xnnpack_2thread": (OpResolverType.AUTO, 2),
            "builtin_1thread": (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, 1),
            "builtin_2thread": (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, 2)}
CONVERSIONS = ("float", "dynamic", "int8_io_int8", "int8_io_uint8", "int8_io_float",
               "int8_per_tensor")
RUN_ROWS = ("float_tflite", "ptq_dynamic", "ptq_int8", "qat_int8")


def cnn(shape, width=1):
    """The recipe's plain CNN (without the rescaling, which the recipe folds into conv0)."""
    inputs = tf_keras.Input(shape)
    x = inputs
    for filters in (32, 64, 128):
        x = tf_keras.layers.Conv2D(filters * width, 3, padding="same", use_bias=False)(x)
        x = tf_keras.layers.BatchNormalization()(x)
        x = tf_keras.layers.ReLU()(x)
        x = tf_keras.layers.MaxPooling2D(padding="same")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    x = tf_keras.layers.Dense(128 * width, activation="relu")(x)
    return tf_keras.Model(inputs, tf_keras.layers.Softmax()(tf_keras.layers.Dense(10)(x)))


def mobilenet(shape):
    """The recipe's MobileNet-style variant: depthwise-separable blocks, BN, ReLU6."""
    inputs = tf_keras.Input(shape)
    x = tf_keras.layers.Conv2D(32, 3, 2, padding="same", use_bias=False)(inputs)
    x = tf_keras.layers.ReLU(6.0)(tf_keras.layers.BatchNormalization()(x))
    for filters, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)):
        x = tf_keras.layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False)(x)
        x = tf_keras.layers.ReLU(6.0)(tf_keras.layers.BatchNormalization()(x))
        x = tf_keras.layers.Conv2D(filters, 1, use_bias=False)(x)
        x = tf_keras.layers.ReLU(6.0)(tf_keras.layers.BatchNormalization()(x))
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, tf_keras.layers.Softmax()(tf_keras.layers.Dense(10)(x)))


MODELS = {"cnn_32x32": lambda: cnn((32, 32, 3)),
          "mobilenet_32x32": lambda: mobilenet((32, 32, 3)),
          "cnn_wide4_32x32": lambda: cnn((32, 32, 3), width=4),
          "cnn_128x128": lambda: cnn((128, 128, 3))}


def convert(model, conversion, calibration):
    """A .tflite of `model`, as the recipe converts it (the int8 rows: 16 calibration images
    suffice for timing)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if conversion != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if conversion.startswith("int8"):
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {"int8_io_uint8": tf.uint8, "int8_io_float": tf.float32}.get(conversion, tf.int8)
        converter.inference_input_type = converter.inference_output_type = io
        # one weight scale per tensor (what the early int8 MobileNet results used)
        converter._experimental_disable_per_channel = conversion == "int8_per_tensor"
    return converter.convert()


def tflite_accuracy(blob: bytes, x: np.ndarray, y: np.ndarray) -> float:
    interpreter = Interpreter(model_content=blob)
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], [len(x), *x.shape[1:]])
    interpreter.allocate_tensors()
    batch = x.astype(np.float32)
    if given["dtype"] != np.float32:
        scale, zero_point = given["quantization"]
        batch = np.clip(np.round(batch / scale + zero_point), -128, 127)
    interpreter.set_tensor(given["index"], batch.astype(given["dtype"]))
    interpreter.invoke()
    scores = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return float((scores.argmax(-1) == y).mean())


def per_tensor_accuracy(run: str) -> dict:
    """Full-integer PTQ of a qat run's float model.keras, with one weight scale per channel
    (what the converter does today, and the recipe's `ptq_int8`) and with one per tensor (what
    the early int8 MobileNet results used), scored on the run's test split: does per-tensor
    weight quantization cost this model accuracy? The model goes through a SavedModel export
    (the Rescaling stays in the graph), so the per-channel figure is a cross-check of the
    recipe's, not a copy of it."""
    import tempfile

    import keras  # Keras 3: TF_USE_LEGACY_KERAS changes only tf.keras

    from common import data

    record = json.loads((Path(run) / "results.json").read_text())
    a = record["args"]
    extra = ({"num_examples": a.get("train_size") or 6000}
             if a["dataset"].startswith("synthetic:") else {})
    ds = data.load(a["dataset"], seed=a["seed"], **extra)
    rng = np.random.default_rng(a["seed"])
    calibration = ds.x_train[rng.permutation(len(ds.x_train))[:a["calibration_images"]]]
    calibration = calibration.astype(np.float32)
    model = keras.saving.load_model(Path(run) / "model.keras")
    found = {"run": run, "dataset": a["dataset"],
             "recipe_ptq_int8": record["metrics"]["ptq_int8"]["test_accuracy"],
             "recipe_float": record["metrics"]["float"]["test_accuracy"]}
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        for per_tensor in (False, True):
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([i[None]] for i in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
            converter._experimental_disable_per_channel = per_tensor
            key = "ptq_int8_per_tensor" if per_tensor else "ptq_int8_per_channel"
            found[key] = tflite_accuracy(converter.convert(), ds.x_test, ds.y_test)
    return found


def cpu() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": []}
    field = dict(re.findall(r"^(model name|flags)\s*:\s*(.*)$", text, re.M))
    flags = sorted(f for f in field.get("flags", "").split()
                   if f.startswith(("avx", "fma", "amx")) or "vnni" in f)
    return {"model": field.get("model name", platform.machine()), "flags": flags,
            "logical_cpus": os.cpu_count(),
            "vnni": any("vnni" in f for f in flags),
            "avx512": any(f.startswith("avx512") for f in flags)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="also time this qat run's .tflite files (e.g. runs/qat)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " +
                   ", ".join(MODELS))
    p.add_argument("--seconds", type=float, default=0.3, help="per setup and round")
    p.add_argument("--rounds", type=int, default=5, help="rounds, setups taken in turn")
    p.add_argument("--out", help="default: bench/results/qat_latency_<cpu>.json")
    p.add_argument("--per-tensor", nargs="+", metavar="RUN",
                   help="instead of timing: PTQ accuracy with per-channel vs per-tensor weight "
                        "scales for these qat runs; writes bench/results/qat_per_tensor.json")
    args = p.parse_args()
    if args.per_tensor:
        found = [per_tensor_accuracy(run) for run in args.per_tensor]
        out = Path(args.out or "bench/results/qat_per_tensor.json")
        out.write_text(json.dumps({"runs": found, "command": "python bench/bench_qat.py "
                                   "--per-tensor " + " ".join(args.per_tensor)}, indent=2) + "\n")
        for f in found:
            print(f"{f['run']}: float {f['recipe_float']:.4f}, recipe ptq_int8 "
                  f"{f['recipe_ptq_int8']:.4f}; SavedModel route: per-channel "
                  f"{f['ptq_int8_per_channel']:.4f}, per-tensor {f['ptq_int8_per_tensor']:.4f}")
        print(f"wrote {out}")
        return
    tf.random.set_seed(0)
    blobs, cache = {}, Path("bench/out/qat_models")
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        if not all((cache / f"{name}_{c}.tflite").is_file() for c in CONVERSIONS):
            model = MODELS[name]()
            calibration = np.random.default_rng(0).uniform(
                0, 1, (16, *model.input_shape[1:])).astype(np.float32)
            for conversion in CONVERSIONS:
                (cache / f"{name}_{conversion}.tflite").write_bytes(
                    convert(model, conversion, calibration))
        for conversion in CONVERSIONS:
            blobs[name, conversion] = (cache / f"{name}_{conversion}.tflite").read_bytes()
    if args.run:
        for row in RUN_ROWS:
            path = Path(args.run) / f"model_{row}.tflite"
            if not path.is_file():
                raise SystemExit(f"missing {path}: run `python -m recipes.qat --out {args.run}`")
            blobs[f"run:{args.run}", row] = path.read_bytes()
    setups, interpreters = [], {}
    for (name, conversion), blob in blobs.items():
        for runtime, (resolver, threads) in RUNTIMES.items():
            interpreter = Interpreter(model_content=blob, num_threads=threads,
                                      experimental_op_resolver_type=resolver)
            interpreter.allocate_tensors()
            given = interpreter.get_input_details()[0]
            image = np.random.default_rng(0).integers(0, 256, given["shape"])
            image = image - 128 if given["dtype"] == np.int8 else image  # int8: q = pixel-128
            interpreters[name, conversion, runtime] = (interpreter, given["index"],
                                                       image.astype(given["dtype"]))
            setups.append((name, conversion, runtime))
    print(f"{len(setups)} setups x {args.rounds} rounds x {args.seconds} s")
    times = {setup: [] for setup in setups}
    cpu_times = {setup: [] for setup in setups}
    for _ in range(args.rounds):
        for setup in setups:
            interpreter, index, image = interpreters[setup]
            for _ in range(5):
                interpreter.set_tensor(index, image)
                interpreter.invoke()
            started = time.perf_counter()
            while len(times[setup]) < 20 or time.perf_counter() - started < args.seconds:
                tic, cpu_tic = time.perf_counter(), time.thread_time()
                interpreter.set_tensor(index, image)
                interpreter.invoke()
                times[setup].append(1000 * (time.perf_counter() - tic))
                cpu_times[setup].append(1000 * (time.thread_time() - cpu_tic))
    table: dict = {}
    for (name, conversion, runtime), found in times.items():
        table.setdefault(name, {}).setdefault(conversion, {})[runtime] = float(np.median(found))
        if runtime.endswith("_1thread"):
            table[name][conversion][runtime + "_cpu"] = float(
                np.median(cpu_times[name, conversion, runtime]))
    # The headline pair is what the recipe ships: float vs int8 with int8 input and output,
    # per-channel weights (for a run folder: float_tflite vs qat_int8), each at its fastest
    # runtime, and also under each runtime alike.
    summary = {}
    for name, rows in table.items():
        float_row, int8_row = (("float_tflite", "qat_int8") if name.startswith("run:")
                               else ("float", "int8_io_int8"))
        best = {row: min(RUNTIMES, key=by_runtime.get) for row, by_runtime in rows.items()}
        summary[name] = {
            "fastest_runtime": best,
            "float": f"{float_row} {rows[float_row][best[float_row]]:.3f} ms "
                     f"({best[float_row]})",
            "int8": f"{int8_row} {rows[int8_row][best[int8_row]]:.3f} ms ({best[int8_row]})",
            "int8_speedup_each_at_its_fastest":
                rows[float_row][best[float_row]] / rows[int8_row][best[int8_row]],
            "int8_speedup_same_runtime": {rt: rows[float_row][rt] / rows[int8_row][rt]
                                          for rt in rows[float_row]}}
    record = {"cpu": cpu(), "median_latency_ms": table, "summary": summary,
              "seconds_per_setup_and_round": args.seconds, "rounds": args.rounds,
              "invocations": {"/".join(s): len(t) for s, t in times.items()},
              "command": "python bench/bench_qat.py " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items() if v is not None),
              "cpu_seconds": round(time.process_time(), 1),
              "versions": {"tensorflow": tf.__version__,
                           "ai_edge_litert": __import__("importlib.metadata").metadata.version(
                               "ai-edge-litert")}}
    slug = re.sub(r"[^A-Za-z0-9]+", "_", record["cpu"]["model"]).strip("_")
    out = Path(args.out or f"bench/results/qat_latency_{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for name, rows in table.items():
        print(f"\n{name} (median ms, batch 1)")
        columns = list(next(iter(rows.values())))
        print(f"{'':<16}" + "".join(f"{c.replace('thread', 't'):>13}" for c in columns))
        for row, by_runtime in rows.items():
            print(f"{row:<16}" + "".join(f"{by_runtime[c]:13.3f}" for c in columns))
        s = summary[name]
        print(f"each at its fastest: {s['float']} vs {s['int8']}: int8 speedup "
              f"{s['int8_speedup_each_at_its_fastest']:.2f}")
    print(f"cpu: {record['cpu']}\nwrote {out}")


if __name__ == "__main__":
    main()
