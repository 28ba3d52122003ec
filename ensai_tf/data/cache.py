"""Frozen validation/test splits, materialised once to an on-disk cache.

docs/design.md §3.7 [R], §7.3, §8.3: fixed seeds, disjoint source pools,
``observe(training=False)`` (f_min 0.98), simulated once and stored in a
folder keyed by everything that affects the data (:func:`cache_key`); the
per-example draws are stored too (docs/design.md §11 rule 3), so any example
can be re-created and inspected.
"""

import hashlib
import importlib
import json
import os
import pathlib
import shutil
import uuid
import warnings

import numpy as np
import tensorflow as tf

from ensai_tf import config as config_lib
from ensai_tf.conventions import NUM_PARAMS, SHEAR_NAMES
from ensai_tf.data.arrays import (BULKY_KEYS, CACHE_FORMAT, CacheError, materialise,
                                  read_manifest, verify_cache, write_manifest)
from ensai_tf.data.examples import check_split, example_dataset, positive_int, resolve_config
from ensai_tf.data.stages import load_stamps, parallel_map
from ensai_tf.errors import InputError

__all__ = [
    "PROGRESS_MIN_EXAMPLES",
    "SIM_SECTIONS",
    "DATA_SECTIONS",
    "SIM_CODE_MODULES",
    "CODE_MODULES",
    "TWO_BAND_CODE_MODULES",
    "default_cache_dir",
    "data_fingerprint",
    "cache_key",
    "materialise_split",
    "find_split_cache",
    "cached_dataset",
]


PROGRESS_MIN_EXAMPLES = 1000
"""Caches at least this big show a progress bar while they are built."""

SIM_SECTIONS = ("image", "lens", "source", "simulate")
"""Config sections that affect the noise-free arcs."""

DATA_SECTIONS = SIM_SECTIONS + ("observe",)
"""Config sections that affect the observed data."""

SIM_CODE_MODULES = (
    "ensai_tf.lensing.caustics", "ensai_tf.lensing.geometry", "ensai_tf.lensing.light",
    "ensai_tf.lensing.raytrace", "ensai_tf.lensing.shear", "ensai_tf.lensing.sie",
    "ensai_tf.data.draws", "ensai_tf.data.seeds", "ensai_tf.data.placement",
    "ensai_tf.data.render", "ensai_tf.data.lens_light", "ensai_tf.data.simulate",
    "ensai_tf.data.stamps", "ensai_tf.data.sources",
)
"""Modules whose source is hashed into the key of noise-free arcs (an arc store): the lens
model, the ray tracing, the sources and the simulator."""

CODE_MODULES = SIM_CODE_MODULES + (
    "ensai_tf.data.effects.base", "ensai_tf.data.effects.shift", "ensai_tf.data.effects.psf",
    "ensai_tf.data.effects.poisson", "ensai_tf.data.effects.cosmic_rays",
    "ensai_tf.data.effects.gaussian_noise", "ensai_tf.data.effects.levels",
    "ensai_tf.data.effects.masks", "ensai_tf.data.observe", "ensai_tf.data.noise",
)
"""Modules whose source is hashed into the key of observed data: a change to the simulator,
the observation effects, the sources or the noise models invalidates old caches. An arc
store, made before any observation effect, hashes only :data:`SIM_CODE_MODULES`, so a
change to an observation effect leaves it valid."""

TWO_BAND_CODE_MODULES = ("ensai_tf.data.two_bands",)
"""Modules hashed besides :data:`CODE_MODULES` into the key of two-band data
(``bands.count = 2``, docs/design.md §5.10), whose ``bands`` section joins the key too;
single-band data depend on neither."""


def _split_size(split, cfg):
    return cfg.data.val_size if split == "validation" else cfg.data.test_size


def default_cache_dir(config=None):
    """Cache folder: ``config.data.cache_dir`` or ``~/.cache/ensai_tf``.

    Args:
        config: :class:`ensai_tf.config.ExperimentConfig`, or None; an empty
            ``data.cache_dir`` also gives the default.

    Returns:
        ``pathlib.Path`` with ``~`` expanded (not created).
    """
    configured = config.data.cache_dir if config is not None else ""
    return pathlib.Path(os.path.expanduser(configured or "~/.cache/ensai_tf"))


def _cache_parent(cfg, cache_dir):
    """The folder holding the split caches: ``cache_dir``, else :func:`default_cache_dir`."""
    return pathlib.Path(os.path.expanduser(str(cache_dir))) if cache_dir else \
        default_cache_dir(cfg)


