"""Accuracy against training time: the augmentation recipe's classifier on a time budget against
the keras-io "Simple MNIST convnet", on the same data and machine, in one process.

    .venv/bin/python bench/bench_frontier.py [--data bench/out/mnist60k.npz] [--train-size N]
        [--part frontier|sweep|all] [--keras-io-epochs 1,2,4,8,15] [--extra-budgets 20,400]
        [--policy none] [--batch-size 128] [--learning-rate 2e-3]
        [--sweep-budget 45]

frontier: keras-io's model and settings (Adam 1e-3, batch 128, [0, 1] inputs, trained on all
training images, no validation during training) trained in segments up to 1, 2, 4, 8 and 15
epochs (its learning rate is constant, so epoch k of one run is a k-epoch run); after each
segment its accuracy, then ours (`python -m recipes.augmentation --time-budget T`, the
recipe's own `compiled_classifier` and `fit_policy`) with T = keras-io's training time so far,
so that each pair shares the machine's load. Training time is wall-clock seconds of `fit`
(evaluation outside); CPU seconds are this process's (all threads, `time.process_time`).
Accuracy: the test split (for mnist60k: the 2,000 real test digits, never used for training).

sweep: the recipe's classifier at one budget (--sweep-budget) with one setting changed at a
time from the recipe's previous defaults (batch 64, peak learning rate 2e-3, combined policy,
widths 16/32/64, no XLA): batch size, peak learning rate, policy, width, jit_compile.

The default data is bench/out/mnist60k.npz (built by bench/make_mnist60k.py when missing).
Writes bench/results/frontier_<cpu>.{json,md,png} (sweep: frontier_sweep_<cpu>.json) and
records the load average, since these machines are shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.chdir(ROOT)
DEFAULT_DATA = ROOT / "bench" / "out" / "mnist60k.npz"


def cpu_name() -> str:
    """A short name of this CPU for the result file, e.g. AMD_EPYC."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                words = line.split(":", 1)[1].split()
                return "_".join(w for w in words[:2] if w.isalnum()) or platform.machine()
    except OSError:
        pass
    return platform.machine()


def options_from_command_line() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a keras.datasets-layout npz")
    p.add_argument("--train-size", type=int, default=None,
                   help="use the first N training images (the npz is shuffled); default all")
    p.add_argument("--part", choices=("frontier", "sweep", "pipeline", "all", "plot"),
                   default="frontier",
                   help="plot: redraw the table and plot from the frontier's JSON file")
    p.add_argument("--keras-io-epochs", default="1,2,4,8,15")
    p.add_argument("--extra-budgets", default="",
                   help="more budgets (seconds) for ours alone, comma-separated")
    p.add_argument("--policy", default="none", help="our augmentation policy")
    p.add_argument("--batch-size", type=int, default=64, help="our batch size")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="our peak learning rate")
    p.add_argument("--widths", default="8,16,32", help="our classifier's stage widths")
    p.add_argument("--sweep-budget", type=float, default=45.0)
    p.add_argument("--sweep-rows", default="",
                   help="comma-separated row numbers of the sweep to run (default: all); the "
                        "others are kept from the existing result file")
    p.add_argument("--tag", default="", help="suffix of the result files")
    return p.parse_args()


COMMAND = "python bench/bench_frontier.py " + " ".join(sys.argv[1:])
options = options_from_command_line()
if not Path(options.data).is_file():
    if Path(options.data) != DEFAULT_DATA:
        sys.exit(f"error: {options.data} not found (pass --data FILE, a keras.datasets npz)")
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_mnist60k.py")], check=True)
started, load_before = time.time(), os.getloadavg()
RESULTS = ROOT / "bench" / "results"
suffix = f"{cpu_name()}{'_' + options.tag if options.tag else ''}"


