"""Smoke, resume and bad-input tests of recipes/embeddings."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ENV, ROOT, run_notebook, run_recipe
from PIL import Image, ImageDraw

METHODS = ("embedding", "classifier_features", "raw_pixels")
# variants of every run, and those that need the generic pretrained backbone
TRAINED_VARIANTS = ("embedding_flip", "embedding_whiten", "embedding_flip_whiten")
GENERIC_VARIANTS = ("generic_frozen", "generic_frozen_gem", "generic_frozen_multi",
                    "generic_frozen_whiten", "generic_frozen_multi_whiten")
METRICS = ("recall_at_1", "recall_at_5", "map_at_r", "knn_accuracy")


def bar_image(orientation: int, rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """A bright bar at one of 8 orientations, anywhere on a noisy background. A CNN embedding
    trained on 4 orientations places the other 4 apart; raw pixels mostly match positions."""
    image = Image.fromarray(rng.integers(0, 70, (size * 4, size * 4)).astype(np.uint8))
    angle = np.pi * orientation / 8 + rng.uniform(-0.05, 0.05)
    length = rng.uniform(5, 8) * 4
    cx, cy = rng.uniform(7, size - 7, 2) * 4
    dx, dy = np.cos(angle) * length, np.sin(angle) * length
    ImageDraw.Draw(image).line((cx - dx, cy - dy, cx + dx, cy + dy),
                               fill=int(rng.integers(170, 256)), width=8)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def write_bars(path, n_train: int = 2000, n_test: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y, yt = np.arange(n_train) % 8, np.arange(n_test) % 8
    np.savez(path, x_train=np.stack([bar_image(c, rng) for c in y]), y_train=y,
             x_test=np.stack([bar_image(c, rng) for c in yt]), y_test=yt)


def interrupt(*args: str, after: str) -> subprocess.CompletedProcess:
    """Start `python -m recipes.embeddings ARGS`, press Ctrl-C once a stdout line contains
    `after`, and return what it printed."""
    child = subprocess.Popen([sys.executable, "-m", "recipes.embeddings", *args], cwd=ROOT,
                             env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
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
    return subprocess.CompletedProcess(child.args, child.returncode, "".join(printed) + stdout,
                                       stderr)


def test_smoke(tmp_path):
    out = tmp_path / "out"
    # A run on 32x32 RGB shapes, interrupted once its first epoch is saved (the epoch line;
    # a SIGINT in the middle of a TensorFlow step can abort the process natively): its backup
    # stays in OUT/backup. The run below, on 20x20 grayscale bars into the same --out, must not
    # restore it (the shapes would not fit) but say so and start clean. That run trains its
    # backbone from scratch (--weights none): the generic backbone has its own test below.
    stopped = interrupt("--smoke", "--out", str(out), after="val_loss")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "rerun the same command" in stopped.stderr and "Traceback" not in stopped.stderr
    assert (out / "backup" / "embedding" / "run.json").is_file()

    write_bars(tmp_path / "bars.npz")
    # run as the notebook: this run is also the notebook's execution test
    done = run_notebook("embeddings", out, "--train-size", "800", "--weights", "none",
                        "--dataset", f"npz:{tmp_path / 'bars.npz'}")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "holds a backup of another run" in done.stdout
    # progress: the plan before training, then one line per epoch (stdout is not a terminal)
    assert "plan: 2 models x 6 epochs x 13 steps" in done.stdout, done.stdout[:2000]
    assert "[2/2] classifier" in done.stdout and "Epoch 6/6" in done.stdout
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    # --train-size 800: 800 of the 1,000 training images of the 4 seen orientations
    assert m["train_images"] == 800 and "train: 800 images of 4 classes" in done.stdout
    assert results["args"]["weights"] == "none" and "backbone: generic" not in done.stdout
    for method in METHODS + TRAINED_VARIANTS:
        assert set(METRICS) <= set(m[method]), method
        assert all(0 <= m[method][k] <= 1 for k in METRICS), m[method]
    assert not set(GENERIC_VARIANTS) & set(m)  # no pretrained backbone in this run
    # trained on orientations 0-3 only, the embedding still groups the unseen 4-7; raw pixels
    # (chance MAP@R is about 0.15) cannot, since the bars sit anywhere in the image
    assert m["embedding"]["map_at_r"] > 0.6
    assert m["embedding"]["map_at_r"] > m["raw_pixels"]["map_at_r"] + 0.2
    assert m["seen_classes"] == 4 and m["unseen_test_images"] == 200
    for png in ("training_curves.png", "metrics.png", "projection.png",
                "neighbours_embedding.png", "neighbours_raw_pixels.png"):
        assert (out / png).stat().st_size > 10_000, png

    # predict: one unit-length 64-d vector per file, as JSON
    files = []
    rng = np.random.default_rng(1)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(6):
        Image.fromarray(bar_image(i % 8, rng)).save(gallery / f"bar{i}.png")
    (gallery / "notes.txt").write_text("not an image")
    files = [str(gallery / "bar0.png"), str(gallery / "bar5.png")]
    done = run_recipe("embeddings", "predict", "--model", str(out / "model.keras"), *files)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    vectors = np.array([json.loads(line.split("\t")[1]) for line in lines])
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)

    # predict --gallery: nearest gallery images; the query itself comes first; the text file
    # in the gallery is skipped with a count
    done = run_recipe("embeddings", "predict", "--model", str(out / "model.keras"),
                      "--gallery", str(gallery), "--top-k", "3", *files)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped 1 non-image file" in done.stderr and "notes.txt" in done.stderr
    for path, line in zip(files, done.stdout.strip().splitlines()):
        query, found = line.split("\t")
        neighbours = json.loads(found)["neighbours"]
        assert query == path and len(neighbours) == 3
        assert neighbours[0][0] == path and neighbours[0][1] > 0.999
        assert neighbours[0][1] >= neighbours[1][1] >= neighbours[2][1]

    # evaluate: the same held-out classes give the same numbers as the training run
    done = run_recipe("embeddings", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", f"npz:{tmp_path / 'bars.npz'}")
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((out / "evaluate" / "results.json").read_text())["metrics"]
    for method in ("embedding", "raw_pixels"):
        for k in METRICS:
            assert abs(evaluated[method][k] - m[method][k]) < 1e-4, (method, k)


def test_bad_input(tmp_path, run_here):
    done = run_here("embeddings", "--loss", "nope", "--out", str(tmp_path / "a"))
    assert done.returncode == 2 and "invalid choice" in done.stderr
    assert "Traceback" not in done.stderr

    done = run_here("embeddings", "--seen-classes", "9", "--num-examples", "200", "--out",
                      str(tmp_path / "b"))
    assert done.returncode == 2 and "--seen-classes 9: valid values are 2..8" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b" / "results.json").exists()

    # --num-examples sizes generated data only; real data is subset with --train-size
    done = run_here("embeddings", "--num-examples", "500", "--dataset", "npz:any.npz",
                      "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and "use --train-size N" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr

    # predict: a gallery without a single image is a clear error, not an empty answer
    import keras

    model = keras.Sequential([keras.Input((20, 20, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(8), keras.layers.UnitNormalization()])
    model.save(tmp_path / "tiny.keras")
    query = tmp_path / "query.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(query)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "a.txt").write_text("text")
    (gallery / "b.png").write_bytes(b"not really a png")
    for folder, message in ((gallery, "holds no readable images (2 other files)"),
                            (tmp_path / "nowhere", "gallery folder not found")):
        done = run_here("embeddings", "predict", "--model", str(tmp_path / "tiny.keras"),
                          "--gallery", str(folder), str(query))
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
    done = run_here("embeddings", "predict", "--model", str(tmp_path / "tiny.keras"),
                      "--top-k", "0", "--gallery", str(gallery), str(query))
    assert done.returncode == 2 and "--top-k 0: valid values" in done.stderr


def test_generic_backbone_and_shifted_style(tmp_path):
    """The default starts from the generic backbone (whatever weights the file holds: this
    checks the wiring, not the accuracy); every variant is scored; --unseen-style shifted
    draws other images, and evaluate reproduces the run's numbers only with the same flag."""
    out = tmp_path / "out"
    done = run_recipe("embeddings", "--smoke", "--epochs", "1", "--unseen-style", "shifted",
                      "--out", str(out))
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "backbone: generic, pretrained" in done.stdout
    assert "plan: 2 models x 1 epochs x 16 steps" in done.stdout, done.stdout[:2000]
    results = json.loads((out / "results.json").read_text())
    assert results["args"]["weights"] == "generic"
    assert results["args"]["unseen_style"] == "shifted"
    m = results["metrics"]
    for method in METHODS + TRAINED_VARIANTS + GENERIC_VARIANTS:
        assert set(METRICS) <= set(m[method]), method
        assert all(0 <= m[method][k] <= 1 for k in METRICS), (method, m[method])
    assert m["train_images"] == 1000 and m["whiten_fit_images"] == 1000
    assert m["unseen_test_images"] == 200
    assert (out / "metrics.png").stat().st_size > 10_000

    model = str(out / "model.keras")
    same = run_recipe("embeddings", "evaluate", "--model", model, "--dataset", "synthetic:shapes",
                      "--num-examples", "2000", "--unseen-style", "shifted")
    other = run_recipe("embeddings", "evaluate", "--model", model, "--dataset", "synthetic:shapes",
                       "--num-examples", "2000", "--out", str(tmp_path / "plain"))
    assert same.returncode == 0, same.stderr[-3000:]
    assert other.returncode == 0, other.stderr[-3000:]
    evaluated = json.loads((out / "evaluate" / "results.json").read_text())["metrics"]
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())["metrics"]
    for method in ("embedding", "raw_pixels"):
        for k in METRICS:
            assert abs(evaluated[method][k] - m[method][k]) < 1e-4, (method, k)
    assert plain["raw_pixels"] != evaluated["raw_pixels"]