def _check_fixed_split(split):
    """Refuse an unknown split and the train split, which is never cached."""
    check_split(split)
    if split == "train":
        raise InputError("the train split is an endless online stream and is never cached; "
                         "use pregenerate_arcs for stored training arcs")


def _publish(tmp, final):
    """Move a finished temporary folder into place atomically.

    A stale (invalid) folder at ``final`` is removed first; if another
    process published a valid one meanwhile, ours is discarded.
    """
    if final.exists():
        if verify_cache(final) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:
        if verify_cache(final) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def data_fingerprint(config, sections=DATA_SECTIONS):
    """Everything besides split/seed/size that changes simulated data, as a dict.

    The resolved config sections, the simulation batch size (batched float
    maths may round differently), the data code (SHA-256 of the simulator,
    observation, source and noise modules, so a code change invalidates old
    caches) and the format version.

    Args:
        config: the resolved :class:`ensai_tf.config.ExperimentConfig`.
        sections: names of the config sections that affect the data (default:
            image, lens, source, simulate and observe).

    Returns:
        dict with ``"format"``, ``"config"`` (``{section: dict}``, with ``bands``
        for two-band data), ``"sim_batch_size"`` and ``"code_sha256"`` (of
        :data:`CODE_MODULES`, plus :data:`TWO_BAND_CODE_MODULES` for two-band
        data, or of :data:`SIM_CODE_MODULES` when ``sections`` leaves out
        ``observe``); JSON-serialisable.
    """
    two_bands = "observe" in sections and config.bands.count > 1
    if two_bands:
        sections = tuple(sections) + ("bands",)
    modules = SIM_CODE_MODULES if "observe" not in sections else \
        CODE_MODULES + (TWO_BAND_CODE_MODULES if two_bands else ())
    code = hashlib.sha256()
    for name in modules:
        module = importlib.import_module(name)
        code.update(pathlib.Path(module.__file__).read_bytes())
    return {
        "format": CACHE_FORMAT,
        "config": {s: config_lib.config_to_dict(getattr(config, s)) for s in sections},
        "sim_batch_size": int(config.data.sim_batch_size),
        "code_sha256": code.hexdigest(),
    }


