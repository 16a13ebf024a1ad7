"""Embedding speed: images embedded per second, and nearest-neighbour query latency.

    .venv/bin/python bench/bench_embeddings.py [--model runs/embeddings/model.keras]

The network and the search are the recipe's own: the bench runs recipes/embeddings in smoke
mode (a minute on 2 cores; outputs in bench/out/embeddings_recipe) and takes its `embedder`
(32x32x3 -> 64-d unit vector) and its `nearest` search, or loads --model instead of the smoke
model (speed does not depend on the weights). The search is brute force: one matrix product
of the queries with the whole gallery and a partial sort (the recipe's NumPy `argpartition`,
against TensorFlow's `top_k`), over galleries of 10k, 100k and 1M random unit vectors.
Writes bench/out/embeddings.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import runpy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def median_seconds(repeats: int, fn, *fn_args) -> float:
    """Median seconds of `repeats` calls after one warm-up (machines here are shared and noisy)."""
    fn(*fn_args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*fn_args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="a saved embedding model (default: the recipe's smoke-run model)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "embeddings.json"))
    args = parser.parse_args()

    # the recipe's own network and search, not copies: a smoke run of it, its globals kept
    sys.argv = ["embeddings", "--smoke", "--out", str(ROOT / "bench" / "out" / "embeddings_recipe")]
    recipe = runpy.run_path(str(ROOT / "recipes" / "embeddings" / "embeddings.py"),
                            run_name="__main__")
    import numpy as np
    import tensorflow as tf

    from common import saving, synthetic

    def numpy_search(queries, gallery, k):  # what `predict --gallery` runs
        return recipe["nearest"](queries, gallery, k)[0]

    @tf.function(jit_compile=False)
    def tf_search(queries, gallery, k: int = 5):
        return tf.math.top_k(tf.linalg.matmul(queries, gallery, transpose_b=True), k).indices

    model = saving.load_model(args.model) if args.model else recipe["embedder"]
    _, height, width, channels = model.input_shape
    images, _ = synthetic.make_shapes(1024, image_size=height, seed=0)
    images = images[..., :channels].astype(np.float32)
    dim = model.output_shape[-1]
    rows = []

    # 1. images embedded per second, by batch size
    for batch in (1, 32, 256):
        batch_images = tf.constant(images[:batch])
        seconds = median_seconds(args.repeats, model.predict_on_batch, batch_images)
        rows.append({"what": "embed", "batch": batch, "ms": seconds * 1e3,
                     "per_second": batch / seconds})
    seconds = median_seconds(2, functools.partial(model.predict, batch_size=256, verbose=0), images)
    rows.append({"what": "embed (model.predict, 1024 images)", "batch": 256, "ms": seconds * 1e3,
                 "per_second": len(images) / seconds})

    # 2. nearest-neighbour queries against galleries of unit vectors
    rng = np.random.default_rng(0)
    for size in (10_000, 100_000, 1_000_000):
        gallery = rng.normal(size=(size, dim)).astype(np.float32)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        gallery_tf = tf.constant(gallery)
        for batch in (1, 64):
            queries = gallery[rng.integers(0, size, batch)] + 0.01
            found = numpy_search(queries, gallery, 5)
            assert np.array_equal(found, tf_search(tf.constant(queries), gallery_tf).numpy())
            for engine, fn, engine_args in (("numpy", numpy_search, (queries, gallery, 5)),
                                            ("tensorflow", tf_search, (queries, gallery_tf))):
                seconds = median_seconds(args.repeats, fn, *engine_args)
                rows.append({"what": f"top-5 search, {engine}", "gallery": size, "batch": batch,
                             "ms": seconds * 1e3, "per_second": batch / seconds})

    record = {"bench": "embeddings", "model": args.model or "the recipe's embedder, smoke run",
              "input": [height, width, channels], "dim": dim, "cpu_count": os.cpu_count(),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'what':<36} {'gallery':>9} {'batch':>6} {'ms / call':>10} {'items / s':>11}")
    for row in rows:
        print(f"{row['what']:<36} {row.get('gallery', ''):>9} {row['batch']:>6} "
              f"{row['ms']:>10.2f} {row['per_second']:>11.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
