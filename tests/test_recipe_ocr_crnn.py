"""ocr_crnn: a smoke run (also the notebook's execution test), the held-out lines it writes
read back by `evaluate` with the same scores, `predict` on lines of any size and channels,
padding that changes nothing, training on a lines: TSV, the generator's determinism and
font split, and the bad-input messages."""

import json

import numpy as np
import pytest
from conftest import smoke
from PIL import Image

from common import data, synthetic


@pytest.fixture(scope="module")
def ocr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ocr") / "run"
    return out, smoke("ocr_crnn", out, notebook=True)


def test_smoke_reports_cer_wer_line_accuracy_per_condition_and_confusions(ocr_run):
    out, results = ocr_run
    m = results["metrics"]
    for condition in ("clean", "degraded", "greedy_clean", "greedy_degraded"):
        assert set(m[condition]) == {"cer", "wer", "line_accuracy", "lines"}, condition
        assert m[condition]["lines"] == 12
        assert m[condition]["cer"] >= 0 and 0 <= m[condition]["line_accuracy"] <= 1
    assert m["beam_width"] == 10 and m["training_lines"] == 2 * 3 * 8 and m["params"] > 100_000
    confused = results["confused_characters"]
    assert set(confused) == {"clean", "degraded"}
    assert all({"true", "read", "count"} == set(row) for row in confused["clean"])
    log = (out / "crnn_log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert {"loss", "val_loss", "val_cer"} <= set(header)
    losses = [float(row.split(",")[header.index("loss")]) for row in log[1:]]
    assert len(losses) == 2 and all(0 < loss < 1e4 for loss in losses), losses  # no NaN
    for png in ("samples.png", "training_curves.png"):
        assert (out / png).stat().st_size > 5000, png
    for condition in ("clean", "degraded"):
        rows = (out / "heldout" / condition / "labels.tsv").read_text().splitlines()
        assert len(rows) == 12 and all((out / "heldout" / condition / r.split("\t")[0]).is_file()
                                       for r in rows)


def test_evaluate_on_the_heldout_files_gives_the_training_runs_scores(ocr_run, run_here):
    out, results = ocr_run
    done = run_here("ocr_crnn", "evaluate", "--model", str(out / "model.keras"), "--dataset",
                    f"lines:{out / 'heldout' / 'degraded' / 'labels.tsv'}", "--out",
                    str(out / "ev"))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads((out / "ev" / "results.json").read_text())
    assert scores["metrics"]["cer"] == pytest.approx(results["metrics"]["degraded"]["cer"])
    assert scores["metrics"]["line_accuracy"] == results["metrics"]["degraded"]["line_accuracy"]
    assert len((out / "ev" / "predictions.tsv").read_text().splitlines()) == 12


def test_predict_any_size_and_channels_and_padding_is_not_read(ocr_run, run_here, tmp_path):
    import keras

    out, _ = ocr_run
    line = np.asarray(Image.open(out / "heldout" / "clean" / "00000.png"))
    Image.fromarray(line).save(tmp_path / "rgb.png")
    Image.fromarray(line).convert("L").resize((line.shape[1] * 3, line.shape[0] * 3)).save(
        tmp_path / "big_gray.jpg")
    done = run_here("ocr_crnn", "predict", "--model", str(out / "model.keras"),
                    str(tmp_path / "rgb.png"), str(tmp_path / "big_gray.jpg"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [row.split("\t") for row in done.stdout.splitlines() if "\t" in row]
    assert [r[0] for r in rows] == [str(tmp_path / "rgb.png"), str(tmp_path / "big_gray.jpg")]
    assert all(set(r[1]) <= set(synthetic.TEXTLINE_CHARSET) for r in rows)
    # the recipe ran in this process, so its layers are registered: load the reader here and
    # check that the logits of a line's own steps ignore any padding after it
    reader = keras.saving.load_model(out / "model.keras")
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, 32, 96, 1)).astype("float32")
    padded = np.concatenate([image, rng.uniform(0, 255, (1, 32, 160, 1))], axis=2)
    alone = reader({"image": image, "width": np.array([96])})
    beside = reader({"image": padded.astype("float32"), "width": np.array([96])})
    np.testing.assert_allclose(np.asarray(alone), np.asarray(beside)[:, :24], atol=1e-4)


def write_lines(folder, n, seed=0, condition="clean"):
    folder.mkdir(parents=True, exist_ok=True)
    _, unseen = synthetic.textline_font_split()
    images, texts = synthetic.make_textline_set(n, seed, unseen, condition, max_chars=12)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "labels.tsv").write_text("".join(f"{i}.png\t{t}\n" for i, t in enumerate(texts)))
    return folder / "labels.tsv"


