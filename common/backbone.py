"""The collection's generic pretrained backbone, shipped in the repository and loaded offline.

`recipes/pretrain` trains it (`make pretrain`) on a large synthetic corpus of glyphs, symbols
and textures; its weights (`common/weights/generic_backbone.weights.h5`, a few MB) and a
provenance record (`generic_backbone.json`: command, commit, data, accuracy) are committed.
Recipes load it with `--weights generic`:

    backbone = backbone.load_generic((28, 28, 1))  # any size >= 16, 1 or 3 channels
    features = backbone(images)                      # (N, H/8, W/8, 192) feature maps

The network is fully convolutional, so one set of weights serves any input size. It takes raw
[0, 255] pixels (the rescaling is inside). It was pretrained on RGB images (a share of them
gray); for a 1-channel input the first convolution's kernel is summed over its three colour
channels, which gives a gray image exactly the features its 3-channel copy would get.
Intermediate feature maps are the layers `stage1` .. `stage4` (strides 1, 2, 4, 8), for
detectors and segmentation decoders that want a pyramid: see `pyramid`.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from common import UserError

WEIGHTS = Path(__file__).resolve().parent / "weights" / "generic_backbone.weights.h5"
RECORD = WEIGHTS.parent / "generic_backbone.json"
WIDTHS = (24, 48, 96, 192)  # channels of stages 1-4
MIN_SIZE = 16  # below this the last stage would see a 2x2 map or less
FEATURES = WIDTHS[-1]


def _conv(x, filters: int, strides: int, name: str):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=name)(x)


def generic_backbone(input_shape=(None, None, 3), name: str = "generic_backbone") -> keras.Model:
    """The architecture (random weights): raw pixels in, (N, H/8, W/8, 192) feature maps out.

    A plain VGG-style stack (two 3x3 conv-BN-ReLU per stage, the first of stages 2-4 with
    stride 2): on a 2-core CPU plain convolutions train faster than residual or depthwise
    blocks of the same accuracy at this depth, and BatchNorm makes it easy to fine-tune.
    """
    images = keras.Input(input_shape, name="images")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(images)
    for stage, filters in enumerate(WIDTHS, start=1):
        x = _conv(x, filters, 1 if stage == 1 else 2, f"stage{stage}_a")
        x = _conv(x, filters, 1, f"stage{stage}")
    return keras.Model(images, x, name=name)


def record(path: Path = RECORD) -> dict:
    """The provenance record beside the shipped weights ({} when there is none)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_shape(input_shape) -> tuple:
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise UserError(f"the generic backbone takes images of 1 or 3 channels; the data has shape "
                        f"{input_shape}: convert the images to grayscale or RGB first")
    small = [s for s in input_shape[:2] if s is not None and s < MIN_SIZE]
    if small:
        raise UserError(f"the generic backbone needs images of at least {MIN_SIZE}x{MIN_SIZE} "
                        f"pixels (it downsamples 8x); the data is {input_shape[0]}x"
                        f"{input_shape[1]}: pass --image-size {MIN_SIZE} or more")
    return input_shape


def load_generic(input_shape=(None, None, 3), path: str | Path = WEIGHTS,
                 name: str = "generic_backbone") -> keras.Model:
    """The pretrained backbone for `input_shape` (H, W, 1 or 3); H and W may be None.

    A missing or unreadable weights file raises UserError saying how to get it back.
    """
    input_shape = _check_shape(input_shape)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the generic backbone's weights are missing: {path}. They ship with the "
                        "repository (git checkout -- common/weights), or rebuild them with "
                        "`make pretrain` (about an hour on 2 cores)")
    rgb = generic_backbone((*input_shape[:2], 3), name=name)
    try:
        rgb.load_weights(path)
    except Exception as err:  # noqa: BLE001 - h5py and Keras raise many types for a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read the generic backbone's weights {path} ({reason}): restore "
                        "the file (git checkout -- common/weights) or rebuild it with "
                        "`make pretrain`") from None
    if input_shape[-1] == 3:
        return rgb
    gray = generic_backbone(input_shape, name=name)
    for source, target in zip(rgb.layers, gray.layers):
        weights = source.get_weights()
        if source.name == "stage1_a_conv":  # (3, 3, 3, C) -> (3, 3, 1, C): gray = R = G = B
            weights = [np.sum(weights[0], axis=2, keepdims=True)]
        target.set_weights(weights)
    return gray


def pyramid(backbone: keras.Model, stages=(2, 3, 4)) -> keras.Model:
    """The backbone with the feature maps of several stages as outputs (for detection and
    segmentation heads): stage k has stride 2**(k-1) and WIDTHS[k-1] channels."""
    outputs = [backbone.get_layer(f"stage{k}").output for k in stages]
    return keras.Model(backbone.input, outputs, name=f"{backbone.name}_pyramid")
