"""Lens-light removal by independent component analysis of two bands (docs/design.md §8.4).

The paper unmixes two HST filters (F475X and F600LP) into two independent
components and feeds the arc component to the networks (docs/design.md §8.4 [P]). The
details are our decisions (docs/design.md §8.4 [R]):

1. the data matrix is ``(N_unmasked, 2)``, one column per band, built from
   the unmasked pixels only (exact zeros in either band, or ``mask``), so
   masked pixels play no part in the unmixing;
2. ``sklearn.decomposition.FastICA(n_components=2, whiten="unit-variance",
   random_state=0)`` gives the sources ``S`` and the mixing matrix ``A``
   (``X = S A^T + mean``);
3. the arc component is the **bluer** one, i.e. the largest ratio
   ``|A[blue, k]| / |A[red, k]|`` (a ratio, so it does not depend on either
   band's flux unit). When the two ratios are within ``colour_margin`` of each
   other the colour is uninformative and the component **less concentrated at
   the lens centre** is taken instead;
4. the arc sign makes ``A[blue, k]`` positive (arcs add blue flux), the
   component's median over unmasked pixels (the sky, since arcs cover few
   pixels) is subtracted, and the result is scaled so that the arc peak, the
   maximum of the 3x3 median-filtered map, is 1 (docs/design.md §5.7);
5. masked pixels are set to exactly 0 and the map is padded or cropped about
   its centre to the network's ``(192, 192, 1)`` float32 contract (docs/design.md §0).

This module is numpy + scikit-learn + scipy only: it does not import Keras,
TensorFlow or ``ensai_tf.data``.
"""

import dataclasses
import warnings

import numpy as np
from scipy import ndimage
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess.images import fit_to_grid

__all__ = [
    "IcaResult",
    "unmix_two_bands",
    "component_concentration",
    "to_network_input",
    "arc_correlation",
]

MIN_UNMASKED = 64
"""Fewest unmasked pixels FastICA is run on: fewer cannot pin down a 2x2 mixing."""

_TINY = float(np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True)
class IcaResult:
    """The outcome of :func:`unmix_two_bands`.

    Attributes:
        arc: ``(H, W)`` float32 arc component, sky level about 0, arc peak
            about 1 (dimensionless), masked pixels exactly 0 and no other
            pixel exactly 0.
        other: ``(H, W)`` float32 second component (mostly lens light), same
            sign and scale rules as ``arc`` but not peak-normalised to the
            arcs (its own 3x3-median peak is 1); masked pixels 0.
        components: ``(2, H, W)`` float64 raw FastICA sources (unit variance
            over unmasked pixels, zero elsewhere), in sklearn's order.
        mixing: ``(2, 2)`` float64 mixing matrix, ``mixing[band, component]``
            with band 0 = blue, 1 = red, in input flux units per unit source.
        arc_index: which column of ``mixing`` / row of ``components`` is the
            arc component.
        mask: ``(H, W)`` bool, True where a pixel was masked.
        rule: ``"colour"`` or ``"concentration"``, the rule that chose the arc.
        colour: ``(2,)`` ``|mixing[0, k]| / |mixing[1, k]|`` per component.
        concentration: ``(2,)`` per component, the share of its absolute
            signal within ``centre_radius`` of the lens centre.
    """

    arc: np.ndarray
    other: np.ndarray
    components: np.ndarray
    mixing: np.ndarray
    arc_index: int
    mask: np.ndarray
    rule: str
    colour: np.ndarray
    concentration: np.ndarray


def _check_bands(blue, red, mask, name):
    blue = np.asarray(blue, dtype=np.float64)
    red = np.asarray(red, dtype=np.float64)
    if blue.ndim != 2 or red.ndim != 2:
        raise InputError(f"{name}: the two bands must be 2-D images, got shapes "
                         f"{blue.shape} and {red.shape}")
    if blue.shape != red.shape:
        raise InputError(f"{name}: the two bands are not aligned: shapes {blue.shape} (blue) "
                         f"and {red.shape} (red) differ; put them on one pixel grid first")
    if not (np.all(np.isfinite(blue)) and np.all(np.isfinite(red))):
        raise InputError(f"{name}: the bands contain NaN or Inf; mask bad pixels with exactly 0")
    masked = (blue == 0) | (red == 0)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != blue.shape:
            raise InputError(f"{name}: the mask has shape {mask.shape}, the bands {blue.shape}")
        masked = masked | mask
    return blue, red, masked


