"""Real two-band images: FITS cutouts, masks, PSF matching and ICA (docs/design.md §8.4).

The path from two FITS files of a lens candidate to one network input:

1. :func:`read_band` reads each file's image HDU (the first with 2-D data,
   or the one named), its celestial WCS and its pixel scale, reusing
   :func:`ensai_tf.predict._read_fits`;
2. :func:`cut_two_bands` cuts both bands around one sky position or blue
   pixel with ``astropy.nddata.Cutout2D`` (``mode="partial"``: the part
   outside the image is filled with 0, i.e. masked). The red cutout is
   centred on the **same sky point** as the blue one (sub-pixel residuals
   are removed with a bilinear shift), and the two grids must agree in scale
   and orientation (their pixel-to-sky Jacobians within 1%), because the
   unmixing compares the bands pixel by pixel;
3. both are resampled flux-conservingly to 0.04 arcsec pixels
   (:func:`ensai_tf.predict.resample_flux_conserving`);
4. optional cosmic-ray detection (:func:`detect_cosmic_rays`): L.A.Cosmic
   from ``astroscrappy`` when it is installed, else a simple Laplacian
   sigma-clip detector (documented there); each detection becomes a 0.2
   arcsec disc, like the paper's manual masks (docs/design.md §8.4 step 2);
5. the sharper band is convolved with the Gaussian that brings its PSF to
   the broader one's (:func:`match_psfs`), ignoring masked pixels;
6. the central ``192 x 192`` pixels are kept, user masks (0.2 arcsec discs at
   listed positions, docs/design.md §8.4 step 2, or circles from a DS9 region file) are
   added, and :func:`ensai_tf.preprocess.ica.unmix_two_bands` separates the
   arcs, giving the ``(192, 192, 1)`` "masked = 0" network input.

The output grid has x along the blue file's columns and y along its rows
(docs/design.md §0, no flips); :class:`Frame` maps it back to the file's pixels and,
through the WCS Jacobian, turns the predicted ellipticity angle into a
position angle **east of north** (rotation and flipped axes included).
"""

import dataclasses
import math
import pathlib
import re
import sys
import time

import numpy as np

from ensai_tf import conventions
from ensai_tf import predict as predict_lib
from ensai_tf.errors import InputError
from ensai_tf.preprocess import ica

__all__ = [
    "MASK_RADIUS_ARCSEC",
    "Band",
    "Frame",
    "TwoBandCutout",
    "read_band",
    "pixel_to_sky_jacobian",
    "position_angle_east_of_north",
    "ellipticity_from_sky",
    "sky_to_pixel",
    "circular_mask",
    "parse_ds9_regions",
    "detect_cosmic_rays",
    "cosmic_ray_centres",
    "gaussian_sigma_pix",
    "masked_gaussian_blur",
    "match_psfs",
    "cut_two_bands",
    "unmix_cutout",
    "plot_diagnostic",
    "band_files",
    "predict_two_band",
]

MASK_RADIUS_ARCSEC = 0.2
"""Radius of a manual or cosmic-ray mask disc, arcsec (docs/design.md §8.4 step 2)."""

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_ALIGN_RTOL = 0.01
_MARGIN_PIX = 8
_SKY_FRAMES = ("fk5", "icrs", "j2000", "fk4", "b1950", "galactic", "ecliptic")
_IMAGE_FRAMES = ("image", "physical")


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


@dataclasses.dataclass(frozen=True)
class TwoBandCutout:
    """Both bands on the network's grid, ready for ICA.

    Attributes:
        blue, red: ``(npix, npix)`` float64 images, 0.04 arcsec pixels,
            PSF-matched, file units; 0 outside the files.
        mask: ``(npix, npix)`` bool, True where masked (outside the files,
            cosmic rays, user masks).
        cosmic_mask: ``(npix, npix)`` bool, the cosmic-ray discs alone.
        frame: :class:`Frame` of the grid.
        name: ``"BLUE + RED"`` file names, for messages.
    """

    blue: np.ndarray
    red: np.ndarray
    mask: np.ndarray
    cosmic_mask: np.ndarray
    frame: Frame
    name: str


# ---------------------------------------------------------------- reading


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
    data, wcs, scales = predict_lib._read_fits(path, hdu)
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
    scales = predict_lib.resolve_pixel_scales(path, scales, pixel_scale)
    return Band(path=path, data=data, wcs=wcs, scales=scales)


# ---------------------------------------------------------------- sky geometry


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
    from astropy.coordinates import SkyCoord

    if band.wcs is None:
        raise InputError(f"{band.path}: no celestial WCS, so a sky position cannot be placed; "
                         "give the position in pixels (--x --y) instead")
    col, row = band.wcs.world_to_pixel(SkyCoord(ra_deg, dec_deg, unit="deg"))
    return float(col), float(row)


