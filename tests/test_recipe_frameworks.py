"""frameworks: one smoke run (as the notebook) of all four rows - Keras 3 on TensorFlow, JAX and
PyTorch, and native PyTorch - with their modes and exports; predict with the saved model; the
line counter; the bad-input messages (unknown backend, missing framework, unusable data)."""

import importlib.util
import json

import numpy as np
import pytest
from conftest import run_notebook, stripe_classes

from recipes.frameworks.measure import code_lines, marked_code

ROWS = ("keras_tensorflow", "keras_jax", "keras_torch", "torch_native")
KEYS = ("test_accuracy", "test_accuracy_spread", "train_images_per_second",
        "inference_ms_batch1", "inference_images_per_second_batch256", "peak_memory_mb",
        "first_epoch_seconds", "model_lines")


def _npz(path, shape=(16, 16)):
    x, y = stripe_classes(40, shape, seed=0)  # grayscale (N, H, W), 4 classes
    xt, yt = stripe_classes(16, shape, seed=1)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


@pytest.fixture(scope="module")
def frameworks_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("frameworks")
    npz = _npz(root / "stripes.npz")
    out = root / "out"
    # run as the notebook: this run is also the notebook's execution test
    done = run_notebook("frameworks", out, "--dataset", f"npz:{npz}", "--epochs", "6")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return npz, out, done, json.loads((out / "results.json").read_text())


def test_every_row_is_trained_and_measured_on_the_same_data(frameworks_run):
    _, out, done, results = frameworks_run
    m = results["metrics"]
    for row in ROWS:
        assert set(KEYS) <= set(m[row]), row
        assert 0 <= m[row]["test_accuracy"] <= 1, row
        assert m[row]["train_images_per_second"] > 0 and m[row]["peak_memory_mb"] > 50, row
        assert m[row]["inference_ms_batch1"] > 0, row
        record = json.loads((out / row / "record.json").read_text())
        assert [s["seed"] for s in record["seeds"]] == [0], row  # --smoke: one seed
        assert len(record["seeds"][0]["epoch_seconds"]) == 6, row
    # one Keras script, so all three Keras rows count the same lines; PyTorch needs its loop
    assert m["keras_tensorflow"]["model_lines"] == m["keras_jax"]["model_lines"]
    assert m["torch_native"]["model_lines"] > m["keras_tensorflow"]["model_lines"]
    # the stripes are easy: every framework's model is well above chance (0.25) in 12 steps
    for row in ROWS:
        assert m[row]["test_accuracy"] > 0.4, (row, m[row]["test_accuracy"])
    assert (out / "throughput.png").stat().st_size > 10_000
    assert "exceeds" in done.stdout or "within" in done.stdout  # the seed-spread verdicts


def test_modes_and_exports_are_timed_where_they_work(frameworks_run):
    _, out, _, results = frameworks_run
    m = results["metrics"]
    assert {"eager_train_images_per_second", "tf_function_train_images_per_second"} <= set(
        m["keras_tensorflow_modes"])
    assert "jax_jit_train_images_per_second" in m["keras_jax_modes"]
    assert "eager_train_images_per_second" in m["torch_native_modes"]
    # exported files reload in their runtime and predict the same classes as the framework
    for row, fmt in (("keras_tensorflow", "litert"), ("keras_tensorflow", "keras"),
                     ("torch_native", "onnx"), ("torch_native", "torch_export"),
                     ("keras_torch", "onnx")):
        deploy = m[f"{row}_deploy"]
        assert deploy[f"{fmt}_size_kb"] > 10 and deploy[f"{fmt}_latency_ms_batch1"] > 0, fmt
        assert deploy[f"{fmt}_agreement"] >= 0.9, (row, fmt)
    detail = json.loads((out / "frameworks.json").read_text())
    # a format a backend cannot write is reported with its reason, not dropped
    assert "error" in detail["records"]["keras_tensorflow"]["deployment"]["torch_export"]


def test_predict_with_the_saved_keras_model(frameworks_run, recipe_runner, tmp_path):
    npz, out, _, _ = frameworks_run
    from PIL import Image

    x = np.load(npz)["x_test"]
    for i in range(2):
        Image.fromarray(x[i]).save(tmp_path / f"{i}.png")
    done = recipe_runner("frameworks", "predict", "--model", str(out / "model.keras"),
                         str(tmp_path / "0.png"), str(tmp_path / "1.png"))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert [p for p, _ in lines] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    assert all(c in ("0", "1", "2", "3") for _, c in lines)


def test_code_lines_skip_comments_blank_lines_and_docstrings(tmp_path):
    lines = ['def f(x):', '    """Doc', '    string."""', '', '    # why', '    return x',
             '"""one-line doc"""', 'y = 1']
    assert code_lines(lines) == 3
    script = tmp_path / "script.py"
    script.write_text("import x\n# ---- model and training code: begin\n" + "\n".join(lines)
                      + "\n# ---- model and training code: end\nz = 2\n")
    assert marked_code(script) == lines


def test_unknown_backend_is_refused(run_here, tmp_path):
    done = run_here("frameworks", "--rows", "keras_tensorflow,mxnet", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "mxnet" in done.stderr and "keras_jax" in done.stderr, done.stderr


def test_missing_framework_names_the_make_target(run_here, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax" else real(name, *a))
    done = run_here("frameworks", "--rows", "keras_jax", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "jax" in done.stderr and "make frameworks-deps" in done.stderr, done.stderr


def test_unusable_datasets_are_refused(run_here, tmp_path):
    tiny = _npz(tmp_path / "tiny.npz", shape=(6, 6))
    done = run_here("frameworks", "--dataset", f"npz:{tiny}", "--out", str(tmp_path / "a"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "6x6" in done.stderr and "--image-size" in done.stderr, done.stderr
    done = run_here("frameworks", "--dataset", "synthetic:scenes", "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and "Classification" in done.stderr, done.stderr


def test_one_seed_is_refused_outside_smoke_runs(run_here, tmp_path):
    done = run_here("frameworks", "--seeds", "1", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--seeds 1" in done.stderr and "at least 2" in done.stderr, done.stderr
