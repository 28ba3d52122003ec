"""Reading, resampling, grid fitting and normalisation of user images (ensai_tf.preprocess.images)."""

import numpy as np
import pytest

from ensai_tf.preprocess import images as prep


# ------------------------------------------------------------------ geometry


def test_resample_conserves_flux_and_halves_size():
    """Rebinning 0.02" -> 0.04" keeps the total flux to float64 precision."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 1.0, size=(40, 60))
    out, ratio = prep.resample_flux_conserving(image, (0.02, 0.02), 0.04)
    assert out.shape == (20, 30)
    assert ratio == (0.5, 0.5)
    # exact 2x2 block sums: tolerance is float64 round-off
    np.testing.assert_allclose(out, image.reshape(20, 2, 30, 2).sum(axis=(1, 3)), rtol=1e-12)


def test_resample_upsampling_spreads_flux_evenly():
    """0.08" -> 0.04": each input pixel's flux splits into four equal parts."""
    image = np.arange(1.0, 17.0).reshape(4, 4)
    out, _ = prep.resample_flux_conserving(image, (0.08, 0.08), 0.04)
    np.testing.assert_allclose(out, np.kron(image, np.ones((2, 2))) / 4.0, rtol=1e-12)
    np.testing.assert_allclose(out.sum(), image.sum(), rtol=1e-12)


def test_resample_keeps_masks_and_does_not_dilute():
    """A masked (zero) block stays exactly 0; neighbours keep their value."""
    image = np.full((8, 8), 2.0)
    image[:4, :4] = 0.0
    out, _ = prep.resample_flux_conserving(image, (0.02, 0.02), 0.04)
    assert np.all(out[:2, :2] == 0.0)
    np.testing.assert_allclose(out[2:, 2:], 8.0, rtol=1e-12)


@pytest.mark.parametrize("shape", [(100, 130), (250, 192), (193, 191)])
def test_fit_to_grid_is_central(shape):
    """The pixel at the input centre lands at the output centre (95.5, 95.5)."""
    image = np.zeros(shape)
    yy, xx = np.indices(shape)
    image = (xx + 1000.0 * yy).astype(float)
    out, (sx, sy) = prep.fit_to_grid(image, 192)
    assert out.shape == (192, 192)
    assert sx == (shape[1] - 192) // 2 and sy == (shape[0] - 192) // 2
    # output pixel (r, c) comes from input (r + sy, c + sx) wherever they overlap
    r, c = 100, 80
    if 0 <= r + sy < shape[0] and 0 <= c + sx < shape[1]:
        assert out[r, c] == image[r + sy, c + sx]
    if sx < 0:
        assert np.all(out[:, : -sx] == 0.0)


def test_normalise_peak_ignores_a_hot_pixel(arc_image):
    image = arc_image(peak=3.0)
    image[10, 10] = 500.0
    out = prep.normalise_peak(image)
    assert 0.95 < np.max(out[50:150, 50:150]) < 1.05  # median filter: ~1% of the peak
    assert out[10, 10] > 100
