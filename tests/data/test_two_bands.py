"""Tests of ensai_tf.data.two_bands (docs/design.md §5.10): colours and PSF matching in
closed form, the red band equal to the single-band chain, bands that never share noise."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from ensai_tf import config, conventions
from ensai_tf.data import observe as ob
from ensai_tf.data import two_bands as tb
from ensai_tf.data.cache import data_fingerprint
from ensai_tf.data.effects.psf import blur_matrices

N = conventions.NPIX


def _ring(batch=2):
    x, y = conventions.pixel_grid()
    r = np.hypot(x, y)
    ring = np.exp(-(r - 1.2) ** 2 / (2 * 0.08 ** 2)) * (1.0 + 0.5 * np.cos(np.arctan2(y, x)))
    ring = np.where(ring < 1e-3, 0.0, ring / ring.max()).astype(np.float32)
    light = (3.0 * np.exp(-r ** 2 / (2 * 0.3 ** 2))).astype(np.float32)
    params = np.tile(np.array([[1.2, 0.1, 0.0, 0.0, 0.0]], np.float32), (batch, 1))
    return (np.repeat(ring[None, ..., None], batch, 0), np.repeat(light[None, ..., None], batch, 0),
            params)


def _seeds(batch):
    return tf.constant(np.stack([np.arange(batch), np.full(batch, 5)], axis=1), tf.int64)


def test_apply_colour_is_arcs_plus_light_over_kappa_in_blue():
    arcs, light, _ = _ring(2)
    out = tb.apply_colour(arcs, light, {"colour_ratio": tf.constant([2.0, 5.0])}).numpy()
    np.testing.assert_allclose(out[..., 1], (arcs + light)[..., 0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(out[1, ..., 0], arcs[1, ..., 0] + light[1, ..., 0] / 5.0, rtol=1e-6,
                               atol=1e-12)


def test_sample_colour_is_log_uniform_in_range_and_per_example():
    draws = tb.sample_colour(_seeds(2000), (1.5, 10.0))["colour_ratio"].numpy()
    assert draws.min() >= 1.5 and draws.max() <= 10.0
    # log-uniform: the median is the geometric mean sqrt(15) = 3.87 (2000 draws: +-4%)
    assert abs(np.median(draws) / np.sqrt(15.0) - 1.0) < 0.04
    alone = tb.sample_colour(_seeds(2000)[7:8], (1.5, 10.0))["colour_ratio"].numpy()
    assert alone[0] == draws[7]


def test_psf_match_gives_both_bands_the_broader_gaussian():
    """A point blurred by sigma 1.0 px in one band and 2.0 px in the other: after matching,
    both have the second moment of sigma 2.0 px (sampled Gaussians: within 1%)."""
    point = np.zeros((1, N, N), np.float32)
    point[0, 96, 96] = 1.0
    sigma = np.array([[1.0, 2.0]], np.float32)
    bands = []
    for k in range(2):
        w = blur_matrices(tf.constant(sigma[:, k]), N, 10)
        bands.append(tf.matmul(tf.matmul(w, point), w, transpose_b=True))
    images = tf.stack(bands, axis=-1)
    matched = tb.apply_psf_match(images, sigma, max_sigma_pix=2.5).numpy()
    rows = np.arange(N) - 96.0
    for k in range(2):
        profile = matched[0, :, :, k].sum(axis=1)
        variance = (profile * rows ** 2).sum() / profile.sum()
        assert abs(np.sqrt(variance) / 2.0 - 1.0) < 0.01, (k, np.sqrt(variance))
    np.testing.assert_allclose(matched[..., 1], images.numpy()[..., 1], atol=1e-7)


def test_red_band_is_the_single_band_chain_when_no_matching_is_needed():
    """Without a PSF no band is blurred to match, so the red band (drawn from the example's
    own seeds) is exactly the single-band image of the same arcs and lens light."""
    arcs, light, params = _ring(3)
    cfg = dataclasses.replace(config.ObserveConfig(), psf_prob=0.0)
    two = tb.observe_two_bands(arcs, params, _seeds(3), cfg, config.BandsConfig(count=2),
                               training=False, lens_light=light)
    one = ob.observe(arcs, params, _seeds(3), cfg, training=False, lens_light=light)
    np.testing.assert_array_equal(two["image"].numpy()[..., 1:], one["image"].numpy())
    np.testing.assert_array_equal(two["params"].numpy(), one["params"].numpy())
    assert two["image"].shape == (3, N, N, 2) and two["mask"].shape == (3, N, N, 2)


def test_the_bands_share_the_shift_but_not_the_noise():
    arcs, light, params = _ring(4)
    cfg = config.ObserveConfig()
    out = tb.observe_two_bands(arcs, params, _seeds(4), cfg, config.BandsConfig(count=2),
                               lens_light=light)
    image, mask = out["image"].numpy(), out["mask"].numpy()
    assert np.all(image[mask == 0] == 0.0)  # masked pixels exactly 0 in each band
    draws = out["draws"]
    assert {"shift_x_pix", "colour_ratio", "blue_noise_rms", "red_noise_rms"} <= set(draws)
    # noise of the corner (no arcs, little lens light) is uncorrelated across the bands;
    # both bands from the same seeds would give r = 1
    corner = (slice(0, 40), slice(0, 40))
    for i in range(4):
        b, r = image[i][corner][..., 0].ravel(), image[i][corner][..., 1].ravel()
        keep = (b != 0) & (r != 0)
        assert abs(np.corrcoef(b[keep], r[keep])[0, 1]) < 0.2, i


def test_two_band_data_have_their_own_cache_key():
    one = config.get_preset("paper")
    two = config.apply_overrides(one, ["bands.count=2"])
    assert "bands" not in data_fingerprint(one)["config"]
    assert data_fingerprint(two)["config"]["bands"]["count"] == 2
    assert data_fingerprint(two)["code_sha256"] != data_fingerprint(one)["code_sha256"]
    # the colours matter only with two bands
    other = config.apply_overrides(one, ["bands.colour_ratio=[2.0,3.0]"])
    assert data_fingerprint(other) == data_fingerprint(one)


def test_three_bands_is_a_config_error():
    with pytest.raises(config.ConfigError, match="bands.count"):
        config.apply_overrides(config.get_preset("paper"), ["bands.count=3"])
