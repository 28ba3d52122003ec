"""The tf.data pipeline: online training stream and frozen validation/test sets.

One canonical example dict flows through every stage (docs/design.md §11 rule 1);
its keys are :data:`EXAMPLE_KEYS`. Each stage takes the dict of a batch and
returns it with keys added or replaced; only the last step,
:func:`to_supervised`, turns it into ``(images, params)`` for ``model.fit``::

    seed_stage -> simulate_stage -> observe_stage -> to_supervised
    (index, seed)  (arcs, params,    (image, params   (image, params)
                    magnification..)  shifted, mask,
                                      draws)

- ``"train"`` (docs/design.md §1 step 2, §7.2): an endless stream of batches; batch
  ``step`` holds examples ``step * B ... step * B + B - 1`` of the split's
  seed stream (:func:`ensai_tf.data.simulate.example_seeds`), so a resumed
  run continues with ``start_step``. With ``data.arcs_dir`` the noise-free
  arcs are read from :func:`pregenerate_arcs` output (shuffled per epoch,
  repeated) and only :func:`ensai_tf.data.observe.observe` runs online, as
  the paper did (docs/design.md §1 steps 1-2).
- ``"validation"`` and ``"test"`` (docs/design.md §3.7 [R], §7.3, §8.3): fixed seeds,
  disjoint source pools, ``observe(training=False)`` (f_min 0.98), simulated
  once and materialised to an on-disk cache keyed by everything that
  affects the data; the per-example draws are stored too (docs/design.md §11
  rule 3), so any example can be re-created (:func:`recreate_examples`) and
  inspected.

The pieces live in their own modules and are re-exported here:
:mod:`~ensai_tf.data.stages` (the stages), :mod:`~ensai_tf.data.examples`
(online example streams), :mod:`~ensai_tf.data.arrays` (checksummed array
folders), :mod:`~ensai_tf.data.cache` (frozen validation/test splits) and
:mod:`~ensai_tf.data.arcstore` (pre-generated arcs).

Randomness is stateless throughout (docs/design.md §11 rule 4): example ``i`` of a
split depends only on ``example_seeds(seed, split, i, 1)``, never on the
batch it sits in. Observation effects use ``fold_in(seed_i,
OBSERVE_STREAM)``, a stream disjoint from the simulator's.
"""

import os
import pathlib

import numpy as np
import tensorflow as tf

from ensai_tf import config as config_lib
from ensai_tf.data.arcstore import ORDER_STREAM, pregenerate_arcs, stored_arcs_dataset
from ensai_tf.data.arrays import (CACHE_FORMAT, ArrayStreams, CacheError, flatten_example,
                                  load_cache, progress_bar, read_manifest, verify_cache)
from ensai_tf.data.cache import (PROGRESS_MIN_EXAMPLES, cache_key, cached_dataset, data_fingerprint,
                                 default_cache_dir, find_split_cache, materialise_split)
from ensai_tf.data.examples import (SPLITS, check_split, example_dataset, positive_int,
                                    recreate_examples, resolve_config)
from ensai_tf.data.stages import (EXAMPLE_KEYS, OBSERVE_STREAM, clean_stage, load_stamps,
                                  observe_seeds, observe_stage, parallel_map, seed_stage,
                                  simulate_stage, to_supervised)
from ensai_tf.errors import InputError
from ensai_tf.model_dir import file_sha256

__all__ = [
    "SPLITS",
    "EXAMPLE_KEYS",
    "CACHE_FORMAT",
    "OBSERVE_STREAM",
    "ORDER_STREAM",
    "PROGRESS_MIN_EXAMPLES",
    "CacheError",
    "ArrayStreams",
    "make_dataset",
    "example_dataset",
    "seed_stage",
    "simulate_stage",
    "observe_stage",
    "clean_stage",
    "to_supervised",
    "observe_seeds",
    "load_stamps",
    "data_fingerprint",
    "cache_key",
    "default_cache_dir",
    "materialise_split",
    "find_split_cache",
    "verify_cache",
    "load_cache",
    "recreate_examples",
    "pregenerate_arcs",
    "stored_arcs_dataset",
    "file_sha256",
    "flatten_example",
    "progress_bar",
]


def make_dataset(split, config=None, seed=None, batch_size=None, cache_dir=None,
                 with_info=False, start_step=0, progress=None):
    """A ``tf.data.Dataset`` of ``(images, params)`` batches ready for ``model.fit``.

    Args:
        split: ``"train"`` (endless, online, docs/design.md §7.2) or ``"validation"`` /
            ``"test"`` (fixed, cached on disk; docs/design.md §3.7 [R]).
        config: :class:`ensai_tf.config.ExperimentConfig` (default: paper).
        seed: user seed (default ``config.data.seed``).
        batch_size: examples per batch (default ``train.batch_size`` for
            train, ``evaluate.batch_size`` otherwise).
        cache_dir: where validation/test caches live (default
            :func:`default_cache_dir`).
        with_info: also return a dict describing the data (split, seed,
            batch size, size, cache folder, key).
        start_step: first batch of the train stream (resume a run).
        progress: progress bar while building a cache (default: for big ones).

    Returns:
        The dataset of ``(images (B, 192, 192, 1) float32, params (B, 5)
        float32)``, labels in arcsec/dimensionless (docs/design.md §0); ``(B, 7)``
        with the shear appended when ``model.shear_outputs``; with
        ``with_info``, ``(dataset, info)``.

    Raises:
        InputError: unknown split, bad sizes or seeds, unusable arcs folder.
    """
    check_split(split)
    cfg, seed = resolve_config(config, seed)
    default_batch = cfg.train.batch_size if split == "train" else cfg.evaluate.batch_size
    batch = positive_int("batch_size", default_batch if batch_size is None else batch_size)
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) \
            or start_step < 0:
        raise InputError(f"start_step must be a non-negative integer, got {start_step!r}")
    n_targets = config_lib.target_count(cfg)
    info = {"split": split, "seed": seed, "batch_size": batch, "n_targets": n_targets}
    if split == "train":
        ds = _train_dataset(cfg, seed, batch, int(start_step), n_targets, info)
    else:
        if start_step:
            raise InputError(f"start_step applies to the train stream only, not {split!r}")
        path = materialise_split(split, cfg, seed, cache_dir=cache_dir, progress=progress)
        manifest = read_manifest(path)
        ds = parallel_map(cached_dataset(path, batch, n_targets),
                          lambda ex: to_supervised(ex, n_targets))
        info.update(size=manifest["size"], cache_path=str(path), key=manifest["key"])
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return (ds, info) if with_info else ds


def _train_dataset(cfg, seed, batch, start_step, n_targets, info):
    """The endless ``(images, params)`` train stream, online or from ``data.arcs_dir``."""
    if cfg.data.arcs_dir:
        arcs_dir = pathlib.Path(os.path.expanduser(cfg.data.arcs_dir))
        stream = stored_arcs_dataset(arcs_dir, cfg, seed, batch, start_step)
        stream = parallel_map(stream, lambda ex: observe_stage(ex, cfg, training=True))
        info["arcs_dir"] = str(arcs_dir)
    else:
        stream = example_dataset("train", cfg, seed, start=start_step * batch,
                                 batch_size=batch, training=True)
    info.update(size=None, start_step=start_step)
    return parallel_map(stream, lambda ex: to_supervised(ex, n_targets))
