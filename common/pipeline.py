"""tf.data input pipelines: parallel map, cache, shuffle, batch, augmentation, prefetch.

Images stay in [0, 255] float32 through the pipeline; models rescale inside themselves
(`keras.layers.Rescaling`), so a saved model takes raw images at predict time.
Augmentation runs on whole batches (vectorised Keras preprocessing layers) in the pipeline,
on the CPU, overlapping with the training step thanks to `prefetch`; by default in one thread,
so that runs are reproducible (see PARALLEL_AUGMENTATION).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

# Random augmentation draws from a random-number state shared by all the calls of a map. In
# parallel calls the draws race for it, so two runs with the same seed differ. By default the
# augmentation map runs in one thread (still overlapped with training by `prefetch`), which
# makes a rerun bit-identical; `--parallel-augmentation` (cli) sets this to True for speed.
PARALLEL_AUGMENTATION = False


def augment_calls() -> int | None:
    """`num_parallel_calls` for a map that draws random numbers (see PARALLEL_AUGMENTATION)."""
    return AUTOTUNE if PARALLEL_AUGMENTATION else None


def _as_float(image, label):
    return tf.cast(image, tf.float32), label


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
    """Shuffled, batched, augmented training batches.

    `augment` is a Keras layer (applied to the images) or a function of a batch
    `(images, labels) -> (images, labels)` (for MixUp/CutMix, which also mix labels).
    With `num_classes`, labels are one-hot (needed when labels are mixed).
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if cache:
        ds = ds.cache()  # the uint8 images: decoding/conversion is not repeated each epoch
    ds = ds.shuffle(min(len(x), 20_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(_as_float, num_parallel_calls=AUTOTUNE)
    if num_classes:
        ds = ds.map(lambda i, t: (i, tf.one_hot(t, num_classes)), num_parallel_calls=AUTOTUNE)
    if augment is not None:
        if isinstance(augment, keras.layers.Layer):
            layer = augment

            def augment(images, labels):
                return layer(images, training=True), labels
        ds = ds.map(augment, num_parallel_calls=augment_calls())
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
        ds = ds.map(_as_float, num_parallel_calls=AUTOTUNE)
        if num_classes:
            ds = ds.map(lambda i, t: (i, tf.one_hot(t, num_classes)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