def cache_key(split, config, seed, size, sections=DATA_SECTIONS, stamps=None):
    """Hex key of a materialised split: SHA-256 of fingerprint + split + seed + size.

    Args:
        split: split name.
        config: the resolved :class:`ensai_tf.config.ExperimentConfig`.
        seed: user seed.
        size: number of examples.
        sections: config sections that affect the data.
        stamps: the split's stamps; their bytes are hashed too, so new user
            stamps in ``source.stamp_dirs`` invalidate the cache.
    """
    payload = {"fingerprint": data_fingerprint(config, sections), "split": split,
               "seed": int(seed), "size": int(size)}
    if stamps is not None:
        stamp_bytes = np.ascontiguousarray(stamps, np.float32).tobytes()
        payload["stamps_sha256"] = hashlib.sha256(stamp_bytes).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def materialise_split(split, config=None, seed=None, size=None, cache_dir=None, progress=None):
    """Simulate + observe a validation/test split once; return its cache folder.

    The folder ``<cache_dir>/<split>-<key[:20]>`` is keyed by
    :func:`cache_key`; it is written under a temporary name and renamed
    (``os.replace``) once complete, with a ``manifest.json`` holding every
    array's SHA-256. An existing valid folder is reused; a partial or corrupt
    one is rebuilt, never read. Built twice, the files are bitwise identical
    (stateless seeds, deterministic map order).

    Args:
        split: ``"validation"`` or ``"test"``.
        config: :class:`ensai_tf.config.ExperimentConfig` (default: paper).
        seed: user seed (default ``config.data.seed``).
        size: examples (default ``data.val_size`` / ``data.test_size``).
        cache_dir: parent folder (default :func:`default_cache_dir`).
        progress: show a progress bar (default: for ``size >=
            PROGRESS_MIN_EXAMPLES``).

    Returns:
        ``pathlib.Path`` of the verified cache folder.
    """
    _check_fixed_split(split)
    cfg, seed = resolve_config(config, seed)
    size = positive_int("size", _split_size(split, cfg) if size is None else size)
    stamps = load_stamps(split, cfg)
    key = cache_key(split, cfg, seed, size, stamps=stamps)
    parent = _cache_parent(cfg, cache_dir)
    final = parent / f"{split}-{key[:20]}"
    if verify_cache(final, key) is not None:
        return final
    if final.exists():
        warnings.warn(f"ensai_tf: cache {str(final)!r} is partial or corrupt; rebuilding it",
                      RuntimeWarning, stacklevel=2)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # [R] docs/design.md §5.6, §8.3: evaluation effects (mask f_min 0.98), fixed seeds
        ds = example_dataset(split, cfg, seed, count=size, training=False, stamps=stamps)
        arrays = materialise(ds, tmp, size, size >= PROGRESS_MIN_EXAMPLES
                             if progress is None else progress, f"{split} cache", BULKY_KEYS)
        write_manifest(tmp, {"format": CACHE_FORMAT, "key": key, "kind": "observed",
                             "split": split, "seed": seed, "size": size,
                             "fingerprint": data_fingerprint(cfg), "arrays": arrays})
        return _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_split_cache(split, config, seed, min_size, cache_dir=None):
    """A verified cache of a fixed split that holds at least its first ``min_size`` examples.

    Example ``i`` of a split depends only on its index (stateless seeds), so the
    first ``n`` examples of a bigger cache of the same split, config and seed are
    the examples a cache of ``n`` would hold: ``ensai evaluate --n 200`` after a
    full ``ensai evaluate`` reads them instead of simulating them again. (A cache
    of ``n`` makes its last examples in a smaller batch; on a CPU they are
    bit-identical, elsewhere batched float maths may round differently.)

    Args:
        split: ``"validation"`` or ``"test"``.
        config: :class:`ensai_tf.config.ExperimentConfig` (default: paper).
        seed: user seed (default ``config.data.seed``).
        min_size: the number of examples needed.
        cache_dir: parent folder (default :func:`default_cache_dir`).

    Returns:
        ``pathlib.Path`` of the smallest such cache folder that verifies, or None.

    Raises:
        InputError: the train split (never cached), or a bad ``min_size`` or seed.

    Example:
        >>> from ensai_tf import config
        >>> find_split_cache("test", config.get_preset("smoke"), 0, 4, "/nonexistent") is None
        True
    """
    _check_fixed_split(split)
    cfg, seed = resolve_config(config, seed)
    min_size = positive_int("min_size", min_size)
    parent = _cache_parent(cfg, cache_dir)
    stamps = load_stamps(split, cfg)
    candidates = []
    for folder in parent.glob(f"{split}-*") if parent.is_dir() else ():
        manifest = read_manifest(folder)
        size = manifest.get("size") if isinstance(manifest, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < min_size:
            continue
        key = cache_key(split, cfg, seed, size, stamps=stamps)
        if manifest.get("key") == key:
            candidates.append((size, folder, key))
    # only the chosen cache is hashed: the smallest one that verifies
    for _, folder, key in sorted(candidates):
        if verify_cache(folder, key) is not None:
            return folder
    return None


def _npy_records(path, row_shape, dtype):
    """Rows of a C-order ``.npy`` file as a dataset of raw byte strings."""
    mm = np.load(path, mmap_mode="r")
    header = mm.offset
    del mm
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return tf.data.FixedLengthRecordDataset(str(path), row_bytes, header_bytes=header,
                                            buffer_size=1 << 22)


def _decode(raw, row_shape, dtype):
    values = tf.io.decode_raw(raw, tf.as_dtype(np.dtype(dtype).newbyteorder("=")),
                              little_endian=True)
    return tf.reshape(values, [-1, *row_shape])


def cached_dataset(path, batch_size, n_targets=NUM_PARAMS):
    """``{"image", "params"}`` (and shear) batches streamed from a verified cache (pure TF)."""
    manifest = read_manifest(path)
    parts = {}
    names = ("image", "params") + (SHEAR_NAMES if n_targets > NUM_PARAMS else ())
    for name in names:
        entry = manifest["arrays"][name]
        shape, dtype = entry["shape"][1:], np.dtype(entry["dtype"])
        if dtype.byteorder == ">":
            raise CacheError(f"{str(path)!r}: big-endian arrays are not supported")
        ds = _npy_records(path / entry["file"], shape, dtype).batch(batch_size)
        parts[name] = parallel_map(ds, lambda raw, s=tuple(shape), d=dtype: _decode(raw, s, d))
    # the record files do not tell tf.data their length; stating it lets Keras count the
    # batches of evaluate() and fit(validation_data=...) instead of warning, at the end of
    # each pass, that the input "ran out of data"
    batches = -(-int(manifest["size"]) // int(batch_size))
    return tf.data.Dataset.zip(parts).apply(tf.data.experimental.assert_cardinality(batches))