def test_trains_on_a_lines_tsv(run_here, tmp_path):
    labels = write_lines(tmp_path / "lines", 20)
    done = run_here("ocr_crnn", "--smoke", "--dataset", f"lines:{labels}", "--out",
                    str(tmp_path / "out"), "--beam-width", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    assert m["test"]["lines"] == 2 and m["test"]["cer"] >= 0 and "greedy_test" not in m


@pytest.mark.parametrize("problem, expected", [
    ("charset", "characters outside the model's charset: 'é€'"),
    ("empty", "has an empty text"),
    ("unreadable", "cannot read image"),
    ("too_wide", "longer than the 1600 px this model reads"),
    ("too_narrow", "too narrow for its text"),
])
def test_bad_lines_are_refused_with_the_file_named(ocr_run, run_here, tmp_path, problem,
                                                   expected):
    out, _ = ocr_run
    labels = write_lines(tmp_path / "lines", 3, seed=1)
    rows = labels.read_text().splitlines()
    name = "1.png"
    if problem == "charset":
        rows[1] = f"{name}\tcafé 5€"
    elif problem == "empty":
        rows[1] = f"{name}\t"
    elif problem == "unreadable":
        (tmp_path / "lines" / name).write_bytes(b"")
    elif problem == "too_wide":
        Image.new("L", (2200, 40), 255).save(tmp_path / "lines" / name)
    else:
        Image.new("L", (40, 32), 255).save(tmp_path / "lines" / name)
        rows[1] = f"{name}\tmuch too long a text for this"
    labels.write_text("\n".join(rows) + "\n")
    done = run_here("ocr_crnn", "evaluate", "--model", str(out / "model.keras"), "--dataset",
                    f"lines:{labels}", "--out", str(tmp_path / "ev"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert expected in done.stderr and name in done.stderr, done.stderr


def test_predict_and_evaluate_refuse_what_they_cannot_read(ocr_run, run_here, tmp_path):
    out, _ = ocr_run
    (tmp_path / "broken.png").write_bytes(b"not an image")
    done = run_here("ocr_crnn", "predict", "--model", str(out / "model.keras"),
                    str(tmp_path / "broken.png"))
    assert done.returncode == 2 and "broken.png" in done.stderr
    done = run_here("ocr_crnn", "evaluate", "--model", str(out / "model.keras"), "--dataset",
                    "synthetic:textlines")
    assert done.returncode == 2 and "lines:LABELS.tsv" in done.stderr
    done = run_here("ocr_crnn", "predict", "--model", str(out / "results.json"), "x.png")
    assert done.returncode == 2 and "cannot load model" in done.stderr


def test_the_default_reader_is_the_small_one_and_bad_sizes_are_refused(ocr_run, run_here):
    import keras

    out, results = ocr_run
    reader = keras.saving.load_model(out / "model.keras")
    lstms = [layer for layer in reader.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert len(lstms) == results["args"]["rnn_layers"] == 1
    assert results["metrics"]["params"] == reader.count_params() < 500_000
    for flag in ("--rnn-layers", "--units", "--steps-per-epoch"):
        done = run_here("ocr_crnn", "--smoke", flag, "0", "--out", str(out.parent / "bad"))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"{flag} must be at least 1" in done.stderr, done.stderr


def test_the_stream_is_deterministic_and_the_unseen_fonts_stay_out_of_training():
    train, unseen = synthetic.textline_font_split()
    assert unseen and not {f.split("/")[-1].split("-")[0] for f in train} & set(
        synthetic.UNSEEN_FONT_FAMILIES)
    assert len(synthetic.textline_fonts()) >= 10  # DejaVu, STIX and the pinned packages
    a = synthetic.textline(7, 123, train, "degraded")
    b = next(synthetic.textline_stream(7, train, "degraded", start=123))
    assert a[1] == b[1] and np.array_equal(a[0], b[0])
    texts = [synthetic.random_textline(np.random.default_rng(i)) for i in range(300)]
    assert all(1 <= len(t) <= 32 and t == t.strip() and "  " not in t for t in texts)
    assert set("".join(texts)) >= set(".,'()-:;!?&/\"0123456789")
    clean, _ = synthetic.make_textline_set(20, 1, unseen, "clean")
    degraded, _ = synthetic.make_textline_set(20, 1, unseen, "degraded")
    assert np.median([i.shape[0] for i in clean]) > 1.4 * np.median([i.shape[0] for i in degraded])
    lines = data.load("synthetic:textlines", num_examples=5, image_size=32)
    assert lines.images.shape[:2] == (5, 32) and max(lines.widths) == lines.images.shape[2]
