"""Point-spread function: per-example Gaussian, a PSF file or the Airy-halo model.

docs/design.md §5.3 step 1 (Gaussian, probability ``psf_prob``) and §8.5
(a fixed measured or analytic kernel).
"""

import math
import os

import numpy as np
import tensorflow as tf
from astropy.io import fits
from scipy import special

from ensai_tf import conventions
from ensai_tf.data.draws import lerp
from ensai_tf.data.effects import base
from ensai_tf.errors import InputError

__all__ = [
    "sample_psf",
    "blur_matrices",
    "apply_psf",
    "load_psf",
    "airy_halo_psf",
    "psf_kernel",
]

_MOFFAT_BETA = 2.5
_AIRY_FWHM_PER_LAMBDA_D = 1.028935  # FWHM of the Airy disc, in units of lambda/D


def sample_psf(seeds, cfg):
    """Draw the PSF decision and Gaussian width (docs/design.md §5.3 step 1, §9 #1).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"apply_psf"`` ``(B,)`` bool (p = ``cfg.psf_prob``) and
        ``"psf_sigma_pix"`` ``(B,)`` float32 ~ U(``cfg.psf_sigma_pix``), pixels.
    """
    u, _, _ = base.effect_draws(seeds, base.Effect.PSF, n_uniform=2)
    return {"apply_psf": u[:, 0] < cfg.psf_prob,
            "psf_sigma_pix": lerp(u[:, 1], cfg.psf_sigma_pix)}


def blur_matrices(sigma_pix, npix, half):
    """Per-example 1-D Gaussian blur as ``(B, n, n)`` matrices, reflect boundary.

    ``W[i, j]`` is the weight of input pixel ``j`` in output pixel ``i``:
    sampled Gaussian taps ``|d| <= half`` normalised to unit sum, with taps
    falling outside ``[0, n)`` folded back by scipy's "reflect" rule (virtual
    pixel ``-1 - j`` and ``2n - 1 - j`` read pixel ``j``), so every column
    sums to 1 and flux is conserved exactly. :func:`apply_psf` blurs with
    ``W @ X @ W^T``.

    Args:
        sigma_pix: ``(B,)`` Gaussian sigma per example, pixels.
        npix: image side, pixels.
        half: half-width of the truncated kernel, pixels (``half < npix``).

    Returns:
        ``(B, npix, npix)`` float32 blur matrices.
    """
    sigma = tf.maximum(tf.cast(sigma_pix, tf.float32), 1e-3)[:, None]
    taps = tf.range(-half, half + 1, dtype=tf.float32)
    g = tf.exp(-0.5 * (taps[None, :] / sigma) ** 2)
    g = g / tf.reduce_sum(g, axis=1, keepdims=True)
    # Lookup table over offsets d in [-(3n), 3n]: g(d) inside the band, else 0.
    span = 3 * npix
    table = tf.pad(g, [[0, 0], [span - half, span - half]])
    i = np.arange(npix)[:, None]
    j = np.arange(npix)[None, :]
    direct, low, high = j - i, -1 - j - i, 2 * npix - 1 - j - i
    offsets = np.stack([direct, low, high]) + span
    return tf.reduce_sum(tf.gather(table, tf.constant(offsets, tf.int32), axis=1), axis=1)


def _convolve_fixed(images, kernel):
    """Convolve with one 2-D kernel via FFT, scipy "reflect" boundary."""
    npix = images.shape[1]
    k = np.asarray(kernel, np.float32)
    half = k.shape[0] // 2
    size = npix + 2 * half
    padded = tf.pad(images[..., 0], [[0, 0], [half, half], [half, half]], mode="SYMMETRIC")
    canvas = np.zeros((size, size), np.float32)
    canvas[: k.shape[0], : k.shape[1]] = k
    canvas = np.roll(canvas, (-half, -half), axis=(0, 1))
    spec = tf.signal.rfft2d(tf.constant(canvas))
    out = tf.signal.irfft2d(tf.signal.rfft2d(padded) * spec, fft_length=[size, size])
    return out[:, half:half + npix, half:half + npix, None]


