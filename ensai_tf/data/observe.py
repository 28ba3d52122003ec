"""Observational effects of docs/design.md §5 as batched, graph-safe TF ops.

Each effect is a pair (docs/design.md §11 rule 3, the Keras ``RandomGaussianBlur``
split):

- ``sample_<effect>(seeds, ..., cfg) -> draws``: a dict of ``(B, ...)``
  tensors, a pure function of the per-example seeds (and, for the shift and
  the masks, of the clean arcs). Every effect derives its own stream as
  ``tf.random.fold_in(seed_i, Effect.<EFFECT>)`` and draws with
  ``tf.random.stateless_*`` one example at a time (``tf.map_fn``; vectorised
  maps fall back to the same loop for stateless ops), so example ``i``'s
  draws never depend on the batch it sits in.
- ``apply_<effect>(images, draws, ...) -> images``: deterministic given the
  draws; per-example on/off through ``tf.where`` on a drawn ``apply_<effect>``
  flag, never Python branching on tensor values.

Per-pixel randomness that depends on the image (Poisson) or that would be
bulky to store (Gaussian noise fields) is carried in the draws as a
per-example seed (``poisson_seed``, ``noise_seed``), so the draws stay small
enough to store beside frozen validation/test images and still fix the
result exactly.

:func:`observe` chains them in the code order of docs/design.md §5.3: shift (+labels),
lens light, PSF, Poisson, cosmic rays, Gaussian noise, normalisation, zero
bias, masks; then redraws non-finite examples (docs/design.md §9 #23). Images are
``(B, 192, 192, 1)`` float32 ``[b, row, col, 0]`` with x = column, y = row
(docs/design.md §0); labels ``(B, 5)`` in :data:`ensai_tf.conventions.PARAM_NAMES`
order, and only :func:`shift_params` changes them.
"""

import enum
import math
import os

import numpy as np
import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data import noise
from ensai_tf.errors import InputError

__all__ = [
    "Effect",
    "sample_shift",
    "apply_shift",
    "shift_params",
    "kept_flux_fraction",
    "sample_psf",
    "apply_psf",
    "psf_kernel",
    "load_psf",
    "airy_halo_psf",
    "sample_poisson",
    "apply_poisson",
    "sample_cosmic_rays",
    "apply_cosmic_rays",
    "sample_noise",
    "apply_noise",
    "noise_spectrum",
    "sample_normalise",
    "apply_normalise",
    "sample_zero_bias",
    "apply_zero_bias",
    "sample_masks",
    "mask_from_draws",
    "apply_masks",
    "observe",
]


class Effect(enum.IntEnum):
    """Index folded into an example seed to get each effect's stream."""

    SHIFT = 0
    PSF = 1
    POISSON = 2
    COSMIC_RAYS = 3
    NOISE = 4
    NORMALISE = 5
    ZERO_BIAS = 6
    MASKS = 7
    REDRAW = 8


_MOFFAT_BETA = 2.5
_AIRY_FWHM_PER_LAMBDA_D = 1.028935  # FWHM of the Airy disc, in units of lambda/D


# ----------------------------------------------------------------- helpers --

def _fold_in(seed, data):
    """``tf.random.fold_in`` with int64 data, so every derived seed is int64."""
    return tf.random.fold_in(seed, tf.cast(data, tf.int64))


def _fold(seeds, data):
    """``tf.random.fold_in(seed_i, data)`` for every row of ``(B, 2)`` seeds."""
    seeds = tf.cast(seeds, tf.int64)
    return tf.map_fn(lambda s: _fold_in(s, data), seeds,
                     fn_output_signature=tf.TensorSpec([2], tf.int64))


def _per_example(seeds, effect, n_uniform=0, n_normal=0):
    """Scalar draws of one effect, one stateless call per example.

    Returns ``(u, z, sub)``: ``(B, n_uniform)`` U[0, 1), ``(B, n_normal)``
    N(0, 1) and ``(B, 2)`` int64 sub-seeds for bulk draws, all from
    ``s_i = fold_in(seed_i, effect)`` (streams ``fold_in(s_i, 0|1|2)``).
    """
    seeds = tf.cast(seeds, tf.int64)
    n_u, n_z = max(int(n_uniform), 1), max(int(n_normal), 1)

    def draw(seed):
        s = _fold_in(seed, int(effect))
        return (tf.random.stateless_uniform([n_u], _fold_in(s, 0)),
                tf.random.stateless_normal([n_z], _fold_in(s, 1)),
                _fold_in(s, 2))

    u, z, sub = tf.map_fn(draw, seeds, fn_output_signature=(
        tf.TensorSpec([n_u], tf.float32), tf.TensorSpec([n_z], tf.float32),
        tf.TensorSpec([2], tf.int64)))
    return u[:, :n_uniform], z[:, :n_normal], sub


def _lerp(u, bounds):
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _randint(u, bounds):
    """Integers uniform on ``{lo, ..., hi}`` (inclusive) from U[0, 1) draws."""
    lo, hi = int(bounds[0]), int(bounds[1])
    return tf.minimum(tf.cast(tf.floor(u * (hi - lo + 1)), tf.int32) + lo, hi)


def _per_image(flag_or_value, rank=4):
    """Reshape a ``(B,)`` tensor to broadcast against ``(B, ...)`` of ``rank``."""
    return tf.reshape(flag_or_value, [-1] + [1] * (rank - 1))


def _renormalise_max(images):
    """Divide each image by its maximum (an all-zero image stays zero)."""
    return tf.math.divide_no_nan(images, tf.reduce_max(images, axis=[1, 2, 3], keepdims=True))


# ------------------------------------------------------------------- shift --

