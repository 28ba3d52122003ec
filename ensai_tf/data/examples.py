"""Batches of canonical example dicts, simulated (and observed) online.

:func:`example_dataset` chains the stages of :mod:`ensai_tf.data.stages`
over a range of a split's seed stream; :func:`recreate_examples` re-makes
given examples from their seeds (docs/design.md §11 rule 3). Randomness is
stateless throughout (docs/design.md §11 rule 4): example ``i`` of a split
depends only on ``example_seeds(seed, split, i, 1)``, never on the batch it
sits in.
"""

import numpy as np
import tensorflow as tf

from ensai_tf import config as config_lib
from ensai_tf.data import simulate as simulate_lib
from ensai_tf.data.stages import (clean_stage, load_stamps, observe_stage, parallel_map,
                                  seed_stage, simulate_stage)
from ensai_tf.errors import InputError

__all__ = [
    "SPLITS",
    "INT64_MAX",
    "check_split",
    "resolve_config",
    "positive_int",
    "example_dataset",
    "simulate_and_observe",
    "recreate_examples",
]


SPLITS = tuple(simulate_lib.SPLIT_IDS)
"""Split names; their seed streams and source pools are disjoint (docs/design.md §3.7 [R])."""

INT64_MAX = np.iinfo(np.int64).max
"""Upper end of the ``tf.data`` ranges of an endless stream."""


def check_split(split):
    """Return ``split`` if it is one of :data:`SPLITS`.

    Raises:
        InputError: for an unknown split, listing the valid ones.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def resolve_config(config, seed):
    """The config (default: the paper preset) and the user seed (default ``data.seed``).

    Args:
        config: :class:`ensai_tf.config.ExperimentConfig` or None.
        seed: non-negative int or None.

    Returns:
        ``(config, seed)`` with ``seed`` a Python int.

    Raises:
        InputError: a config of another type or a negative or non-integer seed.
    """
    cfg = config if config is not None else config_lib.get_preset("paper")
    if not isinstance(cfg, config_lib.ExperimentConfig):
        raise InputError(f"config must be an ExperimentConfig, got {type(cfg).__name__}")
    seed = cfg.data.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0 \
            or seed > INT64_MAX:
        raise InputError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return cfg, int(seed)


def positive_int(name, value):
    """``int(value)`` if it is a positive integer (not a bool), else :class:`InputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def example_dataset(split, config=None, seed=None, count=None, start=0, batch_size=None,
                    observed=True, training=None, stamps=None):
    """Batches of canonical example dicts, simulated (and observed) online.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        config: :class:`ensai_tf.config.ExperimentConfig` (default: paper).
        seed: user seed (default ``config.data.seed``).
        count: number of examples, or None for an endless stream.
        start: index of the first example in the split's seed stream.
        batch_size: examples per batch (default ``config.data.sim_batch_size``);
            the last batch of a finite stream may be smaller.
        observed: apply :func:`observe_stage`; False gives :func:`clean_stage`.
        training: observation mode (default: ``split == "train"``).
        stamps: the split's stamps (default: :func:`load_stamps`).

    Returns:
        ``tf.data.Dataset`` of dicts (see :data:`EXAMPLE_KEYS`); example
        ``index`` is the same whatever ``batch_size`` or ``start``.
    """
    check_split(split)
    cfg, seed = resolve_config(config, seed)
    batch = positive_int("batch_size", cfg.data.sim_batch_size if batch_size is None else batch_size)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise InputError(f"start must be a non-negative integer, got {start!r}")
    training = split == "train" if training is None else bool(training)
    stamps = load_stamps(split, cfg) if stamps is None else np.asarray(stamps, np.float32)
    simulate_lib.check_feasible(cfg)
    if count is None:
        # Endless: a static batch size, so every batch has a known shape.
        first = tf.data.Dataset.range(int(start), INT64_MAX, batch)
        ds = parallel_map(first, lambda s: seed_stage(s, batch, seed, split))
    else:
        # Finite: (start, count) pairs through ONE traced map; the last batch
        # may be smaller, so the batch dimension is left dynamic.
        count = positive_int("count", count)
        starts = np.arange(int(start), int(start) + count, batch, dtype=np.int64)
        counts = np.minimum(batch, int(start) + count - starts)
        ds = parallel_map(tf.data.Dataset.from_tensor_slices((starts, counts)),
                          lambda s, c: seed_stage(s, c, seed, split))
    return simulate_and_observe(ds, cfg, stamps, observed, training)


def simulate_and_observe(ds, cfg, stamps, observed, training):
    """Add the simulation, then the observation (or the clean stage), to seed batches.

    Args:
        ds: dataset of ``{"index", "seed"}`` batches (:func:`~ensai_tf.data.stages.seed_stage`).
        cfg: :class:`ensai_tf.config.ExperimentConfig`.
        stamps: ``(N, S, S)`` float32 source stamps of the split.
        observed: apply :func:`~ensai_tf.data.stages.observe_stage`, else
            :func:`~ensai_tf.data.stages.clean_stage`.
        training: observation mode (mask f_min 0.75 if True, else 0.98).

    Returns:
        ``tf.data.Dataset`` of canonical example dicts.
    """
    stamps_t = tf.constant(stamps, tf.float32)
    ds = parallel_map(ds, lambda ex: simulate_stage(ex, cfg, stamps_t))
    if observed:
        return parallel_map(ds, lambda ex: observe_stage(ex, cfg, training))
    return parallel_map(ds, clean_stage)


def recreate_examples(split, indices, config=None, seed=None, observed=True, training=None):
    """Re-simulate given examples of a split from their seeds (docs/design.md §11 rule 3).

    Args:
        split: split name.
        indices: example indices in the split's seed stream.
        config: the config the data were made with.
        seed: user seed (default ``config.data.seed``).
        observed: apply the observation effects.
        training: observation mode (default: ``split == "train"``).

    Returns:
        canonical dict of numpy arrays, one row per index, in the given
        order, including the bulky ``"arcs"`` and ``"mask"``.
    """
    check_split(split)
    cfg, seed = resolve_config(config, seed)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size == 0 or np.any(indices < 0):
        raise InputError(f"indices must be non-empty and non-negative, got {indices.tolist()}")
    training = split == "train" if training is None else bool(training)
    ds = parallel_map(tf.data.Dataset.from_tensor_slices(indices),
                      lambda i: seed_stage(i, 1, seed, split))
    ds = simulate_and_observe(ds, cfg, load_stamps(split, cfg), observed, training)
    rows = list(ds.as_numpy_iterator())
    return tf.nest.map_structure(lambda *a: np.concatenate(a), *rows)
