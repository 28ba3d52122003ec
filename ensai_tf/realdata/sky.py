"""One band's image and its sky geometry (docs/design.md §8.4).

:func:`read_band` reads a band's image, celestial WCS and pixel scale;
:class:`Frame` maps the 0.04 arcsec output grid back to the blue file's
pixels; the WCS Jacobian (:func:`pixel_to_sky_jacobian`) turns a predicted
ellipticity into a position angle **east of north** and back (rotation and
flipped axes included).
"""

import dataclasses
import pathlib

import numpy as np
from astropy.coordinates import SkyCoord

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess.reading import read_fits, resolve_pixel_scales

__all__ = [
    "Band",
    "Frame",
    "read_band",
    "pixel_to_sky_jacobian",
    "position_angle_east_of_north",
    "ellipticity_from_sky",
    "sky_to_pixel",
]


@dataclasses.dataclass(frozen=True)
class Band:
    """One band's image as read from its file.

    Attributes:
        path: the file.
        data: ``(H, W)`` float64 image, the file's units.
        wcs: celestial ``astropy.wcs.WCS`` or None.
        scales: ``(sx, sy)`` pixel side along columns and rows, arcsec.
    """

    path: str
    data: np.ndarray
    wcs: object
    scales: tuple


@dataclasses.dataclass(frozen=True)
class Frame:
    """How the 0.04 arcsec output grid maps onto the blue file.

    Grid position ``(x, y)`` arcsec (docs/design.md §0: x = column, y = row, origin
    between pixels 95 and 96) is file pixel
    ``(centre[0] + (x + offset[0]) / scales[0], centre[1] + (y + offset[1]) / scales[1])``
    (0-based column, row).

    Attributes:
        path: the blue file.
        centre: ``(col, row)`` file pixel of the cutout centre.
        offset: ``(dx, dy)`` arcsec, grid origin minus cutout centre.
        scales: ``(sx, sy)`` file pixel side, arcsec.
        wcs: the blue file's celestial WCS, or None.

    Example:
        >>> frame = Frame(path="b.fits", centre=(50.0, 60.0), offset=(0.0, 0.0),
        ...               scales=(0.04, 0.04))
        >>> [float(v) for v in frame.to_file_pixel(0.4, -0.4)]
        [60.0, 50.0]
    """

    path: str
    centre: tuple
    offset: tuple
    scales: tuple
    wcs: object = None

    def to_file_pixel(self, x, y):
        """File ``(col, row)`` of grid position ``(x, y)`` arcsec."""
        return (self.centre[0] + (np.asarray(x) + self.offset[0]) / self.scales[0],
                self.centre[1] + (np.asarray(y) + self.offset[1]) / self.scales[1])

    def to_grid(self, col, row):
        """Grid position ``(x, y)`` arcsec of file pixel ``(col, row)``."""
        return ((np.asarray(col, dtype=np.float64) - self.centre[0]) * self.scales[0]
                - self.offset[0],
                (np.asarray(row, dtype=np.float64) - self.centre[1]) * self.scales[1]
                - self.offset[1])


def read_band(path, hdu=None, pixel_scale=None):
    """Read one band's image, WCS and pixel scale from a FITS file.

    Args:
        path: FITS file.
        hdu: HDU index, EXTNAME or ``(EXTNAME, EXTVER)``; None = the first
            HDU holding 2-D data.
        pixel_scale: pixel side, arcsec; overrides the WCS, and is required
            when the file has no celestial WCS.

    Returns:
        :class:`Band`.

    Raises:
        InputError: missing, empty, truncated or corrupt file, no image data,
            a 3-D cube, NaN/Inf pixels, or an unknown pixel scale.
    """
    path = str(path)
    if not pathlib.Path(path).is_file():
        raise InputError(f"{path}: no such file")
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)  # "--hdu 1" from the command line is an index
    data, wcs, scales = read_fits(path, hdu)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise InputError(f"{path}: the image HDU holds a {data.ndim}-D array {data.shape}; "
                         "one band must be a 2-D image")
    if min(data.shape) < 8:
        raise InputError(f"{path}: the image is only {data.shape} pixels")
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(f"{path}: {int(bad.sum())} pixels are NaN or Inf; set bad pixels to "
                         "exactly 0 (masked) or give them as masks")
    scales = resolve_pixel_scales(path, scales, pixel_scale)
    return Band(path=path, data=data, wcs=wcs, scales=scales)


