"""Network 4: the authors' own 8-module design (code model 8, docs/design.md §6.5.4).

Each module is a primary SAME convolution then a 1x1 convolution of the same
depth (Glorot weights, zero bias). Kernels 3, 5, 10, 10, 10, 10, 10, 3 and
strides 2 at modules 3, 5, 7 follow the code; the first three convolutions
are linear (docs/design.md §6.5.4 [R], §9 items 10-11). Then flatten -> fc1 512 ReLU ->
``params`` 5 linear.
"""

import keras

from ensai_tf.conventions import IMAGE_SHAPE, NUM_PARAMS
from ensai_tf.models import blocks

__all__ = ["ARCH", "MODULES", "accepts_side", "build_ensai_net"]

ARCH = "ensai_net"

MODULES = (
    # (depth, primary kernel, stride, primary activation, 1x1 activation)
    (32, 3, 1, None, None),
    (32, 5, 1, None, "relu"),
    (32, 10, 2, "relu", "relu"),
    (32, 10, 1, "relu", "relu"),
    (64, 10, 2, "relu", "relu"),
    (64, 10, 1, "relu", "relu"),
    (128, 10, 2, "relu", "relu"),
    (256, 3, 1, "relu", "relu"),
)
"""The eight modules of docs/design.md §6.5.4, as the code has them."""


def accepts_side(side):
    """Every side >= 4 pixels works (all SAME convolutions; 4 for the bias layer).

    Args:
        side: input image side (height or width), pixels.

    Returns:
        bool: True for every side >= 1; the bias layer's minimum of 4 pixels
        is applied by :func:`ensai_tf.models.blocks.accepted_sides` and
        :func:`ensai_tf.models.blocks.check_input_shape`.
    """
    return side >= 1


def build_ensai_net(input_shape=IMAGE_SHAPE, num_outputs=NUM_PARAMS, name=ARCH, fc_units=512,
                    width=1.0, input_stretch=0.0):
    """The 8-module network (docs/design.md §6.5.4), about 77.6 M trainable parameters at 192^2.

    Layers are named ``conv{i}`` (primary) and ``conv{i}_1x1`` for module
    ``i`` = 1..8, then ``flatten``, ``fc1`` and ``params``.

    Args:
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands; sides >= 4.
        num_outputs: outputs of the last layer (5 lens parameters).
        name: model name.
        fc_units: width of the hidden FC layer (512, docs/design.md §6.5.4).
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
    for i, (depth, kernel, stride, act, act_1x1) in enumerate(MODULES, start=1):
        x = blocks.conv(x, depth, kernel, f"conv{i}", strides=stride, activation=act,
                        width=width)
        x = blocks.conv(x, depth, 1, f"conv{i}_1x1", activation=act_1x1, width=width)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(blocks.scaled(fc_units, width), activation="relu", kernel_initializer="glorot_uniform",
                           name="fc1")(x)
    outputs = blocks.params_output(x, num_outputs=num_outputs)
    return keras.Model(inputs, outputs, name=name)
