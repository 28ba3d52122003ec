"""Turn images into network inputs: resampling, grid fitting, normalisation, in bounded memory.

The networks take ``(N, N, 1)`` float32 images of 0.04 arcsec pixels with
masked pixels exactly 0 (docs/design.md §0). :func:`iter_prepared` turns a
user file (read by :mod:`ensai_tf.preprocess.reading`) into that form:

1. refuse NaN/Inf, all-masked and constant images, naming the file;
2. resample to 0.04 arcsec flux-conservingly when the scale differs;
3. zero-pad (padding is "masked", which the bias-removal layer ignores,
   docs/design.md §6.1) or centrally crop to the network's input size;
4. normalise to an arc peak of about 1, as the training images are
   (docs/design.md §5.7): divide by the maximum of the 3x3-median-filtered
   image over unmasked pixels, so a single hot pixel or cosmic ray cannot set
   the scale.

Steps 2-3 are computed for the network's field only: just the input pixels
that overlap the central ``npix x npix`` output pixels are read and rebinned,
so the cost does not grow with the size of the file (a field spans at most
:data:`MAX_FIELD_SIDE` input pixels a side). The result equals resampling the
whole image and cropping it (:func:`resample_flux_conserving`,
:func:`fit_to_grid`), to float rounding.

Example:
    >>> import numpy as np
    >>> image = np.zeros((100, 100)); image[40:60, 40:60] = 2.0
    >>> out, start = fit_to_grid(normalise_peak(image))
    >>> out.shape, float(out.max()), start
    ((192, 192), 1.0, (-46, -46))
"""

import dataclasses

import numpy as np
from scipy import ndimage

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess.reading import check_finite, open_image_file

__all__ = [
    "MAX_FIELD_SIDE",
    "PreparedImage",
    "field_window",
    "fit_to_grid",
    "iter_prepared",
    "iter_prepared_array",
    "normalise_peak",
    "prepare_field",
    "prepare_images",
    "resample_flux_conserving",
]

