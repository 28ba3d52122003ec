"""Fitted lens-light subtraction (``ensai_tf.preprocess.lens_fit``, docs/design.md §8.4).

Closed-form scenes on a 96-pixel grid: a PSF-convolved elliptical Sersic,
alone (its parameters come back) or with a ring of arcs (the residual is the
arcs). The Sersic here is the model's own definition (half-pixel core, the
same Gaussian convolution), so the ``"sersic"`` fit of a noiseless image is
exact up to the optimiser's tolerance.
"""

import math

import numpy as np
import pytest
from scipy import ndimage

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess import ica, lens_fit

N = 96
SCALE = conventions.PIXEL_SCALE
FWHM = 0.08  # arcsec
TRUE = {"n": 2.5, "r_eff": 0.35, "q": 0.7, "angle": 0.6, "x0": 0.03, "y0": -0.02}


def _blur(image):
    return ndimage.gaussian_filter(image, FWHM / (2 * math.sqrt(2 * math.log(2))) / SCALE,
                                   mode="nearest")


def _lens(peak=5.0):
    x, y = lens_fit.image_coordinates((N, N), SCALE)
    t = TRUE
    lens = _blur(lens_fit.sersic_image(x, y, 1.0, t["n"], t["r_eff"], t["q"], t["angle"],
                                       t["x0"], t["y0"], core=0.5 * SCALE))
    return peak * lens / lens.max()


def _ring():
    """Arcs: a ring segment of radius 1.1 arcsec, peak 1 after the PSF."""
    x, y = lens_fit.image_coordinates((N, N), SCALE)
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    ring = _blur(np.exp(-0.5 * ((r - 1.1) / 0.05) ** 2) * (0.3 + 0.7 * np.cos(theta - 1.0) ** 2))
    return ring / ring.max()


def test_image_coordinates_match_the_network_grid():
    x, y = lens_fit.image_coordinates((N, N), SCALE)
    gx, gy = conventions.pixel_grid(N, SCALE)
    np.testing.assert_array_equal(x, gx)
    np.testing.assert_array_equal(y, gy)


def test_sersic_image_matches_the_tensorflow_profile():
    from ensai_tf.lensing import light

    x, y = lens_fit.image_coordinates((N, N), SCALE)
    args = (1.3, 3.0, 0.4, 0.6, 0.9, 0.05, -0.1)
    ours = lens_fit.sersic_image(x, y, *args, core=0.02)
    theirs = light.elliptical_sersic(x, y, *args, core=0.02).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_noiseless_sersic_is_recovered_by_the_sersic_fit():
    image = _lens()
    model, p = lens_fit.fit_lens_light(image, SCALE, psf_fwhm=FWHM, model="sersic",
                                       fit_radius=1.8)
    # tolerances: n and r_eff to 1%, q to 0.005, angle to 0.01 rad, centre to 1/20 pixel
    assert p["n"] == pytest.approx(TRUE["n"], rel=0.01)
    assert p["r_eff"] == pytest.approx(TRUE["r_eff"], rel=0.01)
    assert p["q"] == pytest.approx(TRUE["q"], abs=0.005)
    assert p["angle"] % math.pi == pytest.approx(TRUE["angle"], abs=0.01)
    assert p["x0"] == pytest.approx(TRUE["x0"], abs=SCALE / 20)
    assert p["y0"] == pytest.approx(TRUE["y0"], abs=SCALE / 20)
    # residual ~ 0: below 0.1% of the peak everywhere
    assert np.abs(image - model).max() < 1e-3 * image.max()
    assert not p["arc_mask"].any()


def test_noiseless_sersic_is_matched_by_the_gaussian_expansion():
    image = _lens()
    model, p = lens_fit.fit_lens_light(image, SCALE, psf_fwhm=FWHM, fit_radius=1.8)
    assert p["model"] == "mge"
    assert p["q"] == pytest.approx(TRUE["q"], abs=0.02)
    assert p["angle"] % math.pi == pytest.approx(TRUE["angle"], abs=0.03)
    assert math.hypot(p["x0"] - TRUE["x0"], p["y0"] - TRUE["y0"]) < SCALE / 10
    assert min(p["amplitudes"]) >= 0.0
    # twelve Gaussians describe an n = 2.5 profile to 1% of its peak
    assert np.abs(image - model).max() < 0.01 * image.max()


@pytest.mark.parametrize("model", ["mge", "sersic"])
def test_subtraction_leaves_the_arcs(model):
    arcs = _ring()
    noise = 0.01 * np.random.default_rng(3).standard_normal((N, N))
    image = _lens(peak=5.0) + arcs + noise
    residual = lens_fit.subtract_lens_light(image, SCALE, psf_fwhm=FWHM, model=model,
                                            fit_radius=1.8)
    # the noise alone caps the correlation at about 0.98; lens light left in
    # drops it well below (0.56 without any subtraction)
    assert ica.arc_correlation(residual, arcs) > 0.95
    assert ica.arc_correlation(image, arcs) < 0.6
    x, y = lens_fit.image_coordinates((N, N), SCALE)
    centre = np.hypot(x - TRUE["x0"], y - TRUE["y0"]) < 0.2
    # the lens core (peak 5 arc peaks) is gone to the noise level
    assert np.abs(residual[centre]).max() < 0.06
    assert abs(residual[centre].mean()) < 0.01


def test_arcs_are_marked_and_masked_pixels_stay_zero():
    arcs = _ring()
    image = _lens() + arcs
    image[10:14, 20:24] = 0.0
    _, p = lens_fit.fit_lens_light(image, SCALE, psf_fwhm=FWHM, fit_radius=1.8)
    marked = p["arc_mask"]
    assert marked[arcs > 0.3].mean() > 0.95  # the bright arc pixels were left out
    # marks grow into the arcs' faint wings (0.2-0.3 arcsec off the ring), not beyond
    x, y = lens_fit.image_coordinates((N, N), SCALE)
    assert marked[np.abs(np.hypot(x, y) - 1.1) > 0.35].mean() < 0.01
    residual = lens_fit.subtract_lens_light(image, SCALE, psf_fwhm=FWHM, fit_radius=1.8)
    assert np.all(residual[10:14, 20:24] == 0.0)


def test_fixed_shape_keeps_centre_and_shape():
    image = 0.2 * _lens() + _ring()
    shape = {"x0": TRUE["x0"], "y0": TRUE["y0"], "q": TRUE["q"], "angle": TRUE["angle"]}
    model, p = lens_fit.fit_lens_light(image, SCALE, psf_fwhm=FWHM, shape=shape,
                                       fit_radius=1.8)
    assert p["x0"] == TRUE["x0"] and p["y0"] == TRUE["y0"]
    assert p["q"] == pytest.approx(TRUE["q"], abs=1e-12)
    assert p["angle"] == pytest.approx(TRUE["angle"], abs=1e-12)
    # the faint lens (peak 1) under bright arcs is still subtracted
    assert np.abs(image - _ring() - model).max() < 0.05


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(InputError, match="unknown lens-light model 'moffat'"):
        lens_fit.fit_lens_light(_lens(), SCALE, model="moffat")
    with pytest.raises(InputError, match="2-D image"):
        lens_fit.fit_lens_light(np.ones(50), SCALE)
    bad = _lens()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        lens_fit.fit_lens_light(bad, SCALE)
    with pytest.raises(InputError, match="shape must be a dict"):
        lens_fit.fit_lens_light(_lens(), SCALE, shape={"x0": 0.0})
    with pytest.raises(InputError, match="too few to fit"):
        lens_fit.fit_lens_light(_lens(), SCALE, mask=np.ones((N, N), bool))
