"""Read user image files (.npy and FITS) with their pixel scale, in bounded memory.

Two ways in:

- :func:`open_image_file` opens a file lazily: ``.npy`` files are memory-mapped
  and FITS images are read through ``astropy``'s ``section`` (tile by tile for
  compressed ``.fits.fz`` images), so only the pixels a caller slices are
  read. ``ensai predict`` reads just the network's field of each image this
  way, so a 10000 x 10000 survey image costs what its 7.68 arcsec centre costs.
- :func:`read_image_file` reads every image of a file into memory, for callers
  that want the whole array.

Sizes a header declares are checked before anything is allocated
(:data:`MAX_READ_BYTES`), and the pixel scale must lie in
:data:`PIXEL_SCALE_RANGE`.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "lens.npy")
    >>> np.save(path, np.ones((3, 100, 120)))
    >>> with open_image_file(path) as (stack, wcs, scales):
    ...     stack.shape, stack.read(1, slice(0, 2), slice(0, 3)).shape, scales
    ((3, 100, 120), (2, 3), (0.04, 0.04))
"""

import contextlib
import dataclasses
import math
import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = [
    "FITS_SUFFIXES",
    "MAX_READ_BYTES",
    "MIN_SIDE",
    "PIXEL_SCALE_RANGE",
    "ImageStack",
    "as_stack",
    "check_finite",
    "open_image_file",
    "read_fits",
    "read_image_file",
    "resolve_pixel_scales",
]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz")
"""File-name endings read as FITS."""

MIN_SIDE = 8
"""Smallest image side, pixels."""

PIXEL_SCALE_RANGE = (1e-4, conventions.NPIX * conventions.PIXEL_SCALE / MIN_SIDE)
"""Accepted pixel sides, arcsec: from 0.1 mas to 0.96 arcsec (the 7.68 arcsec field over 8 pixels)."""

MAX_READ_BYTES = 1 << 30
"""Most bytes a file may ask to be held in memory at once (1 GiB): a gzip-compressed
FITS image, which cannot be memory-mapped, or a whole file read by :func:`read_image_file`."""

_MAX_QUOTE = 80


def _one_line(err):
    text = " ".join(str(err).split())
    return text if len(text) <= _MAX_QUOTE else text[:_MAX_QUOTE - 3] + "..."


@dataclasses.dataclass(frozen=True)
class ImageStack:
    """``(N, H, W)`` images of one file, read window by window.

    Attributes:
        name: the file, for messages.
        shape: ``(N, H, W)``.
        source: an array-like (a memory map, a FITS section or an array)
            indexed as ``source[prefix + (i, rows, cols)]``.
        prefix: leading indices that drop length-1 axes of ``source``.
        stacked: whether ``source`` has the image axis (False for one 2-D image).
        channel: whether ``source`` has a trailing length-1 channel axis.
    """

    name: str
    shape: tuple
    source: object
    prefix: tuple = ()
    stacked: bool = True
    channel: bool = False

    def read(self, i, rows=slice(None), cols=slice(None)):
        """Pixels ``[rows, cols]`` of image ``i`` as a float64 array (only those are read)."""
        index = self.prefix + ((i,) if self.stacked else ()) + (rows, cols) \
            + ((0,) if self.channel else ())
        return np.asarray(self.source[index], dtype=np.float64)


def _stack_layout(path, shape):
    """``((N, H, W), stacked, channel)`` of an image or stack shape, or an InputError."""
    channel = len(shape) in (3, 4) and shape[-1] == 1
    core = tuple(shape[:-1]) if channel else tuple(shape)
    full = core if len(core) == 3 else (1, *core)
    if len(core) not in (2, 3) or full[0] == 0 or min(full[1:]) < MIN_SIDE:
        raise InputError(
            f"{path}: wrong shape {tuple(shape)}; expected an image of shape (H, W) or "
            f"(H, W, 1), or a stack (N, H, W) or (N, H, W, 1), at least {MIN_SIDE} pixels a "
            f"side; the networks take ({conventions.NPIX}, {conventions.NPIX}, 1) at "
            f"{conventions.PIXEL_SCALE} arcsec per pixel, and other sizes are padded or cropped")
    return full, len(core) == 3, channel


