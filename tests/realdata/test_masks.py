"""User masks (``ensai_tf.realdata.masks``, docs/design.md §8.4 step 2): discs, DS9
region files, and masks placed through the cutout.
"""

import math

import numpy as np
import pytest
from realdata_files import S, make_wcs, write_fits

from ensai_tf import conventions, realdata
from ensai_tf.errors import InputError


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
    band = realdata.read_band(write_fits(tmp_path / "b.fits", np.ones(shape), make_wcs(shape)))
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