def component_concentration(component, masked, centre_pix=None, radius_pix=7.5):
    """Share of a component's absolute signal near the lens centre.

    Args:
        component: ``(H, W)`` source map (any unit; its median over unmasked
            pixels is taken as its zero level).
        masked: ``(H, W)`` bool, True where masked (ignored).
        centre_pix: ``(col, row)`` of the lens centre, pixels; default the
            image centre ``((W - 1) / 2, (H - 1) / 2)``.
        radius_pix: radius of the central disc, pixels (default 7.5, i.e.
            0.3 arcsec at 0.04 arcsec per pixel).

    Returns:
        float in [0, 1]: ``sum(|c - median| in disc) / sum(|c - median|)``
        over unmasked pixels.
    """
    component = np.asarray(component, dtype=np.float64)
    h, w = component.shape
    cx, cy = ((w - 1) / 2.0, (h - 1) / 2.0) if centre_pix is None else centre_pix
    rows, cols = np.mgrid[0:h, 0:w]
    disc = (cols - cx) ** 2 + (rows - cy) ** 2 <= radius_pix ** 2
    keep = ~masked
    level = np.median(component[keep])
    signal = np.abs(component - level)
    total = signal[keep].sum()
    return float(signal[keep & disc].sum() / total) if total > 0 else 0.0


def _peak_normalise(image, keep):
    """Scale so the 3x3-median-filtered maximum over unmasked pixels is 1."""
    peak = np.max(ndimage.median_filter(np.where(keep, image, 0.0), size=3,
                                        mode="nearest")[keep])
    if not peak > 0:
        peak = np.max(image[keep])
    return image / peak if peak > 0 else image


def _finish(component, keep, sign):
    """Sign-fix, zero the sky, peak-normalise, mask: a float32 map."""
    out = sign * component
    out = out - np.median(out[keep])
    out = _peak_normalise(out, keep)
    # masked = exactly 0 (docs/design.md §0); an unmasked pixel that happens to be 0
    # would read as masked to the bias-removal layer, so nudge it off zero
    out = np.where(keep & (out == 0), _TINY, out)
    return np.where(keep, out, 0.0).astype(np.float32)


