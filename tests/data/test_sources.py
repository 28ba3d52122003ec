"""Tests of the source families, the stamp library and source rendering (docs/design.md §3.2)."""

import hashlib
import importlib.resources
import json

import numpy as np
import pytest
import tensorflow as tf
from astropy.io import fits
from PIL import Image

from ensai_tf import config
from ensai_tf.data import sources
from ensai_tf.errors import InputError


@pytest.fixture(scope="module")
def train_stamps():
    return sources.load_stamp_library("train")


def _blob(size=40, x0=0.0, y0=0.0, sigma=0.15):
    """Gaussian blob on a [-1, 1] stamp grid; x0 along columns, y0 along rows."""
    u = (np.arange(size) + 0.5) * 2.0 / size - 1.0
    x, y = np.meshgrid(u, u, indexing="xy")
    return np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / sigma**2)


def _centroid(image, half):
    """Flux-weighted centroid (x, y) in arcsec on the render grid convention."""
    size = image.shape[-1]
    coords = (np.arange(size) - (size - 1) / 2.0) * 2.0 * half / size
    total = image.sum()
    return (image.sum(axis=0) @ coords) / total, (image.sum(axis=1) @ coords) / total


# ---------------------------------------------------------------------------
# Packaged library
# ---------------------------------------------------------------------------

def test_packaged_pools_are_disjoint_by_id_and_by_content():
    base = importlib.resources.files("ensai_tf.data").joinpath("resources")
    table = json.loads(base.joinpath(sources.SPLITS_FILE).read_text())
    ids = {name: set(table["splits"][name]) for name in sources.SPLITS}
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    with base.joinpath(sources.LIBRARY_FILE).open("rb") as fh, np.load(fh) as npz:
        all_ids = set(int(i) for i in npz["ids"])
        assert npz["stamps"].nbytes < 5 * 2**20
    assert set().union(*ids.values()) == all_ids
    # Every stamp has a crop box recorded for provenance.
    assert {rec["id"] for rec in table["stamps"]} == all_ids
    assert all(len(rec["box"]) == 4 for rec in table["stamps"])
    hashes = {name: {hashlib.sha256(s.tobytes()).hexdigest()
                     for s in sources.load_stamp_library(name)} for name in sources.SPLITS}
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]


