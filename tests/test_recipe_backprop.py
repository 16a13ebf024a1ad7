"""Smoke and bad-input tests of recipes/backprop."""

import json

import numpy as np
from conftest import run_recipe, smoke
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
    results = smoke("backprop", out, "--dataset", f"npz:{tmp_path / 'quadrants.npz'}")
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


def test_bad_input(tmp_path):
    done = run_recipe("backprop", "--dataset", "bogus:x", "--out", str(tmp_path / "a"))
    assert done.returncode == 2
    assert "valid dataset specs" in done.stderr and "synthetic:shapes" in done.stderr
    assert "Traceback" not in done.stderr

    done = run_recipe("backprop", "--equivalence-steps", "0", "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and "--equivalence-steps" in done.stderr
    assert "Traceback" not in done.stderr

    write_quadrants(tmp_path / "small.npz", n_train=100, n_test=20)
    done = run_recipe("backprop", "--dataset", f"npz:{tmp_path / 'small.npz'}",
                      "--equivalence-steps", "10", "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and "use fewer steps" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "c" / "results.json").exists()

    done = run_recipe("backprop", "predict", "--model", str(tmp_path / "missing.keras"), "x.png")
    assert done.returncode == 2 and "model file not found" in done.stderr
