"""COCO export and import, the scene split, and the pycocotools detection metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ENV, ROOT
from PIL import Image

from common import UserError, data, metrics, synthetic
from common.export_coco import export, to_coco


@pytest.fixture(scope="module")
def scenes():
    return data.load("synthetic:scenes", num_examples=12, image_size=48, seed=5)


def _assert_same_scenes(a: data.Scenes, b: data.Scenes):
    assert a.class_names == b.class_names and len(a.images) == len(b.images)
    for i in range(len(a.images)):
        np.testing.assert_array_equal(a.images[i], b.images[i])
        assert a.boxes[i].dtype == b.boxes[i].dtype == np.float32
        np.testing.assert_array_equal(a.boxes[i], b.boxes[i])
        np.testing.assert_array_equal(a.labels[i], b.labels[i])
        np.testing.assert_array_equal(a.masks[i], b.masks[i])
        np.testing.assert_array_equal(a.visible[i], b.visible[i])


# ---------------------------------------------------------------- visible share


def test_scene_visible_is_the_share_of_the_shape_left_visible():
    scenes = synthetic.make_scenes(30, image_size=48, seed=2)
    visible = np.concatenate([s.visible for s in scenes])
    assert visible.dtype == np.float32 and len(visible) == sum(len(s.labels) for s in scenes)
    # make_scene keeps objects with at least 30% visible; some are occluded, most are not
    assert visible.min() >= 0.3 and visible.max() == 1.0 and (visible < 1).any()
    loaded = data.load("synthetic:scenes", num_examples=30, image_size=48, seed=2)
    for scene, v in zip(scenes, loaded.visible):
        np.testing.assert_array_equal(scene.visible, v)


# ---------------------------------------------------------------- split


def test_split_scenes_is_seeded_disjoint_and_consistent(scenes):
    train, test = data.split_scenes(scenes, 0.25, seed=1)
    assert (len(train.images), len(test.images)) == (9, 3)
    assert train.class_names == test.class_names == scenes.class_names
    assert train.spec == test.spec == scenes.spec

    def index(image):
        return next(i for i, x in enumerate(scenes.images) if x is image)

    train_ids = [index(x) for x in train.images]
    test_ids = [index(x) for x in test.images]
    assert sorted(train_ids + test_ids) == list(range(12))
    for part, ids in ((train, train_ids), (test, test_ids)):
        for name in data.SCENE_FIELDS:
            if getattr(scenes, name) is None:  # a field these scenes lack stays absent
                assert getattr(part, name) is None, name
                continue
            assert [id(v) for v in getattr(part, name)] == [id(getattr(scenes, name)[i])
                                                           for i in ids]
    again = data.split_scenes(scenes, 0.25, seed=1)[1]
    assert [index(x) for x in again.images] == test_ids
    other = data.split_scenes(scenes, 0.25, seed=2)[1]
    assert [index(x) for x in other.images] != test_ids


def test_split_scenes_keeps_one_image_per_part_and_refuses_one_image(scenes):
    two = data.Scenes(scenes.images[:2], scenes.boxes[:2], scenes.labels[:2], scenes.class_names)
    train, test = data.split_scenes(two, 0.01, seed=0)
    assert len(train.images) == len(test.images) == 1 and train.masks is None
    train, test = data.split_scenes(two, 0.99, seed=0)
    assert len(train.images) == len(test.images) == 1
    one = data.Scenes(scenes.images[:1], scenes.boxes[:1], scenes.labels[:1], scenes.class_names,
                      spec="coco:x.json")
    with pytest.raises(UserError, match=r"coco:x.json: cannot split 1 image\(s\)"):
        data.split_scenes(one, 0.2, seed=0)
    with pytest.raises(UserError, match="must be between 0 and 1"):
        data.split_scenes(scenes, 1.0, seed=0)


# ---------------------------------------------------------------- export and load back


def test_export_then_load_gives_the_same_scenes(scenes, tmp_path):
    path = export(scenes, tmp_path, "train")
    assert path == tmp_path / "train.json"
    assert (tmp_path / "images" / "train_00011.png").is_file()
    coco = json.loads(path.read_text())
    assert [i["id"] for i in coco["images"]] == list(range(1, 13))
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    ann = coco["annotations"][0]
    assert ann["id"] == 1 and ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
    assert ann["category_id"] == scenes.labels[0][0] + 1
    x1, y1, x2, y2 = scenes.boxes[0][0]
    assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["area"] == scenes.masks[0][0].sum()
    loaded = data.load(f"coco:{path}")
    _assert_same_scenes(scenes, loaded)


def test_to_coco_without_masks_uses_box_areas(scenes):
    plain = data.Scenes(scenes.images[:2], [np.array([[1.5, 2, 11.25, 6]], np.float32)] * 2,
                        [np.array([3])] * 2, scenes.class_names)
    coco = to_coco(plain, ["a.png", "b.png"])
    ann = coco["annotations"][1]
    assert ann["bbox"] == [1.5, 2.0, 9.75, 4.0] and ann["area"] == 39.0
    assert "segmentation" not in ann and "visible" not in ann
    assert ann["image_id"] == 2 and coco["images"][1]["file_name"] == "b.png"


def test_the_cli_writes_the_recipe_split(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "common.export_coco", str(out), "--num-examples", "10",
         "--image-size", "32", "--seed", "4", "--test-fraction", "0.3"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train.json: 7 images" in done.stdout and "test.json: 3 images" in done.stdout
    assert len(list((out / "images").glob("*.png"))) == 10
    scenes = data.load("synthetic:scenes", num_examples=10, image_size=32, seed=4)
    train, test = data.split_scenes(scenes, 0.3, seed=4)
    _assert_same_scenes(train, data.load(f"coco:{out / 'train.json'}"))
    _assert_same_scenes(test, data.load(f"coco:{out / 'test.json'}"))
    bad = subprocess.run([sys.executable, "-m", "common.export_coco", str(out),
                          "--num-examples", "1"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--num-examples 1" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def gt(scenes):
    return to_coco(scenes)


def _perfect(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in gt["annotations"]]


def test_perfect_detections_score_one(gt):
    before = json.dumps(gt)
    dets = _perfect(gt)
    m = metrics.coco_detection(gt, dets)
    for name in ("map", "map_50", "map_75", "ar_100", "map_small", "recall_50"):
        assert m[name] == pytest.approx(1.0), name
    # 48-pixel images: every object is under 32x32, so COCO's medium and large are empty
    assert m["map_medium"] is None and m["map_large"] is None
    present = {gt["categories"][a["category_id"] - 1]["name"] for a in gt["annotations"]}
    assert all(m["per_class"][n] == pytest.approx(1.0) for n in present)
    assert all(m["per_class"][n] is None for n in set(m["per_class"]) - present)
    assert json.dumps(gt) == before and "id" not in dets[0]  # inputs left as they were


def test_shifted_boxes_score_lower(gt):
    dets = _perfect(gt)
    for d in dets:
        d["bbox"] = [d["bbox"][0] + 2, d["bbox"][1] + 2, d["bbox"][2], d["bbox"][3]]
    m = metrics.coco_detection(gt, dets)
    assert m["map"] < 0.8 and m["map_75"] < m["map_50"]


def test_no_detections_score_zero(gt, capsys):
    m = metrics.coco_detection(gt, [])
    assert all(m[k] == 0.0 for k in ("map", "map_50", "map_75", "ar_100", "recall_50"))
    assert all(v in (0.0, None) for v in m["per_class"].values())
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are hidden


def test_ignored_objects_are_neither_found_nor_missed(gt):
    dets = _perfect(gt)[1:]  # the first object is missed
    first = gt["annotations"][0]["id"]
    assert metrics.coco_detection(gt, dets)["recall_50"] < 1.0
    assert metrics.coco_detection(gt, dets, ignore={first})["recall_50"] == pytest.approx(1.0)
    assert gt["annotations"][0]["iscrowd"] == 0
    # a detection on an ignored object is no false positive either
    m = metrics.coco_detection(gt, _perfect(gt), ignore={first})
    assert m["map"] == pytest.approx(1.0)


# ---------------------------------------------------------------- bad COCO input


def _write(tmp_path, annotations, images=None, categories=None, size=(20, 10)):
    images = images or [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}]
    for image in images:
        if not (tmp_path / image["file_name"]).exists():
            Image.new("RGB", size).save(tmp_path / image["file_name"])
    coco = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return f"coco:{tmp_path / 'ann.json'}"


def _box(ann_id, bbox, **extra):
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": bbox, **extra}


def test_boxes_are_clipped_or_dropped_with_a_count(tmp_path, capsys):
    spec = _write(tmp_path, [
        _box(1, [2, 1, 4, 3]),  # inside: kept as is
        _box(2, [-3, 5, 10, 20]),  # partly outside: clipped
        _box(3, [30, 2, 5, 5]),  # entirely outside: dropped
        _box(4, [5, 5, 0, 3]),  # zero width: dropped
        _box(5, [8, 4, -3, 2]),  # negative width: dropped
        _box(6, [20, 0, 4, 4]),  # touches the right edge only: zero area after clipping
    ])
    ds = data.load(spec)
    assert ds.boxes[0].tolist() == [[2, 1, 6, 4], [0, 5, 7, 10]]
    assert ds.labels[0].tolist() == [0, 0]
    out = capsys.readouterr().out
    assert f"note: {tmp_path / 'ann.json'}: clipped 1 boxes to their image, dropped 4 boxes of " \
           "zero area" in out


def test_clean_boxes_print_no_note(tmp_path, capsys):
    data.load(_write(tmp_path, [_box(1, [0, 0, 20, 10])]))
    assert "note:" not in capsys.readouterr().out


def test_an_image_without_annotations_is_an_empty_example(tmp_path):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    ds = data.load(_write(tmp_path, [_box(1, [2, 1, 4, 3], segmentation=[[2, 1, 6, 1, 6, 4]])],
                          images=images))
    assert ds.boxes[1].shape == (0, 4) and ds.labels[1].shape == (0,)
    assert ds.masks[1].shape == (0, 10, 20) and ds.masks[0].shape == (1, 10, 20)
    assert ds.visible is None


def test_missing_image_files_name_the_file_and_the_folders(tmp_path):
    spec = _write(tmp_path, [], images=[{"id": 1, "file_name": "a.png"}])
    coco = json.loads((tmp_path / "ann.json").read_text())
    coco["images"].append({"id": 2, "file_name": "gone.png"})
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(UserError) as err:
        data.load(spec)
    message = str(err.value)
    assert "1 of 2 listed images are not on disk, first 'gone.png'" in message
    assert str(tmp_path / "images") in message and str(tmp_path.parent / "images") in message


@pytest.mark.parametrize("change, words", [
    ({"categories": [{"id": 1}]}, "category entry {'id': 1} lacks 'id' or 'name'"),
    ({"ann_image_id": 9}, "annotation 1 names image_id 9, not in 'images'"),
    ({"ann_visible": "half"}, "annotation 1 has 'visible' 'half'; expected a number"),
    ({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}]},
     "image id 1 is listed twice (second: 'b.png')"),
])
def test_bad_records_are_named(tmp_path, change, words):
    ann = _box(1, [1, 1, 2, 2])
    for key, value in change.items():
        if key.startswith("ann_"):
            ann[key[4:]] = value
    spec = _write(tmp_path, [ann], images=change.get("images"),
                  categories=change.get("categories"))
    with pytest.raises(UserError) as err:
        data.load(spec)
    assert words in str(err.value) and str(tmp_path / "ann.json") in str(err.value)


def test_visible_comes_back_only_when_every_object_has_it(tmp_path):
    spec = _write(tmp_path, [_box(1, [1, 1, 2, 2], visible=0.5), _box(2, [3, 3, 2, 2])])
    assert data.load(spec).visible is None
    spec = _write(tmp_path, [_box(1, [1, 1, 2, 2], visible=0.5), _box(2, [3, 3, 2, 2], visible=1)])
    assert data.load(spec).visible[0].tolist() == [0.5, 1.0]
