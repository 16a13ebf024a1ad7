"""qat: one smoke run (as the notebook) of every row - float Keras, float LiteRT, dynamic-range
and int8 PTQ, tfmot QAT converted to int8, Keras int8 - then predict and evaluate with the int8
.tflite, and the bad-input messages (not a model, wrong input shape, missing file)."""

import json

import numpy as np
import pytest
from conftest import run_notebook, stripe_classes
from PIL import Image

ROWS = ("float", "float_tflite", "ptq_dynamic", "ptq_int8", "qat_int8", "keras_int8")
CLASSES = ["horizontal", "vertical", "diagonal", "checker"]


def _npz(path, shape=(20, 20)):
    x, y = stripe_classes(100, shape, seed=0)  # grayscale (N, H, W)
    xt, yt = stripe_classes(30, shape, seed=1)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    npz = _npz(root / "stripes.npz")
    out = root / "out"
    # run as the notebook: this run is also the notebook's execution test
    done = run_notebook("qat", out, "--dataset", f"npz:{npz}")
    assert done.returncode == 0, done.stderr[-3000:]
    return npz, out, done, json.loads((out / "results.json").read_text())


@pytest.fixture
def in_process(run_here, monkeypatch):
    """run_here, with the TF_USE_LEGACY_KERAS the recipe sets undone afterwards (it would
    reach other recipes' notebooks started later from this process)."""
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    return run_here


def test_every_row_is_measured_and_quantization_keeps_the_accuracy(qat_run):
    _, out, done, results = qat_run
    m = results["metrics"]
    assert set(ROWS) <= set(m)
    for row in ROWS:
        assert 0 <= m[row]["test_accuracy"] <= 1 and m[row]["size_bytes"] > 0, row
        assert m[row]["latency_ms"] > 0, row
    for row in ("float_tflite", "ptq_dynamic", "ptq_int8", "qat_int8"):
        assert m[row]["peak_memory_bytes"] > 0, row
        assert (out / f"model_{row}.tflite").stat().st_size == m[row]["size_bytes"]
        # timed with both kernel sets; the row reports the faster, and names it
        kernels = results["fastest_kernels"][row]
        assert m[row]["latency_ms"] == m[row][f"latency_ms_{kernels}"] == min(
            m[row]["latency_ms_xnnpack"], m[row]["latency_ms_builtin"]), row
    assert m["comparison"]["int8_speedup_builtin"] == pytest.approx(
        m["float_tflite"]["latency_ms_builtin"] / m["qat_int8"]["latency_ms_builtin"])
    assert results["cpu"]["model"] and isinstance(results["cpu"]["flags"], list)
    # the stripes are easy: a working float model solves them, and a converted model that
    # mangled its input (scale, zero point, folded rescaling) would drop towards chance (0.25)
    assert m["float"]["test_accuracy"] > 0.9
    assert abs(m["float_tflite"]["test_accuracy"] - m["float"]["test_accuracy"]) <= 0.01
    for row in ("ptq_dynamic", "ptq_int8", "qat_int8"):
        assert m[row]["test_accuracy"] > 0.85, row
    assert results["tf_keras_copy_difference"] < 1e-4  # the tfmot copy is the same function
    # int8 weights: a quarter of the float bytes, plus the graph and quantization parameters
    assert m["float_tflite"]["size_bytes"] / m["qat_int8"]["size_bytes"] > 3
    assert m["comparison"]["int8_size_ratio"] == pytest.approx(
        m["float_tflite"]["size_bytes"] / m["qat_int8"]["size_bytes"])
    # Keras int8 quantizes the dense layers only: the convolutions stay float
    assert results["keras_int8_layers"] == ["dense", "logits"]
    assert 0 < m["keras_int8"]["quantized_weight_share"] < 0.5
    assert m["keras_int8"]["size_bytes"] < m["float"]["size_bytes"]
    assert "plan: 1 models x 4 epochs" in done.stdout and "[1/1] qat" in done.stdout
    for png in ("accuracy_vs_size", "accuracy_vs_latency", "training_curves",
                "confusion_qat_int8"):
        assert (out / f"{png}.png").stat().st_size > 5000, png
    assert json.loads((out / "class_names.json").read_text()) == ["0", "1", "2", "3"]


def test_predict_and_evaluate_run_the_int8_tflite(qat_run, in_process, tmp_path):
    npz, out, _, results = qat_run
    model = str(out / "model_qat_int8.tflite")
    arrays = np.load(npz)
    files = []
    for i in (0, 31, 65, 119):  # test images of classes 0, 1, 2, 3
        files.append(tmp_path / f"{i}.png")
        # saved larger and in RGB: predict resizes to the model's 20x20x1 input
        Image.fromarray(arrays["x_test"][i]).convert("RGB").resize((40, 40)).save(files[-1])
    done = in_process("qat", "predict", "--model", model, *map(str, files))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert [path for path, _ in lines] == [str(f) for f in files]
    assert sum(label == str(arrays["y_test"][int(f.stem)]) for (_, label), f in
               zip(lines, files)) >= 3

    done = in_process("qat", "evaluate", "--model", model, "--dataset", f"npz:{npz}",
                      "--latency-runs", "20", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    # the same test split through the same model: the training run's number exactly
    assert scores["test_accuracy"] == results["metrics"]["qat_int8"]["test_accuracy"]
    assert scores["size_bytes"] == results["metrics"]["qat_int8"]["size_bytes"]
    assert scores["latency_ms"] > 0 and scores["peak_memory_bytes"] > 0


def test_bad_tflite_input_is_refused_with_the_fix(qat_run, in_process, tmp_path):
    _, out, _, _ = qat_run
    not_a_model = tmp_path / "notes.tflite"
    not_a_model.write_text("not a model\n")
    done = in_process("qat", "predict", "--model", str(not_a_model), str(not_a_model))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not a LiteRT (.tflite) model" in done.stderr and "model_qat_int8" in done.stderr

    done = in_process("qat", "evaluate", "--model", str(tmp_path / "missing.tflite"),
                      "--dataset", "synthetic:shapes", "--out", str(tmp_path / "eval"))
    assert done.returncode == 2 and "model file not found" in done.stderr

    # the model takes 20x20 grayscale images; this dataset has 24x24
    other = _npz(tmp_path / "other.npz", shape=(24, 24))
    done = in_process("qat", "evaluate", "--model", str(out / "model_ptq_int8.tflite"),
                      "--dataset", f"npz:{other}", "--out", str(tmp_path / "eval"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "takes 20x20 images with 1 channel(s)" in done.stderr and "24x24" in done.stderr
    assert not (tmp_path / "eval" / "results.json").exists()
