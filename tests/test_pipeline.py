"""Parallel augmentation in common.pipeline: reproducible for a seed, new per epoch and seed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import pipeline

X = np.random.default_rng(0).integers(0, 255, (256, 16, 16, 3)).astype(np.uint8)
Y = np.arange(256) % 4


def random_layer():
    return keras.layers.RandomRotation(0.2, seed=1)


def random_sequential():  # as in the transfer_learning and embeddings recipes
    return keras.Sequential([keras.layers.RandomTranslation(0.1, 0.1, seed=1),
                             keras.layers.RandomZoom(0.1, seed=1),
                             keras.layers.RandomErasing(seed=2)])


def random_function():
    """A function of (images, labels): a Keras layer that mixes labels, and a hand-written
    random draw through a SeedGenerator (a brightness factor per image)."""
    mixup, generator = keras.layers.MixUp(seed=3), keras.random.SeedGenerator(4)

    def augment(images, labels):
        mixed = mixup({"images": images, "labels": labels}, training=True)
        factor = keras.random.uniform([tf.shape(images)[0], 1, 1, 1], 0.5, 1.5, seed=generator)
        return mixed["images"] * factor, mixed["labels"]
    return augment


AUGMENTS = {"layer": random_layer, "sequential": random_sequential, "function": random_function}


def epoch(ds):
    images, labels = zip(*[(i.numpy(), t.numpy()) for i, t in ds])
    return np.concatenate(images), np.concatenate(labels)


def one_thread(ds):
    """The same dataset with all of its tf.data work in a single thread."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


@pytest.mark.parametrize("kind", AUGMENTS)
def test_parallel_augmentation_is_reproducible(kind):
    def batches(seed):
        return pipeline.for_training(X, Y, 32, augment=AUGMENTS[kind](), seed=seed,
                                     num_classes=4)

    first = batches(seed=5)
    first_epoch, second_epoch = epoch(first), epoch(first)
    rerun = epoch(batches(seed=5))  # fresh layers and pipeline, same seed
    for a, b in zip(first_epoch, rerun):
        np.testing.assert_array_equal(a, b)
    # the augmentation did something, and it changes with the epoch and with the seed
    assert not np.array_equal(np.sort(first_epoch[0].ravel()), np.sort(X.astype("f4").ravel()))
    assert not np.array_equal(first_epoch[0], second_epoch[0])
    assert not np.array_equal(first_epoch[0], epoch(batches(seed=6))[0])
    # a single thread computes exactly the same batches: parallelism changes nothing
    np.testing.assert_array_equal(first_epoch[0], epoch(one_thread(batches(seed=5)))[0])


def test_augmentation_map_runs_in_parallel():
    ds = pipeline.for_training(X, Y, 32, augment=random_layer())
    graph = ds._as_serialized_graph().numpy()  # the dataset's ops, as tf.data runs them
    assert b"ParallelMapDataset" in graph
    assert b'op: "MapDataset"' not in graph  # no map left in one thread


def test_augmented_works_on_any_stream_of_batches():
    """`augmented` takes any dataset of (images, labels) batches, e.g. a resampled stream."""
    stream = tf.data.Dataset.from_tensor_slices((X.astype("f4"), Y)).repeat().batch(16).take(8)
    flip = keras.layers.RandomFlip("horizontal", seed=0)
    first = epoch(pipeline.augmented(stream, flip, seed=1))[0]
    np.testing.assert_array_equal(first, epoch(pipeline.augmented(stream, flip, seed=1))[0])
    flipped = np.all(first == X[:128, :, ::-1].astype("f4"), axis=(1, 2, 3))
    unchanged = np.all(first == X[:128].astype("f4"), axis=(1, 2, 3))
    assert np.all(flipped | unchanged) and flipped.any() and unchanged.any()


def test_layers_stay_random_outside_the_pipeline():
    """The stateless seeds apply only inside the pipeline: eager calls draw as usual."""
    layer = random_layer()
    list(pipeline.for_training(X, Y, 32, augment=layer).take(1))
    images = X[:4].astype("f4")
    assert not np.array_equal(layer(images, training=True), layer(images, training=True))
