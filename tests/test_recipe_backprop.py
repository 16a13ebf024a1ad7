"""Smoke and bad-input tests of recipes/backprop, progress output, --train-size, Ctrl-C and
resume of the GradientTape loops, a stale backup."""

import json
import signal
import subprocess
import sys

import numpy as np
from conftest import ENV, ROOT, run_recipe
from PIL import Image

QUADRANTS = ["top_left", "top_right", "bottom_left", "bottom_right"]


def quadrant_image(label: int, rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """A bright square in one quadrant of a noisy grayscale image: easy for a learning CNN."""
    image = rng.integers(0, 90, (size, size)).astype(np.uint8)
    half, side = size // 2, 6
    top = (label // 2) * half + rng.integers(0, half - side + 1)
    left = (label % 2) * half + rng.integers(0, half - side + 1)
    image[top : top + side, left : left + side] = rng.integers(170, 256)
    return image


def write_quadrants(path, n_train: int = 640, n_test: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y, yt = rng.integers(0, 4, n_train), rng.integers(0, 4, n_test)
    np.savez(path, x_train=np.stack([quadrant_image(int(c), rng) for c in y]), y_train=y,
             x_test=np.stack([quadrant_image(int(c), rng) for c in yt]), y_test=yt,
             class_names=np.array(QUADRANTS))


def test_smoke(tmp_path):
    write_quadrants(tmp_path / "quadrants.npz")
    out = tmp_path / "out"
    done = run_recipe("backprop", "--smoke", "--out", str(out), "--dataset",
                      f"npz:{tmp_path / 'quadrants.npz'}")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    # progress: the plan before training, each loop in turn, one line per epoch in a log
    assert "plan: 4 training loops x 2 epochs x 10 steps = 80 optimisation steps" in done.stdout
    assert "[1/4] cross_entropy" in done.stdout and "[4/4] plain_relu" in done.stdout
    assert "mse: epoch 2/2" in done.stdout and "10/10 - " in done.stdout
    assert "retracing" not in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"] == "backprop" and results["args"]["epochs"] == 2
    m = results["metrics"]
    # the hand-written chain rule and our GradientTape loop agree with Keras
    assert m["chain_rule"]["max_abs_diff"] < 1e-5
    assert m["equivalence"]["max_abs_weight_diff"] < 1e-4
    assert m["equivalence"]["max_abs_weight_change"] > 1e-3  # the weights did move
    assert m["gradient_check"]["max_relative_error"] < 1e-4
    assert m["gradient_check"]["num_parameters"] > 100
    # 4 classes (chance 0.25): only a model that learns gets far above chance
    assert m["test_accuracy"] > 0.6
    assert m["cross_entropy"]["test_accuracy"] == m["test_accuracy"]
    assert 0 <= m["mse"]["test_accuracy"] <= 1
    # gradients vanish towards the input with sigmoid, much less so with ReLU
    sigmoid_ratio = m["sigmoid"]["grad_norm_ratio_first_to_last"]
    relu_ratio = m["relu"]["grad_norm_ratio_first_to_last"]
    assert sigmoid_ratio < 1e-2 and sigmoid_ratio < relu_ratio / 10
    for png in ("cross_entropy_vs_mse.png", "gradient_norms.png", "deep_curves.png",
                "confusion.png"):
        assert (out / png).stat().st_size > 10_000, png
    assert json.loads((out / "class_names.json").read_text()) == QUADRANTS

    image = np.zeros((20, 20), np.uint8)  # a bright square in the bottom-right quadrant
    image[12:18, 12:18] = 255
    Image.fromarray(image).save(tmp_path / "bottom_right.png")
    done = run_recipe("backprop", "predict", "--model", str(out / "model.keras"),
                      str(tmp_path / "bottom_right.png"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{tmp_path / 'bottom_right.png'}\tbottom_right"

    done = run_recipe("backprop", "evaluate", "--model", str(out / "model.keras"), "--dataset",
                      f"npz:{tmp_path / 'quadrants.npz'}")
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((out / "evaluate" / "results.json").read_text())
    assert abs(evaluated["metrics"]["test_accuracy"] - m["test_accuracy"]) < 1e-6


def test_bad_input(tmp_path, run_here):
    done = run_here("backprop", "--dataset", "bogus:x", "--out", str(tmp_path / "a"))
    assert done.returncode == 2
    assert "valid dataset specs" in done.stderr and "synthetic:shapes" in done.stderr
    assert "Traceback" not in done.stderr

    done = run_here("backprop", "--equivalence-steps", "0", "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and "--equivalence-steps" in done.stderr
    assert "Traceback" not in done.stderr

    write_quadrants(tmp_path / "small.npz", n_train=100, n_test=20)
    done = run_here("backprop", "--dataset", f"npz:{tmp_path / 'small.npz'}",
                      "--equivalence-steps", "10", "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and "use fewer steps" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "c" / "results.json").exists()

    done = run_here("backprop", "predict", "--model", str(tmp_path / "missing.keras"), "x.png")
    assert done.returncode == 2 and "model file not found" in done.stderr


def test_help_is_fast_and_shows_defaults():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "recipes.backprop", "--help"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(default: 0.02)" in done.stdout and "(default: 30)" in done.stdout
    assert "--train-size" in done.stdout and "coco:" not in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "common.cli" in imported and not {"tensorflow", "keras"} & imported


def interrupt_in_second_loop(args, log):
    """Run the recipe and press Ctrl-C (SIGINT) once the second training loop has saved its
    first epoch (the first loop is then complete)."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "recipes.backprop", *args], cwd=ROOT,
                                env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                stderr=stderr, text=True)
        lines, second = [], False
        for line in proc.stdout:
            lines.append(line)
            second = second or line.startswith("[2/4]")
            if second and "val_accuracy" in line:  # printed once the epoch is saved
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + rest, log.read_text()


def test_ctrl_c_resumes_loads_finished_loops_and_ignores_a_stale_backup(tmp_path):
    out = tmp_path / "out"
    write_quadrants(tmp_path / "gray.npz")
    tiny = ["--smoke", "--epochs", "3", "--depth", "2", "--out", str(out)]

    # 1. RGB synthetic shapes, interrupted in the second loop (mse)
    rc, stdout, stderr = interrupt_in_second_loop(tiny, tmp_path / "1.log")
    assert rc == 130, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "rerun the same command (same --out) to resume" in stderr
    assert (out / "backup" / "finished" / "cross_entropy.json").is_file()
    assert (out / "backup" / "mse" / "state.json").is_file()

    # 2. grayscale 20x20 images into the same --out: run 1's backups do not fit these models;
    # they are set aside with a note, nothing is restored from them, no crash
    gray = [*tiny, "--dataset", f"npz:{tmp_path / 'gray.npz'}", "--train-size", "400"]
    rc, stdout, stderr = interrupt_in_second_loop(gray, tmp_path / "2.log")
    assert rc == 130, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "holds a backup of another run" in stdout
    assert "loaded" not in stdout and "resuming" not in stdout
    assert "400 train / 200 test images of shape (20, 20, 1), 4 classes" in stdout

    # 3. the same command again: cross_entropy is loaded, mse resumes after its saved epoch
    done = run_recipe("backprop", *gray)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "cross_entropy: finished before the interrupt, loaded" in done.stdout
    assert "plan: 3 training loops x 3 epochs" in done.stdout
    assert "resuming mse after epoch 1" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["args"]["train_size"] == 400 and results["args"]["epochs"] == 3
    assert results["dataset"] == f"npz:{tmp_path / 'gray.npz'}"
    assert not (out / "backup" / "finished").exists()  # done: a rerun starts afresh
