"""Tests of critical curves, caustics, cuts and polygon helpers (docs/design.md §2.5)."""

import numpy as np
import pytest
import tensorflow as tf

from ensai_tf.lensing import caustics, raytrace


def _params(theta_e, eps, phi_deg, x_l=0.0, y_l=0.0):
    phi = np.radians(phi_deg)
    return ([theta_e], [eps * np.cos(phi)], [eps * np.sin(phi)], [x_l], [y_l])


@pytest.mark.parametrize("eps", [0.0, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("theta_e", [0.1, 1.0, 3.0])
def test_critical_curve_area_is_pi_theta_e_squared(theta_e, eps):
    curve = caustics.tangential_critical_curve(*_params(theta_e, eps, 70.0, 0.1, -0.2), num=2000)
    # Polygon with 2000 vertices: area deficit ~ (2 pi / 2000)^2 / 6 ~ 2e-6, well inside rtol 1e-3.
    np.testing.assert_allclose(caustics.polygon_area(curve).numpy(), np.pi * theta_e**2, rtol=1e-3)


def _area_second_moments(poly):
    """Centred area moments [[int x^2, int xy], [int xy, int y^2]] dA of a closed polygon (Green)."""
    x, y = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    c = x * y2 - x2 * y
    area = 0.5 * c.sum()
    cx = ((x + x2) * c).sum() / (6 * area)
    cy = ((y + y2) * c).sum() / (6 * area)
    ixx = ((x * x + x * x2 + x2 * x2) * c).sum() / 12 - area * cx * cx
    iyy = ((y * y + y * y2 + y2 * y2) * c).sum() / 12 - area * cy * cy
    ixy = ((x * y2 + 2 * x * y + 2 * x2 * y2 + x2 * y) * c).sum() / 24 - area * cx * cy
    return np.array([[ixx, ixy], [ixy, iyy]])


def test_critical_curve_major_axis_at_phi_plus_ninety():
    # phi = 30 deg, q = 0.5: major axis at 120 deg, axis ratio 0.5 (docs/design.md §2.1 [V]).
    curve = caustics.tangential_critical_curve(*_params(1.0, 0.5, 30.0, 0.2, -0.1), num=2000)
    moments = _area_second_moments(curve.numpy()[0].astype(np.float64))
    eigvals, eigvecs = np.linalg.eigh(moments)
    major = eigvecs[:, np.argmax(eigvals)]
    angle = np.degrees(np.arctan2(major[1], major[0])) % 180.0
    # Polygon with 2000 vertices: orientation exact by symmetry up to float32 vertices (~1e-5 deg).
    np.testing.assert_allclose(angle, 120.0, atol=0.1)
    # For an ellipse the moment eigenvalues scale as the squared semi-axes; the
    # polygon discretisation changes their ratio by < 1e-5.
    np.testing.assert_allclose(np.sqrt(eigvals.min() / eigvals.max()), 0.5, rtol=1e-4)


@pytest.mark.parametrize("eps, phi_deg", [(0.3, 10.0), (0.7, 200.0)])
def test_critical_curve_maps_onto_the_tangential_caustic(eps, phi_deg):
    theta_e, x_l, y_l = 1.4, 0.04, -0.03
    p = _params(theta_e, eps, phi_deg, x_l, y_l)
    curve = caustics.tangential_critical_curve(*p, num=400)
    caustic = caustics.tangential_caustic(*p, num=4000).numpy()[0]
    params = tf.constant([[theta_e, p[1][0], p[2][0], x_l, y_l]], tf.float32)
    bx, by = raytrace.lens_equation(curve[0, :, 0][None, :, None], curve[0, :, 1][None, :, None],
                                    params)
    mapped = np.stack([bx.numpy().ravel(), by.numpy().ravel()], axis=1)
    dist = np.min(np.linalg.norm(mapped[:, None, :] - caustic[None, :, :], axis=-1), axis=1)
    # docs/design.md §2.5 [V]: median distance 0.004"; here with a finely sampled caustic.
    assert np.median(dist) < 0.005


def test_sis_caustic_is_a_point_and_cut_a_circle():
    p = _params(1.5, 0.0, 0.0, 0.2, 0.1)
    caustic = caustics.tangential_caustic(*p).numpy()[0]
    cut = caustics.cut_curve(*p).numpy()[0]
    assert np.all(np.isfinite(caustic)) and np.all(np.isfinite(cut))
    np.testing.assert_allclose(caustic, np.tile([0.2, 0.1], (len(caustic), 1)), atol=1e-6)
    np.testing.assert_allclose(np.hypot(cut[:, 0] - 0.2, cut[:, 1] - 0.1), 1.5, rtol=1e-6)


def test_points_in_polygons_square_and_concave():
    square = tf.constant([[[0, 0], [1, 0], [1, 1], [0, 1]]], tf.float32)
    px = tf.constant([[0.5, 1.5, -0.1, 0.99]])
    py = tf.constant([[0.5, 0.5, 0.5, 0.01]])
    assert caustics.points_in_polygons(px, py, square).numpy().tolist() == [[True, False, False, True]]
    # A "C" shape: the notch (0.5, 0.5) is outside.
    c_shape = tf.constant([[[0, 0], [1, 0], [1, 0.3], [0.3, 0.3], [0.3, 0.7], [1, 0.7], [1, 1],
                            [0, 1]]], tf.float32)
    inside = caustics.points_in_polygons(tf.constant([[0.5, 0.15, 0.1]]),
                                         tf.constant([[0.5, 0.5, 0.5]]), c_shape).numpy()
    assert inside.tolist() == [[False, True, True]]
    # Rank-1 points: one per polygon.
    assert caustics.points_in_polygons(tf.constant([0.5]), tf.constant([0.5]), square).numpy().tolist() == [True]


def test_centroid_of_symmetric_caustic_is_the_lens_centre():
    caustic = caustics.tangential_caustic(*_params(1.0, 0.4, 33.0, 0.3, -0.1))
    np.testing.assert_allclose(caustics.polygon_centroid(caustic).numpy()[0], [0.3, -0.1], atol=1e-5)


@pytest.mark.parametrize("bad", [dict(num=2), dict(num=10.5)])
def test_curves_reject_bad_vertex_counts(bad):
    with pytest.raises(ValueError, match="num"):
        caustics.tangential_critical_curve(*_params(1.0, 0.2, 0.0), **bad)


def test_curves_reject_mismatched_batches_and_accept_scalars():
    with pytest.raises(ValueError, match="mismatched"):
        caustics.tangential_caustic([1.0, 2.0], [0.1, 0.1, 0.1], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="theta_e"):
        caustics.cut_curve(np.ones((2, 2)), 0.1, 0.0, 0.0, 0.0)
    assert caustics.cut_curve(1.0, 0.1, 0.0, 0.0, 0.0, num=7).shape == (1, 7, 2)
    assert caustics.cut_curve([1.0, 2.0], 0.1, 0.0, [0.0, 1.0], 0.0, num=7).shape == (2, 7, 2)