# ---------------------------------------------------------------- masks


def circular_mask(npix, centres_arcsec, radius_arcsec=MASK_RADIUS_ARCSEC,
                  pixel_scale=conventions.PIXEL_SCALE):
    """Union of discs on the network grid.

    Args:
        npix: grid side, pixels.
        centres_arcsec: ``(K, 2)`` disc centres ``(x, y)``, arcsec, grid
            frame (docs/design.md §0).
        radius_arcsec: scalar or ``(K,)`` disc radii, arcsec.
        pixel_scale: grid pixel side, arcsec.

    Returns:
        ``(npix, npix)`` bool, True inside any disc (pixel centre within the
        radius; a disc smaller than a pixel still masks the pixel it sits on).
    """
    centres = np.asarray(centres_arcsec, dtype=np.float64).reshape(-1, 2)
    radius = np.broadcast_to(np.asarray(radius_arcsec, dtype=np.float64), (len(centres),))
    x, y = conventions.pixel_grid(npix, pixel_scale)
    mask = np.zeros((npix, npix), dtype=bool)
    for (cx, cy), r in zip(centres, radius):
        mask |= (x - cx) ** 2 + (y - cy) ** 2 <= r ** 2
        col = int(round(cx / pixel_scale + (npix - 1) / 2.0))
        row = int(round(cy / pixel_scale + (npix - 1) / 2.0))
        if 0 <= col < npix and 0 <= row < npix:
            mask[row, col] = True
    return mask


def _parse_angle(token, path, lineno, sky):
    """Radius in arcsec (sky) or pixels (image) from a DS9 size token."""
    token = token.strip()
    units = {'"': 1.0, "'": 60.0, "d": 3600.0, "r": 180.0 / math.pi * 3600.0}
    factor = 3600.0 if sky else 1.0
    if token and token[-1] in units:
        if not sky:
            raise InputError(f"{path}:{lineno}: an image-coordinate circle needs its radius in "
                             f"pixels, got {token!r}")
        factor, token = units[token[-1]], token[:-1]
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"{path}:{lineno}: radius {token!r} is not a number") from None
    if not value > 0:
        raise InputError(f"{path}:{lineno}: radius {value} must be positive")
    return value * factor


def _parse_sky_pair(lon, lat, frame, path, lineno):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    frame = {"j2000": "fk5", "b1950": "fk4", "ecliptic": "geocentrictrueecliptic"}.get(frame,
                                                                                        frame)
    sexagesimal = ":" in lon or ":" in lat or any(c in lon for c in "hms")
    try:
        unit = (u.hourangle, u.deg) if sexagesimal and frame in ("fk5", "fk4", "icrs") else u.deg
        coord = SkyCoord(lon, lat, unit=unit, frame=frame)
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}:{lineno}: cannot read the sky position ({lon}, {lat}): "
                         f"{err}") from None
    icrs = coord.icrs
    return float(icrs.ra.deg), float(icrs.dec.deg)


