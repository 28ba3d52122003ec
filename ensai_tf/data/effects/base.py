"""What every observation effect shares: its seed stream and per-image broadcasting.

docs/design.md §11 rule 3: each effect is a pair

- ``sample_<effect>(seeds, ..., cfg) -> draws``: a dict of ``(B, ...)``
  tensors, a pure function of the per-example seeds (and, for the shift and
  the masks, of the clean arcs). Every effect derives its own stream as
  ``fold_in(seed_i, Effect.<EFFECT>)`` (:func:`effect_draws`) and draws with
  ``tf.random.stateless_*`` one example at a time (``tf.map_fn``), so example
  ``i``'s draws never depend on the batch it sits in.
- ``apply_<effect>(images, draws, ...) -> images``: deterministic given the
  draws; per-example on/off through ``tf.where`` on a drawn ``apply_<effect>``
  flag, never Python branching on tensor values.
"""

import enum

import tensorflow as tf

from ensai_tf.data.draws import fold_seed

__all__ = ["Effect", "effect_draws", "per_image", "renormalise_max"]


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


def effect_draws(seeds, effect, n_uniform=0, n_normal=0):
    """Scalar draws of one effect, one stateless call per example.

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        effect: the :class:`Effect` whose stream is drawn.
        n_uniform: U[0, 1) draws per example.
        n_normal: N(0, 1) draws per example.

    Returns:
        ``(u, z, sub)``: ``(B, n_uniform)`` U[0, 1), ``(B, n_normal)``
        N(0, 1) and ``(B, 2)`` int64 sub-seeds for bulk draws, all from
        ``s_i = fold_in(seed_i, effect)`` (streams ``fold_in(s_i, 0|1|2)``).
    """
    seeds = tf.cast(seeds, tf.int64)
    n_u, n_z = max(int(n_uniform), 1), max(int(n_normal), 1)

    def draw(seed):
        s = fold_seed(seed, int(effect))
        return (tf.random.stateless_uniform([n_u], fold_seed(s, 0)),
                tf.random.stateless_normal([n_z], fold_seed(s, 1)),
                fold_seed(s, 2))

    u, z, sub = tf.map_fn(draw, seeds, fn_output_signature=(
        tf.TensorSpec([n_u], tf.float32), tf.TensorSpec([n_z], tf.float32),
        tf.TensorSpec([2], tf.int64)))
    return u[:, :n_uniform], z[:, :n_normal], sub


def per_image(flag_or_value, rank=4):
    """Reshape a ``(B,)`` tensor to broadcast against ``(B, ...)`` of ``rank``.

    Args:
        flag_or_value: ``(B,)`` tensor (a per-example flag or value).
        rank: rank of the tensors it is broadcast against.

    Returns:
        the tensor reshaped to ``(B, 1, ..., 1)``.
    """
    return tf.reshape(flag_or_value, [-1] + [1] * (rank - 1))


def renormalise_max(images):
    """Divide each image by its maximum (an all-zero image stays zero).

    Args:
        images: ``(B, n, n, C)`` float images.

    Returns:
        ``(B, n, n, C)`` images with maximum 1 (or all zero).
    """
    return tf.math.divide_no_nan(images, tf.reduce_max(images, axis=[1, 2, 3], keepdims=True))

