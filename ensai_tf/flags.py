"""Quality flags: when a prediction should not be trusted, and why.

The networks were trained on one kind of image (docs/design.md §3-§5): a
lensed source, no lens light, inside a 7.68 arcsec field of 0.04 arcsec
pixels, with noise of 1-10% of the arc peak. :func:`image_statistics`
measures, for each prepared image (:class:`ensai_tf.preprocess.images.PreparedImage`)
and its predicted parameters (docs/design.md §0), how far it is from that,
and :func:`quality_flags` turns the statistics into flag names:

``no_lens``
    nothing lensed to measure: no significant signal (blank sky, pure
    noise), or light that the predicted lens does not focus at all (a
    single unlensed galaxy).
``lens_light``
    a bright, smooth component centred on the predicted lens centre, which
    the networks never saw (docs/design.md §4); give two bands with
    ``--bands`` so ICA removes it (docs/design.md §8.4).
``small_field``
    the image covers less than the network's 7.68 arcsec field, or the arcs
    touch the edge of the cutout.
``out_of_distribution``
    the bright pixels, ray-traced back to the source plane through the
    predicted lens (:func:`ensai_tf.lensing.sie.sie_deflection`), do not
    come together: a right lens focuses the pre-images of its arcs onto a
    compact source, a wrong one does not. The score is the ratio of the
    source-plane to the image-plane spread of the bright pixels; its
    percentile against the validation split is reported.

Where the screening network ships (``trained_weights/screen``, :mod:`ensai_tf.screen`),
its probabilities join the statistics: ``no_lens`` is also raised by its
``no_lens`` label (an unlensed galaxy), ``lens_light`` by its ``lens_light``
label or by its probability times the central peak (``central_light``), and
``small_field`` by its ``edge_cut`` label (docs/design.md §8.7).

Thresholds are fitted on the fixed validation split (:func:`fit_flag_thresholds`)
and stored under ``"flags"`` in the model's ``calibration.json``; without them
the package defaults :data:`DEFAULT_THRESHOLDS`, measured for the shipped
combined network, apply.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> noise = rng.normal(size=(1, 192, 192)).astype(np.float32)
    >>> stats = image_statistics(noise, np.array([[1.0, 0.0, 0.0, 0.0, 0.0]]))
    >>> quality_flags(stats)
    [['no_lens']]
"""

import numpy as np
import tensorflow as tf
from scipy import ndimage

from ensai_tf import conventions
from ensai_tf.lensing.sie import sie_deflection
from ensai_tf.models.screen import SCREEN_LABELS
from ensai_tf.screen import load_screen, screen_scores

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FLAG_NAMES",
    "QUANTILE_BUDGET",
    "fit_flag_thresholds",
    "flag_columns",
    "flag_masks",
    "image_statistics",
    "model_thresholds",
    "ood_percentile",
    "quality_flags",
]

FLAG_NAMES = ("no_lens", "lens_light", "small_field", "out_of_distribution")
"""The quality flags, in the order they are listed in a row's ``flags``."""


BRIGHT_FRACTION = 0.2
"""A pixel is bright when its 3x3 median exceeds this fraction of the peak above the background."""
BRIGHT_SIGMA = 3.0
"""... and exceeds the background by this many noise rms."""
EDGE_WIDTH = 3
"""Width of the border of the covered field in which bright light counts as touching the edge, pixels."""
CENTRE_RADIUS = 0.3
"""Largest radius of the disc about the predicted lens centre searched for lens light, arcsec;
the disc is never wider than ``CENTRE_THETA_FRACTION`` of the predicted theta_E, so arcs stay out."""
CENTRE_THETA_FRACTION = 0.5
"""Fraction of the predicted theta_E that bounds the lens-light disc."""
PEAK_RADIUS = 4
"""Radius about the brightest pixel within which a single unlensed galaxy keeps its light, pixels."""
LENS_LIGHT_MIN_THETA_E = 0.3
"""Smallest predicted theta_E, arcsec, at which a central peak counts as lens light: a
smaller ring, blurred by the PSF, fills its own centre."""
MAX_EPSILON = 0.95
"""Largest ellipticity magnitude ray-traced (a prediction beyond the prior is clipped to it)."""

