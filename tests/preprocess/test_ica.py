"""ICA lens-light removal (docs/design.md §8.4 [R]) on closed-form two-band mixtures.

The mixtures are built here in numpy on a 96-pixel grid (the property does
not depend on the grid size) so the whole file runs in a few seconds.
"""

import numpy as np
import pytest

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess import ica

N = 96
SCALE = conventions.PIXEL_SCALE


def _scene(kappa=3.0, lens_to_arc=3.0, noise=0.005, seed=0):
    """(blue, red, arcs, lens): a ring-segment arc (theta_E 1 arcsec) and a
    round de Vaucouleurs-like lens at the centre; arcs kappa times bluer."""
    x, y = conventions.pixel_grid(N, SCALE)
    r = np.hypot(x, y)
    theta = np.arctan2(y, x)
    arcs = np.exp(-0.5 * ((r - 1.0) / 0.06) ** 2) * (0.55 + 0.45 * np.cos(theta - 0.7))
    arcs = arcs / arcs.max()
    lens = np.exp(-7.67 * ((np.hypot(r, 0.02) / 0.5) ** 0.25 - 1.0))
    lens = lens / lens.max()
    rng = np.random.default_rng(seed)
    f_lb = 0.3
    blue = arcs + f_lb * lens_to_arc * lens + noise * rng.standard_normal((N, N))
    red = arcs / (kappa * f_lb) + lens_to_arc * lens + noise * rng.standard_normal((N, N))
    return blue, red, arcs, lens


def test_recovers_the_arcs_of_a_two_band_mixture():
    blue, red, arcs, lens = _scene()
    res = ica.unmix_two_bands(blue, red)
    # 0.95 is the acceptance level; this clean mixture (noise 0.5% of
    # the arc peak) reaches about 0.99, so a wrong component (the lens light,
    # correlation about 0.1 with the arcs) or a wrong sign (-0.99) fails it
    assert ica.arc_correlation(res.arc, arcs) >= 0.95
    assert ica.arc_correlation(res.other, lens) >= 0.95
    assert ica.arc_correlation(res.arc, lens) < 0.5
    assert res.rule == "colour"


def test_arc_scale_sign_and_contract():
    from scipy import ndimage

    blue, red, _, _ = _scene()
    res = ica.unmix_two_bands(blue, red)
    # peak of the 3x3 median-filtered map is exactly 1 by construction (docs/design.md §5.7)
    np.testing.assert_allclose(ndimage.median_filter(res.arc, 3, mode="nearest").max(), 1.0,
                               rtol=1e-6)
    # sky near 0: the median of the arc map is subtracted (arcs cover few pixels)
    assert abs(np.median(res.arc)) < 1e-6
    image = ica.to_network_input(res.arc, npix=conventions.NPIX)
    assert image.shape == (conventions.NPIX, conventions.NPIX, 1) and image.dtype == np.float32
    # padding is masked (exact 0); the 96-pixel map sits in the middle
    lo = (conventions.NPIX - N) // 2
    assert np.all(image[:lo] == 0) and np.all(image[lo + N:] == 0)
    np.testing.assert_array_equal(image[lo:lo + N, lo:lo + N, 0], res.arc)


def test_band_units_and_order_of_magnitude_do_not_change_the_choice():
    blue, red, arcs, _ = _scene()
    a = ica.unmix_two_bands(blue, red).arc
    b = ica.unmix_two_bands(1e-3 * blue, 250.0 * red).arc
    # the colour rule compares weight ratios, so band units cancel; FastICA on
    # bands scaled to unit spread then gives the same map (to its tolerance)
    assert ica.arc_correlation(a, b) > 0.999


def test_masked_pixels_stay_zero_and_are_excluded_from_the_unmixing():
    blue, red, _, _ = _scene()
    mask = np.zeros((N, N), bool)
    mask[40:46, 10:30] = True  # a block on the lens-free side
    mask[60, 60] = True
    results = []
    for garbage in (0.0, 1e6):
        b, r = blue.copy(), red.copy()
        b[mask] = garbage
        r[mask] = -garbage
        results.append(ica.unmix_two_bands(b, r, mask=mask))
    for res in results:
        assert np.all(res.arc[mask] == 0.0) and np.all(res.other[mask] == 0.0)
        assert np.all(res.arc[~mask] != 0.0)  # no unmasked pixel may read as masked
        assert np.array_equal(res.mask, mask)
    # values under the mask are never seen: identical maps (float32 round-off)
    np.testing.assert_allclose(results[0].arc, results[1].arc, rtol=0, atol=1e-6)


def test_exact_zeros_in_a_band_are_masked():
    blue, red, _, _ = _scene()
    blue[5:8, 5:8] = 0.0
    res = ica.unmix_two_bands(blue, red)
    assert res.mask[5:8, 5:8].all() and np.all(res.arc[5:8, 5:8] == 0)


def test_concentration_closed_form():
    masked = np.zeros((N, N), bool)
    centre = np.zeros((N, N))
    centre[47:49, 47:49] = 1.0  # all signal within 2 pixels of the centre
    ring = np.zeros((N, N))
    ring[47:49, 80:82] = 1.0  # all signal 32 pixels away
    assert ica.component_concentration(centre, masked) == pytest.approx(1.0)
    assert ica.component_concentration(ring, masked) == pytest.approx(0.0)


def test_concentration_rule_when_colours_tie():
    blue, red, arcs, _ = _scene()
    res = ica.unmix_two_bands(blue, red, colour_margin=1e9)  # colour never decisive
    assert res.rule == "concentration"
    assert ica.arc_correlation(res.arc, arcs) >= 0.95


def test_arc_correlation_closed_form():
    a = np.random.default_rng(1).random((10, 10)) + 0.1
    assert ica.arc_correlation(3 * a + 7, a) == pytest.approx(1.0, abs=1e-12)
    assert ica.arc_correlation(-a, a) == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("case, message", [
    ("shape", "not aligned"),
    ("nan", "NaN"),
    ("all_masked", "every pixel is masked"),
    ("few", "only"),
    ("proportional", "proportional"),
    ("constant", "constant"),
])
def test_bad_input_is_named(case, message):
    blue, red, _, _ = _scene()
    mask = None
    if case == "shape":
        red = red[:-1]
    elif case == "nan":
        blue[3, 3] = np.nan
    elif case == "all_masked":
        mask = np.ones((N, N), bool)
    elif case == "few":
        mask = np.ones((N, N), bool)
        mask[:3, :3] = False
    elif case == "proportional":
        red = 2.0 * blue
    elif case == "constant":
        red = np.full_like(red, 3.0)
    with pytest.raises(InputError, match=message) as err:
        ica.unmix_two_bands(blue, red, mask=mask, name="b.fits + r.fits")
    assert "b.fits + r.fits" in str(err.value)
