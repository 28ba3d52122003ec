"""Contact sheets of lens images, with optional curves and masks (matplotlib, Agg).

Images are drawn in the sky frame of docs/design.md §0 with ``origin="lower"`` and an
extent in arcsec, so **x (column) points right and +y (row) points up** on
the page; the axis labels say so. The outer panels carry arcsec ticks, each panel
a two-line title with its parameters, and a legend under the grid names every
line, marker and tint drawn. Nothing here touches pyplot's global state:
figures are :class:`matplotlib.figure.Figure` objects rendered with
:class:`matplotlib.backends.backend_agg.FigureCanvasAgg`, so this is safe in
tests, threads and headless runs.
"""

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ensai_tf import atomic
from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = ["CURVE_LABELS", "CURVE_STYLES", "MARKER_STYLES", "image_extent", "contact_sheet"]

CURVE_STYLES = {
    "critical": {"color": "tab:cyan", "linewidth": 1.0},
    "caustic": {"color": "tab:orange", "linewidth": 1.0},
    "cut": {"color": "tab:green", "linewidth": 0.8, "linestyle": "--"},
}
"""Line style per curve name; other names are drawn in white."""

CURVE_LABELS = {"critical": "tangential critical curve", "caustic": "tangential caustic",
                "cut": "cut"}
"""Legend text per curve name; other names appear as given."""

MARKER_STYLES = {
    "lens": {"marker": "+", "color": "white", "markersize": 9, "markeredgewidth": 1.5,
             "linestyle": "none"},
    "source": {"marker": "x", "color": "tab:green", "markersize": 6, "markeredgewidth": 1.5,
               "linestyle": "none"},
}
"""Marker style of the lens centre (from ``params``) and the source centre (``sources``)."""

_MARKER_LABELS = {"lens": "lens centre (x_L, y_L)", "source": "source centre"}
_MASK_COLOUR = (1.0, 0.0, 0.0, 0.6)
_TITLE_POINTS = 8
_TICK_POINTS = 7


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
    """Two-line panel title: theta_E and the lens centre, then the ellipticity."""
    t, ex, ey, x, y = np.asarray(params, np.float64)[:conventions.NUM_PARAMS]
    return f"θE={t:.2f}″  x,y=({x:.2f}, {y:.2f})″\ne=({ex:.2f}, {ey:.2f})"


def _ticks(extent):
    """Round arcsec tick positions inside an extent (about five)."""
    half = extent[1]
    step = next(s for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0) if half / s <= 3)
    k = math.floor(half / step)
    return np.arange(-k, k + 1) * step


def _check_inputs(images, params, curves, titles, masks, sources, curve_units):
    """Validated ``(params, masks, sources)``; raises InputError for bad shapes or lengths."""
    num = images.shape[0]
    if curve_units not in ("arcsec", "pixel"):
        raise InputError(f"contact_sheet: curve_units must be 'arcsec' or 'pixel', "
                         f"got {curve_units!r}")
    if params is not None:
        params = np.asarray(params, dtype=np.float64).reshape(-1, conventions.NUM_PARAMS)
    if sources is not None:
        sources = np.asarray(sources, dtype=np.float64).reshape(-1, 2)
    if masks is not None:
        masks = np.asarray(masks)
        masks = masks[..., 0] if masks.ndim == 4 else masks
        if masks.shape != images.shape:
            raise InputError(f"contact_sheet: masks shape {masks.shape} differs from the images' "
                             f"{images.shape}")
    for name, value in (("params", params), ("curves", curves), ("titles", titles),
                        ("sources", sources)):
        if value is not None and len(value) != num:
            raise InputError(f"contact_sheet: {name} has {len(value)} entries for {num} images")
    return params, masks, sources


