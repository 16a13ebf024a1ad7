"""Batch-1 LiteRT latency of a qat run's .tflite files: with the default XNNPACK delegate and
with the interpreter's own built-in kernels, at 1 and 2 threads, models taken in turn.

    .venv/bin/python bench/bench_qat.py [--run runs/qat] [--runs 300] [--rounds 5]

Writes bench/out/qat_latency.json. Why both kernel sets: whether int8 beats float at batch 1
depends on the kernels and the CPU. XNNPACK's float kernels are very fast on x86 with AVX2
FMA, and without the VNNI int8 dot-product instructions its int8 kernels have no wider
arithmetic to gain from; the built-in kernels show the int8 advantage the recipe's default
(XNNPACK) may not, on the same machine in the same minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

ROWS = ("float_tflite", "ptq_dynamic", "ptq_int8", "qat_int8")
KERNELS = {"xnnpack": OpResolverType.AUTO,
           "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")) or "vnni" in f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/qat", help="output folder of a qat run")
    p.add_argument("--runs", type=int, default=300, help="timed invocations per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds, models taken in turn")
    p.add_argument("--out", default="bench/out/qat_latency.json")
    args = p.parse_args()
    paths = {row: Path(args.run) / f"model_{row}.tflite" for row in ROWS}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `python -m recipes.qat --out "
                         f"{args.run}` first")
    setups = [(row, kernels, threads) for kernels in KERNELS for threads in (1, 2)
              for row in ROWS]
    interpreters, images = {}, {}
    for row, kernels, threads in setups:
        interpreter = Interpreter(model_path=str(paths[row]), num_threads=threads,
                                  experimental_op_resolver_type=KERNELS[kernels])
        interpreter.allocate_tensors()
        given = interpreter.get_input_details()[0]
        image = np.random.default_rng(0).integers(0, 256, given["shape"]).astype(np.float32)
        if given["dtype"] != np.float32:
            image = np.clip(image - 128, -128, 127)
        interpreters[row, kernels, threads] = interpreter
        images[row, kernels, threads] = image.astype(given["dtype"])
    times = {setup: [] for setup in setups}
    for _ in range(args.rounds):
        for setup in setups:
            interpreter, image = interpreters[setup], images[setup]
            index = interpreter.get_input_details()[0]["index"]
            for i in range(args.runs + 10):
                started = time.perf_counter()
                interpreter.set_tensor(index, image)
                interpreter.invoke()
                if i >= 10:
                    times[setup].append(1000 * (time.perf_counter() - started))
    table = {f"{kernels}_{threads}thread": {row: float(np.median(times[row, kernels, threads]))
                                            for row in ROWS}
             for kernels in KERNELS for threads in (1, 2)}
    record = {"run": args.run, "median_latency_ms": table,
              "int8_speedup": {setup: row["float_tflite"] / row["qat_int8"]
                               for setup, row in table.items()},
              "runs": args.runs, "rounds": args.rounds, "cpu": platform.processor()
              or platform.machine(), "cpu_flags": cpu_flags()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'ms, batch 1':<18}" + "".join(f"{row:>14}" for row in ROWS) + f"{'int8 speedup':>14}")
    for setup, row in table.items():
        print(f"{setup:<18}" + "".join(f"{row[r]:14.3f}" for r in ROWS)
              + f"{record['int8_speedup'][setup]:14.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
