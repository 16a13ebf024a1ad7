"""Training and inference speed of the reference CNN per framework, on the machine's device.

    python bench/bench_frameworks.py                       # every row whose framework imports
    python bench/bench_frameworks.py --rows keras_jax,torch_native --images 20000

For a GPU machine (which may have JAX and PyTorch but no TensorFlow): the same Keras 3 model on
each backend and the native PyTorch model, trained at batch 256 on synthetic 32x32 images, each
row in its own process. Reports training images/s after a warm-up epoch, inference images/s,
the model's arithmetic (FLOPs per training image, counted from the layer shapes), the achieved
TFLOP/s and, on a GPU whose FP32 peak is known, the fraction of that peak. Writes
bench/results/frameworks_<device>.json.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ROWS = {"keras_tensorflow": "tensorflow", "keras_jax": "jax", "keras_torch": "torch",
        "torch_native": "torch"}
# dense FP32 peak in TFLOP/s (vendor data sheets, without sparsity); TF32 tensor cores can go
# higher, so a fraction above 1 would mean the backend used them
PEAK_FP32_TFLOPS = {"H200": 67.0, "H100 80GB HBM3": 67.0, "H100": 51.0, "A100": 19.5,
                    "L4": 30.3, "T4": 8.1, "V100": 15.7}


def flops_per_image(height=32, width=32, channels=3, num_classes=10) -> float:
    """Multiply-adds x 2 of one forward pass of the reference CNN; training is about 3x that
    (forward, gradient of the activations, gradient of the weights)."""
    flops, c, h, w = 0.0, channels, height, width
    for filters in (32, 64, 128):
        flops += 2 * h * w * 9 * c * filters
        c, h, w = filters, h // 2, w // 2
    flat = c * h * w
    return flops + 2 * (flat * 128 + 128 * num_classes)


def worker(row: str, images: int, batch: int, epochs: int) -> dict:
    """One row, run in this process (KERAS_BACKEND is already set by the parent)."""
    from common.synthetic import make_shapes

    x, y = make_shapes(images, image_size=32, seed=0)
    x = x.astype("float32")
    if row == "torch_native":
        import torch

        from recipes.frameworks.torch_train import ReferenceCNN

        device = "cuda" if torch.cuda.is_available() else "cpu"
        name = torch.cuda.get_device_name() if device == "cuda" else f"CPU x{os.cpu_count()}"
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
        yt = torch.from_numpy(y.astype("int64")).to(device)
        torch.manual_seed(0)
        model = ReferenceCNN(3, 32, 32, 10).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        def epoch():  # batches sliced on the device: the data loader is not what is measured
            model.train()
            order = torch.randperm(len(xt), device=device)
            for i in range(0, len(xt), batch):
                idx = order[i:i + batch]
                optimizer.zero_grad()
                loss_fn(model(xt[idx]), yt[idx]).backward()
                optimizer.step()
            sync()

        def infer():
            model.eval()
            with torch.inference_mode():
                for i in range(0, len(xt), batch):
                    model(xt[i:i + batch])
            sync()
    else:
        import keras

        from recipes.frameworks.keras_train import reference_cnn

        backend = keras.backend.backend()
        name = _keras_device(backend)
        keras.utils.set_random_seed(0)
        model = reference_cnn((32, 32, 3), 10)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      jit_compile=backend != "torch")

        def epoch():
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)

        def infer():
            model.predict(x, batch_size=batch, verbose=0)
    start = time.perf_counter()
    epoch()
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    train = epochs * images / (time.perf_counter() - start)
    infer()
    start = time.perf_counter()
    infer()
    inference = images / (time.perf_counter() - start)
    return {"device": name, "first_epoch_seconds": warm_up, "train_images_per_second": train,
            "inference_images_per_second": inference}


def _keras_device(backend: str) -> str:
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else (
            f"CPU x{os.cpu_count()}")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if (
        gpus) else f"CPU x{os.cpu_count()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up one")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.images, args.batch_size, args.epochs)))
        return
    found = {}
    for row in args.rows.split(","):
        # passive OpenMP waiting, as in recipes/frameworks: spinning threads slow PyTorch on
        # a shared CPU
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "KERAS_BACKEND": ROWS[row],
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, __file__, "--worker", row, "--images",
                               str(args.images), "--batch-size", str(args.batch_size),
                               "--epochs", str(args.epochs)], env=env, capture_output=True,
                              text=True)
        if done.returncode:
            found[row] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
        else:
            found[row] = json.loads(done.stdout.strip().splitlines()[-1])
        print(row, found[row], flush=True)
    train_flops = 3 * flops_per_image()
    device = next((r["device"] for r in found.values() if "device" in r), "unknown")
    peak = next((v for k, v in PEAK_FP32_TFLOPS.items() if k in device), None)
    for r in found.values():
        if "train_images_per_second" in r:
            r["train_tflops"] = r["train_images_per_second"] * train_flops / 1e12
            r["fraction_of_fp32_peak"] = r["train_tflops"] / peak if peak else None
    record = {"device": device, "machine": platform.machine(), "images": args.images,
              "batch_size": args.batch_size, "train_flops_per_image": train_flops,
              "peak_fp32_tflops": peak, "rows": found}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"frameworks_{device.replace(' ', '_')}.json"
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"{'row':<18}{'train img/s':>12}{'infer img/s':>12}{'TFLOP/s':>9}{'of peak':>9}")
    for row, r in found.items():
        if "error" in r:
            print(f"{row:<18} fails: {r['error']}")
            continue
        share = f"{r['fraction_of_fp32_peak']:.1%}" if r["fraction_of_fp32_peak"] else "-"
        print(f"{row:<18}{r['train_images_per_second']:>12.0f}"
              f"{r['inference_images_per_second']:>12.0f}{r['train_tflops']:>9.2f}{share:>9}")
    print(f"wrote {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
