"""Pre-generated noise-free arcs for the training stream (docs/design.md §1 steps 1-2).

The paper generated arcs offline and applied the observational effects per
training step; :func:`pregenerate_arcs` stores arcs once and
:func:`stored_arcs_dataset` streams them in a fresh stateless order every
epoch, for ``data.arcs_dir``.
"""

import os
import pathlib
import shutil

import numpy as np
import tensorflow as tf

from ensai_tf import atomic
from ensai_tf.data.arrays import (CACHE_FORMAT, CacheError, load_cache, materialise, verify_cache,
                                  write_manifest)
from ensai_tf.data.cache import SIM_SECTIONS, cache_key, data_fingerprint
from ensai_tf.data.examples import (INT64_MAX, check_split, example_dataset, positive_int,
                                    resolve_config)
from ensai_tf.data.stages import load_stamps, parallel_map, seed_stage
from ensai_tf.errors import InputError

__all__ = [
    "ORDER_STREAM",
    "pregenerate_arcs",
    "stored_arcs_dataset",
]


ORDER_STREAM = 0x4F524452
"""Folded into the user seed for the per-epoch order of pre-generated arcs ("ORDR")."""


def pregenerate_arcs(out_dir, n, seed=None, config=None, split="train", batch_size=None,
                     overwrite=False, progress=True):
    """Simulate ``n`` noise-free arcs once and store them for online observation.

    docs/design.md §1 steps 1-2: the paper generated arcs offline and applied the
    observational effects per training step; ``data.arcs_dir`` pointing at
    this folder makes :func:`make_dataset` ("train") do the same. The folder
    holds ``arcs.npy`` ``(n, 192, 192, 1)`` float32, ``params.npy`` and the
    other simulator outputs, ``seed.npy``/``index.npy`` and a
    ``manifest.json`` with checksums and the simulation settings' key. It is
    written to a temporary sibling and renamed when complete.

    Args:
        out_dir: destination folder (new, empty, or ``overwrite``).
        n: number of arcs.
        seed: user seed (default ``config.data.seed``).
        config: :class:`ensai_tf.config.ExperimentConfig` (default: paper).
        split: source pool and seed stream (default ``"train"``).
        batch_size: simulation batch (default ``data.sim_batch_size``).
        overwrite: replace a non-empty ``out_dir``.
        progress: show a progress bar.

    Returns:
        ``pathlib.Path`` of the folder.

    Raises:
        InputError: bad ``n``, split, or a non-empty ``out_dir`` without
            ``overwrite``.
    """
    check_split(split)
    cfg, seed = resolve_config(config, seed)
    n = positive_int("n", n)
    out = pathlib.Path(os.path.expanduser(str(out_dir)))
    if out.exists() and not out.is_dir():
        raise InputError(f"arcs folder {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"arcs folder {str(out)!r} is not empty; choose a new folder or pass "
                         "overwrite=True")
    stamps = load_stamps(split, cfg)
    key = cache_key(split, cfg, seed, n, sections=SIM_SECTIONS, stamps=stamps)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_path(out)
    tmp.mkdir()
    try:
        ds = example_dataset(split, cfg, seed, count=n, batch_size=batch_size, observed=False,
                             stamps=stamps)
        # clean_stage's "image" is the arcs themselves and its mask all ones: store neither,
        # or the arcs would be on disk (and in memory when training) twice
        arrays = materialise(ds, tmp, n, progress, f"arcs {split}", ("mask", "image"))
        write_manifest(tmp, {"format": CACHE_FORMAT, "key": key, "kind": "arcs",
                             "split": split, "seed": seed, "size": n,
                             "fingerprint": data_fingerprint(cfg, SIM_SECTIONS),
                             "arrays": arrays})
        atomic.replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _arcs_manifest(arcs_dir, split, cfg):
    manifest = verify_cache(arcs_dir)
    if manifest is None or manifest.get("kind") != "arcs":
        raise CacheError(f"data.arcs_dir {str(arcs_dir)!r} holds no complete pre-generated arcs "
                         "(missing, partial or corrupt); create it with "
                         "ensai_tf.data.pipeline.pregenerate_arcs")
    if manifest["split"] != split:
        raise CacheError(f"data.arcs_dir {str(arcs_dir)!r} holds {manifest['split']!r} arcs, "
                         f"not {split!r} arcs")
    stamps = load_stamps(split, cfg)
    key = cache_key(split, cfg, manifest["seed"], manifest["size"], sections=SIM_SECTIONS,
                    stamps=stamps)
    if manifest["key"] != key:
        raise CacheError(f"data.arcs_dir {str(arcs_dir)!r} was generated with other simulation "
                         "settings (image/lens/source/simulate config, stamps or simulator code) "
                         "than the current config; regenerate it with pregenerate_arcs")
    return manifest


def stored_arcs_dataset(arcs_dir, cfg, seed, batch, start_step):
    """Endless batches of stored arcs in a fresh stateless order every epoch.

    Stream position ``p`` holds arc ``perm_e[p mod n]`` with epoch
    ``e = p // n`` and ``perm_e = argsort(U(fold_in(fold_in(seed,
    ORDER_STREAM), e)))``; its observation seeds come from position ``p``
    of the train seed stream, so an arc reused in another epoch is observed
    afresh, and resuming at ``start_step`` continues the same stream.
    """
    manifest = _arcs_manifest(arcs_dir, "train", cfg)
    n = int(manifest["size"])
    arrays = load_cache(arcs_dir, verify=False)  # just verified by _arcs_manifest
    bulky = {k: arrays.pop(k) for k in ("arcs", "lens_light") if k in arrays}
    arrays.pop("index")
    arrays.pop("seed")
    # folders written before the arcs were stored once also hold them as "image"; that copy
    # would otherwise become an in-memory constant of the whole set (4.4 GB for 30,000 arcs)
    arrays.pop("image", None)
    small = {k: tf.constant(np.asarray(v)) for k, v in arrays.items()}
    order_seed = tf.random.fold_in(tf.constant([int(seed), 0], tf.int64),
                                   tf.constant(ORDER_STREAM, tf.int64))
    first = start_step * batch
    first_epoch, offset = divmod(first, n)

    def epoch_order(epoch):
        u = tf.random.stateless_uniform([n], tf.random.fold_in(order_seed, epoch))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(u, stable=True))

    order = tf.data.Dataset.range(first_epoch, INT64_MAX).flat_map(epoch_order)
    positions = tf.data.Dataset.range(first, INT64_MAX)
    ds = tf.data.Dataset.zip(positions, order.skip(offset)).batch(batch, drop_remainder=True)

    def read(index):
        # Disk reads only (no maths): a memory map gathers the rows in order.
        rows = np.asarray(index)
        return tuple(np.ascontiguousarray(bulky[k][rows]) for k in bulky)

    def build(pos, idx):
        example = seed_stage(pos[0], batch, seed, "train")
        for k, v in small.items():
            example[k] = tf.gather(v, idx)
        values = tf.numpy_function(read, [idx], [tf.float32] * len(bulky), stateful=False)
        for k, v in zip(bulky, values):
            example[k] = tf.ensure_shape(v, (batch,) + bulky[k].shape[1:])
        return example

    return parallel_map(ds, build)
