"""Tests of the docs/design.md §0 conventions."""

import numpy as np

from ensai_tf import conventions as cv


def test_parameter_names_and_indices_agree():
    assert cv.PARAM_NAMES == ("theta_e", "e_x", "e_y", "x_l", "y_l")
    for p in cv.Param:
        assert cv.PARAM_NAMES[p] == p.name.lower()
    assert cv.ELLIPTICITY_INDICES == (1, 2)


def test_pixel_centres_are_symmetric_about_the_origin():
    c = cv.pixel_coordinates()
    assert c.shape == (192,)
    np.testing.assert_allclose(c[95], -0.02, atol=1e-15)
    np.testing.assert_allclose(c[96], 0.02, atol=1e-15)
    np.testing.assert_allclose(np.diff(c), 0.04, atol=1e-15)


def test_oversampled_grid_block_averages_to_output_grid():
    fine = cv.pixel_coordinates(oversample=4)
    np.testing.assert_allclose(fine.reshape(192, 4).mean(axis=1), cv.pixel_coordinates(), atol=1e-14)


def test_grid_has_x_along_columns_and_y_along_rows():
    x, y = cv.pixel_grid()
    assert x[0, 10] > x[0, 9] and np.all(x[:, 10] == x[0, 10])
    assert y[10, 0] > y[9, 0] and np.all(y[10, :] == y[10, 0])


def test_major_axis_is_at_phi_plus_ninety():
    e_x, e_y = cv.ellipticity_from_q_phi(0.5, np.radians(30.0))
    np.testing.assert_allclose(cv.mass_major_axis_angle(e_x, e_y), 120.0, atol=1e-12)
    q, phi = cv.q_phi_from_ellipticity(e_x, e_y)
    np.testing.assert_allclose([q, np.degrees(phi)], [0.5, 30.0], atol=1e-12)
    # Parity: the negated ellipticity is the same lens.
    np.testing.assert_allclose(cv.mass_major_axis_angle(-e_x, -e_y), 120.0, atol=1e-12)
