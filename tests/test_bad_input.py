"""Bad datasets and images: each class of bad input gives one UserError with the problem and fix.

The fixtures are tiny files written here: damaged npz files, 16-bit PNGs, COCO JSON with
mistakes, an image over Pillow's decompression-bomb limit, and so on.
"""

import json
import zipfile

import numpy as np
import PIL.Image
import pytest
from conftest import run_recipe
from PIL import Image

from common import UserError, data


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def _xy(path, y, size=4):
    """An x, y npz with one tiny gray image per label."""
    y = np.asarray(y)
    return _npz(path, x=np.zeros((len(y), size, size), np.uint8), y=y)


def _load_error(spec, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        data.load(spec, **kwargs)
    return str(err.value)


# ---------------------------------------------------------------- labels


def test_a_huge_label_is_refused_before_building_class_names(tmp_path):
    # a billion class names would exhaust memory: the rule refuses the labels first
    message = _load_error(_xy(tmp_path / "d.npz", [0, 1, 10**9] * 4))
    assert "labels must be class ids 0..K-1" in message
    assert "found 3 distinct values up to 1000000000" in message
    assert "relabel them to 0..2" in message


def test_a_stray_label_in_a_four_class_set_is_refused(tmp_path):
    spec = _npz(tmp_path / "d.npz", x_train=np.zeros((8, 4, 4), np.uint8),
                y_train=[0, 1, 2, 100000] * 2, x_test=np.zeros((4, 4, 4), np.uint8),
                y_test=[0, 1, 2, 2])
    message = _load_error(spec)
    assert "found 4 distinct values up to 100000" in message
    assert "more than half of the ids 0..100000" in message and "relabel them to 0..3" in message


def test_a_few_unused_class_ids_are_still_accepted(tmp_path):
    # 1-based labels 1..4 leave only id 0 unused: loaded as 5 classes, class "0" empty
    ds = data.load(_xy(tmp_path / "d.npz", [1, 2, 3, 4] * 5))
    assert ds.class_names == ["0", "1", "2", "3", "4"]


def test_negative_labels_are_refused(tmp_path):
    message = _load_error(_xy(tmp_path / "d.npz", [-3, 0, 1, 2] * 5))
    assert "negative class ids (smallest -3)" in message and "relabel them to 0..3" in message


def test_a_one_class_dataset_is_refused(tmp_path):
    message = _load_error(_xy(tmp_path / "d.npz", [0] * 10))
    assert "only one class ('0', 8 images)" in message
    assert "needs at least 2 classes" in message


def test_an_empty_class_folder_is_refused_by_name(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("L", (6, 6), i * 40).save(tmp_path / name / f"{i}.png")
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / "notes.txt").write_text("not an image")
    message = _load_error(f"folder:{tmp_path}")
    assert f"class folder {tmp_path / 'bird'} holds no images" in message
    assert "remove the folder" in message


# ---------------------------------------------------------------- silent corruption


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 16 * 64).reshape(16, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g.png")  # mode I;16
    image = data.read_image(tmp_path / "g.png")
    assert image.shape == (16, 64, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], np.round(gradient / 257).astype(np.uint8))
    assert (image == 255).mean() < 0.01  # clipping made 99.6% of it white


@pytest.mark.parametrize("values, mode, expected", [
    (np.linspace(0, 65535, 64).astype(np.int32), "I", "divided by 257"),
    (np.linspace(0, 200, 64).astype(np.int32), "I", "kept"),
    (np.linspace(0, 1, 64).astype(np.float32), "F", "times 255"),
])
def test_32_bit_integer_and_float_tiffs_follow_the_documented_rules(tmp_path, values, mode,
                                                                    expected):
    Image.fromarray(values.reshape(8, 8)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == mode
    image = data.read_image(tmp_path / "i.tif")[..., 0].ravel()
    scale = {"divided by 257": 1 / 257, "kept": 1, "times 255": 255}[expected]
    np.testing.assert_allclose(image, values * scale, atol=1)


def test_uint16_npz_images_are_scaled_not_clipped(tmp_path):
    x = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (20, 16, 1))
    ds = data.load(_npz(tmp_path / "d.npz", x=x, y=np.arange(20) % 2))
    assert ds.x_train.max() == 255 and (ds.x_train == 255).mean() < 0.1


def test_nan_and_inf_pixels_are_refused_with_a_count(tmp_path):
    x = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    x[3, :2, :3] = np.nan  # 6
    x[7, 0, :2] = np.inf  # 2
    message = _load_error(_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(20) % 2,
                               x_test=x[:4], y_test=[0, 1, 0, 1]))
    assert "x_train holds 8 NaN/inf pixel values; clean or drop those images" in message
    assert "d.npz" in message


