"""Two filters at once: the observation chain run once per band (docs/design.md §5.10).

A network that reads both filters of a lens as channels can learn to tell
the lens galaxy from the arcs by their colours, as ICA does
(docs/design.md §8.4), but from data. :func:`observe_two_bands` makes its
images from the same noise-free arcs and lens light as a single-band image:

- **one shift** for both bands (the bands of a user's lens are registered);
- **colours** (:func:`sample_colour` / :func:`apply_colour`): the red band
  is arcs + lens light, so the lens light's drawn peak
  (``simulate.lens_light_amplitude``) is its red peak over the arcs'; the
  blue band is arcs + lens light / kappa, with kappa, the colour ratio (how
  much bluer the arcs are than the lens), log-uniform in
  ``bands.colour_ratio``;
- **every other effect drawn per band**: PSF, Poisson noise, cosmic rays,
  Gaussian noise, normalisation, zero bias and masks. The red band draws
  from the example's seeds, the blue band from
  ``fold_in(seed_i, SECOND_BAND)``, so the two bands never share noise;
- **PSF matching** (:func:`apply_psf_match`), as ``ensai predict --bands``
  matches a user's bands (docs/design.md §8.4): after the noise, the band
  with the narrower Gaussian PSF is blurred to the broader one;
- with ``observe.peak_normalise``, each band divided by its own peak.

Channels are ``(blue, red)``, the order of ``ensai predict --bands BLUE RED``.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from ensai_tf import config
    >>> cfg = config.get_preset("paper")
    >>> arcs = np.zeros((1, 32, 32, 1), np.float32); arcs[0, 10:14, 10:22] = 1.0
    >>> out = observe_two_bands(arcs, np.array([[1.0, 0, 0, 0, 0]], np.float32),
    ...                         tf.constant([[1, 2]], tf.int64), cfg.observe, cfg.bands)
    >>> out["image"].shape
    TensorShape([1, 32, 32, 2])
"""

import math

import tensorflow as tf

from ensai_tf.data.draws import fold_seeds, lerp
from ensai_tf.data.effects.base import Effect, effect_draws
from ensai_tf.data.observe import (apply_cosmic_rays, apply_masks, apply_noise, apply_normalise,
                                   apply_peak_normalise, apply_poisson, apply_psf, apply_shift,
                                   apply_zero_bias, blur_matrices, run_chain, sample_cosmic_rays,
                                   sample_masks,
                                   sample_noise, sample_normalise, sample_poisson, sample_psf,
                                   sample_shift, sample_zero_bias, shift_params)

__all__ = [
    "BAND_NAMES",
    "SECOND_BAND",
    "COLOUR",
    "sample_colour",
    "apply_colour",
    "apply_psf_match",
    "observe_two_bands",
]

BAND_NAMES = ("blue", "red")
"""The channels of a two-band image, in order."""

SECOND_BAND = max(Effect) + 1
"""Index folded into an example's seed to get the blue band's seeds (beyond every
:class:`~ensai_tf.data.effects.base.Effect`, so no stream is shared)."""

COLOUR = max(Effect) + 2
"""Effect index of the colour draw."""


def sample_colour(seeds, colour_ratio):
    """Draw each example's colour ratio kappa, log-uniform.

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        colour_ratio: ``(lo, hi)`` of kappa (``bands.colour_ratio``), both > 0.

    Returns:
        dict: ``"colour_ratio"`` ``(B,)`` float32.
    """
    u, _, _ = effect_draws(seeds, COLOUR, n_uniform=1)
    lo, hi = (math.log(float(v)) for v in colour_ratio)
    return {"colour_ratio": tf.exp(lerp(u[:, 0], (lo, hi)))}


def apply_colour(arcs, lens_light, draws):
    """The two noise-free bands: ``(blue, red) = (arcs + L / kappa, arcs + L)``.

    Args:
        arcs: ``(B, n, n, 1)`` float32 shifted noise-free arcs.
        lens_light: ``(B, n, n, 1)`` float32 shifted lens light (red-band units).
        draws: dict from :func:`sample_colour`.

    Returns:
        ``(B, n, n, 2)`` float32, channels :data:`BAND_NAMES`.
    """
    kappa = tf.reshape(tf.cast(draws["colour_ratio"], tf.float32), [-1, 1, 1, 1])
    return tf.concat([arcs + lens_light / kappa, arcs + lens_light], axis=-1)


def _effective_sigma(draws, fixed_kernel):
    """Gaussian PSF sigma of each example, pixels (0 where no PSF, or a fixed kernel)."""
    sigma = tf.cast(draws["psf_sigma_pix"], tf.float32)
    if fixed_kernel:
        return tf.zeros_like(sigma)
    return tf.where(draws["apply_psf"], sigma, tf.zeros_like(sigma))