def parse_ds9_regions(path):
    """Read circles (and points) from a DS9 region file.

    Supported: ``circle(x, y, r)`` and ``point(x, y)`` (a
    :data:`MASK_RADIUS_ARCSEC` disc), in ``image``/``physical`` coordinates
    (1-based DS9 pixels; radius in pixels) or sky frames ``fk5``, ``icrs``,
    ``j2000``, ``fk4``, ``galactic``, ``ecliptic`` (degrees or sexagesimal;
    radius in degrees, or with ``"``, ``'`` or ``d``). A coordinate system
    may precede a shape on its own line or as ``fk5; circle(...)``. Comments
    (``#``), ``global`` lines and text after ``#`` are skipped. Excluded
    shapes (``-circle``) and any other shape are refused.

    Args:
        path: region file.

    Returns:
        list of dicts: ``{"frame": "image", "col": c, "row": r,
        "radius_pix": r_pix}`` (0-based pixel) or ``{"frame": "sky",
        "ra_deg": a, "dec_deg": d, "radius_arcsec": r}`` (ICRS); a point has
        radius None.

    Raises:
        InputError: unreadable file, unknown shape or system, or a bad number
            (naming the file and line).
    """
    path = str(path)
    try:
        text = pathlib.Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the region file ({err})") from None
    system = "physical"
    regions = []
    shape_re = re.compile(r"^([+-]?)\s*([a-z]+)\s*\((.*)\)$")
    for lineno, line in enumerate(text.splitlines(), start=1):
        for part in line.split("#", 1)[0].split(";"):
            part = part.strip()
            low = part.lower()
            if not part or low.startswith("global") or low.startswith("# region"):
                continue
            if low in _SKY_FRAMES + _IMAGE_FRAMES:
                system = low
                continue
            match = shape_re.match(low)
            if match is None:
                raise InputError(f"{path}:{lineno}: cannot read {part!r}; expected e.g. "
                                 "'circle(x, y, r)' or a coordinate system name")
            sign, shape, args = match.groups()
            if sign == "-":
                raise InputError(f"{path}:{lineno}: excluded regions ('-{shape}') are not "
                                 "supported; list the areas to mask")
            if shape not in ("circle", "point"):
                raise InputError(f"{path}:{lineno}: shape {shape!r} is not supported; use "
                                 "circle(x, y, r) or point(x, y)")
            values = [v.strip() for v in re.split(r"[,\s]+", args.strip()) if v.strip()]
            need = 3 if shape == "circle" else 2
            if len(values) != need:
                raise InputError(f"{path}:{lineno}: {shape} needs {need} values, got "
                                 f"{len(values)}")
            sky = system in _SKY_FRAMES
            radius = _parse_angle(values[2], path, lineno, sky) if shape == "circle" else None
            if sky:
                ra, dec = _parse_sky_pair(values[0], values[1], system, path, lineno)
                regions.append({"frame": "sky", "ra_deg": ra, "dec_deg": dec,
                                "radius_arcsec": radius})
            else:
                try:
                    col, row = float(values[0]) - 1.0, float(values[1]) - 1.0
                except ValueError:
                    raise InputError(f"{path}:{lineno}: pixel position {values[:2]} is not "
                                     "numeric") from None
                regions.append({"frame": "image", "col": col, "row": row, "radius_pix": radius})
    return regions


# ---------------------------------------------------------------- cosmic rays


def _laplacian_cosmics(image, keep, sigclip, objlim):
    """Cosmic-ray pixels by a median-contrast sigma clip (no dependency).

    A pixel is flagged when its excess over the 3x3 median,
    ``image - med3``, exceeds ``sigclip`` times the robust noise of that
    excess (1.4826 x MAD over unmasked pixels) **and** ``objlim`` times the
    local fine structure ``max(med3 - med7(med3), noise)``. The second test
    is L.A.Cosmic's (van Dokkum 2001): a PSF-smoothed arc or galaxy peak has
    a large fine-structure term, a one- or two-pixel hit does not.
    """
    from scipy import ndimage

    filled = np.where(keep, image, np.median(image[keep]))
    med3 = ndimage.median_filter(filled, size=3, mode="nearest")
    excess = filled - med3
    resid = excess[keep]
    noise = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    noise = noise if noise > 0 else max(np.std(resid), 1e-30)
    fine = ndimage.median_filter(med3, size=7, mode="nearest")
    structure = np.maximum(med3 - fine, noise)
    return keep & (excess > sigclip * noise) & (excess > objlim * structure)


def detect_cosmic_rays(image, mask=None, method="auto", sigclip=6.0, objlim=5.0):
    """Flag bright cosmic-ray pixels in one band.

    Args:
        image: ``(H, W)`` image, any flux unit; exact zeros are masked.
        mask: optional ``(H, W)`` bool of pixels to ignore.
        method: ``"lacosmic"`` (``astroscrappy.detect_cosmics``, L.A.Cosmic,
            with the noise variance estimated from the image as a constant
            robust sky variance since the gain of a drizzled image is
            unknown), ``"laplacian"`` (the fallback of
            :func:`_laplacian_cosmics`), or ``"auto"`` (lacosmic when
            astroscrappy is installed).
        sigclip: detection threshold, in noise sigmas (6: only bright hits; the
            median-contrast excess has heavier tails than the pixel noise).
        objlim: minimum contrast against the local fine structure, so that
            PSF-smoothed arcs are not flagged.

    Returns:
        ``(H, W)`` bool, True on cosmic-ray pixels.
    """
    image = np.asarray(image, dtype=np.float64)
    keep = image != 0
    if mask is not None:
        keep &= ~np.asarray(mask, dtype=bool)
    if keep.sum() < 49:
        return np.zeros(image.shape, dtype=bool)
    if method not in ("auto", "lacosmic", "laplacian"):
        raise InputError(f"unknown cosmic-ray method {method!r}; use auto, lacosmic or laplacian")
    if method in ("auto", "lacosmic"):
        try:
            import astroscrappy
        except ImportError:
            if method == "lacosmic":
                raise InputError("cosmic-ray method 'lacosmic' needs astroscrappy "
                                 "(pip install astroscrappy)") from None
            astroscrappy = None
        if astroscrappy is not None:
            sky = np.median(image[keep])
            resid = image[keep] - sky
            noise = 1.4826 * np.median(np.abs(resid - np.median(resid)))
            noise = noise if noise > 0 else max(np.std(resid), 1e-30)
            var = np.full(image.shape, noise ** 2, dtype=np.float32)
            crmask, _ = astroscrappy.detect_cosmics(
                (image - sky).astype(np.float32), inmask=~keep, invar=var, sigclip=sigclip,
                objlim=objlim, readnoise=0.0, gain=1.0, satlevel=np.inf, verbose=False)
            return np.asarray(crmask, dtype=bool) & keep
    return _laplacian_cosmics(image, keep, sigclip, objlim)


