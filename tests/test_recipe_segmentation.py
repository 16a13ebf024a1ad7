"""segmentation: a smoke run (U-Net, both losses), the mIoU metrics and plots, predict with
background removal, evaluate on a folder and a COCO file, the loaders' bad-input messages,
Dice and IoU against hand-computed values."""

import json

import numpy as np
import pytest
from conftest import run_recipe, smoke
from PIL import Image

from common import UserError, data, export_coco, losses, metrics, synthetic

CLASSES = ["background", *synthetic.SHAPES]


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("segmentation") / "unet"
    return out, smoke("segmentation", out, "--loss", "compare", notebook=True)  # + its notebook


def write_folder(root, scenes, size=None):
    """DIR/images + DIR/masks from scenes, optionally resized (not the training size)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, scene in enumerate(scenes):
        image, mask = Image.fromarray(scene.image), Image.fromarray(scene.semantic)
        if size:
            image, mask = image.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)
        image.save(root / "images" / f"{i:03d}.jpg")
        mask.save(root / "masks" / f"{i:03d}.png")
    return root


def test_unet_smoke_reports_miou_per_class_both_losses_and_plots(unet_run):
    out, results = unet_run
    m = results["metrics"]
    assert m["model"] == "unet" and m["loss"] in ("ce", "ce_dice") and m["num_classes"] == 11
    for key in ("mean_iou", "foreground_mean_iou", "pixel_accuracy", "mean_class_accuracy"):
        assert 0 <= m[key] <= 1, key
    assert list(m["iou"]) == CLASSES
    assert set(m["ce"]) == set(m["ce_dice"]) == {"mean_iou", "foreground_mean_iou",
                                                 "pixel_accuracy"}
    assert m[m["loss"]]["mean_iou"] == m["mean_iou"]  # the saved model is the chosen variant
    # flip test-time augmentation is the default; the single-view scores are kept beside it
    assert m["tta"] == "horizontal flip" and set(m["no_tta"]) == set(m["ce"])
    for name in ("ce", "ce_dice"):
        log = (out / f"{name}_log.csv").read_text().splitlines()
        header = log[0].split(",")
        assert {"loss", "mean_iou", "val_mean_iou"} <= set(header)
        losses_ = [float(r.split(",")[header.index("loss")]) for r in log[1:]]
        assert losses_[-1] < losses_[0], (name, losses_)  # training went downhill
    for png in ("predictions.png", "training_curves.png", "iou_per_class.png",
                "background_removal.png"):
        assert (out / png).stat().st_size > 5000, png
    info = json.loads((out / "segmentation.json").read_text())
    assert info == {"class_names": CLASSES, "ignore_index": 255, "image_size": 64}


def test_predict_writes_class_maps_of_the_inputs_size_and_cut_outs(unet_run, tmp_path):
    out, _ = unet_run
    scene = synthetic.make_scenes(1, image_size=96, seed=3)[0]  # not the training size
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    Image.fromarray(scene.image[:, :50]).save(tmp_path / "tall.jpg")
    done = run_recipe("segmentation", "predict", "--model", str(out / "model.keras"),
                      "--out-dir", str(tmp_path / "masks"), "--remove-background",
                      str(tmp_path / "scene.png"), str(tmp_path / "tall.jpg"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert lines == [[str(tmp_path / "scene.png"), str(tmp_path / "masks" / "scene.png")],
                     [str(tmp_path / "tall.jpg"), str(tmp_path / "masks" / "tall.png")]]
    for name, (w, h) in (("scene", (96, 96)), ("tall", (50, 96))):
        mask = Image.open(tmp_path / "masks" / f"{name}.png")
        assert mask.mode == "L" and mask.size == (w, h)
        assert np.asarray(mask).max() < 11
        rgba = Image.open(tmp_path / "masks" / f"{name}.rgba.png")
        assert rgba.mode == "RGBA" and rgba.size == (w, h)
        alpha = np.asarray(rgba)[..., 3]
        assert set(np.unique(alpha)) <= {0, 255}
        assert ((alpha == 255) == (np.asarray(mask) > 0)).all()  # alpha = predicted foreground
    (tmp_path / "broken.png").write_bytes(b"not an image")
    bad = run_recipe("segmentation", "predict", "--model", str(out / "model.keras"),
                     "--out-dir", str(tmp_path / "m2"), str(tmp_path / "broken.png"))
    assert bad.returncode == 2 and "broken.png" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_on_a_folder_and_a_coco_file_and_refuses_foreign_class_ids(unet_run, tmp_path):
    out, _ = unet_run
    scenes = synthetic.make_scenes(6, image_size=64, seed=11)
    scenes[0].semantic[:] = 0  # an empty mask is valid: all background
    folder = write_folder(tmp_path / "folder", scenes, size=(80, 72))
    done = run_recipe("segmentation", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", f"folder:{folder}", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"]
    assert 0 <= m["mean_iou"] <= 1 and len(m["iou"]) == 11
    loaded = data.load("synthetic:scenes", seed=2, num_examples=5)
    coco = export_coco.export(loaded, tmp_path / "coco", "test")
    done = run_recipe("segmentation", "evaluate", "--model", str(out / "model.keras"),
                      "--dataset", f"coco:{coco}", "--out", str(tmp_path / "ev2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "ev2" / "results.json").read_text())["metrics"]["iou"]
    done = run_recipe("segmentation", "evaluate", "--no-tta", "--model", str(out / "model.keras"),
                      "--dataset", f"folder:{folder}", "--out", str(tmp_path / "ev1"))
    assert done.returncode == 0, done.stderr[-3000:]
    single = json.loads((tmp_path / "ev1" / "results.json").read_text())
    assert single["args"]["no_tta"] is True and 0 <= single["metrics"]["mean_iou"] <= 1
    mask = np.asarray(Image.open(folder / "masks" / "002.png")).copy()
    mask[:3, :3] = 40  # no such class
    Image.fromarray(mask).save(folder / "masks" / "002.png")
    bad = run_recipe("segmentation", "evaluate", "--model", str(out / "model.keras"),
                     "--dataset", f"folder:{folder}", "--out", str(tmp_path / "ev3"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "002.jpg" in bad.stderr and "class id 40" in bad.stderr, bad.stderr
    bad = run_recipe("segmentation", "evaluate", "--model", str(out / "model.keras"),
                     "--dataset", f"folder:{folder}", "--num-classes", "5")
    assert bad.returncode == 2 and "--num-classes 5" in bad.stderr


def test_deeplabv3_trains_on_a_coco_file_with_full_mask_aware_augmentation(tmp_path):
    coco = export_coco.export(data.load("synthetic:scenes", seed=4, num_examples=40),
                              tmp_path / "coco", "all")
    results = smoke("segmentation", tmp_path / "out", "--model", "deeplabv3", "--loss", "ce",
                    "--augment", "full", "--dataset", f"coco:{coco}")
    m = results["metrics"]
    assert m["model"] == "deeplabv3" and m["image_size"] == 64 and list(m["iou"]) == CLASSES
    assert 0 <= m["mean_iou"] <= 1 and set(m) >= {"ce", "foreground_mean_iou"}


def test_folder_loader_names_what_is_wrong_with_masks(tmp_path):
    scenes = synthetic.make_scenes(3, image_size=32, seed=1)
    folder = write_folder(tmp_path / "f", scenes)
    loaded = data.load(f"folder:{folder}")
    assert [m.shape for m in loaded.semantic] == [(32, 32)] * 3
    assert loaded.files[1].endswith("001.jpg")
    Image.fromarray(scenes[1].semantic).convert("P").save(folder / "masks" / "001.png")
    assert (data.load(f"folder:{folder}").semantic[1] == scenes[1].semantic).all()  # palette ids
    Image.fromarray(scenes[1].semantic[:20]).save(folder / "masks" / "001.png")
    with pytest.raises(UserError, match=r"001.png is 32x20 pixels.*001.jpg 32x32"):
        data.load(f"folder:{folder}")
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(folder / "masks" / "001.png")
    with pytest.raises(UserError, match="colour"):
        data.load(f"folder:{folder}")
    (folder / "masks" / "001.png").unlink()
    with pytest.raises(UserError, match=r"no mask for .*001.jpg"):
        data.load(f"folder:{folder}")


def test_tfds_pets_masks_become_pet_background_and_ignored_outline():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=3):  # random pets-shaped records, no download
        train, test = data.load_tfds_segmentation("oxford_iiit_pet")
    assert train.class_names == ["pet"] and len(train.images) == len(test.images) == 3
    for image, mask in zip(train.images, train.semantic):
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 1, 255}


def test_offline_tfds_names_the_offline_alternatives(tmp_path):
    done = run_recipe("segmentation", "--dataset", "tfds:oxford_iiit_pet", "--out",
                      str(tmp_path / "o"))
    assert done.returncode == 2 and "no network" in done.stderr and "folder:DIR" in done.stderr


def test_dice_and_iou_match_hand_computed_values():
    y = np.array([[0, 0, 1, 1]])
    perfect = np.log(np.eye(3)[y] * 0.998 + 0.001)  # logits of an almost certain prediction
    assert float(losses.soft_dice_loss(y, perfect, 3)) < 0.01
    wrong = np.log(np.eye(3)[np.array([[1, 1, 0, 0]])] * 0.998 + 0.001)
    assert float(losses.soft_dice_loss(y, wrong, 3)) > 0.5  # the absent class 2 scores 1
    ignored = np.array([[0, 0, 1, 255]])  # the ignored pixel cannot make it worse
    assert float(losses.soft_dice_loss(ignored, perfect, 3, ignore_index=255)) < 0.01
    both = losses.CrossEntropyDice(3, ignore_index=255)
    assert float(both(ignored, perfect)) < 0.02
    matrix = metrics.confusion(np.array([0, 0, 0, 1, 1, 255]), np.array([0, 0, 1, 1, 0, 2]), 3,
                               ignore_index=255)
    assert matrix.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    scores = metrics.segmentation(matrix, ["bg", "a", "b"])
    assert scores["iou"] == {"bg": 0.5, "a": pytest.approx(1 / 3), "b": None}  # b never occurs
    assert scores["mean_iou"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert scores["foreground_mean_iou"] == pytest.approx(1 / 3)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