MAX_FIELD_SIDE = 4096
"""Most input pixels the network's field may span along one axis (pixels of 0.0019 arcsec)."""

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
        footprint: ``(row_start, row_stop, col_start, col_stop)``, the field
            pixels the input image covers (the rest is zero padding); the
            whole field is ``(0, npix, 0, npix)``.
    """

    name: str
    file: str
    index: int
    image: np.ndarray
    centre_pix: tuple
    scale_arcsec: tuple
    wcs: object = None
    footprint: tuple = None


def _edges(index, n, scale):
    """Edges ``(index - n / 2) * scale`` of a grid of ``n`` pixels centred on 0, arcsec."""
    return (np.asarray(index, dtype=np.float64) - n / 2.0) * scale


def _overlap(e_out, e_in, scale_in):
    """W[i, j]: fraction of input pixel j (edges ``e_in``) inside output pixel i (``e_out``)."""
    lo = np.maximum(e_out[:-1, None], e_in[None, :-1])
    hi = np.minimum(e_out[1:, None], e_in[None, 1:])
    return np.clip(hi - lo, 0.0, None) / scale_in


def _overlap_matrix(n_in, scale_in, n_out, scale_out):
    """W[i, j]: fraction of input pixel j inside output pixel i (both centred on 0)."""
    return _overlap(_edges(np.arange(n_out + 1), n_out, scale_out),
                    _edges(np.arange(n_in + 1), n_in, scale_in), scale_in)


def _rebin(image, w_y, w_x):
    """Area-weighted rebinning with masked pixels (exact zeros) not diluting their neighbours."""
    unmasked = (image != 0).astype(np.float64)
    flux = w_y @ image @ w_x.T
    covered = w_y @ unmasked @ w_x.T
    total = w_y @ np.ones_like(image) @ w_x.T
    frac = np.divide(covered, total, out=np.zeros_like(covered), where=total > 0)
    return np.where(frac >= 0.5, flux / np.where(frac > 0, frac, 1.0), 0.0)


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
    out = _rebin(image, _overlap_matrix(n_y, sy, m_y, scale_out),
                 _overlap_matrix(n_x, sx, m_x, scale_out))
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


@dataclasses.dataclass(frozen=True)
class FieldAxis:
    """How one axis of an input image maps onto the network's field.

    Attributes:
        source: input pixels to read (the field and what overlaps it).
        weights: ``(k, len(source))`` rebinning weights, or None without resampling.
        target: where the rebinned pixels go in the ``npix`` field.
        size: length of the whole resampled axis, pixels of the output scale.
        start: index of the resampled axis at field pixel 0 (negative when padded).
    """

    source: slice
    weights: object
    target: slice
    size: int
    start: int


def _field_axis(n_in, scale_in, npix, scale_out, resample):
    """The :class:`FieldAxis` of an axis of ``n_in`` pixels of ``scale_in`` arcsec."""
    size = max(1, int(round(n_in * scale_in / scale_out))) if resample else n_in
    start = (size - npix) // 2
    k0, k1 = max(start, 0), min(start + npix, size)
    target = slice(k0 - start, k1 - start)
    if not resample:
        return FieldAxis(slice(k0, k1), None, target, size, start)
    e_out = _edges(np.arange(k0, k1 + 1), size, scale_out)
    e_in = _edges(np.arange(n_in + 1), n_in, scale_in)
    j0 = int(np.clip(np.searchsorted(e_in, e_out[0], side="right") - 1, 0, n_in))
    j1 = int(np.clip(np.searchsorted(e_in, e_out[-1], side="left"), j0, n_in))
    return FieldAxis(slice(j0, j1), _overlap(e_out, e_in[j0:j1 + 1], scale_in), target, size,
                     start)


def field_window(shape, scales, npix=conventions.NPIX, scale_out=conventions.PIXEL_SCALE):
    """How an image of ``shape`` and ``scales`` maps onto the network's field.

    Args:
        shape: ``(H, W)`` of the input image, pixels.
        scales: ``(sx, sy)`` input pixel side along columns and rows, arcsec.
        npix: network input side, pixels.
        scale_out: network pixel side, arcsec.

    Returns:
        ``(axis_y, axis_x)``, each a :class:`FieldAxis`.

    Raises:
        InputError: the field would span more than :data:`MAX_FIELD_SIDE` input pixels.
    """
    resample = not np.allclose(scales, scale_out, rtol=_PIXEL_SCALE_RTOL, atol=0)
    axes = (_field_axis(shape[0], scales[1], npix, scale_out, resample),
            _field_axis(shape[1], scales[0], npix, scale_out, resample))
    side = max(a.source.stop - a.source.start for a in axes)
    if side > MAX_FIELD_SIDE:
        raise InputError(f"the {npix * scale_out:.2f} arcsec field spans {side} pixels of "
                         f"{min(scales):.3g} arcsec; at most {MAX_FIELD_SIDE} are read (give a "
                         "coarser image or --pixel-scale)")
    return axes


def prepare_field(read, shape, scales, npix=conventions.NPIX, name="image", index=0):
    """The network input of one image, reading only the pixels its field needs.

    Args:
        read: ``read(rows, cols)`` returns those input pixels as a float64 array.
        shape: ``(H, W)`` of the input image, pixels.
        scales: ``(sx, sy)`` input pixel side along columns and rows, arcsec.
        npix: network input side, pixels.
        name: what to call the image in messages.
        index: the image's position in its file, for messages.

    Returns:
        ``(fitted, centre, ratio, footprint)``: the ``(npix, npix)`` float64
        input with peak 1; the input pixel coordinates ``(col, row)`` of its
        centre; the resampling ratio ``(m_x / n_x, m_y / n_y)``; and the field
        pixels ``(row_start, row_stop, col_start, col_stop)`` the input covers.

    Raises:
        InputError: NaN/Inf in the field, or an all-masked or constant field.
    """
    axis_y, axis_x = field_window(shape, scales, npix)
    window = read(axis_y.source, axis_x.source)
    check_finite(name.rsplit("[", 1)[0], index, window)
    normalise_peak(window, name)  # refuses all-masked and constant input early
    if axis_y.weights is not None:
        window = _rebin(window, axis_y.weights, axis_x.weights)
    fitted = np.zeros((npix, npix), dtype=np.float64)
    fitted[axis_y.target, axis_x.target] = window
    fitted = normalise_peak(fitted, name)
    ratio = (axis_x.size / shape[1], axis_y.size / shape[0])
    # offset of the prepared centre from the resampled centre, output pixels
    d_x = axis_x.start + (npix - 1) / 2.0 - (axis_x.size - 1) / 2.0
    d_y = axis_y.start + (npix - 1) / 2.0 - (axis_y.size - 1) / 2.0
    centre = ((shape[1] - 1) / 2.0 + d_x / ratio[0], (shape[0] - 1) / 2.0 + d_y / ratio[1])
    footprint = (axis_y.target.start, axis_y.target.stop, axis_x.target.start, axis_x.target.stop)
    return fitted, centre, ratio, footprint


def iter_prepared(path, npix=conventions.NPIX, pixel_scale=None, hdu=None):
    """Yield the network-ready :class:`PreparedImage` items of one file, one by one.

    Only the pixels of each image's field are read (the file is memory-mapped
    or read through its FITS section), and prepared images are made as they
    are consumed, so a caller holding a batch holds only that batch.

    Args:
        path: ``.npy`` or FITS file (see :func:`ensai_tf.preprocess.reading.open_image_file`).
        npix: network input side, pixels.
        pixel_scale: optional pixel side of the file, arcsec.
        hdu: FITS HDU to read; None takes the first image.

    Yields:
        :class:`PreparedImage`, in the file's stack order.
    """
    with open_image_file(path, pixel_scale, hdu) as (stack, wcs, scales):
        n = stack.shape[0]
        for i in range(n):
            name = f"{path}[{i}]" if n > 1 else str(path)
            fitted, centre, _, footprint = prepare_field(
                lambda rows, cols, i=i: stack.read(i, rows, cols), stack.shape[1:], scales,
                npix, name, i)
            yield PreparedImage(name=name, file=str(path), index=i,
                                image=fitted.astype(np.float32)[..., None],
                                centre_pix=centre, scale_arcsec=tuple(scales), wcs=wcs,
                                footprint=footprint)


def iter_prepared_array(images, scales=(conventions.PIXEL_SCALE,) * 2, npix=conventions.NPIX,
                        wcs=None, source="array"):
    """Prepare a stack of images already in memory, as :func:`iter_prepared` does a file's.

    Args:
        images: ``(N, H, W)`` array, image units, masked pixels exactly 0.
        scales: ``(sx, sy)`` arcsec per pixel along columns and rows.
        npix: network input side, pixels.
        wcs: celestial ``astropy.wcs.WCS`` of the images, or None.
        source: what to call the images in messages and in ``PreparedImage.file``.

    Yields:
        :class:`PreparedImage`, in stack order.

    Raises:
        InputError: NaN/Inf, or an all-masked or constant image.
    """
    images = np.asarray(images)
    for i, image in enumerate(images):
        name = f"{source}[{i}]" if len(images) > 1 else str(source)
        fitted, centre, _, footprint = prepare_field(
            lambda rows, cols, image=image: np.asarray(image[rows, cols], dtype=np.float64),
            image.shape, scales, npix, name, i)
        yield PreparedImage(name=name, file=str(source), index=i,
                            image=fitted.astype(np.float32)[..., None],
                            centre_pix=centre, scale_arcsec=tuple(scales), wcs=wcs,
                            footprint=footprint)


def prepare_images(path, npix=conventions.NPIX, pixel_scale=None):
    """Read one file and return its network-ready :class:`PreparedImage` list.

    Args:
        path: ``.npy`` or FITS file (see :func:`iter_prepared`).
        npix: network input side, pixels.
        pixel_scale: optional pixel side of the file, arcsec.
    """
    return list(iter_prepared(path, npix, pixel_scale))
