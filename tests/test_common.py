"""Unit tests of the common layer: every dataset spec, each bad-input error, pipelines, results."""

import json
import time

import numpy as np
import pytest
from PIL import Image

from common import UserError, data, metrics, pipeline, plots, results, synthetic

# ---------------------------------------------------------------- synthetic generators


def test_shapes_are_deterministic_balanced_and_varied():
    x, y = synthetic.make_shapes(60, image_size=24, seed=3)
    x2, y2 = synthetic.make_shapes(60, image_size=24, seed=3)
    x3, _ = synthetic.make_shapes(60, image_size=24, seed=4)
    assert x.shape == (60, 24, 24, 3) and x.dtype == np.uint8
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, x3)
    assert np.bincount(y).tolist() == [6] * 10
    assert x.std() > 20  # not blank images


def test_shapes_subset_palette_and_unknown_names():
    x, y = synthetic.make_shapes(20, shapes=("circle", "star"), palette="gray", seed=0)
    assert set(y.tolist()) == {0, 1}
    assert np.abs(x[..., 0].astype(int) - x[..., 1]).mean() < 12  # gray palette: R ~ G
    with pytest.raises(ValueError, match="unknown shapes"):
        synthetic.make_shapes(2, shapes=("blob",))


def test_scenes_boxes_and_masks_agree():
    for scene in synthetic.make_scenes(20, image_size=48, seed=1):
        assert scene.image.shape == (48, 48, 3)
        assert len(scene.boxes) == len(scene.labels) == len(scene.masks) >= 0
        for box, label, mask in zip(scene.boxes, scene.labels, scene.masks):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert np.all(scene.semantic[mask] == label + 1)
        background = ~scene.masks.any(0) if len(scene.masks) else np.ones((48, 48), bool)
        assert np.all(scene.semantic[background] == 0)


def test_textlines_render_their_text():
    images, texts = synthetic.make_textlines(8, seed=0, height=32, width=128)
    assert images.shape == (8, 32, 128) and len(texts) == 8
    assert all(3 <= len(t) <= 10 for t in texts)
    # dark ink on light paper: some pixels well below the paper level in each line
    assert all((img < img.max() - 60).sum() > 20 for img in images)
    assert synthetic.available_fonts()


# ---------------------------------------------------------------- load(spec)


def test_synthetic_specs():
    shapes = data.load("synthetic:shapes", num_examples=50, image_size=20)
    assert isinstance(shapes, data.Classification)
    assert shapes.x_train.shape == (50, 20, 20, 3) and shapes.num_classes == 10
    scenes = data.load("synthetic:scenes", num_examples=5)
    assert isinstance(scenes, data.Scenes) and len(scenes.images) == 5 and scenes.masks
    lines = data.load("synthetic:textlines", num_examples=4)
    assert isinstance(lines, data.TextLines) and len(lines.texts) == 4


@pytest.mark.parametrize("spec", ["bogus:x", "shapes", "synthetic:", "synthetic:cats", ""])
def test_bad_specs_list_valid_ones(spec):
    with pytest.raises(UserError) as err:
        data.load(spec)
    assert "synthetic:" in str(err.value)


