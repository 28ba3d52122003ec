"""Reading, resampling, grid fitting and normalisation of user images (ensai_tf.preprocess.images)."""

import numpy as np
import pytest
from astropy.io import fits

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess import images as prep


# ------------------------------------------------------------------ geometry


def test_resample_conserves_flux_and_halves_size():
    """Rebinning 0.02" -> 0.04" keeps the total flux to float64 precision."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 1.0, size=(40, 60))
    out, ratio = prep.resample_flux_conserving(image, (0.02, 0.02), 0.04)
    assert out.shape == (20, 30)
    assert ratio == (0.5, 0.5)
    # exact 2x2 block sums: tolerance is float64 round-off
    np.testing.assert_allclose(out, image.reshape(20, 2, 30, 2).sum(axis=(1, 3)), rtol=1e-12)


def test_resample_upsampling_spreads_flux_evenly():
    """0.08" -> 0.04": each input pixel's flux splits into four equal parts."""
    image = np.arange(1.0, 17.0).reshape(4, 4)
    out, _ = prep.resample_flux_conserving(image, (0.08, 0.08), 0.04)
    np.testing.assert_allclose(out, np.kron(image, np.ones((2, 2))) / 4.0, rtol=1e-12)
    np.testing.assert_allclose(out.sum(), image.sum(), rtol=1e-12)


def test_resample_keeps_masks_and_does_not_dilute():
    """A masked (zero) block stays exactly 0; neighbours keep their value."""
    image = np.full((8, 8), 2.0)
    image[:4, :4] = 0.0
    out, _ = prep.resample_flux_conserving(image, (0.02, 0.02), 0.04)
    assert np.all(out[:2, :2] == 0.0)
    np.testing.assert_allclose(out[2:, 2:], 8.0, rtol=1e-12)


@pytest.mark.parametrize("shape", [(100, 130), (250, 192), (193, 191)])
def test_fit_to_grid_is_central(shape):
    """The pixel at the input centre lands at the output centre (95.5, 95.5)."""
    image = np.zeros(shape)
    yy, xx = np.indices(shape)
    image = (xx + 1000.0 * yy).astype(float)
    out, (sx, sy) = prep.fit_to_grid(image, 192)
    assert out.shape == (192, 192)
    assert sx == (shape[1] - 192) // 2 and sy == (shape[0] - 192) // 2
    # output pixel (r, c) comes from input (r + sy, c + sx) wherever they overlap
    r, c = 100, 80
    if 0 <= r + sy < shape[0] and 0 <= c + sx < shape[1]:
        assert out[r, c] == image[r + sy, c + sx]
    if sx < 0:
        assert np.all(out[:, : -sx] == 0.0)


def test_normalise_peak_ignores_a_hot_pixel(arc_image):
    image = arc_image(peak=3.0)
    image[10, 10] = 500.0
    out = prep.normalise_peak(image)
    assert 0.95 < np.max(out[50:150, 50:150]) < 1.05  # median filter: ~1% of the peak
    assert out[10, 10] > 100


# ------------------------------------------------------------------ reading


def test_fits_pixel_scale_from_wcs_and_resampling(tmp_path, arc_image, celestial_wcs, write_fits):
    """A 0.08" FITS image is resampled onto 0.04" pixels about its centre."""
    data = arc_image(96, 0.08)
    path = write_fits(tmp_path / "lens.fits", data, celestial_wcs(0.08, 96))
    images, wcs, scales = prep.read_image_file(path)
    np.testing.assert_allclose(scales, (0.08, 0.08), rtol=1e-9)
    assert wcs is not None and images.shape == (1, 96, 96)
    (item,) = prep.prepare_images(path)
    assert item.image.shape == (192, 192, 1) and item.image.dtype == np.float32
    np.testing.assert_allclose(item.centre_pix, (47.5, 47.5), atol=1e-12)
    # the ring of radius 1" must peak at radius 1" on the 0.04" grid (+-1 pixel)
    x, y = conventions.pixel_grid(192, 0.04)
    r = np.hypot(x, y)[item.image[..., 0] > 0.9]
    assert abs(np.median(r) - 1.0) < 0.04


def test_fits_without_wcs_needs_a_pixel_scale(tmp_path, arc_image, write_fits):
    path = write_fits(tmp_path / "nowcs.fits", arc_image())
    with pytest.raises(InputError, match=r"nowcs.fits.*pixel scale is unknown.*--pixel-scale"):
        prep.read_image_file(path)
    images, wcs, scales = prep.read_image_file(path, pixel_scale=0.04)
    assert wcs is None and scales == (0.04, 0.04)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", r"bad.fits: the FITS file is empty"),
        (b"SIMPLE  =   this is not a FITS header" + b" " * 200, r"bad.fits: not a readable FITS"),
    ],
)
def test_empty_or_corrupt_fits_is_named(tmp_path, content, pattern):
    path = tmp_path / "bad.fits"
    path.write_bytes(content)
    with pytest.raises(InputError, match=pattern):
        prep.read_image_file(str(path))


def test_fits_with_no_image_hdu(tmp_path):
    from astropy.table import Table

    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"a": [1, 2]}))]).writeto(path)
    with pytest.raises(InputError, match=r"table.fits: no HDU holds an image"):
        prep.read_image_file(str(path))


@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_and_inf_are_refused_naming_the_file(tmp_path, value, word, arc_image):
    image = arc_image()
    image[5, 7] = value
    path = tmp_path / f"bad_{word}.npy"
    np.save(path, image)
    with pytest.raises(InputError, match=rf"bad_{word}.npy: image 0 contains {word}"):
        prep.read_image_file(str(path))


@pytest.mark.parametrize("shape", [(192,), (3, 192, 192, 2), (4, 4), (2, 1, 3, 4, 5)])
def test_wrong_shape_says_the_expected_one(tmp_path, shape):
    path = tmp_path / "shape.npy"
    np.save(path, np.ones(shape))
    with pytest.raises(InputError, match=r"shape.npy: wrong shape .*\(192, 192, 1\)"):
        prep.read_image_file(str(path))


def test_all_masked_and_constant_images_are_refused(tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((192, 192)))
    np.save(tmp_path / "flat.npy", np.full((192, 192), 3.0))
    with pytest.raises(InputError, match=r"zeros.npy: every pixel is masked"):
        prep.prepare_images(str(tmp_path / "zeros.npy"))
    with pytest.raises(InputError, match=r"flat.npy: the image is constant"):
        prep.prepare_images(str(tmp_path / "flat.npy"))


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"png")
    with pytest.raises(InputError, match=r"x.png: unknown file type"):
        prep.read_image_file(str(tmp_path / "x.png"))
    with pytest.raises(InputError, match=r"nope.npy: no such file"):
        prep.read_image_file(str(tmp_path / "nope.npy"))


def test_npy_stack_gives_one_prepared_image_each(tmp_path, arc_image):
    stack = np.stack([arc_image(), 2.0 * arc_image()])[..., None]
    np.save(tmp_path / "stack.npy", stack)
    items = prep.prepare_images(str(tmp_path / "stack.npy"))
    assert [i.name for i in items] == [f"{tmp_path / 'stack.npy'}[0]",
                                       f"{tmp_path / 'stack.npy'}[1]"]
    # normalisation removes the factor 2 (float32 round-off)
    np.testing.assert_allclose(items[0].image, items[1].image, rtol=1e-6)