def test_pixels_outside_every_documented_range_are_refused(tmp_path):
    standardized = np.random.default_rng(0).normal(size=(20, 4, 4))  # mean 0, std 1
    message = _load_error(_npz(tmp_path / "d.npz", x=standardized, y=np.arange(20) % 2))
    assert ": x values span -" in message and "rescale them first" in message
    text = _load_error(_npz(tmp_path / "t.npz", x=np.full((20, 4, 4), "a"), y=np.arange(20) % 2))
    assert "has dtype <U1, not numbers" in text


# ---------------------------------------------------------------- damaged npz files


def _valid_npz(path):
    np.savez(path, x=np.arange(10 * 16, dtype=np.uint8).reshape(10, 4, 4), y=np.arange(10) % 2)
    return path.read_bytes()


def _truncated(path):
    path.write_bytes(_valid_npz(path)[:-40])


def _bad_crc(path):
    raw = bytearray(_valid_npz(path))
    info = zipfile.ZipFile(path).getinfo("x.npy")  # np.savez stores without compression
    data_start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[data_start + info.compress_size - 5] ^= 0xFF  # a pixel byte, not the .npy header
    path.write_bytes(bytes(raw))


def _bad_deflate(path):
    np.savez_compressed(path, x=np.random.default_rng(0).integers(0, 3, (200, 30, 30), np.uint8),
                        y=np.arange(200) % 2)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(1000))


@pytest.mark.parametrize("damage, words", [
    (_truncated, "not a valid .npz (zip) file, damaged or truncated (File is not a zip file)"),
    (_bad_crc, "damaged or truncated (Bad CRC-32 for file 'x.npy')"),
    (_bad_deflate, "damaged or truncated"),
    (_random_bytes, "not a valid .npz (zip) file; save it with np.savez(path, x_train=..."),
])
def test_damaged_npz_files_give_one_clear_line(tmp_path, damage, words):
    damage(tmp_path / "d.npz")
    message = _load_error(f"npz:{tmp_path / 'd.npz'}")
    assert message.startswith(f"cannot read {tmp_path / 'd.npz'}: ") and words in message
    assert "allow_pickle" not in message and "pickled" not in message


def test_a_plain_npy_saved_as_npz_is_named(tmp_path):
    with open(tmp_path / "d.npz", "wb") as f:
        np.save(f, np.zeros((3, 4, 4)))
    message = _load_error(f"npz:{tmp_path / 'd.npz'}")
    assert "single .npy array saved under an .npz name" in message and "np.savez(" in message


def test_object_arrays_are_named_as_pickled_without_unsafe_advice(tmp_path):
    ragged = np.array([np.zeros((4, 4)), np.zeros((5, 5))], dtype=object)
    spec = _npz(tmp_path / "d.npz", x=ragged, y=[0, 1])
    message = _load_error(spec)
    assert "holds Python objects (pickled); save plain numeric arrays: np.savez(" in message
    assert "allow_pickle" not in message


