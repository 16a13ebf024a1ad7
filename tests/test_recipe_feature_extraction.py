"""feature_extraction: smoke run, predict/evaluate on the saved model, --variants, --train-size,
progress output, a fast --help, Ctrl-C and resume, a stale backup, bad input."""

import json
import signal
import subprocess
import sys

import numpy as np
from conftest import ENV, ROOT, run_notebook, run_recipe
from PIL import Image

VALID = "relu, sigmoid, average_pool, spp"


def test_smoke_run_learns_and_writes_everything(tmp_path):
    out = tmp_path / "out"
    done = run_notebook("feature_extraction", out)  # also the notebook's execution test
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    # progress: the plan before training, then each model in turn; no framework noise
    assert "plan: 4 models x 4 epochs x 47 steps" in done.stdout
    assert "[1/4] relu" in done.stdout and "[4/4] spp" in done.stdout
    assert "retracing" not in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"] == "feature_extraction" and results["args"]["epochs"] == 4
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
    assert not (out / "backup").exists() or not any((out / "backup").iterdir())

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


def test_help_is_fast_shows_defaults_and_imports_no_tensorflow():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "recipes.feature_extraction",
                           "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(default: {VALID.replace(', ', ',')})" in done.stdout  # --variants
    assert "(default: 64)" in done.stdout and "(default: 8)" in done.stdout
    assert "synthetic:shapes" in done.stdout and "coco:" not in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "common.cli" in imported  # -X importtime did report the imports
    assert not {"tensorflow", "keras"} & imported


def test_unknown_variant_exits_2_listing_the_valid_ones(tmp_path):
    done = run_recipe("feature_extraction", "--variants", "relu,maxout", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "unknown variant maxout" in done.stderr and VALID in done.stderr
    assert "Traceback" not in done.stderr
    done = run_recipe("feature_extraction", "--variants", ",", "--out", str(tmp_path))
    assert done.returncode == 2 and VALID in done.stderr


def write_quadrants(path, n_train=240, n_test=80, size=24, seed=0):
    """4 classes of grayscale images (a bright square in one quadrant): another image shape
    (24x24x1) than synthetic:shapes (32x32x3)."""
    rng = np.random.default_rng(seed)

    def images(labels):
        x = rng.integers(0, 90, (len(labels), size, size)).astype(np.uint8)
        for image, label in zip(x, labels):
            top, left = (label // 2) * size // 2 + 3, (label % 2) * size // 2 + 3
            image[top : top + 6, left : left + 6] = 230
        return x

    y, yt = rng.integers(0, 4, n_train), rng.integers(0, 4, n_test)
    np.savez(path, x_train=images(y), y_train=y, x_test=images(yt), y_test=yt)


def interrupt_in_second_variant(args, log):
    """Run the recipe and press Ctrl-C (SIGINT) once the second variant has finished its first
    epoch (its backup is then on disk, and the first variant is complete)."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "recipes.feature_extraction", *args],
                                cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
        lines, second = [], False
        for line in proc.stdout:
            lines.append(line)
            second = second or line.startswith("[2/2]")
            if second and "val_accuracy" in line:  # printed after the epoch's backup is saved
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + rest, log.read_text()


def test_ctrl_c_resumes_loads_finished_variants_and_ignores_a_stale_backup(tmp_path):
    out = tmp_path / "out"
    write_quadrants(tmp_path / "gray.npz")
    tiny = ["--smoke", "--variants", "relu,sigmoid", "--epochs", "4", "--max-shift", "2",
            "--out", str(out)]

    # 1. RGB synthetic shapes, interrupted during the second variant
    rc, stdout, stderr = interrupt_in_second_variant([*tiny, "--train-size", "200"],
                                                     tmp_path / "1.log")
    assert rc == 130, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "rerun the same command (same --out) to resume" in stderr
    assert (out / "backup" / "finished" / "relu.json").is_file()
    assert (out / "backup" / "sigmoid").is_dir()

    # 2. another dataset and image shape into the same --out: the backups of run 1 do not fit
    # this model; they are set aside with a note, nothing is loaded from them, no crash
    gray = [*tiny, "--dataset", f"npz:{tmp_path / 'gray.npz'}", "--train-size", "120"]
    rc, stdout, stderr = interrupt_in_second_variant(gray, tmp_path / "2.log")
    assert rc == 130, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "holds a backup of another run" in stdout
    assert "loaded" not in stdout and "[1/2] relu" in stdout
    assert "120 train / 80 test images of shape (24, 24, 1), 4 classes" in stdout  # --train-size

    # 3. the same command again: relu is loaded, not retrained; sigmoid resumes and finishes
    done = run_recipe("feature_extraction", *gray)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "relu: finished before the interrupt, loaded" in done.stdout
    assert "plan: 1 models x 4 epochs" in done.stdout and "[1/1] sigmoid" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == f"npz:{tmp_path / 'gray.npz'}"
    assert results["args"]["train_size"] == 120
    assert results["args"]["variants"] == ["relu", "sigmoid"]
    assert set(results["metrics"]) == {"test_accuracy", "relu", "sigmoid", "max_pool",
                                       "linear_probe"}  # only the variants asked for
    assert (out / "relu_vs_sigmoid.png").is_file() and not (out / "pooling_curves.png").exists()
    assert not (out / "backup" / "finished").exists()  # done: a rerun starts afresh


def test_bad_input_exits_2_with_a_clear_message(tmp_path, run_here):
    done = run_here("feature_extraction", "--dataset", "bogus:thing", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "valid dataset specs" in done.stderr and "Traceback" not in done.stderr
    done = run_here("feature_extraction", "predict", "--model", str(tmp_path / "none.keras"),
                      "x.png")
    assert done.returncode == 2 and "model file not found" in done.stderr
    done = run_here("feature_extraction", "--epochs", "0")
    assert done.returncode == 2 and "at least 1" in done.stderr
    done = run_here("feature_extraction", "--max-shift", "0", "--out", str(tmp_path))
    assert done.returncode == 2 and "--max-shift must be at least 1" in done.stderr
    done = run_here("feature_extraction", "--time-budget", "0", "--out", str(tmp_path))
    assert done.returncode == 2 and "--time-budget must be a positive number" in done.stderr


def test_time_budget_trains_each_variant_for_the_budget(tmp_path, run_here):
    # in this process (TensorFlow loaded already); no --epochs: the budget alone stops it
    done = run_here("feature_extraction", "--smoke", "--variants", "relu", "--train-size", "300",
                    "--time-budget", "12", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plan: 1 models x 12 s of training each" in done.stdout
    assert "relu: time budget 12 s:" in done.stdout and "relu: stopped at" in done.stdout
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
    # generous bounds: the budget was spent, not an epoch count (no timing precision)
    assert 6 <= metrics["relu"]["train_seconds"] < 12 + 5
