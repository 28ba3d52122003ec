"""Noise fields: coloured (drizzled-HST-like) Gaussian noise and cosmic-ray maps.

Two generators used by :mod:`ensai_tf.data.observe`, both pure TF and
vectorised over a batch with one stateless seed per example, so example
``i`` gets the same field whatever batch it sits in:

- coloured noise (docs/design.md §5.4): each Fourier mode is drawn with a standard
  deviation equal to a spectrum amplitude, inverse-FFT'd, the real part kept
  and divided by its standard deviation. The DC term is kept, so each map
  carries a random constant offset (docs/design.md §5.4, §9 #26).
- cosmic rays and hot pixels (docs/design.md §5.5 [R]): friends-of-friends random-walk
  rays plus single hot pixels, as sparse events ``(rows, cols, values)`` that
  :func:`render_events` rasterises.

Spectrum files are ``(npix, npix)`` float arrays of non-negative Fourier
amplitudes in **unshifted** FFT order (DC at ``[0, 0]``), as written by
``tools/measure_noise_spectrum.py``.
"""

import os

import numpy as np
import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data.draws import lerp, uniforms
from ensai_tf.errors import InputError

__all__ = [
    "DRIZZLE_PIXFRAC",
    "BROAD_FRACTION",
    "BROAD_LENGTH_PIX",
    "DC_OFFSET_RMS",
    "drizzle_correlation_1d",
    "default_noise_spectrum",
    "load_noise_spectrum",
    "noise_fields",
    "coloured_noise",
    "lag_correlations",
    "cosmic_ray_events",
    "render_events",
]

# [R] docs/design.md §5.4 PROJECT DECISION: parameters of the default drizzled-noise model,
# calibrated to lag-1 = 0.28, lag-2 = 0.038, lag-3 = 0.034 (see default_noise_spectrum).
DRIZZLE_PIXFRAC = 1.0
"""Drizzle drop side, output pixels: the footprint is box(1) * box(pixfrac)."""

BROAD_FRACTION = 0.041
"""Variance fraction of the broad (low-k, sky/flat residual) component."""

BROAD_LENGTH_PIX = 5.0
"""Gaussian correlation length of the broad component, pixels."""

DC_OFFSET_RMS = 1.1
"""rms of the per-map constant offset, in units of the map rms (docs/design.md §5.4: 1.1)."""


def drizzle_correlation_1d(pixfrac=DRIZZLE_PIXFRAC, max_lag=3, samples=4001):
    """Noise correlation of 1-D drizzling at integer lags.

    White noise is spread by a drop of side ``pixfrac`` (output pixels) and
    collected by output pixels of side 1, so the footprint is
    ``T = box(1) * box(pixfrac) / pixfrac`` and the correlation at lag ``j``
    is ``C(j) = integral T(x) T(x + j) dx`` (midpoint rule, ``samples`` points).

    Args:
        pixfrac: drop side, output pixels (> 0).
        max_lag: largest lag returned, pixels.
        samples: integration points over the footprint's support.

    Returns:
        float64 array ``(max_lag + 1,)``: ``C(j) / C(0)``, dimensionless.
        ``pixfrac = 1`` gives ``(1, 0.25, 0, 0)``.
    """
    if pixfrac <= 0:
        raise ValueError(f"pixfrac must be > 0, got {pixfrac}")
    half = 0.5 * (1.0 + pixfrac)
    x = (np.arange(samples) + 0.5) / samples * 2.0 * half - half
    dx = 2.0 * half / samples

    def footprint(u):
        overlap = np.minimum(u + 0.5, 0.5 * pixfrac) - np.maximum(u - 0.5, -0.5 * pixfrac)
        return np.clip(overlap, 0.0, None) / pixfrac

    t0 = footprint(x)
    corr = np.array([np.sum(t0 * footprint(x + j)) * dx for j in range(max_lag + 1)])
    return corr / corr[0]