def as_stack(path, data):
    """An image or stack as ``(N, H, W)``, refusing other shapes.

    Args:
        path: what to call the data in messages (a file name).
        data: ``(H, W)``, ``(H, W, 1)``, ``(N, H, W)`` or ``(N, H, W, 1)`` array.

    Returns:
        ``(N, H, W)`` view of ``data`` (a memory map stays one).

    Raises:
        InputError: another shape, an empty stack or a side below 8 pixels.
    """
    full, _, channel = _stack_layout(path, data.shape)
    return (data[..., 0] if channel else data).reshape(full)


def resolve_pixel_scales(path, scales, pixel_scale=None):
    """The pixel scales of one image: the user's ``pixel_scale`` if given, else the file's.

    Args:
        path: the file, for messages.
        scales: ``(sx, sy)`` arcsec per pixel read from the file (its WCS), or None.
        pixel_scale: the user's override, arcsec per pixel, or None.

    Returns:
        ``(sx, sy)``, arcsec per pixel, each in :data:`PIXEL_SCALE_RANGE`.

    Raises:
        InputError: an override or WCS scale outside the range, or no scale at all.
    """
    lo, hi = PIXEL_SCALE_RANGE
    if pixel_scale is not None:
        if not (isinstance(pixel_scale, (int, float, np.floating, np.integer))
                and math.isfinite(pixel_scale) and lo <= pixel_scale <= hi):
            raise InputError(f"pixel scale {_one_line(repr(pixel_scale))} must be a number of "
                             f"arcsec in [{lo:g}, {hi:g}]")
        return (float(pixel_scale),) * 2
    if scales is None:
        raise InputError(f"{path}: the pixel scale is unknown (no celestial WCS in the header); "
                         "give it with --pixel-scale ARCSEC (pixel_scale=...)")
    if not all(math.isfinite(s) and lo <= s <= hi for s in scales):
        raise InputError(f"{path}: its WCS gives pixels of {scales[0]:.4g} x {scales[1]:.4g} "
                         f"arcsec; accepted are [{lo:g}, {hi:g}] (override with --pixel-scale)")
    return tuple(float(s) for s in scales)


def _hdu_index(path, hdul, hdu):
    """Index of the HDU named by ``hdu`` (index, EXTNAME or (EXTNAME, EXTVER))."""
    try:
        idx = hdul.index_of(hdu)
    except (KeyError, ValueError, TypeError):
        idx = None
    if idx is None or not 0 <= idx < len(hdul):
        raise InputError(f"{path}: has no HDU {hdu!r} (it has {len(hdul)} HDUs: "
                         f"{', '.join(h.name or str(i) for i, h in enumerate(hdul))})")
    return idx


def _check_complete(path, hdul, idx, hdu):
    """Refuse an HDU whose data would run past the end of the file (astropy's own fileinfo)."""
    info = hdul.fileinfo(idx)
    if getattr(info.get("file"), "compression", None):
        return  # a gzip/bzip2/zip file: its size on disk says nothing; a short one fails to read
    # compressed images are stored as a binary table: their on-disk span, not the image size
    on_disk = info["datSpan"] if isinstance(hdu, fits.CompImageHDU) else hdu.size
    end = info["datLoc"] + on_disk
    size = os.path.getsize(path)
    padding = 2880 if isinstance(hdu, fits.CompImageHDU) else 0  # datSpan counts the padding
    if end > size + padding - (1 if padding else 0):
        raise InputError(f"{path}: the FITS file is truncated ({size} bytes; HDU {idx} needs {end})")


