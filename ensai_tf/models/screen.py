"""The screening network: a small classifier of what is in an image, before any lens is measured.

It looks at a prepared image (docs/design.md §0: 192 x 192 pixels of 0.04
arcsec, as ``ensai predict`` prepares it) and gives one logit per label of
:data:`SCREEN_LABELS`:

``no_lens``
    nothing lensed: pure noise, blank sky, or a single galaxy without arcs;
``lens_light``
    a lensed source with the lens galaxy's light still in the image;
``edge_cut``
    arcs cut by the edge of the cutout.

A clean lens, like the networks' training data, has every label off. The
network is built here; :mod:`ensai_tf.screen` loads and scores with it, and
:mod:`ensai_tf.train_screen` trains it (docs/design.md §8.7).

Example:
    >>> model = build_screen_model()
    >>> model.output_shape
    (None, 3)
"""

import keras

from ensai_tf import conventions

__all__ = [
    "SCREEN_LABELS",
    "STEMS",
    "build_screen_model",
]

SCREEN_LABELS = ("no_lens", "lens_light", "edge_cut")
"""The screening network's outputs, in order (one logit each)."""

WIDTHS = (16, 32, 48, 64)
"""Filters of the four convolution blocks."""


STEMS = ("bin", "conv")
"""How the network first halves the image: ``"bin"`` averages 2 x 2 pixels; ``"conv"``
applies a 3 x 3 convolution of ``STEM_FILTERS`` filters at full resolution, then 2 x 2 max
pooling, so the 0.04 arcsec detail that tells a barely resolved ring from a galaxy survives."""

STEM_FILTERS = 8
"""Filters of the full-resolution convolution of the ``"conv"`` stem."""


def build_screen_model(npix=conventions.NPIX, widths=WIDTHS, dense=64, seed=0, stem="bin"):
    """The screening classifier: images ``(B, npix, npix, 1)`` -> logits ``(B, 3)``.

    The image is halved (``stem``: averaged 2 x 2, or convolved at full
    resolution and max-pooled), then four blocks of a 3 x 3 convolution,
    ReLU and 2 x 2 max pooling, a dense layer and one logit per label. The
    spatial map is flattened rather than pooled globally, so the network
    knows where light is: at the centre (lens light) or on the border (cut
    arcs).

    Args:
        npix: input side, pixels.
        widths: filters of the convolution blocks.
        dense: units of the hidden dense layer.
        seed: weight-initialisation seed.
        stem: one of :data:`STEMS`.

    Returns:
        an uncompiled ``keras.Model`` named ``"screen"``; ``sigmoid`` of its
        outputs are the label probabilities (:data:`SCREEN_LABELS` order).
    """
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((npix, npix, 1), name="image")
    if stem == "bin":
        x = keras.layers.AveragePooling2D(2, name="bin_2x2")(inputs)
    else:
        x = keras.layers.Conv2D(STEM_FILTERS, 3, padding="same", activation="relu",
                                kernel_initializer=init, name="stem_conv")(inputs)
        x = keras.layers.MaxPooling2D(2, name="stem_pool")(x)
    for i, filters in enumerate(widths):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                kernel_initializer=init, name=f"conv_{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense, activation="relu", kernel_initializer=init, name="hidden")(x)
    outputs = keras.layers.Dense(len(SCREEN_LABELS), kernel_initializer=init, name="logits")(x)
    return keras.Model(inputs, outputs, name="screen")
