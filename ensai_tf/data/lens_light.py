"""Lens light: an elliptical Sersic around the lens (docs/design.md §4 [R], invented values).

Only with ``simulate.lens_light``; the image is returned separately and
added by the observation step before the PSF.
"""

import math

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data.draws import lerp, uniforms
from ensai_tf.lensing import light, raytrace

__all__ = [
    "sample_lens_light",
    "render_lens_light",
]


def sample_lens_light(seeds, params, cfg):
    """Draw the lens-light Sersic of each example (docs/design.md §4 [R], invented values).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        params: ``(B, 5)`` lens parameters.
        cfg: :class:`ensai_tf.config.SimulateConfig`.

    Returns:
        dict of ``(B,)`` float32: ``"n"`` ~ U(cfg.lens_light_n); ``"r_eff"``
        ~ U(cfg.lens_light_r_eff), arcsec (circularised); ``"q"`` = mass q
        + U(-j, j) clipped to [0.3, 1]; ``"angle"`` = mass major-axis angle
        ``phi + pi/2`` + N(0, cfg.lens_light_pa_sigma_deg), radians from +x
        towards +y; ``"amplitude"``: peak relative to the arc peak,
        log-uniform in cfg.lens_light_amplitude; ``"x0"``, ``"y0"`` = (x_L,
        y_L), arcsec.
    """
    u = uniforms(tf.cast(seeds, tf.int64), 5)
    e_x, e_y = params[:, conventions.Param.E_X], params[:, conventions.Param.E_Y]
    q_mass = 1.0 - tf.sqrt(tf.square(e_x) + tf.square(e_y))
    jitter = float(cfg.lens_light_q_jitter)
    lo, hi = (math.log(float(a)) for a in cfg.lens_light_amplitude)
    pa_sigma = float(cfg.lens_light_pa_sigma_deg) * math.pi / 180.0
    normal = tf.math.ndtri(tf.clip_by_value(u[:, 3], 1e-7, 1.0 - 1e-7))
    return {
        "n": lerp(u[:, 0], cfg.lens_light_n),
        "r_eff": lerp(u[:, 1], cfg.lens_light_r_eff),
        "q": tf.clip_by_value(q_mass + jitter * (2.0 * u[:, 2] - 1.0), 0.3, 1.0),
        "angle": tf.atan2(e_y, e_x) + 0.5 * math.pi + pa_sigma * normal,
        "amplitude": tf.exp(lo + (hi - lo) * u[:, 4]),
        "x0": params[:, conventions.Param.X_L],
        "y0": params[:, conventions.Param.Y_L],
    }


def render_lens_light(draws, geo):
    """Lens-light images ``(B, npix, npix)`` with peak ``draws["amplitude"]`` (docs/design.md §4 [R]).

    The elliptical Sersic is evaluated on the oversampled output grid (with a
    half-sub-pixel core) and block-averaged to output pixels, then scaled to
    peak ``amplitude``.

    Args:
        draws: dict of ``(B,)`` float32 from :func:`sample_lens_light`: ``"n"``,
            ``"r_eff"`` (arcsec), ``"q"``, ``"angle"`` (radians from +x towards
            +y), ``"amplitude"`` (relative to the arc peak), ``"x0"``, ``"y0"``
            (arcsec).
        geo: dict from :func:`ray_geometry` (``"x_fine"``, ``"y_fine"``,
            ``"scale"``, ``"oversample"``).

    Returns:
        ``(B, npix, npix)`` float32 images.
    """
    p = {k: v[:, None, None] for k, v in draws.items()}
    core = 0.5 * geo["scale"] / geo["oversample"]  # half a sub-pixel tames the n = 6 cusp
    fine = light.elliptical_sersic(geo["x_fine"], geo["y_fine"], 1.0, p["n"], p["r_eff"],
                                   p["q"], p["angle"], p["x0"], p["y0"], core=core)
    image = raytrace.block_average(fine, geo["oversample"])
    peak = tf.reduce_max(image, axis=(1, 2), keepdims=True)
    return p["amplitude"] * tf.math.divide_no_nan(image, peak)
