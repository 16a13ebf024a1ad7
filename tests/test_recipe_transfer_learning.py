"""transfer_learning: the generic backbone by default (RGB and gray data), the six-shape
pretrain backbone compared beside it and reused through --weights, three strategies, bad weights
files, progress, --train-size, resume after Ctrl-C and a stale backup in --out. The shipped
generic weights may be a placeholder: these tests check the code paths, not the accuracy."""

import json
import re
import runpy
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ENV, ROOT, run_notebook, run_recipe

RECIPE = ROOT / "recipes" / "transfer_learning" / "transfer_learning.py"
STRATEGIES = ("scratch", "frozen", "finetune")  # the metric names results.json promises


def train(out, *args: str) -> tuple[dict, str]:
    """A --smoke run that must succeed: its results.json and its stdout."""
    done = run_recipe("transfer_learning", "--smoke", "--out", str(out), *args)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads((out / "results.json").read_text()), done.stdout


def interrupt(out, *args: str, after: str) -> subprocess.CompletedProcess:
    """A --smoke run stopped with Ctrl-C once a stdout line contains `after`."""
    child = subprocess.Popen(
        [sys.executable, "-m", "recipes.transfer_learning", "--smoke", "--out", str(out), *args],
        cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    printed = []
    try:
        for line in child.stdout:
            printed.append(line)
            if after in line:
                child.send_signal(signal.SIGINT)
                break
        stdout, stderr = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 130, "".join(printed)[-3000:] + stderr[-3000:]
    assert "rerun the same command" in stderr and "Traceback" not in stderr
    return subprocess.CompletedProcess(child.args, child.returncode, "".join(printed) + stdout,
                                       stderr)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run with the default generic backbone, compared with the six-shape backbone,
    which it pretrains as OUT/backbone.keras and loads via the --weights PATH.keras code."""
    out = tmp_path_factory.mktemp("transfer_learning") / "out"
    # run as the notebook: this run is also the notebook's execution test
    done = run_notebook("transfer_learning", out, "--compare-weights", "pretrain")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return out, json.loads((out / "results.json").read_text()), done.stdout


def generic_size(shape) -> tuple[int, int]:
    """Parameters of the generic architecture for `shape`, and of its convolutions in stages 3
    and 4 (what fine-tuning trains with the default --unfreeze 0.5)."""
    from common import backbone

    net = backbone.generic_backbone(shape)
    top = [layer.count_params() for layer in net.layers
           if layer.name in ("stage3_a_conv", "stage3_conv", "stage4_a_conv", "stage4_conv")]
    return net.count_params(), sum(top)


def test_smoke_generic_by_default_compared_with_pretrain(smoke_run):
    out, results, stdout = smoke_run
    params, trained = generic_size((32, 32, 3))
    m = results["metrics"]
    assert results["args"]["weights"] == "generic"
    assert results["args"]["compare_weights"] == "pretrain"
    # the shapes target keeps its 32x32 RGB; fine-tuning's top half of the generic backbone's
    # 16 weighted layers is the four convolutions of stages 3 and 4 (BatchNorm stays frozen)
    assert "target: 32 train / 64 test images, 4 classes, 32x32x3" in stdout
    assert (f"generic backbone: generic, {params:,} parameters, input 32x32x3; fine-tuning "
            f"trains {trained:,} of them in 4 layers: stage3_a_conv, stage3_conv, stage4_a_conv, "
            "stage4_conv") in stdout
    assert "pretrain backbone: small_cnn, 294,960 parameters, input 32x32x3" in stdout
    # six source classes: chance is 1/6, a pretraining that learned nothing stays near it
    assert m["pretrain"]["source_test_accuracy"] > 0.35
    # the compared backbone's curve, beside its pretraining scores; the main keys as before
    assert set(m["pretrain"]) == {"source_test_accuracy", "source_classes", "frozen", "finetune"}
    for strategy in ("frozen", "finetune"):
        assert set(m["pretrain"][strategy]) == {"all"}
        assert 0 <= m["pretrain"][strategy]["all"] <= 1
    for strategy in STRATEGIES:
        assert set(m[strategy]) == {"all"}
        assert all(0 <= v <= 1 for v in m[strategy].values())
        assert set(m["domain_shift"][strategy]) == {"3"}
        assert m["convergence"][strategy]["seconds_total"] > 0
    assert m["headline"]["finetune"] == m["finetune"]["all"]
    assert m["train_examples_per_class"] == {"all": 8.0}
    assert m["convergence"]["labels_per_class"] == "all"
    assert 0 <= m["domain_shift"]["no_adaptation"] <= 1
    for name in ("samples", "data_efficiency", "convergence", "confusion", "predictions"):
        assert (out / f"{name}.png").stat().st_size > 5000, name
    assert json.loads((out / "class_names.json").read_text()) == [
        "hexagon", "star", "cross", "crescent"]
    assert json.loads((out / "backbone.json").read_text())["backbone"] == "small_cnn"
    # progress: a plan before pretraining (1,200 source images in batches of 64) and one
    # before the comparison (3 strategies x 2 labelled sets of 32 and 12 images: 4 steps)
    assert "plan: 1 source model x 3 epochs x 19 steps = 57 optimisation steps" in stdout
    # ... and 2 more for the compared backbone's frozen and finetune runs, named after it
    assert "plan: 8 runs x 3 epochs x 4 steps = 96 optimisation steps" in stdout
    assert "[6/8] shift_finetune_3" in stdout and "Epoch 3/3" in stdout
    assert "[8/8] pretrain_finetune_all" in stdout
    assert not (out / "backup" / "finished").exists()  # complete: nothing left to resume


def test_interrupted_run_loads_the_runs_that_had_finished(tmp_path):
    out = tmp_path / "out"
    stopped = interrupt(out, "--weights", "none", after="[3/6] finetune_all")
    accuracy = {name: float(value) for name, value in re.findall(
        r"(\w+_all): +\d+ images, test accuracy ([\d.]+)", stopped.stdout)}
    assert set(accuracy) == {"scratch_all", "frozen_all"}, stopped.stdout[-3000:]
    results, stdout = train(out, "--weights", "none")
    for name in accuracy:
        assert f"{name}: finished before the interrupt, loaded" in stdout
    assert "plan: 4 runs x 3 epochs" in stdout and "[1/4] finetune_all" in stdout
    assert round(results["metrics"]["scratch"]["all"], 3) == accuracy["scratch_all"]
    assert round(results["metrics"]["frozen"]["all"], 3) == accuracy["frozen_all"]


def test_predict_and_evaluate_the_saved_model(smoke_run, tmp_path):
    from PIL import Image

    from common import synthetic

    out, _, _ = smoke_run
    images, _ = synthetic.make_shapes(2, 32, seed=5, shapes=("star", "cross"))
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"shape{i}.png")
        Image.fromarray(image).save(files[-1])
    done = run_recipe("transfer_learning", "predict", "--model", str(out / "model.keras"),
                      *map(str, files))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    assert all(line.split("\t")[1] in ("hexagon", "star", "cross", "crescent") for line in lines)
    done = run_recipe("transfer_learning", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", "synthetic:shapes", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert 0 <= scores["test_accuracy"] <= 1 and "macro_f1" in scores


def test_weights_file_written_by_the_test_is_loaded(smoke_run, tmp_path):
    """--weights PATH.weights.h5: the frozen bottom layers of the result hold the file's values.
    The same run checks --train-size, and that the stale backup of an interrupted run with
    another image size in the same --out is set aside, not restored."""
    import keras

    out, _, _ = smoke_run
    interrupt(tmp_path / "run", "--weights", "none", "--image-size", "24", after="[2/6]")
    assert (tmp_path / "run" / "backup" / "finished" / "scratch_all.weights.h5").is_file()
    backbone = keras.saving.load_model(out / "backbone.keras")
    kernel = backbone.get_layer("block1_conv1").kernel
    size = int(np.prod(kernel.shape))
    marked = np.linspace(-0.5, 0.5, size, dtype="float32").reshape(kernel.shape)
    kernel.assign(marked)
    backbone.save_weights(tmp_path / "mine.weights.h5")
    results, stdout = train(tmp_path / "run", "--weights", str(tmp_path / "mine.weights.h5"),
                            "--train-size", "20")
    assert "holds a backup of another run" in stdout and "finished before" not in stdout
    assert "pretrain" not in results["metrics"]  # nothing was pretrained: the file was used
    # --train-size 20: a class-balanced 20 of the 32 target training images, 5 per class
    assert results["metrics"]["train_examples_per_class"] == {"all": 5.0}
    assert "target: 20 train / 64 test images" in stdout
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    loaded = model.get_layer("small_cnn").get_layer("block1_conv1").kernel
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), marked)


def test_weights_for_another_architecture_name_both_shapes(tmp_path, run_here):
    import keras

    other = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(8, 3)])
    other.save_weights(tmp_path / "other.weights.h5")
    done = run_here("transfer_learning", "--weights", str(tmp_path / "other.weights.h5"),
                      "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "does not match the small_cnn backbone" in done.stderr
    assert "(3, 3, 3, 16)" in done.stderr and "(3, 3, 1, 8)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_generic_architecture_takes_a_weights_file_through_its_loader(tmp_path, run_here):
    """--weights PATH.weights.h5 --backbone generic (e.g. a `make pretrain` run's output) goes
    through the generic loader and its checks: an unreadable file is one clear line."""
    (tmp_path / "bad.weights.h5").write_bytes(b"not an HDF5 file" * 64)
    done = run_here("transfer_learning", "--weights", str(tmp_path / "bad.weights.h5"),
                      "--backbone", "generic", "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "cannot read the generic backbone's weights" in done.stderr
    assert "Traceback" not in done.stderr


def test_imagenet_offline_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    """Only the download boundary is mocked: the network check answers 'offline'."""
    from common import UserError, data

    monkeypatch.chdir(ROOT)  # the script's setup cell looks for the repository root from here
    monkeypatch.setattr(data, "is_online", lambda *a, **k: False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # no cached weights either
    monkeypatch.setattr(sys, "argv", ["transfer_learning", "--weights", "imagenet",
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(UserError) as err:
        runpy.run_path(str(RECIPE), run_name="__main__")
    message = str(err.value)
    assert "needs a download" in message and "mobilenet_v3_small" in message
    assert "--weights PATH.h5 --backbone mobilenetv3small" in message


@pytest.mark.parametrize("flags, expected", [
    (("--labels-per-class", "0,x"), "valid values"),
    (("--weights", "missing.weights.h5"), "weights file not found"),
    (("--weights", "imagenet", "--backbone", "small_cnn"), "not small_cnn"),
    (("--weights", "backbone.pt"), "valid values are generic, pretrain, imagenet, none"),
    (("--compare-weights", "backbone.pt"), "--compare-weights 'backbone.pt': valid values"),
    (("--compare-weights", "generic"), "is --weights already"),
    (("--weights", "none", "--image-size", "4"), "too small for small_cnn"),
    (("--image-size", "8"), "at least 16x16 pixels"),  # the generic backbone downsamples 8x
    (("--backbone", "small_cnn"), "--backbone small_cnn does not apply to --weights generic"),
    (("--backbone", "generic", "--weights", "pretrain"), "make pretrain"),
])
def test_bad_input_is_one_clear_line(tmp_path, flags, expected, run_here):
    done = run_here("transfer_learning", *flags, "--out", str(tmp_path))
    assert done.returncode == 2 and expected in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_generic_weights_missing_or_corrupt_is_one_line(tmp_path, monkeypatch, capsys, problem):
    """The recipe as `python -m` runs it, in this process, with the shipped file's path pointed
    elsewhere: exit 2, the loader's one-line message, no traceback."""
    from common import backbone, cli

    weights = tmp_path / "generic_backbone.weights.h5"
    if problem == "corrupt":
        weights.write_bytes(b"not an HDF5 file" * 64)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(backbone, "WEIGHTS", weights)
    monkeypatch.setattr(sys, "argv", ["transfer_learning", "--smoke",
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        cli.run_script(str(RECIPE.with_name("__main__.py")), RECIPE.name)
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    expected = "weights are missing" if problem == "missing" else "cannot read the generic backbone"
    assert stderr.startswith("error: ") and expected in stderr and str(weights) in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_gray_digits_keep_their_size_and_channel(tmp_path):
    """A 1-channel 28x28 dataset stays 28x28x1 for the generic backbone, whose first kernel is
    the shipped RGB kernel summed over colours; the backbone compared with (random small_cnn)
    gets its own 32x32 RGB copy of the same images. predict reads gray files for the model."""
    import keras
    from PIL import Image

    from common import backbone, data, synthetic

    shapes = ("hexagon", "star", "cross", "crescent")
    x, y = synthetic.make_shapes(48, 28, seed=3, shapes=shapes)
    x = data.conform(x, channels=1)[..., 0]  # (N, 28, 28) uint8, the keras.datasets layout
    np.savez(tmp_path / "gray.npz", x_train=x[:24], y_train=y[:24], x_test=x[24:], y_test=y[24:])
    results, stdout = train(tmp_path / "out", "--dataset", f"npz:{tmp_path / 'gray.npz'}",
                            "--compare-weights", "none")
    assert "target: 24 train / 24 test images, 4 classes, 28x28x1" in stdout
    params, _ = generic_size((28, 28, 1))
    assert f"generic backbone: generic, {params:,} parameters, input 28x28x1" in stdout
    assert "none backbone: small_cnn, 294,960 parameters, input 32x32x3" in stdout
    m = results["metrics"]
    assert set(m["none"]) == {"frozen", "finetune"} and set(m["none"]["finetune"]) == {"all"}
    assert "domain_shift" not in m and "pretrain" not in m
    model = keras.saving.load_model(tmp_path / "out" / "model.keras")
    assert model.input_shape == (None, 28, 28, 1)
    # stage 1 is below the fine-tuned half: it still holds the loaded (gray) weights
    loaded = model.get_layer("generic_backbone").get_layer("stage1_a_conv").kernel
    rgb = backbone.load_generic((32, 32, 3)).get_layer("stage1_a_conv").kernel
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded),
                               np.sum(keras.ops.convert_to_numpy(rgb), axis=2, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    Image.fromarray(x[30]).save(tmp_path / "digit.png")
    done = run_recipe("transfer_learning", "predict", "--model",
                      str(tmp_path / "out" / "model.keras"), str(tmp_path / "digit.png"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().split("\t")[1] in ("0", "1", "2", "3")  # an npz's class names
