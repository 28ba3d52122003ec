"""Network 2: AlexNet (code model 9; slim ``alexnet_v2`` without its arg scope, docs/design.md §6.5.2).

conv1 64 11x11/4 VALID -> pool1 -> conv2 192 5x5 -> pool2 -> conv3-5
(384, 384, 256 3x3) -> pool5 (4x4x256 at 192^2) -> fc6 4096 4x4 VALID
(conv-as-FC) -> fc7 4096 1x1 -> fc8 5 1x1 linear -> ``params`` (reshape to 5).
No dropout (docs/design.md §6.3).
"""

import keras

from ensai_tf.conventions import IMAGE_SHAPE, NUM_PARAMS
from ensai_tf.models import blocks

__all__ = ["ARCH", "accepts_side", "build_alexnet"]

ARCH = "alexnet"

FC6_KERNEL = 4
"""fc6 kernel side, pixels: 4 to fit the 192^2 input (stock alexnet_v2: 5; docs/design.md §6.5.2)."""


def accepts_side(side):
    """Whether one input side, pixels, gives the 4x4 pool5 that fc6 needs (docs/design.md §6.5.2).

    fc8's output is squeezed to 5 numbers (slim ``spatial_squeeze``), so
    pool5 must be exactly ``FC6_KERNEL`` pixels: sides 163 to 194.

    Args:
        side: input image side (height or width), pixels.

    Returns:
        bool: True when pool5 is ``FC6_KERNEL`` x ``FC6_KERNEL`` pixels.
    """
    s = blocks.valid_size(side, 11, 4)
    for _ in range(3):
        s = blocks.valid_size(s, 3, 2)
    return s == FC6_KERNEL


def build_alexnet(input_shape=IMAGE_SHAPE, num_outputs=NUM_PARAMS, name=ARCH,
                  width=1.0, input_stretch=0.0):
    """AlexNet regressor (docs/design.md §6.5.2), about 36.8 M trainable parameters.

    Args:
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands; each side must be in 163..194.
        num_outputs: outputs of the last layer (5 lens parameters).
        name: model name.
        width: multiplier of every hidden layer's filters and units (1 = the
            paper's network; the ``cpu`` preset uses a narrower one).
        input_stretch: softening of the asinh input stretch, image units
            (docs/design.md §6.1.1); 0 leaves the image linear.

    Returns:
        Functional ``keras.Model`` from images ``(B, H, W, 1)`` (masked
        pixels exactly 0) to float32 ``(B, num_outputs)``, in the units of
        the targets (arcsec / dimensionless).

    Raises:
        ValueError: ``input_shape`` does not fit, naming the smallest input.
    """
    inputs, x = blocks.model_input(input_shape, ARCH, accepts_side, input_stretch)
    x = blocks.conv(x, 64, 11, "conv1", strides=4, padding="valid", width=width)
    x = blocks.max_pool(x, 3, "pool1")
    x = blocks.conv(x, 192, 5, "conv2", width=width)
    x = blocks.max_pool(x, 3, "pool2")
    x = blocks.conv(x, 384, 3, "conv3", width=width)
    x = blocks.conv(x, 384, 3, "conv4", width=width)
    x = blocks.conv(x, 256, 3, "conv5", width=width)
    x = blocks.max_pool(x, 3, "pool5")
    x = blocks.fc_conv(x, 4096, FC6_KERNEL, "fc6", width=width)
    x = blocks.fc_conv(x, 4096, 1, "fc7", width=width)
    # docs/design.md §6.5.2: fc8 linear, trunc-normal 0.005, bias 0; float32 for mixed precision
    x = blocks.fc_conv(x, num_outputs, 1, "fc8", activation=None, bias=0.0, dtype="float32")
    outputs = keras.layers.Reshape((num_outputs,), dtype="float32", name="params")(x)
    return keras.Model(inputs, outputs, name=name)
