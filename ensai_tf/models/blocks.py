"""Building blocks shared by the four networks (docs/design.md §6.1, §6.3, §6.5.1).

TF-slim defaults reproduced in Keras (docs/design.md §6.3): convolutions SAME, stride 1,
ReLU, Glorot-uniform weights, zero biases; max pools VALID; the conv-as-FC
layers of AlexNet and Overfeat use truncated-normal(0.005) weights and bias
0.1. Inception-v4's unit is ``conv_bn`` (no-bias conv, BN without scale,
ReLU), or a biased conv with ``bn_mode="frozen"`` (docs/design.md §6.5.1 [R]).
"""

import keras

from ensai_tf.conventions import NUM_PARAMS
from ensai_tf.preprocess.bias import WINDOW, BiasRemoval
from ensai_tf.preprocess.stretch import AsinhStretch

__all__ = [
    "BN_MODES",
    "MAX_SEARCH_SIDE",
    "valid_size",
    "same_size",
    "accepted_sides",
    "check_input_shape",
    "model_input",
    "scaled",
    "conv",
    "fc_conv",
    "conv_bn",
    "max_pool",
    "params_output",
]

BN_MODES = ("train", "frozen")
"""Inception batch-norm modes (docs/design.md §6.5.1 [R])."""

MAX_SEARCH_SIDE = 2048
"""Largest input side, pixels, searched when reporting accepted sizes."""


