"""The augmentation recipe: every policy and plot in smoke mode, with the plan and progress
lines; a grayscale, odd-sized npz that a working model learns (floors), predict and evaluate on
the saved model; Ctrl-C and resume, and a stale backup of another run; bad input."""

import ast
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
from conftest import ENV, ROOT, run_notebook, run_recipe, smoke
from PIL import Image

RECIPE = ROOT / "recipes" / "augmentation" / "augmentation.py"


def recipe_constants(*names):
    """The recipe's module-level constants, read from its source: importing the script would
    run it (it is a notebook, top to bottom)."""
    found = {target.id: ast.literal_eval(node.value)
             for node in ast.parse(RECIPE.read_text()).body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name) and target.id in names}
    return [found[name] for name in names]


POLICIES, CORRUPTIONS, TECHNIQUES = recipe_constants("POLICIES", "CORRUPTIONS", "TECHNIQUES")
CORRUPTED = [f"{kind}_{severity}" for kind, levels in CORRUPTIONS.items() for severity in levels]
CLASSES = ["horizontal", "vertical", "disk"]


def stripes(label, rng, height=19, width=23):
    """A grayscale image: horizontal stripes, vertical stripes or a bright disk, with noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    period, phase = rng.uniform(4, 7), rng.uniform(0, 2 * np.pi)
    if label == 0:
        image = np.sin(2 * np.pi * yy / period + phase)
    elif label == 1:
        image = np.sin(2 * np.pi * xx / period + phase)
    else:
        cy, cx = rng.uniform(6, height - 6), rng.uniform(6, width - 6)
        image = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < 20, 1.0, -1.0)
    return np.clip(128 + 100 * image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


def write_stripes_npz(path, n=360):
    """keras.datasets layout, grayscale (N, 19, 23) without a channel axis: odd, non-square."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = np.stack([stripes(label, rng) for label in y])
    split = n * 2 // 3
    np.savez(path, x_train=x[:split], y_train=y[:split], x_test=x[split:], y_test=y[split:],
             class_names=np.array(CLASSES))


def test_smoke_every_policy_metric_and_plot(tmp_path):
    out = tmp_path / "out"
    done = run_notebook("augmentation", out)  # also the notebook's execution test
    assert done.returncode == 0, done.stderr[-3000:]
    # the plan before training, then where the run is: one line per policy
    assert "plan: 7 policies x 4 epochs x 8 steps = 224 optimisation steps" in done.stdout
    assert "[1/7] none" in done.stdout and "[7/7] combined, about" in done.stdout
    assert "240 train / 200 test images" in done.stdout  # smoke: 240 of the generated images
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    for policy in POLICIES:
        assert {"clean_accuracy", "mean_corrupted_accuracy", *CORRUPTED} <= set(metrics[policy])
        assert all(0 <= metrics[policy][name] <= 1 for name in ["clean_accuracy", *CORRUPTED])
    assert 0 <= metrics["test_accuracy"] <= 1
    for name in TECHNIQUES:
        assert (out / "augmentations" / f"{name}.png").stat().st_size > 10_000, name
    for name in ("robustness.png", "corruptions.png", "training_curves.png", "confusion.png"):
        assert (out / name).stat().st_size > 10_000, name
    table = (out / "robustness.md").read_text()
    assert all(p in table.splitlines()[0] for p in POLICIES) and "| occlusion_40 |" in table
    assert json.loads((out / "class_names.json").read_text())[0] == "circle"


