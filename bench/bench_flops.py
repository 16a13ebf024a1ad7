"""How close the collection's reference CNN gets to this CPU's peak arithmetic rate.

    python bench/bench_flops.py

Counts the network's floating-point operations per image from its layer shapes (a
multiply-add is 2 FLOPs; convolutions and dense layers only, the rest is negligible): forward
= inference, and training = 3 x forward (the backward pass computes a gradient for the inputs
and one for the weights of every layer, each about as costly as the forward pass). Then
measures training images/s with `fit()` without and with XLA (`jit_compile`; Keras's default
"auto" leaves XLA off on a CPU-only TensorFlow machine) and inference images/s with `predict()`
(TensorFlow backend, float32, after a warm-up epoch), and divides the achieved FLOP/s by the
CPU's peak: cores x clock x FLOPs per cycle (AVX2 + FMA: 2 FMA units x 8 float32 lanes x 2 =
32 per cycle and core; AVX-512: 64). Writes bench/results/flops_<cpu>.json.
"""

import json
import os
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_train_speed import reference_cnn  # noqa: E402
from common.synthetic import make_shapes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def forward_flops(model) -> int:
    """FLOPs of one image's forward pass through the Conv2D and Dense layers."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def cpu_peak() -> dict:
    """Cores x clock x float32 FLOPs per cycle, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    cores = os.cpu_count() or 1
    ghz = float(mhz.group(1)) / 1000 if mhz else float("nan")
    return {"cpu": model.group(1).strip() if model else platform.processor(), "cores": cores,
            "clock_ghz": round(ghz, 3), "float32_flops_per_cycle_per_core": per_cycle,
            "simd": sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"}),
            "peak_gflops": round(cores * ghz * per_cycle, 1)}


def train_speed(x, y, batch_size: int, epochs: int, jit_compile: bool) -> tuple[float, float]:
    """Training images/s and images per CPU second of a fresh model after a warm-up."""
    model = reference_cnn(x.shape[1:], 10)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=jit_compile)
    model.fit(x[:512], y[:512], batch_size=batch_size, epochs=1, verbose=0)  # trace, warm up
    cpu, started = time.process_time(), time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    images = epochs * len(x)
    return images / (time.perf_counter() - started), images / (time.process_time() - cpu)


def main(images: int = 4096, epochs: int = 2, batch_size: int = 64) -> dict:
    x, y = make_shapes(images, image_size=32, seed=0)
    # Keras's default jit_compile="auto" means no XLA on a CPU-only TensorFlow machine
    train_ips, train_per_cpu_s = train_speed(x, y, batch_size, epochs, jit_compile=False)
    xla_ips, xla_per_cpu_s = train_speed(x, y, batch_size, epochs, jit_compile=True)
    model = reference_cnn(x.shape[1:], 10)
    forward = forward_flops(model)
    model.predict(x[:512], batch_size=256, verbose=0)
    started = time.perf_counter()
    model.predict(x, batch_size=256, verbose=0)
    infer_ips = len(x) / (time.perf_counter() - started)
    peak = cpu_peak()
    record = {
        "bench": "flops", "model": "reference CNN (recipes/feature_extraction), 32x32x3",
        "params": model.count_params(), "forward_mflops_per_image": round(forward / 1e6, 2),
        "train_mflops_per_image": round(3 * forward / 1e6, 2), **peak,
        "train_images_per_s": round(train_ips, 1),
        "train_gflops_achieved": round(train_ips * 3 * forward / 1e9, 2),
        "train_fraction_of_peak": round(train_ips * 3 * forward / 1e9 / peak["peak_gflops"], 4),
        "train_images_per_cpu_s": round(train_per_cpu_s, 1),
        "xla_train_images_per_s": round(xla_ips, 1),
        "xla_train_images_per_cpu_s": round(xla_per_cpu_s, 1),
        "xla_speedup_wall": round(xla_ips / train_ips, 2),
        "xla_train_fraction_of_peak": round(xla_ips * 3 * forward / 1e9 / peak["peak_gflops"],
                                            4),
        "inference_images_per_s_batch256": round(infer_ips, 1),
        "inference_gflops_achieved": round(infer_ips * forward / 1e9, 2),
        "inference_fraction_of_peak": round(infer_ips * forward / 1e9 / peak["peak_gflops"], 4),
        "batch_size": batch_size, "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "command": "python bench/bench_flops.py"}
    return record


if __name__ == "__main__":
    from common import import_tensorflow_quietly

    import_tensorflow_quietly()
    result = main()
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"\W+", "_", result["cpu"]).strip("_")[:40]
    (RESULTS / f"flops_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
