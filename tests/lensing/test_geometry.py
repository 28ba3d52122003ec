"""Tests of the sky/lens frame changes and the ellipticity angle (docs/design.md §0, §2.1)."""

import numpy as np
import pytest
import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.lensing import geometry


def test_to_lens_frame_puts_the_major_axis_on_y_prime():
    # phi = 30 deg: the major axis (position angle 120 deg) maps onto +y'.
    phi = np.radians(30.0)
    x_l, y_l = 0.3, -0.2
    pa = np.radians(120.0)
    xp, yp = geometry.to_lens_frame(x_l + 2 * np.cos(pa), y_l + 2 * np.sin(pa), x_l, y_l, phi)
    # float32 rotation of O(1) numbers: atol 1e-6.
    np.testing.assert_allclose([xp.numpy(), yp.numpy()], [0.0, 2.0], atol=1e-6)


def test_from_lens_frame_inverts_to_lens_frame_for_vectors():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 50))
    phi = rng.uniform(0, 2 * np.pi, 50)
    xp, yp = geometry.to_lens_frame(x, y, 0.0, 0.0, phi)
    bx, by = geometry.from_lens_frame(xp, yp, phi)
    np.testing.assert_allclose(bx.numpy(), x, atol=1e-6)
    np.testing.assert_allclose(by.numpy(), y, atol=1e-6)
    # The (cos, sin) variants used on the hot path agree with the angle variants.
    cxp, cyp = geometry.to_lens_frame_cs(x, y, 0.0, 0.0, np.cos(phi), np.sin(phi))
    np.testing.assert_allclose(cxp, xp.numpy(), atol=1e-6)
    np.testing.assert_allclose(cyp, yp.numpy(), atol=1e-6)


@pytest.mark.parametrize("q, phi_deg", [(0.5, 30.0), (0.1, 200.0), (0.95, -45.0)])
def test_ellipticity_to_q_phi_matches_conventions(q, phi_deg):
    e_x, e_y = conventions.ellipticity_from_q_phi(q, np.radians(phi_deg))
    q_tf, phi_tf = geometry.ellipticity_to_q_phi(e_x, e_y)
    np.testing.assert_allclose(q_tf.numpy(), q, rtol=1e-6)
    expected = np.angle(np.exp(1j * np.radians(phi_deg)))  # wrapped into (-pi, pi]
    np.testing.assert_allclose(phi_tf.numpy(), expected, atol=1e-6)


def test_ellipticity_to_q_phi_is_safe_at_zero():
    e = [tf.Variable([0.0, 0.3]), tf.Variable([0.0, -0.4])]
    with tf.GradientTape() as tape:
        q, phi = geometry.ellipticity_to_q_phi(*e)
        total = tf.reduce_sum(q + phi)
    grads = tape.gradient(total, e)
    np.testing.assert_allclose(q.numpy(), [1.0, 0.5], rtol=1e-6)
    assert phi.numpy()[0] == 0.0
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
    # At e = 0 the gradient is defined as 0 (double tf.where).
    assert grads[0].numpy()[0] == 0.0 and grads[1].numpy()[0] == 0.0