def valid_size(side, kernel, stride=1):
    """Output side of a VALID convolution or pool, pixels (0 if it does not fit).

    Args:
        side: input side, pixels.
        kernel: kernel or pool side, pixels.
        stride: stride, pixels.

    Returns:
        int: ``max(0, (side - kernel) // stride + 1)``.
    """
    return max(0, (side - kernel) // stride + 1)


def same_size(side, stride=1):
    """Output side of a SAME convolution or pool, pixels.

    Args:
        side: input side, pixels.
        stride: stride, pixels.

    Returns:
        int: ``ceil(side / stride)``.
    """
    return -(-side // stride)


def accepted_sides(accepts, limit=MAX_SEARCH_SIDE):
    """Input sides in ``[1, limit)`` pixels for which ``accepts(side)`` is true.

    Sides below the bias-removal window (4 pixels) are never accepted.

    Args:
        accepts: function ``side -> bool`` of an architecture (its
            ``accepts_side``), side in pixels.
        limit: exclusive upper bound of the search, pixels.

    Returns:
        list[int]: the accepted sides, pixels, increasing.
    """
    return [n for n in range(1, limit) if n >= WINDOW and accepts(n)]


def check_input_shape(input_shape, arch, accepts):
    """Raise a ValueError naming the accepted sizes if ``input_shape`` does not fit.

    Args:
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands.
        arch: architecture name, for the message.
        accepts: function ``side -> bool`` telling whether one image side,
            pixels, passes every VALID stage of the architecture (all stages
            act on the two axes independently).

    Returns:
        ``input_shape`` as a tuple of ints.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] not in (1, 2):
        raise ValueError(f"{arch} takes images of shape (H, W, 1), or (H, W, 2) for two bands, "
                         f"got input_shape {shape}")
    if any(s is None or int(s) < 1 for s in shape[:2]):
        raise ValueError(f"{arch} needs a fixed positive image size, got input_shape {shape}")
    shape = tuple(int(s) for s in shape)
    if all(side >= WINDOW and accepts(side) for side in shape[:2]):
        return shape
    sides = accepted_sides(accepts)
    if not sides:
        raise ValueError(f"{arch} accepts no input size below {MAX_SEARCH_SIDE} pixels")
    span = f"sides from {sides[0]} to {sides[-1]} pixels" if sides[-1] < MAX_SEARCH_SIDE - 1 \
        else f"sides of at least {sides[0]} pixels"
    problem = "too small" if min(shape[:2]) < sides[0] else "not accepted"
    raise ValueError(f"input_shape {shape} is {problem} for {arch}: the smallest input it "
                     f"accepts is {sides[0]}x{sides[0]}x1 ({span})")


def model_input(input_shape, arch, accepts, input_stretch=0.0):
    """Checked ``keras.Input`` and its bias-removed version (docs/design.md §6.1).

    The bias-removal layer is the first layer of every network (docs/design.md §6.1
    [R], Inception included) and always computes in float32: its
    subtraction of a nearly equal offset would lose most digits in bfloat16.

    Args:
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands.
        arch: architecture name, for error messages.
        accepts: function ``side -> bool`` of the architecture (see
            :func:`check_input_shape`).
        input_stretch: softening of an :class:`~ensai_tf.preprocess.stretch.AsinhStretch`
            after the bias removal, image units (docs/design.md §6.1.1); 0 (the
            default, the paper's networks) leaves the image linear.

    Returns:
        ``(inputs, x)``: the input tensor named ``"images"`` and the output
        of the ``"bias_removal"`` layer (or of the ``"stretch"`` layer after it).
    """
    shape = check_input_shape(input_shape, arch, accepts)
    inputs = keras.Input(shape=shape, name="images")
    x = BiasRemoval(name="bias_removal", dtype="float32")(inputs)
    if input_stretch:
        x = AsinhStretch(input_stretch, name="stretch", dtype="float32")(x)
    return inputs, x


def scaled(filters, width=1.0):
    """Filter or unit count ``filters`` times the width multiplier, at least 1.

    ``width = 1`` is the paper's network (docs/design.md §6.5); the ``cpu`` preset uses
    narrower networks (``model.width``) that train faster on a CPU and fit
    the size limit of ``trained_weights/``.

    Args:
        filters: the paper's filter or unit count.
        width: width multiplier (``model.width``), > 0.

    Returns:
        int: ``max(1, round(filters * width))``.
    """
    return max(1, int(round(filters * float(width))))


def conv(x, filters, kernel, name, strides=1, padding="same", activation="relu", width=1.0):
    """``slim.conv2d`` with its defaults: Glorot-uniform, zero bias (docs/design.md §6.3).

    ``width`` multiplies ``filters`` (see :func:`scaled`).

    Args:
        x: input tensor ``(B, H, W, C)``.
        filters: number of filters at ``width = 1``.
        kernel: kernel side, pixels (int or ``(kh, kw)``).
        name: layer name.
        strides: stride, pixels.
        padding: ``"same"`` or ``"valid"``.
        activation: Keras activation name, or None for linear.
        width: width multiplier of ``filters``.

    Returns:
        The output tensor ``(B, H', W', scaled(filters, width))``.
    """
    return keras.layers.Conv2D(scaled(filters, width), kernel, strides=strides, padding=padding,
                               activation=activation, kernel_initializer="glorot_uniform",
                               bias_initializer="zeros", name=name)(x)


def fc_conv(x, filters, kernel, name, activation="relu", bias=0.1, padding="valid", dtype=None,
            width=1.0):
    """Conv-as-FC layer: truncated-normal(0.005) weights, constant bias (docs/design.md §6.5.2-3).

    ``width`` multiplies ``filters`` (see :func:`scaled`).

    Args:
        x: input tensor ``(B, H, W, C)``.
        filters: number of filters (units) at ``width = 1``.
        kernel: kernel side, pixels.
        name: layer name.
        activation: Keras activation name, or None for linear.
        bias: constant initial bias.
        padding: ``"valid"`` or ``"same"``.
        dtype: layer dtype or policy (e.g. ``"float32"`` for an output layer
            under mixed precision); None uses the global policy.
        width: width multiplier of ``filters``.

    Returns:
        The output tensor ``(B, H', W', scaled(filters, width))``.
    """
    return keras.layers.Conv2D(
        scaled(filters, width), kernel, padding=padding, activation=activation,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.005),
        bias_initializer=keras.initializers.Constant(bias), name=name, dtype=dtype)(x)


def max_pool(x, size, name, strides=2, padding="valid"):
    """``slim.max_pool2d``: stride 2, VALID by default (docs/design.md §6.3).

    Args:
        x: input tensor ``(B, H, W, C)``.
        size: pool side, pixels.
        name: layer name.
        strides: stride, pixels.
        padding: ``"valid"`` or ``"same"``.

    Returns:
        The pooled tensor ``(B, H', W', C)``.
    """
    return keras.layers.MaxPooling2D(size, strides=strides, padding=padding, name=name)(x)


def conv_bn(x, filters, kernel, name, strides=1, padding="same", bn_mode="train", width=1.0):
    """Inception-v4 unit (docs/design.md §6.5.1).

    ``bn_mode="train"``: Conv2D without bias (He truncated-normal), then
    BatchNormalization(center=True, scale=False, epsilon=1e-3, momentum=0.99)
    named ``<name>_bn``, then ReLU. ``bn_mode="frozen"``: Conv2D with bias
    and ReLU, no BN, which is what the release's never-updated BN reduces to.
    ``width`` multiplies ``filters`` (see :func:`scaled`).

    Args:
        x: input tensor ``(B, H, W, C)``.
        filters: number of filters at ``width = 1``.
        kernel: kernel side, pixels (int or ``(kh, kw)``).
        name: name of the convolution (BN and ReLU layers get suffixes).
        strides: stride, pixels.
        padding: ``"same"`` or ``"valid"``.
        bn_mode: one of :data:`BN_MODES`.
        width: width multiplier of ``filters``.

    Returns:
        The output tensor ``(B, H', W', scaled(filters, width))``.

    Raises:
        ValueError: ``bn_mode`` is not one of :data:`BN_MODES`.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    frozen = bn_mode == "frozen"
    x = keras.layers.Conv2D(scaled(filters, width), kernel, strides=strides, padding=padding,
                            use_bias=frozen,
                            activation="relu" if frozen else None,
                            kernel_initializer=keras.initializers.HeNormal(), name=name)(x)
    if frozen:
        return x
    # [R] docs/design.md §6.5.1: proper BN, momentum 0.99 (slim: decay 0.9997)
    x = keras.layers.BatchNormalization(center=True, scale=False, epsilon=1e-3, momentum=0.99,
                                        name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def params_output(x, name="params", num_outputs=NUM_PARAMS, kernel_initializer="glorot_uniform"):
    """The linear output layer in float32 (docs/design.md §6.2), also under mixed precision.

    Args:
        x: the final features ``(B, F)``.
        name: layer name.
        num_outputs: number of targets (5 lens parameters, 7 with the shear).
        kernel_initializer: Keras initializer of the weights (the bias starts at 0).

    Returns:
        float32 tensor ``(B, num_outputs)``.
    """
    return keras.layers.Dense(num_outputs, activation=None, kernel_initializer=kernel_initializer,
                              bias_initializer="zeros", dtype="float32", name=name)(x)
