"""Tests of the SIE deflection and convergence (docs/design.md §2.1) against closed forms and lenstronomy."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from ensai_tf import conventions
from ensai_tf.lensing import caustics, raytrace, shear, sie


def _grid(n=64, half=3.0):
    c = np.linspace(-half, half, n)
    x, y = np.meshgrid(c, c, indexing="xy")
    return x, y


@pytest.mark.parametrize("eps", [0.0, 1e-9, 1e-6])
def test_sie_reduces_to_sis(eps):
    x, y = _grid()
    theta_e = 1.3
    ax, ay = sie.sie_deflection(x, y, theta_e, eps * np.cos(0.4), eps * np.sin(0.4))
    r = np.hypot(x, y)
    # float32 maths vs float64 closed form: rtol 1e-5 plus a float32-rounding atol.
    np.testing.assert_allclose(ax.numpy(), theta_e * x / r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ay.numpy(), theta_e * y / r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("e_x", [0.0, 1e-9])
def test_no_nan_values_or_gradients_at_sis_limit_and_centre(e_x):
    # Points on the lens-frame y' axis (sin t = +-1) probe the unused asin branch,
    # whose derivative would be infinite if f' were replaced by 1.
    x = tf.constant([0.0, 0.5, -1.0, 0.0, 0.0])
    y = tf.constant([0.0, 0.2, 0.7, 1.0, -0.3])
    params = [tf.Variable(v) for v in (1.0, e_x, 0.0, 0.0, 0.0)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, y])
        ax, ay = sie.sie_deflection(x, y, *params)
        total = tf.reduce_sum(ax) + tf.reduce_sum(ay)
    grads = tape.gradient(total, params + [x, y])
    assert np.all(np.isfinite(ax.numpy())) and np.all(np.isfinite(ay.numpy()))
    assert ax.numpy()[0] == 0.0 and ay.numpy()[0] == 0.0  # defined as 0 at the centre
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))


def test_mass_major_axis_is_at_phi_plus_ninety():
    # phi = 30 deg, q = 0.5 -> major axis at 120 deg (docs/design.md §2.1 [V]).
    phi = np.radians(30.0)
    e_x, e_y = 0.5 * np.cos(phi), 0.5 * np.sin(phi)
    angles = np.radians(np.arange(0.0, 180.0, 0.25))
    r = 1.0
    kappa = sie.sie_convergence(r * np.cos(angles), r * np.sin(angles), 1.0, e_x, e_y).numpy()
    # The convergence at fixed radius is largest along the major axis.
    np.testing.assert_allclose(np.degrees(angles[np.argmax(kappa)]), 120.0, atol=0.25)


def test_divergence_of_deflection_is_twice_the_convergence():
    h = 1e-3
    x, y = _grid(n=17, half=2.0)
    x, y = x + 0.013, y + 0.007  # stay off the singular centre
    args = (1.1, 0.25, -0.3, 0.1, -0.05)
    ax_p, _ = sie.sie_deflection(tf.constant(x + h, tf.float64), tf.constant(y, tf.float64), *args)
    ax_m, _ = sie.sie_deflection(tf.constant(x - h, tf.float64), tf.constant(y, tf.float64), *args)
    _, ay_p = sie.sie_deflection(tf.constant(x, tf.float64), tf.constant(y + h, tf.float64), *args)
    _, ay_m = sie.sie_deflection(tf.constant(x, tf.float64), tf.constant(y - h, tf.float64), *args)
    div = (ax_p - ax_m + ay_p - ay_m).numpy() / (2 * h)
    kappa = sie.sie_convergence(tf.constant(x, tf.float64), tf.constant(y, tf.float64), *args)
    mask = np.hypot(x - 0.1, y + 0.05) > 0.2
    # Central differences in float64: error O(h^2 / r^2) ~ 1e-5 relative.
    np.testing.assert_allclose(div[mask], 2 * kappa.numpy()[mask], rtol=1e-4)


@pytest.mark.parametrize("q", [1.0, 0.6])
def test_mean_convergence_inside_critical_curve_is_one(q):
    # For an isothermal lens the mean convergence inside the tangential critical
    # curve is 1. Midpoint rule on a 0.01" grid (cell corners on the lens
    # centre): the 1/r cusp is under-sampled by O(h / theta_E), measured 0.2%.
    theta_e, phi, x_l, y_l, h = 1.2, 0.46, 0.05, -0.03, 0.01
    e_x, e_y = (1 - q) * np.cos(phi), (1 - q) * np.sin(phi)
    curve = caustics.tangential_critical_curve([theta_e], [e_x], [e_y], [x_l], [y_l], num=200)
    half = theta_e / np.sqrt(q) + 0.1
    c = np.arange(-half, half, h) + h / 2
    x, y = np.meshgrid(c + x_l, c + y_l)
    inside = caustics.points_in_polygons(x.reshape(1, -1), y.reshape(1, -1), curve).numpy()[0]
    kappa = sie.sie_convergence(tf.constant(x.ravel()[inside]), tf.constant(y.ravel()[inside]),
                                theta_e, e_x, e_y, x_l, y_l).numpy()
    # Area: pixelised ellipse boundary, measured error 3e-4.
    np.testing.assert_allclose(inside.sum() * h * h, np.pi * theta_e**2, rtol=3e-3)
    np.testing.assert_allclose(np.mean(kappa), 1.0, rtol=1e-2)


def test_pure_shear_matches_closed_form():
    x, y = _grid(n=9)
    g1, g2 = 0.07, -0.12
    ax, ay = shear.shear_deflection(x, y, g1, g2, 0.1, -0.2)
    dx, dy = x - 0.1, y + 0.2
    np.testing.assert_allclose(ax.numpy(), g1 * dx + g2 * dy, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ay.numpy(), g2 * dx - g1 * dy, rtol=1e-6, atol=1e-6)
    c1, c2 = shear.shear_components(0.2, np.radians(30.0))
    np.testing.assert_allclose([c1.numpy(), c2.numpy()], [0.1, 0.2 * np.sin(np.radians(60))], rtol=1e-6)


def test_lens_equation_includes_shear_with_standard_sign():
    x, y, _ = raytrace.extended_grid(npix=8, pixel_scale=0.5, oversample=1, field_factor=1.0)
    params = tf.constant([[1.0, 0.1, 0.0, 0.0, 0.0]])
    bx0, by0 = raytrace.lens_equation(x, y, params)
    bx, by = raytrace.lens_equation(x, y, params, tf.constant([0.1]), tf.constant([0.0]))
    np.testing.assert_allclose((bx0 - bx).numpy()[0], 0.1 * x.numpy(), atol=1e-6)
    np.testing.assert_allclose((by0 - by).numpy()[0], -0.1 * y.numpy(), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(theta_e=st.sampled_from([0.1, 0.7, 3.0]), eps=st.sampled_from([0.0, 1e-7, 0.3, 0.9]),
       phi=st.floats(0, 2 * np.pi), x=st.floats(-5, 5), y=st.floats(-5, 5),
       centre=st.sampled_from([0.0, 0.05]))
def test_no_nan_or_inf_anywhere_in_the_prior(theta_e, eps, phi, x, y, centre):
    xs = tf.constant([x, centre, 0.0], tf.float32)
    ys = tf.constant([y, centre, 0.0], tf.float32)
    params = [tf.constant(v, tf.float32) for v in (theta_e, eps * np.cos(phi), eps * np.sin(phi))]
    with tf.GradientTape() as tape:
        tape.watch(params + [xs, ys])
        ax, ay = sie.sie_deflection(xs, ys, *params, centre, centre)
        total = tf.reduce_sum(ax + ay)
    grads = tape.gradient(total, params + [xs, ys])
    assert np.all(np.isfinite(ax.numpy())) and np.all(np.isfinite(ay.numpy()))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert np.all(np.abs(ax.numpy()) <= theta_e * 3) and np.all(np.abs(ay.numpy()) <= theta_e * 3)


# --- lenstronomy oracle ------------------------------------------------------------------


def to_lenstronomy_kwargs(theta_e, e_x, e_y, x_l, y_l):
    """The ONE place where Ensai's convention maps to lenstronomy's SIE (docs/design.md §2.1).

    Ensai: q = 1 - eps, major axis at phi + 90 deg. lenstronomy: e1 + i e2 =
    (1 - q)/(1 + q) exp(2 i angle) with ``angle`` the major-axis angle, so
    e1 = -((1-q)/(1+q)) cos 2 phi and e2 = -((1-q)/(1+q)) sin 2 phi.
    """
    eps = np.hypot(e_x, e_y)
    phi = np.arctan2(e_y, e_x)
    q = 1.0 - eps
    g = (1.0 - q) / (1.0 + q)
    return {"theta_E": theta_e, "e1": -g * np.cos(2 * phi), "e2": -g * np.sin(2 * phi),
            "center_x": x_l, "center_y": y_l}


@pytest.mark.parametrize("q", [0.5, 0.7, 0.9, 0.999])
@pytest.mark.parametrize("phi_deg", [0.0, 30.0, 135.0, 250.0])
@pytest.mark.parametrize("theta_e", [0.3, 1.7])
def test_deflection_matches_lenstronomy(q, phi_deg, theta_e):
    lens_model = pytest.importorskip("lenstronomy.LensModel.lens_model")
    phi = np.radians(phi_deg)
    e_x, e_y = (1 - q) * np.cos(phi), (1 - q) * np.sin(phi)
    x_l, y_l = 0.03, -0.04
    x, y = conventions.pixel_grid(npix=24, pixel_scale=0.25)
    model = lens_model.LensModel(["SIE"])
    ref_x, ref_y = model.alpha(x.ravel(), y.ravel(), [to_lenstronomy_kwargs(theta_e, e_x, e_y, x_l, y_l)])
    ax, ay = sie.sie_deflection(x.ravel(), y.ravel(), theta_e, e_x, e_y, x_l, y_l)
    # float32 vs float64 oracle.
    np.testing.assert_allclose(ax.numpy(), ref_x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ay.numpy(), ref_y, rtol=1e-4, atol=1e-5)


def test_shear_matches_lenstronomy():
    lens_model = pytest.importorskip("lenstronomy.LensModel.lens_model")
    x, y = conventions.pixel_grid(npix=12, pixel_scale=0.5)
    model = lens_model.LensModel(["SHEAR"])
    kw = {"gamma1": 0.05, "gamma2": -0.08, "ra_0": 0.1, "dec_0": 0.2}
    ref_x, ref_y = model.alpha(x.ravel(), y.ravel(), [kw])
    ax, ay = shear.shear_deflection(x.ravel(), y.ravel(), 0.05, -0.08, 0.1, 0.2)
    np.testing.assert_allclose(ax.numpy(), ref_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ay.numpy(), ref_y, rtol=1e-5, atol=1e-6)
