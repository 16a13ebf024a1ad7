"""detection: smoke runs of both detectors (synthetic scenes; a COCO file with --val-dataset),
COCO metric keys, the occlusion table, predict / evaluate on a saved model, bad input.

Each smoke run traces a keras-cv / keras-hub training step once (about a minute on 2 cores):
the runs are module fixtures, shared by the tests below."""

import json

import pytest
from conftest import run_recipe, smoke
from PIL import Image

from common import data, export_coco, synthetic

COCO_KEYS = {"map", "map_50", "map_75", "ar_100", "map_small", "map_medium", "map_large",
             "per_class"}


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("detection") / "yolo"
    # run as the notebook: this run is also the notebook's execution test
    return out, smoke("detection", out, "--occlusion", "compare", notebook=True)


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco")
    scenes = data.load("synthetic:scenes", seed=5, num_examples=40)
    train, test = data.split_scenes(scenes, 0.25, seed=5)
    return export_coco.export(train, folder, "train"), export_coco.export(test, folder, "test")


def test_yolo_smoke_reports_coco_metrics_occlusion_buckets_and_plots(yolo_run):
    out, results = yolo_run
    m = results["metrics"]
    assert COCO_KEYS <= set(m) and m["model"] == "yolov8"
    assert set(m["per_class"]) == set(synthetic.SHAPES)
    assert all(0 <= m[k] <= 1 for k in ("map", "map_50", "map_75", "ar_100", "map_small"))
    assert m["map_medium"] is None and m["map_large"] is None  # 64-px scenes: all objects small
    buckets = m["occlusion"]
    assert set(buckets) <= {"0", "<25", "25-50", ">50"} and "0" in buckets
    assert all(0 <= b["recall"] <= 1 and b["objects"] > 0 for b in buckets.values())
    assert set(m["occlusion_study"]) == {"none", "erase"}  # --occlusion compare trains both
    assert m["occlusion_augmentation"] in ("none", "erase")
    log = (out / "none_log.csv").read_text().splitlines()
    losses = [float(r.split(",")[log[0].split(",").index("loss")]) for r in log[1:]]
    assert losses[-1] < losses[0], losses  # training went downhill
    for png in ("predictions.png", "anchors.png", "occlusion.png", "training_curves.png"):
        assert (out / png).stat().st_size > 5000, png
    assert json.loads((out / "class_names.json").read_text()) == list(synthetic.SHAPES)


def test_predict_prints_boxes_in_the_images_own_pixels(yolo_run, tmp_path):
    out, _ = yolo_run
    scene = synthetic.make_scenes(1, image_size=96, seed=3)[0]  # not the training size
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    Image.fromarray(scene.image[:, :50]).save(tmp_path / "tall.png")
    done = run_recipe("detection", "predict", "--model", str(out / "model.keras"),
                      "--score-threshold", "0", "--draw", str(tmp_path / "drawn"),
                      str(tmp_path / "scene.png"), str(tmp_path / "tall.png"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / "scene.png"),
                                                       str(tmp_path / "tall.png")]
    for line, (w, h) in zip(lines, [(96, 96), (50, 96)]):
        objects = json.loads(line.split("\t")[1])
        assert objects, line  # threshold 0: the model's top boxes come back
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, o
            assert o["class"] in synthetic.SHAPES and 0 <= o["score"] <= 1
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["scene_boxes.png",
                                                                      "tall_boxes.png"]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    bad = run_recipe("detection", "predict", "--model", str(out / "model.keras"),
                     str(tmp_path / "broken.png"))
    assert bad.returncode == 2 and "broken.png" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_scores_a_saved_model_on_a_coco_file(yolo_run, coco_files, tmp_path):
    out, _ = yolo_run
    _, test_json = coco_files
    done = run_recipe("detection", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", f"coco:{test_json}", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert COCO_KEYS <= set(m) and "occlusion" in m  # the export keeps the visible fractions


def test_retinanet_trains_on_a_coco_file_with_a_separate_test_file(coco_files, tmp_path):
    train_json, test_json = coco_files
    results = smoke("detection", tmp_path / "retina", "--model", "retinanet",
                    "--dataset", f"coco:{train_json}", "--val-dataset", f"coco:{test_json}",
                    "--occlusion", "none")
    m = results["metrics"]
    assert COCO_KEYS <= set(m) and m["model"] == "retinanet" and "occlusion_study" not in m
    n_test = len(json.loads(test_json.read_text())["images"])
    assert n_test == 10 and (tmp_path / "retina" / "anchors.png").stat().st_size > 5000


@pytest.mark.parametrize("broken, message", [
    ("{not json", "is not COCO JSON"),
    ('{"images": [], "annotations": []}', "'categories'"),
])
def test_bad_coco_files_exit_2_with_the_problem(tmp_path, broken, message, run_here):
    path = tmp_path / "ann.json"
    path.write_text(broken)
    done = run_here("detection", "--dataset", f"coco:{path}", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_offline_voc_names_the_alternatives(tmp_path, run_here):
    done = run_here("detection", "--dataset", "tfds:voc/2007", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "offline" in done.stderr and "coco:" in done.stderr



def test_tfds_detection_datasets_load_through_the_real_code_with_mocked_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):  # random VOC-shaped records, no download
        train, test = data.load_tfds_scenes("voc/2007")
    assert len(train.images) == len(test.images) == 6 and len(train.class_names) == 20
    for image, boxes, labels in zip(train.images, train.boxes, train.labels):
        h, w = image.shape[:2]
        assert image.shape[2] == 3 and len(boxes) == len(labels)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all()
        assert (boxes[:, [1, 3]] <= h).all()
        assert ((0 <= labels) & (labels < 20)).all()