def cosmic_ray_centres(cr_map):
    """Centroids ``(col, row)`` of the connected groups of a cosmic-ray map.

    Args:
        cr_map: ``(H, W)`` bool (or 0/1) map, True on cosmic-ray pixels,
            indexed ``[row, col]``.

    Returns:
        ``(K, 2)`` float64 pixel positions (8-connected groups).
    """
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(cr_map, bool), structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros((0, 2))
    rows, cols = np.mgrid[0:labels.shape[0], 0:labels.shape[1]]
    index = np.arange(1, count + 1)
    return np.stack([ndimage.mean(cols, labels, index), ndimage.mean(rows, labels, index)],
                    axis=1)


# ---------------------------------------------------------------- PSF matching


def gaussian_sigma_pix(fwhm_from, fwhm_to, pixel_scale=conventions.PIXEL_SCALE):
    """Sigma of the Gaussian that broadens a Gaussian PSF from one FWHM to another.

    Args:
        fwhm_from, fwhm_to: PSF FWHMs, arcsec, ``fwhm_to >= fwhm_from``.
        pixel_scale: pixel side, arcsec.

    Returns:
        sigma in pixels: ``sqrt(fwhm_to**2 - fwhm_from**2) / 2.3548 / pixel_scale``.
    """
    if fwhm_to < fwhm_from:
        raise InputError(f"PSF FWHM {fwhm_to} arcsec is smaller than {fwhm_from}; a Gaussian "
                         "kernel can only broaden")
    return math.sqrt(fwhm_to ** 2 - fwhm_from ** 2) / FWHM_PER_SIGMA / pixel_scale


