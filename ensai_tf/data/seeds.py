"""Per-example seeds of the simulator (docs/design.md §11 rule 4).

Example ``i`` of a split has the seed ``fold_in([seed, SPLIT_IDS[split]], i)``
(:func:`example_seeds`); its candidate ``k`` uses ``fold_in(seed_i, k)``
(:func:`candidate_seeds`), and each candidate splits into the streams
:data:`LENS_STREAM`, :data:`SOURCE_STREAM`, :data:`PLACEMENT_STREAM` and
:data:`LENS_LIGHT_STREAM`. An example's image therefore depends on its seed
only, never on the batch it sits in.
"""

import numpy as np
import tensorflow as tf

from ensai_tf.data.draws import fold_seeds
from ensai_tf.errors import InputError

__all__ = [
    "SPLIT_IDS",
    "LENS_STREAM",
    "SOURCE_STREAM",
    "PLACEMENT_STREAM",
    "LENS_LIGHT_STREAM",
    "example_seeds",
    "candidate_seeds",
]


SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
"""Second word of every split's base seed (docs/design.md §11 rule 4)."""

LENS_STREAM = 0
"""Sub-stream of a candidate seed for the lens parameters."""
SOURCE_STREAM = 1
"""Sub-stream of a candidate seed for the source draws."""
PLACEMENT_STREAM = 2
"""Sub-stream of a candidate seed for the source position."""
LENS_LIGHT_STREAM = 3
"""Sub-stream of the accepted candidate seed for the lens light."""


def example_seeds(seed, split, start, count):
    """Per-example seeds of a split (docs/design.md §11 rule 4).

    Args:
        seed: user seed (Python int, >= 0; ``data.seed`` is added by callers).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        start: index of the first example (Python int or int scalar tensor).
        count: number of examples (Python int or int scalar tensor).

    Returns:
        ``(count, 2)`` int64 tensor; row ``i`` is
        ``tf.random.fold_in([seed, SPLIT_IDS[split]], start + i)`` with an
        int64 index, so it does not depend on ``start``/``count`` grouping.

    Raises:
        InputError: unknown split or a negative seed.
    """
    if split not in SPLIT_IDS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_IDS)}")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(SPLIT_IDS[split], tf.int64)])
    index = tf.cast(start, tf.int64) + tf.range(tf.cast(count, tf.int64), dtype=tf.int64)
    base = tf.broadcast_to(base[None], tf.stack([tf.size(index), 2]))
    return fold_seeds(base, index)


def candidate_seeds(seeds, attempt):
    """Seeds of candidate ``attempt`` (0-based) of each example: ``fold_in(seed_i, attempt)``.

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        attempt: candidate index, a Python int, an int scalar tensor or a
            ``(B,)`` int tensor (one index per example).

    Returns:
        ``(B, 2)`` int64 candidate seeds.
    """
    return fold_seeds(seeds, attempt)
