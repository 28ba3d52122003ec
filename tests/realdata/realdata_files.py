"""FITS files and a constant model for the ``ensai_tf.realdata`` tests.

Imported by the test modules of this folder (pytest puts the folder on
``sys.path``); every file is written into the test's ``tmp_path``.
"""

import math

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from ensai_tf import conventions, realdata

S = conventions.PIXEL_SCALE


def make_wcs(shape, scale=S, theta_deg=0.0, flip=False, ra=150.0, dec=2.0, crpix=None):
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


def write_fits(path, data, wcs=None, extra_hdus=()):
    """Write ``data`` as float32 into a FITS file (with ``wcs``); return the path as a str."""
    header = wcs.to_header() if wcs is not None else None
    hdus = [fits.PrimaryHDU(data=np.asarray(data, np.float32), header=header), *extra_hdus]
    fits.HDUList(hdus).writeto(path)
    return str(path)


def blob(shape, col, row, sigma=1.5, amp=1.0):
    """A circular Gaussian of ``sigma`` pixels at file pixel ``(col, row)``."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return amp * np.exp(-0.5 * ((cols - col) ** 2 + (rows - row) ** 2) / sigma ** 2)


def centroid_arcsec(image):
    """Flux-weighted ``(x, y)`` arcsec of the positive part of a grid image."""
    x, y = conventions.pixel_grid(image.shape[0], S)
    w = np.clip(image, 0, None)
    return float((w * x).sum() / w.sum()), float((w * y).sum() / w.sum())


def lens_fits(tmp_path, kappa=4.0, theta=25.0):
    """Blue and red FITS files of a ring lens with a red Sersic-like galaxy."""
    shape = (220, 220)
    wcs = make_wcs(shape, theta_deg=theta)
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
    return (write_fits(tmp_path / "blue.fits", blue + 0.05, wcs),
            write_fits(tmp_path / "red.fits", red + 0.05, wcs), arcs, wcs)