def run_in_process(monkeypatch, capsys, *argv: str):
    """Run the recipe in this process (so that a test can patch common.backbone); returns the
    exit code and what it printed."""
    from common import cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["embeddings", *argv])
    with pytest.raises(SystemExit) as exited:
        cli.run_script(str(ROOT / "recipes" / "embeddings" / "__main__.py"), "embeddings.py")
    return exited.value.code, capsys.readouterr()


def test_generic_backbone_bad_input(tmp_path, monkeypatch, capsys):
    from common import backbone

    write_bars(tmp_path / "bars.npz", n_train=400, n_test=80)
    bars = f"npz:{tmp_path / 'bars.npz'}"
    missing = tmp_path / "missing.weights.h5"
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an HDF5 file")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.integers(0, 255, (400, 12, 12), np.uint8),
             y=np.arange(400) % 6)
    cases = [  # (weights file, flags, what the one-line error must say)
        (missing, ["--dataset", bars], "the generic backbone's weights are missing"),
        (corrupt, ["--dataset", bars], "cannot read the generic backbone's weights"),
        (backbone.WEIGHTS, ["--dataset", f"npz:{tmp_path / 'tiny.npz'}"],
         "needs at least 16x16: resize the images, or pass --weights none"),
        (backbone.WEIGHTS, ["--dataset", bars, "--unseen-style", "shifted"],
         "--unseen-style shifted draws synthetic shapes"),
    ]
    for i, (weights, flags, message) in enumerate(cases):
        monkeypatch.setattr(backbone, "WEIGHTS", weights)
        code, printed = run_in_process(monkeypatch, capsys, "--smoke", "--out",
                                       str(tmp_path / f"out{i}"), *flags)
        errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0], printed.err[-2000:]
        assert "Traceback" not in printed.err
        assert not (tmp_path / f"out{i}" / "results.json").exists()