def masked_gaussian_blur(image, sigma_pix, keep=None):
    """Gaussian blur that ignores masked pixels (normalised convolution).

    Args:
        image: ``(H, W)`` image; exact zeros are masked.
        sigma_pix: Gaussian sigma, pixels (0 = no change).
        keep: optional ``(H, W)`` bool of usable pixels (default: non-zero).

    Returns:
        ``(H, W)`` float64: ``G * (image keep) / G * keep`` on kept pixels,
        exactly 0 elsewhere. Away from masks and edges it is the plain
        convolution, which conserves flux.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    keep = (image != 0) if keep is None else np.asarray(keep, dtype=bool)
    if sigma_pix <= 0:
        return np.where(keep, image, 0.0)
    num = ndimage.gaussian_filter(np.where(keep, image, 0.0), sigma_pix, mode="constant")
    den = ndimage.gaussian_filter(keep.astype(np.float64), sigma_pix, mode="constant")
    return np.where(keep, num / np.where(den > 0, den, 1.0), 0.0)


def match_psfs(blue, red, fwhm_blue, fwhm_red, pixel_scale=conventions.PIXEL_SCALE, keep=None):
    """Bring two Gaussian-PSF bands to the broader PSF (docs/design.md §8.4 [R]).

    Args:
        blue, red: ``(H, W)`` images on one grid; exact zeros are masked.
        fwhm_blue, fwhm_red: PSF FWHM of each band, arcsec.
        pixel_scale: pixel side, arcsec.
        keep: optional ``(H, W)`` bool of usable pixels.

    Returns:
        ``(blue, red)``: the sharper band convolved with the Gaussian of
        :func:`gaussian_sigma_pix`, the other unchanged (masked pixels 0).
    """
    if not (fwhm_blue > 0 and fwhm_red > 0):
        raise InputError(f"PSF FWHMs must be positive arcsec, got {fwhm_blue} and {fwhm_red}")
    if fwhm_blue <= fwhm_red:
        return (masked_gaussian_blur(blue, gaussian_sigma_pix(fwhm_blue, fwhm_red, pixel_scale),
                                     keep), masked_gaussian_blur(red, 0.0, keep))
    return (masked_gaussian_blur(blue, 0.0, keep),
            masked_gaussian_blur(red, gaussian_sigma_pix(fwhm_red, fwhm_blue, pixel_scale), keep))


# ---------------------------------------------------------------- cutouts


def _cut(band, centre, size):
    """Cutout2D of a band around a file pixel; returns (data, centre of the cutout)."""
    from astropy.nddata import Cutout2D
    from astropy.nddata.utils import NoOverlapError

    try:
        cut = Cutout2D(band.data, position=centre, size=(size[1], size[0]), mode="partial",
                       fill_value=0.0, copy=True)
    except NoOverlapError:
        raise InputError(f"{band.path}: the cutout around pixel {centre} does not overlap the "
                         f"image ({band.data.shape[1]} x {band.data.shape[0]} pixels)") from None
    n_y, n_x = cut.data.shape
    # file pixel of cutout pixel (0, 0); origin_original is clipped to the image in
    # mode="partial", the input positions are not
    x0, y0 = (cut.input_position_original[i] - cut.input_position_cutout[i] for i in range(2))
    return np.asarray(cut.data, dtype=np.float64), (x0 + (n_x - 1) / 2.0, y0 + (n_y - 1) / 2.0)


def _cut_side(field, scale):
    """Cutout side, input pixels, covering ``field`` arcsec, whose resampled side is even.

    An even side on the 0.04 arcsec grid keeps the grid origin on the cutout
    centre after the central crop to the (even) network side, so the lens
    position lands within half a pixel of the grid origin.
    """
    side = int(math.ceil(field / scale - 1e-6))
    while int(round(side * scale / conventions.PIXEL_SCALE)) % 2:
        side += 1
    return side


def _check_inside(band, col, row, what):
    n_y, n_x = band.data.shape
    if not (-0.5 <= col <= n_x - 0.5 and -0.5 <= row <= n_y - 0.5):
        raise InputError(f"{band.path}: {what} falls outside the image (pixel ({col:.1f}, "
                         f"{row:.1f}); the image is {n_x} x {n_y} pixels)")


def _subpixel_shift(data, shift_col, shift_row):
    """Bilinear shift by (shift_col, shift_row) pixels; pixels touching masks become masked."""
    from scipy import ndimage

    if abs(shift_col) < 1e-3 and abs(shift_row) < 1e-3:
        return data
    keep = (data != 0).astype(np.float64)
    moved = ndimage.shift(data, (shift_row, shift_col), order=1, mode="constant", cval=0.0)
    moved_keep = ndimage.shift(keep, (shift_row, shift_col), order=1, mode="constant", cval=0.0)
    return np.where(moved_keep > 1.0 - 1e-6, moved, 0.0)


def _resample(data, scales):
    if np.allclose(scales, conventions.PIXEL_SCALE, rtol=1e-6, atol=0):
        return data
    out, _ = predict_lib.resample_flux_conserving(data, scales)
    return out


def _align(blue, red, centre_blue):
    """Red file pixel that sees the sky point of blue pixel ``centre_blue``."""
    name = f"{blue.path} and {red.path}"
    if blue.wcs is None or red.wcs is None:
        if blue.data.shape != red.data.shape:
            missing = blue.path if blue.wcs is None else red.path
            raise InputError(f"{name} cannot be aligned: {missing} has no celestial WCS and the "
                             f"shapes differ ({blue.data.shape} vs {red.data.shape}); give both "
                             "on one pixel grid or with WCS headers")
        if not np.allclose(blue.scales, red.scales, rtol=_ALIGN_RTOL):
            raise InputError(f"{name} cannot be aligned: pixel scales {blue.scales} and "
                             f"{red.scales} arcsec differ")
        return centre_blue
    sky = blue.wcs.pixel_to_world(*centre_blue)
    col, row = (float(v) for v in red.wcs.world_to_pixel(sky))
    _check_inside(red, col, row, "the blue cutout's centre")
    jac_b = pixel_to_sky_jacobian(blue.wcs, *centre_blue)
    jac_r = pixel_to_sky_jacobian(red.wcs, col, row)
    diff = np.abs(jac_b - jac_r).max() / np.abs(jac_b).max()
    if diff > _ALIGN_RTOL:
        raise InputError(f"{name} cannot be aligned: their pixel grids differ in scale or "
                         f"orientation by {100 * diff:.1f}% (pixel-to-sky Jacobians "
                         f"{np.round(jac_b, 4).tolist()} vs {np.round(jac_r, 4).tolist()} "
                         "arcsec/pixel); resample one band onto the other's grid first")
    return col, row


def _mask_centres(frame, band, masks):
    """Grid (x, y) arcsec and radii of user masks: pixel pairs, sky pairs, regions."""
    centres, radii = [], []
    for item in masks:
        if item.get("frame") == "sky":
            col, row = sky_to_pixel(band, item["ra_deg"], item["dec_deg"])
            r = item.get("radius_arcsec")
        else:
            col, row = item["col"], item["row"]
            r_pix = item.get("radius_pix")
            r = None if r_pix is None else r_pix * float(np.mean(frame.scales))
        centres.append(frame.to_grid(col, row))
        radii.append(MASK_RADIUS_ARCSEC if r is None else r)
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2), np.asarray(radii)


def cut_two_bands(blue, red, position=None, sky=None, masks=(), psf_fwhm=None,
                  cosmic_rays=None, npix=conventions.NPIX):
    """Cut, align, resample, PSF-match and mask two bands (steps 2-6 of the module doc).

    Args:
        blue, red: :class:`Band` of the bluer and the redder filter.
        position: ``(col, row)`` 0-based pixel of the lens in the **blue**
            file; default its centre unless ``sky`` is given.
        sky: ``(ra_deg, dec_deg)`` ICRS lens position (needs the blue WCS).
        masks: iterable of mask dicts as :func:`parse_ds9_regions` returns
            (``{"frame": "image", "col", "row"}`` in blue file pixels, or
            ``{"frame": "sky", "ra_deg", "dec_deg"}``), each a 0.2 arcsec disc
            unless it gives its own radius.
        psf_fwhm: ``(fwhm_blue, fwhm_red)`` arcsec for Gaussian PSF matching,
            or None to skip it.
        cosmic_rays: None (off) or a :func:`detect_cosmic_rays` method name;
            each detected group is masked with a 0.2 arcsec disc.
        npix: output side, pixels.

    Returns:
        :class:`TwoBandCutout`.

    Raises:
        InputError: a position outside an image, bands that cannot be
            aligned, or a sky position without a WCS (each naming the file).
    """
    name = f"{blue.path} + {red.path}"
    if position is not None and sky is not None:
        raise InputError("give the lens position either as a sky position or as pixels, not both")
    if sky is not None:
        position = sky_to_pixel(blue, *sky)
        _check_inside(blue, *position, f"the sky position (RA {sky[0]}, Dec {sky[1]}) deg")
    elif position is not None:
        position = (float(position[0]), float(position[1]))
        _check_inside(blue, *position, "the lens position")
    else:
        position = ((blue.data.shape[1] - 1) / 2.0, (blue.data.shape[0] - 1) / 2.0)
    field = (npix + 2 * _MARGIN_PIX) * conventions.PIXEL_SCALE
    size = tuple(_cut_side(field, s) for s in blue.scales)
    blue_cut, centre = _cut(blue, position, size)
    red_centre = _align(blue, red, centre)
    red_size = tuple(_cut_side(field, s) for s in red.scales)
    red_cut, red_cut_centre = _cut(red, red_centre, red_size)
    red_cut = _subpixel_shift(red_cut, red_cut_centre[0] - red_centre[0],
                              red_cut_centre[1] - red_centre[1])
    blue_res, red_res = _resample(blue_cut, blue.scales), _resample(red_cut, red.scales)
    if blue_res.shape != red_res.shape:
        raise InputError(f"{name} cannot be aligned: resampled cutouts of shapes "
                         f"{blue_res.shape} and {red_res.shape}")
    keep = (blue_res != 0) & (red_res != 0)
    cosmic = np.zeros(blue_res.shape, dtype=bool)
    if cosmic_rays is not None:
        cosmic = (detect_cosmic_rays(blue_res, ~keep, cosmic_rays)
                  | detect_cosmic_rays(red_res, ~keep, cosmic_rays))
    if psf_fwhm is not None:
        blue_res, red_res = match_psfs(blue_res, red_res, psf_fwhm[0], psf_fwhm[1],
                                       keep=keep & ~cosmic)
    m_y, m_x = blue_res.shape
    blue_grid, (start_x, start_y) = predict_lib.fit_to_grid(blue_res, npix)
    red_grid, _ = predict_lib.fit_to_grid(red_res, npix)
    offset = ((start_x + (npix - 1) / 2.0 - (m_x - 1) / 2.0) * conventions.PIXEL_SCALE,
              (start_y + (npix - 1) / 2.0 - (m_y - 1) / 2.0) * conventions.PIXEL_SCALE)
    frame = Frame(path=blue.path, centre=centre, offset=offset, scales=blue.scales,
                  wcs=blue.wcs)
    cosmic_grid, _ = predict_lib.fit_to_grid(cosmic, npix)
    cosmic_mask = circular_mask(npix, (np.asarray(cosmic_ray_centres(cosmic_grid))
                                       - (npix - 1) / 2.0) * conventions.PIXEL_SCALE)
    centres, radii = _mask_centres(frame, blue, masks)
    user_mask = circular_mask(npix, centres, radii)
    mask = (blue_grid == 0) | (red_grid == 0) | cosmic_mask | user_mask
    return TwoBandCutout(blue=np.where(mask, 0.0, blue_grid), red=np.where(mask, 0.0, red_grid),
                         mask=mask, cosmic_mask=cosmic_mask, frame=frame, name=name)


def unmix_cutout(cutout, **kwargs):
    """ICA of a :class:`TwoBandCutout` (docs/design.md §8.4 step 3).

    Args:
        cutout: :class:`TwoBandCutout`.
        **kwargs: passed to :func:`ensai_tf.preprocess.ica.unmix_two_bands`.

    Returns:
        ``(image, result)``: the ``(npix, npix, 1)`` float32 network input
        and the :class:`~ensai_tf.preprocess.ica.IcaResult`.
    """
    result = ica.unmix_two_bands(cutout.blue, cutout.red, mask=cutout.mask, name=cutout.name,
                                 **kwargs)
    return ica.to_network_input(result.arc, cutout.blue.shape[0]), result


# ---------------------------------------------------------------- output


def plot_diagnostic(cutout, result, params, path, dpi=100):
    """Diagnostic PNG: both bands, both ICA components, the masks, and the
    predicted critical curve on the arc component.

    Args:
        cutout: :class:`TwoBandCutout`.
        result: :class:`~ensai_tf.preprocess.ica.IcaResult`.
        params: ``(5,)`` predicted parameters (arcsec, -, -, arcsec,
            arcsec), or None for no curve.
        path: output PNG path.
        dpi: resolution, dots per inch.

    Returns:
        The path written, as a str.
    """
    from ensai_tf import plotting

    panels = [cutout.blue, cutout.red, result.arc, result.other, cutout.mask.astype(float),
              result.arc]
    titles = ["blue band", "red band", "ICA arc component", "ICA other component",
              "masks (red: cosmic rays + user)", "arcs + predicted critical curve"]
    curves = [None] * 6
    if params is not None:
        curves[5] = {"critical": _critical_curve(params)}
    masks = [np.zeros_like(cutout.mask)] * 4 + [cutout.mask, cutout.mask]
    return plotting.contact_sheet(np.stack(panels), path, titles=titles, curves=curves, ncols=3,
                                  masks=np.stack(masks), panel_inches=3.0, dpi=dpi)


def _critical_curve(params):
    """(K, 2) arcsec tangential critical curve of predicted parameters."""
    from ensai_tf.lensing import caustics

    p = np.asarray(params, dtype=np.float32).reshape(-1)
    curve = caustics.tangential_critical_curve(p[0:1], p[1:2], p[2:3], p[3:4], p[4:5], num=200)
    return np.asarray(curve)[0]


def _row(cutout, params, label):
    """One output row (predict.OUTPUT_COLUMNS) with q and PA east of north."""
    P = conventions.Param
    p = np.asarray(params, dtype=np.float64)
    q, _ = conventions.q_phi_from_ellipticity(p[P.E_X], p[P.E_Y])
    frame = cutout.frame
    col, row = frame.to_file_pixel(p[P.X_L], p[P.Y_L])
    row_out = {"file": label, "index": 0}
    row_out.update({n: float(v) for n, v in zip(conventions.PARAM_NAMES, p)})
    if frame.wcs is None:
        pa = float(conventions.mass_major_axis_angle(p[P.E_X], p[P.E_Y]))
        pa_frame, ra, dec = predict_lib.PA_FRAME_IMAGE, None, None
    else:
        jac = pixel_to_sky_jacobian(frame.wcs, float(col), float(row))
        pa = float(position_angle_east_of_north(p[P.E_X], p[P.E_Y], jac, frame.scales))
        pa_frame = predict_lib.PA_FRAME_SKY
        sky = frame.wcs.pixel_to_world(float(col), float(row))
        ra, dec = float(sky.icrs.ra.deg), float(sky.icrs.dec.deg)
    row_out.update({"q": float(q), "pa_deg": pa, "pa_frame": pa_frame, "x_pix": float(col),
                    "y_pix": float(row), "ra_deg": ra, "dec_deg": dec})
    return row_out


def _parse_mask_specs(specs, pixel=True):
    out = []
    for spec in specs or ():
        spec = str(spec)
        if spec.lower().endswith(".reg"):
            out.extend(parse_ds9_regions(spec))
            continue
        parts = spec.replace(" ", "").split(",")
        try:
            a, b = (float(v) for v in parts)
        except ValueError:
            what = "X,Y (blue-file pixels)" if pixel else "RA,DEC (degrees)"
            raise InputError(f"mask {spec!r}: expected {what} or a DS9 .reg file") from None
        out.append({"frame": "image", "col": a, "row": b} if pixel
                   else {"frame": "sky", "ra_deg": a, "dec_deg": b})
    return out


def band_files(bands=None, files=(), ica_flag=False):
    """The (blue, red) pair of ``ensai predict --bands BLUE RED`` or ``--ica FILES``.

    Args:
        bands: ``[blue, red]`` from ``--bands``, or None.
        files: the positional image files.
        ica_flag: whether ``--ica`` was given (the positional files are then
            the two bands, bluer first).

    Returns:
        ``(blue, red)`` paths, or None when neither option asks for ICA.

    Raises:
        InputError: ``--ica`` without exactly two files, or ``--bands`` with
            positional files as well.
    """
    files = list(files or ())
    if bands:
        if files:
            raise InputError(f"--bands takes the two band files itself; also got {files}")
        return str(bands[0]), str(bands[1])
    if not ica_flag:
        return None
    if len(files) != 2:
        raise InputError(f"--ica needs two bands (BLUE.fits RED.fits, bluer first); got "
                         f"{len(files)} file{'s' if len(files) != 1 else ''}: "
                         f"{', '.join(files) or 'none'}")
    return files[0], files[1]


def predict_two_band(model, blue, red, output="-", ra=None, dec=None, x=None, y=None,
                     masks=(), sky_masks=(), psf_fwhm=None, cosmic_rays=None, hdu=None,
                     pixel_scale=None, plot=None):
    """Lens parameters from two FITS bands via ICA (``ensai predict --bands``).

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        blue, red: FITS files of the bluer and the redder filter.
        output: ``.csv``/``.json`` path or ``'-'`` (see
            :func:`ensai_tf.predict.write_table`).
        ra, dec: ICRS lens position, degrees (needs the blue WCS); or
        x, y: 0-based pixel of the lens in the blue file; default the centre.
        masks: ``"X,Y"`` blue-file pixels or DS9 ``.reg`` files; each point
            is a 0.2 arcsec disc (docs/design.md §8.4 step 2).
        sky_masks: ``"RA,DEC"`` degrees, 0.2 arcsec discs.
        psf_fwhm: ``(blue, red)`` PSF FWHM, arcsec, or None (no matching).
        cosmic_rays: None or a :func:`detect_cosmic_rays` method.
        hdu: HDU index or EXTNAME used in both files; None = first image.
        pixel_scale: arcsec per pixel for files without a WCS.
        plot: optional path of the diagnostic PNG (:func:`plot_diagnostic`).

    Returns:
        list with one row dict (``ensai_tf.predict.OUTPUT_COLUMNS``): the
        five parameters, ``q = 1 - |e|``, ``pa_deg`` east of north when the
        blue file has a WCS (``pa_frame`` says which), the lens centre in
        blue-file pixels and RA/Dec.

    Raises:
        InputError: bad files, positions, masks or output (naming them).
        ModelDirError: a missing or corrupt model.
    """
    if (ra is None) != (dec is None) or (x is None) != (y is None):
        raise InputError("give both --ra and --dec, or both --x and --y")
    if ra is not None and x is not None:
        raise InputError("give the lens position as --ra/--dec or as --x/--y, not both")
    predict_lib._check_writable(output)
    predict_lib._output_format(output)
    if plot is not None and not pathlib.Path(plot).parent.is_dir():
        raise InputError(f"plot {str(plot)!r}: folder {str(pathlib.Path(plot).parent)!r} "
                         "does not exist")
    bands = [read_band(p, hdu, pixel_scale) for p in (blue, red)]
    mask_items = _parse_mask_specs(masks, pixel=True) + _parse_mask_specs(sky_masks, pixel=False)
    predict_fn, npix = predict_lib.load_predictor(model)
    cutout = cut_two_bands(bands[0], bands[1], position=None if x is None else (x, y),
                           sky=None if ra is None else (ra, dec), masks=mask_items,
                           psf_fwhm=psf_fwhm, cosmic_rays=cosmic_rays, npix=npix)
    image, result = unmix_cutout(cutout)
    start = time.perf_counter()
    params = predict_lib.predict_images(predict_fn, image[None])[0]
    elapsed = time.perf_counter() - start
    rows = [_row(cutout, params, cutout.name)]
    predict_lib.write_table(rows, output)
    if plot is not None:
        plot_diagnostic(cutout, result, params, plot)
    print(f"ensai predict --bands: arc component chosen by {result.rule} "
          f"(blue/red weights {np.round(result.colour, 3).tolist()}); "
          f"{int(cutout.mask.sum())} pixels masked; network {1e3 * elapsed:.1f} ms",
          file=sys.stderr)
    return rows