def apply_psf(images, draws, kernel=None, max_sigma_pix=2.5):
    """Convolve with the PSF and renormalise to max 1 where ``apply_psf``.

    Gaussian (``kernel`` None): separable per-example kernels with
    ``sigma = draws["psf_sigma_pix"]`` pixels, sampled at integer taps,
    truncated at ``ceil(4 * max_sigma_pix)`` pixels and normalised to unit sum,
    applied as two batched matrix products ``W @ X @ W^T`` (rows, then
    columns) with scipy's "reflect" boundary (docs/design.md §5.3 [C]), which conserves
    flux. A fixed 2-D ``kernel`` (``psf = "file"`` or ``"airy"``) is applied by
    FFT, with the same reflect boundary. Then each blurred image is divided
    by its maximum (docs/design.md §5.3 step 1).

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict with ``"apply_psf"`` ``(B,)`` bool and, for the Gaussian,
            ``"psf_sigma_pix"`` ``(B,)`` pixels.
        kernel: optional odd-sided square 2-D array with unit sum.
        max_sigma_pix: largest sigma drawn, pixels; sets the truncation.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if kernel is None:
        npix = images.shape[1]
        half = min(int(math.ceil(4.0 * max_sigma_pix)), npix - 1)
        w = blur_matrices(draws["psf_sigma_pix"], npix, half)
        blurred = tf.matmul(tf.matmul(w, images[..., 0]), w, transpose_b=True)[..., None]
    else:
        blurred = _convolve_fixed(images, kernel)
    return tf.where(base.per_image(draws["apply_psf"]), base.renormalise_max(blurred), images)


def _odd_square(kernel, max_side):
    """Pad a kernel to odd square sides (zeros appended) and crop to max_side."""
    rows, cols = kernel.shape
    side = max(rows, cols)
    side += 1 - side % 2
    out = np.zeros((side, side), np.float64)
    r0, c0 = (side - rows) // 2, (side - cols) // 2
    out[r0:r0 + rows, c0:c0 + cols] = kernel
    if side > max_side:
        cut = (side - max_side) // 2
        out = out[cut:cut + max_side, cut:cut + max_side]
    return out


def load_psf(path, npix=conventions.NPIX):
    """Load a user PSF image (FITS: first image HDU; or ``.npy``) once.

    The image is padded with zeros to odd square sides (its central pixel is
    the PSF centre), cropped to at most ``2 * npix - 1`` pixels and normalised
    to unit sum.

    Args:
        path: ``.fits``/``.fit``/``.fits.gz`` or ``.npy`` file with a 2-D
            PSF sampled at the image pixel scale.
        npix: image side, pixels.

    Returns:
        float32 ``(k, k)`` kernel, ``k`` odd, unit sum.

    Raises:
        InputError: missing or unreadable file, no 2-D image, non-finite
            values or a non-positive sum.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise InputError(f"PSF file {path!r} does not exist")
    try:
        if path.lower().endswith(".npy"):
            data = np.load(path, allow_pickle=False)
        else:
            with fits.open(path) as hdul:
                data = next((h.data for h in hdul
                             if h.data is not None and np.ndim(h.data) == 2), None)
                data = None if data is None else np.array(data, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise InputError(f"PSF file {path!r} cannot be read: {err}") from None
    if data is None or np.ndim(data) != 2:
        raise InputError(f"PSF file {path!r} holds no 2-D image")
    data = np.asarray(data, np.float64)
    if not np.all(np.isfinite(data)) or data.sum() <= 0:
        raise InputError(f"PSF file {path!r} must hold finite values with a positive sum")
    kernel = _odd_square(data, 2 * npix - 1)
    if kernel.sum() <= 0:
        raise InputError(f"PSF file {path!r} has no positive flux in its central "
                         f"{2 * npix - 1} pixels")
    return (kernel / kernel.sum()).astype(np.float32)


def airy_halo_psf(fwhm_arcsec=0.07, halo_fraction=0.1, halo_fwhm_arcsec=0.3,
                  pixel_scale=conventions.PIXEL_SCALE, half_size_pix=25, oversample=5):
    """Analytic Airy-core-plus-Moffat-halo PSF (docs/design.md §8.5 [R], invented numbers).

    ``PSF = (1 - f) * Airy / sum(Airy) + f * Moffat / sum(Moffat)`` on a
    ``(2 h + 1)^2`` pixel grid, each pixel averaged over ``oversample^2``
    sub-pixels, where

    - ``Airy(r) = [2 J1(x) / x]^2`` with ``x = pi r / (lambda/D)`` and
      ``lambda/D = fwhm_arcsec / 1.028935`` (so the core has that FWHM;
      0.07 arcsec is about HST at 600 nm);
    - ``Moffat(r) = (1 + (r / alpha)^2)^(-2.5)`` with
      ``alpha = halo_fwhm / (2 sqrt(2^(1/2.5) - 1))``, standing in for the
      scattered-light halo that holds ``f`` of the light.

    Args:
        fwhm_arcsec: Airy core FWHM, arcsec.
        halo_fraction: fraction of the light in the halo, in [0, 1].
        halo_fwhm_arcsec: Moffat halo FWHM, arcsec.
        pixel_scale: arcsec per pixel.
        half_size_pix: kernel half side h, pixels.
        oversample: sub-pixels per pixel per axis.

    Returns:
        float32 ``(2 h + 1, 2 h + 1)`` kernel with unit sum.
    """
    n = 2 * half_size_pix + 1
    sub = (np.arange(n * oversample) + 0.5) / oversample - n / 2.0
    x, y = np.meshgrid(sub, sub, indexing="xy")
    r = np.hypot(x, y) * pixel_scale
    lam_d = fwhm_arcsec / _AIRY_FWHM_PER_LAMBDA_D
    arg = np.pi * r / lam_d
    safe = np.where(arg > 0, arg, 1.0)
    airy = np.where(arg > 0, (2.0 * special.j1(safe) / safe) ** 2, 1.0)
    alpha = halo_fwhm_arcsec / (2.0 * np.sqrt(2.0 ** (1.0 / _MOFFAT_BETA) - 1.0))
    moffat = (1.0 + (r / alpha) ** 2) ** (-_MOFFAT_BETA)

    def pixelate(a):
        a = a.reshape(n, oversample, n, oversample).mean(axis=(1, 3))
        return a / a.sum()

    psf = (1.0 - halo_fraction) * pixelate(airy) + halo_fraction * pixelate(moffat)
    return (psf / psf.sum()).astype(np.float32)


def psf_kernel(cfg, npix=conventions.NPIX, pixel_scale=conventions.PIXEL_SCALE):
    """The fixed PSF kernel of ``cfg.psf``, or None for the Gaussian family.

    Called once when :func:`observe` is traced, so a PSF file is read once.

    Args:
        cfg: :class:`ensai_tf.config.ObserveConfig`; ``cfg.psf`` ``"file"``
            reads ``cfg.psf_file`` (:func:`load_psf`), ``"airy"`` builds
            :func:`airy_halo_psf` from ``cfg.psf_airy_fwhm_arcsec``,
            ``cfg.psf_halo_fraction`` and ``cfg.psf_halo_fwhm_arcsec``.
        npix: image side, pixels (caps a file kernel at ``2 * npix - 1``).
        pixel_scale: arcsec per pixel (of the Airy kernel).

    Returns:
        float32 ``(k, k)`` kernel, ``k`` odd, unit sum; or None for the
        per-example Gaussian PSF.

    Raises:
        InputError: for an unreadable or invalid PSF file (see :func:`load_psf`).
    """
    if cfg.psf == "file":
        return load_psf(cfg.psf_file, npix)
    if cfg.psf == "airy":
        return airy_halo_psf(cfg.psf_airy_fwhm_arcsec, cfg.psf_halo_fraction,
                             cfg.psf_halo_fwhm_arcsec, pixel_scale)
    return None
