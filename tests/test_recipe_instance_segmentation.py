"""instance_segmentation: one smoke run (synthetic scenes) shared by every test: mask and box
AP keys, plots, predict (RLE masks in the input's own pixels), evaluate on a COCO file, bad
COCO input. The smoke run traces the YOLOv8 training step once (about a minute on 2 cores)."""

import json

import numpy as np
import pytest
from conftest import run_recipe, smoke
from PIL import Image
from pycocotools import mask as mask_utils

from common import data, export_coco, synthetic

AP_KEYS = {f"{kind}_{key}" for kind in ("mask", "box")
           for key in ("map", "map_50", "map_75", "ar_100", "map_small")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("instance_segmentation") / "run"
    return out, smoke("instance_segmentation", out, notebook=True)  # + its notebook


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """12 synthetic scenes as COCO JSON (RLE masks) + PNG images."""
    scenes = data.load("synthetic:scenes", seed=5, num_examples=12)
    return export_coco.export(scenes, tmp_path_factory.mktemp("coco"), "test")


def test_smoke_reports_mask_and_box_ap_and_plots(trained):
    out, results = trained
    m = results["metrics"]
    assert AP_KEYS <= set(m)
    assert all(0 <= m[k] <= 1 for k in AP_KEYS), {k: m[k] for k in AP_KEYS}
    assert m["mask_map_medium"] is None  # 64-px scenes: every object is small for COCO
    assert set(m["per_class_mask_ap"]) == set(synthetic.SHAPES)
    assert m["detector_steps"] == 2 * 4 and m["mask_head_params"] > 0  # 57 images, batch 16
    log = (out / "mask_head_log.csv").read_text().splitlines()
    losses = [float(r.split(",")[log[0].split(",").index("loss")]) for r in log[1:]]
    assert len(losses) == 2 and losses[-1] < losses[0] < 0.8, losses  # BCE from ln 2 downhill
    for png in ("overlays.png", "training_curves.png", "roi_align.png"):
        assert (out / png).stat().st_size > 5000, png
    assert (out / "mask_head.keras").is_file() and (out / "model.keras").is_file()
    assert json.loads((out / "class_names.json").read_text()) == list(synthetic.SHAPES)


def test_predict_prints_rle_masks_in_the_images_own_pixels(trained, tmp_path):
    out, _ = trained
    scene = synthetic.make_scenes(1, image_size=96, seed=3)[0]  # not the training size
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    Image.fromarray(scene.image[:, :50]).save(tmp_path / "tall.png")
    done = run_recipe("instance_segmentation", "predict", "--model", str(out / "model.keras"),
                      "--score-threshold", "0", "--draw", str(tmp_path / "drawn"),
                      str(tmp_path / "scene.png"), str(tmp_path / "tall.png"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / "scene.png"),
                                                       str(tmp_path / "tall.png")]
    found = 0
    for line, (w, h) in zip(lines, [(96, 96), (50, 96)]):
        for o in json.loads(line.split("\t")[1]):
            found += 1
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, o
            assert o["class"] in synthetic.SHAPES and 0 <= o["score"] <= 1
            mask = mask_utils.decode({"size": o["rle"]["size"],
                                      "counts": o["rle"]["counts"].encode()})
            assert mask.shape == (h, w)
            ys, xs = np.nonzero(mask)  # a mask lives inside its box
            assert not len(xs) or (xs.min() >= int(x1) - 1 and xs.max() < x2 + 1), o["box"]
    assert found, done.stdout  # threshold 0: every box the decoder keeps comes back
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["scene_masks.png",
                                                                      "tall_masks.png"]


def test_evaluate_scores_a_saved_model_on_a_coco_file(trained, coco_file, tmp_path):
    out, _ = trained
    done = run_recipe("instance_segmentation", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", f"coco:{coco_file}", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert AP_KEYS <= set(m) and "mask_map" in done.stdout


def _spoil_first_annotation(coco, how):
    ann = coco["annotations"][0]
    if how == "rle size":
        ann["segmentation"]["size"] = [32, 32]
    elif how == "polygon outside":
        ann["segmentation"] = [[200.0, 200.0, 260.0, 200.0, 260.0, 260.0]]
    elif how == "no masks":
        del ann["segmentation"]
    return coco


@pytest.mark.parametrize("how, message", [
    ("rle size", "annotation 1 has an RLE mask of size"),
    ("polygon outside", "empty mask"),
    ("no masks", "no instance masks"),
    ("missing image", "not on disk"),
])
def test_bad_coco_input_exits_2_naming_the_problem(coco_file, tmp_path, how, message):
    coco = json.loads(coco_file.read_text())
    if how == "missing image":
        coco["images"][0]["file_name"] = "nowhere.png"
    else:
        coco = _spoil_first_annotation(coco, how)
    path = coco_file.parent / f"{how.replace(' ', '_')}.json"
    path.write_text(json.dumps(coco))
    done = run_recipe("instance_segmentation", "--dataset", f"coco:{path}",
                      "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert str(path) in done.stderr and "Traceback" not in done.stderr
