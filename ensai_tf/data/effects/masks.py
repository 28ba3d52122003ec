"""Masked discs with exact zeros, under the arc-flux rule of docs/design.md §5.6."""

import math

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data import noise
from ensai_tf.data.draws import fold_seed, randint
from ensai_tf.data.effects import base

__all__ = [
    "sample_masks",
    "mask_from_draws",
    "apply_masks",
]


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
        return tf.stack([tf.random.stateless_uniform([n_u], fold_seed(s, start + k))
                         for k in range(size)])

    u = tf.map_fn(draw, sub, fn_output_signature=tf.TensorSpec([size, n_u], tf.float32))
    counts = randint(u[..., 0], cfg.mask_count)
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
    arcs = tf.convert_to_tensor(arcs, tf.float32)
    batch = tf.shape(arcs)[0]
    u, _, sub = base.effect_draws(seeds, base.Effect.MASKS, n_uniform=1)
    eligible = ((tf.reduce_min(arcs, axis=[1, 2, 3]) < 0.1)
                & (tf.reduce_max(arcs, axis=[1, 2, 3]) > 0.9))
    arcs_flat = tf.reshape(arcs, [batch, npix * npix])
    problem = {
        "sub": sub, "arcs_flat": arcs_flat, "total": tf.reduce_sum(arcs_flat, axis=1),
        "attempt": eligible & (u[:, 0] < cfg.mask_prob), "cfg": cfg,
        "f_min": cfg.mask_min_flux_frac if training else cfg.eval_mask_min_flux_frac,
        "npix": npix, "n_max": n_max, "max_tries": max_tries, "pixel_scale": pixel_scale,
    }
    attempt = problem["attempt"]
    zeros_b = tf.zeros([batch], tf.int32)
    state = _mask_step(problem, 0, 1, (tf.zeros([batch], tf.bool), zeros_b,
                                       tf.zeros([batch, n_max, 2], tf.float32), zeros_b))
    if n_chunks > 0:
        def cond(c, state):
            return (c < n_chunks) & tf.reduce_any(attempt & ~state[0])

        def body(c, state):
            return c + 1, _mask_step(problem, 1 + c * chunk, chunk, state)

        _, state = tf.while_loop(cond, body, (tf.constant(0), state))
    done, count, centres, tries = state
    return {"apply_masks": attempt & done, "mask_count": count, "mask_centres": centres,
            "mask_tries": tries}


def _mask_step(problem, start, size, state):
    """Evaluate tries ``start .. start + size - 1`` and keep each example's first success.

    Args:
        problem: dict of the batch's fixed inputs built by :func:`sample_masks`.
        start, size: first try and number of tries.
        state: ``(done, count, centres, tries)`` so far.

    Returns:
        the updated ``(done, count, centres, tries)``.
    """
    done, count, centres, tries = state
    cfg, npix, max_tries = problem["cfg"], problem["npix"], problem["max_tries"]
    total = problem["total"]
    counts, cen, active = _mask_tries(problem["sub"], start, size, problem["n_max"], cfg,
                                      npix * problem["pixel_scale"])
    lost = _masked_flux(problem["arcs_flat"], cen, active, npix, problem["pixel_scale"],
                        cfg.mask_radius_arcsec)
    try_index = start + tf.range(size)
    ok = ((total[:, None] - lost >= problem["f_min"] * total[:, None])
          & (try_index < max_tries)[None, :])
    pick = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    still = problem["attempt"] & ~done
    take = still & tf.reduce_any(ok, axis=1)
    active_pick = tf.gather(active, pick, batch_dims=1)
    cen_pick = tf.where(active_pick[..., None], tf.gather(cen, pick, batch_dims=1), 0.0)
    count = tf.where(take, tf.gather(counts, pick, batch_dims=1), count)
    centres = tf.where(take[:, None, None], cen_pick, centres)
    used = tf.where(take, start + pick + 1, tf.minimum(start + size, max_tries))
    tries = tf.where(still, used, tries)
    return done | take, count, centres, tries


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
