"""The augmentation recipe: every policy and plot in smoke mode; a grayscale, odd-sized npz
that a working model learns (floors), predict and evaluate on the saved model; bad input."""

import json

import numpy as np
from conftest import run_recipe, smoke
from PIL import Image

POLICIES = ["none", "geometric", "photometric", "occlusion", "mixing", "randaugment", "combined"]
CORRUPTED = [f"{kind}_{severity}" for kind, levels in {
    "occlusion": (10, 25, 40), "darker": (30, 50, 70), "brighter": (20, 35, 50),
    "low_contrast": (50, 70, 85), "rotation": (15, 30, 45), "translation": (10, 20, 30),
}.items() for severity in levels]
TECHNIQUES = ["flip", "rotation", "zoom", "translation", "brightness", "contrast", "gamma",
              "random_erasing", "mixup", "cutmix", "randaugment"]
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
    metrics = smoke("augmentation", out)["metrics"]
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


def test_unknown_policy_lists_the_valid_ones(tmp_path):
    done = run_recipe("augmentation", "--policies", "none,nope", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "nope" in done.stderr and "valid policies: none, geometric, photometric" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "results.json").exists()


def test_bad_train_size_is_a_clear_error(tmp_path):
    done = run_recipe("augmentation", "--train-size", "lots", "--out", str(tmp_path))
    assert done.returncode == 2 and "--train-size" in done.stderr
    assert "Traceback" not in done.stderr
