"""Contact sheets of lens images, with optional curves and masks (matplotlib, Agg).

Images are drawn in the sky frame of docs/design.md §0 with ``origin="lower"`` and an
extent in arcsec, so **x (column) points right and +y (row) points up** on
the page; the axis labels say so. Nothing here touches pyplot's global state:
figures are :class:`matplotlib.figure.Figure` objects rendered with
:class:`matplotlib.backends.backend_agg.FigureCanvasAgg`, so this is safe in
tests, threads and headless runs.
"""

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ensai_tf import atomic
from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = ["CURVE_STYLES", "image_extent", "contact_sheet"]

CURVE_STYLES = {
    "critical": {"color": "tab:cyan", "linewidth": 0.8},
    "caustic": {"color": "tab:orange", "linewidth": 0.8},
    "cut": {"color": "tab:green", "linewidth": 0.6, "linestyle": "--"},
}
"""Line style per curve name; other names are drawn in white."""


def image_extent(npix, pixel_scale=conventions.PIXEL_SCALE):
    """``imshow`` extent of an ``npix``-pixel image with ``origin="lower"``.

    Args:
        npix: image side, pixels.
        pixel_scale: pixel side, arcsec.

    Returns:
        ``(left, right, bottom, top)``, arcsec: pixel ``j`` spans
        ``(j - (npix - 1)/2) * pixel_scale +- pixel_scale / 2`` (docs/design.md §0).
    """
    half = 0.5 * npix * pixel_scale
    return (-half, half, -half, half)


def _as_images(images):
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[0] == 0 or images.shape[1] != images.shape[2]:
        raise InputError(f"contact_sheet: images must be (N, n, n) or (N, n, n, 1) square "
                         f"images, got shape {images.shape}")
    return images


def _curve_xy(points, units, npix, pixel_scale):
    """(K, 2) curve points in arcsec, from arcsec or (column, row) pixels."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if units == "pixel":
        return (points - (npix - 1) / 2.0) * pixel_scale
    return points


def _label(params):
    names = ("θE", "ex", "ey", "x", "y")
    return " ".join(f"{n}={v:.2f}" for n, v in zip(names, np.asarray(params, np.float64)))


def contact_sheet(images, path, params=None, curves=None, titles=None, ncols=8,
                  pixel_scale=conventions.PIXEL_SCALE, masks=None, curve_units="arcsec",
                  panel_inches=2.0, dpi=100, vmin=None, vmax=None):
    """Write a grid of images to a PNG (or any format matplotlib infers from ``path``).

    Args:
        images: ``(N, n, n)`` or ``(N, n, n, 1)`` array, ``img[row, col]``
            with x = column and y = row (docs/design.md §0); drawn with
            ``origin="lower"`` so +y is up.
        path: output file path (str or path-like).
        params: optional ``(N, 5)`` labels (theta_E arcsec, e_x, e_y, x_L
            arcsec, y_L arcsec) printed under each panel and marked with a
            ``+`` at the lens centre.
        curves: optional list (one entry per image, or None) of dicts
            ``name -> (K, 2)`` polylines, e.g. ``{"critical": ..., "caustic":
            ...}``, in ``curve_units``; drawn over the image with
            :data:`CURVE_STYLES`.
        titles: optional list of N strings, used instead of the labels.
        ncols: panels per row.
        pixel_scale: pixel side, arcsec.
        masks: optional ``(N, n, n)`` (or ``(N, n, n, 1)``) array, non-zero
            or True where a pixel is masked; masked pixels are tinted red.
        curve_units: ``"arcsec"`` (sky frame, x = +column, y = +row) or
            ``"pixel"`` ((column, row) pixel indices, converted with docs/design.md §0's
            centres ``(j - (n - 1)/2) * pixel_scale``).
        panel_inches: size of one panel, inches.
        dpi: output resolution, dots per inch.
        vmin, vmax: colour limits; default per image (min, max).

    Returns:
        The path written, as a str.

    Raises:
        InputError: images of the wrong shape, or params/curves/titles/masks
            whose length differs from the number of images.
    """
    images = _as_images(images)
    num, npix = images.shape[0], images.shape[1]
    ncols = max(1, min(int(ncols), num))
    nrows = math.ceil(num / ncols)
    if curve_units not in ("arcsec", "pixel"):
        raise InputError(f"contact_sheet: curve_units must be 'arcsec' or 'pixel', "
                         f"got {curve_units!r}")
    if params is not None:
        params = np.asarray(params, dtype=np.float64).reshape(-1, conventions.NUM_PARAMS)
    if masks is not None:
        masks = np.asarray(masks)
        masks = masks[..., 0] if masks.ndim == 4 else masks
        if masks.shape != images.shape:
            raise InputError(f"contact_sheet: masks shape {masks.shape} differs from the images' "
                             f"{images.shape}")
    for name, value in (("params", params), ("curves", curves), ("titles", titles)):
        if value is not None and len(value) != num:
            raise InputError(f"contact_sheet: {name} has {len(value)} entries for {num} images")

    extent = image_extent(npix, pixel_scale)
    fig = Figure(figsize=(panel_inches * ncols, panel_inches * nrows + 0.4), dpi=dpi)
    FigureCanvasAgg(fig)
    for i in range(num):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(images[i], origin="lower", extent=extent, cmap="magma",
                  interpolation="nearest", vmin=vmin, vmax=vmax)
        if masks is not None and np.any(masks[i]):
            tint = np.zeros(images[i].shape + (4,), np.float32)
            tint[masks[i].astype(bool)] = (1.0, 0.0, 0.0, 0.6)
            ax.imshow(tint, origin="lower", extent=extent, interpolation="nearest")
        if curves is not None and curves[i] is not None:
            for name, points in curves[i].items():
                xy = _curve_xy(points, curve_units, npix, pixel_scale)
                ax.plot(xy[:, 0], xy[:, 1], **CURVE_STYLES.get(name, {"color": "white",
                                                                     "linewidth": 0.6}))
        if params is not None:
            ax.plot(params[i, conventions.Param.X_L], params[i, conventions.Param.Y_L], "+",
                    color="white", markersize=5)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
        label = titles[i] if titles is not None else (_label(params[i]) if params is not None
                                                      else f"#{i}")
        ax.set_title(label, fontsize=5)
    fig.supxlabel("x (arcsec, +column, right)", fontsize=7)
    fig.supylabel("y (arcsec, +row, up)", fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    return str(path)
