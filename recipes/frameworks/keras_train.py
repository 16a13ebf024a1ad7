"""One Keras 3 training script for every backend: `KERAS_BACKEND` picks TensorFlow, JAX or PyTorch.

    KERAS_BACKEND=jax python -m recipes.frameworks.keras_train --data OUT/data.npz \
        --out OUT/keras_jax --epochs 6 --batch-size 64 --seeds 0 1 2

Started by recipes/frameworks (one process per backend, so that each backend's start-up,
memory and threads are its own). Reads the arrays the recipe wrote (the same numbers for every
framework), trains one model per seed, then times inference, the eager and compiled modes, and
the export formats, and writes OUT/record.json. Imports no TensorFlow unless the backend or an
export format needs it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import keras
import numpy as np
from keras import layers

from recipes.frameworks.measure import (
    EpochClock,
    first_line,
    latency_ms,
    peak_memory_mb,
    run_flags,
    seed_record,
    size_kb,
    throughput,
)


# ---- model and training code: begin (counted in model_lines)
def reference_cnn(input_shape, num_classes):
    """The collection's reference CNN (the network of recipes/feature_extraction)."""
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(layers.MaxPooling2D(2)(x))
    x = layers.Dense(128, activation="relu")(layers.Dropout(0.3)(x))
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="reference_cnn")


def train(x, y, num_classes, epochs, batch_size, seed, callbacks=(), **compile_args):
    keras.utils.set_random_seed(seed)
    model = reference_cnn(x.shape[1:], num_classes)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], **compile_args)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=list(callbacks))
    return model
# ---- model and training code: end


class EpochTimes(keras.callbacks.Callback):
    """measure.EpochClock as a Keras callback."""

    def __init__(self, label: str = "", total: int = 0):
        super().__init__()
        self.clock = EpochClock(label, total)
        self.seconds, self.cpu = self.clock.seconds, self.clock.cpu

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.restart()

    def on_epoch_end(self, epoch, logs=None):
        self.clock.tick(epoch, logs)


def compile_modes(backend: str, torch_compile: bool = True) -> dict[str, dict]:
    """Eager against compiled execution of the same train step, per backend."""
    if backend == "tensorflow":
        return {"eager": {"run_eagerly": True}, "tf_function": {"jit_compile": False},
                "xla": {"jit_compile": True}}
    if backend == "jax":
        return {"eager": {"run_eagerly": True}, "jax_jit": {"jit_compile": True}}
    return {"eager": {"jit_compile": False}, **({"torch_compile": {"jit_compile": True}}
                                                if torch_compile else {})}


def time_modes(modes, x, y, num_classes, batch_size, steps) -> dict:
    """Train `steps` batches twice with each mode: the first epoch traces/compiles, the second
    is the steady speed."""
    n = min(len(x), steps * batch_size)
    found = {}
    for mode, compile_args in (modes.items() if steps else ()):
        timer = EpochTimes()
        try:
            train(x[:n], y[:n], num_classes, 2, batch_size, 0, [timer], **compile_args)
            found[mode] = {"first_epoch_seconds": timer.seconds[0],
                           "train_images_per_second": n / timer.seconds[1],
                           "train_cpu_ms_per_image": 1000 * timer.cpu[1] / n}
            print(f"  mode {mode}: {found[mode]['train_images_per_second']:.0f} images/s, "
                  f"first epoch {timer.seconds[0]:.1f} s", flush=True)
        except Exception as err:  # noqa: BLE001 - a mode that fails is a result, not a crash
            found[mode] = {"error": first_line(err)}
            print(f"  mode {mode}: fails: {found[mode]['error']}", flush=True)
    return found


