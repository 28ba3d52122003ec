"""Band reading and sky geometry (``ensai_tf.realdata.sky``, docs/design.md §8.4): the
position angle east of north, the Jacobian's parity, and bad FITS input.
"""

import math

import numpy as np
import pytest
from astropy.io import fits
from realdata_files import S, make_wcs, write_fits

from ensai_tf import conventions, realdata
from ensai_tf.errors import InputError


@pytest.mark.parametrize("theta", [0.0, 30.0, -75.0, 140.0])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dec", [2.0, 60.0])
def test_position_angle_east_of_north_closed_form(theta, flip, dec):
    wcs = make_wcs((100, 100), theta_deg=theta, flip=flip, dec=dec)
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
    plain = realdata.pixel_to_sky_jacobian(make_wcs((50, 50)), 24.0, 24.0)
    flipped = realdata.pixel_to_sky_jacobian(make_wcs((50, 50), flip=True), 24.0, 24.0)
    # north up, east left: d east / d col = -0.04 arcsec, d north / d row = +0.04
    np.testing.assert_allclose(plain, [[-S, 0.0], [0.0, S]], atol=1e-9)
    assert np.linalg.det(plain) < 0 < np.linalg.det(flipped)


def test_bad_files_name_the_file_and_problem(tmp_path):
    shape = (60, 60)
    good = write_fits(tmp_path / "good.fits", np.ones(shape), make_wcs(shape))
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
    sci = fits.ImageHDU(data=np.full(shape, 7.0, np.float32), header=make_wcs(shape).to_header(),
                        name="SCI")
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(data=np.ones(shape, np.float32)), sci]).writeto(path)
    assert realdata.read_band(path, pixel_scale=S).data[0, 0] == 1.0  # first image
    assert realdata.read_band(path, hdu="SCI").data[0, 0] == 7.0


def test_named_hdu_by_index_string(tmp_path):
    shape = (40, 40)
    sci = fits.ImageHDU(data=np.full(shape, 7.0, np.float32), header=make_wcs(shape).to_header())
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), sci]).writeto(path)
    assert realdata.read_band(path, hdu="1").data[0, 0] == 7.0  # as --hdu 1 gives it
    with pytest.raises(InputError, match="has no HDU 5"):
        realdata.read_band(path, hdu="5")
