"""Stateless per-example random draws shared by the simulator and the observation effects.

docs/design.md §11 rule 4: every example owns a ``(2,)`` int64 seed and every
draw of that example is a pure function of it, so an example is the same
whatever batch it sits in. The helpers here are the one home of

- seed folding (:func:`fold_seed` for one seed, :func:`fold_seeds` for a
  ``(B, 2)`` batch of them),
- uniform draws per example (:func:`uniforms`),
- mapping ``U[0, 1)`` draws onto a ``(low, high)`` range (:func:`lerp`) or
  onto the integers of an inclusive range (:func:`randint`).

Per-example work uses ``tf.map_fn``, not ``tf.vectorized_map``: pfor has no
converter for the stateless RNG ops and would fall back to a (slower,
warning) loop anyway.

Example:
    >>> import tensorflow as tf
    >>> seeds = fold_seeds(tf.constant([[1, 2], [3, 4]], tf.int64), 0)
    >>> u = uniforms(seeds, 3)
    >>> tuple(lerp(u, (2.0, 4.0)).shape)
    (2, 3)
"""

import tensorflow as tf

__all__ = ["fold_seed", "fold_seeds", "uniforms", "lerp", "randint"]


def fold_seed(seed, data):
    """``tf.random.fold_in(seed, data)`` with int64 data, so the result is int64.

    Args:
        seed: ``(2,)`` int64 seed.
        data: int scalar (Python int, enum member or int tensor).

    Returns:
        ``(2,)`` int64 derived seed.
    """
    return tf.random.fold_in(seed, tf.cast(data, tf.int64))


def fold_seeds(seeds, data):
    """``fold_in(seeds[i], data[i])`` for every example of a batch.

    Args:
        seeds: ``(B, 2)`` int per-example seeds (cast to int64).
        data: an int scalar (the same for every example) or a ``(B,)`` int
            tensor (one value per example); cast to int64.

    Returns:
        ``(B, 2)`` int64 seeds; row ``i`` depends only on ``seeds[i]`` and
        ``data[i]``.

    Example:
        >>> import tensorflow as tf
        >>> fold_seeds(tf.constant([[0, 1]]), 5).shape
        TensorShape([1, 2])
    """
    seeds = tf.cast(seeds, tf.int64)
    data = tf.broadcast_to(tf.cast(data, tf.int64), tf.shape(seeds)[:1])
    return tf.map_fn(lambda a: tf.random.fold_in(a[0], a[1]), (seeds, data),
                     fn_output_signature=tf.TensorSpec([2], tf.int64))


def uniforms(seeds, count):
    """``(B, count)`` float32 U[0, 1) draws, row ``i`` from ``seeds[i]`` only.

    Args:
        seeds: ``(B, 2)`` int64 per-example seeds.
        count: draws per example (Python int).

    Returns:
        ``(B, count)`` float32 tensor, one ``stateless_uniform`` call per example.
    """
    return tf.map_fn(lambda s: tf.random.stateless_uniform([count], s, dtype=tf.float32), seeds,
                     fn_output_signature=tf.TensorSpec([count], tf.float32))


def lerp(u, bounds):
    """Map ``U[0, 1)`` draws linearly onto ``[low, high)``: ``low + (high - low) * u``.

    Args:
        u: float tensor of U[0, 1) draws.
        bounds: ``(low, high)`` pair of Python numbers (a config range), in
            the unit of the result.

    Returns:
        tensor of the shape and dtype of ``u``.

    Example:
        >>> float(lerp(tf.constant(0.5), (1.0, 3.0)))
        2.0
    """
    lo, hi = (float(b) for b in bounds)
    return lo + (hi - lo) * u


def randint(u, bounds):
    """Integers uniform on ``{low, ..., high}`` (inclusive) from U[0, 1) draws.

    Args:
        u: float tensor of U[0, 1) draws.
        bounds: ``(low, high)`` pair of integers.

    Returns:
        int32 tensor of the shape of ``u``, clipped to ``high`` so float
        rounding of ``u`` near 1 never gives ``high + 1``.

    Example:
        >>> int(randint(tf.constant(0.99), (1, 5)))
        5
    """
    lo, hi = int(bounds[0]), int(bounds[1])
    return tf.minimum(tf.cast(tf.floor(u * (hi - lo + 1)), tf.int32) + lo, hi)
