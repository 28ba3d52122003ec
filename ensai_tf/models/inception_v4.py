"""Network 1: Inception-v4 (code model 11; slim ``inception_v4``, docs/design.md §6.5.1).

Stem (Conv2d_1a..2b, Mixed_3a, Mixed_4a, Mixed_5a: 21x21x384 at 192^2) ->
4x Inception-A (Mixed_5b..5e) -> Reduction-A (Mixed_6a, 10x10x1024) ->
7x Inception-B (Mixed_6b..6h) -> Reduction-B (Mixed_7a, 4x4x1536) ->
3x Inception-C (Mixed_7b..7d) -> global average pool -> ``params`` (slim's
``Logits``: linear FC, Glorot, bias 0). No aux logits, no dropout.

Deviations from the release, per docs/design.md §6.5.1 [R]: the bias-removal layer
comes first, the input has a single channel (not tiled to 3), and BN is
proper by default (``bn_mode="frozen"`` emulates the release). Layer names
are the slim scopes with ``/`` replaced by ``_`` (Keras forbids ``/``), e.g.
``Mixed_6a_Branch_1_Conv2d_0b_3x3``.
"""

import functools

import keras

from ensai_tf.conventions import IMAGE_SHAPE, NUM_PARAMS
from ensai_tf.models import blocks

__all__ = ["ARCH", "accepts_side", "build_inception_v4"]

ARCH = "inception_v4"


def accepts_side(side):
    """Whether one input side, pixels, survives every VALID stage (sides >= 75).

    Args:
        side: input image side (height or width), pixels.

    Returns:
        bool: True when Mixed_7a still has at least 1 pixel.
    """
    s = blocks.valid_size(side, 3, 2)   # Conv2d_1a_3x3
    s = blocks.valid_size(s, 3, 1)      # Conv2d_2a_3x3
    s = blocks.valid_size(s, 3, 2)      # Mixed_3a
    s = blocks.valid_size(s, 3, 1)      # Mixed_4a
    for _ in range(3):                  # Mixed_5a, Mixed_6a, Mixed_7a
        s = blocks.valid_size(s, 3, 2)
    return s >= 1


def _avg_pool(x, name):
    # TF SAME average pooling excludes the padding from the count; Keras on TF matches (§6.5.1)
    return keras.layers.AveragePooling2D(3, strides=1, padding="same", name=name)(x)


def _concat(branches, name):
    return keras.layers.Concatenate(axis=-1, name=name)(branches)


