"""The network input of a lens at a given pixel of a larger image, reading only its field.

:func:`prepare_window` is :func:`ensai_tf.preprocess.images.prepare_field` around
a chosen pixel instead of the image's centre: it cuts a window of the input
holding the network's 7.68 arcsec field centred (to half an input pixel) on
the lens, fills the part outside the image with 0 (masked, docs/design.md §0),
and resamples, normalises and reports the footprint as ``prepare_field`` does.
Only the window's pixels are read, so a lens in a 10000 x 10000 survey tile
costs what its field costs. :func:`prepare_lens_file` does this for the one
image of a ``.npy`` or FITS file, at a pixel or sky position or at its centre.

Example:
    >>> import numpy as np
    >>> image = np.full((400, 300), 0.01); image[200:210, 150:160] = 1.0
    >>> read = lambda rows, cols: image[rows, cols]
    >>> fitted, centre, footprint = prepare_window(read, image.shape, (154.5, 204.5),
    ...                                            (0.04, 0.04))
    >>> fitted.shape, centre, footprint
    ((192, 192), (154.5, 204.5), (0, 192, 0, 192))
"""

import math

import numpy as np
from astropy.coordinates import SkyCoord

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess.images import PreparedImage, field_window, prepare_field
from ensai_tf.preprocess.reading import open_image_file

__all__ = ["prepare_lens_file", "prepare_window", "window_side"]


def window_side(scale, npix=conventions.NPIX):
    """Input pixels a window needs along one axis to hold the network's field.

    Args:
        scale: input pixel side along the axis, arcsec.
        npix: network input side, pixels.

    Returns:
        int: ``npix`` at the network's 0.04 arcsec, else the field's span
        plus two pixels of margin for the resampling.

    Example:
        >>> window_side(0.04), window_side(0.1)
        (192, 79)
    """
    side = int(math.ceil(npix * conventions.PIXEL_SCALE / scale - 1e-6))
    return side if math.isclose(scale, conventions.PIXEL_SCALE, rel_tol=1e-6) else side + 2


def _window_reader(read, shape, c0, r0):
    """``read`` of a window whose pixel (0, 0) is image pixel (c0, r0); 0 outside the image."""
    h, w = shape

    def read_window(rows, cols):
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start))
        y0, y1 = max(rows.start + r0, 0), min(rows.stop + r0, h)
        x0, x1 = max(cols.start + c0, 0), min(cols.stop + c0, w)
        if y0 < y1 and x0 < x1:
            out[y0 - r0 - rows.start:y1 - r0 - rows.start,
                x0 - c0 - cols.start:x1 - c0 - cols.start] = read(slice(y0, y1), slice(x0, x1))
        return out

    return read_window


def _covered(axis, offset, n_image, n_window):
    """``[lo, hi)``: the field pixels along one axis lying wholly inside the image."""
    ratio = axis.size / n_window  # resampled pixels per window pixel
    lo = math.ceil(-offset * ratio - 1e-9) - axis.start
    hi = math.floor((n_image - offset) * ratio + 1e-9) - axis.start
    return lo, hi


def prepare_window(read, shape, centre, scales, npix=conventions.NPIX, name="image"):
    """The network input of the field centred on one pixel of an image.

    Args:
        read: ``read(rows, cols)`` returns the image's pixels ``[rows, cols]``
            (slices inside the image) as a float64 array.
        shape: ``(H, W)`` of the image, pixels.
        centre: ``(col, row)``, 0-based image pixel of the lens; the window's
            centre is the nearest pixel centre or corner (half a pixel at most).
        scales: ``(sx, sy)`` image pixel side along columns and rows, arcsec.
        npix: network input side, pixels.
        name: what to call the image in messages.

    Returns:
        ``(fitted, centre, footprint)``: the ``(npix, npix)`` float64 input
        with peak 1; the image pixel ``(col, row)`` of its centre; and the
        field pixels ``(row_start, row_stop, col_start, col_stop)`` inside the
        image (the rest is masked).

    Raises:
        InputError: a centre outside the image, NaN/Inf in the field, or an
            all-masked or constant field.
    """
    h, w = shape
    col, row = centre
    if not (-0.5 <= col <= w - 0.5 and -0.5 <= row <= h - 0.5):
        raise InputError(f"{name}: the lens position (column {col:.1f}, row {row:.1f}) lies "
                         f"outside the image ({w} x {h} pixels)")
    window = (window_side(scales[1], npix), window_side(scales[0], npix))
    c0 = int(round(col - (window[1] - 1) / 2.0))
    r0 = int(round(row - (window[0] - 1) / 2.0))
    fitted, (cx, cy), _, fp = prepare_field(_window_reader(read, shape, c0, r0), window, scales,
                                            npix, name)
    axis_y, axis_x = field_window(window, scales, npix)
    ry, rx = _covered(axis_y, r0, h, window[0]), _covered(axis_x, c0, w, window[1])
    footprint = (max(fp[0], ry[0]), min(fp[1], ry[1]), max(fp[2], rx[0]), min(fp[3], rx[1]))
    return fitted, (cx + c0, cy + r0), footprint


def prepare_lens_file(path, label=None, pixel=None, sky=None, npix=conventions.NPIX,
                      pixel_scale=None, hdu=None):
    """The network input of the one image of a file, around a lens position or at its centre.

    Without a position this is :func:`ensai_tf.preprocess.images.iter_prepared`
    of a one-image file (the same pixels, to the bit); with one it is
    :func:`prepare_window` around it.

    Args:
        path: ``.npy`` or FITS file holding one image
            (:func:`ensai_tf.preprocess.reading.open_image_file`).
        label: the item's ``name`` and ``file`` (default ``path``).
        pixel: ``(col, row)`` 0-based file pixel of the lens, or None.
        sky: ``(ra, dec)`` ICRS degrees of the lens (needs a celestial WCS), or None.
        npix: network input side, pixels.
        pixel_scale: pixel side of the file, arcsec (overrides the WCS).
        hdu: FITS HDU to read; None takes the first image.

    Returns:
        :class:`~ensai_tf.preprocess.images.PreparedImage` (``centre_pix`` in
        file pixels).

    Raises:
        InputError: an unreadable file, a stack of several images, a sky
            position without a WCS, a position outside the image, or an
            unusable field (naming the file).
    """
    path = str(path)
    label = path if label is None else str(label)
    with open_image_file(path, pixel_scale, hdu) as (stack, wcs, scales):
        n, h, w = stack.shape
        if n != 1:
            raise InputError(f"{path}: holds {n} images; one lens per file, please")
        if sky is not None:
            if wcs is None:
                raise InputError(f"{path}: no celestial WCS, so a sky position cannot be placed; "
                                 "give the position in pixels instead")
            pixel = tuple(float(v) for v in wcs.world_to_pixel(SkyCoord(*sky, unit="deg")))
        read = lambda rows, cols: stack.read(0, rows, cols)  # noqa: E731
        if pixel is None:
            fitted, centre, _, footprint = prepare_field(read, (h, w), scales, npix, label)
        else:
            fitted, centre, footprint = prepare_window(read, (h, w), pixel, scales, npix, path)
        return PreparedImage(name=label, file=label, index=0,
                             image=fitted.astype(np.float32)[..., None], centre_pix=centre,
                             scale_arcsec=tuple(scales), wcs=wcs, footprint=footprint)
