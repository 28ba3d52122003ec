"""Cosmic rays and hot pixels (docs/design.md §5.3 step 3, §5.5 [R]).

The event maps themselves are drawn and rendered by :mod:`ensai_tf.data.noise`.
"""

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data import noise
from ensai_tf.data.draws import lerp
from ensai_tf.data.effects import base

__all__ = [
    "sample_cosmic_rays",
    "apply_cosmic_rays",
]


def sample_cosmic_rays(seeds, cfg, npix=conventions.NPIX):
    """Draw a cosmic-ray/hot-pixel map per example (docs/design.md §5.3 step 3, §5.5 [R]).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig` (event counts, lengths in
            pixels, and values).
        npix: image side, pixels.

    Returns:
        dict: ``"apply_cosmic_rays"`` ``(B,)`` bool (p = ``cfg.cosmic_prob``),
        ``"cosmic_scale"`` ``(B,)`` ~ U(``cfg.cosmic_scale``), and the map as
        sparse events ``"cosmic_rows"``, ``"cosmic_cols"`` ``(B, E)`` int32,
        ``"cosmic_values"`` ``(B, E)`` float32 (map max 1), see
        :func:`ensai_tf.data.noise.cosmic_ray_events`.
    """
    u, _, sub = base.effect_draws(seeds, base.Effect.COSMIC_RAYS, n_uniform=2)
    events = noise.cosmic_ray_events(sub, npix, cfg.cosmic_ray_count, cfg.cosmic_ray_length,
                                     cfg.cosmic_ray_value, cfg.hot_pixel_count,
                                     cfg.hot_pixel_value)
    return {"apply_cosmic_rays": u[:, 0] < cfg.cosmic_prob,
            "cosmic_scale": lerp(u[:, 1], cfg.cosmic_scale),
            "cosmic_rows": events["rows"], "cosmic_cols": events["cols"],
            "cosmic_values": events["values"]}


def apply_cosmic_rays(images, draws):
    """Add ``cosmic_scale`` times the rendered event map where ``apply_cosmic_rays``.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict from :func:`sample_cosmic_rays`.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    rays = noise.render_events(draws["cosmic_rows"], draws["cosmic_cols"],
                               draws["cosmic_values"], images.shape[1])
    scale = tf.where(draws["apply_cosmic_rays"],
                     tf.cast(draws["cosmic_scale"], tf.float32), 0.0)
    return images + base.per_image(scale) * rays
