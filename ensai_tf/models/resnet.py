"""Network 5: a residual network of this project's own (beyond the paper, docs/design.md §6.5.5 [R]).

Designed for accuracy per CPU-minute at 192^2, and for the lens centre, the
weakest output of the paper's networks:

* two **coordinate channels** (x and y of every pixel, in units of the
  half-field) join the bias-removed image, so every convolution knows where
  it is;
* **anti-aliased downsampling**: each halving is a fixed 3x3 binomial blur
  with stride 2 (:class:`BlurPool`) instead of a strided convolution or a max
  pool, which keeps the features nearly shift-equivariant;
* **residual blocks** (two 3x3 convolutions and a 1x1 projection where the
  width changes), one per scale. The second convolution of each block starts
  at zero, so every block starts as its shortcut and the deep network trains
  without batch norm, which costs more than the convolutions on a CPU in
  bfloat16 (docs/design.md §6.5.5);
* a **position-preserving head**: the 6x6 map of the last scale is reduced
  by a 1x1 convolution and flattened (no global pooling), so position stays
  in the features that reach the dense layers.

stem 32 3x3 -> blur/2 -> conv 64 3x3 -> blur/2 -> [block 128 -> blur/2] ->
[block 256 -> blur/2] -> [block 512 -> blur/2] (6x6 at 192^2) -> head 1x1 128
-> flatten -> fc 1024 -> ``params``; every count times ``width`` (the ``cpu``
preset's 0.25 gives 8 ... 128 filters). The two cheap single convolutions
take the image to 48^2 before the residual stages, where most of the
computation is.
"""

import keras
from keras import ops

from ensai_tf.conventions import IMAGE_SHAPE, NUM_PARAMS
from ensai_tf.models import blocks

__all__ = ["ARCH", "STAGE_FILTERS", "CoordinateChannels", "BlurPool", "accepts_side",
           "build_resnet"]

ARCH = "resnet"

STAGE_FILTERS = (128, 256, 512)
"""Filters of the three residual stages at ``width = 1`` (stem 32 and 64; head 128, then 1024 units)."""


@keras.saving.register_keras_serializable(package="ensai_tf")
class CoordinateChannels(keras.layers.Layer):
    """Appends the pixel coordinates x and y as two channels.

    Pixel centres follow docs/design.md §0 (x = column, y = row, origin midway
    between the two central pixels), divided by the half-field
    ``npix / 2`` pixels, so both channels run from about -1 to 1.

    Input shape:
        ``(B, H, W, C)``.

    Output shape:
        ``(B, H, W, C + 2)``: the input, then x, then y (dimensionless).

    Example:
        >>> import numpy as np
        >>> out = CoordinateChannels()(np.zeros((1, 4, 4, 1), "float32"))
        >>> np.asarray(out)[0, 0, :, 1].tolist()
        [-0.75, -0.25, 0.25, 0.75]
    """

    def call(self, inputs):
        shape = ops.shape(inputs)
        rows, cols = shape[1], shape[2]
        y = (ops.arange(rows, dtype="float32") - (ops.cast(rows, "float32") - 1.0) / 2.0) \
            / (ops.cast(rows, "float32") / 2.0)
        x = (ops.arange(cols, dtype="float32") - (ops.cast(cols, "float32") - 1.0) / 2.0) \
            / (ops.cast(cols, "float32") / 2.0)
        grid_y, grid_x = ops.meshgrid(y, x, indexing="ij")
        coords = ops.stack([grid_x, grid_y], axis=-1)[None]
        coords = ops.broadcast_to(ops.cast(coords, inputs.dtype),
                                  (shape[0], rows, cols, 2))
        return ops.concatenate([inputs, coords], axis=-1)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        return shape[:-1] + (None if shape[-1] is None else shape[-1] + 2,)


