"""User masks: discs on the grid, DS9 region files, mask options (docs/design.md §8.4 step 2).

Each manual mask is a :data:`MASK_RADIUS_ARCSEC` disc unless it gives its
own radius (a DS9 circle). Mask items are dicts, either ``{"frame":
"image", "col", "row", "radius_pix"}`` (0-based blue-file pixels) or
``{"frame": "sky", "ra_deg", "dec_deg", "radius_arcsec"}`` (ICRS), as
:func:`parse_ds9_regions` and :func:`parse_mask_specs` return them.
"""

import math
import pathlib
import re

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = [
    "MASK_RADIUS_ARCSEC",
    "MAX_MASKS",
    "MAX_PIXEL_COORD",
    "check_mask_item",
    "circular_mask",
    "parse_ds9_regions",
    "parse_mask_specs",
]

MASK_RADIUS_ARCSEC = 0.2
"""Radius of a manual or cosmic-ray mask disc, arcsec (docs/design.md §8.4 step 2)."""

MAX_MASKS = 10000
"""Most mask items accepted from the options and region files together."""

MAX_PIXEL_COORD = 1e6
"""Largest pixel coordinate or radius accepted in a mask, in absolute value, pixels."""

_MAX_RADIUS_ARCSEC = 3600.0

_SKY_FRAMES = ("fk5", "icrs", "j2000", "fk4", "b1950", "galactic", "ecliptic")
_IMAGE_FRAMES = ("image", "physical")
_SHAPE_RE = re.compile(r"^([+-]?)\s*([a-z]+)\s*\((.*)\)$")


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

    Example:
        >>> int(circular_mask(192, [(0.0, 0.0)], 0.2).sum())
        80
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
    """ICRS ``(ra_deg, dec_deg)`` of a DS9 sky position in ``frame``."""
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


def _shape_values(part, low, path, lineno):
    """``(shape, values)`` of one DS9 shape, refusing what is not supported."""
    match = _SHAPE_RE.match(low)
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
    return shape, values


def _region(part, low, system, path, lineno):
    """The mask dict of one DS9 circle or point in coordinate ``system``."""
    shape, values = _shape_values(part, low, path, lineno)
    sky = system in _SKY_FRAMES
    radius = _parse_angle(values[2], path, lineno, sky) if shape == "circle" else None
    if sky:
        ra, dec = _parse_sky_pair(values[0], values[1], system, path, lineno)
        return {"frame": "sky", "ra_deg": ra, "dec_deg": dec, "radius_arcsec": radius}
    try:
        col, row = float(values[0]) - 1.0, float(values[1]) - 1.0
    except ValueError:
        raise InputError(f"{path}:{lineno}: pixel position {values[:2]} is not "
                         "numeric") from None
    return {"frame": "image", "col": col, "row": row, "radius_pix": radius}


def check_mask_item(item, where):
    """Refuse a mask item whose numbers are not finite or out of range.

    Pixel positions and radii must be finite with absolute value at most
    :data:`MAX_PIXEL_COORD`; sky positions must have RA in [0, 360] and Dec
    in [-90, 90] degrees; sky radii at most 3600 arcsec.

    Args:
        item: a mask dict (see the module doc).
        where: what to name in the message (``"mask '1,2'"`` or ``"file:line"``).

    Returns:
        ``item`` unchanged.

    Raises:
        InputError: naming ``where``, the value and the allowed range.

    Example:
        >>> check_mask_item({"frame": "image", "col": 3.0, "row": 4.0}, "mask '3,4'")
        {'frame': 'image', 'col': 3.0, 'row': 4.0}
    """
    if item["frame"] == "image":
        limits = {"col": (-MAX_PIXEL_COORD, MAX_PIXEL_COORD, "pixels"),
                  "row": (-MAX_PIXEL_COORD, MAX_PIXEL_COORD, "pixels"),
                  "radius_pix": (0.0, MAX_PIXEL_COORD, "pixels")}
    else:
        limits = {"ra_deg": (0.0, 360.0, "degrees"), "dec_deg": (-90.0, 90.0, "degrees"),
                  "radius_arcsec": (0.0, _MAX_RADIUS_ARCSEC, "arcsec")}
    for key, (lo, hi, unit) in limits.items():
        value = item.get(key)
        if value is not None and not (math.isfinite(value) and lo <= value <= hi):
            raise InputError(f"{where}: {key.split('_')[0]} {value:.6g} is out of range; give a "
                             f"finite value from {lo:g} to {hi:g} {unit}")
    return item


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
    except MemoryError:
        raise InputError(f"{path}: the region file is too big to read") from None
    system = "physical"
    regions = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        for part in line.split("#", 1)[0].split(";"):
            part = part.strip()
            low = part.lower()
            if not part or low.startswith("global") or low.startswith("# region"):
                continue
            if low in _SKY_FRAMES + _IMAGE_FRAMES:
                system = low
                continue
            regions.append(check_mask_item(_region(part, low, system, path, lineno),
                                           f"{path}:{lineno}"))
            if len(regions) > MAX_MASKS:
                raise InputError(f"{path}: more than {MAX_MASKS} regions; merge them into "
                                 "fewer, larger circles")
    return regions


def parse_mask_specs(specs, pixel=True):
    """Mask items of ``ensai predict --mask`` / ``--sky-mask`` option values.

    Args:
        specs: iterable of strings (or None): ``"X,Y"`` (blue-file pixels,
            0-based, with ``pixel``) or ``"RA,DEC"`` (ICRS degrees, without),
            or the path of a DS9 ``.reg`` file (:func:`parse_ds9_regions`).
        pixel: whether the pairs are pixels (``--mask``) or sky positions
            (``--sky-mask``).

    Returns:
        list of mask dicts (see the module doc); a pair is a
        :data:`MASK_RADIUS_ARCSEC` disc.

    Raises:
        InputError: a value that is neither a pair of numbers nor a
            ``.reg`` file, or a bad region file.

    Example:
        >>> parse_mask_specs(["40, 50"])
        [{'frame': 'image', 'col': 40.0, 'row': 50.0}]
    """
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
            raise InputError(f"mask {spec[:80]!r}: expected {what} or a DS9 .reg file") from None
        out.append(check_mask_item({"frame": "image", "col": a, "row": b} if pixel
                                   else {"frame": "sky", "ra_deg": a, "dec_deg": b},
                                   f"mask {spec[:80]!r}"))
        if len(out) > MAX_MASKS:
            raise InputError(f"more than {MAX_MASKS} masks; merge them into fewer, larger circles")
    return out