@pytest.mark.parametrize("split", sources.SPLITS)
def test_loaded_stamps_are_peak_one_finite_and_tapered(split):
    stamps = sources.load_stamp_library(split)
    assert stamps.dtype == np.float32 and stamps.shape[1:] == (64, 64)
    assert len(stamps) >= 10
    assert np.all(np.isfinite(stamps)) and stamps.min() >= 0.0
    np.testing.assert_array_equal(stamps.max(axis=(1, 2)), 1.0)
    # Corner pixels sit at r = 1.39: T = 0.0057, so a peak-1 stamp is <= 0.006 there.
    corners = stamps[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() <= 0.006
    # Exactly the stored stamp times the taper, renormalised (float32 rounding).
    base = importlib.resources.files("ensai_tf.data").joinpath("resources")
    wanted = set(json.loads(base.joinpath(sources.SPLITS_FILE).read_text())["splits"][split])
    with base.joinpath(sources.LIBRARY_FILE).open("rb") as fh, np.load(fh) as npz:
        raw = npz["stamps"][[int(i) in wanted for i in npz["ids"]]].astype(np.float64)
    expected = raw / raw.max(axis=(1, 2), keepdims=True) * sources.stamp_taper(64)
    expected /= expected.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(stamps, expected, atol=1e-6)


def test_taper_matches_closed_form():
    # T(r) = 1/(1 + (r/0.6)^6) renormalised to its largest pixel value; the
    # pixel at (u, v) = (0.6/sqrt2 + ..) is checked against the formula exactly.
    size = 50
    taper = sources.stamp_taper(size, 0.6)
    u = (np.arange(size) + 0.5) * 2.0 / size - 1.0
    r = np.hypot(u[7], u[31])
    expected = 1.0 / (1.0 + (r / 0.6) ** 6)
    peak = 1.0 / (1.0 + (np.hypot(u[25], u[25]) / 0.6) ** 6)
    np.testing.assert_allclose(taper[31, 7], expected / peak, rtol=1e-6)
    assert taper.max() == 1.0


def test_resized_library_keeps_peak_one(train_stamps):
    stamps = sources.load_stamp_library("validation", size=96)
    assert stamps.shape[1:] == (96, 96)
    np.testing.assert_array_equal(stamps.max(axis=(1, 2)), 1.0)


# ---------------------------------------------------------------------------
# User stamps
# ---------------------------------------------------------------------------

def _write_user_stamps(folder):
    fits.PrimaryHDU(_blob(30, 0.2, 0.0)).writeto(folder / "gal_a.fits")
    rgb = np.zeros((24, 36, 3), np.uint8)  # non-square: zero-padded to a square
    rgb[..., 0] = (255 * _blob(36, -0.2, 0.1)[:24]).astype(np.uint8)
    rgb[..., 1] = rgb[..., 0] // 2
    Image.fromarray(rgb).save(folder / "gal_b.png")
    Image.fromarray((255 * _blob(32)).astype(np.uint8)).save(folder / "gal_c.jpg", quality=95)
    (folder / "README.txt").write_text("not a stamp")


def test_user_stamp_folder_with_fits_png_and_jpeg_loads(tmp_path):
    _write_user_stamps(tmp_path)
    loaded = {name: sources.load_stamp_library(name, stamp_dirs=(str(tmp_path),), size=32,
                                               packaged=False) for name in sources.SPLITS}
    assert sum(len(v) for v in loaded.values()) == 3
    for name, stamps in loaded.items():
        expected = sum(sources.user_stamp_split(f) == name
                       for f in ("gal_a.fits", "gal_b.png", "gal_c.jpg"))
        assert len(stamps) == expected
        if len(stamps):
            assert np.all(np.isfinite(stamps)) and stamps.min() >= 0.0
            np.testing.assert_array_equal(stamps.max(axis=(1, 2)), 1.0)


def test_user_fits_stamp_keeps_orientation(tmp_path):
    # Blob at x = +0.3 (columns), y = -0.2 (rows) in stamp units stays there:
    # no flips (docs/design.md §3.2 step 5). Tolerance 0.05 stamp units: taper pull.
    fits.PrimaryHDU(_blob(40, 0.3, -0.2, sigma=0.1)).writeto(tmp_path / "one.fits")
    split = sources.user_stamp_split("one.fits")
    stamp = sources.load_stamp_library(split, stamp_dirs=(tmp_path,), size=40, packaged=False)[0]
    x, y = _centroid(stamp, 1.0)
    np.testing.assert_allclose((x, y), (0.3, -0.2), atol=0.05)


def test_user_stamp_split_is_a_stable_hash_of_the_base_name():
    assert sources.user_stamp_split("/a/b/gal.fits") == sources.user_stamp_split("gal.fits")
    counts = {name: 0 for name in sources.SPLITS}
    for i in range(2000):
        counts[sources.user_stamp_split(f"stamp_{i:05d}.png")] += 1
    # 80/10/10 with binomial sd 9 (train) and 6.7 (others) at N = 2000: 5 sd.
    assert abs(counts["train"] - 1600) < 45
    assert abs(counts["validation"] - 200) < 34 and abs(counts["test"] - 200) < 34


def test_empty_folder_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(InputError, match="holds no stamp files") as err:
        sources.load_stamp_library("train", stamp_dirs=(tmp_path,), packaged=False)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        sources.load_stamp_library("train", stamp_dirs=(tmp_path / "nope",))


def test_corrupt_fits_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  =  this is not really a FITS file" * 3)
    with pytest.raises(InputError, match="broken.fits"):
        sources.load_stamp_library("test", stamp_dirs=(tmp_path,), packaged=False)
    (tmp_path / "broken.fits").unlink()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="broken.png"):
        sources.load_stamp_library("test", stamp_dirs=(tmp_path,), packaged=False)


@pytest.mark.parametrize("kind", ["zero", "nan", "cube"])
def test_unusable_fits_stamp_is_an_error_naming_the_file(tmp_path, kind):
    data = {"zero": np.zeros((8, 8)), "nan": np.full((8, 8), np.nan),
            "cube": np.ones((3, 8, 8))}[kind]
    fits.PrimaryHDU(data).writeto(tmp_path / f"{kind}.fits")
    for split in sources.SPLITS:  # reported whatever split the file hashes to
        with pytest.raises(InputError, match=f"{kind}.fits"):
            sources.load_stamp_library(split, stamp_dirs=(tmp_path,), packaged=False)