def _choose_hdu(path, hdul, hdu):
    """``(index, HDU)`` of the image HDU to read: ``hdu`` if given, else the first with 2-D data."""
    wanted = None if hdu is None else _hdu_index(path, hdul, hdu)
    for idx, candidate in enumerate(hdul):
        if (wanted is not None and idx != wanted) or not candidate.is_image:
            continue
        shape = tuple(candidate.shape or ())
        if len(shape) >= 2:
            _check_complete(path, hdul, idx, candidate)
            return idx, candidate
    which = "no HDU holds" if wanted is None else f"HDU {hdu!r} does not hold"
    raise InputError(f"{path}: {which} an image (2-D data)")


def _celestial(path, header):
    """``(celestial WCS or None, (sx, sy) arcsec or None)`` of a FITS header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
    except (ValueError, KeyError, MemoryError) as err:
        raise InputError(f"{path}: the FITS header has an invalid WCS ({_one_line(err)})") from None
    if not wcs.has_celestial:
        return None, None
    celestial = wcs.celestial
    units = [str(u) for u in celestial.world_axis_units]
    if any(u not in ("deg", "") for u in units):
        raise InputError(f"{path}: celestial WCS axes in {units}, expected degrees")
    scales = proj_plane_pixel_scales(celestial) * 3600.0
    return celestial, (float(scales[0]), float(scales[1]))


def _check_bytes(path, shape, itemsize, what):
    need = math.prod(shape) * itemsize
    if need > MAX_READ_BYTES:
        raise InputError(f"{path}: {what} of shape {tuple(shape)} would take {need / 2**30:.1f} "
                         f"GiB in memory; the limit is {MAX_READ_BYTES / 2**30:.0f} GiB "
                         "(cut the image around the lens first)")


@contextlib.contextmanager
def _opened_fits(path, hdu=None):
    """Yield ``(chosen HDU, header)`` of an open FITS file; errors become one InputError line."""
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the FITS file is empty")
    try:
        # astropy's warnings on a short or odd file would add lines to the CLI's
        # one-line error: truncation is checked and reported instead
        with warnings.catch_warnings(action="ignore", category=AstropyUserWarning):
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                idx, chosen = _choose_hdu(path, hdul, hdu)
                # gzip files and scaled integers (BZERO/BSCALE/BLANK) cannot be memory-mapped
                mapped = not path.lower().endswith(".gz") and (
                    isinstance(chosen, fits.CompImageHDU)
                    or not any(k in chosen.header for k in ("BZERO", "BSCALE", "BLANK")))
                if mapped:
                    yield chosen, chosen.header
                    return
                _check_bytes(path, chosen.shape, 8, "an image that cannot be memory-mapped")
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                yield hdul[idx], hdul[idx].header
    except (InputError, GeneratorExit):
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as err:
        raise InputError(f"{path}: not a readable FITS file ({_one_line(err)})") from None


def read_fits(path, hdu=None):
    """Read the image data of one FITS file, with its celestial WCS and pixel scales.

    Args:
        path: FITS file (tile-compressed ``.fits.fz`` images included).
        hdu: an index, an EXTNAME or an ``(EXTNAME, EXTVER)`` pair naming the
            HDU to read; None takes the first HDU holding 2-D data.

    Returns:
        ``(data, wcs, scales)``: float64 array, the celestial
        ``astropy.wcs.WCS`` or None, and ``(sx, sy)`` arcsec per pixel along
        columns and rows, or None without a celestial WCS.

    Raises:
        InputError: empty, truncated or unreadable file, no image HDU, an image
            over :data:`MAX_READ_BYTES`, or an invalid WCS; the message names the file.
    """
    path = str(path)
    with _opened_fits(path, hdu) as (chosen, header):
        _check_bytes(path, chosen.shape, 8, "the image")
        try:
            data = np.array(chosen.section[...], dtype=np.float64)
        except (OSError, ValueError, TypeError, IndexError, EOFError) as err:
            raise InputError(f"{path}: not a readable FITS file ({_one_line(err)})") from None
        header = header.copy()
    wcs, scales = _celestial(path, header)
    return data, wcs, scales


def _fits_stack(path, chosen):
    """An :class:`ImageStack` over a FITS HDU's section, length-1 leading axes dropped."""
    shape, prefix = tuple(chosen.shape), ()
    while len(shape) > 2 and shape[0] == 1:
        shape, prefix = shape[1:], prefix + (0,)
    full, stacked, channel = _stack_layout(path, shape)
    return ImageStack(path, full, chosen.section, prefix, stacked, channel)