def pixel_to_sky_jacobian(wcs, col, row, step=0.5):
    """Local pixel-to-sky Jacobian of a celestial WCS.

    Args:
        wcs: celestial ``astropy.wcs.WCS``.
        col, row: 0-based file pixel where it is evaluated.
        step: half-width of the central differences, pixels.

    Returns:
        ``(2, 2)`` float64, arcsec per pixel: ``J[0]`` = (d east / d col,
        d east / d row), ``J[1]`` = (d north / d col, d north / d row), with
        east and north the tangent-plane offsets on the sky. A flipped axis
        shows as ``det(J) > 0`` (the usual north-up, east-left image has
        ``det(J) < 0``).
    """
    centre = wcs.pixel_to_world(col, row)
    jac = np.zeros((2, 2))
    for axis in range(2):
        d = np.zeros(2)
        d[axis] = step
        plus = wcs.pixel_to_world(col + d[0], row + d[1])
        minus = wcs.pixel_to_world(col - d[0], row - d[1])
        e_p, n_p = centre.spherical_offsets_to(plus)
        e_m, n_m = centre.spherical_offsets_to(minus)
        jac[0, axis] = (e_p.to_value("arcsec") - e_m.to_value("arcsec")) / (2 * step)
        jac[1, axis] = (n_p.to_value("arcsec") - n_m.to_value("arcsec")) / (2 * step)
    return jac


def position_angle_east_of_north(e_x, e_y, jacobian, scales):
    """Mass major-axis position angle on the sky, east of north.

    The major axis lies at ``phi + 90 deg`` from +x towards +y on the grid
    (docs/design.md §0); a unit step along it is ``(cos a / sx, sin a / sy)`` file
    pixels, which the Jacobian maps to (east, north).

    Args:
        e_x, e_y: Ensai ellipticity, dimensionless, in the grid frame.
        jacobian: ``(2, 2)`` from :func:`pixel_to_sky_jacobian`, arcsec per
            pixel.
        scales: ``(sx, sy)`` arcsec per file pixel along columns and rows.

    Returns:
        Degrees in ``[0, 180)``, from north through east; invariant under
        the parity ``e -> -e``.
    """
    a = np.radians(conventions.mass_major_axis_angle(e_x, e_y))
    step = np.stack([np.cos(a) / scales[0], np.sin(a) / scales[1]])
    east, north = np.tensordot(np.asarray(jacobian, dtype=np.float64), step, axes=1)
    return np.mod(np.degrees(np.arctan2(east, north)), 180.0)


def ellipticity_from_sky(q, pa_deg, jacobian, scales):
    """Ensai ellipticity of a lens given by axis ratio and PA east of north.

    The inverse of :func:`position_angle_east_of_north` (up to parity): for
    converting published values (docs/design.md §8.4) into the grid frame.

    Args:
        q: axis ratio, in (0, 1].
        pa_deg: mass major-axis position angle, degrees east of north.
        jacobian: ``(2, 2)`` pixel-to-sky Jacobian, arcsec per pixel.
        scales: ``(sx, sy)`` arcsec per file pixel.

    Returns:
        ``(e_x, e_y)`` in the grid frame.
    """
    pa = np.radians(np.asarray(pa_deg, dtype=np.float64))
    sky = np.stack([np.sin(pa), np.cos(pa)])  # (east, north)
    pix = np.tensordot(np.linalg.inv(np.asarray(jacobian, dtype=np.float64)), sky, axes=1)
    major = np.arctan2(pix[1] * scales[1], pix[0] * scales[0])
    return conventions.ellipticity_from_q_phi(q, major - np.pi / 2.0)


def sky_to_pixel(band, ra_deg, dec_deg):
    """0-based ``(col, row)`` of an ICRS sky position in a band's file.

    Args:
        band: the :class:`Band` whose WCS places the position.
        ra_deg: right ascension, degrees (ICRS).
        dec_deg: declination, degrees (ICRS).

    Returns:
        ``(col, row)`` floats, 0-based file pixels (x = column, y = row).

    Raises:
        InputError: the band has no celestial WCS.
    """
    if band.wcs is None:
        raise InputError(f"{band.path}: no celestial WCS, so a sky position cannot be placed; "
                         "give the position in pixels (--x --y) instead")
    col, row = band.wcs.world_to_pixel(SkyCoord(ra_deg, dec_deg, unit="deg"))
    return float(col), float(row)