def test_require_names_the_mismatch():
    with pytest.raises(UserError, match="needs Classification"):
        data.require(data.load("synthetic:textlines", num_examples=2), data.Classification,
                     "synthetic:textlines")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_keras_layout_and_conversions(tmp_path):
    rng = np.random.default_rng(0)
    spec = _npz(tmp_path / "d.npz", x_train=rng.random((30, 9, 9)), y_train=np.arange(30) % 3,
                x_test=rng.random((6, 9, 9)), y_test=(np.arange(6) % 3).reshape(-1, 1))
    ds = data.load(spec, channels=3, image_size=12)
    assert ds.x_train.shape == (30, 12, 12, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_train.max() > 200  # floats in [0, 1] scaled to [0, 255]
    assert ds.y_test.shape == (6,) and ds.class_names == ["0", "1", "2"]


def test_npz_x_y_layout_is_split_stratified(tmp_path):
    spec = _npz(tmp_path / "d.npz", x=np.zeros((50, 4, 4, 3), np.uint8), y=np.arange(50) % 5)
    ds = data.load(spec, seed=1)
    assert len(ds.x_train) == 40 and len(ds.x_test) == 10
    assert np.bincount(ds.y_test).tolist() == [2] * 5


def test_npz_wrong_keys_names_expected_keys(tmp_path):
    spec = _npz(tmp_path / "d.npz", images=np.zeros((2, 4, 4)), labels=np.zeros(2))
    with pytest.raises(UserError, match="x_train, y_train, x_test, y_test"):
        data.load(spec)


def test_npz_bad_labels(tmp_path):
    spec = _npz(tmp_path / "neg.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(10) - 1)
    with pytest.raises(UserError, match="out of range"):
        data.load(spec)
    spec = _npz(tmp_path / "frac.npz", x=np.zeros((4, 4, 4), np.uint8), y=np.full(4, 0.5))
    with pytest.raises(UserError, match="integer class ids"):
        data.load(spec)
    spec = _npz(tmp_path / "names.npz", x_train=np.zeros((3, 4, 4), np.uint8), y_train=[0, 1, 5],
                x_test=np.zeros((1, 4, 4), np.uint8), y_test=[0], class_names=["a", "b"])
    with pytest.raises(UserError, match="out of range"):
        data.load(spec)


def test_npz_empty_and_missing(tmp_path):
    spec = _npz(tmp_path / "e.npz", x_train=np.zeros((0, 4, 4), np.uint8), y_train=np.zeros(0, int),
                x_test=np.zeros((2, 4, 4), np.uint8), y_test=[0, 0])
    with pytest.raises(UserError, match="empty"):
        data.load(spec)
    with pytest.raises(UserError, match="not found"):
        data.load(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(UserError, match="cannot read"):
        data.load(f"npz:{tmp_path / 'bad.npz'}")


def _write_folder(root, sizes=((10, 10), (10, 10)), modes=("RGB", "L")):
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            size, mode = sizes[i % len(sizes)], modes[i % len(modes)]
            colour = (i * 40, 10, 200) if mode == "RGB" else i * 40
            Image.new(mode, size, colour).save(root / name / f"{i}.png")


def test_folder_of_class_subfolders_with_mixed_sizes_and_channels(tmp_path):
    _write_folder(tmp_path, sizes=((10, 10), (14, 8)))
    ds = data.load(f"folder:{tmp_path}", seed=0)
    assert ds.class_names == ["cat", "dog"]
    assert ds.x_train.shape[1:] == (10, 10, 3)  # resized to the first image, gray -> RGB
    assert len(ds.x_train) + len(ds.x_test) == 10


def test_folder_with_train_and_test_subfolders(tmp_path):
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "test")
    ds = data.load(f"folder:{tmp_path}", image_size=6)
    assert len(ds.x_train) == len(ds.x_test) == 10 and ds.x_test.shape[1:3] == (6, 6)


def test_folder_with_corrupt_image_names_the_file(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="broken.png"):
        data.load(f"folder:{tmp_path}")


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.load(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match="no class subfolders"):
        data.load(f"folder:{tmp_path}")


def test_segmentation_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 2
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    ds = data.load(f"folder:{tmp_path}")
    assert isinstance(ds, data.Scenes) and ds.semantic[0].max() == 2 and len(ds.class_names) == 2


def test_coco_boxes_and_polygon_masks(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "one.png")
    coco = {
        "images": [{"id": 7, "file_name": "one.png", "width": 20, "height": 10}],
        "categories": [{"id": 3, "name": "box"}, {"id": 9, "name": "tri"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "bbox": [2, 1, 6, 4], "area": 24,
             "iscrowd": 0, "segmentation": [[2, 1, 8, 1, 8, 5, 2, 5]]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ds = data.load(f"coco:{tmp_path / 'ann.json'}")
    assert ds.class_names == ["box", "tri"]
    assert ds.boxes[0].tolist() == [[2, 1, 8, 5]] and ds.labels[0].tolist() == [1]
    assert ds.masks[0].shape == (1, 10, 20) and 15 <= ds.masks[0].sum() <= 40
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not COCO JSON"):
        data.load(f"coco:{tmp_path / 'bad.json'}")


def test_lines_tsv(tmp_path):
    Image.new("L", (40, 16), 255).save(tmp_path / "a.png")
    Image.new("L", (60, 20), 255).save(tmp_path / "b.png")
    (tmp_path / "labels.tsv").write_text("a.png\thello\nb.png\tworld 2\n")
    ds = data.load(f"lines:{tmp_path / 'labels.tsv'}")
    assert ds.texts == ["hello", "world 2"] and ds.images.shape == (2, 16, 48)
    (tmp_path / "bad.tsv").write_text("a.png hello\n")
    with pytest.raises(UserError, match="FILE<TAB>TEXT"):
        data.load(f"lines:{tmp_path / 'bad.tsv'}")


def test_tfds_loads_through_the_real_code_with_mocked_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("tfds:mnist")
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.num_classes == 10


def test_tfds_offline_fails_fast_with_alternatives(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "is_online", lambda *a, **k: False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    start = time.time()
    with pytest.raises(UserError) as err:
        data.load("tfds:mnist")
    assert time.time() - start < 30
    assert "no network" in str(err.value) and "synthetic:shapes" in str(err.value)
    with pytest.raises(UserError, match="not a TensorFlow Datasets name"):
        data.load("tfds:no_such_dataset_here")


def test_read_images_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.read_images([tmp_path / "x.png"])
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(UserError, match="t.txt"):
        data.read_images([tmp_path / "t.txt"])
    Image.new("RGBA", (5, 7)).save(tmp_path / "a.png")
    assert data.read_images([tmp_path / "a.png"], size=(4, 4), channels=1).shape == (1, 4, 4, 1)


# ---------------------------------------------------------------- pipeline, metrics, results


def test_pipelines_batch_one_hot_and_augment():
    import keras

    x, y = np.full((10, 4, 4, 1), 100, np.uint8), np.arange(10) % 2
    images, labels = next(iter(pipeline.for_training(x, y, 4, num_classes=2)))
    assert images.shape == (4, 4, 4, 1) and images.dtype.name == "float32"
    assert labels.shape == (4, 2)
    flipped = pipeline.for_training(x, y, 10, augment=keras.layers.RandomBrightness(
        (0.5, 0.5), value_range=(0, 255)))
    assert float(next(iter(flipped))[0].numpy().mean()) > 150
    batches = list(pipeline.for_eval(x, y, batch_size=3))
    assert [len(b[0]) for b in batches] == [3, 3, 3, 1]


def test_classification_metrics():
    scores = metrics.classification(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), 2)
    assert scores["test_accuracy"] == 0.75 and scores["balanced_accuracy"] == 0.75
    assert metrics.per_class_recall(np.array([0, 1]), np.array([0, 0]), 2).tolist() == [1, 0]


def test_results_json_and_summary(tmp_path):
    path = results.write(tmp_path, "demo", "synthetic:shapes", {"test_accuracy": 0.5,
                         "relu": {"test_accuracy": 0.6}}, 1.26, {"epochs": 2, "fn": print})
    record = json.loads(path.read_text())
    assert record["metrics"]["relu"]["test_accuracy"] == 0.6 and record["seconds"] == 1.3
    assert record["args"] == {"epochs": 2} and "tensorflow" in record["versions"]
    assert record["commit"]
    table = results.summary(record["metrics"])
    assert "relu.test_accuracy" in table and "0.6000" in table


def test_plots_write_pngs(tmp_path):
    plots.training_curves({"a": {"loss": [1, 0.5], "val_loss": [1.1, 0.7]}}, tmp_path / "c.png",
                          metrics=("loss",))
    plots.confusion_matrix([0, 1, 1], [0, 1, 0], ["x", "y"], tmp_path / "m.png")
    plots.image_grid(np.zeros((3, 5, 5, 1), np.uint8), ["a", "b", "c"], tmp_path / "g.png")
    for name in ("c.png", "m.png", "g.png"):
        assert Image.open(tmp_path / name).size[0] > 100


def test_interrupted_training_resumes_from_the_last_epoch(tmp_path):
    import keras

    from common import callbacks

    class StopAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # what Ctrl-C does in the middle of a run

    def make():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy")
        return model

    x, y = np.random.default_rng(0).random((32, 3)), np.arange(32) % 2
    with pytest.raises(KeyboardInterrupt):
        make().fit(x, y, epochs=5, verbose=0,
                   callbacks=callbacks.standard(tmp_path, "demo") + [StopAfterEpoch()])
    history = make().fit(x, y, epochs=5, verbose=0, callbacks=callbacks.standard(tmp_path, "demo"))
    assert len(history.history["loss"]) == 3  # epochs 3..5 only: 1 and 2 were restored
    assert len((tmp_path / "demo_log.csv").read_text().strip().splitlines()) == 1 + 5


def test_custom_loop_backup_resumes_weights_optimizer_and_state(tmp_path):
    import keras
    import tensorflow as tf

    from common import callbacks

    x = tf.constant(np.random.default_rng(0).random((16, 3)), tf.float32)
    y = tf.constant(np.random.default_rng(1).random((16, 2)), tf.float32)

    def make():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        return model, keras.optimizers.SGD(0.1, momentum=0.9)

    def train(model, optimizer, epochs, stop_after=None):
        backup = callbacks.LoopBackup(tmp_path, "loop", model, optimizer)
        state = backup.restore() or {"epoch": 0, "losses": []}
        for epoch in range(state["epoch"], epochs):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x) - y) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            state["losses"].append(float(loss))
            state["epoch"] = epoch + 1
            backup.save(state)
            if epoch + 1 == stop_after:
                raise KeyboardInterrupt
        backup.finish()
        return state

    straight = train(*make(), epochs=5)  # the reference: no interruption
    with pytest.raises(KeyboardInterrupt):
        train(*make(), epochs=5, stop_after=2)
    assert (tmp_path / "backup" / "loop" / "state.json").exists()
    model, optimizer = make()
    resumed = train(model, optimizer, epochs=5)
    # momentum slots and weights came back: the resumed losses equal the uninterrupted ones
    np.testing.assert_allclose(resumed["losses"], straight["losses"], rtol=1e-6)
    assert not (tmp_path / "backup" / "loop").exists()  # removed once training finished