def unmix_two_bands(blue, red, mask=None, centre_pix=None, colour_margin=1.2,
                    centre_radius_pix=7.5, random_state=0, max_iter=2000, tol=1e-5,
                    name="two-band image"):
    """Separate arcs from lens light with FastICA over two aligned bands.

    Args:
        blue: ``(H, W)`` image in the bluer filter (any flux unit), on the
            same pixel grid and PSF as ``red``; exact zeros are masked.
        red: ``(H, W)`` image in the redder filter; exact zeros are masked.
        mask: optional ``(H, W)`` bool, True where masked (cosmic rays, the
            lens core, docs/design.md §8.4 step 2); combined with the zeros of either
            band.
        centre_pix: ``(col, row)`` of the lens, pixels, for the concentration
            rule; default the image centre.
        colour_margin: the colour rule is used when the bluer component's
            blue/red weight ratio exceeds the other's by at least this factor
            (> 1); otherwise the concentration rule decides.
        centre_radius_pix: radius of the central disc of the concentration
            rule, pixels.
        random_state: FastICA seed (docs/design.md §8.4 [R]: 0).
        max_iter, tol: FastICA iteration cap and tolerance.
        name: what to call the input in error messages (e.g. the file names).

    Returns:
        :class:`IcaResult`.

    Raises:
        InputError: shapes differ, non-finite values, fewer than
            :data:`MIN_UNMASKED` unmasked pixels, a band that is constant over
            the unmasked pixels, or bands that are exact multiples of each
            other (one component only).
    """
    blue, red, masked = _check_bands(blue, red, mask, name)
    keep = ~masked
    n_keep = int(keep.sum())
    if n_keep == 0:
        raise InputError(f"{name}: every pixel is masked; the masks cover the whole cutout")
    if n_keep < MIN_UNMASKED:
        raise InputError(f"{name}: only {n_keep} unmasked pixels (need >= {MIN_UNMASKED}); "
                         "the masks cover almost the whole cutout")
    data = np.stack([blue[keep], red[keep]], axis=1)
    spread = data.std(axis=0)
    if np.any(spread == 0):
        band = "blue" if spread[0] == 0 else "red"
        raise InputError(f"{name}: the {band} band is constant over the unmasked pixels")
    # scale each band to unit spread so FastICA's tolerance means the same for any flux unit
    scaled = (data - data.mean(axis=0)) / spread
    if abs(np.corrcoef(scaled.T)[0, 1]) > 1.0 - 1e-9:
        raise InputError(f"{name}: the two bands are proportional to each other, so they hold "
                         "one component only and ICA cannot separate arcs from lens light")
    # [R] docs/design.md §8.4: FastICA(n_components=2, whiten="unit-variance", random_state=0)
    ica = FastICA(n_components=2, whiten="unit-variance", random_state=random_state,
                  max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sources = ica.fit_transform(scaled)
    mixing = ica.mixing_ * spread[:, None]
    components = np.zeros((2,) + blue.shape)
    components[:, keep] = sources.T

    colour = np.abs(mixing[0]) / np.maximum(np.abs(mixing[1]), 1e-300)
    concentration = np.array([component_concentration(components[k], masked, centre_pix,
                                                      centre_radius_pix) for k in range(2)])
    bluer = int(np.argmax(colour))
    if colour[bluer] >= colour_margin * colour[1 - bluer]:
        arc_index, rule = bluer, "colour"
    else:
        arc_index, rule = int(np.argmin(concentration)), "concentration"
    other_index = 1 - arc_index
    # arcs add blue flux: the arc column's blue weight is made positive
    arc_sign = 1.0 if mixing[0, arc_index] >= 0 else -1.0
    # lens light adds red flux
    other_sign = 1.0 if mixing[1, other_index] >= 0 else -1.0
    return IcaResult(
        arc=_finish(components[arc_index], keep, arc_sign),
        other=_finish(components[other_index], keep, other_sign),
        components=components, mixing=mixing, arc_index=arc_index, mask=masked, rule=rule,
        colour=colour, concentration=concentration)


def to_network_input(arc, npix=conventions.NPIX):
    """Pad or crop an arc map about its centre to the network input contract.

    Args:
        arc: ``(H, W)`` arc map on 0.04 arcsec pixels, peak about 1,
            masked pixels exactly 0 (e.g. :attr:`IcaResult.arc`).
        npix: network input side, pixels.

    Returns:
        ``(npix, npix, 1)`` float32; padding is masked (exactly 0, docs/design.md §0).
        With ``H - npix`` odd the extra row is cut from (or added at) the
        top, as :func:`ensai_tf.preprocess.images.fit_to_grid` does.
    """
    arc = np.asarray(arc, dtype=np.float32)
    if arc.ndim != 2:
        raise InputError(f"the arc map must be 2-D, got shape {arc.shape}")
    out, _ = fit_to_grid(arc, npix)
    return out.astype(np.float32)[..., None]


def arc_correlation(recovered, truth, mask=None):
    """Pearson correlation of a recovered arc map with the true arcs.

    Args:
        recovered: ``(H, W)`` recovered arc map (any scale).
        truth: ``(H, W)`` true arc image (any scale).
        mask: optional ``(H, W)`` bool, True where masked; those pixels and
            the exact zeros of ``recovered`` are left out.

    Returns:
        float in [-1, 1]; scale- and offset-free.
    """
    recovered = np.asarray(recovered, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    keep = recovered != 0
    if mask is not None:
        keep &= ~np.asarray(mask, dtype=bool)
    a = recovered[keep] - recovered[keep].mean()
    b = truth[keep] - truth[keep].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0
