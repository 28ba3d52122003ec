"""Turn user image files into network inputs: reading, resampling, grid fitting, normalisation.

The networks take ``(N, N, 1)`` float32 images of 0.04 arcsec pixels with
masked pixels exactly 0 (docs/design.md §0). This module turns user files into
that form:

1. read the file: ``.npy`` (an image or a stack of images, assumed to be on
   the package's own 0.04 arcsec grid unless ``pixel_scale`` is given) or
   FITS (first HDU holding an image; pixel scale from the celestial WCS via
   ``astropy.wcs.utils.proj_plane_pixel_scales``, or ``pixel_scale``);
2. refuse NaN/Inf, all-masked and constant images, naming the file;
3. resample to 0.04 arcsec flux-conservingly when the scale differs;
4. zero-pad (padding is "masked", which the bias-removal layer ignores,
   docs/design.md §6.1) or centrally crop to the network's input size;
5. normalise to an arc peak of about 1, as the training images are
   (docs/design.md §5.7): divide by the maximum of the 3x3-median-filtered
   image over unmasked pixels, so a single hot pixel or cosmic ray cannot set
   the scale.

Example:
    >>> import numpy as np
    >>> image = np.zeros((100, 100)); image[40:60, 40:60] = 2.0
    >>> out, start = fit_to_grid(normalise_peak(image))
    >>> out.shape, float(out.max()), start
    ((192, 192), 1.0, (-46, -46))
"""

import dataclasses
import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage

from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = [
    "FITS_SUFFIXES",
    "PreparedImage",
    "read_fits",
    "resolve_pixel_scales",
    "read_image_file",
    "resample_flux_conserving",
    "fit_to_grid",
    "normalise_peak",
    "iter_prepared",
    "iter_prepared_array",
    "as_stack",
    "prepare_images",
]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
"""File-name endings read as FITS."""

_MIN_SIDE = 8
_PIXEL_SCALE_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """One network-ready image and how it maps back to its file.

    Attributes:
        name: file name, with ``[i]`` for the i-th image of a stack.
        file: the source file path.
        index: position in the file's stack (0 for a single image).
        image: ``(npix, npix, 1)`` float32 network input, 0.04 arcsec pixels.
        centre_pix: ``(col, row)``, the input file's pixel coordinates
            (0-based) of the prepared image's centre.
        scale_arcsec: ``(sx, sy)``, arcsec per input pixel along columns and
            rows.
        wcs: celestial ``astropy.wcs.WCS`` of the file, or None.
    """

    name: str
    file: str
    index: int
    image: np.ndarray
    centre_pix: tuple
    scale_arcsec: tuple
    wcs: object = None


