"""Tests of ensai_tf.data.noise (docs/design.md §5.4, §5.5) and tools/measure_noise_spectrum.py."""

import importlib.util
import pathlib

import numpy as np
import pytest
from scipy import ndimage
from astropy.io import fits

from ensai_tf import conventions
from ensai_tf.data import noise
from ensai_tf.errors import InputError

N = conventions.NPIX
TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "measure_noise_spectrum.py"


def _seeds(count, offset=0):
    return np.stack([np.arange(count) + offset, np.full(count, 5)], axis=1).astype(np.int64)


@pytest.fixture(scope="module")
def coloured_maps():
    return noise.coloured_noise(_seeds(64), noise.default_noise_spectrum()).numpy()


def test_drizzle_correlation_with_pixfrac_one_is_a_quarter_at_lag_one():
    # box(1) * box(1) = tent; its autocorrelation at lags 0, 1, 2 is 2/3, 1/6, 0
    np.testing.assert_allclose(noise.drizzle_correlation_1d(1.0), [1.0, 0.25, 0.0, 0.0],
                               atol=1e-5)  # midpoint rule with 4001 points


def test_coloured_noise_has_the_drizzled_hst_correlations(coloured_maps):
    corr = noise.lag_correlations(coloured_maps)
    # 64 maps of 36864 pixels: the lag-1 standard error is ~0.001 (measured spread
    # over maps 0.006 / sqrt(64)), far below 1/3 of the 0.03 tolerance.
    for axis in ("x", "y"):
        assert abs(corr[axis][0] - 0.28) <= 0.03, corr
        assert np.all(np.abs(corr[axis][1:]) <= 0.06), corr
        assert np.all(corr[axis][1:] >= 0.02), corr  # docs/design.md §5.4: lags 2-3 ~ 0.03-0.04


def test_coloured_noise_has_unit_rms_and_a_random_constant_offset():
    maps = noise.coloured_noise(_seeds(256, 1000), noise.default_noise_spectrum()).numpy()
    np.testing.assert_allclose(maps.std(axis=(1, 2)), 1.0, rtol=1e-4)
    offsets = maps.mean(axis=(1, 2))
    # rms of 256 N(0, 1.1) offsets: standard error 1.1 / sqrt(512) = 0.05; tolerance 0.15
    assert abs(np.sqrt(np.mean(offsets ** 2)) - noise.DC_OFFSET_RMS) <= 0.15


def test_default_spectrum_power_falls_about_5x_from_low_to_high_k():
    power = noise.default_noise_spectrum().astype(np.float64) ** 2
    k = np.fft.fftfreq(N) * N
    kk = np.hypot(*np.meshgrid(k, k))
    ratio = power[(kk > 2) & (kk < 20)].mean() / power[kk > 80].mean()
    assert 3.0 < ratio < 10.0, ratio  # docs/design.md §5.4: "about 5x"


def test_white_field_is_uncorrelated_unit_normal():
    white, _ = noise.noise_fields(_seeds(8), noise.default_noise_spectrum())
    white = white.numpy()
    # 8 x 36864 normals: std error of the std 0.0013, of a lag correlation 0.0018
    np.testing.assert_allclose(white.std(), 1.0, atol=0.01)
    corr = noise.lag_correlations(white)
    assert np.all(np.abs(corr["x"]) < 0.01) and np.all(np.abs(corr["y"]) < 0.01)


def test_noise_maps_depend_only_on_their_own_seed():
    spectrum = noise.default_noise_spectrum()
    seeds = _seeds(4)
    full = noise.coloured_noise(seeds, spectrum).numpy()
    alone = noise.coloured_noise(seeds[2:3], spectrum).numpy()
    np.testing.assert_allclose(alone[0], full[2], atol=1e-6)  # float32 FFT round-off


def test_load_noise_spectrum_validates(tmp_path):
    good = noise.default_noise_spectrum()
    np.save(tmp_path / "good.npy", good)
    np.testing.assert_array_equal(noise.load_noise_spectrum(tmp_path / "good.npy"), good)
    np.save(tmp_path / "small.npy", good[:10, :10])
    with pytest.raises(InputError, match="shape"):
        noise.load_noise_spectrum(tmp_path / "small.npy")
    np.save(tmp_path / "neg.npy", -good)
    with pytest.raises(InputError, match=">= 0"):
        noise.load_noise_spectrum(tmp_path / "neg.npy")
    with pytest.raises(InputError, match="does not exist"):
        noise.load_noise_spectrum(tmp_path / "nope.npy")


