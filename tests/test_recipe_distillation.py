"""distillation: one smoke run through the notebook (teacher fine-tuned from the generic
backbone, scratch / distilled / feature-distilled students over two seeds, the sweeps, latency,
plots), predict and evaluate on the saved student, a teacher that does not fit the data, and
the temperature-scaled KL divergence against a hand-computed value."""

import json

import numpy as np
import pytest
from conftest import smoke
from PIL import Image

from common import synthetic

ROWS = ("teacher", "scratch", "distilled", "feature_distilled")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distillation") / "out"
    return out, smoke("distillation", out, notebook=True)  # also the notebook's execution test


def test_smoke_reports_every_row_over_seeds_with_size_and_latency(smoke_run):
    out, results = smoke_run
    m = results["metrics"]
    for row in ROWS:
        assert 0 <= m[row]["test_accuracy"] <= 1, row
        assert m[row]["params"] > 0 and m[row]["latency_ms_batch1"] > 0, row
        assert m[row]["latency_ms_batch64"] > 0, row
    assert m["teacher"]["seeds"] == 1 and m["teacher"]["test_accuracy_std"] is None
    for row in ROWS[1:]:
        per_seed = list(m[row]["per_seed"].values())
        assert m[row]["seeds"] == len(per_seed) == 2, row
        assert m[row]["test_accuracy"] == pytest.approx(np.mean(per_seed)), row
        assert m[row]["test_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1)), row
        assert m[row]["params"] == m["scratch"]["params"], row  # one student architecture
    assert m["teacher"]["params"] >= 10 * m["scratch"]["params"]
    assert m["compression"] == pytest.approx(m["teacher"]["params"] / m["scratch"]["params"])
    assert m["distilled"]["minus_scratch"] == pytest.approx(
        m["distilled"]["test_accuracy"] - m["scratch"]["test_accuracy"])
    assert isinstance(m["distilled"]["beats_scratch_beyond_noise"], bool)
    # the default T and alpha are points of their sweeps, and are the distilled row
    assert set(m["temperature_sweep"]) == {"1", "4"} and set(m["alpha_sweep"]) == {"0.1"}
    assert m["temperature_sweep"]["4"]["test_accuracy"] == m["distilled"]["test_accuracy"]
    assert m["train_images"] == 40 and m["labels_per_class"] == 4  # 4 per class, 10 classes
    for png in ("rows.png", "sweeps.png", "soft_targets.png", "confusion.png"):
        assert (out / png).stat().st_size > 5000, png
    for name in ("teacher", "scratch_seed0", "distilled_seed1_T1_alpha0.1",
                 "feature_distilled_seed1"):
        log = (out / "logs" / f"{name}_log.csv").read_text().splitlines()
        assert log[0].startswith("epoch") and len(log) == 3, name  # 2 epochs
    assert not (out / "backup" / "finished").exists()  # cleared once results.json is written


def test_predict_and_evaluate_the_saved_student(smoke_run, run_here, tmp_path):
    out, _ = smoke_run
    x, y = synthetic.make_shapes(2, image_size=48, seed=5)  # not the training size
    files = []
    for i, image in enumerate(x):
        files.append(str(tmp_path / f"shape{i}.png"))
        Image.fromarray(image).save(files[-1])
    done = run_here("distillation", "predict", "--model", str(out / "model.keras"), *files)
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == files
    assert all(line[1] in synthetic.SHAPES for line in lines)
    xt, yt = synthetic.make_shapes(30, image_size=32, seed=6)  # a small npz: fast to load
    np.savez(tmp_path / "shapes.npz", x_train=xt, y_train=yt, x_test=xt, y_test=yt)
    done = run_here("distillation", "evaluate", "--model", str(out / "model.keras"),
                    "--dataset", f"npz:{tmp_path / 'shapes.npz'}", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"]
    assert 0 <= scores["test_accuracy"] <= 1 and scores["balanced_accuracy"] >= 0


def _classifier(path, shape, classes):
    import keras

    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x)).save(path)
    return str(path)


def test_a_teacher_that_does_not_fit_the_data_is_refused(run_here, tmp_path):
    three_classes = _classifier(tmp_path / "three.keras", (32, 32, 3), 3)
    done = run_here("distillation", "--smoke", "--out", str(tmp_path / "o"), "--teacher",
                    three_classes)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "predicts 3 classes, synthetic:shapes has 10" in done.stderr, done.stderr
    gray = _classifier(tmp_path / "gray.keras", (28, 28, 1), 10)
    done = run_here("distillation", "--smoke", "--out", str(tmp_path / "o"), "--teacher", gray)
    assert done.returncode == 2 and "takes (28, 28, 1) images" in done.stderr, done.stderr
    fits = _classifier(tmp_path / "fits.keras", (32, 32, 3), 10)  # right classes, no stage3
    done = run_here("distillation", "--smoke", "--out", str(tmp_path / "o"), "--teacher", fits)
    assert done.returncode == 2 and "no layer named 'stage3'" in done.stderr, done.stderr
    done = run_here("distillation", "--smoke", "--out", str(tmp_path / "o"), "--teacher",
                    str(tmp_path / "missing.keras"))
    assert done.returncode == 2 and "missing.keras" in done.stderr
    done = run_here("distillation", "--smoke", "--out", str(tmp_path / "o"), "--alpha", "1.5")
    assert done.returncode == 2 and "from 0 to 1" in done.stderr


def test_logits_distillation_is_the_temperature_scaled_kl_divergence():
    import keras
    from keras.distillation import LogitsDistillation

    teacher = np.array([[3.0, 1.0, -2.0], [0.5, 0.0, 2.0]])
    student = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    temperature = 4.0

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(teacher / temperature), softmax(student / temperature)
    expected = temperature**2 * np.mean(np.sum(p * np.log(p / q), -1))
    # what the recipe passes: the loss object
    ours = LogitsDistillation(temperature, loss=keras.losses.KLDivergence())
    assert float(ours.compute_loss(teacher, student)) == pytest.approx(expected, rel=1e-4)
    # the default, the string "kl_divergence", skips the softmax and the T^2 in Keras 3.15:
    # when this fails, Keras has fixed it, and the recipe's note about it can go
    default = LogitsDistillation(temperature)
    assert float(default.compute_loss(teacher, student)) != pytest.approx(expected, rel=1e-2)
