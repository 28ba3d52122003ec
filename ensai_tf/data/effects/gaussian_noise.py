"""White or coloured Gaussian noise (docs/design.md §5.3 step 4, §5.4).

The noise fields and spectra themselves live in :mod:`ensai_tf.data.noise`.
"""

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data import noise
from ensai_tf.data.draws import lerp
from ensai_tf.data.effects import base

__all__ = [
    "noise_spectrum",
    "sample_noise",
    "apply_noise",
]


def noise_spectrum(cfg, npix=conventions.NPIX):
    """The amplitude spectrum of ``cfg.noise_spectrum``, or the default model (docs/design.md §5.4).

    Args:
        cfg: :class:`ensai_tf.config.ObserveConfig`; an empty
            ``cfg.noise_spectrum`` path selects the default drizzle model.
        npix: map side, pixels.

    Returns:
        float32 ``(npix, npix)`` Fourier amplitudes, unshifted FFT order (DC at
        ``[0, 0]``).

    Raises:
        InputError: for a missing or invalid spectrum file.
    """
    if cfg.noise_spectrum:
        return noise.load_noise_spectrum(cfg.noise_spectrum, npix)
    return noise.default_noise_spectrum(npix)


def sample_noise(seeds, cfg):
    """Draw the Gaussian-noise level and colour (docs/design.md §5.3 step 4).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"noise_rms"`` ``(B,)`` ~ U(``cfg.noise_rms``), in units of
        the current image peak; ``"coloured_noise"`` ``(B,)`` bool
        (p = ``cfg.coloured_noise_prob``, else white); ``"noise_seed"``
        ``(B, 2)`` int64.
    """
    u, _, sub = base.effect_draws(seeds, base.Effect.NOISE, n_uniform=2)
    return {"noise_rms": lerp(u[:, 0], cfg.noise_rms),
            "coloured_noise": u[:, 1] < cfg.coloured_noise_prob,
            "noise_seed": sub}


def apply_noise(images, draws, spectrum=None):
    """Add white or coloured Gaussian noise of rms ``noise_rms * max(image)``.

    The white field and the coloured field (docs/design.md §5.4, unit rms, with its DC
    offset) both come from :func:`ensai_tf.data.noise.noise_fields` with
    ``noise_seed``; ``coloured_noise`` picks one per example.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict from :func:`sample_noise`.
        spectrum: ``(n, n)`` Fourier amplitudes (unshifted); None = the
            default drizzle model.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if spectrum is None:
        spectrum = noise.default_noise_spectrum(images.shape[1])
    white, coloured = noise.noise_fields(draws["noise_seed"], spectrum)
    field = tf.where(base.per_image(draws["coloured_noise"], 3), coloured, white)[..., None]
    peak = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    rms = base.per_image(tf.cast(draws["noise_rms"], tf.float32)) * peak
    return images + rms * field