def _draw_panel(ax, i, images, extent, *, params, curves, masks, sources, curve_units,
                pixel_scale, vmin, vmax):
    """One image with its mask tint, curves and markers; returns the legend entries drawn."""
    npix = images.shape[1]
    shown = {}
    ax.imshow(images[i], origin="lower", extent=extent, cmap="magma",
              interpolation="nearest", vmin=vmin, vmax=vmax)
    if masks is not None and np.any(masks[i]):
        tint = np.zeros(images[i].shape + (4,), np.float32)
        tint[masks[i].astype(bool)] = _MASK_COLOUR
        ax.imshow(tint, origin="lower", extent=extent, interpolation="nearest")
        shown["mask"] = Patch(color=_MASK_COLOUR, label="masked pixels")
    if curves is not None and curves[i] is not None:
        for name, points in curves[i].items():
            xy = _curve_xy(points, curve_units, npix, pixel_scale)
            style = CURVE_STYLES.get(name, {"color": "white", "linewidth": 0.8})
            ax.plot(xy[:, 0], xy[:, 1], **style)
            shown[name] = Line2D([], [], label=CURVE_LABELS.get(name, name), **style)
    for key, xy in (("lens", None if params is None else
                     params[i, [conventions.Param.X_L, conventions.Param.Y_L]]),
                    ("source", None if sources is None else sources[i])):
        if xy is not None:
            ax.plot(xy[0], xy[1], **MARKER_STYLES[key])
            shown[key] = Line2D([], [], label=_MARKER_LABELS[key], **MARKER_STYLES[key])
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    return shown


def _legend(fig, entries, ncols):
    """The legend under the grid, on a dark background so white markers show."""
    handles = list(entries.values())
    if not handles:
        return
    legend = fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), ncols),
                        fontsize=_TITLE_POINTS + 1, frameon=True, facecolor="0.25",
                        framealpha=1.0, bbox_to_anchor=(0.5, 0.0))
    for text in legend.get_texts():
        text.set_color("white")


def contact_sheet(images, path, params=None, curves=None, titles=None, ncols=8,
                  pixel_scale=conventions.PIXEL_SCALE, masks=None, curve_units="arcsec",
                  panel_inches=2.4, dpi=110, vmin=None, vmax=None, sources=None):
    """Write a grid of images to a PNG (or any format matplotlib infers from ``path``).

    Every panel has a title (two lines of parameters, or ``titles``), the
    panels of the left column and bottom row arcsec ticks, and a legend under
    the grid names what is drawn: the curves, the lens and source centres and
    the mask tint.

    Args:
        images: ``(N, n, n)`` or ``(N, n, n, 1)`` array, ``img[row, col]``
            with x = column and y = row (docs/design.md §0); drawn with
            ``origin="lower"`` so +y is up.
        path: output file path (str or path-like).
        params: optional ``(N, 5)`` labels (theta_E arcsec, e_x, e_y, x_L
            arcsec, y_L arcsec) printed above each panel and marked with a
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
        sources: optional ``(N, 2)`` source centres (x_s, y_s), arcsec, in the
            frame of the image, marked with an ``x``.

    Returns:
        The path written, as a str.

    Raises:
        InputError: images of the wrong shape, or params/curves/titles/masks/
            sources whose length differs from the number of images.
    """
    images = _as_images(images)
    num = images.shape[0]
    ncols = max(1, min(int(ncols), num))
    nrows = math.ceil(num / ncols)
    params, masks, sources = _check_inputs(images, params, curves, titles, masks, sources,
                                           curve_units)
    extent = image_extent(images.shape[1], pixel_scale)
    ticks = _ticks(extent)
    fig = Figure(figsize=(panel_inches * ncols + 0.6, (panel_inches + 0.35) * nrows + 0.9),
                 dpi=dpi)
    FigureCanvasAgg(fig)
    entries = {}
    for i in range(num):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        entries.update(_draw_panel(ax, i, images, extent, params=params, curves=curves,
                                   masks=masks, sources=sources, curve_units=curve_units,
                                   pixel_scale=pixel_scale, vmin=vmin, vmax=vmax))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.tick_params(labelsize=_TICK_POINTS, length=2.5, direction="in", color="0.8",
                       labelbottom=i >= num - ncols, labelleft=i % ncols == 0)
        label = titles[i] if titles is not None else (_label(params[i]) if params is not None
                                                      else f"#{i}")
        ax.set_title(label, fontsize=_TITLE_POINTS, linespacing=1.1, pad=3)
    height = fig.get_figheight()
    legend_inches = 0.45 if entries else 0.0
    fig.supxlabel("x (arcsec, +column, right)", fontsize=_TITLE_POINTS + 1,
                  y=(legend_inches + 0.02) / height, va="bottom")
    fig.supylabel("y (arcsec, +row, up)", fontsize=_TITLE_POINTS + 1)
    fig.tight_layout(rect=(0, (legend_inches + 0.22) / height, 1, 1))
    _legend(fig, entries, ncols)
    atomic.save_figure(fig, path)
    return str(path)