def read_fits(path, hdu=None):
    """Read the image data of one FITS file, with its celestial WCS and pixel scales.

    Args:
        path: FITS file.
        hdu: an index, an EXTNAME or an ``(EXTNAME, EXTVER)`` pair naming the
            HDU to read; None takes the first HDU holding 2-D data.

    Returns:
        ``(data, wcs, scales)``: float64 array, the celestial
        ``astropy.wcs.WCS`` or None, and ``(sx, sy)`` arcsec per pixel along
        columns and rows, or None without a celestial WCS.

    Raises:
        InputError: empty, truncated or unreadable file, no image HDU, or an
            invalid WCS; the message names the file.
    """
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the FITS file is empty")
    try:
        # astropy's warnings on a short or odd file would add lines to the CLI's
        # one-line error: truncation is checked and reported below instead
        with warnings.catch_warnings(action="ignore", category=AstropyUserWarning), \
                fits.open(path, memmap=False) as hdul:
            wanted = None if hdu is None else _hdu_index(path, hdul, hdu)
            chosen = None
            for idx, candidate in enumerate(hdul):
                if wanted is not None and idx != wanted:
                    continue
                if not candidate.is_image:
                    continue
                # a short file is named as truncated (astropy's own error is a
                # reshape message); size read before .data rescales the header
                data_end = hdul.fileinfo(idx)["datLoc"] + candidate.size
                if data_end > os.path.getsize(path):
                    raise InputError(f"{path}: the FITS file is truncated "
                                     f"({os.path.getsize(path)} bytes; HDU {idx} needs "
                                     f"{data_end})")
                if candidate.data is not None and np.asarray(candidate.data).ndim >= 2:
                    chosen = candidate
                    break
            if chosen is None:
                which = "no HDU holds" if wanted is None else f"HDU {hdu!r} does not hold"
                raise InputError(f"{path}: {which} an image (2-D data)")
            data = np.array(chosen.data, dtype=np.float64)
            header = chosen.header.copy()
    except InputError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as err:
        raise InputError(f"{path}: not a readable FITS file "
                         f"({' '.join(str(err).split())})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
    except (ValueError, KeyError, MemoryError) as err:
        raise InputError(f"{path}: the FITS header has an invalid WCS "
                         f"({' '.join(str(err).split())})") from None
    if not wcs.has_celestial:
        return data, None, None
    celestial = wcs.celestial
    units = [str(u) for u in celestial.world_axis_units]
    if any(u not in ("deg", "") for u in units):
        raise InputError(f"{path}: celestial WCS axes in {units}, expected degrees")
    scales = proj_plane_pixel_scales(celestial) * 3600.0
    return data, celestial, (float(scales[0]), float(scales[1]))


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


def resolve_pixel_scales(path, scales, pixel_scale=None):
    """The pixel scales of one image: the user's ``pixel_scale`` if given, else the file's.

    Args:
        path: the file, for messages.
        scales: ``(sx, sy)`` arcsec per pixel read from the file (its WCS), or None.
        pixel_scale: the user's override, arcsec per pixel, or None.

    Returns:
        ``(sx, sy)``, arcsec per pixel.

    Raises:
        InputError: a non-positive or non-finite override, or no scale at all.
    """
    if pixel_scale is not None:
        if not (np.isfinite(pixel_scale) and pixel_scale > 0):
            raise InputError(f"pixel scale {pixel_scale!r} must be a positive number of arcsec")
        return (float(pixel_scale),) * 2
    if scales is None:
        raise InputError(f"{path}: the pixel scale is unknown (no celestial WCS in the header); "
                         "give it with --pixel-scale ARCSEC (pixel_scale=...)")
    return tuple(scales)


def read_image_file(path, pixel_scale=None):
    """Read the images of one .npy or FITS file.

    Args:
        path: ``.npy`` file holding ``(H, W)``, ``(H, W, 1)``, ``(N, H, W)`` or
            ``(N, H, W, 1)``, or a FITS file (``.fits``, ``.fit``, ``.fts``,
            optionally ``.gz``) whose first image HDU is used.
        pixel_scale: pixel side in arcsec, overriding the file's; needed for
            a FITS file without a celestial WCS. ``.npy`` files are assumed
            to be on the package grid (0.04 arcsec, docs/design.md §0) unless given.

    Returns:
        ``(images, wcs, scales)``: float64 array ``(N, H, W)``, the celestial
        WCS or None, and ``(sx, sy)`` arcsec per pixel along columns, rows.

    Raises:
        InputError: unreadable, empty or corrupt file, unsupported type or
            shape, NaN/Inf values, or an unknown pixel scale; each message
            names the file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    lower = path.lower()
    wcs = None
    scales = None
    if lower.endswith(".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise InputError(f"{path}: not a readable .npy array "
                             f"({' '.join(str(err).split())})") from None
        if data.dtype.kind not in "fiub":
            raise InputError(f"{path}: dtype {data.dtype} is not numeric")
        data = np.asarray(data, dtype=np.float64)
        scales = (conventions.PIXEL_SCALE,) * 2
    elif lower.endswith(FITS_SUFFIXES):
        data, wcs, scales = read_fits(path)
        while data.ndim > 2 and data.shape[0] == 1:
            data = data[0]
    else:
        raise InputError(f"{path}: unknown file type; give .npy or FITS (.fits, .fit, .fts)")
    scales = resolve_pixel_scales(path, scales, pixel_scale)
    images = as_stack(path, data)
    bad = ~np.isfinite(images)
    if bad.any():
        idx = int(np.argwhere(bad.reshape(len(images), -1).any(axis=1))[0, 0])
        what = "NaN" if np.isnan(images).any() else "Inf"
        raise InputError(f"{path}: image {idx} contains {what} values ({int(bad.sum())} pixels); "
                         "mask bad pixels with exactly 0 instead")
    return images, wcs, scales


def as_stack(path, data):
    """An image or stack as ``(N, H, W)``, refusing other shapes.

    Args:
        path: what to call the data in messages (a file name).
        data: ``(H, W)``, ``(H, W, 1)``, ``(N, H, W)`` or ``(N, H, W, 1)`` array.

    Returns:
        ``(N, H, W)`` view of ``data``.

    Raises:
        InputError: another shape, an empty stack or a side below 8 pixels.
    """
    expected = (f"expected an image of shape (H, W) or (H, W, 1), or a stack (N, H, W) or "
                f"(N, H, W, 1), at least {_MIN_SIDE} pixels a side; the networks take "
                f"({conventions.NPIX}, {conventions.NPIX}, 1) at {conventions.PIXEL_SCALE} arcsec "
                "per pixel, and other sizes are padded or cropped")
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    elif data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[0] == 0 or min(data.shape[1:]) < _MIN_SIDE:
        raise InputError(f"{path}: wrong shape {tuple(data.shape)}; {expected}")
    return data


# ---------------------------------------------------------------- geometry


def _overlap_matrix(n_in, scale_in, n_out, scale_out):
    """W[i, j]: fraction of input pixel j inside output pixel i (both centred on 0)."""
    e_in = (np.arange(n_in + 1) - n_in / 2.0) * scale_in
    e_out = (np.arange(n_out + 1) - n_out / 2.0) * scale_out
    lo = np.maximum(e_out[:-1, None], e_in[None, :-1])
    hi = np.minimum(e_out[1:, None], e_in[None, 1:])
    return np.clip(hi - lo, 0.0, None) / scale_in


def resample_flux_conserving(image, scale_in, scale_out=conventions.PIXEL_SCALE):
    """Rebin an image to a new pixel scale, conserving flux, about its centre.

    Each input pixel is treated as uniform over its area and its flux is
    shared among the output pixels it overlaps (exact area weighting). Masked
    pixels (exactly 0) do not dilute their neighbours: an output pixel is the
    flux of its unmasked area scaled up to its full area, and is masked (0)
    when less than half of it is covered by unmasked input.

    Args:
        image: ``(H, W)`` array; exact zeros are masked.
        scale_in: ``(sx, sy)`` input pixel side along columns and rows, arcsec.
        scale_out: output pixel side, arcsec.

    Returns:
        ``(out, (sx_ratio, sy_ratio))``: the ``(H', W')`` float64 image with
        ``H' = round(H * sy / scale_out)`` and the same centre, whose sum
        equals the input's when nothing is masked; and ``n_out / n_in``
        per axis.
    """
    image = np.asarray(image, dtype=np.float64)
    sx, sy = scale_in
    n_y, n_x = image.shape
    m_y = max(1, int(round(n_y * sy / scale_out)))
    m_x = max(1, int(round(n_x * sx / scale_out)))
    w_y = _overlap_matrix(n_y, sy, m_y, scale_out)
    w_x = _overlap_matrix(n_x, sx, m_x, scale_out)
    unmasked = (image != 0).astype(np.float64)
    flux = w_y @ image @ w_x.T
    covered = w_y @ unmasked @ w_x.T
    total = w_y @ np.ones_like(image) @ w_x.T
    frac = np.divide(covered, total, out=np.zeros_like(covered), where=total > 0)
    out = np.where(frac >= 0.5, flux / np.where(frac > 0, frac, 1.0), 0.0)
    return out, (m_x / n_x, m_y / n_y)


def fit_to_grid(image, npix=conventions.NPIX):
    """Zero-pad or centrally crop an image to ``(npix, npix)``.

    Padding is masked data (exact zeros, docs/design.md §0), which the bias-removal
    layer ignores (docs/design.md §6.1).

    Args:
        image: ``(H, W)`` array.
        npix: output side, pixels.

    Returns:
        ``(out, (start_col, start_row))``: the ``(npix, npix)`` image, and
        the input pixel index at output pixel 0 along each axis (negative
        when padded).
    """
    image = np.asarray(image)
    out = np.zeros((npix, npix), dtype=image.dtype)
    starts = []
    for axis in (1, 0):
        n = image.shape[axis]
        starts.append((n - npix) // 2)
    start_x, start_y = starts
    src_y = slice(max(start_y, 0), min(start_y + npix, image.shape[0]))
    src_x = slice(max(start_x, 0), min(start_x + npix, image.shape[1]))
    dst_y = slice(src_y.start - start_y, src_y.stop - start_y)
    dst_x = slice(src_x.start - start_x, src_x.stop - start_x)
    out[dst_y, dst_x] = image[src_y, src_x]
    return out, (start_x, start_y)


def normalise_peak(image, name="image"):
    """Scale an image so its arc peak is about 1 (docs/design.md §5.7).

    The peak is the maximum, over unmasked pixels, of the 3x3 median-filtered
    image, so isolated hot pixels and cosmic rays do not set the scale.
    Masked pixels (exact zeros) stay 0.

    Args:
        image: ``(H, W)`` array; exact zeros are masked.
        name: what to call the image in error messages.

    Raises:
        InputError: all pixels masked, a constant image, or no positive
            signal.
    """
    image = np.asarray(image, dtype=np.float64)
    unmasked = image != 0
    if not unmasked.any():
        raise InputError(f"{name}: every pixel is masked (exactly 0); nothing to measure")
    values = image[unmasked]
    if values.max() == values.min():
        raise InputError(f"{name}: the image is constant ({values.max():g}); it holds no arcs")
    peak = np.max(ndimage.median_filter(image, size=3, mode="nearest")[unmasked])
    if not peak > 0:
        peak = values.max()
    if not peak > 0:
        raise InputError(f"{name}: no positive pixel; the arcs must be positive")
    return np.where(unmasked, image / peak, 0.0)




def iter_prepared(path, npix=conventions.NPIX, pixel_scale=None):
    """Read one file and yield its network-ready :class:`PreparedImage` items one by one.

    The file's pixels are read at once (a stack is one array), but prepared
    images are made as they are consumed, so a caller holding a batch holds
    only that batch of network inputs.

    Args:
        path: ``.npy`` or FITS file (see :func:`read_image_file`).
        npix: network input side, pixels.
        pixel_scale: optional pixel side of the file, arcsec.

    Yields:
        :class:`PreparedImage`, in the file's stack order.
    """
    images, wcs, scales = read_image_file(path, pixel_scale)
    yield from iter_prepared_array(images, scales, npix, wcs=wcs, source=str(path))


def iter_prepared_array(images, scales=(conventions.PIXEL_SCALE,) * 2, npix=conventions.NPIX,
                        wcs=None, source="array"):
    """Prepare a stack of images already in memory, as :func:`iter_prepared` does a file's.

    Args:
        images: ``(N, H, W)`` finite array, image units, masked pixels exactly 0.
        scales: ``(sx, sy)`` arcsec per pixel along columns and rows.
        npix: network input side, pixels.
        wcs: celestial ``astropy.wcs.WCS`` of the images, or None.
        source: what to call the images in messages and in ``PreparedImage.file``.

    Yields:
        :class:`PreparedImage`, in stack order.

    Raises:
        InputError: an all-masked or constant image.
    """
    images = np.asarray(images, dtype=np.float64)
    n_in_y, n_in_x = images.shape[1:]
    for i, image in enumerate(images):
        name = f"{source}[{i}]" if len(images) > 1 else str(source)
        normalise_peak(image, name)  # refuses all-masked and constant input early
        ratio = (1.0, 1.0)
        if not np.allclose(scales, conventions.PIXEL_SCALE, rtol=_PIXEL_SCALE_RTOL, atol=0):
            image, ratio = resample_flux_conserving(image, scales)
        n_y, n_x = image.shape
        fitted, (start_x, start_y) = fit_to_grid(image, npix)
        fitted = normalise_peak(fitted, name)
        # offset of the prepared centre from the resampled centre, 0.04" pixels
        d_x = start_x + (npix - 1) / 2.0 - (n_x - 1) / 2.0
        d_y = start_y + (npix - 1) / 2.0 - (n_y - 1) / 2.0
        centre = ((n_in_x - 1) / 2.0 + d_x / ratio[0], (n_in_y - 1) / 2.0 + d_y / ratio[1])
        yield PreparedImage(name=name, file=str(source), index=i,
                            image=fitted.astype(np.float32)[..., None],
                            centre_pix=centre, scale_arcsec=tuple(scales), wcs=wcs)


def prepare_images(path, npix=conventions.NPIX, pixel_scale=None):
    """Read one file and return its network-ready :class:`PreparedImage` list.

    Args:
        path: ``.npy`` or FITS file (see :func:`read_image_file`).
        npix: network input side, pixels.
        pixel_scale: optional pixel side of the file, arcsec.
    """
    return list(iter_prepared(path, npix, pixel_scale))


# ---------------------------------------------------------------- prediction
