"""Real two-band data (docs/design.md §8.4): WCS geometry, cutouts, resampling, PSF
matching, masks, cosmic rays, the --bands prediction path and bad input.

FITS files are written into pytest's tmp_path; images are small (a 120- or
260-pixel field) except where the 192-pixel network grid is the point.
"""

import csv
import json
import math
import pathlib

import keras
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from ensai_tf import cli, conventions, realdata, twoband
from ensai_tf.errors import InputError
from ensai_tf.preprocess import ica
from ensai_tf.preprocess.images import fit_to_grid, resample_flux_conserving

S = conventions.PIXEL_SCALE


def _wcs(shape, scale=S, theta_deg=0.0, flip=False, ra=150.0, dec=2.0, crpix=None):
    """TAN WCS whose image +y (row) axis lies at PA theta east of north.

    CD = s [[-cos t, sin t], [sin t, cos t]] (deg/pixel); ``flip`` reverses
    the x axis (east to the right for theta = 0).
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = list(crpix) if crpix is not None else [shape[1] / 2.0, shape[0] / 2.0]
    t = math.radians(theta_deg)
    cd = (scale / 3600.0) * np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]])
    if flip:
        cd = cd @ np.diag([-1.0, 1.0])
    w.wcs.cd = cd
    return w


def _write(path, data, wcs=None, extra_hdus=()):
    header = wcs.to_header() if wcs is not None else None
    hdus = [fits.PrimaryHDU(data=np.asarray(data, np.float32), header=header), *extra_hdus]
    fits.HDUList(hdus).writeto(path)
    return str(path)


def _blob(shape, col, row, sigma=1.5, amp=1.0):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return amp * np.exp(-0.5 * ((cols - col) ** 2 + (rows - row) ** 2) / sigma ** 2)


def _centroid_arcsec(image):
    x, y = conventions.pixel_grid(image.shape[0], S)
    w = np.clip(image, 0, None)
    return float((w * x).sum() / w.sum()), float((w * y).sum() / w.sum())


# ---------------------------------------------------------------- position angle


@pytest.mark.parametrize("theta", [0.0, 30.0, -75.0, 140.0])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dec", [2.0, 60.0])
def test_position_angle_east_of_north_closed_form(theta, flip, dec):
    wcs = _wcs((100, 100), theta_deg=theta, flip=flip, dec=dec)
    jac = realdata.pixel_to_sky_jacobian(wcs, 49.0, 49.0)  # the reference pixel (1-based 50)
    for phi_deg in (0.0, 25.0, 110.0, 260.0):
        e_x, e_y = conventions.ellipticity_from_q_phi(0.7, math.radians(phi_deg))
        a = phi_deg + 90.0  # grid angle of the mass major axis (docs/design.md §0)
        # CD maps grid direction a to (east, north) = s(-cos(t+a), sin(t+a)) -> PA = t+a-90;
        # a flipped x axis sends a to 180-a
        expected = (theta + (180.0 - a if flip else a) - 90.0) % 180.0
        got = float(realdata.position_angle_east_of_north(e_x, e_y, jac, (S, S)))
        # tolerance 1e-6 deg: float64 finite differences of an exact TAN projection
        assert min(abs(got - expected), 180.0 - abs(got - expected)) < 1e-6
        # the parity partner is the same lens
        assert float(realdata.position_angle_east_of_north(-e_x, -e_y, jac, (S, S))) == \
            pytest.approx(got, abs=1e-9)
        # and the published-value conversion inverts it (up to parity)
        bx, by = realdata.ellipticity_from_sky(0.7, got, jac, (S, S))
        assert np.hypot(bx, by) == pytest.approx(0.3, abs=1e-9)
        assert min(np.hypot(bx - e_x, by - e_y), np.hypot(bx + e_x, by + e_y)) < 1e-9


def test_jacobian_sign_shows_the_flip():
    plain = realdata.pixel_to_sky_jacobian(_wcs((50, 50)), 24.0, 24.0)
    flipped = realdata.pixel_to_sky_jacobian(_wcs((50, 50), flip=True), 24.0, 24.0)
    # north up, east left: d east / d col = -0.04 arcsec, d north / d row = +0.04
    np.testing.assert_allclose(plain, [[-S, 0.0], [0.0, S]], atol=1e-9)
    assert np.linalg.det(plain) < 0 < np.linalg.det(flipped)


# ---------------------------------------------------------------- cutouts


def test_cutout_at_a_sky_position_lands_on_the_right_pixel(tmp_path):
    shape = (260, 300)
    wcs = _wcs(shape, theta_deg=20.0)
    col, row = 171.3, 97.8
    data = _blob(shape, col, row) + 0.01
    path = _write(tmp_path / "b.fits", data, wcs)
    band = realdata.read_band(path)
    sky = wcs.pixel_to_world(col, row)
    cut = realdata.cut_two_bands(band, band, sky=(sky.ra.deg, sky.dec.deg))
    # the requested point is at the grid origin to within Cutout2D's rounding to
    # a whole pixel (half a pixel per axis), and the frame knows exactly where
    gx, gy = cut.frame.to_grid(col, row)
    assert abs(gx) <= 0.5 * S + 1e-9 and abs(gy) <= 0.5 * S + 1e-9
    cx, cy = _centroid_arcsec(cut.blue - 0.01)
    # the blob's centroid is where the frame puts the pixel (sub-pixel, 0.1 pixel)
    assert abs(cx - gx) < 0.1 * S and abs(cy - gy) < 0.1 * S
    back = cut.frame.to_file_pixel(gx, gy)
    np.testing.assert_allclose(back, (col, row), atol=1e-9)


def test_red_band_on_a_shifted_grid_is_aligned_on_the_sky(tmp_path):
    shape = (240, 240)
    wcs_b = _wcs(shape)
    # the red file's pixel grid is offset by (7.3, -4.6) pixels on the sky
    wcs_r = _wcs(shape, crpix=(shape[1] / 2.0 + 7.3, shape[0] / 2.0 - 4.6))
    col, row = 118.0, 121.0
    sky = wcs_b.pixel_to_world(col, row)
    rc, rr = (float(v) for v in wcs_r.world_to_pixel(sky))
    blue = realdata.read_band(_write(tmp_path / "b.fits", _blob(shape, col, row) + 0.01, wcs_b))
    red = realdata.read_band(_write(tmp_path / "r.fits", _blob(shape, rc, rr) + 0.01, wcs_r))
    cut = realdata.cut_two_bands(blue, red, position=(col, row))
    bx, by = _centroid_arcsec(np.where(cut.blue > 0, cut.blue - 0.01, 0))
    rx, ry = _centroid_arcsec(np.where(cut.red > 0, cut.red - 0.01, 0))
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
    data = _blob(shape, 100.2, 99.6, sigma=2.0)
    band = realdata.read_band(_write(tmp_path / "b05.fits", data + 1e-9, _wcs(shape, scale=0.05)))
    cut = realdata.cut_two_bands(band, band, position=(100.2, 99.6))
    assert band.scales == pytest.approx((0.05, 0.05), rel=1e-9)
    # pixel values are flux per pixel, so the sum is the flux; the 1e-9 floor
    # (never 0, which would be masked) adds < 1e-6 of it; float32 file: 1e-5
    np.testing.assert_allclose(cut.blue.sum(), data.sum(), rtol=1e-5)


def _second_moment(image):
    """Per-axis central second moment, arcsec^2."""
    x, y = conventions.pixel_grid(image.shape[0], S)
    cx, cy = _centroid_arcsec(image)
    return float((image * ((x - cx) ** 2 + (y - cy) ** 2)).sum() / image.sum() / 2.0)


@pytest.mark.parametrize("fwhm", [(0.06, 0.08), (0.12, 0.18), (0.2, 0.1)])
def test_psf_matching_gives_the_broader_gaussian(fwhm):
    n = 64
    keep = np.ones((n, n), bool)
    point = np.zeros((n, n))
    point[32, 32] = 1.0
    psf = [realdata.masked_gaussian_blur(point, f / realdata.FWHM_PER_SIGMA / S, keep)
           for f in fwhm]
    blue, red = realdata.match_psfs(psf[0], psf[1], fwhm[0], fwhm[1], keep=keep)
    broad = int(np.argmax(fwhm))
    matched = (blue, red)[1 - broad]
    np.testing.assert_array_equal((blue, red)[broad], psf[broad])  # broader band untouched
    # variances add under convolution, exactly, for sampled kernels too; the
    # sampled single-pass kernel's variance differs from sigma^2 by < 3% here
    target = (max(fwhm) / realdata.FWHM_PER_SIGMA) ** 2
    assert _second_moment(matched) == pytest.approx(target, rel=0.03)
    assert _second_moment(psf[broad]) == pytest.approx(target, rel=0.03)
    np.testing.assert_allclose(matched.sum(), 1.0, rtol=1e-6)  # flux kept
    if min(fwhm) >= 0.1:  # well sampled (sigma > 1 pixel): the same image pointwise
        np.testing.assert_allclose(matched, psf[broad], atol=2e-3 * psf[broad].max())


def test_masked_blur_ignores_masked_pixels():
    image = np.ones((30, 30))
    image[10:20, 10:20] = 0.0  # masked hole
    out = realdata.masked_gaussian_blur(image, 2.0)
    assert np.all(out[10:20, 10:20] == 0)
    # normalised convolution of a constant is the constant (no dilution by the hole)
    np.testing.assert_allclose(out[image != 0], 1.0, rtol=1e-12)


# ---------------------------------------------------------------- masks


def test_circular_mask_area_and_position():
    mask = realdata.circular_mask(192, [(0.0, 0.0), (1.0, -0.5)], 0.2)
    x, y = conventions.pixel_grid(192, S)
    first = np.hypot(x, y) < 0.5
    # a 0.2" disc is a 5-pixel radius: area pi 25 = 78.5 pixels, +- the
    # perimeter's half-pixel band (about 2 pi 5 x 0.5 = 16)
    assert abs(mask[first].sum() - math.pi * 25) < 16
    for cx, cy in ((0.0, 0.0), (1.0, -0.5)):
        r = np.hypot(x - cx, y - cy)
        assert mask[r <= 0.2].all()
    outside = (np.hypot(x, y) > 0.2) & (np.hypot(x - 1.0, y + 0.5) > 0.2)
    assert not mask[outside].any()


def test_ds9_regions(tmp_path):
    reg = tmp_path / "masks.reg"
    reg.write_text(
        "# Region file format: DS9 version 4.1\n"
        'global color=green font="helvetica 10 normal"\n'
        "image\n"
        "circle(101,51,5) # a cosmic ray\n"
        "point(11,21)\n"
        'fk5; circle(150.1,2.2,0.3")\n'
        "fk5\n"
        'circle(10:00:24.000,+2:12:00.00,1")\n'
        "icrs; circle(150.0, 2.0, 0.001)\n")
    got = realdata.parse_ds9_regions(reg)
    assert got[0] == {"frame": "image", "col": 100.0, "row": 50.0, "radius_pix": 5.0}
    assert got[1] == {"frame": "image", "col": 10.0, "row": 20.0, "radius_pix": None}
    assert got[2]["frame"] == "sky" and got[2]["radius_arcsec"] == pytest.approx(0.3)
    # fk5 -> icrs differs by < 0.1 arcsec; 10:00:24 = 150.1 deg, +2:12 = 2.2 deg
    assert got[3]["ra_deg"] == pytest.approx(150.1, abs=1e-4)
    assert got[3]["dec_deg"] == pytest.approx(2.2, abs=1e-4)
    assert got[4]["radius_arcsec"] == pytest.approx(3.6)  # 0.001 deg


@pytest.mark.parametrize("line, message", [
    ("image; ellipse(10,10,3,2,0)", "not supported"),
    ("image; -circle(10,10,3)", "excluded"),
    ("image; circle(10,10)", "needs 3 values"),
    ("image; circle(10,10,2\")", "pixels"),
    ("image; circle(a,10,2)", "not numeric"),
    ("what is this", "cannot read"),
])
def test_bad_region_lines_name_the_file_and_line(tmp_path, line, message):
    reg = tmp_path / "bad.reg"
    reg.write_text("# Region file\n" + line + "\n")
    with pytest.raises(InputError, match=message) as err:
        realdata.parse_ds9_regions(reg)
    assert f"{reg}:2" in str(err.value)


def test_user_masks_land_at_their_file_pixels(tmp_path):
    shape = (230, 230)
    band = realdata.read_band(_write(tmp_path / "b.fits", np.ones(shape), _wcs(shape)))
    sky = band.wcs.pixel_to_world(140.0, 100.0)
    masks = [{"frame": "image", "col": 110.0, "row": 130.0},
             {"frame": "sky", "ra_deg": float(sky.ra.deg), "dec_deg": float(sky.dec.deg)}]
    cut = realdata.cut_two_bands(band, band, position=(115.0, 115.0), masks=masks)
    x, y = conventions.pixel_grid(192, S)
    for col, row in ((110.0, 130.0), (140.0, 100.0)):
        gx, gy = cut.frame.to_grid(col, row)
        near = np.hypot(x - gx, y - gy)
        assert cut.mask[near < 0.19].all()  # the 0.2" disc is there
    assert cut.mask.sum() < 2 * 90  # and nothing else is masked
    assert np.all(cut.blue[cut.mask] == 0) and np.all(cut.red[cut.mask] == 0)


# ---------------------------------------------------------------- cosmic rays


def _arc_with_hits(seed=0):
    rng = np.random.default_rng(seed)
    x, y = conventions.pixel_grid(120, S)
    arc = np.exp(-0.5 * ((np.hypot(x, y) - 1.2) / 0.05) ** 2)
    arc = ndimage.gaussian_filter(arc, 0.07 / realdata.FWHM_PER_SIGMA / S)
    image = arc / arc.max() + 0.1 + 0.01 * rng.standard_normal(arc.shape)
    hits = [(10, 15), (100, 30), (60, 60), (35, 90), (90, 100)]
    for col, row in hits:
        image[row, col] += 2.0
    image[60, 61] += 1.0  # a two-pixel hit
    return image, hits


@pytest.mark.parametrize("method", ["laplacian", "lacosmic"])
def test_cosmic_rays_found_and_arcs_spared(method):
    if method == "lacosmic":
        pytest.importorskip("astroscrappy")
    image, hits = _arc_with_hits()
    cr = realdata.detect_cosmic_rays(image, method=method)
    centres = realdata.cosmic_ray_centres(cr)
    assert len(centres) == len(hits)  # every hit once, and no arc pixel
    for col, row in hits:
        assert np.min(np.hypot(centres[:, 0] - col, centres[:, 1] - row)) < 1.0


# ---------------------------------------------------------------- end to end


def _lens_fits(tmp_path, kappa=4.0, theta=25.0):
    """Blue and red FITS files of a ring lens with a red Sersic-like galaxy."""
    shape = (220, 220)
    wcs = _wcs(shape, theta_deg=theta)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    x, y = (cols - 109.5) * S, (rows - 109.5) * S
    r = np.hypot(x, y)
    arcs = np.exp(-0.5 * ((r - 1.1) / 0.06) ** 2) * (0.5 + 0.5 * np.cos(np.arctan2(y, x)))
    lens = np.exp(-7.67 * ((np.hypot(r, 0.02) / 0.6) ** 0.25 - 1.0))
    lens = lens / lens.max()
    rng = np.random.default_rng(3)
    blur = 0.07 / realdata.FWHM_PER_SIGMA / S
    blue = ndimage.gaussian_filter(arcs + 0.9 * lens, blur) + 0.004 * rng.standard_normal(shape)
    red = ndimage.gaussian_filter(arcs / (kappa * 0.3) + 3.0 * lens, blur) \
        + 0.004 * rng.standard_normal(shape)
    return (_write(tmp_path / "blue.fits", blue + 0.05, wcs),
            _write(tmp_path / "red.fits", red + 0.05, wcs), arcs, wcs)


def test_two_band_cutout_unmixes_to_the_arcs(tmp_path):
    b, r, arcs, _ = _lens_fits(tmp_path)
    cut = realdata.cut_two_bands(realdata.read_band(b), realdata.read_band(r),
                                 position=(109.5, 109.5), psf_fwhm=(0.07, 0.07))
    image, res = realdata.unmix_cutout(cut)
    truth, _ = fit_to_grid(arcs[:, :], 192)
    assert image.shape == (192, 192, 1) and image.dtype == np.float32
    # the file (220 px) is larger than the grid: nothing masked, arcs recovered
    # to the acceptance level of the two-band ICA test (0.95)
    assert ica.arc_correlation(res.arc, truth) >= 0.95


def _tiny_model(path):
    inp = keras.Input((192, 192, 1))
    out = keras.layers.Dense(5, kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(
                                 [1.2, 0.2, 0.0, 0.04, -0.08]))(
        keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out).save(path)
    return str(path)


def test_predict_two_band_writes_sky_pa_and_diagnostic(tmp_path):
    b, r, _, wcs = _lens_fits(tmp_path, theta=25.0)
    model = _tiny_model(tmp_path / "m.keras")
    out = tmp_path / "p.csv"
    png = tmp_path / "diag.png"
    sky = wcs.pixel_to_world(109.5, 109.5)
    reg = tmp_path / "m.reg"
    reg.write_text("image; circle(111,111,3)\n")
    rows = realdata.predict_two_band(model, b, r, output=str(out), ra=sky.ra.deg,
                                     dec=sky.dec.deg, masks=[str(reg), "40,50"],
                                     psf_fwhm=(0.07, 0.07), cosmic_rays="laplacian",
                                     plot=str(png))
    row = rows[0]
    # the model outputs e = (0.2, 0) -> phi = 0, major axis along +y (grid angle
    # 90 deg) -> PA = theta + 90 - 90 = 25 deg east of north (CD convention above)
    assert row["pa_frame"] == "east_of_north"
    assert row["pa_deg"] == pytest.approx(25.0, abs=1e-4)
    assert row["q"] == pytest.approx(0.8, abs=1e-6)
    # the lens centre maps back to the file: (0.04, -0.08) arcsec = (+1, -2) pixels
    # from the cutout centre, which is within half a pixel of (109.5, 109.5)
    assert abs(row["x_pix"] - 110.5) <= 0.5 + 1e-6 and abs(row["y_pix"] - 107.5) <= 0.5 + 1e-6
    with open(out) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 1 and float(table[0]["pa_deg"]) == pytest.approx(25.0, abs=1e-4)
    assert png.stat().st_size > 10_000


# ---------------------------------------------------------------- bad input


def test_bad_files_name_the_file_and_problem(tmp_path):
    shape = (60, 60)
    good = _write(tmp_path / "good.fits", np.ones(shape), _wcs(shape))
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    empty = tmp_path / "noimage.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(empty)
    raw = (tmp_path / "good.fits").read_bytes()
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(raw[:len(raw) - 4000])
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"not a fits file at all" * 200)
    cases = [(str(empty), "no HDU holds an image"), (str(trunc), "truncated"),
             (str(garbage), "not a readable FITS"), (str(tmp_path / "missing.fits"), "no such")]
    for path, message in cases:
        with pytest.raises(InputError, match=message) as err:
            realdata.read_band(path)
        assert path in str(err.value)
    with pytest.raises(InputError, match="has no HDU 'SCI'"):
        realdata.read_band(good, hdu="SCI")


def test_named_hdu_is_read(tmp_path):
    shape = (40, 40)
    sci = fits.ImageHDU(data=np.full(shape, 7.0, np.float32), header=_wcs(shape).to_header(),
                        name="SCI")
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(data=np.ones(shape, np.float32)), sci]).writeto(path)
    assert realdata.read_band(path, pixel_scale=S).data[0, 0] == 1.0  # first image
    assert realdata.read_band(path, hdu="SCI").data[0, 0] == 7.0


def test_unalignable_bands_are_refused(tmp_path):
    shape = (240, 240)
    b = realdata.read_band(_write(tmp_path / "b.fits", np.ones(shape), _wcs(shape)))
    rot = realdata.read_band(_write(tmp_path / "rot.fits", np.ones(shape),
                                    _wcs(shape, theta_deg=10.0)))
    with pytest.raises(InputError, match="cannot be aligned") as err:
        realdata.cut_two_bands(b, rot)
    assert str(tmp_path / "b.fits") in str(err.value) and "rot.fits" in str(err.value)
    nowcs = realdata.read_band(_write(tmp_path / "nowcs.fits", np.ones((200, 240))),
                               pixel_scale=S)
    with pytest.raises(InputError, match="cannot be aligned.*no celestial WCS"):
        realdata.cut_two_bands(b, nowcs)


def test_sky_position_outside_the_image(tmp_path):
    shape = (240, 240)
    wcs = _wcs(shape)
    b = realdata.read_band(_write(tmp_path / "b.fits", np.ones(shape), wcs))
    far = wcs.pixel_to_world(400.0, 100.0)
    with pytest.raises(InputError, match="falls outside") as err:
        realdata.cut_two_bands(b, b, sky=(far.ra.deg, far.dec.deg))
    assert str(tmp_path / "b.fits") in str(err.value)


def test_masks_covering_the_whole_cutout(tmp_path):
    shape = (240, 240)
    b = realdata.read_band(_write(tmp_path / "b.fits", np.ones(shape), _wcs(shape)))
    cut = realdata.cut_two_bands(b, b, masks=[{"frame": "sky",
                                               "ra_deg": 150.0, "dec_deg": 2.0,
                                               "radius_arcsec": 30.0}])
    with pytest.raises(InputError, match="every pixel is masked") as err:
        realdata.unmix_cutout(cut)
    assert "b.fits" in str(err.value)


def test_named_hdu_by_index_string(tmp_path):
    shape = (40, 40)
    sci = fits.ImageHDU(data=np.full(shape, 7.0, np.float32), header=_wcs(shape).to_header())
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), sci]).writeto(path)
    assert realdata.read_band(path, hdu="1").data[0, 0] == 7.0  # as --hdu 1 gives it
    with pytest.raises(InputError, match="has no HDU 5"):
        realdata.read_band(path, hdu="5")


# ---------------------------------------------------------------- command line


def test_cli_predict_bands(tmp_path, capsys):
    b, r, _, _ = _lens_fits(tmp_path)
    model = _tiny_model(tmp_path / "m.keras")
    out, png = tmp_path / "p.json", tmp_path / "d.png"
    rc = cli.main(["predict", model, "--bands", b, r, "--x", "109.5", "--y", "109.5",
                   "--mask", "30,40", "--psf-fwhm", "0.07", "0.07", "--output", str(out),
                   "--plot", str(png)])
    assert rc == 0 and png.is_file()
    rows = json.loads(out.read_text())
    assert rows[0]["pa_frame"] == "east_of_north" and rows[0]["q"] == pytest.approx(0.8)
    # --ica with the positional files is the same path
    rc = cli.main(["predict", model, b, r, "--ica", "--output", str(tmp_path / "q.csv")])
    assert rc == 0


def test_cli_bad_two_band_input(tmp_path, capsys):
    b, r, _, _ = _lens_fits(tmp_path)
    model = _tiny_model(tmp_path / "m.keras")
    assert cli.main(["predict", model, b, "--ica"]) == 2
    assert "--ica needs two bands" in capsys.readouterr().err
    raw = pathlib.Path(r).read_bytes()
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(raw[:len(raw) // 2])
    assert cli.main(["predict", model, "--bands", b, str(trunc)]) == 2
    err = capsys.readouterr().err
    assert "trunc.fits" in err and "truncated" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # argparse: --bands takes two files
        cli.main(["predict", model, "--bands", b])
    assert exc.value.code == 2
    assert cli.main(["predict", model, "--bands", b, r, "--ra", "150.0"]) == 2
    assert "both --ra and --dec" in capsys.readouterr().err


# ---------------------------------------------------------------- synthetic set


def _ring_arcs(count):
    x, y = conventions.pixel_grid(192, S)
    arcs, params = [], []
    for k in range(count):
        theta_e = 0.9 + 0.4 * k
        arc = np.exp(-0.5 * ((np.hypot(x, y) - theta_e) / 0.06) ** 2) * \
            (0.5 + 0.5 * np.cos(np.arctan2(y, x) - k))
        arcs.append(arc / arc.max())
        params.append([theta_e, 0.1, -0.05, 0.0, 0.0])
    return np.stack(arcs)[..., None], np.asarray(params)


def test_two_band_draws_are_reproducible_and_colours_exact():
    arcs, params = _ring_arcs(2)
    d1 = twoband.sample_two_band(np.array([3, 4]), params)
    d2 = twoband.sample_two_band(np.array([3, 4]), params)
    for k in d1:
        np.testing.assert_array_equal(d1[k], d2[k])
    assert np.all(d1["fwhm_red"] > d1["fwhm_blue"])  # "slightly different PSFs"
    bands = twoband.apply_two_band(arcs, params, d1)
    # flux ratios are exact (the Gaussian PSFs conserve flux): arcs blue/red =
    # kappa f_lb, and the noise-free blue band is arcs + f_lb x lens light
    ratio = bands["arcs_blue"].sum(axis=(1, 2)) / bands["arcs_red"].sum(axis=(1, 2))
    np.testing.assert_allclose(ratio, d1["colour_ratio"] * d1["lens_blue_red"], rtol=1e-9)
    assert bands["blue"].shape == (2, 192, 192)


def test_ica_experiment_on_ring_lenses(tmp_path):
    arcs, params = _ring_arcs(2)
    summary = twoband.ica_experiment(arcs=arcs, params=params, colour_ratios=(3.0, 10.0),
                                     out_dir=tmp_path)
    assert set(summary["colour_ratios"]) == {"3.0", "10.0"}
    assert summary["colour_ratios"]["10.0"]["n"] == 2
    # bright rings at 1-4% noise: well separated, near the noise ceiling
    assert summary["all"]["median"] > 0.8
    assert summary["all"]["median"] <= summary["arcs_alone"]["median"] + 0.02
    assert (tmp_path / "ica.json").is_file()
    assert "| 3.0 |" in twoband.summary_markdown(summary)


def test_cli_evaluate_ica_experiment(tmp_path):
    model = _tiny_model(tmp_path / "m.keras")
    rc = cli.main(["evaluate", model, "--experiment", "ica", "--n", "1", "--preset", "smoke",
                   "--out", str(tmp_path / "ev")])
    assert rc == 0
    summary = json.loads((tmp_path / "ev" / "ica.json").read_text())
    assert set(summary["colour_ratios"]) == {"1.5", "2.0", "3.0", "5.0", "10.0"}
    # a constant model: the same errors on ICA arcs and on arcs alone
    assert summary["errors"]["ica"]["3.0"]["theta_e"] == summary["errors"]["arcs_alone"]["theta_e"]
    assert (tmp_path / "ev" / "ica.md").is_file()
