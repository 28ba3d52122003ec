"""Two-band cutouts (``ensai_tf.realdata.cutout``, docs/design.md §8.4): sky positions,
alignment of the red band, resampling, and bands or positions that are refused.
"""

import numpy as np
import pytest
from realdata_files import S, blob, centroid_arcsec, make_wcs, write_fits

from ensai_tf import realdata
from ensai_tf.errors import InputError
from ensai_tf.preprocess.images import resample_flux_conserving


def test_cutout_at_a_sky_position_lands_on_the_right_pixel(tmp_path):
    shape = (260, 300)
    wcs = make_wcs(shape, theta_deg=20.0)
    col, row = 171.3, 97.8
    data = blob(shape, col, row) + 0.01
    path = write_fits(tmp_path / "b.fits", data, wcs)
    band = realdata.read_band(path)
    sky = wcs.pixel_to_world(col, row)
    cut = realdata.cut_two_bands(band, band, sky=(sky.ra.deg, sky.dec.deg))
    # the requested point is at the grid origin to within Cutout2D's rounding to
    # a whole pixel (half a pixel per axis), and the frame knows exactly where
    gx, gy = cut.frame.to_grid(col, row)
    assert abs(gx) <= 0.5 * S + 1e-9 and abs(gy) <= 0.5 * S + 1e-9
    cx, cy = centroid_arcsec(cut.blue - 0.01)
    # the blob's centroid is where the frame puts the pixel (sub-pixel, 0.1 pixel)
    assert abs(cx - gx) < 0.1 * S and abs(cy - gy) < 0.1 * S
    back = cut.frame.to_file_pixel(gx, gy)
    np.testing.assert_allclose(back, (col, row), atol=1e-9)


def test_red_band_on_a_shifted_grid_is_aligned_on_the_sky(tmp_path):
    shape = (240, 240)
    wcs_b = make_wcs(shape)
    # the red file's pixel grid is offset by (7.3, -4.6) pixels on the sky
    wcs_r = make_wcs(shape, crpix=(shape[1] / 2.0 + 7.3, shape[0] / 2.0 - 4.6))
    col, row = 118.0, 121.0
    sky = wcs_b.pixel_to_world(col, row)
    rc, rr = (float(v) for v in wcs_r.world_to_pixel(sky))
    blue = realdata.read_band(write_fits(tmp_path / "b.fits", blob(shape, col, row) + 0.01, wcs_b))
    red = realdata.read_band(write_fits(tmp_path / "r.fits", blob(shape, rc, rr) + 0.01, wcs_r))
    cut = realdata.cut_two_bands(blue, red, position=(col, row))
    bx, by = centroid_arcsec(np.where(cut.blue > 0, cut.blue - 0.01, 0))
    rx, ry = centroid_arcsec(np.where(cut.red > 0, cut.red - 0.01, 0))
    # bilinear sub-pixel shift: centroids agree to 0.05 pixel
    assert abs(bx - rx) < 0.05 * S and abs(by - ry) < 0.05 * S


def test_resampling_to_the_network_grid_keeps_total_flux(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(0.5, 1.5, size=(60, 64))  # 3.0" x 3.2": whole 0.04" pixels
    out, _ = resample_flux_conserving(image, (0.05, 0.05))
    # exact area weighting: float64 round-off only
    np.testing.assert_allclose(out.sum(), image.sum(), rtol=1e-10)
    # and through the cutout path: a compact source well inside the 0.05" file
    shape = (200, 200)
    data = blob(shape, 100.2, 99.6, sigma=2.0)
    band = realdata.read_band(write_fits(tmp_path / "b05.fits", data + 1e-9, make_wcs(shape, scale=0.05)))
    cut = realdata.cut_two_bands(band, band, position=(100.2, 99.6))
    assert band.scales == pytest.approx((0.05, 0.05), rel=1e-9)
    # pixel values are flux per pixel, so the sum is the flux; the 1e-9 floor
    # (never 0, which would be masked) adds < 1e-6 of it; float32 file: 1e-5
    np.testing.assert_allclose(cut.blue.sum(), data.sum(), rtol=1e-5)


def test_unalignable_bands_are_refused(tmp_path):
    shape = (240, 240)
    b = realdata.read_band(write_fits(tmp_path / "b.fits", np.ones(shape), make_wcs(shape)))
    rot = realdata.read_band(write_fits(tmp_path / "rot.fits", np.ones(shape),
                                    make_wcs(shape, theta_deg=10.0)))
    with pytest.raises(InputError, match="cannot be aligned") as err:
        realdata.cut_two_bands(b, rot)
    assert str(tmp_path / "b.fits") in str(err.value) and "rot.fits" in str(err.value)
    nowcs = realdata.read_band(write_fits(tmp_path / "nowcs.fits", np.ones((200, 240))),
                               pixel_scale=S)
    with pytest.raises(InputError, match="cannot be aligned.*no celestial WCS"):
        realdata.cut_two_bands(b, nowcs)


def test_sky_position_outside_the_image(tmp_path):
    shape = (240, 240)
    wcs = make_wcs(shape)
    b = realdata.read_band(write_fits(tmp_path / "b.fits", np.ones(shape), wcs))
    far = wcs.pixel_to_world(400.0, 100.0)
    with pytest.raises(InputError, match="falls outside") as err:
        realdata.cut_two_bands(b, b, sky=(far.ra.deg, far.dec.deg))
    assert str(tmp_path / "b.fits") in str(err.value)