QUANTILE_BUDGET = {
    "significance": 0.001,
    "concentration": 0.0,
    "central_peak": 0.0005,
    "central_light": 0.0025,
    "edge_fraction": 0.0,
    "focus_ratio": 0.0005,
}
"""Fraction of the validation split each statistic's threshold may flag on its own.

With the screening network's labels (:data:`ensai_tf.screen.SCREEN_BUDGET`, 1.55%) they
sum to 2%; flags overlap, so the union flags fewer. The screening network catches noise, cut
arcs and lens light better than the statistics, so it has most (docs/design.md §8.7)."""

STATISTICS_CHUNK = 256
"""Images whose statistics are computed at once (bounds the memory of the float64 copies)."""

FOOTPRINT_TOLERANCE = 1.5
"""Field pixels per axis an input may lack before it counts as a small field."""

REFERENCE_QUANTILES = 201
"""Quantiles of the validation focus ratios kept for the out-of-distribution percentile."""

DEFAULT_THRESHOLDS = {
    "significance": 3.117,
    "concentration": 1.0,
    "central_peak": 0.937,
    "central_light": 1.0,
    "edge_fraction": 0.11,
    "focus_ratio": 0.921,
    "focus_reference": [0.0, 0.038, 0.05, 0.059, 0.068, 0.075, 0.084, 0.096, 0.107, 0.118, 0.134,
                        0.153, 0.179, 0.212, 0.245, 0.286, 0.339, 0.397, 0.525, 0.689, 0.969],
    "fitted_on": "package defaults: the shipped combined network, 1000 validation lenses",
}
"""Thresholds used when a model's ``calibration.json`` has no ``"flags"`` entry.

Measured with :func:`fit_flag_thresholds` for the shipped combined network on
the first 1000 lenses of the fixed validation split; without a reference the
out-of-distribution percentile is not reported (NaN)."""