def test_unknown_split_is_an_error():
    with pytest.raises(InputError, match="valid splits"):
        sources.load_stamp_library("training")


# ---------------------------------------------------------------------------
# Draws
# ---------------------------------------------------------------------------

def test_draws_are_identical_whatever_the_batch():
    cfg = config.SourceConfig()
    seeds = tf.constant([[3, 4], [5, 6], [7, 8]], tf.int64)
    together = sources.sample_sources(seeds, 3, cfg, 20)
    alone = sources.sample_sources(seeds[1:2], None, cfg, 20)
    for key, value in together.items():
        np.testing.assert_array_equal(value.numpy()[1], alone[key].numpy()[0], err_msg=key)
    # A shape-(2,) seed means per-example seeds fold_in(seed, i).
    base = tf.constant([11, 12], tf.int32)
    batch = sources.sample_sources(base, 4, cfg, 20)
    folded = tf.stack([tf.random.fold_in(base, i) for i in range(4)])
    rows = sources.sample_sources(folded, 4, cfg, 20)
    for key in batch:
        np.testing.assert_array_equal(batch[key].numpy(), rows[key].numpy(), err_msg=key)


def test_draws_inside_tf_function_match_eager():
    # Same uniforms; graph rewrites may change float32 rounding by an ulp (rtol 1e-6).
    cfg = config.SourceConfig()
    seeds = tf.constant([[1, 2], [3, 4]], tf.int64)
    eager = sources.sample_sources(seeds, 2, cfg, 5)
    graph = tf.function(lambda s: sources.sample_sources(s, None, cfg, 5))(seeds)
    for key in eager:
        np.testing.assert_allclose(eager[key].numpy(), graph[key].numpy(), rtol=1e-6,
                                   err_msg=key)


def test_family_frequencies_match_weights():
    # N = 3000: binomial sd of a frequency <= 0.0091; tolerance 0.04 is 4.4 sd.
    cfg = config.SourceConfig(family_weights=(1.0, 2.0, 3.0))
    draws = sources.sample_sources(tf.constant([0, 1]), 3000, cfg, 10)
    freq = np.bincount(draws["family"].numpy(), minlength=3) / 3000
    np.testing.assert_allclose(freq, [1 / 6, 2 / 6, 3 / 6], atol=0.04)
    empty = sources.sample_sources(tf.constant([0, 1]), 3000, cfg, 0)
    freq = np.bincount(empty["family"].numpy(), minlength=3) / 3000
    assert freq[1] == 0.0
    np.testing.assert_allclose(freq, [0.25, 0.0, 0.75], atol=0.04)


def test_stamp_only_weights_without_stamps_is_an_error():
    cfg = config.SourceConfig(family_weights=(0.0, 1.0, 0.0))
    with pytest.raises(InputError, match="no family"):
        sources.sample_sources(tf.constant([0, 1]), 4, cfg, 0)


def test_draws_respect_config_ranges():
    cfg = config.SourceConfig()
    d = {k: v.numpy() for k, v in sources.sample_sources(tf.constant([2, 3]), 500, cfg,
                                                         7).items()}
    assert d["scale"].min() >= 0.2 and d["scale"].max() <= 1.0
    assert d["stamp_index"].min() >= 0 and d["stamp_index"].max() <= 6
    assert set(np.unique(d["clump_count"])) == {1, 2, 3, 4, 5}
    active = np.arange(5)[None, :] < d["clump_count"][:, None]
    assert np.all(d["clump_amplitude"][~active] == 0.0)
    assert d["clump_amplitude"][active].min() > 0.0 and d["clump_amplitude"].max() <= 1.0
    assert d["clump_n"].min() >= 1.0 and d["clump_n"].max() <= 5.0
    assert d["clump_q"].min() >= 0.6 and d["clump_q"].max() <= 1.0
    assert d["sersic_q"].min() >= 0.4 and d["sersic_r_eff"].max() <= 0.4
    # Sersic vs Gaussian clumps with p = 1/2: 2500 draws, sd 0.01, tolerance 0.04.
    assert abs(d["clump_sersic"].mean() - 0.5) < 0.04