def default_noise_spectrum(npix=conventions.NPIX, pixfrac=DRIZZLE_PIXFRAC,
                           broad_fraction=BROAD_FRACTION, broad_length_pix=BROAD_LENGTH_PIX,
                           dc_offset_rms=DC_OFFSET_RMS):
    """Default Fourier amplitude spectrum: a model of drizzled HST noise.

    [R] docs/design.md §5.4 PROJECT DECISION (the authors' measured spectrum is not
    redistributable). The model's pixel correlation function on the periodic
    ``npix`` grid is::

        c(dx, dy) = (1 - f) * rho_d(dx) * rho_d(dy) + f * exp(-(dx^2 + dy^2) / (2 l^2))

    with ``rho_d`` the 1-D drizzle correlation of :func:`drizzle_correlation_1d`
    (white noise convolved with the drop-plus-pixel footprint, separable in x
    and y) and a broad component of variance fraction ``f`` and length ``l``
    (low-k excess power of real blank fields: sky and flat-field residuals).
    The power spectrum is ``P = Re FFT2(c)`` (clipped at 0) and the amplitude
    is ``sqrt(P)``. With the defaults the synthesised maps have lag-1
    correlation 0.280 in x and y, lag 2 0.038 and lag 3 0.034 (docs/design.md §5.4:
    0.28, 0.03-0.04), and the power falls about 5x from low to high k.

    The DC amplitude is then set to ``dc_offset_rms * sqrt(2 * sum of the
    other P)``, so that :func:`coloured_noise` maps carry a random constant
    offset of rms ``dc_offset_rms`` map-rms (docs/design.md §5.4, §9 #26: about 1.1).

    Args:
        npix: map side, pixels.
        pixfrac: drizzle drop side, output pixels.
        broad_fraction: variance fraction ``f`` of the broad component, in [0, 1).
        broad_length_pix: correlation length ``l`` of the broad component, pixels.
        dc_offset_rms: rms of the constant offset, in map-rms units (>= 0).

    Returns:
        float32 array ``(npix, npix)``, non-negative amplitudes, unshifted FFT
        order (DC at ``[0, 0]``), arbitrary overall scale.
    """
    if not 0.0 <= broad_fraction < 1.0:
        raise ValueError(f"broad_fraction must be in [0, 1), got {broad_fraction}")
    lag = np.minimum(np.arange(npix), npix - np.arange(npix)).astype(np.float64)
    rho = np.zeros(npix)
    short = drizzle_correlation_1d(pixfrac, max_lag=int(np.ceil(1.0 + pixfrac)))
    rho[: short.size] = short
    rho[npix - short.size + 1:] = short[1:][::-1]
    drizzle = np.outer(rho, rho)
    broad = np.exp(-(lag[:, None] ** 2 + lag[None, :] ** 2) / (2.0 * broad_length_pix ** 2))
    corr = (1.0 - broad_fraction) * drizzle + broad_fraction * broad
    power = np.clip(np.real(np.fft.fft2(corr)), 0.0, None)
    power[0, 0] = 0.0
    power[0, 0] = 2.0 * dc_offset_rms ** 2 * power.sum()  # see noise_fields
    return np.sqrt(power).astype(np.float32)