def kept_flux_fraction(arcs, shift_x_pix, shift_y_pix):
    """Fraction of each image's flux that stays in the field after a shift.

    Exact up to float32 rounding: the kept flux of candidate ``k`` is
    ``a_k^T X b_k``, with ``a_k``, ``b_k`` the indicator vectors of the source
    rows and columns that land inside the field, computed for all candidates
    by one batched matrix product.

    Args:
        arcs: ``(B, n, n, 1)`` float images (noise-free arcs, >= 0).
        shift_x_pix: ``(B, K)`` int column shifts m (+m moves content to
            higher column, +x).
        shift_y_pix: ``(B, K)`` int row shifts n (+n moves content to higher
            row, +y).

    Returns:
        ``(B, K)`` float32 kept fraction in [0, 1] (0 for an empty image).
    """
    npix = arcs.shape[1]
    flux = tf.cast(arcs[..., 0], tf.float32)
    m = tf.cast(shift_x_pix, tf.int32)[..., None]
    n = tf.cast(shift_y_pix, tf.int32)[..., None]
    idx = tf.range(npix)[None, None, :]
    rows_in = tf.cast((idx + n >= 0) & (idx + n < npix), tf.float32)  # (B, K, n)
    cols_in = tf.cast((idx + m >= 0) & (idx + m < npix), tf.float32)
    kept = tf.reduce_sum(tf.matmul(rows_in, flux) * cols_in, axis=-1)
    total = tf.reduce_sum(flux, axis=[1, 2])[:, None]
    return tf.clip_by_value(tf.math.divide_no_nan(kept, total), 0.0, 1.0)


def sample_shift(seeds, arcs, params, cfg, pixel_scale=conventions.PIXEL_SCALE):
    """Draw the integer re-centring shift of docs/design.md §5.2.

    [R] docs/design.md §5.2: target pixel ``x_new, y_new ~ U{shift_pix}``; shift
    ``m = x_new - floor(x_L / pixel_scale)`` columns and
    ``n = y_new - floor(y_L / pixel_scale)`` rows; keep the shift only if the
    arcs keep ``>= shift_min_flux`` of their flux. The rejection loop is
    vectorised: ``cfg.shift_candidates`` candidates are drawn at once and the
    first that passes is kept; if none passes (very rare), the candidate
    keeping the most flux is used, so the labels stay consistent.

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        arcs: ``(B, n, n, 1)`` noise-free arcs, peak 1.
        params: ``(B, 5)`` labels; x_L, y_L in arcsec.
        cfg: :class:`ensai_tf.config.ObserveConfig`.
        pixel_scale: arcsec per pixel.

    Returns:
        dict: ``"shift_x_pix"``, ``"shift_y_pix"`` ``(B,)`` int32 (m, n),
        ``"shift_flux_kept"`` ``(B,)`` float32.
    """
    k = int(cfg.shift_candidates)
    u, _, _ = _per_example(seeds, Effect.SHIFT, n_uniform=2 * k)
    target = tf.reshape(_randint(u, cfg.shift_pix), [-1, k, 2])
    params64 = tf.cast(params, tf.float64)
    base_x = tf.cast(tf.floor(params64[:, conventions.Param.X_L] / pixel_scale), tf.int32)
    base_y = tf.cast(tf.floor(params64[:, conventions.Param.Y_L] / pixel_scale), tf.int32)
    m = target[..., 0] - base_x[:, None]
    n = target[..., 1] - base_y[:, None]
    kept = kept_flux_fraction(arcs, m, n)
    ok = kept >= cfg.shift_min_flux
    choice = tf.where(tf.reduce_any(ok, axis=1),
                      tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32),
                      tf.argmax(kept, axis=1, output_type=tf.int32))
    return {
        "shift_x_pix": tf.gather(m, choice, batch_dims=1),
        "shift_y_pix": tf.gather(n, choice, batch_dims=1),
        "shift_flux_kept": tf.gather(kept, choice, batch_dims=1),
    }


def apply_shift(images, draws):
    """Shift each image by whole pixels, filling with zeros (docs/design.md §5.2).

    ``out[b, r, c] = in[b, r - n_b, c - m_b]`` where in range, else 0: +m
    moves content to higher column (+x), +n to higher row (+y).

    Args:
        images: ``(B, n, n, C)`` images.
        draws: dict with ``"shift_x_pix"`` (m) and ``"shift_y_pix"`` (n),
            ``(B,)`` int pixels.

    Returns:
        ``(B, n, n, C)`` shifted images, same dtype.
    """
    npix_r, npix_c = images.shape[1], images.shape[2]
    m = tf.cast(draws["shift_x_pix"], tf.int32)
    n = tf.cast(draws["shift_y_pix"], tf.int32)
    rows = tf.range(npix_r)[None, :] - n[:, None]
    cols = tf.range(npix_c)[None, :] - m[:, None]
    ok_r = (rows >= 0) & (rows < npix_r)
    ok_c = (cols >= 0) & (cols < npix_c)
    out = tf.gather(images, tf.clip_by_value(rows, 0, npix_r - 1), axis=1, batch_dims=1)
    out = tf.gather(out, tf.clip_by_value(cols, 0, npix_c - 1), axis=2, batch_dims=1)
    keep = ok_r[:, :, None, None] & ok_c[:, None, :, None]
    return tf.where(keep, out, tf.zeros_like(out))


def shift_params(params, draws, pixel_scale=conventions.PIXEL_SCALE):
    """Move the lens-centre labels with the shift: the package's ONLY label change.

    docs/design.md §5.2: ``x_L += pixel_scale * m``, ``y_L += pixel_scale * n``.

    Args:
        params: ``(B, 5)`` labels (arcsec for x_L, y_L), any float dtype.
        draws: dict with ``"shift_x_pix"``, ``"shift_y_pix"`` ``(B,)`` int.
        pixel_scale: arcsec per pixel.

    Returns:
        ``(B, 5)`` labels, same dtype; only x_L and y_L change.
    """
    params = tf.convert_to_tensor(params)
    dtype = params.dtype
    one_x = tf.one_hot(int(conventions.Param.X_L), conventions.NUM_PARAMS, dtype=dtype)
    one_y = tf.one_hot(int(conventions.Param.Y_L), conventions.NUM_PARAMS, dtype=dtype)
    dx = tf.cast(draws["shift_x_pix"], dtype) * tf.constant(pixel_scale, dtype)
    dy = tf.cast(draws["shift_y_pix"], dtype) * tf.constant(pixel_scale, dtype)
    return params + dx[:, None] * one_x + dy[:, None] * one_y


# --------------------------------------------------------------------- PSF --

def sample_psf(seeds, cfg):
    """Draw the PSF decision and Gaussian width (docs/design.md §5.3 step 1, §9 #1).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"apply_psf"`` ``(B,)`` bool (p = ``cfg.psf_prob``) and
        ``"psf_sigma_pix"`` ``(B,)`` float32 ~ U(``cfg.psf_sigma_pix``), pixels.
    """
    u, _, _ = _per_example(seeds, Effect.PSF, n_uniform=2)
    return {"apply_psf": u[:, 0] < cfg.psf_prob,
            "psf_sigma_pix": _lerp(u[:, 1], cfg.psf_sigma_pix)}