def test_clump_covariance_largest_eigenvalue_is_half_radius_squared():
    cfg = config.SourceConfig()
    n = 2000
    d = {k: v.numpy() for k, v in sources.sample_sources(tf.constant([5, 6]), n, cfg,
                                                         0).items()}
    half_radius = 0.25 * d["scale"]  # R/2 with R = 0.5 s (docs/design.md §3.2 [R])
    eig, vec = np.linalg.eigh(d["clump_cov"].astype(np.float64))
    np.testing.assert_allclose(eig[:, 1], half_radius**2, rtol=1e-4)
    # Statistically: centres projected on the major eigenvector, in units of
    # R/2, have unit variance. 10000 values: sd of the variance 0.014; tol 0.06.
    centres = np.stack([d["clump_x"], d["clump_y"]], axis=-1)
    along = np.einsum("bki,bi->bk", centres, vec[:, :, 1]) / half_radius[:, None]
    np.testing.assert_allclose(np.mean(along**2), 1.0, atol=0.06)
    across = np.einsum("bki,bi->bk", centres, vec[:, :, 0]) / np.sqrt(eig[:, :1])
    np.testing.assert_allclose(np.mean(across**2), 1.0, atol=0.06)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", sources.SOURCE_FAMILIES)
def test_render_gives_finite_nonnegative_peak_one_images(family, train_stamps):
    weights = tuple(float(f == family) for f in sources.SOURCE_FAMILIES)
    cfg = config.SourceConfig(family_weights=weights)
    draws = sources.sample_sources(tf.constant([4, 2]), 6, cfg, len(train_stamps))
    images, half = sources.render_sources(draws, train_stamps, size=48)
    images, half = images.numpy(), half.numpy()
    assert images.shape == (6, 48, 48) and images.dtype == np.float32 and half.shape == (6,)
    assert np.all(np.isfinite(images)) and images.min() >= 0.0
    np.testing.assert_array_equal(images.max(axis=(1, 2)), 1.0)
    assert np.all(half > 0)
    if family == "stamp":
        np.testing.assert_array_equal(half, draws["scale"].numpy())
    # The taper reaches the border: edge pixels are < 5% of the peak.
    assert max(images[:, 0].max(), images[:, -1].max(), images[:, :, 0].max(),
               images[:, :, -1].max()) < 0.05


def test_render_mixed_batch_matches_single_family_renders(train_stamps):
    cfg = config.SourceConfig()
    seeds = tf.constant([[i, 9] for i in range(9)], tf.int64)
    draws = sources.sample_sources(seeds, None, cfg, len(train_stamps))
    images, half = sources.render_sources(draws, train_stamps, size=32)
    for i in range(9):
        one = {k: v[i:i + 1] for k, v in draws.items()}
        image, h = sources.render_sources(one, train_stamps, size=32)
        np.testing.assert_allclose(images[i].numpy(), image[0].numpy(), atol=1e-6)
        assert float(half[i]) == float(h[0])


def test_stamp_render_places_stamp_on_plus_minus_s():
    # Hand-written draws: a stamp with a blob at (+0.4, -0.3) stamp units,
    # placed with s = 0.5" -> centroid at (+0.2", -0.15") (rows = +y).
    # render_sources does not re-taper library stamps, so the only error is the
    # bicubic 40 -> 64 px resize: tolerance 0.005" (a sixth of a render pixel).
    stamps = _blob(40, 0.4, -0.3, sigma=0.1)[None]
    draws = _draws(family=[1], scale=[0.5], stamp_index=[0])
    images, half = sources.render_sources(draws, stamps.astype(np.float32), size=64)
    x, y = _centroid(images[0].numpy(), float(half[0]))
    np.testing.assert_allclose((x, y), (0.2, -0.15), atol=0.005)


def _draws(**values):
    """One example's draws from sample_sources, with the given entries replaced."""
    cfg = config.SourceConfig(clump_count=(2, 2))
    draws = sources.sample_sources(tf.constant([0, 0]), 1, cfg, 1)
    for key, value in values.items():
        draws[key] = tf.constant(value, dtype=draws[key].dtype)
    return draws


def _one_clump(x, y, sersic, n=1.0, r_eff=0.1, q=1.0, angle=0.0, sigma=0.03):
    """Family clumpy with one active clump (the second has amplitude 0)."""
    return _draws(family=[0], clump_count=[1], clump_x=[[x, 0.0]], clump_y=[[y, 0.0]],
                  clump_sersic=[[sersic, False]], clump_n=[[n, 1.0]], clump_r_eff=[[r_eff, 0.1]],
                  clump_q=[[q, 1.0]], clump_angle=[[angle, 0.0]], clump_sigma=[[sigma, 0.01]],
                  clump_amplitude=[[0.7, 0.0]])


