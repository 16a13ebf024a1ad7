"""tf.data input pipelines: cache, shuffle, batch, parallel augmentation, prefetch.

Images stay in [0, 255] float32 through the pipeline; models rescale inside themselves
(`keras.layers.Rescaling`), so a saved model takes raw images at predict time.
Augmentation runs on whole batches (vectorised Keras preprocessing layers) in the pipeline,
on all CPU cores, overlapping with the training step thanks to `prefetch`.

Random augmentation is both parallel and reproducible. A Keras random layer normally takes
its seeds from a stateful `keras.random.SeedGenerator`, which parallel calls of a map would
race for, so two runs with the same seed would differ. Here every batch gets its own seed
from `tf.data.Dataset.random` (fixed by `seed`, new in each epoch), and while the
augmentation function is traced, every `SeedGenerator` draw in it (a layer's own or any
other) is replaced by a stateless seed folded from that batch seed and the draw's position.
Each batch's augmentation is then a pure function of its images and its seed: the map runs
with `num_parallel_calls=AUTOTUNE` and a rerun gives bit-identical batches. Hand-written
augmentation should therefore draw with `keras.random.*` and a `SeedGenerator`, as Keras
layers do: stateful `tf.random.*` ops are out of reach of this scheme and would race.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


@contextlib.contextmanager
def _seeds_from(batch_seed: tf.Tensor) -> Iterator[None]:
    """Inside this block, every `SeedGenerator.next()` returns `batch_seed` folded with the
    number of draws so far: stateless seeds, in the fixed order of the traced function.

    Layers keep their generator to themselves (nested ones too, e.g. in a Sequential or in
    RandAugment), so the one place that reaches all their draws is the method itself; it is
    swapped only for the duration of one trace, in the thread that builds the dataset."""
    draws = itertools.count()
    original = keras.random.SeedGenerator.next

    def stateless_next(generator, ordered=True):
        return tf.random.experimental.stateless_fold_in(batch_seed, next(draws))

    keras.random.SeedGenerator.next = stateless_next
    try:
        yield
    finally:
        keras.random.SeedGenerator.next = original


def augmented(batches: tf.data.Dataset, augment: Callable, seed: int = 0) -> tf.data.Dataset:
    """`batches` of `(images, labels)` through `augment`, in parallel and reproducibly.

    `augment` is a Keras layer (applied to the images) or a function of a batch
    `(images, labels) -> (images, labels)`, e.g. for MixUp/CutMix, which also mix labels.
    Its random draws must come from Keras (layers, `keras.random.*` given a `SeedGenerator`).
    """
    if isinstance(augment, keras.layers.Layer):
        layer = augment

        def augment(images, labels):
            return layer(images, training=True), labels

    def augment_batch(batch, batch_seed):
        with _seeds_from(batch_seed):  # active while tf.data traces this function, once
            return augment(*batch)

    # Two random int64 per batch make its [2]-element stateless seed.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(batches, seeds).map(augment_batch, num_parallel_calls=AUTOTUNE)


def _to_float(num_classes: int | None) -> Callable:
    def convert(images, labels):
        images = tf.cast(images, tf.float32)
        return images, (tf.one_hot(labels, num_classes) if num_classes else labels)
    return convert


def for_training(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    augment: Callable | None = None,
    seed: int = 0,
    cache: bool = True,
    num_classes: int | None = None,
) -> tf.data.Dataset:
    """Shuffled, batched, augmented training batches, the same for the same `seed`.

    `augment` is a Keras layer (applied to the images) or a function of a batch
    `(images, labels) -> (images, labels)` (see `augmented`). With `num_classes`, labels are
    one-hot (needed when labels are mixed).
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if cache:
        ds = ds.cache()  # the uint8 images: decoding/conversion is not repeated each epoch
    ds = ds.shuffle(min(len(x), 20_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(_to_float(num_classes), num_parallel_calls=AUTOTUNE)
    if augment is not None:
        ds = augmented(ds, augment, seed)
    return ds.prefetch(AUTOTUNE)


def for_eval(
    x: np.ndarray,
    y: np.ndarray | None = None,
    batch_size: int = 256,
    num_classes: int | None = None,
) -> tf.data.Dataset:
    """Batches in order, no augmentation: for validation, evaluation and prediction."""
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y)).batch(batch_size)
    if y is None:
        ds = ds.map(lambda i: tf.cast(i, tf.float32), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(_to_float(num_classes), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