def report(theirs: list[dict], mine: list[dict], settings: dict, run: dict) -> None:
    """The table (markdown) and the plot (accuracy against wall and CPU seconds); `run` holds
    the dataset, the number of training and test images and the CPU count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    paired = mine[:len(theirs)]
    lines = [f"accuracy on {run['test_images']:,} test images after training on "
             f"{run['train_images']:,} "
             f"(`{run['dataset']}`), this machine shared with other jobs (1-min load "
             f"{min(r['load_average_1min'] for r in theirs + mine):.1f}-"
             f"{max(r['load_average_1min'] for r in theirs + mine):.1f}, {run['cpu_count']} CPUs)",
             "", "| keras-io epochs | keras-io train s (CPU s) | keras-io accuracy | ours "
             "--time-budget s | ours train s (CPU s) | ours epochs | ours accuracy | ours - "
             "keras-io (points) |", "|---|---|---|---|---|---|---|---|"]
    for t, o in zip(theirs, paired):
        lines.append(f"| {t['epochs']} | {t['train_seconds']:.0f} ({t['cpu_seconds']:.0f}) | "
                     f"{t['accuracy']:.4f} | {o['budget_s']:.0f} | {o['train_seconds']:.0f} "
                     f"({o['cpu_seconds']:.0f}) | {o['epochs']} | {o['accuracy']:.4f} | "
                     f"{100 * (o['accuracy'] - t['accuracy']):+.2f} |")
    for o in mine[len(theirs):]:
        lines.append(f"| - | - | - | {o['budget_s']:.0f} | {o['train_seconds']:.0f} "
                     f"({o['cpu_seconds']:.0f}) | {o['epochs']} | {o['accuracy']:.4f} | - |")
    lines += ["", f"ours: recipes/augmentation classifier, policy {settings['policy']}, batch "
              f"{settings['batch_size']}, peak learning rate {settings['learning_rate']:g} "
              f"(warm-up + cosine fitted to the budget), widths {list(settings['widths'])}; "
              "keras-io: Conv32-Pool-Conv64-Pool-Flatten-Dropout(0.5)-Dense, Adam 1e-3, "
              "batch 128"]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"frontier_{suffix}.md").write_text(text)
    print(text)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "train_seconds", "training wall-clock seconds"),
                           (axes[1], "cpu_seconds", "training CPU seconds (all threads)")):
        mine_sorted = sorted(mine, key=lambda r: r[key])
        ax.plot([r[key] for r in theirs], [100 * r["accuracy"] for r in theirs], "o-",
                color="C1", label="keras-io Simple MNIST convnet (epochs marked)")
        for r in theirs:
            ax.annotate(str(r["epochs"]), (r[key], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(0, -12), ha="center", fontsize=8,
                        color="C1")
        ax.plot([r[key] for r in mine_sorted], [100 * r["accuracy"] for r in mine_sorted], "s-",
                color="C0", label="ours, --time-budget (budget = keras-io's time)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([t for t in (10, 20, 50, 100, 200, 500, 1000, 2000)
                       if min(r[key] for r in theirs + mine) / 1.5 < t
                       < max(r[key] for r in theirs + mine) * 1.5])
        ax.margins(y=0.08)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"accuracy vs training time, {run['train_images']:,} training images, "
                 f"{run['cpu_count']} shared CPUs")
    fig.tight_layout()
    fig.savefig(RESULTS / f"frontier_{suffix}.png", dpi=110)
    plt.close(fig)


if options.part == "plot":  # redraw from the saved results, without training anything
    saved = json.loads((RESULTS / f"frontier_{suffix}.json").read_text())
    report(saved["keras_io"], saved["ours"], saved["ours_settings"], saved)
    sys.exit()

# The recipe's functions (compiled_classifier, fit_policy, accuracy, build_classifier) come
# from a smoke run of it on this dataset; its training set is then replaced by the full one.
sys.argv = ["augmentation", "--smoke", "--dataset", f"npz:{options.data}", "--policies", "none",
            "--out", tempfile.mkdtemp(prefix="frontier_recipe_")]
recipe = runpy.run_path(str(ROOT / "recipes" / "augmentation" / "augmentation.py"),
                        run_name="__main__")
g = recipe["fit_policy"].__globals__  # the recipe's own namespace, read at call time

import keras  # noqa: E402  (after the recipe: it set up TensorFlow quietly)
import numpy as np  # noqa: E402
from bench_augmentation import keras_io_convnet  # noqa: E402

from common import data, results  # noqa: E402

ds = data.load(f"npz:{options.data}")
x_train, y_train = ds.x_train[:options.train_size], ds.y_train[:options.train_size]
x_test, y_test = ds.x_test, ds.y_test
g.update(x_train=x_train, y_train=y_train, epochs_given=False,
         out=Path(tempfile.mkdtemp(prefix="frontier_logs_")))
g["args"].smoke = False
record = {"bench": "frontier", "dataset": f"npz:{options.data}", "train_images": len(x_train),
          "test_images": len(x_test), "commit": results.commit(), "versions": results.versions(),
          "cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
          "command": COMMAND.strip()}


def ours(budget: float, policy: str, batch_size: int, learning_rate: float,
         widths=(16, 32, 64), jit_compile: bool = False) -> dict:
    """The recipe's classifier trained for `budget` seconds by the recipe's own code."""
    args = g["args"]
    args.time_budget, args.batch_size, args.learning_rate = budget, batch_size, learning_rate
    args.widths, g["widths"] = ",".join(map(str, widths)), tuple(widths)  # as --widths does
    model = g["compiled_classifier"]()
    if jit_compile:
        model.compile(optimizer=keras.optimizers.AdamW(0.0, weight_decay=1e-4),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                      metrics=["accuracy"], jit_compile=True)
    wall, cpu, load = time.time(), time.process_time(), os.getloadavg()[0]
    history, seconds = g["fit_policy"](model, policy)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    steps = int(model.optimizer.iterations.numpy())
    return {"budget_s": round(budget, 1), "train_seconds": round(seconds, 1),
            "fit_wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "steps": steps, "epochs": round(steps * batch_size / len(x_train), 2),
            "accuracy": g["accuracy"](model, x_test, y_test), "load_average_1min": load,
            "policy": policy, "batch_size": batch_size, "learning_rate": learning_rate,
            "widths": list(widths), "jit_compile": jit_compile, "params": model.count_params()}


def write(name: str, extra: dict) -> Path:
    path = RESULTS / f"{name}_{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, **extra, "load_average_after": os.getloadavg(),
                                "bench_seconds": round(time.time() - started, 1)},
                               indent=2, default=float) + "\n")
    return path


def frontier() -> None:
    widths = tuple(int(w) for w in options.widths.split(","))
    ours_settings = dict(policy=options.policy, batch_size=options.batch_size,
                         learning_rate=options.learning_rate, widths=widths)
    keras.utils.set_random_seed(0)
    theirs_model = keras_io_convnet(x_train.shape[1:], ds.num_classes)
    scale = np.float32(1 / 255)  # keras-io scales to [0, 1] outside the model
    x01, x01_test = x_train.astype("float32") * scale, x_test.astype("float32") * scale
    y_one_hot = keras.utils.to_categorical(y_train, ds.num_classes)
    theirs, mine = [], []
    wall_total = cpu_total = 0.0
    done = 0
    for epochs in (int(e) for e in options.keras_io_epochs.split(",") if e.strip()):
        load = os.getloadavg()[0]
        wall, cpu = time.time(), time.process_time()
        theirs_model.fit(x01, y_one_hot, batch_size=128, epochs=epochs, initial_epoch=done,
                         verbose=0)
        wall_total += time.time() - wall
        cpu_total += time.process_time() - cpu
        done = epochs
        predicted = theirs_model.predict(x01_test, batch_size=256, verbose=0).argmax(-1)
        theirs.append({"epochs": epochs, "train_seconds": round(wall_total, 1),
                       "cpu_seconds": round(cpu_total, 1), "load_average_1min": load,
                       "accuracy": float((predicted == y_test).mean())})
        mine.append(ours(wall_total, **ours_settings))
        print(f"keras-io {epochs:>2} epochs: {theirs[-1]['accuracy']:.4f} in "
              f"{wall_total:.0f} s ({cpu_total:.0f} CPU s) | ours at that budget: "
              f"{mine[-1]['accuracy']:.4f} in {mine[-1]['train_seconds']:.0f} s "
              f"({mine[-1]['cpu_seconds']:.0f} CPU s, {mine[-1]['epochs']} epochs)", flush=True)
        write("frontier", {"keras_io": theirs, "ours": mine, "ours_settings": ours_settings})
    for budget in (float(b) for b in options.extra_budgets.split(",") if b.strip()):
        mine.append(ours(budget, **ours_settings))
        print(f"ours at {budget:.0f} s: {mine[-1]['accuracy']:.4f}", flush=True)
    path = write("frontier", {"keras_io": theirs, "ours": mine, "ours_settings": ours_settings})
    report(theirs, mine, ours_settings, record)
    print(f"wrote {path}")


def pipeline_cost() -> None:
    """The recipe's input pipeline alone (no model): one epoch per policy at batch 64, twice
    (the first fills the cache), in images/s and images per CPU second: what the training
    step would have to wait for, and the CPU it takes from the step on a shared machine."""
    g["args"].batch_size = 64
    rows = {}
    for policy in ("none", "combined"):
        train = g["pipeline"].for_training(x_train, y_train, 64, seed=0, num_classes=10,
                                           augment=g["make_augment"](policy, 0))
        for epoch in range(2):
            wall, cpu = time.time(), time.process_time()
            batches = sum(1 for _ in train)
            wall, cpu = time.time() - wall, time.process_time() - cpu
            rows[f"{policy}, epoch {epoch + 1}"] = {
                "batches": batches, "images_per_s": round(len(x_train) / wall),
                "images_per_cpu_second": round(len(x_train) / max(cpu, 1e-9))}
            print(f"pipeline {policy}, epoch {epoch + 1}: {len(x_train) / wall:,.0f} images/s, "
                  f"{len(x_train) / max(cpu, 1e-9):,.0f} per CPU s", flush=True)
    write("frontier_pipeline", {"pipeline": rows, "load_average_1min": os.getloadavg()[0]})


SWEEP = [  # (name, settings changed from the previous defaults)
    ("previous defaults", {}),
    ("policy none", {"policy": "none"}),
    ("batch 128", {"batch_size": 128}),
    ("batch 256", {"batch_size": 256}),
    ("batch 128, lr 4e-3", {"batch_size": 128, "learning_rate": 4e-3}),
    ("batch 128, policy none", {"batch_size": 128, "policy": "none"}),
    ("batch 128, widths 32/64/128", {"batch_size": 128, "widths": (32, 64, 128)}),
    ("batch 128, jit_compile", {"batch_size": 128, "jit_compile": True}),
    # second round, from the first round's winner (policy none at batch 64)
    ("policy none, widths 8/16/32", {"policy": "none", "widths": (8, 16, 32)}),
    ("policy none, batch 32", {"policy": "none", "batch_size": 32}),
    ("policy none, lr 4e-3", {"policy": "none", "learning_rate": 4e-3}),
    ("policy none, lr 1e-3", {"policy": "none", "learning_rate": 1e-3}),
]


def sweep() -> None:
    base = dict(policy="combined", batch_size=64, learning_rate=2e-3, widths=(16, 32, 64))
    path = RESULTS / f"frontier_sweep_{suffix}.json"
    chosen = [int(i) for i in options.sweep_rows.split(",") if i.strip()] or range(len(SWEEP))
    kept = {r["name"]: r for r in json.loads(path.read_text())["rows"]} \
        if options.sweep_rows and path.is_file() else {}
    rows = []
    for name, change in (SWEEP[i] for i in chosen):
        row = {"name": name, **ours(options.sweep_budget, **{**base, **change})}
        row["steps_per_cpu_second"] = round(row["steps"] / row["cpu_seconds"], 2)
        row["images_per_cpu_second"] = round(row["steps"] * row["batch_size"]
                                             / row["cpu_seconds"], 1)
        rows.append(row)
        kept.pop(name, None)
        print(f"{name:<30} accuracy {row['accuracy']:.4f}, {row['epochs']} epochs, "
              f"{row['images_per_cpu_second']:.0f} images per CPU s, load "
              f"{row['load_average_1min']:.1f}", flush=True)
        write("frontier_sweep", {"budget_s": options.sweep_budget,
                                 "rows": list(kept.values()) + rows})
    print(f"wrote {RESULTS / f'frontier_sweep_{suffix}.json'}")


if __name__ == "__main__":
    if options.part in ("sweep", "all"):
        sweep()
    if options.part in ("pipeline", "all"):
        pipeline_cost()
    if options.part in ("frontier", "all"):
        frontier()
    print(f"bench: {time.time() - started:.0f} s, load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
