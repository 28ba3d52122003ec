"""Tests of the analytic light profiles (docs/design.md §3.2, §4)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from ensai_tf.lensing import light


def _grid(half, npix):
    """Square float64 grid of pixel centres spanning +-half, and the pixel area."""
    step = 2.0 * half / npix
    coords = (np.arange(npix) - (npix - 1) / 2.0) * step
    x, y = np.meshgrid(coords, coords, indexing="xy")
    return tf.constant(x[None]), tf.constant(y[None]), step * step


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_sersic_b_matches_exact_half_light_root(n):
    # Ciotti & Bertin expansion: relative error < 1e-3 for n >= 0.5 (docs/design.md §3.2).
    exact = special.gammaincinv(2.0 * n, 0.5)
    approx = float(light.sersic_b(tf.constant(n, tf.float64)))
    np.testing.assert_allclose(approx, exact, rtol=1e-3)


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0])
def test_circular_sersic_integrates_to_closed_form_total_flux(n):
    # Fine float64 grid of +-20 r_eff with 0.01 r_eff pixels plus a 0.005 r_eff
    # core: truncation (< 0.4% for n <= 2 at 20 r_eff) and the centre pixel
    # stay well below rtol 1e-2.
    r_eff, amp = 0.3, 2.5
    x, y, area = _grid(20.0 * r_eff, 4000)
    image = light.elliptical_sersic(x, y, amp, n, r_eff, 1.0, 0.0, 0.0, 0.0)
    total = float(tf.reduce_sum(image)) * area
    expected = (2 * np.pi * n * r_eff**2 * amp * np.exp(float(light.sersic_b(n)))
                * float(light.sersic_b(n)) ** (-2 * n) * special.gamma(2 * n))
    np.testing.assert_allclose(total, expected, rtol=1e-2)
    np.testing.assert_allclose(float(light.sersic_total_flux(amp, n, r_eff)), expected,
                               rtol=1e-6)


@pytest.mark.parametrize("n", [1.0, 4.0])
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_half_the_flux_lies_within_r_eff(n, q):
    # Ratio of the flux inside the r_eff isophote to the closed-form total; the
    # b_n approximation (< 1e-3) and pixelisation of the boundary (~1e-3) keep
    # this within rtol 2e-2. Elliptical case: the flux is independent of q.
    r_eff = 0.2
    x, y, area = _grid(6.0 * r_eff / np.sqrt(q), 2400)
    angle = 0.4
    image = light.elliptical_sersic(x, y, 1.0, n, r_eff, q, angle, 0.0, 0.0)
    radius = light.elliptical_radius(x, y, q, angle, 0.0, 0.0)
    inner = float(tf.reduce_sum(tf.where(radius <= r_eff, image, 0.0))) * area
    total = float(light.sersic_total_flux(1.0, n, r_eff))
    np.testing.assert_allclose(inner / total, 0.5, rtol=2e-2)


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 120.0])
def test_major_axis_lies_at_angle(angle_deg):
    # Brightness at a fixed distance is largest along the major axis: sample a
    # circle of radius 0.3" every 0.5 deg and find the argmax mod 180 deg.
    angle = np.deg2rad(angle_deg)
    t = np.deg2rad(np.arange(0.0, 360.0, 0.5))
    x, y = 0.1 + 0.3 * np.cos(t), -0.2 + 0.3 * np.sin(t)
    image = light.elliptical_sersic(x, y, 1.0, 1.5, 0.2, 0.6, angle, 0.1, -0.2).numpy()
    best = np.rad2deg(t[np.argmax(image)]) % 180.0
    assert min(abs(best - angle_deg), 180.0 - abs(best - angle_deg)) <= 0.5
    blob = light.gaussian_blob(x, y, 1.0, 0.1, 0.1, -0.2, q=0.6, angle=angle).numpy()
    best = np.rad2deg(t[np.argmax(blob)]) % 180.0
    assert min(abs(best - angle_deg), 180.0 - abs(best - angle_deg)) <= 0.5


def test_amplitude_is_brightness_at_r_eff_and_centre_is_exp_b():
    # Exact convention check (float64): I(r_eff along the major axis) = amp.
    q, angle, r_eff, n = 0.5, 0.3, 0.25, 2.0
    a = r_eff / np.sqrt(q)
    value = light.elliptical_sersic(tf.constant(0.1 + a * np.cos(angle), tf.float64),
                                    a * np.sin(angle), 3.0, n, r_eff, q, angle, 0.1, 0.0)
    np.testing.assert_allclose(float(value), 3.0, rtol=1e-9)
    centre = light.elliptical_sersic(tf.constant(0.0, tf.float64), 0.0, 3.0, n, r_eff, q,
                                     angle, 0.0, 0.0)
    b_n = 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)
    np.testing.assert_allclose(float(centre), 3.0 * np.exp(b_n), rtol=1e-9)


def test_gaussian_blob_integrates_to_two_pi_sigma_squared():
    # sigma = 10 pixels: the point-sampled sum equals the integral to ~1e-12.
    x, y, area = _grid(1.0, 500)
    image = light.gaussian_blob(x, y, 2.0, 0.04, 0.0, 0.0, q=0.7, angle=1.0)
    np.testing.assert_allclose(float(tf.reduce_sum(image)) * area, 2 * np.pi * 0.04**2 * 2.0,
                               rtol=1e-6)
    peak = light.gaussian_blob(tf.constant(0.3, tf.float64), -0.1, 2.0, 0.04, 0.3, -0.1, q=0.7)
    np.testing.assert_allclose(float(peak), 2.0, rtol=1e-12)


def test_batched_parameters_broadcast_against_shared_grid():
    # (B,1,1) parameters on a (1,H,W) float32 grid -> (B,H,W), each slice equal
    # to the unbatched call (exact: same float32 ops).
    x, y, _ = _grid(1.0, 16)
    x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)
    n = tf.constant([1.0, 3.0])[:, None, None]
    r_eff = tf.constant([0.2, 0.4])[:, None, None]
    image = light.elliptical_sersic(x, y, 1.0, n, r_eff, 0.8, 0.2, 0.05, 0.0, core=0.01)
    assert image.shape == (2, 16, 16) and image.dtype == tf.float32
    single = light.elliptical_sersic(x, y, 1.0, 3.0, 0.4, 0.8, 0.2, 0.05, 0.0, core=0.01)
    np.testing.assert_allclose(image[1].numpy(), single[0].numpy(), rtol=1e-6)
    assert np.all(np.isfinite(image.numpy()))


def test_gradient_is_finite_at_exact_centre():
    x = tf.constant([0.0, 0.1])
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.reduce_sum(light.elliptical_sersic(x, 0.0, 1.0, 4.0, 0.2, 1.0, 0.0,
                                                      0.0, 0.0))
    assert np.all(np.isfinite(tape.gradient(value, x).numpy()))
