"""Tests of the ray-tracing grid, source sampling and block averaging (docs/design.md §3.4)."""

import numpy as np
import pytest
import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.lensing import raytrace, shear


def test_extended_grid_crops_and_averages_to_the_output_grid():
    x, y, pad = raytrace.extended_grid(npix=192, pixel_scale=0.04, oversample=2, field_factor=1.6)
    assert pad == 58  # ceil(192 * 0.6 / 2) = 58 whole output pixels per side
    assert x.shape == ((192 + 2 * pad) * 2,) * 2
    cropped = raytrace.crop_center(raytrace.block_average(tf.stack([x, y]), 2), pad).numpy()
    ref_x, ref_y = conventions.pixel_grid()
    np.testing.assert_allclose(cropped[0], ref_x, atol=1e-6)
    np.testing.assert_allclose(cropped[1], ref_y, atol=1e-6)


def test_bilinear_sampling_reproduces_a_linear_ramp_and_is_zero_outside():
    size, half = 16, 0.8
    centres = (np.arange(size) + 0.5) * (2 * half / size) - half
    ramp = (2.0 + 0.5 * centres[None, :] - 0.25 * centres[:, None]).astype(np.float32)
    images = tf.constant(ramp[None])
    cx, cy = tf.constant([0.1]), tf.constant([-0.2])
    bx = tf.constant(np.random.default_rng(0).uniform(-0.6, 0.6, (1, 5, 7)) + 0.1, tf.float32)
    by = tf.constant(np.random.default_rng(1).uniform(-0.6, 0.6, (1, 5, 7)) - 0.2, tf.float32)
    out = raytrace.sample_source_image(images, tf.constant([half]), cx, cy, bx, by).numpy()
    expected = 2.0 + 0.5 * (bx.numpy() - 0.1) - 0.25 * (by.numpy() + 0.2)
    np.testing.assert_allclose(out, expected, rtol=1e-5)  # exact for a ramp, up to float32
    far = raytrace.sample_source_image(images, tf.constant([half]), cx, cy,
                                       tf.constant([[[5.0, -5.0, 0.1]]]), tf.constant([[[0.0, 0.0, 3.0]]]))
    np.testing.assert_array_equal(far.numpy(), 0.0)


def test_block_average_conserves_the_mean():
    fine = tf.random.stateless_uniform((2, 12, 12), seed=(1, 2))
    coarse = raytrace.block_average(fine, 3)
    assert coarse.shape == (2, 4, 4)
    np.testing.assert_allclose(coarse.numpy().mean(axis=(1, 2)), fine.numpy().mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(coarse.numpy()[0, 1, 2], fine.numpy()[0, 3:6, 6:9].mean(), rtol=1e-6)


def test_sis_with_a_point_like_central_source_forms_a_ring_at_theta_e():
    theta_e = 1.0
    x, y, pad = raytrace.extended_grid(npix=96, pixel_scale=0.04, oversample=2, field_factor=1.0)
    bx, by = raytrace.lens_equation(x, y, tf.constant([[theta_e, 0.0, 0.0, 0.0, 0.0]]))
    size = 64
    c = (np.arange(size) + 0.5) / size * 0.2 - 0.1
    source = np.exp(-(c[None] ** 2 + c[:, None] ** 2) / (2 * 0.01**2)).astype(np.float32)
    img = raytrace.sample_source_image(source[None], tf.constant([0.1]), tf.constant([0.0]),
                                       tf.constant([0.0]), bx, by)
    img = raytrace.block_average(img, 2).numpy()[0]
    xs, ys = conventions.pixel_grid(npix=96, pixel_scale=0.04)
    r = np.hypot(xs, ys)
    bins = np.arange(0, 1.9, 0.04)
    idx = np.digitize(r.ravel(), bins)
    profile = np.array([img.ravel()[idx == i].mean() if np.any(idx == i) else 0 for i in range(1, len(bins))])
    peak_r = 0.5 * (bins[:-1] + bins[1:])[np.argmax(profile)]
    assert abs(peak_r - theta_e) <= 0.04  # within one pixel


@pytest.mark.parametrize("kwargs, match", [
    (dict(field_factor=0.9), "field_factor"), (dict(oversample=0), "oversample"),
    (dict(oversample=1.5), "oversample"), (dict(npix=0), "npix"),
    (dict(pixel_scale=0.0), "pixel_scale"),
])
def test_extended_grid_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        raytrace.extended_grid(**{"npix": 8, **kwargs})


def test_bad_shapes_give_clear_errors():
    x, y, _ = raytrace.extended_grid(npix=4, oversample=1, field_factor=1.0)
    with pytest.raises(ValueError, match="params must have shape"):
        raytrace.lens_equation(x, y, tf.zeros((1, 4)))
    with pytest.raises(ValueError, match="together"):
        raytrace.lens_equation(x, y, tf.zeros((1, 5)), gamma_1=tf.zeros(1))
    with pytest.raises(ValueError, match="source_images"):
        raytrace.sample_source_image(tf.zeros((1, 4, 5)), [1.0], [0.0], [0.0], x[None], y[None])
    with pytest.raises(ValueError, match="divisible"):
        raytrace.block_average(tf.zeros((1, 6, 6)), 4)
    with pytest.raises(ValueError, match="cannot crop"):
        raytrace.crop_center(tf.zeros((1, 6, 6)), 3)


def test_shear_in_the_lens_equation_is_the_closed_form_pure_shear_field():
    """beta(with shear) - beta(without) = -Gamma (theta - theta_L), Gamma = [[g1, g2], [g2, -g1]]
    (docs/design.md §2.2 [R]); float32 arithmetic, tolerance 1e-6 arcsec on a 2" field."""
    x, y = (np.asarray(a, np.float32) for a in conventions.pixel_grid(npix=32))
    params = np.array([[1.2, 0.1, -0.2, 0.03, -0.02], [0.7, 0.0, 0.3, -0.04, 0.01]], np.float32)
    g1 = np.array([0.05, -0.2], np.float32)
    g2 = np.array([0.1, 0.15], np.float32)
    bx, by = raytrace.lens_equation(x, y, params, g1, g2)
    bx0, by0 = raytrace.lens_equation(x, y, params)
    dx = x[None] - params[:, 3, None, None]
    dy = y[None] - params[:, 4, None, None]
    g1b, g2b = g1[:, None, None], g2[:, None, None]
    np.testing.assert_allclose(np.asarray(bx) - np.asarray(bx0), -(g1b * dx + g2b * dy), atol=1e-6)
    np.testing.assert_allclose(np.asarray(by) - np.asarray(by0), -(g2b * dx - g1b * dy), atol=1e-6)


def test_shear_deflection_matches_lenstronomy_shear():
    lenstronomy = pytest.importorskip("lenstronomy.LensModel.lens_model")
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-3, 3, size=(2, 200))
    kw = {"gamma1": 0.12, "gamma2": -0.07, "ra_0": 0.05, "dec_0": -0.03}
    ax, ay = shear.shear_deflection(x, y, kw["gamma1"], kw["gamma2"], kw["ra_0"], kw["dec_0"])
    lx, ly = lenstronomy.LensModel(["SHEAR"]).alpha(x, y, [kw])
    np.testing.assert_allclose(np.asarray(ax), lx, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ay), ly, atol=1e-6)
