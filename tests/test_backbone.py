"""The shipped generic backbone (common/backbone.py, common/weights/) and its glyph corpus
(common/synthetic.py): loads offline at any size and channel count, bad files and shapes give
clear errors, the corpus is deterministic and keeps the evaluation datasets unseen."""

import unicodedata

import numpy as np
import pytest

from common import UserError, backbone, synthetic


def test_shipped_weights_and_provenance_record_are_in_the_repository():
    assert backbone.WEIGHTS.is_file() and backbone.WEIGHTS.stat().st_size < 10_000_000
    record = backbone.record()
    assert {"command", "commit", "metrics", "data", "versions"} <= set(record)
    assert record["command"].startswith("python -m recipes.pretrain")
    assert record["data"]["train_images"] >= 50_000
    # the pretext task was learned, far above chance (1 / classes)
    assert record["metrics"]["pretext"]["val_accuracy"] > 20 / record["data"]["classes"]
    assert record["file_size_bytes"] == backbone.WEIGHTS.stat().st_size


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (64, 48, 3), (None, None, 1)])
def test_shipped_weights_load_for_any_size_and_channels(shape):
    net = backbone.load_generic(shape)
    images = np.random.default_rng(0).uniform(0, 255, (2, *(s or 40 for s in shape))).astype(
        "float32")
    features = np.asarray(net(images, training=False))
    height, width = images.shape[1:3]
    assert features.shape == (2, -(-height // 8), -(-width // 8), backbone.FEATURES)
    assert np.isfinite(features).all() and features.std() > 0


def test_a_gray_image_gets_the_features_of_its_rgb_copy():
    gray = np.random.default_rng(1).uniform(0, 255, (3, 28, 28, 1)).astype("float32")
    from_gray = np.asarray(backbone.load_generic((28, 28, 1))(gray, training=False))
    from_rgb = np.asarray(backbone.load_generic((28, 28, 3))(np.repeat(gray, 3, -1),
                                                             training=False))
    np.testing.assert_allclose(from_gray, from_rgb, rtol=1e-4, atol=1e-4)


def test_pretrained_weights_differ_from_a_random_initialisation():
    shipped = backbone.load_generic((32, 32, 3)).get_layer("stage1_a_conv").get_weights()[0]
    fresh = backbone.generic_backbone((32, 32, 3)).get_layer("stage1_a_conv").get_weights()[0]
    assert not np.allclose(shipped, fresh)


def test_pyramid_gives_the_stage_outputs_at_their_strides():
    outputs = backbone.pyramid(backbone.load_generic((64, 64, 3)))(
        np.zeros((1, 64, 64, 3), "float32"))
    assert [tuple(o.shape) for o in outputs] == [(1, 32, 32, 48), (1, 16, 16, 96),
                                                  (1, 8, 8, 192)]


def test_missing_or_corrupt_weights_and_unusable_shapes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="weights are missing.*make pretrain"):
        backbone.load_generic((32, 32, 3), tmp_path / "absent.weights.h5")
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an HDF5 file" * 100)
    with pytest.raises(UserError, match="cannot read the generic backbone's weights"):
        backbone.load_generic((32, 32, 3), corrupt)
    with pytest.raises(UserError, match="1 or 3 channels"):
        backbone.load_generic((32, 32, 2))
    with pytest.raises(UserError, match="at least 16x16"):
        backbone.load_generic((8, 8, 3))


def test_glyph_classes_leave_out_digits_and_the_shapes_of_the_shapes_dataset():
    chars = [char for char, _ in synthetic.glyph_classes()]
    assert len(chars) >= 500 and len(set(chars)) == len(chars)
    assert not set("0123456789") & set(chars)
    names = [unicodedata.name(c) for c in chars]
    for word in ("CIRCLE", "SQUARE", "TRIANGLE", "STAR", "HEXAGON", "CRESCENT", "DIGIT"):
        assert not [n for n in names if word in n], word
    assert "A" in chars and "Α" not in chars  # Greek Alpha looks like Latin A: one class


def test_glyph_corpus_is_deterministic_balanced_and_varied():
    classes = synthetic.glyph_classes(20)
    first, labels, names = synthetic.make_glyphs(200, 32, seed=3, classes=classes)
    again, labels_again, _ = synthetic.make_glyphs(200, 32, seed=3, classes=classes)
    assert first.shape == (200, 32, 32, 3) and first.dtype == np.uint8 and len(names) == 20
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert np.bincount(labels).tolist() == [10] * 20
    other, _, _ = synthetic.make_glyphs(200, 32, seed=4, classes=classes)
    assert not np.array_equal(first, other)
    gray = (first[..., 0] == first[..., 1]).all((1, 2)) & (first[..., 1] == first[..., 2]).all(
        (1, 2))
    assert 0.15 < gray.mean() < 0.6  # a third gray, the rest colour
    assert first.std(axis=(1, 2, 3)).min() > 5  # every image shows something
