"""Losses the Keras library does not ship: soft Dice for segmentation.

Cross-entropy scores every pixel alike, so on an image that is 90 % background a model can
get most of the loss down by saying "background" everywhere, and small objects are the first
thing it gives up. Dice scores each class by the overlap of its predicted and true regions
(2 |P n T| / (|P| + |T|)), whatever their size, so a small class counts as much as a large
one. The usual recipe adds the two: cross-entropy for smooth per-pixel gradients, Dice for the
balance between classes.

    loss = losses.CrossEntropyDice(num_classes=11, ignore_index=255)
    model.compile(optimizer, loss=loss)   # y_true: (B, H, W) class ids, y_pred: logits
"""

from __future__ import annotations

import keras
from keras import ops


def soft_dice_loss(y_true, logits, num_classes: int, ignore_index: int | None = None,
                   smooth: float = 1.0):
    """1 - mean over classes of the soft Dice of softmax(logits) against one-hot `y_true`.

    The sums run over the whole batch (every pixel of every image), so a class absent from one
    image is still scored where it appears; classes absent from the whole batch count as
    Dice 1 through `smooth`. Pixels labelled `ignore_index` take no part.
    """
    y_true = ops.cast(ops.reshape(y_true, ops.shape(logits)[:-1]), "int32")
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    valid = ops.ones_like(y_true, "float32")
    if ignore_index is not None:
        valid = ops.cast(ops.not_equal(y_true, ignore_index), "float32")
        y_true = ops.where(ops.equal(y_true, ignore_index), 0, y_true)
    target = ops.one_hot(y_true, num_classes) * valid[..., None]
    probs = probs * valid[..., None]
    axes = tuple(range(len(probs.shape) - 1))  # all but the class axis
    overlap = ops.sum(probs * target, axis=axes)
    total = ops.sum(probs, axis=axes) + ops.sum(target, axis=axes)
    return 1.0 - ops.mean((2.0 * overlap + smooth) / (total + smooth))


@keras.saving.register_keras_serializable(package="common")
class CrossEntropyDice(keras.losses.Loss):
    """Sparse categorical cross-entropy on logits + `dice_weight` x soft Dice (see above)."""

    def __init__(self, num_classes: int, ignore_index: int | None = None,
                 dice_weight: float = 1.0, name: str = "ce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.dice_weight = dice_weight
        self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=ignore_index)

    def call(self, y_true, y_pred):
        dice = soft_dice_loss(y_true, y_pred, self.num_classes, self.ignore_index)
        return self.cross_entropy(y_true, y_pred) + self.dice_weight * dice

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "ignore_index": self.ignore_index, "dice_weight": self.dice_weight}
