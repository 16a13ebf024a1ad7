"""feature_extraction: smoke run, predict/evaluate on the saved model, bad input."""

import json

import numpy as np
from conftest import run_recipe, smoke
from PIL import Image


def test_smoke_run_learns_and_writes_everything(tmp_path):
    out = tmp_path / "out"
    results = smoke("feature_extraction", out)
    m = results["metrics"]
    # 10 classes: chance is 0.10; the smoke budget reaches well above it only if training works
    assert m["test_accuracy"] > 0.2
    assert m["linear_probe"]["cnn_features_accuracy"] > 0.3
    for variant in ("relu", "sigmoid", "average_pool", "spp", "max_pool"):
        assert 0.0 <= m[variant]["shift_consistency"] <= 1.0
        assert set(m[variant]) >= {"test_accuracy", "balanced_accuracy", "macro_f1"}
    for png in ("filters_conv1", "feature_maps", "relu_vs_sigmoid", "pooling_curves",
                "translation_invariance", "confusion", "accuracy", "samples"):
        assert (out / f"{png}.png").stat().st_size > 5000, png
    assert json.loads((out / "class_names.json").read_text())[0] == "circle"

    # predict: one line per file, PATH<TAB>CLASS, on a user's image of another size
    image = tmp_path / "mine.png"
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(image)
    done = run_recipe("feature_extraction", "predict", "--model", str(out / "model.keras"),
                      str(image), str(image))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] == str(image)
    assert lines[0].split("\t")[1] in json.loads((out / "class_names.json").read_text())

    # evaluate: the same metrics on a dataset spec, written to results.json
    done = run_recipe("feature_extraction", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", "synthetic:shapes", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"]
    assert scores["test_accuracy"] > 0.2


def test_bad_input_exits_2_with_a_clear_message(tmp_path):
    done = run_recipe("feature_extraction", "--dataset", "bogus:thing", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "valid dataset specs" in done.stderr and "Traceback" not in done.stderr
    done = run_recipe("feature_extraction", "predict", "--model", str(tmp_path / "none.keras"),
                      "x.png")
    assert done.returncode == 2 and "model file not found" in done.stderr
    done = run_recipe("feature_extraction", "--epochs", "0")
    assert done.returncode == 2 and "at least 1" in done.stderr