def test_clumpy_render_position_and_unlensed_flux():
    # One Gaussian clump (sigma 0.03") at (0.1, -0.05)": h = (|c| + 3 sigma) / 0.6,
    # the centroid lands on the clump (tol 0.005": taper pull), and the
    # unlensed flux sum * (2h/size)^2 equals the integral of the tapered clump
    # divided by its sampled peak, integrated independently on a 4x finer
    # float64 grid (rtol 2e-3: sigma is 5.7 render pixels).
    draws = _one_clump(0.1, -0.05, False)
    images, half = sources.render_sources(draws, None, size=128)
    h = float(half[0])
    np.testing.assert_allclose(h, (np.hypot(0.1, 0.05) + 0.09) / 0.6, rtol=1e-5)
    image = images[0].numpy().astype(np.float64)
    x, y = _centroid(image, h)
    np.testing.assert_allclose((x, y), (0.1, -0.05), atol=0.005)

    def tapered_clump(n):
        coords = (np.arange(n) - (n - 1) / 2.0) * 2 * h / n
        xx, yy = np.meshgrid(coords, coords, indexing="xy")
        taper = 1.0 / (1.0 + (np.hypot(xx, yy) / h / 0.6) ** 6)
        return np.exp(-0.5 * ((xx - 0.1) ** 2 + (yy + 0.05) ** 2) / 0.03**2) * taper

    expected = tapered_clump(512).sum() * (2 * h / 512) ** 2 / tapered_clump(128).max()
    np.testing.assert_allclose(image.sum() * (2 * h / 128) ** 2, expected, rtol=2e-3)


def test_sersic_clump_major_axis_follows_angle():
    # Second moments of an elongated Sersic clump (q = 0.5, angle 60 deg):
    # the principal axis is at 60 deg from +x towards +y (rows), tol 2 deg.
    draws = _one_clump(0.0, 0.0, True, n=1.0, r_eff=0.1, q=0.5, angle=np.deg2rad(60.0))
    images, half = sources.render_sources(draws, None, size=96)
    image, h = images[0].numpy().astype(np.float64), float(half[0])
    coords = (np.arange(96) - 47.5) * 2 * h / 96
    xx, yy = np.meshgrid(coords, coords, indexing="xy")
    w = image / image.sum()
    mxx, myy, mxy = (w * xx * xx).sum(), (w * yy * yy).sum(), (w * xx * yy).sum()
    angle = 0.5 * np.rad2deg(np.arctan2(2 * mxy, mxx - myy))
    assert abs(angle - 60.0) < 2.0


def test_out_of_range_stamp_index_is_an_error():
    draws = _draws(family=[1], stamp_index=[3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="stamp_index out of range"):
        sources.render_sources(draws, np.ones((2, 8, 8), np.float32), size=8)
    with pytest.raises(InputError, match="lack clump_amplitude"):
        sources.render_sources({k: v for k, v in draws.items() if k != "clump_amplitude"},
                               np.ones((2, 8, 8), np.float32), size=8)


def test_bad_seed_shape_is_an_error():
    with pytest.raises(InputError, match="shape"):
        sources.sample_sources(tf.constant([1, 2, 3]), 2, config.SourceConfig(), 0)


def test_sample_and_render_run_inside_dataset_map(train_stamps):
    # Batched per-example seeds of unknown batch size (the last batch is short).
    cfg = config.SourceConfig()
    seeds = tf.data.Dataset.range(5).map(lambda i: tf.stack([i, 3 * i])).batch(3)
    ds = seeds.map(lambda s: sources.render_sources(
        sources.sample_sources(s, None, cfg, len(train_stamps)), train_stamps, size=16))
    shapes = [images.shape for images, _ in ds]
    assert shapes == [(3, 16, 16), (2, 16, 16)]
    eager, _ = sources.render_sources(
        sources.sample_sources(tf.constant([[4, 12]], tf.int64), None, cfg, len(train_stamps)),
        train_stamps, size=16)
    last = list(ds)[-1][0]
    np.testing.assert_allclose(last[1].numpy(), eager[0].numpy(), atol=1e-6)
