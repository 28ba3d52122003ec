"""Integer re-centring shift of the lens centre (docs/design.md §5.2).

The only observation effect that changes the labels: :func:`shift_params`
moves ``x_L``, ``y_L`` by exactly ``pixel_scale`` per pixel of shift.
"""

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data.draws import randint
from ensai_tf.data.effects import base

__all__ = [
    "kept_flux_fraction",
    "sample_shift",
    "apply_shift",
    "shift_params",
]


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
    u, _, _ = base.effect_draws(seeds, base.Effect.SHIFT, n_uniform=2 * k)
    target = tf.reshape(randint(u, cfg.shift_pix), [-1, k, 2])
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
