"""Gaussian PSF matching of two bands, ignoring masked pixels (docs/design.md §8.4 [R]).

The sharper band is convolved with the Gaussian that brings its PSF to the
broader one's (:func:`match_psfs`); the convolution is normalised over the
usable pixels (:func:`masked_gaussian_blur`), so masks do not bleed.
"""

import math

import numpy as np
from scipy import ndimage

from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = ["FWHM_PER_SIGMA", "MAX_PSF_FWHM_ARCSEC", "MAX_KERNEL_SIGMA_PIX", "gaussian_sigma_pix",
           "masked_gaussian_blur", "match_psfs"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM of a Gaussian in units of its sigma, ``2 sqrt(2 ln 2)`` (about 2.3548)."""

MAX_PSF_FWHM_ARCSEC = 5.0
"""Largest PSF FWHM accepted, arcsec (ground-based seeing is about 0.5-2 arcsec)."""

MAX_KERNEL_SIGMA_PIX = 200.0
"""Largest matching-kernel sigma, pixels: wider kernels would cost minutes for nothing
(the network sees a 7.7-arcsec field)."""


def gaussian_sigma_pix(fwhm_from, fwhm_to, pixel_scale=conventions.PIXEL_SCALE):
    """Sigma of the Gaussian that broadens a Gaussian PSF from one FWHM to another.

    Args:
        fwhm_from, fwhm_to: PSF FWHMs, arcsec, ``fwhm_to >= fwhm_from``.
        pixel_scale: pixel side, arcsec.

    Returns:
        sigma in pixels: ``sqrt(fwhm_to**2 - fwhm_from**2) / 2.3548 / pixel_scale``.

    Raises:
        InputError: ``fwhm_to < fwhm_from``.

    Example:
        >>> round(gaussian_sigma_pix(0.06, 0.10), 3)
        0.849
    """
    if fwhm_to < fwhm_from:
        raise InputError(f"PSF FWHM {fwhm_to} arcsec is smaller than {fwhm_from}; a Gaussian "
                         "kernel can only broaden")
    return math.sqrt(fwhm_to ** 2 - fwhm_from ** 2) / FWHM_PER_SIGMA / pixel_scale


def masked_gaussian_blur(image, sigma_pix, keep=None):
    """Gaussian blur that ignores masked pixels (normalised convolution).

    Args:
        image: ``(H, W)`` image; exact zeros are masked.
        sigma_pix: Gaussian sigma, pixels (0 = no change).
        keep: optional ``(H, W)`` bool of usable pixels (default: non-zero).

    Returns:
        ``(H, W)`` float64: ``G * (image keep) / G * keep`` on kept pixels,
        exactly 0 elsewhere. Away from masks and edges it is the plain
        convolution, which conserves flux.
    """
    image = np.asarray(image, dtype=np.float64)
    keep = (image != 0) if keep is None else np.asarray(keep, dtype=bool)
    if sigma_pix <= 0:
        return np.where(keep, image, 0.0)
    num = ndimage.gaussian_filter(np.where(keep, image, 0.0), sigma_pix, mode="constant")
    den = ndimage.gaussian_filter(keep.astype(np.float64), sigma_pix, mode="constant")
    return np.where(keep, num / np.where(den > 0, den, 1.0), 0.0)


def match_psfs(blue, red, fwhm_blue, fwhm_red, pixel_scale=conventions.PIXEL_SCALE, keep=None):
    """Bring two Gaussian-PSF bands to the broader PSF (docs/design.md §8.4 [R]).

    Args:
        blue, red: ``(H, W)`` images on one grid; exact zeros are masked.
        fwhm_blue, fwhm_red: PSF FWHM of each band, arcsec.
        pixel_scale: pixel side, arcsec.
        keep: optional ``(H, W)`` bool of usable pixels.

    Returns:
        ``(blue, red)``: the sharper band convolved with the Gaussian of
        :func:`gaussian_sigma_pix`, the other unchanged (masked pixels 0).

    Raises:
        InputError: a FWHM that is not finite, not positive or above
            :data:`MAX_PSF_FWHM_ARCSEC`, or a kernel wider than
            :data:`MAX_KERNEL_SIGMA_PIX` pixels.
    """
    for fwhm in (fwhm_blue, fwhm_red):
        if not (math.isfinite(fwhm) and 0 < fwhm <= MAX_PSF_FWHM_ARCSEC):
            raise InputError(f"PSF FWHM {fwhm:.6g} arcsec is out of range: give values above 0 "
                             f"and at most {MAX_PSF_FWHM_ARCSEC:g} arcsec")
    sharp_is_blue = fwhm_blue <= fwhm_red
    sigma = gaussian_sigma_pix(*sorted((fwhm_blue, fwhm_red)), pixel_scale)
    if not sigma <= MAX_KERNEL_SIGMA_PIX:
        raise InputError(f"matching PSFs of {fwhm_blue:.6g} and {fwhm_red:.6g} arcsec on "
                         f"{pixel_scale:.6g}-arcsec pixels needs a Gaussian of sigma {sigma:.6g} "
                         f"pixels; at most {MAX_KERNEL_SIGMA_PIX:g} is allowed")
    if sharp_is_blue:
        return masked_gaussian_blur(blue, sigma, keep), masked_gaussian_blur(red, 0.0, keep)
    return masked_gaussian_blur(blue, 0.0, keep), masked_gaussian_blur(red, sigma, keep)