def apply_psf_match(images, sigma_pix, max_sigma_pix):
    """Blur each band of ``images`` to the broadest Gaussian PSF of its example.

    Band ``b`` is convolved with a Gaussian of ``sqrt(max(sigma)^2 - sigma_b^2)``
    pixels (none for the broadest band), with the reflect boundary of
    :func:`~ensai_tf.data.effects.psf.blur_matrices`: the TF counterpart of
    :func:`ensai_tf.realdata.psf.match_psfs` for a user's bands.

    Args:
        images: ``(B, n, n, K)`` float32, one band per channel.
        sigma_pix: ``(B, K)`` Gaussian PSF sigma of each band, pixels.
        max_sigma_pix: largest sigma possible, pixels (sets the truncation).

    Returns:
        ``(B, n, n, K)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    sigma = tf.convert_to_tensor(sigma_pix, tf.float32)
    match = tf.sqrt(tf.maximum(tf.reduce_max(sigma, axis=1, keepdims=True) ** 2 - sigma ** 2, 0.0))
    npix = images.shape[1]
    half = min(int(math.ceil(4.0 * max_sigma_pix)), npix - 1)
    bands = []
    for k in range(images.shape[-1]):
        w = blur_matrices(match[:, k], npix, half)
        bands.append(tf.matmul(tf.matmul(w, images[..., k]), w, transpose_b=True))
    return tf.stack(bands, axis=-1)


def _band_draws(seeds, shifted, cfg, training):
    draws = {}
    for sample in (sample_psf, sample_poisson, sample_noise, sample_normalise, sample_zero_bias):
        draws.update(sample(seeds, cfg))
    draws.update(sample_cosmic_rays(seeds, cfg, shifted.shape[1]))
    draws.update(sample_masks(seeds, shifted, cfg, training))
    return draws


def _blurred_noisy(image, draws, cfg, kernel, spectrum):
    image = apply_psf(image, draws, kernel, max_sigma_pix=cfg.psf_sigma_pix[1])
    image = apply_poisson(image, draws, cfg.poisson_exact_below)
    image = apply_cosmic_rays(image, draws)
    return apply_noise(image, draws, spectrum)


def _finished(image, draws, shifted, cfg):
    image = apply_normalise(image, draws, shifted, cfg.norm_threshold)
    image = apply_zero_bias(image, draws)
    image, mask = apply_masks(image, draws, cfg.mask_radius_arcsec)
    if cfg.peak_normalise:
        image = apply_peak_normalise(image)  # docs/design.md §5.7: each band's own peak
    return image, mask


def _chain(arcs, params, seeds, cfg, bands_cfg, training, lens_light, kernel, spectrum):
    """One pass of the two-band chain (shared shift, per-band effects, PSF matching)."""
    draws = dict(sample_shift(seeds, arcs, params, cfg))
    shifted = apply_shift(arcs, draws)
    labels = shift_params(params, draws)
    light = tf.zeros_like(shifted) if lens_light is None else apply_shift(lens_light, draws)
    draws.update(sample_colour(seeds, bands_cfg.colour_ratio))
    coloured = apply_colour(shifted, light, draws)
    band_seeds = {"blue": fold_seeds(seeds, SECOND_BAND), "red": seeds}
    band_draws = {name: _band_draws(band_seeds[name], shifted, cfg, training)
                  for name in BAND_NAMES}
    noisy = tf.concat([_blurred_noisy(coloured[..., k:k + 1], band_draws[name], cfg, kernel,
                                      spectrum) for k, name in enumerate(BAND_NAMES)], axis=-1)
    sigma = tf.stack([_effective_sigma(band_draws[name], kernel is not None)
                      for name in BAND_NAMES], axis=1)
    matched = apply_psf_match(noisy, sigma, cfg.psf_sigma_pix[1])
    images, masks = zip(*[_finished(matched[..., k:k + 1], band_draws[name], shifted, cfg)
                          for k, name in enumerate(BAND_NAMES)])
    for name in BAND_NAMES:
        draws.update({f"{name}_{key}": value for key, value in band_draws[name].items()})
    return {"image": tf.concat(images, axis=-1), "params": labels,
            "mask": tf.concat(masks, axis=-1), "draws": draws}


def observe_two_bands(arcs, params, seeds, cfg, bands_cfg, training=True, lens_light=None):
    """Observe a batch of noise-free arcs (and lens light) in two bands.

    Pure TF and graph-safe, like :func:`ensai_tf.data.observe.observe`, with
    its redraw of non-finite examples; example ``i`` depends only on its own
    rows and seed.

    Args:
        arcs: ``(B, n, n, 1)`` float32 noise-free arcs, peak 1.
        params: ``(B, 5)`` labels (theta_E, e_x, e_y, x_L, y_L); arcsec, -, -, arcsec, arcsec.
        seeds: ``(B, 2)`` int per-example stateless seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig` (each band's effects).
        bands_cfg: :class:`ensai_tf.config.BandsConfig` (the colour ratios).
        training: selects the mask flux floor (0.75 train, 0.98 eval).
        lens_light: optional ``(B, n, n, 1)`` lens light, its peak in units of the arcs' red peak.

    Returns:
        dict: ``"image"`` ``(B, n, n, 2)`` float32 (blue, red); ``"params"``
        ``(B, 5)`` shifted labels; ``"mask"`` ``(B, n, n, 2)`` (1 = kept);
        ``"draws"``: the shift and colour draws, and each band's draws
        prefixed ``blue_`` or ``red_``.

    Raises:
        InputError: for inputs of the wrong rank, shape or dtype.
    """
    def chain(arcs, params, seeds, lens_light, kernel, spectrum):
        return _chain(arcs, params, seeds, cfg, bands_cfg, training, lens_light, kernel, spectrum)

    return run_chain(chain, arcs, params, seeds, cfg, lens_light)
