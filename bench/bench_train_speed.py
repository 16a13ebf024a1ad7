"""Training and inference speed of the feature_extraction reference CNN, on any Keras backend.

    python bench/bench_train_speed.py              # here: TensorFlow on the CPU
    KERAS_BACKEND=jax python bench/bench_train_speed.py   # e.g. on a GPU machine with JAX

Only Keras and NumPy (no tf.data), so the same script measures a CPU and a GPU machine.
Prints a table and writes bench/out/train_speed_<backend>_<device>.json. The first epoch
(compilation) is excluded from the timings.
"""

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import keras  # noqa: E402
from keras import layers  # noqa: E402

from common.synthetic import make_shapes  # noqa: E402


def reference_cnn(input_shape, num_classes):
    """The network of recipes/feature_extraction (ReLU, max pooling, flatten head)."""
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64):
        x = layers.MaxPooling2D(2)(layers.Conv2D(filters, 3, padding="same", activation="relu")(x))
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(layers.MaxPooling2D(2)(x))
    x = layers.Dense(128, activation="relu")(layers.Dropout(0.3)(x))
    model = keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def device_name():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return "GPU" if gpus else f"CPU x{os.cpu_count()}"
    return backend


def main():
    n = int(os.environ.get("BENCH_IMAGES", 6000))
    x, y = make_shapes(n, image_size=32, seed=0)
    x = x.astype("float32")
    rows = []
    for batch_size in (64, 256):
        keras.utils.set_random_seed(0)
        model = reference_cnn(x.shape[1:], 10)
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # compile + warm-up
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=batch_size, epochs=3, verbose=0)
        train = 3 * n / (time.perf_counter() - start)
        model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
        start = time.perf_counter()
        model.predict(x, batch_size=batch_size, verbose=0)
        infer = n / (time.perf_counter() - start)
        rows.append({"batch_size": batch_size, "train_images_per_s": round(train),
                     "inference_images_per_s": round(infer),
                     "train_accuracy_after_4_epochs": round(history.history["accuracy"][-1], 3)})
    record = {"backend": keras.backend.backend(), "device": device_name(),
              "machine": platform.machine(), "keras": keras.__version__, "images": n,
              "rows": rows}
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    name = f"train_speed_{record['backend']}_{record['device'].replace(' ', '_')}.json"
    (out / name).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['backend']} on {record['device']} ({n} images 32x32x3)")
    print(f"{'batch':>6} {'train img/s':>12} {'infer img/s':>12}")
    for r in rows:
        print(f"{r['batch_size']:>6} {r['train_images_per_s']:>12} "
              f"{r['inference_images_per_s']:>12}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