def _npy_stack(path):
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, TypeError, OverflowError) as err:
        raise InputError(f"{path}: not a readable .npy array ({_one_line(err)})") from None
    if not isinstance(data, np.ndarray):  # np.load opens a .npz archive too
        raise InputError(f"{path}: not a .npy array (an .npz archive or another format)")
    if data.dtype.kind not in "fiub":
        raise InputError(f"{path}: dtype {data.dtype} is not numeric")
    stack = as_stack(path, data)
    return ImageStack(path, tuple(stack.shape), stack)


@contextlib.contextmanager
def open_image_file(path, pixel_scale=None, hdu=None):
    """Open one .npy or FITS file for reading window by window.

    Args:
        path: ``.npy`` file holding ``(H, W)``, ``(H, W, 1)``, ``(N, H, W)`` or
            ``(N, H, W, 1)``, or a FITS file (``.fits``, ``.fit``, ``.fts``,
            optionally ``.gz``, or a tile-compressed ``.fits.fz``).
        pixel_scale: pixel side in arcsec, overriding the file's; needed for
            a FITS file without a celestial WCS. ``.npy`` files are assumed
            to be on the package grid (0.04 arcsec, docs/design.md §0) unless given.
        hdu: FITS HDU to read (index or EXTNAME); None takes the first image.

    Yields:
        ``(stack, wcs, scales)``: an :class:`ImageStack`, the celestial WCS or
        None, and ``(sx, sy)`` arcsec per pixel along columns and rows. The
        file stays open until the block ends.

    Raises:
        InputError: missing, unreadable, empty or corrupt file, unsupported
            type or shape, or an unknown or out-of-range pixel scale; each
            message names the file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    lower = path.lower()
    if lower.endswith(".npy"):
        stack = _npy_stack(path)
        yield stack, None, resolve_pixel_scales(path, (conventions.PIXEL_SCALE,) * 2,
                                                pixel_scale)
    elif lower.endswith(FITS_SUFFIXES):
        with _opened_fits(path, hdu) as (chosen, header):
            wcs, scales = _celestial(path, header)
            scales = resolve_pixel_scales(path, scales, pixel_scale)
            yield _fits_stack(path, chosen), wcs, scales
    else:
        raise InputError(f"{path}: unknown file type; give .npy or FITS (.fits, .fit, .fts, "
                         ".fits.fz)")


def check_finite(name, i, image):
    """Refuse NaN or Inf pixels, naming the file and the image.

    Raises:
        InputError: ``{name}: image {i} contains NaN values (k pixels)``.
    """
    bad = ~np.isfinite(image)
    if bad.any():
        what = "NaN" if np.isnan(image).any() else "Inf"
        raise InputError(f"{name}: image {i} contains {what} values ({int(bad.sum())} pixels); "
                         "mask bad pixels with exactly 0 instead")


def read_image_file(path, pixel_scale=None):
    """Read every image of one .npy or FITS file into memory.

    Args:
        path: as :func:`open_image_file`.
        pixel_scale: as :func:`open_image_file`.

    Returns:
        ``(images, wcs, scales)``: float64 array ``(N, H, W)``, the celestial
        WCS or None, and ``(sx, sy)`` arcsec per pixel along columns, rows.

    Raises:
        InputError: as :func:`open_image_file`, a file over
            :data:`MAX_READ_BYTES` as float64, or NaN/Inf values.
    """
    with open_image_file(path, pixel_scale) as (stack, wcs, scales):
        _check_bytes(str(path), stack.shape, 8, "the images")
        images = np.stack([stack.read(i) for i in range(stack.shape[0])])
    for i, image in enumerate(images):
        check_finite(str(path), i, image)
    return images, wcs, scales