def test_cosmic_rays_are_8_connected_walks_with_map_max_one():
    seeds = _seeds(32)
    ev = noise.cosmic_ray_events(seeds, ray_count=(1, 1), ray_length=(20, 20), hot_count=(0, 0))
    maps = noise.render_events(ev["rows"], ev["cols"], ev["values"]).numpy()[..., 0]
    values = ev["values"].numpy()
    checked = 0
    for b in range(32):
        if np.count_nonzero(values[b]) < 20:  # part of the walk left the map
            continue
        _, n_parts = ndimage.label(maps[b] > 0, structure=np.ones((3, 3)))
        assert n_parts == 1
        assert maps[b].max() == 1.0
        assert 1 <= np.count_nonzero(maps[b]) <= 20
        nz = maps[b][maps[b] > 0]
        assert nz.min() >= 0.3 - 1e-6  # U(0.3, 1) divided by a max <= 1
        checked += 1
    assert checked >= 20


def test_hot_pixels_and_counts_respect_their_ranges():
    ev = noise.cosmic_ray_events(_seeds(16), ray_count=(0, 0), hot_count=(100, 100))
    maps = noise.render_events(ev["rows"], ev["cols"], ev["values"]).numpy()
    counts = np.count_nonzero(maps, axis=(1, 2, 3))
    assert np.all((counts >= 95) & (counts <= 100))  # a few of 100 may coincide
    assert np.all(maps.max(axis=(1, 2, 3)) == 1.0)
    empty = noise.cosmic_ray_events(_seeds(2), ray_count=(0, 0), hot_count=(0, 0))
    assert np.all(empty["values"].numpy() == 0)  # empty map stays 0, no NaN


def _load_tool():
    spec = importlib.util.spec_from_file_location("measure_noise_spectrum", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_noise_spectrum_tool_recovers_known_correlations(tmp_path, capsys):
    rng = np.random.default_rng(0)
    b = 0.15  # 1-D kernel [b, 1, b] in x and y: lag-1 correlation 2b / (1 + 2b^2)
    white = rng.normal(size=(2 * N + 8, 2 * N + 8))
    field = ndimage.convolve1d(ndimage.convolve1d(white, [b, 1, b], axis=0, mode="wrap"),
                               [b, 1, b], axis=1, mode="wrap")[:2 * N, :2 * N]
    yy, xx = np.mgrid[: 2 * N, : 2 * N]
    source = 200.0 * np.exp(-((xx - 100) ** 2 + (yy - 90) ** 2) / (2 * 4.0 ** 2))
    fits.PrimaryHDU((field + source + 50.0).astype(np.float32)).writeto(tmp_path / "blank.fits")
    tool = _load_tool()
    out = tmp_path / "spec.npy"
    assert tool.main([str(tmp_path / "blank.fits"), str(out), "--dc-offset-rms", "1.1"]) == 0
    printed = capsys.readouterr().out
    assert "synthesised" in printed
    amplitude = noise.load_noise_spectrum(out)
    maps = noise.coloured_noise(_seeds(16), amplitude).numpy()
    corr = noise.lag_correlations(maps)
    expected = 2 * b / (1 + 2 * b ** 2)
    # 4 tiles measure the spectrum: periodogram scatter leaves ~0.01 on lag 1; tolerance 0.03
    for axis in ("x", "y"):
        assert abs(corr[axis][0] - expected) <= 0.03, corr
        assert abs(corr[axis][2]) <= 0.03, corr
    _, info = tool.measure_spectrum(fits.getdata(tmp_path / "blank.fits"))
    assert info["mask"][90, 100] and info["mask"][90, 108]  # the fake source (sigma 4 px)
    assert info["masked_fraction"] < 0.2


def test_measure_noise_spectrum_tool_rejects_a_small_image(tmp_path):
    fits.PrimaryHDU(np.zeros((50, 50), np.float32)).writeto(tmp_path / "small.fits")
    tool = _load_tool()
    assert tool.main([str(tmp_path / "small.fits"), str(tmp_path / "o.npy")]) == 1