def run_tf_saved_model(path: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept alive: `serve` only references its variables
    return lambda images: loaded.serve(tf.constant(images)).numpy()


def run_litert(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]["index"]

    def predict(images):
        if tuple(detail["shape"]) != images.shape:
            interpreter.resize_tensor_input(detail["index"], images.shape)
            interpreter.allocate_tensors()
            detail["shape"] = np.array(images.shape)
        interpreter.set_tensor(detail["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    interpreter.allocate_tensors()
    return predict


def run_onnx(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def run_torch_export(path: Path):
    import torch

    module = torch.export.load(str(path)).module()

    def predict(images):
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return predict


def deploy(model, images, out: Path, repeats: int) -> dict:
    """Export the trained model in every format Keras offers, run each file in its own runtime
    on the same images; size, batch-1 latency, and agreement of the predicted classes."""
    reference = model.predict_on_batch(images)
    reference = np.asarray(keras.ops.convert_to_numpy(reference)).argmax(-1)
    exports = {
        "keras": ("model.keras", lambda p: model.save(p),
                  lambda p: keras.saving.load_model(p).predict_on_batch),
        "tf_saved_model": ("saved_model", lambda p: model.export(p, "tf_saved_model",
                                                                 verbose=False),
                           run_tf_saved_model),
        "litert": ("model.tflite", lambda p: model.export(p, "litert", verbose=False),
                   run_litert),
        # the classic route to LiteRT, for a backend Keras cannot export to it directly
        "litert_from_saved_model": ("converted.tflite", lambda p: convert_saved_model(
            out / "saved_model", p), run_litert),
        "onnx": ("model.onnx", lambda p: model.export(p, "onnx", verbose=False), run_onnx),
        "torch_export": ("model.pt2", lambda p: model.export(p, "torch", verbose=False),
                         run_torch_export),
    }
    found = {}
    for name, (file, save, load) in exports.items():
        path = out / file
        try:
            start = time.perf_counter()
            save(str(path))
            export_seconds = time.perf_counter() - start
            predict = load(path)
            predicted = np.concatenate([np.asarray(keras.ops.convert_to_numpy(
                predict(images[i:i + 1]))) for i in range(len(images))]).argmax(-1)
            found[name] = {"size_kb": size_kb(path), "export_seconds": export_seconds,
                           "latency_ms_batch1": latency_ms(predict, images, repeats),
                           "agreement": float((predicted == reference).mean())}
            print(f"  export {name}: {found[name]['size_kb']:.0f} KB, "
                  f"{found[name]['latency_ms_batch1']:.2f} ms per image, agreement "
                  f"{found[name]['agreement']:.3f}", flush=True)
        except Exception as err:  # noqa: BLE001 - a format that fails is a result
            found[name] = {"error": first_line(err)}
            print(f"  export {name}: fails: {found[name]['error']}", flush=True)
            if os.environ.get("FRAMEWORKS_DEBUG"):
                traceback.print_exc()
    for name, (file, _, _) in exports.items():  # keep model.keras for predict/evaluate
        path = out / file
        if path.exists() and name != "keras":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return found


def convert_saved_model(saved_model: Path, path: str) -> None:
    if not saved_model.is_dir():
        raise FileNotFoundError("no SavedModel to convert (its export failed)")
    import tensorflow as tf

    Path(path).write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())


def main() -> None:
    args = run_flags(__doc__.splitlines()[0])
    backend = keras.backend.backend()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = np.load(args.data)
    x, y = arrays["x_train"].astype("float32"), arrays["y_train"]
    x_test, y_test = arrays["x_test"].astype("float32"), arrays["y_test"]
    num_classes = int(arrays["num_classes"])
    record = {"backend": backend, "import_memory_mb": peak_memory_mb(), "seeds": []}
    model = None
    for seed in args.seeds:
        timer = EpochTimes(f"keras_{backend} seed {seed}", args.epochs)
        start = time.perf_counter()
        trained = train(x, y, num_classes, args.epochs, args.batch_size, seed, [timer])
        seconds = time.perf_counter() - start
        predicted = np.concatenate([np.asarray(keras.ops.convert_to_numpy(
            trained.predict_on_batch(x_test[i:i + 256]))) for i in range(0, len(x_test), 256)])
        record["seeds"].append(seed_record(f"keras_{backend}", seed, timer, seconds, predicted,
                                           y_test, len(x)))
        model = model or trained  # the first seed's model is the one deployed
    record["training_memory_mb"] = peak_memory_mb()
    # keras.utils.set_random_seed also seeds TensorFlow when it is installed, which imports it:
    # recorded, since it counts in the memory of the JAX and PyTorch backends' processes
    record["tensorflow_imported"] = "tensorflow" in sys.modules
    record["inference_ms_batch1"] = latency_ms(model.predict_on_batch, x_test, args.repeats)
    record["inference_images_per_second_batch256"] = throughput(model.predict_on_batch, x_test)
    # exports first, so that no latency is measured after a compiled mode ran here
    if args.no_export:  # still the .keras file: the recipe's predict and evaluate use it
        model.save(out / "model.keras")
    record["deployment"] = {} if args.no_export else deploy(model, x_test[:args.repeats], out,
                                                            args.repeats)
    modes = compile_modes(backend, torch_compile=not args.no_torch_compile)
    record["modes"] = time_modes(modes, x, y, num_classes, args.batch_size, args.mode_steps)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
