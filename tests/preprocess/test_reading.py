"""Reading .npy and FITS files: pixel scales, refusals that name the file (preprocess.reading)."""

import numpy as np
import pytest
from astropy.io import fits

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess import images as prep
from ensai_tf.preprocess import reading


def test_fits_pixel_scale_from_wcs_and_resampling(tmp_path, arc_image, celestial_wcs, write_fits):
    """A 0.08" FITS image is resampled onto 0.04" pixels about its centre."""
    data = arc_image(96, 0.08)
    path = write_fits(tmp_path / "lens.fits", data, celestial_wcs(0.08, 96))
    images, wcs, scales = reading.read_image_file(path)
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
        reading.read_image_file(path)
    images, wcs, scales = reading.read_image_file(path, pixel_scale=0.04)
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
        reading.read_image_file(str(path))


def test_fits_with_no_image_hdu(tmp_path):
    from astropy.table import Table

    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"a": [1, 2]}))]).writeto(path)
    with pytest.raises(InputError, match=r"table.fits: no HDU holds an image"):
        reading.read_image_file(str(path))


@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_and_inf_are_refused_naming_the_file(tmp_path, value, word, arc_image):
    image = arc_image()
    image[5, 7] = value
    path = tmp_path / f"bad_{word}.npy"
    np.save(path, image)
    with pytest.raises(InputError, match=rf"bad_{word}.npy: image 0 contains {word}"):
        reading.read_image_file(str(path))


@pytest.mark.parametrize("shape", [(192,), (3, 192, 192, 2), (4, 4), (2, 1, 3, 4, 5)])
def test_wrong_shape_says_the_expected_one(tmp_path, shape):
    path = tmp_path / "shape.npy"
    np.save(path, np.ones(shape))
    with pytest.raises(InputError, match=r"shape.npy: wrong shape .*\(192, 192, 1\)"):
        reading.read_image_file(str(path))


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
        reading.read_image_file(str(tmp_path / "x.png"))
    with pytest.raises(InputError, match=r"nope.npy: no such file"):
        reading.read_image_file(str(tmp_path / "nope.npy"))


def test_npy_stack_gives_one_prepared_image_each(tmp_path, arc_image):
    stack = np.stack([arc_image(), 2.0 * arc_image()])[..., None]
    np.save(tmp_path / "stack.npy", stack)
    items = prep.prepare_images(str(tmp_path / "stack.npy"))
    assert [i.name for i in items] == [f"{tmp_path / 'stack.npy'}[0]",
                                       f"{tmp_path / 'stack.npy'}[1]"]
    # normalisation removes the factor 2 (float32 round-off)
    np.testing.assert_allclose(items[0].image, items[1].image, rtol=1e-6)
