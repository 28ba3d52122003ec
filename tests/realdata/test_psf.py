"""Gaussian PSF matching (``ensai_tf.realdata.psf``, docs/design.md §8.4)."""

import numpy as np
import pytest
from realdata_files import S, centroid_arcsec

from ensai_tf import conventions, realdata


def _second_moment(image):
    """Per-axis central second moment, arcsec^2."""
    x, y = conventions.pixel_grid(image.shape[0], S)
    cx, cy = centroid_arcsec(image)
    return float((image * ((x - cx) ** 2 + (y - cy) ** 2)).sum() / image.sum() / 2.0)


@pytest.mark.parametrize("fwhm", [(0.06, 0.08), (0.12, 0.18), (0.2, 0.1)])
def test_psf_matching_gives_the_broader_gaussian(fwhm):
    n = 64
    keep = np.ones((n, n), bool)
    point = np.zeros((n, n))
    point[32, 32] = 1.0
    psf = [realdata.masked_gaussian_blur(point, f / realdata.FWHM_PER_SIGMA / S, keep)
           for f in fwhm]
    blue, red = realdata.match_psfs(psf[0], psf[1], fwhm[0], fwhm[1], keep=keep)
    broad = int(np.argmax(fwhm))
    matched = (blue, red)[1 - broad]
    np.testing.assert_array_equal((blue, red)[broad], psf[broad])  # broader band untouched
    # variances add under convolution, exactly, for sampled kernels too; the
    # sampled single-pass kernel's variance differs from sigma^2 by < 3% here
    target = (max(fwhm) / realdata.FWHM_PER_SIGMA) ** 2
    assert _second_moment(matched) == pytest.approx(target, rel=0.03)
    assert _second_moment(psf[broad]) == pytest.approx(target, rel=0.03)
    np.testing.assert_allclose(matched.sum(), 1.0, rtol=1e-6)  # flux kept
    if min(fwhm) >= 0.1:  # well sampled (sigma > 1 pixel): the same image pointwise
        np.testing.assert_allclose(matched, psf[broad], atol=2e-3 * psf[broad].max())


def test_masked_blur_ignores_masked_pixels():
    image = np.ones((30, 30))
    image[10:20, 10:20] = 0.0  # masked hole
    out = realdata.masked_gaussian_blur(image, 2.0)
    assert np.all(out[10:20, 10:20] == 0)
    # normalised convolution of a constant is the constant (no dilution by the hole)
    np.testing.assert_allclose(out[image != 0], 1.0, rtol=1e-12)
