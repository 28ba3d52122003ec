"""Cosmic-ray detection in one band (docs/design.md §8.4 step 2).

L.A.Cosmic from ``astroscrappy`` when it is installed, else a simple
median-contrast sigma clip; each detected group later becomes a 0.2 arcsec
mask disc, like the paper's manual masks.
"""

import numpy as np
from scipy import ndimage

from ensai_tf.errors import InputError

__all__ = ["detect_cosmic_rays", "cosmic_ray_centres"]

_METHODS = ("auto", "lacosmic", "laplacian")


def _robust_noise(resid):
    """1.4826 x MAD of ``resid``, or its standard deviation where the MAD is 0."""
    noise = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    return noise if noise > 0 else max(np.std(resid), 1e-30)


def _laplacian_cosmics(image, keep, sigclip, objlim):
    """Cosmic-ray pixels by a median-contrast sigma clip (no dependency).

    A pixel is flagged when its excess over the 3x3 median,
    ``image - med3``, exceeds ``sigclip`` times the robust noise of that
    excess (1.4826 x MAD over unmasked pixels) **and** ``objlim`` times the
    local fine structure ``max(med3 - med7(med3), noise)``. The second test
    is L.A.Cosmic's (van Dokkum 2001): a PSF-smoothed arc or galaxy peak has
    a large fine-structure term, a one- or two-pixel hit does not.
    """
    filled = np.where(keep, image, np.median(image[keep]))
    med3 = ndimage.median_filter(filled, size=3, mode="nearest")
    excess = filled - med3
    noise = _robust_noise(excess[keep])
    fine = ndimage.median_filter(med3, size=7, mode="nearest")
    structure = np.maximum(med3 - fine, noise)
    return keep & (excess > sigclip * noise) & (excess > objlim * structure)


def _lacosmic(astroscrappy, image, keep, sigclip, objlim):
    """``astroscrappy.detect_cosmics`` with a constant robust sky variance."""
    sky = np.median(image[keep])
    noise = _robust_noise(image[keep] - sky)
    var = np.full(image.shape, noise ** 2, dtype=np.float32)
    crmask, _ = astroscrappy.detect_cosmics(
        (image - sky).astype(np.float32), inmask=~keep, invar=var, sigclip=sigclip,
        objlim=objlim, readnoise=0.0, gain=1.0, satlevel=np.inf, verbose=False)
    return np.asarray(crmask, dtype=bool) & keep


def detect_cosmic_rays(image, mask=None, method="auto", sigclip=6.0, objlim=5.0):
    """Flag bright cosmic-ray pixels in one band.

    Args:
        image: ``(H, W)`` image, any flux unit; exact zeros are masked.
        mask: optional ``(H, W)`` bool of pixels to ignore.
        method: ``"lacosmic"`` (``astroscrappy.detect_cosmics``, L.A.Cosmic,
            with the noise variance estimated from the image as a constant
            robust sky variance since the gain of a drizzled image is
            unknown), ``"laplacian"`` (a median-contrast sigma clip with
            L.A.Cosmic's fine-structure test, no dependency), or ``"auto"``
            (lacosmic when astroscrappy is installed).
        sigclip: detection threshold, in noise sigmas (6: only bright hits; the
            median-contrast excess has heavier tails than the pixel noise).
        objlim: minimum contrast against the local fine structure, so that
            PSF-smoothed arcs are not flagged.

    Returns:
        ``(H, W)`` bool, True on cosmic-ray pixels.

    Raises:
        InputError: an unknown method, or ``"lacosmic"`` without astroscrappy.
    """
    image = np.asarray(image, dtype=np.float64)
    keep = image != 0
    if mask is not None:
        keep &= ~np.asarray(mask, dtype=bool)
    if keep.sum() < 49:
        return np.zeros(image.shape, dtype=bool)
    if method not in _METHODS:
        raise InputError(f"unknown cosmic-ray method {method!r}; use auto, lacosmic or laplacian")
    if method in ("auto", "lacosmic"):
        try:
            import astroscrappy  # optional dependency: L.A.Cosmic, else the fallback below
        except ImportError:
            if method == "lacosmic":
                raise InputError("cosmic-ray method 'lacosmic' needs astroscrappy "
                                 "(pip install astroscrappy)") from None
        else:
            return _lacosmic(astroscrappy, image, keep, sigclip, objlim)
    return _laplacian_cosmics(image, keep, sigclip, objlim)


def cosmic_ray_centres(cr_map):
    """Centroids ``(col, row)`` of the connected groups of a cosmic-ray map.

    Args:
        cr_map: ``(H, W)`` bool (or 0/1) map, True on cosmic-ray pixels,
            indexed ``[row, col]``.

    Returns:
        ``(K, 2)`` float64 pixel positions (8-connected groups).

    Example:
        >>> hits = np.zeros((5, 5), bool)
        >>> hits[1, 3] = hits[2, 3] = True
        >>> cosmic_ray_centres(hits).tolist()
        [[3.0, 1.5]]
    """
    labels, count = ndimage.label(np.asarray(cr_map, bool), structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros((0, 2))
    rows, cols = np.mgrid[0:labels.shape[0], 0:labels.shape[1]]
    index = np.arange(1, count + 1)
    return np.stack([ndimage.mean(cols, labels, index), ndimage.mean(rows, labels, index)],
                    axis=1)