def _blur_matrices(sigma_pix, npix, half):
    """Per-example 1-D Gaussian blur as ``(B, n, n)`` matrices, reflect boundary.

    ``W[i, j]`` is the weight of input pixel ``j`` in output pixel ``i``:
    sampled Gaussian taps ``|d| <= half`` normalised to unit sum, with taps
    falling outside ``[0, n)`` folded back by scipy's "reflect" rule (virtual
    pixel ``-1 - j`` and ``2n - 1 - j`` read pixel ``j``), so every column
    sums to 1 and flux is conserved exactly.
    """
    sigma = tf.maximum(tf.cast(sigma_pix, tf.float32), 1e-3)[:, None]
    taps = tf.range(-half, half + 1, dtype=tf.float32)
    g = tf.exp(-0.5 * (taps[None, :] / sigma) ** 2)
    g = g / tf.reduce_sum(g, axis=1, keepdims=True)
    # Lookup table over offsets d in [-(3n), 3n]: g(d) inside the band, else 0.
    span = 3 * npix
    table = tf.pad(g, [[0, 0], [span - half, span - half]])
    i = np.arange(npix)[:, None]
    j = np.arange(npix)[None, :]
    direct, low, high = j - i, -1 - j - i, 2 * npix - 1 - j - i
    offsets = np.stack([direct, low, high]) + span
    return tf.reduce_sum(tf.gather(table, tf.constant(offsets, tf.int32), axis=1), axis=1)


def _convolve_fixed(images, kernel):
    """Convolve with one 2-D kernel via FFT, scipy "reflect" boundary."""
    npix = images.shape[1]
    k = np.asarray(kernel, np.float32)
    half = k.shape[0] // 2
    size = npix + 2 * half
    padded = tf.pad(images[..., 0], [[0, 0], [half, half], [half, half]], mode="SYMMETRIC")
    canvas = np.zeros((size, size), np.float32)
    canvas[: k.shape[0], : k.shape[1]] = k
    canvas = np.roll(canvas, (-half, -half), axis=(0, 1))
    spec = tf.signal.rfft2d(tf.constant(canvas))
    out = tf.signal.irfft2d(tf.signal.rfft2d(padded) * spec, fft_length=[size, size])
    return out[:, half:half + npix, half:half + npix, None]