def test_image_and_label_counts_must_match(tmp_path):
    spec = _npz(tmp_path / "d.npz", x_train=np.zeros((3, 4, 4), np.uint8), y_train=[0, 1],
                x_test=np.zeros((2, 4, 4), np.uint8), y_test=[0, 1])
    assert "x_train has 3 images but y_train has 2 labels" in _load_error(spec)
    spec = _npz(tmp_path / "xy.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(9) % 2)
    assert "x has 10 images but y has 9 labels" in _load_error(spec)


# ---------------------------------------------------------------- too small to split


def test_too_few_images_to_split_gives_the_counts(tmp_path):
    message = _load_error(_xy(tmp_path / "one.npz", [0]))
    assert "cannot split 1 images into train and test" in message
    assert "1 test and 0 train images" in message
    spec = _xy(tmp_path / "d.npz", np.arange(10) % 2)
    assert "leaves 0 test and 10 train images" in _load_error(spec, test_fraction=0.0)
    assert "leaves 10 test and 0 train images" in _load_error(spec, test_fraction=1.0)


def test_a_folder_too_small_to_split_is_refused(tmp_path):
    # one image per class: the split puts one in train and one in test, so train has 1 class
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("L", (6, 6)).save(tmp_path / name / "0.png")
    message = _load_error(f"folder:{tmp_path}")
    assert "the train split holds only one class" in message and "1 images" in message


# ---------------------------------------------------------------- COCO JSON


def _coco(**changes):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "categories": [{"id": 5, "name": "box"}],
        "annotations": [{"id": 11, "image_id": 1, "category_id": 5, "bbox": [1, 1, 3, 2],
                         "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]}],
    }
    for key, value in changes.items():
        if key.startswith("ann_"):
            coco["annotations"][0][key[4:]] = value
        elif key.startswith("image_"):
            coco["images"][0][key[6:]] = value
        elif value is None:
            del coco[key]
        else:
            coco[key] = value
    return coco


@pytest.mark.parametrize("coco, words", [
    ([_coco()], "the top level is a list, expected an object"),
    (_coco(annotations=None), "it has no 'annotations' list"),
    (_coco(images=None, categories=None), "it has no 'images' / 'categories' list"),
    (_coco(ann_bbox=None), "annotation 11 has no 'bbox' [x, y, width, height] (got None)"),
    (_coco(ann_category_id=7), "annotation 11 names category_id 7, which is not in 'categories'"),
    (_coco(ann_image_id=2), "annotation 11 names image_id 2, not in 'images'"),
    (_coco(ann_segmentation=[[1, 2]]), "annotation 11 has an unreadable 'segmentation'"),
    (_coco(image_width=80), "image a.png is 8x6 pixels but the JSON says 80x6"),
])
def test_bad_coco_json_names_the_file_and_the_problem(tmp_path, coco, words):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    message = _load_error(f"coco:{tmp_path / 'ann.json'}")
    assert str(tmp_path / "ann.json") in message and words in message


def test_coco_without_iscrowd_or_sizes_still_loads(tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    coco = _coco()
    del coco["images"][0]["width"], coco["images"][0]["height"]
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ds = data.load(f"coco:{tmp_path / 'ann.json'}")
    assert ds.boxes[0].tolist() == [[1, 1, 4, 3]] and ds.masks[0].shape == (1, 6, 8)


# ---------------------------------------------------------------- other files


def test_lines_pointing_at_a_binary_file(tmp_path):
    Image.new("L", (20, 8)).save(tmp_path / "a.png")
    message = _load_error(f"lines:{tmp_path / 'a.png'}")
    assert f"{tmp_path / 'a.png'} is not a UTF-8 text file" in message
    assert "FILE<TAB>TEXT" in message


@pytest.mark.parametrize("side", [20, 12])  # 400 px: Pillow raises; 144 px: it only warns
def test_an_image_over_the_decompression_bomb_limit(tmp_path, monkeypatch, side):
    Image.new("RGB", (side, side)).save(tmp_path / "big.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UserError) as err:
        data.read_image(tmp_path / "big.png")
    message = str(err.value)
    assert f"big.png is {side}x{side} = {side * side:,} pixels" in message
    assert "decompression-bomb limit of 100" in message and "resize it" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message
    assert PIL.Image.MAX_IMAGE_PIXELS == 100  # naming the size left the limit as it was


def test_a_directory_passed_as_an_image(tmp_path):
    with pytest.raises(UserError, match="is a directory: pass image files"):
        data.read_image(tmp_path)


# ---------------------------------------------------------------- through a recipe


def _recipe_refuses(tmp_path, spec, words):
    """The recipe exits 2 with one `error:` line, and leaves an earlier results.json alone."""
    out = tmp_path / "out"
    out.mkdir()
    earlier = '{"recipe": "feature_extraction", "metrics": {"test_accuracy": 0.9}}\n'
    (out / "results.json").write_text(earlier)
    done = run_recipe("feature_extraction", "--dataset", spec, "--out", str(out))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], done.stderr[-3000:]
    assert (out / "results.json").read_text() == earlier


def test_recipe_refuses_a_truncated_npz(tmp_path):
    _truncated(tmp_path / "d.npz")
    _recipe_refuses(tmp_path, f"npz:{tmp_path / 'd.npz'}", "not a valid .npz (zip) file")


def test_recipe_refuses_labels_that_are_not_class_ids(tmp_path):
    spec = _xy(tmp_path / "d.npz", [0, 1, 2, 100000] * 5)
    _recipe_refuses(tmp_path, spec, "found 4 distinct values up to 100000")


def test_num_examples_of_a_sorted_file_keeps_every_class(tmp_path):
    # a file sorted by class: the first N images would all be class 0
    path = tmp_path / "sorted.npz"
    x = np.zeros((300, 4, 4), np.uint8)
    np.savez(path, x_train=x, y_train=np.repeat(np.arange(3), 100), x_test=x[:30],
             y_test=np.repeat(np.arange(3), 10))
    ds = data.load(f"npz:{path}", num_examples=60)
    assert np.bincount(ds.y_train).tolist() == [20, 20, 20]
