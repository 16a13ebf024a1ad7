"""Model parallelism that really splits: the recipe's ResNet under Keras 3's `ModelParallel`
on the JAX backend, over 2 CPU devices, trained for one epoch. Prints one JSON line.

    python -m recipes.distributed.layouts_jax

Runs in its own process: the backend (KERAS_BACKEND) and JAX's device count are fixed when
Keras and JAX are first imported. Needs JAX (`make frameworks-deps`).
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
# two CPU devices, so that a layer's kernel has two places to be split across
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2").strip()


def main() -> dict:
    import keras
    import numpy as np
    from keras import distribution

    from recipes.distributed import worker

    mesh = distribution.DeviceMesh((1, 2), ["batch", "model"],
                                   devices=distribution.list_devices()[:2])
    layout_map = distribution.LayoutMap(mesh)  # the same layouts as the recipe's TF section
    layout_map[".*conv2d.*kernel"] = (None, None, None, "model")
    layout_map[".*dense.*kernel"] = (None, "model")
    distribution.set_distribution(distribution.ModelParallel(layout_map=layout_map,
                                                             batch_dim_name="batch"))
    keras.utils.set_random_seed(0)
    # synchronized batch norm is TensorFlow-only; under ModelParallel the batch is not split
    model = worker.build_resnet((32, 32, 3), 10, 16, [1, 1, 1], synchronized=False)
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (128, 32, 32, 3)).astype("float32"), np.arange(128) % 10
    loss = model.fit(x, y, epochs=1, batch_size=32, verbose=0).history["loss"][-1]
    with_layout = [v for v in model.weights if layout_map[v.path] is not None]
    split = [v for v in with_layout if len(v.value.sharding.device_set) > 1]
    return {"backend": keras.backend.backend(), "devices": [str(d) for d in
                                                           distribution.list_devices()[:2]],
            "variables_with_layout": len(with_layout), "variables_split": len(split),
            "example": f"{split[0].path}: {split[0].value.sharding.spec}" if split else None,
            "fit_loss": float(loss)}


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.stdout.flush()