def load_noise_spectrum(path, npix=conventions.NPIX):
    """Load a measured amplitude spectrum (``.npy``) written by the tool.

    Args:
        path: ``.npy`` file holding an ``(npix, npix)`` array of Fourier
            amplitudes in unshifted FFT order (DC at ``[0, 0]``).
        npix: expected map side, pixels.

    Returns:
        float32 array ``(npix, npix)``.

    Raises:
        InputError: if the file is missing or unreadable, or the array has the
            wrong shape, non-finite or negative values, or no power.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise InputError(f"noise spectrum {path!r} does not exist")
    try:
        spectrum = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"noise spectrum {path!r} is not a readable .npy array: {err}") from None
    if spectrum.shape != (npix, npix):
        raise InputError(f"noise spectrum {path!r} has shape {spectrum.shape}; "
                         f"expected ({npix}, {npix})")
    spectrum = spectrum.astype(np.float64)
    if not np.all(np.isfinite(spectrum)) or np.any(spectrum < 0):
        raise InputError(f"noise spectrum {path!r} must hold finite amplitudes >= 0")
    spectrum_ac = spectrum.copy()
    spectrum_ac[0, 0] = 0.0
    if not np.any(spectrum_ac > 0):
        raise InputError(f"noise spectrum {path!r} has no power outside the DC term")
    return spectrum.astype(np.float32)


def _per_example_normals(seeds, count):
    """``count`` standard normals per example seed: ``(B, count)`` float32."""
    seeds = tf.cast(seeds, tf.int64)
    return tf.map_fn(lambda s: tf.random.stateless_normal([count], s), seeds,
                     fn_output_signature=tf.TensorSpec([count], tf.float32))


def noise_fields(seeds, spectrum):
    """White and coloured unit-rms noise maps from one draw per example.

    One vector of normals is drawn per example seed. Its first ``n * n``
    values, reshaped, are the white map. All of them make the half-plane
    Fourier modes ``A * (z0 + i z1)`` (``A`` the amplitude spectrum) of a
    real field synthesised with ``irfft2d``, i.e. a Hermitian completion as
    in the original's ``make_real_noise`` (docs/design.md §5.4, the variant preferred
    for fidelity); the field is divided by its own standard deviation, so the
    DC term survives as a constant offset (docs/design.md §5.4, §9 #26). For a spectrum
    whose DC amplitude is ``A0``, the offset has rms
    ``A0 / sqrt(2 * sum_{k != 0} A_k^2)`` map-rms.

    Args:
        seeds: ``(B, 2)`` int32/int64 per-example stateless seeds.
        spectrum: ``(n, n)`` Fourier amplitudes, unshifted FFT order.

    Returns:
        ``(white, coloured)``, each ``(B, n, n)`` float32, in units of the
        map rms (the coloured map's std over its pixels is 1).
    """
    spectrum = tf.convert_to_tensor(spectrum, tf.float32)
    npix = spectrum.shape[-1]
    half = npix // 2 + 1
    z = _per_example_normals(seeds, 2 * npix * half)
    white = tf.reshape(z[:, : npix * npix], [-1, npix, npix])
    z = tf.reshape(z, [-1, 2, npix, half])
    amp = spectrum[:, :half]
    field = tf.signal.irfft2d(tf.complex(z[:, 0] * amp, z[:, 1] * amp), fft_length=[npix, npix])
    std = tf.math.reduce_std(field, axis=[1, 2], keepdims=True)
    return white, tf.math.divide_no_nan(field, std)


def coloured_noise(seeds, spectrum):
    """Coloured Gaussian noise maps with unit rms (docs/design.md §5.4).

    Args:
        seeds: ``(B, 2)`` int32/int64 per-example stateless seeds.
        spectrum: ``(n, n)`` Fourier amplitudes, unshifted FFT order, e.g.
            :func:`default_noise_spectrum` or :func:`load_noise_spectrum`.

    Returns:
        ``(B, n, n)`` float32 maps, std 1 over each map, each with a random
        constant offset set by the DC amplitude.
    """
    return noise_fields(seeds, spectrum)[1]


def lag_correlations(maps, max_lag=3):
    """Pixel correlation coefficients at lags 1..max_lag along x and y.

    Args:
        maps: ``(B, n, n)`` or ``(n, n)`` array-like of noise maps,
            ``[row, col]`` = ``[y, x]``.
        max_lag: largest lag, pixels.

    Returns:
        dict ``{"x": array (max_lag,), "y": array (max_lag,)}``: the
        correlation at lags 1..max_lag, each map's mean removed first,
        averaged over the maps (float64, dimensionless).
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    maps = maps - maps.mean(axis=(1, 2), keepdims=True)
    var = np.mean(maps ** 2)
    out = {"x": [], "y": []}
    for lag in range(1, max_lag + 1):
        out["x"].append(np.mean(maps[:, :, lag:] * maps[:, :, :-lag]) / var)
        out["y"].append(np.mean(maps[:, lag:, :] * maps[:, :-lag, :]) / var)
    return {k: np.array(v) for k, v in out.items()}


def cosmic_ray_events(seeds, npix=conventions.NPIX, ray_count=(0, 20), ray_length=(1, 20),
                      ray_value=(0.3, 1.0), hot_count=(0, 100), hot_value=(0.1, 1.0)):
    """Cosmic rays and hot pixels as sparse pixel events (docs/design.md §5.5 [R]).

    [R] docs/design.md §5.5 (invented numbers): per map ``U{ray_count}`` rays, each of
    ``U{ray_length}`` pixels grown friends-of-friends: pixel ``t`` is a random
    8-neighbour of a uniformly chosen earlier pixel of the same ray (it may
    fall on an already selected pixel). The start pixel is uniform over the
    map. Ray pixels get values ``U(ray_value)``; ``U{hot_count}`` hot pixels,
    uniform over the map, get ``U(hot_value)``. Pixels that walk off the map
    are dropped (value 0). Values are divided by the map's largest event
    value, so the rendered map has max 1 (an empty map stays 0).

    Vectorised over the batch, the rays and the hot pixels; the walk is a
    static loop of ``ray_length[1] - 1`` steps over ``(B, rays)`` tensors.

    Args:
        seeds: ``(B, 2)`` int per-example stateless seeds.
        npix: map side, pixels.
        ray_count, ray_length, hot_count: inclusive integer ranges.
        ray_value, hot_value: value ranges, in units of the map max.

    Returns:
        dict of ``(B, E)`` tensors with ``E = max rays * max length + max hot``:
        ``"rows"``, ``"cols"`` (int32 pixel indices, in range) and ``"values"``
        (float32, 0 for inactive or off-map events).
    """
    max_rays, max_len, max_hot = int(ray_count[1]), int(ray_length[1]), int(hot_count[1])
    seeds = tf.cast(seeds, tf.int64)
    n_u = 2 + max_rays * (3 + 3 * max_len) + 3 * max_hot

    u = uniforms(seeds, n_u)
    batch = tf.shape(seeds)[0]

    def take(start, size):
        return u[:, start:start + size], start + size

    def uniform_int(uu, lo, hi):
        return tf.cast(tf.floor(uu * (hi - lo + 1)), tf.int32) + int(lo)

    pos = 0
    uu, pos = take(pos, 2)
    n_rays = uniform_int(uu[:, 0], *ray_count)
    n_hot = uniform_int(uu[:, 1], *hot_count)
    uu, pos = take(pos, 2 * max_rays)
    start = tf.reshape(uniform_int(uu, 0, npix - 1), [batch, max_rays, 2])
    uu, pos = take(pos, max_rays)
    lengths = uniform_int(uu, *ray_length)
    uu, pos = take(pos, max_rays * max_len)
    values_ray = lerp(tf.reshape(uu, [batch, max_rays, max_len]), ray_value)
    uu, pos = take(pos, max_rays * max_len)
    parent_u = tf.reshape(uu, [batch, max_rays, max_len])
    uu, pos = take(pos, max_rays * max_len)
    rows, cols = _walk(start, parent_u, tf.reshape(uu, [batch, max_rays, max_len]), max_len)
    active = ((tf.range(max_len)[None, None, :] < lengths[:, :, None])
              & (tf.range(max_rays)[None, :, None] < n_rays[:, None, None]))

    uu, pos = take(pos, 3 * max_hot)
    hot = tf.reshape(uu, [batch, max_hot, 3])
    hot_rows, hot_cols = uniform_int(hot[..., 0], 0, npix - 1), uniform_int(hot[..., 1], 0, npix - 1)
    hot_values = lerp(hot[..., 2], hot_value)
    hot_active = tf.range(max_hot)[None, :] < n_hot[:, None]

    rows = tf.concat([tf.reshape(rows, [batch, -1]), hot_rows], axis=1)
    cols = tf.concat([tf.reshape(cols, [batch, -1]), hot_cols], axis=1)
    values = tf.concat([tf.reshape(values_ray, [batch, -1]), hot_values], axis=1)
    active = tf.concat([tf.reshape(active, [batch, -1]), hot_active], axis=1)
    on_map = (rows >= 0) & (rows < npix) & (cols >= 0) & (cols < npix)
    values = tf.where(active & on_map, values, 0.0)
    peak = tf.reduce_max(values, axis=1, keepdims=True)
    return {
        "rows": tf.clip_by_value(rows, 0, npix - 1),
        "cols": tf.clip_by_value(cols, 0, npix - 1),
        "values": tf.math.divide_no_nan(values, peak),
    }


def _walk(start, parent_u, neighbour_u, max_len):
    """Friends-of-friends ray pixels: each is an 8-neighbour of an earlier pixel of its ray.

    Args:
        start: ``(B, R, 2)`` int32 start pixels (row, col).
        parent_u, neighbour_u: ``(B, R, L)`` U[0, 1) draws choosing the
            earlier pixel and the neighbour direction of pixel ``t``.
        max_len: ``L``, the most pixels of a ray.

    Returns:
        ``(rows, cols)``, each ``(B, R, L)`` int32 (possibly off the map).
    """
    # 8 neighbours: index 0..7 -> (dr, dc) skipping (0, 0).
    neighbour = tf.minimum(tf.cast(tf.floor(neighbour_u * 8.0), tf.int32), 7)
    neighbour = tf.where(neighbour >= 4, neighbour + 1, neighbour)
    d_row, d_col = neighbour // 3 - 1, neighbour % 3 - 1
    rows, cols = [start[..., 0]], [start[..., 1]]
    for t in range(1, max_len):
        parent = tf.minimum(tf.cast(tf.floor(parent_u[:, :, t] * t), tf.int32), t - 1)
        prev_rows, prev_cols = tf.stack(rows, axis=-1), tf.stack(cols, axis=-1)
        rows.append(tf.gather(prev_rows, parent, batch_dims=2) + d_row[:, :, t])
        cols.append(tf.gather(prev_cols, parent, batch_dims=2) + d_col[:, :, t])
    return tf.stack(rows, axis=-1), tf.stack(cols, axis=-1)


def render_events(rows, cols, values, npix=conventions.NPIX):
    """Rasterise sparse pixel events; overlapping events keep the larger value.

    Args:
        rows, cols: ``(B, E)`` int pixel indices in ``[0, npix)``.
        values: ``(B, E)`` float32 event values (>= 0; 0 = no event).
        npix: map side, pixels.

    Returns:
        ``(B, npix, npix, 1)`` float32 map.
    """
    rows = tf.cast(rows, tf.int32)
    cols = tf.cast(cols, tf.int32)
    values = tf.convert_to_tensor(values, tf.float32)
    batch, events = tf.shape(values)[0], tf.shape(values)[1]
    b = tf.broadcast_to(tf.range(batch)[:, None], [batch, events])
    index = tf.reshape(tf.stack([b, rows, cols], axis=-1), [-1, 3])
    canvas = tf.zeros([batch, npix, npix], tf.float32)
    out = tf.tensor_scatter_nd_max(canvas, index, tf.reshape(values, [-1]))
    return out[..., None]
