"""The generic backbone as the feature pyramid of the Keras library detectors.

keras-cv's `YOLOV8Detector` and keras-hub's `RetinaNetObjectDetector` take a backbone that
names its pyramid levels. These two classes give them the collection's generic pretrained
backbone (`common.backbone`), behind a 2x2 average-pooling stem (YOLOv8's own backbone also
halves the resolution first), so that its four stages have strides 2, 4, 8 and 16 of the
input; a new stride-2 stage adds stride 32:

    backbone = GenericYoloBackbone((128, 128, 3), weights="generic")   # P3, P4, P5
    encoder = GenericPyramidEncoder((128, 128, 3), weights="generic")  # P1 .. P5

Both are registered Keras classes: `import common.detectors` before
`keras.saving.load_model("OUT/model.keras")` rebuilds a saved detector anywhere.
"""

from __future__ import annotations

import keras
import keras_cv
import keras_hub

from common import UserError
from common import backbone as generic


def generic_stages(input_shape, weights: str = "none"):
    """The pooled generic backbone as a functional graph: (inputs, {stride: feature map}).
    `weights`: generic (shipped), none (random) or a generic-architecture .weights.h5 file."""
    if weights == "imagenet":
        raise UserError("--weights imagenet is for --model retinanet (a keras-hub ResNet preset)")
    half = (input_shape[0] // 2, input_shape[1] // 2, 3)
    if weights == "none":
        net = generic.generic_backbone(half)
    else:  # the shipped weights, or a generic-architecture file (e.g. from `make pretrain`)
        net = generic.load_generic(half, **({} if weights == "generic" else {"path": weights}))
    stages = generic.pyramid(net, stages=(1, 2, 3, 4))  # one sub-model, four outputs
    images = keras.Input(input_shape, name="image")
    maps = stages(keras.layers.AveragePooling2D(2, name="stem_pool")(images))
    # named identity layers: keras-cv looks the pyramid levels up by layer name
    levels = {2**k: keras.layers.Identity(name=f"stride{2**k}")(m) for k, m in enumerate(maps, 1)}
    # a new stage (random weights) for stride 32
    x = keras.layers.Conv2D(192, 3, strides=2, padding="same", use_bias=False,
                            name="extra32_conv")(levels[16])
    x = keras.layers.BatchNormalization(momentum=0.9, name="extra32_bn")(x)
    levels[32] = keras.layers.ReLU(name="stride32")(x)
    return images, levels


@keras.saving.register_keras_serializable(package="detection")
class GenericYoloBackbone(keras_cv.models.Backbone):
    """The pooled generic backbone with the P3/P4/P5 maps (strides 8/16/32) YOLOv8 expects."""

    def __init__(self, input_shape=(128, 128, 3), weights="none", **kwargs):
        images, levels = generic_stages(tuple(input_shape), weights)
        super().__init__(inputs=images, outputs=[levels[8], levels[16], levels[32]], **kwargs)
        self.pyramid_level_inputs = {"P3": "stride8", "P4": "stride16", "P5": "stride32"}
        self.image_shape = tuple(input_shape)

    def get_config(self):  # weights are saved with the model, so a reload starts from "none"
        return {"input_shape": self.image_shape, "name": self.name, "trainable": self.trainable}


@keras.saving.register_keras_serializable(package="detection")
class GenericPyramidEncoder(keras_hub.models.FeaturePyramidBackbone):
    """The pooled generic backbone as a keras-hub image encoder (P1..P5 = strides 2..32)."""

    def __init__(self, image_shape=(128, 128, 3), weights="none", **kwargs):
        images, levels = generic_stages(tuple(image_shape), weights)
        super().__init__(inputs=images, outputs=levels[32], **kwargs)
        self.pyramid_outputs = {f"P{k}": levels[2**k] for k in (1, 2, 3, 4, 5)}
        self.image_shape = tuple(image_shape)

    def get_config(self):
        config = super().get_config()
        config["image_shape"] = self.image_shape
        return config
