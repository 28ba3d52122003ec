"""Image levels: normalisation with jitter and the zero-level offset.

docs/design.md §5.3 steps 6-7, §5.7, §9 #5.
"""

import numpy as np
import tensorflow as tf

from ensai_tf.data.effects import base

__all__ = [
    "sample_normalise",
    "apply_normalise",
    "sample_zero_bias",
    "apply_zero_bias",
    "apply_peak_normalise",
]


def sample_normalise(seeds, cfg):
    """Draw the normalisation jitter (docs/design.md §5.3 step 6, §9 #5).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"norm_jitter"`` ``(B,)`` ~ N(1, ``cfg.norm_jitter_rms``).
    """
    _, z, _ = base.effect_draws(seeds, base.Effect.NORMALISE, n_normal=1)
    return {"norm_jitter": 1.0 + cfg.norm_jitter_rms * z[:, 0]}


def apply_normalise(images, draws, reference, threshold=0.4):
    """Divide by the image max over bright arc pixels, times the jitter (docs/design.md §5.7).

    The normalising maximum is taken over pixels where ``reference`` (the
    noise-free, unblurred, shifted arcs) exceeds ``threshold``. If there is
    no such pixel, or that maximum is not positive, the division is skipped;
    the jitter is always applied.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict with ``"norm_jitter"`` ``(B,)``.
        reference: ``(B, n, n, 1)`` noise-free shifted arcs, peak 1.
        threshold: arc level defining the normalisation region.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    region = reference > threshold
    peak = tf.reduce_max(tf.where(region, images, -np.inf), axis=[1, 2, 3], keepdims=True)
    ok = tf.reduce_any(region, axis=[1, 2, 3], keepdims=True) & (peak > 0)
    scale = tf.where(ok, 1.0 / tf.where(ok, peak, 1.0), 1.0)
    return images * scale * base.per_image(tf.cast(draws["norm_jitter"], tf.float32))


def sample_zero_bias(seeds, cfg):
    """Draw the constant zero-level offset (docs/design.md §5.3 step 7).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"zero_bias"`` ``(B,)`` ~ N(0, ``cfg.zero_bias_rms``), image units.
    """
    _, z, _ = base.effect_draws(seeds, base.Effect.ZERO_BIAS, n_normal=1)
    return {"zero_bias": cfg.zero_bias_rms * z[:, 0]}


def apply_zero_bias(images, draws):
    """Add one constant ``zero_bias`` to every pixel of each image.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict with ``"zero_bias"`` ``(B,)``, image units
            (:func:`sample_zero_bias`).

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    return images + base.per_image(tf.cast(draws["zero_bias"], tf.float32))


def apply_peak_normalise(images):
    """Divide each image by its own peak, as ``ensai predict`` scales a user's image.

    The peak is the maximum, over unmasked pixels (not exactly 0), of the
    image's 3 x 3 median (edge pixels repeated), the rule of
    :func:`ensai_tf.preprocess.images.normalise_peak` (docs/design.md §5.7).
    With lens light in the image (``simulate.lens_light``) the arcs' scale
    then depends on the lens light, as it does in a real image; a network
    trained so (``observe.peak_normalise``) sees the scale it meets in
    prediction. Deterministic: there is nothing to draw. Masked pixels stay
    exactly 0; an image without a positive peak is left as it is.

    Args:
        images: ``(B, n, n, 1)`` float32.

    Returns:
        ``(B, n, n, 1)`` float32.

    Example:
        >>> x = tf.fill((1, 5, 5, 1), 2.0)
        >>> float(tf.reduce_max(apply_peak_normalise(x)))
        1.0
    """
    images = tf.convert_to_tensor(images, tf.float32)
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    patches = tf.image.extract_patches(padded, sizes=[1, 3, 3, 1], strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding="VALID")
    median = tf.math.top_k(patches, k=5, sorted=True).values[..., 4:5]
    peak = tf.reduce_max(tf.where(images != 0.0, median, -np.inf), axis=[1, 2, 3], keepdims=True)
    ok = peak > 0
    return images * tf.where(ok, 1.0 / tf.where(ok, peak, 1.0), 1.0)