def _as_batch(images):
    """``(N, npix, npix)`` float64 view of images given with or without a channel axis."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4:
        images = images[..., 0]
    if images.ndim == 2:
        images = images[None]
    return images


def _background(images, unmasked):
    """Per-image median and robust rms (1.4826 x MAD) of the unmasked pixels, image units."""
    values = np.where(unmasked, images, np.nan)
    bg = np.nanmedian(values, axis=(1, 2))
    rms = 1.4826 * np.nanmedian(np.abs(values - bg[:, None, None]), axis=(1, 2))
    spread = np.nanmax(values, axis=(1, 2)) - np.nanmin(values, axis=(1, 2))
    return bg, np.maximum(rms, 1e-6 * np.maximum(spread, 1e-30))


def _footprint_masks(footprints, shape):
    """``(N, H, W)`` booleans of the covered field and ``(N, H, W)`` of its border strip."""
    n, h, w = shape
    covered = np.zeros(shape, dtype=bool)
    border = np.zeros(shape, dtype=bool)
    for i, fp in enumerate(footprints):
        r0, r1, c0, c1 = (0, h, 0, w) if fp is None else fp
        covered[i, r0:r1, c0:c1] = True
        border[i, r0:r1, c0:c1] = True
        border[i, r0 + EDGE_WIDTH:r1 - EDGE_WIDTH, c0 + EDGE_WIDTH:c1 - EDGE_WIDTH] = False
    return covered, border


def _weighted_spread(x, y, w):
    """Root of the weighted variance of positions ``(x, y)`` per image, same units as x."""
    total = np.maximum(w.sum(axis=(1, 2)), 1e-300)
    mx = (w * x).sum(axis=(1, 2)) / total
    my = (w * y).sum(axis=(1, 2)) / total
    var = (w * ((x - mx[:, None, None]) ** 2 + (y - my[:, None, None]) ** 2)).sum(axis=(1, 2))
    return np.sqrt(var / total)


def _focus_ratio(weights, params, pixel_scale):
    """Source-plane over image-plane spread of the bright light under the predicted SIE."""
    n, h, w = weights.shape
    xs = (np.arange(w) - (w - 1) / 2.0) * pixel_scale
    ys = (np.arange(h) - (h - 1) / 2.0) * pixel_scale
    x, y = np.meshgrid(xs, ys)
    p = np.array(params, dtype=np.float64)[:, :conventions.NUM_PARAMS]
    eps = np.hypot(p[:, 1], p[:, 2])
    p[:, 1:3] *= (np.minimum(eps, MAX_EPSILON) / np.maximum(eps, 1e-12))[:, None]
    p = p[:, :, None, None]
    alpha_x, alpha_y = sie_deflection(
        tf.constant(x[None], tf.float32), tf.constant(y[None], tf.float32),
        *(tf.constant(p[:, k], tf.float32) for k in range(conventions.NUM_PARAMS)))
    beta_x = x[None] - np.asarray(alpha_x, dtype=np.float64)
    beta_y = y[None] - np.asarray(alpha_y, dtype=np.float64)
    image_spread = _weighted_spread(np.broadcast_to(x, weights.shape),
                                    np.broadcast_to(y, weights.shape), weights)
    source_spread = _weighted_spread(beta_x, beta_y, weights)
    return source_spread / np.maximum(image_spread, 1e-12), image_spread


def _central_peak(above, peak, params, pixel_scale):
    """Brightest 3x3-median value near the predicted lens centre over the peak, dimensionless.

    The disc has radius ``min(CENTRE_RADIUS, CENTRE_THETA_FRACTION * theta_E)``
    (at least 1.5 pixels) about the predicted ``(x_L, y_L)``: lens light
    peaks there, while the arcs of the predicted lens lie near theta_E.
    """
    n, h, w = above.shape
    x, y = np.meshgrid((np.arange(w) - (w - 1) / 2.0) * pixel_scale,
                       (np.arange(h) - (h - 1) / 2.0) * pixel_scale)
    p = np.asarray(params, dtype=np.float64)
    radius = np.maximum(np.minimum(CENTRE_RADIUS, CENTRE_THETA_FRACTION * p[:, 0]),
                        1.5 * pixel_scale)[:, None, None]
    disc = np.hypot(x[None] - p[:, conventions.Param.X_L, None, None],
                    y[None] - p[:, conventions.Param.Y_L, None, None]) <= radius
    central = np.where(disc, above, -np.inf).reshape(n, -1).max(axis=1)
    return np.maximum(central, 0.0) / np.maximum(peak, 1e-30)


def _concentration(weights, above):
    """Fraction of the bright light within ``PEAK_RADIUS`` pixels of the brightest pixel."""
    n, h, w = weights.shape
    row, col = np.unravel_index(above.reshape(n, -1).argmax(axis=1), (h, w))
    rr, cc = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    near = (rr - row[:, None, None]) ** 2 + (cc - col[:, None, None]) ** 2 <= PEAK_RADIUS ** 2
    return (weights * near).sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1e-300)


def image_statistics(images, params, footprints=None, pixel_scale=conventions.PIXEL_SCALE,
                     screen=None):
    """The statistics behind the quality flags, for a batch of prepared images.

    Args:
        images: ``(N, npix, npix)`` or ``(N, npix, npix, 1)`` prepared images
            (0.04 arcsec pixels, masked pixels exactly 0, any flux units).
        params: ``(N, 5)`` predicted ``(theta_E, e_x, e_y, x_L, y_L)``;
            arcsec, -, -, arcsec, arcsec (docs/design.md §0).
        footprints: ``N`` tuples ``(row_start, row_stop, col_start,
            col_stop)``, the field pixels each input covers
            (``PreparedImage.footprint``); None for the whole field.
        pixel_scale: pixel side, arcsec.
        screen: a :class:`ensai_tf.screen.Screen` whose probabilities join
            the statistics (images of its input side only; other sides, such
            as a small test network's, are judged by the statistics alone), or None.

    Returns:
        dict of ``(N,)`` float64 arrays:

        * ``significance``: peak of the 3x3-median-filtered image above the
          background (median of the unmasked pixels), in noise rms (1.4826
          MAD of the unmasked pixels); dimensionless.
        * ``bright_pixels``: number of bright pixels (3x3 median above
          ``BRIGHT_FRACTION`` of the peak and ``BRIGHT_SIGMA`` rms).
        * ``focus_ratio``: weighted spread of the bright pixels' source-plane
          positions under the predicted SIE over their image-plane spread
          about their centroid; dimensionless, small for a focused lens.
        * ``image_spread``: that image-plane spread, arcsec.
        * ``central_peak``: brightest 3x3-median value above the
          background within ``min(CENTRE_RADIUS, CENTRE_THETA_FRACTION *
          theta_E)`` of the predicted lens centre, over the peak; dimensionless.
        * ``concentration``: fraction of the bright light within
          ``PEAK_RADIUS`` pixels of the brightest pixel; dimensionless.
        * ``edge_fraction``: fraction of the bright light (weighted by the
          brightness above the background) within ``EDGE_WIDTH`` pixels of
          the covered field's edge.
        * ``footprint_fraction``: the smaller of the covered rows and columns
          over the field side.
        * ``theta_e``: the predicted theta_E, arcsec.
        * with ``screen``: ``screen_no_lens``, ``screen_lens_light``,
          ``screen_edge_cut``, the screening network's probabilities.
    """
    images = _as_batch(images)
    n, h, w = images.shape
    footprints = [None] * n if footprints is None else list(footprints)
    if n > STATISTICS_CHUNK:
        params = np.asarray(params)
        parts = [image_statistics(images[i:i + STATISTICS_CHUNK], params[i:i + STATISTICS_CHUNK],
                                  footprints[i:i + STATISTICS_CHUNK], pixel_scale, screen)
                 for i in range(0, n, STATISTICS_CHUNK)]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    covered, border = _footprint_masks(footprints, images.shape)
    unmasked = (images != 0) & covered
    bg, rms = _background(images, unmasked)
    smooth = ndimage.median_filter(images, size=(1, 3, 3), mode="nearest")
    above = np.where(unmasked, smooth - bg[:, None, None], -np.inf)
    peak_above = np.max(above, axis=(1, 2))
    bright = (above > BRIGHT_FRACTION * peak_above[:, None, None]) \
        & (above > BRIGHT_SIGMA * rms[:, None, None])
    weights = np.where(bright, above, 0.0)
    focus, spread = _focus_ratio(weights, params, pixel_scale)
    total = np.maximum(weights.sum(axis=(1, 2)), 1e-300)
    rows = np.array([(fp[1] - fp[0]) if fp is not None else h for fp in footprints])
    cols = np.array([(fp[3] - fp[2]) if fp is not None else w for fp in footprints])
    stats = {
        "significance": peak_above / rms,
        "bright_pixels": bright.sum(axis=(1, 2)).astype(np.float64),
        "focus_ratio": focus,
        "image_spread": spread,
        "central_peak": _central_peak(np.where(unmasked, smooth - bg[:, None, None], -np.inf),
                                      peak_above, params, pixel_scale),
        "concentration": _concentration(weights, above),
        "edge_fraction": (weights * border).sum(axis=(1, 2)) / total,
        "footprint_fraction": np.minimum(rows / h, cols / w),
        "theta_e": np.asarray(params, dtype=np.float64)[:, conventions.Param.THETA_E],
    }
    if screen is not None and tuple(screen.model.input_shape[1:3]) == (h, w):
        probabilities = screen_scores(screen, images)
        for j, label in enumerate(SCREEN_LABELS):
            stats[f"screen_{label}"] = probabilities[:, j]
    return stats


def fit_flag_thresholds(stats, budget=None):
    """Thresholds of the quality flags from clean validation lenses.

    Each threshold is the quantile of its statistic over the validation
    lenses that leaves ``budget[name]`` of them on the flagged side
    (:data:`QUANTILE_BUDGET`: 2% in total), so a clean test set is flagged
    at about that rate.

    Args:
        stats: :func:`image_statistics` of clean validation lenses and the
            model's predictions for them.
        budget: dict statistic -> fraction, default :data:`QUANTILE_BUDGET`.

    Returns:
        JSON-ready dict: one threshold per statistic (as
        :data:`DEFAULT_THRESHOLDS`), ``"focus_reference"`` (quantiles of the
        validation focus ratios, for :func:`ood_percentile`) and
        ``"fitted_on"``.
    """
    budget = dict(QUANTILE_BUDGET if budget is None else budget)
    n = len(stats["significance"])
    out = {"significance": float(np.quantile(stats["significance"], budget["significance"]))}
    for name in ("concentration", "edge_fraction", "focus_ratio"):
        out[name] = float(np.quantile(stats[name], 1.0 - budget[name]))
    # lens light is judged only where the predicted ring leaves the centre empty
    wide = stats["theta_e"] >= LENS_LIGHT_MIN_THETA_E
    share = budget["central_peak"] * n / max(int(wide.sum()), 1)
    out["central_peak"] = float(np.quantile(stats["central_peak"][wide], 1.0 - min(share, 1.0))) \
        if wide.any() else 1.0
    out["central_light"] = float(np.quantile(_central_light(stats), 1.0 - budget["central_light"])
                                 ) if "screen_lens_light" in stats else 1.0  # 1: never raised
    levels = np.linspace(0.0, 1.0, REFERENCE_QUANTILES)
    out["focus_reference"] = np.quantile(stats["focus_ratio"], levels).round(6).tolist()
    out["fitted_on"] = f"validation split, {n} lenses"
    return out


def ood_percentile(stats, thresholds):
    """Percentile of each image's focus ratio among the validation lenses, 0-100.

    Args:
        stats: :func:`image_statistics` output.
        thresholds: dict of :func:`fit_flag_thresholds` (or
            :data:`DEFAULT_THRESHOLDS`).

    Returns:
        ``(N,)`` float64: the percentage of validation lenses whose focus
        ratio is lower; NaN without a reference.
    """
    reference = np.asarray(thresholds.get("focus_reference") or [], dtype=np.float64)
    focus = np.asarray(stats["focus_ratio"], dtype=np.float64)
    if reference.size < 2:
        return np.full(focus.shape, np.nan)
    levels = np.linspace(0.0, 100.0, reference.size)
    return np.interp(focus, reference, levels, left=0.0, right=100.0)


def _central_light(stats):
    """The screening network's lens-light probability times the central peak: high when both
    the network suspects lens light and the light peaks at the lens centre, whatever theta_E
    the lens networks, misled by that light, predict."""
    return np.asarray(stats["screen_lens_light"]) * np.asarray(stats["central_peak"])


def _screen_masks(stats, screen):
    """Boolean ``(N,)`` per screening label: its probability above its threshold (all False without)."""
    n = len(stats["significance"])
    if screen is None or f"screen_{SCREEN_LABELS[0]}" not in stats:
        return {label: np.zeros(n, dtype=bool) for label in SCREEN_LABELS}
    return {label: np.asarray(stats[f"screen_{label}"]) > screen.thresholds[label]
            for label in SCREEN_LABELS}


def flag_masks(stats, thresholds=None, npix=conventions.NPIX):
    """Boolean ``(N,)`` array per flag name.

    Args:
        stats: :func:`image_statistics` output.
        thresholds: dict of :func:`fit_flag_thresholds` (its ``"screen"``
            entry, from :func:`model_thresholds`, adds the screening
            network's labels); None uses :data:`DEFAULT_THRESHOLDS`.
        npix: field side, pixels.

    Returns:
        dict flag name -> ``(N,)`` bool. ``no_lens`` excludes the others'
        morphology flags (``lens_light``, ``out_of_distribution``), which
        mean nothing without a lens.
    """
    t = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    screened = _screen_masks(stats, t.get("screen"))
    no_lens = (stats["significance"] < t["significance"]) \
        | (stats["concentration"] > t["concentration"]) | screened["no_lens"]
    small = (stats["footprint_fraction"] < 1.0 - FOOTPRINT_TOLERANCE / npix) \
        | (stats["edge_fraction"] > t["edge_fraction"]) | screened["edge_cut"]
    central = (stats["central_peak"] > t["central_peak"]) \
        & (stats["theta_e"] >= LENS_LIGHT_MIN_THETA_E)
    if "screen_lens_light" in stats:
        central |= _central_light(stats) > t.get("central_light", 1.0)
    return {
        "no_lens": no_lens,
        "lens_light": ~no_lens & (central | screened["lens_light"]),
        "small_field": small,
        "out_of_distribution": ~no_lens & (stats["focus_ratio"] > t["focus_ratio"]),
    }


def quality_flags(stats, thresholds=None, npix=conventions.NPIX):
    """The flag names raised for each image.

    Args:
        stats: :func:`image_statistics` output.
        thresholds: as :func:`flag_masks`.
        npix: field side, pixels.

    Returns:
        list of ``N`` lists of names from :data:`FLAG_NAMES`, in that order
        (empty when the image looks like the training data).
    """
    masks = flag_masks(stats, thresholds, npix)
    n = len(stats["significance"])
    return [[name for name in FLAG_NAMES if masks[name][i]] for i in range(n)]


def flag_columns(prepared, params, thresholds=None):
    """The ``flags`` and ``ood_percentile`` columns of ``ensai predict``'s table.

    Args:
        prepared: sequence of :class:`ensai_tf.preprocess.images.PreparedImage`.
        params: ``(N, >=5)`` predictions (theta_E, e_x, e_y, x_L, y_L first;
            arcsec, -, -, arcsec, arcsec).
        thresholds: as :func:`flag_masks`.

    Returns:
        list of ``N`` dicts: ``"flags"`` (list of names) and
        ``"ood_percentile"`` (float, 0-100, or None without a reference).
    """
    if not len(prepared):
        return []
    images = np.stack([p.image for p in prepared])
    t = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    stats = image_statistics(images, np.asarray(params)[:, :conventions.NUM_PARAMS],
                             [p.footprint for p in prepared], screen=t.get("screen"))
    names = quality_flags(stats, t, images.shape[1])
    pct = ood_percentile(stats, t)
    return [{"flags": f, "ood_percentile": None if np.isnan(q) else round(float(q), 2)}
            for f, q in zip(names, pct)]


def model_thresholds(calibration, screen=True):
    """The flag thresholds of a model's ``calibration.json`` dict, or the package defaults.

    Args:
        calibration: the dict of :func:`ensai_tf.inference.load_calibration`, or None.
        screen: True loads the shipped screening network
            (:func:`ensai_tf.screen.load_screen`; skipped when none ships),
            False leaves it out, or a :class:`ensai_tf.screen.Screen`.

    Returns:
        a thresholds dict (:func:`fit_flag_thresholds`), with the screening
        network under ``"screen"`` (None without one).
    """
    merged = dict(DEFAULT_THRESHOLDS)
    if isinstance(calibration, dict) and isinstance(calibration.get("flags"), dict):
        merged.update(calibration["flags"])
    merged["screen"] = load_screen() if screen is True else (screen or None)
    return merged
