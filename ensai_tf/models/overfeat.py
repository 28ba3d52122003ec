"""Network 3: Overfeat (code model 5; slim ``overfeat``, modified, docs/design.md §6.5.3).

conv1 64 11x11/4 VALID -> pool1 2/2 -> conv2 256 5x5 VALID -> pool2 ->
conv3-5 (512, 1024, 1024 3x3) -> pool5 (4x4x1024 at 192^2) -> fc6 3072 2x2
VALID -> fc7 4096 1x1 -> fc8 5 1x1 linear (3x3x5) -> flatten (45) ->
``params`` (the code's extra linear FC1 45 -> 5). No dropout (docs/design.md §6.3).
"""

import keras

from ensai_tf.conventions import IMAGE_SHAPE, NUM_PARAMS
from ensai_tf.models import blocks

__all__ = ["ARCH", "accepts_side", "build_overfeat"]

ARCH = "overfeat"


def accepts_side(side):
    """Whether one input side, pixels, leaves fc6 at least 1 pixel (sides >= 103).

    Args:
        side: input image side (height or width), pixels.

    Returns:
        bool: True when the fc6 output is at least 1 pixel.
    """
    s = blocks.valid_size(side, 11, 4)
    s = blocks.valid_size(s, 2, 2)
    s = blocks.valid_size(s, 5, 1)
    s = blocks.valid_size(s, 2, 2)
    s = blocks.valid_size(s, 2, 2)
    return blocks.valid_size(s, 2, 1) >= 1


def build_overfeat(input_shape=IMAGE_SHAPE, num_outputs=NUM_PARAMS, name=ARCH,
                   width=1.0, input_stretch=0.0):
    """Overfeat regressor (docs/design.md §6.5.3), about 41.0 M trainable parameters.

    The layer ``params`` is the code's final linear FC1 (Glorot, bias 0)
    from the flattened fc8 map; ``fc8`` keeps the slim name.

    Args:
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands; sides >= 103.
        num_outputs: outputs of the last layer (5 lens parameters).
        name: model name.
        width: multiplier of every hidden layer's filters and units (1 = the
            paper's network; the ``cpu`` preset uses a narrower one).
        input_stretch: softening of the asinh input stretch, image units
            (docs/design.md §6.1.1); 0 leaves the image linear.

    Returns:
        Functional ``keras.Model`` from images ``(B, H, W, 1)`` (masked
        pixels exactly 0) to float32 ``(B, num_outputs)``, target units.

    Raises:
        ValueError: ``input_shape`` does not fit, naming the smallest input.
    """
    inputs, x = blocks.model_input(input_shape, ARCH, accepts_side, input_stretch)
    x = blocks.conv(x, 64, 11, "conv1", strides=4, padding="valid", width=width)
    x = blocks.max_pool(x, 2, "pool1")
    x = blocks.conv(x, 256, 5, "conv2", padding="valid", width=width)
    x = blocks.max_pool(x, 2, "pool2")
    x = blocks.conv(x, 512, 3, "conv3", width=width)
    x = blocks.conv(x, 1024, 3, "conv4", width=width)
    x = blocks.conv(x, 1024, 3, "conv5", width=width)
    x = blocks.max_pool(x, 2, "pool5")
    # docs/design.md §6.5.3: fc6 is 2x2 (stock Overfeat: 6x6)
    x = blocks.fc_conv(x, 3072, 2, "fc6", width=width)
    x = blocks.fc_conv(x, 4096, 1, "fc7", width=width)
    # float32 like every output layer; also, oneDNN's bfloat16 backward of this
    # 5-filter 1x1 conv corrupts the heap on this CPU (TF 2.21, measured)
    x = blocks.fc_conv(x, num_outputs, 1, "fc8", activation=None, bias=0.0, dtype="float32")
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = blocks.params_output(x, num_outputs=num_outputs)
    return keras.Model(inputs, outputs, name=name)
