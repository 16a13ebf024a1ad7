"""The imbalance recipe: long-tailed training set, eight methods, npz and folder data, the plan
and progress lines, --train-size, bad input."""

import ast
import json

import numpy as np
from conftest import ROOT, run_notebook, run_recipe, smoke, stripe_classes
from PIL import Image

RECIPE = ROOT / "recipes" / "imbalance" / "imbalance.py"


def recipe_constant(name):
    """A module-level constant of the recipe, read from its source: importing the script would
    run it (it is a notebook, top to bottom)."""
    return next(ast.literal_eval(node.value) for node in ast.parse(RECIPE.read_text()).body
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets))


METHODS = recipe_constant("METHODS")


def _four_npz(path):
    x, y = stripe_classes(80, (18, 23), seed=0)  # grayscale (N, H, W), odd sizes
    xt, yt = stripe_classes(25, (18, 23), seed=1)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def test_smoke_all_methods_on_grayscale_npz_of_odd_size(tmp_path):
    npz = _four_npz(tmp_path / "four.npz")
    out = tmp_path / "out"
    # run as the notebook: this run is also the notebook's execution test
    done = run_notebook("imbalance", out, "--dataset", f"npz:{npz}", "--ratio", "10")
    assert done.returncode == 0, done.stderr[-3000:]
    # the plan, then one line per training (two ensemble members in smoke mode)
    assert "plan: 8 trainings x 2 epochs x 20 steps = 320 optimisation steps" in done.stdout
    assert "[1/8] baseline" in done.stdout and "[8/8] ensemble_member1, about" in done.stdout
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert set(METHODS) <= set(m)
    for method in METHODS:
        assert {"balanced_accuracy", "macro_f1", "minority_recall", "macro_pr_auc",
                "minority_pr_auc"} <= set(m[method])
        assert 0 <= m[method]["minority_recall"] <= 1
        assert (out / f"confusion_{method}.png").is_file()
    # exponential profile 80 * 10^(-c/3): 80, 37, 17, 8 training images; test stays 25 each
    assert list(results["train_counts"].values()) == [80, 37, 17, 8]
    assert results["minority_classes"] == ["3"]
    assert set(results["per_class"]["focal"]["pr_auc"]) == {"0", "1", "2", "3"}
    # chance is 0.25. The baseline must have learned to rank the classes (threshold-free PR-AUC;
    # its argmax may still miss the tail, which is the point), and the best method must be right
    assert m["baseline"]["macro_pr_auc"] > 0.8
    assert m[results["best_method"]]["balanced_accuracy"] > 0.8
    assert m[results["best_method"]]["balanced_accuracy"] >= m["baseline"]["balanced_accuracy"]
    assert m["best_gain_over_baseline"] >= 0
    for png in ("class_histogram", "balanced_accuracy", "per_class_recall", "training_curves"):
        assert (out / f"{png}.png").stat().st_size > 5000
    assert (out / "model.keras").is_file()


def test_folder_dataset_mixed_rgb_gray_sizes_predict_and_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c, name in enumerate(["dark", "mid", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(15):
            value = 40 + 80 * c + rng.normal(0, 10, (21, 17) if i % 2 else (24, 24))
            pixels = np.clip(value, 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels) if i % 3 else Image.fromarray(pixels).convert("RGB")
            image.save(root / name / f"{i}.png")
    out = tmp_path / "out"
    results = smoke("imbalance", out, "--dataset", f"folder:{root}", "--ratio", "4",
                    "--methods", "logit_adjust,minority_augment")
    # logit_adjust needs the baseline, which is trained but not reported unless asked for
    assert set(results["metrics"]) == {"logit_adjust", "minority_augment"}
    assert list(results["train_counts"]) == ["dark", "light", "mid"]
    probe = tmp_path / "probe.png"
    Image.fromarray(np.full((30, 30), 200, np.uint8)).save(probe)
    done = run_recipe("imbalance", "predict", "--model", str(out / "model.keras"), str(probe))
    assert done.returncode == 0, done.stderr[-3000:]
    path, label = done.stdout.strip().split("\t")
    assert path == str(probe) and label in {"dark", "mid", "light"}
    done = run_recipe("imbalance", "evaluate", "--model", str(out / "model.keras"), "--dataset",
                      f"folder:{root}", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert 0 <= scores["balanced_accuracy"] <= 1


def test_bad_input_names_the_problem_and_the_fix(tmp_path, run_here):
    done = run_here("imbalance", "--methods", "baseline,smote", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "smote" in done.stderr and "valid methods" in done.stderr and "focal" in done.stderr

    done = run_here("imbalance", "--ratio", "0.5", "--out", str(tmp_path))
    assert done.returncode == 2 and "--ratio must be a number >= 1" in done.stderr

    # smoke data has 60 images per class: ratio 1000 leaves the tail class 'crescent' with none
    done = run_here("imbalance", "--smoke", "--ratio", "1000", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'crescent'" in done.stderr and "lower --ratio" in done.stderr
    assert not (tmp_path / "results.json").exists()


def test_train_size_is_a_class_balanced_subset_of_an_npz(tmp_path):
    npz = _four_npz(tmp_path / "four.npz")  # 80 training images per class
    results = smoke("imbalance", tmp_path / "out", "--dataset", f"npz:{npz}", "--ratio", "10",
                    "--methods", "baseline", "--train-size", "200")
    # 50 per class kept, then the long tail 50 * 10^(-c/3)
    assert list(results["train_counts"].values()) == [50, 23, 11, 5]
    assert results["args"]["train_size"] == 200


def test_batch_size_larger_than_the_long_tailed_set_names_the_flag(tmp_path, run_here):
    npz = _four_npz(tmp_path / "four.npz")  # ratio 100: 80 + 17 + 4 + 1 training images
    done = run_here("imbalance", "--dataset", f"npz:{npz}", "--batch-size", "1000",
                      "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--batch-size 1000 is larger than the 102 training images" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "results.json").exists()
