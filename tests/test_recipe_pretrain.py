"""pretrain: a smoke pretraining run learns, writes every output and a loadable backbone,
never touches the shipped weights; predict / evaluate the glyph classifier; bad input."""

import hashlib
import json

import pytest
from conftest import run_notebook, run_recipe
from PIL import Image

from common import backbone, synthetic


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    shipped = hashlib.sha256(backbone.WEIGHTS.read_bytes()).hexdigest()
    out = tmp_path_factory.mktemp("pretrain") / "out"
    done = run_notebook("pretrain", out)  # also the notebook's execution test
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done, shipped


def test_smoke_pretraining_writes_a_loadable_backbone_and_never_touches_the_shipped_one(
        smoke_run):
    out, done, shipped = smoke_run
    assert hashlib.sha256(backbone.WEIGHTS.read_bytes()).hexdigest() == shipped
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert m["pretext"]["classes"] == 40 and m["pretext"]["train_images"] == 2000
    assert 0 <= m["pretext"]["val_accuracy"] <= m["pretext"]["val_top5"] <= 1
    assert m["pretext"]["val_top5"] > 5 / 40  # above chance after two short epochs
    log = (out / "pretrain_log.csv").read_text().splitlines()
    losses = [float(row.split(",")[log[0].split(",").index("loss")]) for row in log[1:]]
    assert losses[-1] < losses[0], losses  # training went downhill
    assert set(m["probe"]) == {"pretrained", "random_weights", "raw_pixels"}
    assert all(0 <= v <= 1 for v in m["probe"].values())
    assert m["backbone_params"] == backbone.generic_backbone().count_params()
    for png in ("corpus.png", "training_curves.png", "probe.png", "filters.png"):
        assert (out / png).stat().st_size > 5000, png
    net = backbone.load_generic((28, 28, 1), out / "backbone.weights.h5")
    assert net.output_shape == (None, 4, 4, backbone.FEATURES)
    assert "Traceback" not in done.stderr and "retracing" not in done.stderr


def test_predict_and_evaluate_the_glyph_classifier(smoke_run, tmp_path):
    out, _, _ = smoke_run
    image, _, _ = synthetic.make_glyphs(1, 32, seed=0, classes=synthetic.glyph_classes(40))
    Image.fromarray(image[0]).save(tmp_path / "glyph.png")
    predicted = run_recipe("pretrain", "predict", "--model", str(out / "model.keras"),
                           str(tmp_path / "glyph.png"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    path, char = predicted.stdout.strip().split("\t")
    assert path.endswith("glyph.png")
    assert char in json.loads((out / "class_names.json").read_text())
    evaluated = run_recipe("pretrain", "evaluate", "--model", str(out / "model.keras"),
                           "--dataset", "synthetic:glyphs", "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert 0 <= scores["test_accuracy"] <= 1 and "balanced_accuracy" in scores


@pytest.mark.parametrize("flags, message", [
    (["--max-classes", "1"], "--max-classes >= 2"),
    (["--num-examples", "0"], "--num-examples >= 1"),
    (["--dataset", "nonsense:foo"], "unknown dataset kind 'nonsense'"),
])
def test_bad_input_is_one_line_and_exit_2(flags, message, tmp_path, run_here):
    done = run_here("pretrain", "--smoke", "--out", str(tmp_path / "out"), *flags)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_evaluate_refuses_a_model_of_other_classes(smoke_run, tmp_path):
    out, _, _ = smoke_run
    names = out / "class_names.json"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.keras").write_bytes((out / "model.keras").read_bytes())
    (other / "class_names.json").write_text(json.dumps(
        [f"c{i}" for i in range(len(json.loads(names.read_text())))]))
    done = run_recipe("pretrain", "evaluate", "--model", str(other / "model.keras"),
                      "--dataset", "synthetic:glyphs", "--out", str(tmp_path / "eval"))
    assert done.returncode == 2 and "does not classify the synthetic:glyphs corpus" in done.stderr
    assert "Traceback" not in done.stderr