def test_grayscale_odd_size_npz_learns_predicts_and_evaluates(tmp_path):
    data, out = tmp_path / "stripes.npz", tmp_path / "out"
    write_stripes_npz(data)
    metrics = smoke("augmentation", out, "--dataset", f"npz:{data}",
                    "--policies", "none,combined")["metrics"]
    assert set(metrics) >= {"none", "combined"} and "geometric" not in metrics
    assert metrics["none"]["clean_accuracy"] > 0.8  # chance is 1/3
    assert metrics["combined"]["clean_accuracy"] > 0.8
    assert metrics["combined"]["darker_30"] > 0.6

    # predict: an RGB file of another size is converted to the model's grayscale 19x23 input
    small = stripes(1, np.random.default_rng(7))
    image = np.repeat(np.kron(small, np.ones((2, 2), np.uint8))[..., None], 3, axis=-1)
    Image.fromarray(image).save(tmp_path / "vertical.png")
    done = run_recipe("augmentation", "predict", "--model", str(out / "model.keras"),
                      str(tmp_path / "vertical.png"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{tmp_path / 'vertical.png'}\tvertical"

    done = run_recipe("augmentation", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", f"npz:{data}", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert abs(evaluated["test_accuracy"] - metrics["test_accuracy"]) < 1e-6


def test_time_budget_plans_trains_and_is_checked(tmp_path, run_here):
    # in this process (TensorFlow loaded already); the smoke caps it at 4 epochs of 8 steps
    done = run_here("augmentation", "--smoke", "--policies", "none", "--time-budget", "60",
                    "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plan: 1 policies x 60 s of training each" in done.stdout
    assert "60 s of training (at most 4 epochs) of 8 steps per policy" in done.stdout
    assert "none: time budget 60 s:" in done.stdout and "cosine decay to 0" in done.stdout
    assert "none: stopped at the planned steps: 32 steps (4.0 epochs)" in done.stdout
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    assert metrics["none"]["train_epochs"] == 4 and 0 < metrics["none"]["train_seconds"] <= 60
    assert not (tmp_path / "out" / "backup" / "none").exists()  # a budgeted model restarts
    done = run_here("augmentation", "--time-budget", "-5", "--out", str(tmp_path / "bad"))
    assert done.returncode == 2 and "--time-budget must be a positive number" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_policy_lists_the_valid_ones(tmp_path, run_here):
    done = run_here("augmentation", "--policies", "none,nope", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "nope" in done.stderr and "valid policies: none, geometric, photometric" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "results.json").exists()


def test_bad_train_size_is_a_clear_error(tmp_path, run_here):
    done = run_here("augmentation", "--train-size", "lots", "--out", str(tmp_path))
    assert done.returncode == 2 and "--train-size" in done.stderr
    assert "Traceback" not in done.stderr


def test_batch_size_larger_than_the_training_set_names_the_flag(tmp_path, run_here):
    data = tmp_path / "stripes.npz"
    write_stripes_npz(data)  # 240 training images
    done = run_here("augmentation", "--dataset", f"npz:{data}", "--batch-size", "500",
                      "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--batch-size 500 is larger than the 240 training images" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "results.json").exists()


def interrupted(*flags, after):
    """Run the recipe and press Ctrl-C (SIGINT) as soon as the lines starting with `after`
    have been printed, in that order. Returns the exit code and the output."""
    command = [sys.executable, "-m", "recipes.augmentation", *flags]
    process = subprocess.Popen(command, cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    waiting, lines = list(after), []
    for line in process.stdout:
        lines.append(line)
        if waiting and line.startswith(waiting[0]):
            waiting.pop(0)
            if not waiting:
                process.send_signal(signal.SIGINT)
    return process.wait(timeout=600), "".join(lines)


def test_ctrl_c_resumes_and_a_stale_backup_of_other_data_starts_clean(tmp_path):
    out, flags = tmp_path / "out", ["--smoke", "--policies", "none,occlusion"]
    # Ctrl-C during the second policy's second epoch (its first is in OUT/backup): the first
    # policy finished before, so the rerun must load it, and resume the second
    code, output = interrupted(*flags, "--out", str(out), after=["[2/2] occlusion", "Epoch 2/"])
    assert code == 130, output[-3000:]
    assert "rerun the same command (same --out) to resume" in output
    assert not (out / "results.json").exists()
    stale = tmp_path / "stale"
    shutil.copytree(out, stale)

    done = run_recipe("augmentation", *flags, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "none: finished before the interrupt, loaded" in done.stdout
    assert "plan: 1 policies" in done.stdout and "[1/1] occlusion" in done.stdout
    assert "backup of another run" not in done.stdout
    assert set(json.loads((out / "results.json").read_text())["metrics"]) >= {"none", "occlusion"}

    # The RGB backup left by the interrupted run, then a run on grayscale 19x23 digits-like
    # data into the same --out: its weights cannot fit; the run must say so and start clean
    data = tmp_path / "stripes.npz"
    write_stripes_npz(data)
    done = run_recipe("augmentation", *flags, "--dataset", f"npz:{data}",
                      "--train-size", "60", "--out", str(stale))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "holds a backup of another run" in done.stdout
    assert "[1/2] none" in done.stdout and "loaded" not in done.stdout
    assert "60 train / 120 test images of shape (19, 23, 1)" in done.stdout  # --train-size on npz
    results = json.loads((stale / "results.json").read_text())
    assert results["args"]["train_size"] == 60 and set(results["metrics"]) >= {"none", "occlusion"}