def apply_psf(images, draws, kernel=None, max_sigma_pix=2.5):
    """Convolve with the PSF and renormalise to max 1 where ``apply_psf``.

    Gaussian (``kernel`` None): separable per-example kernels with
    ``sigma = draws["psf_sigma_pix"]`` pixels, sampled at integer taps,
    truncated at ``ceil(4 * max_sigma_pix)`` pixels and normalised to unit sum,
    applied as two batched matrix products ``W @ X @ W^T`` (rows, then
    columns) with scipy's "reflect" boundary (docs/design.md §5.3 [C]), which conserves
    flux. A fixed 2-D ``kernel`` (``psf = "file"`` or ``"airy"``) is applied by
    FFT, with the same reflect boundary. Then each blurred image is divided
    by its maximum (docs/design.md §5.3 step 1).

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict with ``"apply_psf"`` ``(B,)`` bool and, for the Gaussian,
            ``"psf_sigma_pix"`` ``(B,)`` pixels.
        kernel: optional odd-sided square 2-D array with unit sum.
        max_sigma_pix: largest sigma drawn, pixels; sets the truncation.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if kernel is None:
        npix = images.shape[1]
        half = min(int(math.ceil(4.0 * max_sigma_pix)), npix - 1)
        w = _blur_matrices(draws["psf_sigma_pix"], npix, half)
        blurred = tf.matmul(tf.matmul(w, images[..., 0]), w, transpose_b=True)[..., None]
    else:
        blurred = _convolve_fixed(images, kernel)
    return tf.where(_per_image(draws["apply_psf"]), _renormalise_max(blurred), images)


def _odd_square(kernel, max_side):
    """Pad a kernel to odd square sides (zeros appended) and crop to max_side."""
    rows, cols = kernel.shape
    side = max(rows, cols)
    side += 1 - side % 2
    out = np.zeros((side, side), np.float64)
    r0, c0 = (side - rows) // 2, (side - cols) // 2
    out[r0:r0 + rows, c0:c0 + cols] = kernel
    if side > max_side:
        cut = (side - max_side) // 2
        out = out[cut:cut + max_side, cut:cut + max_side]
    return out


def load_psf(path, npix=conventions.NPIX):
    """Load a user PSF image (FITS: first image HDU; or ``.npy``) once.

    The image is padded with zeros to odd square sides (its central pixel is
    the PSF centre), cropped to at most ``2 * npix - 1`` pixels and normalised
    to unit sum.

    Args:
        path: ``.fits``/``.fit``/``.fits.gz`` or ``.npy`` file with a 2-D
            PSF sampled at the image pixel scale.
        npix: image side, pixels.

    Returns:
        float32 ``(k, k)`` kernel, ``k`` odd, unit sum.

    Raises:
        InputError: missing or unreadable file, no 2-D image, non-finite
            values or a non-positive sum.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise InputError(f"PSF file {path!r} does not exist")
    try:
        if path.lower().endswith(".npy"):
            data = np.load(path, allow_pickle=False)
        else:
            from astropy.io import fits

            with fits.open(path) as hdul:
                data = next((h.data for h in hdul
                             if h.data is not None and np.ndim(h.data) == 2), None)
                data = None if data is None else np.array(data, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise InputError(f"PSF file {path!r} cannot be read: {err}") from None
    if data is None or np.ndim(data) != 2:
        raise InputError(f"PSF file {path!r} holds no 2-D image")
    data = np.asarray(data, np.float64)
    if not np.all(np.isfinite(data)) or data.sum() <= 0:
        raise InputError(f"PSF file {path!r} must hold finite values with a positive sum")
    kernel = _odd_square(data, 2 * npix - 1)
    if kernel.sum() <= 0:
        raise InputError(f"PSF file {path!r} has no positive flux in its central "
                         f"{2 * npix - 1} pixels")
    return (kernel / kernel.sum()).astype(np.float32)


def airy_halo_psf(fwhm_arcsec=0.07, halo_fraction=0.1, halo_fwhm_arcsec=0.3,
                  pixel_scale=conventions.PIXEL_SCALE, half_size_pix=25, oversample=5):
    """Analytic Airy-core-plus-Moffat-halo PSF (docs/design.md §8.5 [R], invented numbers).

    ``PSF = (1 - f) * Airy / sum(Airy) + f * Moffat / sum(Moffat)`` on a
    ``(2 h + 1)^2`` pixel grid, each pixel averaged over ``oversample^2``
    sub-pixels, where

    - ``Airy(r) = [2 J1(x) / x]^2`` with ``x = pi r / (lambda/D)`` and
      ``lambda/D = fwhm_arcsec / 1.028935`` (so the core has that FWHM;
      0.07 arcsec is about HST at 600 nm);
    - ``Moffat(r) = (1 + (r / alpha)^2)^(-2.5)`` with
      ``alpha = halo_fwhm / (2 sqrt(2^(1/2.5) - 1))``, standing in for the
      scattered-light halo that holds ``f`` of the light.

    Args:
        fwhm_arcsec: Airy core FWHM, arcsec.
        halo_fraction: fraction of the light in the halo, in [0, 1].
        halo_fwhm_arcsec: Moffat halo FWHM, arcsec.
        pixel_scale: arcsec per pixel.
        half_size_pix: kernel half side h, pixels.
        oversample: sub-pixels per pixel per axis.

    Returns:
        float32 ``(2 h + 1, 2 h + 1)`` kernel with unit sum.
    """
    from scipy import special

    n = 2 * half_size_pix + 1
    sub = (np.arange(n * oversample) + 0.5) / oversample - n / 2.0
    x, y = np.meshgrid(sub, sub, indexing="xy")
    r = np.hypot(x, y) * pixel_scale
    lam_d = fwhm_arcsec / _AIRY_FWHM_PER_LAMBDA_D
    arg = np.pi * r / lam_d
    safe = np.where(arg > 0, arg, 1.0)
    airy = np.where(arg > 0, (2.0 * special.j1(safe) / safe) ** 2, 1.0)
    alpha = halo_fwhm_arcsec / (2.0 * np.sqrt(2.0 ** (1.0 / _MOFFAT_BETA) - 1.0))
    moffat = (1.0 + (r / alpha) ** 2) ** (-_MOFFAT_BETA)

    def pixelate(a):
        a = a.reshape(n, oversample, n, oversample).mean(axis=(1, 3))
        return a / a.sum()

    psf = (1.0 - halo_fraction) * pixelate(airy) + halo_fraction * pixelate(moffat)
    return (psf / psf.sum()).astype(np.float32)


def psf_kernel(cfg, npix=conventions.NPIX, pixel_scale=conventions.PIXEL_SCALE):
    """The fixed PSF kernel of ``cfg.psf``, or None for the Gaussian family.

    Called once when :func:`observe` is traced, so a PSF file is read once.

    Args:
        cfg: :class:`ensai_tf.config.ObserveConfig`; ``cfg.psf`` ``"file"``
            reads ``cfg.psf_file`` (:func:`load_psf`), ``"airy"`` builds
            :func:`airy_halo_psf` from ``cfg.psf_airy_fwhm_arcsec``,
            ``cfg.psf_halo_fraction`` and ``cfg.psf_halo_fwhm_arcsec``.
        npix: image side, pixels (caps a file kernel at ``2 * npix - 1``).
        pixel_scale: arcsec per pixel (of the Airy kernel).

    Returns:
        float32 ``(k, k)`` kernel, ``k`` odd, unit sum; or None for the
        per-example Gaussian PSF.

    Raises:
        InputError: for an unreadable or invalid PSF file (see :func:`load_psf`).
    """
    if cfg.psf == "file":
        return load_psf(cfg.psf_file, npix)
    if cfg.psf == "airy":
        return airy_halo_psf(cfg.psf_airy_fwhm_arcsec, cfg.psf_halo_fraction,
                             cfg.psf_halo_fwhm_arcsec, pixel_scale)
    return None


# ----------------------------------------------------------------- Poisson --

def sample_poisson(seeds, cfg):
    """Draw the Poisson decision, counts scale and seed (docs/design.md §5.3 step 2, §9 #2).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"apply_poisson"`` ``(B,)`` bool (p = ``cfg.poisson_prob``),
        ``"poisson_counts"`` ``(B,)`` float32 c ~ U(``cfg.poisson_counts``),
        counts per unit image value, ``"poisson_seed"`` ``(B, 2)`` int64.
    """
    u, _, sub = _per_example(seeds, Effect.POISSON, n_uniform=2)
    return {"apply_poisson": u[:, 0] < cfg.poisson_prob,
            "poisson_counts": _lerp(u[:, 1], cfg.poisson_counts),
            "poisson_seed": sub}


def apply_poisson(images, draws, exact_below=1e6):
    """Photon noise: ``Poisson(c |image|) / c``, renormalised to max 1.

    Pixels with expected count ``lam = c |image| < exact_below`` are drawn
    exactly with ``tf.random.stateless_poisson``; above it, as
    ``round(max(N(lam, lam), 0))``. Only pixels with ``lam > 0`` are drawn
    (``lam = 0`` gives exactly 0), which makes exact Poisson as fast as the
    Gaussian approximation on arcs (measured: 36-42 ms vs 26-45 ms per 64
    images on 2 cores), so the default (``cfg.poisson_exact_below = 1e6``)
    is exact everywhere.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict with ``"apply_poisson"`` ``(B,)`` bool,
            ``"poisson_counts"`` ``(B,)`` c, ``"poisson_seed"`` ``(B, 2)``.
        exact_below: expected-count threshold of the exact draw.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    counts = tf.convert_to_tensor(draws["poisson_counts"], tf.float32)
    lam = _per_image(counts) * tf.abs(images)
    exact_below = tf.constant(exact_below, tf.float32)

    def draw(args):
        seed, lam_i = args
        # Only pixels with lam > 0 are drawn (lam = 0 gives exactly 0 counts):
        # stateless_poisson costs ~55 ns per element even at lam = 0.
        where = tf.where(lam_i > 0)
        lam_c = tf.gather_nd(lam_i, where)
        small = lam_c < exact_below
        exact = tf.random.stateless_poisson(tf.shape(lam_c), _fold_in(seed, 0),
                                            tf.where(small, lam_c, 0.0), dtype=tf.float32)
        gauss = lam_c + tf.sqrt(lam_c) * tf.random.stateless_normal(
            tf.shape(lam_c), _fold_in(seed, 1))
        counts = tf.where(small, exact, tf.round(tf.maximum(gauss, 0.0)))
        return tf.scatter_nd(where, counts, tf.shape(lam_i, out_type=tf.int64))

    photons = tf.map_fn(draw, (tf.cast(draws["poisson_seed"], tf.int64), lam),
                        fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32))
    noisy = _renormalise_max(photons / _per_image(counts))
    return tf.where(_per_image(draws["apply_poisson"]), noisy, images)


# ------------------------------------------------------------- cosmic rays --

def sample_cosmic_rays(seeds, cfg, npix=conventions.NPIX):
    """Draw a cosmic-ray/hot-pixel map per example (docs/design.md §5.3 step 3, §5.5 [R]).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig` (event counts, lengths in
            pixels, and values).
        npix: image side, pixels.

    Returns:
        dict: ``"apply_cosmic_rays"`` ``(B,)`` bool (p = ``cfg.cosmic_prob``),
        ``"cosmic_scale"`` ``(B,)`` ~ U(``cfg.cosmic_scale``), and the map as
        sparse events ``"cosmic_rows"``, ``"cosmic_cols"`` ``(B, E)`` int32,
        ``"cosmic_values"`` ``(B, E)`` float32 (map max 1), see
        :func:`ensai_tf.data.noise.cosmic_ray_events`.
    """
    u, _, sub = _per_example(seeds, Effect.COSMIC_RAYS, n_uniform=2)
    events = noise.cosmic_ray_events(sub, npix, cfg.cosmic_ray_count, cfg.cosmic_ray_length,
                                     cfg.cosmic_ray_value, cfg.hot_pixel_count,
                                     cfg.hot_pixel_value)
    return {"apply_cosmic_rays": u[:, 0] < cfg.cosmic_prob,
            "cosmic_scale": _lerp(u[:, 1], cfg.cosmic_scale),
            "cosmic_rows": events["rows"], "cosmic_cols": events["cols"],
            "cosmic_values": events["values"]}


def apply_cosmic_rays(images, draws):
    """Add ``cosmic_scale`` times the rendered event map where ``apply_cosmic_rays``.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict from :func:`sample_cosmic_rays`.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    rays = noise.render_events(draws["cosmic_rows"], draws["cosmic_cols"],
                               draws["cosmic_values"], images.shape[1])
    scale = tf.where(draws["apply_cosmic_rays"],
                     tf.cast(draws["cosmic_scale"], tf.float32), 0.0)
    return images + _per_image(scale) * rays


# ------------------------------------------------------------------- noise --

def noise_spectrum(cfg, npix=conventions.NPIX):
    """The amplitude spectrum of ``cfg.noise_spectrum``, or the default model (docs/design.md §5.4).

    Args:
        cfg: :class:`ensai_tf.config.ObserveConfig`; an empty
            ``cfg.noise_spectrum`` path selects the default drizzle model.
        npix: map side, pixels.

    Returns:
        float32 ``(npix, npix)`` Fourier amplitudes, unshifted FFT order (DC at
        ``[0, 0]``).

    Raises:
        InputError: for a missing or invalid spectrum file.
    """
    if cfg.noise_spectrum:
        return noise.load_noise_spectrum(cfg.noise_spectrum, npix)
    return noise.default_noise_spectrum(npix)


def sample_noise(seeds, cfg):
    """Draw the Gaussian-noise level and colour (docs/design.md §5.3 step 4).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"noise_rms"`` ``(B,)`` ~ U(``cfg.noise_rms``), in units of
        the current image peak; ``"coloured_noise"`` ``(B,)`` bool
        (p = ``cfg.coloured_noise_prob``, else white); ``"noise_seed"``
        ``(B, 2)`` int64.
    """
    u, _, sub = _per_example(seeds, Effect.NOISE, n_uniform=2)
    return {"noise_rms": _lerp(u[:, 0], cfg.noise_rms),
            "coloured_noise": u[:, 1] < cfg.coloured_noise_prob,
            "noise_seed": sub}


def apply_noise(images, draws, spectrum=None):
    """Add white or coloured Gaussian noise of rms ``noise_rms * max(image)``.

    The white field and the coloured field (docs/design.md §5.4, unit rms, with its DC
    offset) both come from :func:`ensai_tf.data.noise.noise_fields` with
    ``noise_seed``; ``coloured_noise`` picks one per example.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict from :func:`sample_noise`.
        spectrum: ``(n, n)`` Fourier amplitudes (unshifted); None = the
            default drizzle model.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if spectrum is None:
        spectrum = noise.default_noise_spectrum(images.shape[1])
    white, coloured = noise.noise_fields(draws["noise_seed"], spectrum)
    field = tf.where(_per_image(draws["coloured_noise"], 3), coloured, white)[..., None]
    peak = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    rms = _per_image(tf.cast(draws["noise_rms"], tf.float32)) * peak
    return images + rms * field


# --------------------------------------------------- normalise, zero bias --

def sample_normalise(seeds, cfg):
    """Draw the normalisation jitter (docs/design.md §5.3 step 6, §9 #5).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"norm_jitter"`` ``(B,)`` ~ N(1, ``cfg.norm_jitter_rms``).
    """
    _, z, _ = _per_example(seeds, Effect.NORMALISE, n_normal=1)
    return {"norm_jitter": 1.0 + cfg.norm_jitter_rms * z[:, 0]}


def apply_normalise(images, draws, reference, threshold=0.4):
    """Divide by the image max over bright arc pixels, times the jitter (docs/design.md §5.7).

    The normalising maximum is taken over pixels where ``reference`` (the
    noise-free, unblurred, shifted arcs) exceeds ``threshold``. If there is
    no such pixel, or that maximum is not positive, the division is skipped;
    the jitter is always applied.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict with ``"norm_jitter"`` ``(B,)``.
        reference: ``(B, n, n, 1)`` noise-free shifted arcs, peak 1.
        threshold: arc level defining the normalisation region.

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    region = reference > threshold
    peak = tf.reduce_max(tf.where(region, images, -np.inf), axis=[1, 2, 3], keepdims=True)
    ok = tf.reduce_any(region, axis=[1, 2, 3], keepdims=True) & (peak > 0)
    scale = tf.where(ok, 1.0 / tf.where(ok, peak, 1.0), 1.0)
    return images * scale * _per_image(tf.cast(draws["norm_jitter"], tf.float32))


def sample_zero_bias(seeds, cfg):
    """Draw the constant zero-level offset (docs/design.md §5.3 step 7).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.

    Returns:
        dict: ``"zero_bias"`` ``(B,)`` ~ N(0, ``cfg.zero_bias_rms``), image units.
    """
    _, z, _ = _per_example(seeds, Effect.ZERO_BIAS, n_normal=1)
    return {"zero_bias": cfg.zero_bias_rms * z[:, 0]}


def apply_zero_bias(images, draws):
    """Add one constant ``zero_bias`` to every pixel of each image.

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict with ``"zero_bias"`` ``(B,)``, image units
            (:func:`sample_zero_bias`).

    Returns:
        ``(B, n, n, 1)`` float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    return images + _per_image(tf.cast(draws["zero_bias"], tf.float32))


# ------------------------------------------------------------------- masks --

def _disc_pixels(centres, active, npix, pixel_scale, radius_arcsec):
    """Pixels covered by discs, as windows around each disc.

    Args:
        centres: ``(..., M, 2)`` disc centres (x, y), arcsec.
        active: ``(..., M)`` bool.

    Returns:
        ``(rows, cols, inside)``, each ``(..., M * W * W)``: window pixel
        indices (clipped into the image) and whether the pixel centre lies
        within ``radius`` of an active disc centre and inside the image.
    """
    radius = radius_arcsec / pixel_scale
    width = int(math.floor(2.0 * radius)) + 1
    centre_pix = (npix - 1) / 2.0
    col_c = centres[..., 0] / pixel_scale + centre_pix
    row_c = centres[..., 1] / pixel_scale + centre_pix
    offsets = tf.range(width, dtype=tf.float32)
    rows = tf.math.ceil(row_c - radius)[..., None, None] + offsets[:, None]
    cols = tf.math.ceil(col_c - radius)[..., None, None] + offsets[None, :]
    inside = ((rows - row_c[..., None, None]) ** 2 + (cols - col_c[..., None, None]) ** 2
              <= radius ** 2)
    inside &= (rows >= 0) & (rows < npix) & (cols >= 0) & (cols < npix)
    inside &= active[..., None, None]
    rows = tf.broadcast_to(rows, tf.shape(inside))
    cols = tf.broadcast_to(cols, tf.shape(inside))
    new_shape = tf.concat([tf.shape(active)[:-1], [-1]], axis=0)

    def flat(a):
        return tf.reshape(a, new_shape)

    rows = tf.clip_by_value(tf.cast(flat(rows), tf.int32), 0, npix - 1)
    cols = tf.clip_by_value(tf.cast(flat(cols), tf.int32), 0, npix - 1)
    return rows, cols, flat(inside)


def _masked_flux(arcs_flat, centres, active, npix, pixel_scale, radius_arcsec):
    """Arc flux under the union of discs, exactly.

    The discs' window pixels are scattered (max of 1) onto a per-try canvas,
    so a pixel covered by several discs counts once, and the canvas is dotted
    with the arcs.

    Args:
        arcs_flat: ``(B, n * n)`` arc pixel values.
        centres: ``(B, T, M, 2)`` arcsec; active: ``(B, T, M)`` bool.

    Returns:
        ``(B, T)`` float32 masked arc flux.
    """
    rows, cols, inside = _disc_pixels(centres, active, npix, pixel_scale, radius_arcsec)
    shape = tf.shape(inside)
    batch, tries = shape[0], shape[1]
    covered = noise.render_events(tf.reshape(rows, [batch * tries, -1]),
                                  tf.reshape(cols, [batch * tries, -1]),
                                  tf.reshape(tf.cast(inside, tf.float32), [batch * tries, -1]),
                                  npix)
    covered = tf.reshape(covered, [batch, tries, npix * npix])
    return tf.reduce_sum(covered * arcs_flat[:, None, :], axis=-1)


def _mask_tries(sub, start, size, n_max, cfg, field):
    """Tries ``start .. start + size - 1`` of every example.

    Try ``t`` of example ``i`` is drawn from ``fold_in(sub_i, t)`` alone, so
    it does not depend on the batch or on how tries are chunked.

    Returns:
        ``(counts (B, T) int32, centres (B, T, M, 2) arcsec, active (B, T, M))``.
    """
    n_u = 1 + 2 * n_max

    def draw(s):
        return tf.stack([tf.random.stateless_uniform([n_u], _fold_in(s, start + k))
                         for k in range(size)])

    u = tf.map_fn(draw, sub, fn_output_signature=tf.TensorSpec([size, n_u], tf.float32))
    counts = _randint(u[..., 0], cfg.mask_count)
    centres = (tf.reshape(u[..., 1:], [-1, size, n_max, 2]) - 0.5) * field
    active = tf.range(n_max)[None, None, :] < counts[..., None]
    return counts, centres, active


def sample_masks(seeds, arcs, cfg, training=True, pixel_scale=conventions.PIXEL_SCALE):
    """Draw mask discs under the flux rule of docs/design.md §5.6 [R].

    Attempted only when the noise-free shifted arcs have min < 0.1 and
    max > 0.9, then with p = ``cfg.mask_prob``. A try draws
    ``U{cfg.mask_count}`` discs of radius ``cfg.mask_radius_arcsec`` with
    centres uniform over the whole field; it is accepted when the unmasked
    arc flux is ``>= f_min`` of the total (``f_min = cfg.mask_min_flux_frac``
    when ``training``, else ``cfg.eval_mask_min_flux_frac``). Each example
    keeps its first accepted try, out of at most ``cfg.mask_max_tries``;
    after that, no mask. Try 0 is evaluated for the whole batch, then
    ``cfg.mask_chunk`` tries at a time while some example still needs one.
    Try ``t`` depends only on the example's seed, never on the batch.

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        arcs: ``(B, n, n, 1)`` noise-free shifted arcs (peak 1).
        cfg: :class:`ensai_tf.config.ObserveConfig`.
        training: True for the training f_min.
        pixel_scale: arcsec per pixel.

    Returns:
        dict: ``"apply_masks"`` ``(B,)`` bool (attempted and accepted),
        ``"mask_count"`` ``(B,)`` int32 (0 when not applied),
        ``"mask_centres"`` ``(B, M, 2)`` float32 disc centres (x, y), arcsec,
        ``M = cfg.mask_count[1]`` (inactive ones are 0),
        ``"mask_tries"`` ``(B,)`` int32 tries used (0 when not attempted).
    """
    npix = arcs.shape[1]
    n_max = int(cfg.mask_count[1])
    max_tries = int(cfg.mask_max_tries)
    chunk = int(min(cfg.mask_chunk, max(max_tries - 1, 1)))
    n_chunks = int(math.ceil((max_tries - 1) / chunk))
    f_min = cfg.mask_min_flux_frac if training else cfg.eval_mask_min_flux_frac
    field = npix * pixel_scale
    arcs = tf.convert_to_tensor(arcs, tf.float32)
    batch = tf.shape(arcs)[0]
    u, _, sub = _per_example(seeds, Effect.MASKS, n_uniform=1)
    eligible = ((tf.reduce_min(arcs, axis=[1, 2, 3]) < 0.1)
                & (tf.reduce_max(arcs, axis=[1, 2, 3]) > 0.9))
    attempt = eligible & (u[:, 0] < cfg.mask_prob)
    arcs_flat = tf.reshape(arcs, [batch, npix * npix])
    total = tf.reduce_sum(arcs_flat, axis=1)

    def step(start, size, state):
        done, count, centres, tries = state
        counts, cen, active = _mask_tries(sub, start, size, n_max, cfg, field)
        lost = _masked_flux(arcs_flat, cen, active, npix, pixel_scale, cfg.mask_radius_arcsec)
        try_index = start + tf.range(size)
        ok = ((total[:, None] - lost >= f_min * total[:, None])
              & (try_index < max_tries)[None, :])
        pick = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
        still = attempt & ~done
        take = still & tf.reduce_any(ok, axis=1)
        active_pick = tf.gather(active, pick, batch_dims=1)
        cen_pick = tf.where(active_pick[..., None], tf.gather(cen, pick, batch_dims=1), 0.0)
        count = tf.where(take, tf.gather(counts, pick, batch_dims=1), count)
        centres = tf.where(take[:, None, None], cen_pick, centres)
        used = tf.where(take, start + pick + 1, tf.minimum(start + size, max_tries))
        tries = tf.where(still, used, tries)
        return done | take, count, centres, tries

    zeros_b = tf.zeros([batch], tf.int32)
    state = step(0, 1, (tf.zeros([batch], tf.bool), zeros_b,
                        tf.zeros([batch, n_max, 2], tf.float32), zeros_b))
    if n_chunks > 0:
        def cond(c, state):
            return (c < n_chunks) & tf.reduce_any(attempt & ~state[0])

        def body(c, state):
            return c + 1, step(1 + c * chunk, chunk, state)

        _, state = tf.while_loop(cond, body, (tf.constant(0), state))
    done, count, centres, tries = state
    return {"apply_masks": attempt & done, "mask_count": count, "mask_centres": centres,
            "mask_tries": tries}


def mask_from_draws(draws, npix=conventions.NPIX, radius_arcsec=0.2,
                    pixel_scale=conventions.PIXEL_SCALE):
    """Rasterise the mask discs: ``(B, n, n, 1)`` float32, 1 = kept, 0 = masked.

    A pixel is masked when its centre lies within ``radius_arcsec``
    (inclusive) of an active disc centre and ``apply_masks`` is set.

    Args:
        draws: dict from :func:`sample_masks`: ``"apply_masks"`` ``(B,)`` bool,
            ``"mask_count"`` ``(B,)`` int and ``"mask_centres"`` ``(B, M, 2)``
            disc centres (x, y), arcsec from the image centre.
        npix: image side, pixels.
        radius_arcsec: disc radius, arcsec.
        pixel_scale: arcsec per pixel.

    Returns:
        ``(B, n, n, 1)`` float32 mask, 1 where kept and 0 where masked.
    """
    centres = tf.convert_to_tensor(draws["mask_centres"], tf.float32)
    n_max = centres.shape[1]
    active = ((tf.range(n_max)[None, :] < tf.cast(draws["mask_count"], tf.int32)[:, None])
              & tf.convert_to_tensor(draws["apply_masks"])[:, None])
    rows, cols, inside = _disc_pixels(centres, active, npix, pixel_scale, radius_arcsec)
    covered = noise.render_events(rows, cols, tf.cast(inside, tf.float32), npix)
    return 1.0 - covered


def apply_masks(images, draws, radius_arcsec=0.2, pixel_scale=conventions.PIXEL_SCALE):
    """Set masked pixels to exactly 0 (docs/design.md §5.3 step 8, §5.6).

    Args:
        images: ``(B, n, n, 1)`` float32.
        draws: dict from :func:`sample_masks` (see :func:`mask_from_draws`).
        radius_arcsec: disc radius, arcsec.
        pixel_scale: arcsec per pixel.

    Returns:
        ``(images * mask, mask)``, both ``(B, n, n, 1)`` float32; mask is 1
        where kept and 0 where masked.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    mask = mask_from_draws(draws, images.shape[1], radius_arcsec, pixel_scale)
    return tf.where(mask > 0, images, 0.0), mask


# ----------------------------------------------------------------- observe --

def _check_inputs(arcs, params, seeds, lens_light):
    arcs = tf.convert_to_tensor(arcs)
    params = tf.convert_to_tensor(params)
    seeds = tf.convert_to_tensor(seeds)
    if arcs.shape.rank != 4 or arcs.shape[-1] != 1 or arcs.shape[1] != arcs.shape[2]:
        raise InputError(f"observe: arcs must have shape (B, n, n, 1), got {arcs.shape}")
    if arcs.shape[1] is None:
        raise InputError("observe: the image side of arcs must be known statically")
    if params.shape.rank != 2 or params.shape[-1] != conventions.NUM_PARAMS:
        raise InputError(f"observe: params must have shape (B, {conventions.NUM_PARAMS}) "
                         f"in order {conventions.PARAM_NAMES}, got {params.shape}")
    if seeds.shape.rank != 2 or seeds.shape[-1] != 2 or not seeds.dtype.is_integer:
        raise InputError(f"observe: seeds must be (B, 2) integers, got {seeds.shape} "
                         f"{seeds.dtype.name}")
    if lens_light is not None:
        lens_light = tf.convert_to_tensor(lens_light, tf.float32)
        if lens_light.shape.rank != 4 or lens_light.shape[1:] != arcs.shape[1:]:
            raise InputError(f"observe: lens_light must have the shape of arcs {arcs.shape}, "
                             f"got {lens_light.shape}")
    return tf.cast(arcs, tf.float32), params, tf.cast(seeds, tf.int64), lens_light


def _chain(arcs, params, seeds, cfg, training, lens_light, kernel, spectrum):
    """One pass of the effect chain of docs/design.md §5.3 (code order)."""
    draws = dict(sample_shift(seeds, arcs, params, cfg))
    shifted = apply_shift(arcs, draws)
    labels = shift_params(params, draws)
    image = shifted
    if lens_light is not None:
        image = image + apply_shift(lens_light, draws)  # [R] docs/design.md §4: before the PSF
    for sample in (sample_psf, sample_poisson, sample_noise, sample_normalise,
                   sample_zero_bias):
        draws.update(sample(seeds, cfg))
    draws.update(sample_cosmic_rays(seeds, cfg, arcs.shape[1]))
    draws.update(sample_masks(seeds, shifted, cfg, training))
    image = apply_psf(image, draws, kernel, max_sigma_pix=cfg.psf_sigma_pix[1])
    image = apply_poisson(image, draws, cfg.poisson_exact_below)
    image = apply_cosmic_rays(image, draws)
    image = apply_noise(image, draws, spectrum)
    image = apply_normalise(image, draws, shifted, cfg.norm_threshold)
    image = apply_zero_bias(image, draws)
    image, mask = apply_masks(image, draws, cfg.mask_radius_arcsec)
    return {"image": image, "params": labels, "mask": mask, "draws": draws}


def _finite(out):
    ok_image = tf.reduce_all(tf.math.is_finite(out["image"]), axis=[1, 2, 3])
    ok_params = tf.reduce_all(tf.math.is_finite(out["params"]), axis=1)
    return ok_image & ok_params


def observe(arcs, params, seeds, cfg, training=True, lens_light=None):
    """Apply the observational effects of docs/design.md §5 to a batch of noise-free arcs.

    Pure TF, graph-safe (works eagerly, in ``tf.function`` and in
    ``tf.data.Dataset.map``). Example ``i`` depends only on its own row of
    ``arcs``, ``params``, ``lens_light`` and ``seeds``.

    Order (docs/design.md §5.3, code order): shift (labels too) -> lens light (shifted
    identically, added before the PSF, docs/design.md §4 [R]) -> PSF -> Poisson ->
    cosmic rays -> Gaussian noise -> normalisation over arc pixels > 0.4
    (docs/design.md §5.7) -> zero bias -> masks (exact zeros, last). Examples whose
    image or labels come out non-finite are redrawn from
    ``fold_in(fold_in(seed_i, Effect.REDRAW), attempt)`` up to
    ``cfg.max_redraws`` times, never zeroed (docs/design.md §9 #23 [R]).

    Args:
        arcs: ``(B, n, n, 1)`` float32 noise-free arcs, peak 1 (docs/design.md §3.5).
        params: ``(B, 5)`` labels (theta_E, e_x, e_y, x_L, y_L); arcsec,
            -, -, arcsec, arcsec.
        seeds: ``(B, 2)`` int32/int64 per-example stateless seeds.
        cfg: :class:`ensai_tf.config.ObserveConfig`.
        training: selects the mask flux floor (0.75 train, 0.98 eval).
        lens_light: optional ``(B, n, n, 1)`` lens-light images, same units.

    Returns:
        dict: ``"image"`` ``(B, n, n, 1)`` float32; ``"params"`` ``(B, 5)``
        shifted labels (input dtype); ``"mask"`` ``(B, n, n, 1)`` float32,
        1 = kept, 0 = masked; ``"draws"``: dict of per-example draws
        (``(B, ...)``), including ``"redraw_attempt"`` (0 = first pass).

    Raises:
        InputError: for inputs of the wrong rank, shape or dtype.
    """
    arcs, params, seeds, lens_light = _check_inputs(arcs, params, seeds, lens_light)
    kernel = psf_kernel(cfg, arcs.shape[1])
    spectrum = noise_spectrum(cfg, arcs.shape[1])

    def chain(example_seeds):
        return _chain(arcs, params, example_seeds, cfg, training, lens_light, kernel, spectrum)

    # The chain is traced once and called for the first pass and for every redraw: tracing it
    # a second time inside the while loop doubled the time to build a pipeline. Same ops,
    # same seeds, so the same images.
    run = tf.function(chain, autograph=False).get_concrete_function(
        tf.TensorSpec(seeds.shape, tf.int64))
    out = run(seeds)
    out["draws"]["redraw_attempt"] = tf.zeros_like(seeds[:, 0], tf.int32)
    if cfg.max_redraws > 0:
        redraw_base = _fold(seeds, Effect.REDRAW)

        def cond(attempt, result):
            return (attempt <= cfg.max_redraws) & tf.logical_not(tf.reduce_all(_finite(result)))

        def body(attempt, result):
            new = run(_fold(redraw_base, attempt))
            new["draws"]["redraw_attempt"] = tf.fill(tf.shape(seeds[:, :1])[:1], attempt)
            bad = tf.logical_not(_finite(result))
            merged = tf.nest.map_structure(
                lambda old, fresh: tf.where(_per_image(bad, fresh.shape.rank), fresh, old),
                result, new)
            return attempt + 1, merged

        _, out = tf.while_loop(cond, body, (tf.constant(1), out))
    tf.debugging.Assert(tf.reduce_all(_finite(out)), [
        "observe: examples still non-finite after cfg.max_redraws redraws; "
        "check the input arcs and params for NaN/Inf"])
    return out