def _stem(x, unit):
    x = unit(x, 32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")
    x = unit(x, 32, 3, "Conv2d_2a_3x3", padding="valid")
    x = unit(x, 64, 3, "Conv2d_2b_3x3")
    b0 = blocks.max_pool(x, 3, "Mixed_3a_Branch_0_MaxPool_0a_3x3")
    b1 = unit(x, 96, 3, "Mixed_3a_Branch_1_Conv2d_0a_3x3", strides=2, padding="valid")
    x = _concat([b0, b1], "Mixed_3a")
    s = "Mixed_4a"
    b0 = unit(x, 64, 1, f"{s}_Branch_0_Conv2d_0a_1x1")
    b0 = unit(b0, 96, 3, f"{s}_Branch_0_Conv2d_1a_3x3", padding="valid")
    b1 = unit(x, 64, 1, f"{s}_Branch_1_Conv2d_0a_1x1")
    b1 = unit(b1, 64, (1, 7), f"{s}_Branch_1_Conv2d_0b_1x7")
    b1 = unit(b1, 64, (7, 1), f"{s}_Branch_1_Conv2d_0c_7x1")
    b1 = unit(b1, 96, 3, f"{s}_Branch_1_Conv2d_1a_3x3", padding="valid")
    x = _concat([b0, b1], s)
    s = "Mixed_5a"
    b0 = unit(x, 192, 3, f"{s}_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = blocks.max_pool(x, 3, f"{s}_Branch_1_MaxPool_1a_3x3")
    return _concat([b0, b1], s)


def _inception_a(x, s, unit):
    b0 = unit(x, 96, 1, f"{s}_Branch_0_Conv2d_0a_1x1")
    b1 = unit(x, 64, 1, f"{s}_Branch_1_Conv2d_0a_1x1")
    b1 = unit(b1, 96, 3, f"{s}_Branch_1_Conv2d_0b_3x3")
    b2 = unit(x, 64, 1, f"{s}_Branch_2_Conv2d_0a_1x1")
    b2 = unit(b2, 96, 3, f"{s}_Branch_2_Conv2d_0b_3x3")
    b2 = unit(b2, 96, 3, f"{s}_Branch_2_Conv2d_0c_3x3")
    b3 = _avg_pool(x, f"{s}_Branch_3_AvgPool_0a_3x3")
    b3 = unit(b3, 96, 1, f"{s}_Branch_3_Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], s)


def _reduction_a(x, s, unit):
    b0 = unit(x, 384, 3, f"{s}_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = unit(x, 192, 1, f"{s}_Branch_1_Conv2d_0a_1x1")
    b1 = unit(b1, 224, 3, f"{s}_Branch_1_Conv2d_0b_3x3")
    b1 = unit(b1, 256, 3, f"{s}_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    b2 = blocks.max_pool(x, 3, f"{s}_Branch_2_MaxPool_1a_3x3")
    return _concat([b0, b1, b2], s)


def _inception_b(x, s, unit):
    b0 = unit(x, 384, 1, f"{s}_Branch_0_Conv2d_0a_1x1")
    b1 = unit(x, 192, 1, f"{s}_Branch_1_Conv2d_0a_1x1")
    b1 = unit(b1, 224, (1, 7), f"{s}_Branch_1_Conv2d_0b_1x7")
    b1 = unit(b1, 256, (7, 1), f"{s}_Branch_1_Conv2d_0c_7x1")
    b2 = unit(x, 192, 1, f"{s}_Branch_2_Conv2d_0a_1x1")
    b2 = unit(b2, 192, (7, 1), f"{s}_Branch_2_Conv2d_0b_7x1")
    b2 = unit(b2, 224, (1, 7), f"{s}_Branch_2_Conv2d_0c_1x7")
    b2 = unit(b2, 224, (7, 1), f"{s}_Branch_2_Conv2d_0d_7x1")
    b2 = unit(b2, 256, (1, 7), f"{s}_Branch_2_Conv2d_0e_1x7")
    b3 = _avg_pool(x, f"{s}_Branch_3_AvgPool_0a_3x3")
    b3 = unit(b3, 128, 1, f"{s}_Branch_3_Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], s)


def _reduction_b(x, s, unit):
    b0 = unit(x, 192, 1, f"{s}_Branch_0_Conv2d_0a_1x1")
    b0 = unit(b0, 192, 3, f"{s}_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = unit(x, 256, 1, f"{s}_Branch_1_Conv2d_0a_1x1")
    b1 = unit(b1, 256, (1, 7), f"{s}_Branch_1_Conv2d_0b_1x7")
    b1 = unit(b1, 320, (7, 1), f"{s}_Branch_1_Conv2d_0c_7x1")
    b1 = unit(b1, 320, 3, f"{s}_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    b2 = blocks.max_pool(x, 3, f"{s}_Branch_2_MaxPool_1a_3x3")
    return _concat([b0, b1, b2], s)


def _inception_c(x, s, unit):
    b0 = unit(x, 256, 1, f"{s}_Branch_0_Conv2d_0a_1x1")
    b1 = unit(x, 384, 1, f"{s}_Branch_1_Conv2d_0a_1x1")
    b1 = _concat([unit(b1, 256, (1, 3), f"{s}_Branch_1_Conv2d_0b_1x3"),
                  unit(b1, 256, (3, 1), f"{s}_Branch_1_Conv2d_0c_3x1")], f"{s}_Branch_1_concat")
    b2 = unit(x, 384, 1, f"{s}_Branch_2_Conv2d_0a_1x1")
    b2 = unit(b2, 448, (3, 1), f"{s}_Branch_2_Conv2d_0b_3x1")
    b2 = unit(b2, 512, (1, 3), f"{s}_Branch_2_Conv2d_0c_1x3")
    b2 = _concat([unit(b2, 256, (1, 3), f"{s}_Branch_2_Conv2d_0d_1x3"),
                  unit(b2, 256, (3, 1), f"{s}_Branch_2_Conv2d_0e_3x1")], f"{s}_Branch_2_concat")
    b3 = _avg_pool(x, f"{s}_Branch_3_AvgPool_0a_3x3")
    b3 = unit(b3, 256, 1, f"{s}_Branch_3_Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], s)


def build_inception_v4(input_shape=IMAGE_SHAPE, num_outputs=NUM_PARAMS, name=ARCH,
                       bn_mode="train", width=1.0, input_stretch=0.0):
    """Inception-v4 regressor (docs/design.md §6.5.1), about 41 M trainable parameters.

    Args:
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands; sides >= 75.
        num_outputs: outputs of the last layer (5 lens parameters).
        name: model name.
        bn_mode: ``"train"`` (default, docs/design.md §6.5.1 [R]): every conv is
            no-bias + BatchNormalization(center, no scale, eps 1e-3,
            momentum 0.99) + ReLU, moving statistics updated in training;
            ``"frozen"``: conv with bias + ReLU and no BN, which is what the
            release's never-updated BN amounts to.
        width: multiplier of every hidden layer's filters and units (1 = the
            paper's network; the ``cpu`` preset uses a narrower one).
        input_stretch: softening of the asinh input stretch, image units
            (docs/design.md §6.1.1); 0 leaves the image linear.

    Returns:
        Functional ``keras.Model`` from images ``(B, H, W, 1)`` (masked
        pixels exactly 0) to float32 ``(B, num_outputs)``, target units.

    Raises:
        ValueError: bad ``bn_mode``, or an ``input_shape`` that does not fit
            (the message names the smallest input).
    """
    if bn_mode not in blocks.BN_MODES:
        raise ValueError(f"bn_mode must be one of {blocks.BN_MODES}, got {bn_mode!r}")
    unit = functools.partial(blocks.conv_bn, bn_mode=bn_mode, width=width)
    inputs, x = blocks.model_input(input_shape, ARCH, accepts_side, input_stretch)
    x = _stem(x, unit)
    for s in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_5e"):
        x = _inception_a(x, s, unit)
    x = _reduction_a(x, "Mixed_6a", unit)
    for s in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_6f", "Mixed_6g", "Mixed_6h"):
        x = _inception_b(x, s, unit)
    x = _reduction_b(x, "Mixed_7a", unit)
    for s in ("Mixed_7b", "Mixed_7c", "Mixed_7d"):
        x = _inception_c(x, s, unit)
    x = keras.layers.GlobalAveragePooling2D(name="AvgPool_1a")(x)
    outputs = blocks.params_output(x, num_outputs=num_outputs)
    return keras.Model(inputs, outputs, name=name)