@keras.saving.register_keras_serializable(package="ensai_tf")
class BlurPool(keras.layers.Layer):
    """Anti-aliased downsampling: a fixed 3x3 binomial blur with stride 2 per channel.

    The kernel is ``[1, 2, 1]^T [1, 2, 1] / 16`` (Zhang 2019, "Making
    convolutional networks shift-invariant again"), computed as a 2x2 mean
    with stride 1 followed by a 2x2 mean with stride 2 (both SAME, the mean
    taken over the pixels inside the image), which is several times faster
    to train on a CPU than the depthwise convolution. The output side is
    ``ceil(side / 2)``; pixel ``j`` of the output is centred on input pixel
    ``2 j + 1``, so the grid is anchored at the first row and column, not at
    the image centre (docs/design.md §6.5.5). It has no weights.

    Input shape:
        ``(B, H, W, C)``.

    Output shape:
        ``(B, ceil(H / 2), ceil(W / 2), C)``, same units.

    Example:
        >>> import numpy as np
        >>> out = BlurPool()(np.ones((1, 8, 8, 3), "float32"))
        >>> tuple(out.shape), float(np.asarray(out)[0, 2, 2, 0])
        ((1, 4, 4, 3), 1.0)
    """

    def call(self, inputs):
        x = ops.average_pool(inputs, pool_size=2, strides=1, padding="same")
        return ops.average_pool(x, pool_size=2, strides=2, padding="same")

    def compute_output_shape(self, input_shape):
        b, h, w, c = tuple(input_shape)
        return (b, None if h is None else -(-h // 2), None if w is None else -(-w // 2), c)


def accepts_side(side):
    """Whether one input side, pixels, leaves at least 1 pixel after the five halvings (any side).

    Args:
        side: input image side (height or width), pixels.

    Returns:
        bool: True for sides of at least 1 pixel (every halving is SAME).
    """
    return side >= 1


def _conv(x, filters, kernel, name, activation="relu", initializer="he_normal"):
    """SAME convolution with a zero bias and ``initializer`` weights (He-normal by default)."""
    return keras.layers.Conv2D(filters, kernel, padding="same", activation=activation,
                               kernel_initializer=initializer, name=name)(x)


def _residual_block(x, filters, name):
    """Two 3x3 convolutions, the second zero at the start, plus a shortcut (1x1 where needed)."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, f"{name}_proj", activation=None)
    y = _conv(x, filters, 3, f"{name}_a")
    y = _conv(y, filters, 3, f"{name}_b", activation=None, initializer="zeros")
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def build_resnet(input_shape=IMAGE_SHAPE, num_outputs=NUM_PARAMS, name=ARCH,
                 width=1.0, input_stretch=0.0):
    """Residual regressor with coordinate channels and a position-preserving head.

    Args:
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands.
        num_outputs: outputs of the last layer (5 lens parameters).
        name: model name.
        width: multiplier of every hidden layer's filters and units (the
            ``cpu`` preset uses 0.25).
        input_stretch: softening of the asinh input stretch, image units
            (docs/design.md §6.1.1); 0 leaves the image linear.

    Returns:
        Functional ``keras.Model`` from images ``(B, H, W, C)`` (masked
        pixels exactly 0) to float32 ``(B, num_outputs)``, in the units of
        the targets (arcsec / dimensionless).

    Raises:
        ValueError: ``input_shape`` does not fit.

    Example:
        >>> model = build_resnet(width=0.0625)
        >>> model.output_shape
        (None, 5)
    """
    inputs, x = blocks.model_input(input_shape, ARCH, accepts_side, input_stretch)
    x = CoordinateChannels(name="coordinates")(x)
    x = _conv(x, blocks.scaled(32, width), 3, "stem1")
    x = BlurPool(name="stem1_blur")(x)
    x = _conv(x, blocks.scaled(64, width), 3, "stem2")
    x = BlurPool(name="stem2_blur")(x)
    for i, filters in enumerate(STAGE_FILTERS, start=1):
        x = _residual_block(x, blocks.scaled(filters, width), f"block{i}")
        x = BlurPool(name=f"block{i}_blur")(x)
    x = _conv(x, blocks.scaled(128, width), 1, "head")
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = keras.layers.Dense(blocks.scaled(1024, width), activation="relu",
                           kernel_initializer="he_normal", name="fc")(x)
    outputs = blocks.params_output(x, num_outputs=num_outputs)
    return keras.Model(inputs, outputs, name=name)
