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

Randomness is stateless throughout (docs/design.md §11 rule 4): example ``i`` of a
split depends only on ``example_seeds(seed, split, i, 1)``, never on the
batch it sits in. Observation effects use ``fold_in(seed_i,
OBSERVE_STREAM)``, a stream disjoint from the simulator's.
"""

import hashlib
import json
import os
import pathlib
import shutil
import uuid
import warnings

import numpy as np
import tensorflow as tf

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf.conventions import NUM_PARAMS, SHEAR_NAMES
from ensai_tf.data import observe as observe_lib
from ensai_tf.data import simulate as simulate_lib
from ensai_tf.data import sources
from ensai_tf.errors import InputError

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
    "verify_cache",
    "load_cache",
    "recreate_examples",
    "pregenerate_arcs",
    "file_sha256",
    "flatten_example",
    "progress_bar",
]

SPLITS = ("train", "validation", "test")
"""Split names; their seed streams and source pools are disjoint (docs/design.md §3.7 [R])."""

EXAMPLE_KEYS = {
    "index": "(B,) int64: position of the example in its split's seed stream",
    "seed": "(B, 2) int64: per-example seed, simulate.example_seeds(seed, split, index, 1)",
    "arcs": "(B, n, n, 1) float32: noise-free arcs, peak 1 (docs/design.md §3.5)",
    "params": "(B, 5) float32: labels in PARAM_NAMES order; shifted after observe_stage",
    "clean_params": "(B, 5) float32: the simulator's labels before the shift (docs/design.md §5.2)",
    "magnification": "(B,) float32: total magnification (docs/design.md §3.5)",
    "source_family": "(B,) int: index into sources.SOURCE_FAMILIES",
    "source_index": "(B,) int: stamp index for the stamp family",
    "source_position": "(B, 2) float32: source centre (x_s, y_s), arcsec",
    "attempts": "(B,) int: candidates drawn before acceptance (docs/design.md §3.5)",
    "placement_rule": "(B,) int: source placement rule, 0 = A, 1 = B (docs/design.md §3.3)",
    "lens_light": "(B, n, n, 1) float32: optional lens light (docs/design.md §4 [R])",
    "image": "(B, n, n, 1) float32: observed image, masked pixels exactly 0",
    "mask": "(B, n, n, 1) float32: 1 = kept, 0 = masked",
    "draws": "dict of (B, ...) tensors: the observation draws (docs/design.md §11 rule 3)",
}
"""Keys of the canonical example dict (docs/design.md §11 rule 1), with shapes and units.

Simulator outputs other than those listed are carried under their own names.
"""

CACHE_FORMAT = 1
"""Version of the on-disk cache layout; part of every cache key."""

OBSERVE_STREAM = 0x4F425356
"""Folded into an example seed for its observation effects ("OBSV")."""

ORDER_STREAM = 0x4F524452
"""Folded into the user seed for the per-epoch order of pre-generated arcs ("ORDR")."""

PROGRESS_MIN_EXAMPLES = 1000
"""Caches at least this big show a progress bar while they are built."""

_BULKY_KEYS = ("arcs", "mask", "lens_light")
_SIM_SECTIONS = ("image", "lens", "source", "simulate")
_DATA_SECTIONS = _SIM_SECTIONS + ("observe",)
_CODE_MODULES = ("ensai_tf.data.simulate", "ensai_tf.data.observe", "ensai_tf.data.sources",
                 "ensai_tf.data.noise")
_INT64_MAX = np.iinfo(np.int64).max


class CacheError(InputError):
    """A cache or arcs folder is missing, incomplete, corrupt or made for other settings."""


# ---------------------------------------------------------------- helpers --

def _check_split(split):
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def _resolve(config, seed):
    cfg = config if config is not None else config_lib.get_preset("paper")
    if not isinstance(cfg, config_lib.ExperimentConfig):
        raise InputError(f"config must be an ExperimentConfig, got {type(cfg).__name__}")
    seed = cfg.data.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return cfg, int(seed)


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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


def file_sha256(path, chunk_bytes=1 << 22):
    """Hex SHA-256 of a file, read in chunks.

    Args:
        path: the file.
        chunk_bytes: bytes read at a time (default 4 MiB).

    Returns:
        str: 64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def progress_bar(total, desc, enabled):
    """A tqdm progress bar counting lenses (disabled unless ``enabled``).

    Args:
        total: number of lenses expected.
        desc: label shown before the bar.
        enabled: show the bar; when False the bar is a silent no-op.

    Returns:
        a ``tqdm.auto.tqdm`` bar (a context manager; advance it with ``update``).
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="lens", disable=not enabled, leave=False)


# ----------------------------------------------------------------- stages --

def observe_seeds(seeds):
    """Per-example seeds of the observation effects, ``fold_in(seed_i, OBSERVE_STREAM)``.

    Args:
        seeds: ``(B, 2)`` int per-example seeds (the simulator's).

    Returns:
        ``(B, 2)`` int64 seeds, independent of every stream the simulator
        derives from the same example seed.
    """
    seeds = tf.cast(seeds, tf.int64)
    # docs/design.md §11 rule 4: observe folds small effect indices into its seeds, as the
    # simulator does into the example seed; a distinct stream keeps them independent.
    return tf.map_fn(
        lambda s: tf.random.fold_in(s, tf.constant(OBSERVE_STREAM, tf.int64)), seeds,
        fn_output_signature=tf.TensorSpec([2], tf.int64))


def seed_stage(start, count, seed, split):
    """Start a batch: ``{"index", "seed"}`` for examples ``start ... start + count - 1``.

    Args:
        start: int64 scalar (Python int or tensor), first example index.
        count: number of examples (Python int, or an int scalar tensor for a
            dynamic batch size).
        seed: user seed (Python int).
        split: split name; selects the seed stream.

    Returns:
        dict with ``"index"`` ``(count,)`` int64 and ``"seed"`` ``(count, 2)``
        int64.
    """
    start = tf.cast(start, tf.int64)
    seeds = simulate_lib.example_seeds(seed, split, start, count)
    return {"index": start + tf.range(tf.cast(count, tf.int64), dtype=tf.int64),
            "seed": tf.cast(seeds, tf.int64)}


def simulate_stage(example, config, stamps):
    """Add the noise-free simulation of every example (docs/design.md §3).

    Args:
        example: dict with ``"seed"`` ``(B, 2)``.
        config: :class:`ensai_tf.config.ExperimentConfig`.
        stamps: ``(N, S, S)`` float32 source stamps of the split.

    Returns:
        the dict with the simulator's outputs added (``"arcs"``,
        ``"params"``, ``"magnification"``, ...).
    """
    out = dict(example)
    out.update(simulate_lib.simulate_batch(example["seed"], config, stamps))
    return out


def observe_stage(example, config, training):
    """Add the observed image, shifted labels, mask and draws (docs/design.md §5).

    The simulator's labels are kept as ``"clean_params"``; ``"params"`` is
    replaced by the shifted labels (the only label change, docs/design.md §11
    rule 2, made inside :func:`ensai_tf.data.observe.observe`).

    Args:
        example: dict with ``"arcs"``, ``"params"``, ``"seed"`` and
            optionally ``"lens_light"``.
        config: :class:`ensai_tf.config.ExperimentConfig`.
        training: True for training-time effects (mask f_min 0.75), False
            for validation/test (f_min 0.98, docs/design.md §5.6).

    Returns:
        the dict with ``"image"``, ``"params"``, ``"clean_params"``,
        ``"mask"`` and ``"draws"``.
    """
    obs = observe_lib.observe(example["arcs"], example["params"], observe_seeds(example["seed"]),
                              config.observe, training=training,
                              lens_light=example.get("lens_light"))
    out = dict(example)
    out["clean_params"] = example["params"]
    out.update(image=obs["image"], params=tf.cast(obs["params"], tf.float32),
               mask=obs["mask"], draws=obs["draws"])
    return out


def clean_stage(example):
    """The noise-free variant: ``image`` = arcs, nothing masked, no draws.

    Args:
        example: dict with ``"arcs"`` ``(B, n, n, 1)`` and ``"params"`` ``(B, 5)``
            (from :func:`simulate_stage`).

    Returns:
        the dict with ``"image"`` (the arcs), ``"clean_params"`` (the labels),
        ``"mask"`` (all ones, shape of the arcs) and ``"draws"`` (empty) added.
    """
    out = dict(example)
    out["clean_params"] = example["params"]
    out.update(image=example["arcs"], mask=tf.ones_like(example["arcs"]), draws={})
    return out


def to_supervised(example, n_targets=NUM_PARAMS):
    """The final step: ``(images (B, n, n, 1) float32, params (B, 5) float32)``.

    With ``n_targets = 7`` the shear ``(gamma_1, gamma_2)`` is appended to
    ``params`` (an integer shift leaves the shear unchanged).

    Args:
        example: dict with ``"image"``, ``"params"`` (arcsec for ``theta_E``,
            ``x_L``, ``y_L``; ``e_x``, ``e_y`` dimensionless) and, for 7
            targets, ``"gamma_1"``, ``"gamma_2"`` ``(B,)`` (dimensionless).
        n_targets: 5, or 7 to append the shear.

    Returns:
        tuple ``(images, params)``: ``(B, n, n, 1)`` and ``(B, n_targets)`` float32.
    """
    params = tf.cast(example["params"], tf.float32)
    if n_targets > NUM_PARAMS:
        shear = tf.stack([example[k] for k in SHEAR_NAMES], axis=-1)
        params = tf.concat([params, tf.cast(shear, tf.float32)], axis=-1)
    return (tf.cast(example["image"], tf.float32), params)


def load_stamps(split, config):
    """The split's source stamps (disjoint pools, docs/design.md §3.7 [R]), as numpy.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        config: :class:`ensai_tf.config.ExperimentConfig`; its
            ``source.stamp_dirs`` and ``source.taper_radius`` are used.

    Returns:
        float32 ``(N, S, S)`` array of stamps, peak 1.

    Raises:
        InputError: see :func:`ensai_tf.data.sources.load_stamp_library`.
    """
    return sources.load_stamp_library(split, config.source.stamp_dirs,
                                      taper_radius=config.source.taper_radius)


def _map(ds, fn):
    """``ds.map(fn)`` in parallel, in order, with autograph off.

    The simulator and the observation effects have no Python control flow on
    tensor values (every loop is an explicit ``tf.while_loop``/``tf.map_fn``,
    every branch a ``tf.where``), so autograph's source conversion
    only costs time: without it a pipeline traces about 2.5x faster and its
    examples are bit-identical (``ensai train`` and ``ensai evaluate`` start
    sooner; most of the test suite's time was this tracing).
    """
    return ds.map(tf.autograph.experimental.do_not_convert(fn),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
    _check_split(split)
    cfg, seed = _resolve(config, seed)
    batch = _positive("batch_size", cfg.data.sim_batch_size if batch_size is None else batch_size)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise InputError(f"start must be a non-negative integer, got {start!r}")
    training = split == "train" if training is None else bool(training)
    stamps = load_stamps(split, cfg) if stamps is None else np.asarray(stamps, np.float32)
    simulate_lib.check_feasible(cfg)
    if count is None:
        # Endless: a static batch size, so every batch has a known shape.
        first = tf.data.Dataset.range(int(start), _INT64_MAX, batch)
        ds = _map(first, lambda s: seed_stage(s, batch, seed, split))
    else:
        # Finite: (start, count) pairs through ONE traced map; the last batch
        # may be smaller, so the batch dimension is left dynamic.
        count = _positive("count", count)
        starts = np.arange(int(start), int(start) + count, batch, dtype=np.int64)
        counts = np.minimum(batch, int(start) + count - starts)
        ds = _map(tf.data.Dataset.from_tensor_slices((starts, counts)),
                  lambda s, c: seed_stage(s, c, seed, split))
    return _simulate_and_observe(ds, cfg, stamps, observed, training)


def _simulate_and_observe(ds, cfg, stamps, observed, training):
    stamps_t = tf.constant(stamps, tf.float32)
    ds = _map(ds, lambda ex: simulate_stage(ex, cfg, stamps_t))
    if observed:
        return _map(ds, lambda ex: observe_stage(ex, cfg, training))
    return _map(ds, clean_stage)


def flatten_example(example, drop=_BULKY_KEYS):
    """Flat ``{name: array}`` of a canonical batch; draws become ``"draws.<key>"``.

    Args:
        example: canonical dict of numpy arrays or tensors.
        drop: keys left out (by default the bulky image-sized ones that the
            stored draws re-create).
    """
    flat = {}
    for key, value in example.items():
        if key in drop:
            continue
        if isinstance(value, dict):
            for sub, arr in value.items():
                flat[f"draws.{sub}"] = np.asarray(arr)
        else:
            flat[key] = np.asarray(value)
    return flat


# ---------------------------------------------------------- on-disk arrays --

class ArrayStreams:
    """Append batches of named arrays to ``.npy`` files, memory independent of n.

    Each name becomes ``<folder>/<name>.npy``, opened with
    ``np.lib.format.open_memmap`` at its final shape ``(total, ...)`` when
    its first batch arrives.
    """

    def __init__(self, folder, total):
        """Args: folder: existing output folder. total: rows of every array."""
        self.folder = pathlib.Path(folder)
        self.total = int(total)
        self.filled = 0
        self._maps = {}

    def append(self, arrays):
        """Write the next rows; every array of the batch has the same length."""
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays of one batch differ in length: {sorted(lengths)}")
        n = lengths.pop()
        if self.filled + n > self.total:
            raise ValueError(f"{self.filled + n} rows exceed the declared total {self.total}")
        for name, arr in arrays.items():
            if name not in self._maps:
                if self.filled:
                    raise ValueError(f"array {name!r} first appears after row {self.filled}")
                self._maps[name] = np.lib.format.open_memmap(
                    self.folder / f"{name}.npy", mode="w+", dtype=arr.dtype,
                    shape=(self.total,) + arr.shape[1:])
            self._maps[name][self.filled:self.filled + n] = arr
        if set(arrays) != set(self._maps):
            raise ValueError(f"batch arrays {sorted(arrays)} differ from {sorted(self._maps)}")
        self.filled += n

    def close(self):
        """Flush, check completeness; returns ``{name: {file, shape, dtype, sha256}}``."""
        if self.filled != self.total:
            raise ValueError(f"only {self.filled} of {self.total} rows were written")
        entries = {}
        for name, mm in self._maps.items():
            mm.flush()
            entries[name] = {"file": f"{name}.npy", "shape": list(mm.shape),
                             "dtype": mm.dtype.str}
        self._maps.clear()
        for name, entry in entries.items():
            entry["sha256"] = file_sha256(self.folder / entry["file"])
        return entries


def _write_manifest(folder, manifest):
    atomic.write_text(folder / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")


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


def _read_manifest(path):
    try:
        return json.loads((pathlib.Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def verify_cache(path, expected_key=None):
    """The manifest of a complete, uncorrupted cache folder, else None.

    Every array file must exist, have the recorded shape and dtype (read
    from its header) and the recorded SHA-256; a partial write, truncation or
    a flipped byte therefore makes it invalid.

    Args:
        path: cache or arcs folder.
        expected_key: if given, the manifest's ``"key"`` must equal it.
    """
    path = pathlib.Path(path)
    manifest = _read_manifest(path)
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        return None
    if expected_key is not None and manifest.get("key") != expected_key:
        return None
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or not arrays:
        return None
    for entry in arrays.values():
        file = path / entry["file"]
        try:
            arr = np.load(file, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if list(arr.shape) != entry["shape"] or arr.dtype.str != entry["dtype"]:
            return None
        del arr
        if file_sha256(file) != entry["sha256"]:
            return None
    return manifest


def load_cache(path, verify=True):
    """Every stored array of a cache or arcs folder, memory-mapped.

    Args:
        path: the folder.
        verify: check it with :func:`verify_cache` first (hashes every
            file); False only reads the manifest, for a folder just verified.

    Returns:
        ``{name: np.memmap}``; draws are under ``"draws.<key>"``.

    Raises:
        CacheError: when the folder is missing, partial or corrupt.
    """
    path = pathlib.Path(path)
    manifest = verify_cache(path) if verify else _read_manifest(path)
    if manifest is None:
        raise CacheError(f"{str(path)!r} is not a complete ensai_tf cache (missing, partial or "
                         "corrupt manifest.json or array files)")
    return {name: np.load(path / entry["file"], mmap_mode="r")
            for name, entry in manifest["arrays"].items()}


# ------------------------------------------------------------ cache keys --

def data_fingerprint(config, sections=_DATA_SECTIONS):
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
        dict with ``"format"``, ``"config"`` (``{section: dict}``),
        ``"sim_batch_size"`` and ``"code_sha256"``; JSON-serialisable.
    """
    import importlib

    code = hashlib.sha256()
    for name in _CODE_MODULES:
        module = importlib.import_module(name)
        code.update(pathlib.Path(module.__file__).read_bytes())
    return {
        "format": CACHE_FORMAT,
        "config": {s: config_lib.config_to_dict(getattr(config, s)) for s in sections},
        "sim_batch_size": int(config.data.sim_batch_size),
        "code_sha256": code.hexdigest(),
    }


def cache_key(split, config, seed, size, sections=_DATA_SECTIONS, stamps=None):
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


def _materialise(ds, folder, size, progress, desc, drop):
    """Stream a finite canonical dataset into ``folder``; returns array entries."""
    streams = ArrayStreams(folder, size)
    with progress_bar(size, desc, progress) as bar:
        for batch in ds.as_numpy_iterator():
            flat = flatten_example(batch, drop=drop)
            streams.append(flat)
            bar.update(len(flat["index"]))
    return streams.close()


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
    _check_split(split)
    if split == "train":
        raise InputError("the train split is an endless online stream and is never cached; "
                         "use pregenerate_arcs for stored training arcs")
    cfg, seed = _resolve(config, seed)
    size = _positive("size", _split_size(split, cfg) if size is None else size)
    stamps = load_stamps(split, cfg)
    key = cache_key(split, cfg, seed, size, stamps=stamps)
    parent = pathlib.Path(os.path.expanduser(str(cache_dir))) if cache_dir else \
        default_cache_dir(cfg)
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
        arrays = _materialise(ds, tmp, size, size >= PROGRESS_MIN_EXAMPLES
                              if progress is None else progress, f"{split} cache", _BULKY_KEYS)
        _write_manifest(tmp, {"format": CACHE_FORMAT, "key": key, "kind": "observed",
                              "split": split, "seed": seed, "size": size,
                              "fingerprint": data_fingerprint(cfg), "arrays": arrays})
        return _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def _cached_dataset(path, batch_size, n_targets=NUM_PARAMS):
    """``{"image", "params"}`` (and shear) batches streamed from a verified cache (pure TF)."""
    manifest = _read_manifest(path)
    parts = {}
    names = ("image", "params") + (SHEAR_NAMES if n_targets > NUM_PARAMS else ())
    for name in names:
        entry = manifest["arrays"][name]
        shape, dtype = entry["shape"][1:], np.dtype(entry["dtype"])
        if dtype.byteorder == ">":
            raise CacheError(f"{str(path)!r}: big-endian arrays are not supported")
        ds = _npy_records(path / entry["file"], shape, dtype).batch(batch_size)
        parts[name] = _map(ds, lambda raw, s=tuple(shape), d=dtype: _decode(raw, s, d))
    return tf.data.Dataset.zip(parts)


# ----------------------------------------------------------- stored arcs --

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
    _check_split(split)
    cfg, seed = _resolve(config, seed)
    n = _positive("n", n)
    out = pathlib.Path(os.path.expanduser(str(out_dir)))
    if out.exists() and not out.is_dir():
        raise InputError(f"arcs folder {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"arcs folder {str(out)!r} is not empty; choose a new folder or pass "
                         "overwrite=True")
    stamps = load_stamps(split, cfg)
    key = cache_key(split, cfg, seed, n, sections=_SIM_SECTIONS, stamps=stamps)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_path(out)
    tmp.mkdir()
    try:
        ds = example_dataset(split, cfg, seed, count=n, batch_size=batch_size, observed=False,
                             stamps=stamps)
        # clean_stage's "image" is the arcs themselves and its mask all ones: store neither,
        # or the arcs would be on disk (and in memory when training) twice
        arrays = _materialise(ds, tmp, n, progress, f"arcs {split}", ("mask", "image"))
        _write_manifest(tmp, {"format": CACHE_FORMAT, "key": key, "kind": "arcs",
                              "split": split, "seed": seed, "size": n,
                              "fingerprint": data_fingerprint(cfg, _SIM_SECTIONS),
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
    key = cache_key(split, cfg, manifest["seed"], manifest["size"], sections=_SIM_SECTIONS,
                    stamps=stamps)
    if manifest["key"] != key:
        raise CacheError(f"data.arcs_dir {str(arcs_dir)!r} was generated with other simulation "
                         "settings (image/lens/source/simulate config, stamps or simulator code) "
                         "than the current config; regenerate it with pregenerate_arcs")
    return manifest


def _stored_arcs_dataset(arcs_dir, cfg, seed, batch, start_step):
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

    order = tf.data.Dataset.range(first_epoch, _INT64_MAX).flat_map(epoch_order)
    positions = tf.data.Dataset.range(first, _INT64_MAX)
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

    return _map(ds, build)


# ------------------------------------------------------------ public API --

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
    _check_split(split)
    cfg, seed = _resolve(config, seed)
    default_batch = cfg.train.batch_size if split == "train" else cfg.evaluate.batch_size
    batch = _positive("batch_size", default_batch if batch_size is None else batch_size)
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) \
            or start_step < 0:
        raise InputError(f"start_step must be a non-negative integer, got {start_step!r}")
    n_targets = config_lib.target_count(cfg)
    info = {"split": split, "seed": seed, "batch_size": batch, "n_targets": n_targets}
    if split == "train":
        if cfg.data.arcs_dir:
            arcs_dir = pathlib.Path(os.path.expanduser(cfg.data.arcs_dir))
            stream = _stored_arcs_dataset(arcs_dir, cfg, seed, batch, int(start_step))
            stream = _map(stream, lambda ex: observe_stage(ex, cfg, training=True))
            info["arcs_dir"] = str(arcs_dir)
        else:
            stream = example_dataset(split, cfg, seed, start=int(start_step) * batch,
                                     batch_size=batch, training=True)
        ds = _map(stream, lambda ex: to_supervised(ex, n_targets))
        info.update(size=None, start_step=int(start_step))
    else:
        if start_step:
            raise InputError(f"start_step applies to the train stream only, not {split!r}")
        path = materialise_split(split, cfg, seed, cache_dir=cache_dir, progress=progress)
        manifest = _read_manifest(path)
        ds = _map(_cached_dataset(path, batch, n_targets),
                  lambda ex: to_supervised(ex, n_targets))
        info.update(size=manifest["size"], cache_path=str(path), key=manifest["key"])
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return (ds, info) if with_info else ds


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
    _check_split(split)
    cfg, seed = _resolve(config, seed)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size == 0 or np.any(indices < 0):
        raise InputError(f"indices must be non-empty and non-negative, got {indices.tolist()}")
    training = split == "train" if training is None else bool(training)
    ds = _map(tf.data.Dataset.from_tensor_slices(indices),
              lambda i: seed_stage(i, 1, seed, split))
    ds = _simulate_and_observe(ds, cfg, load_stamps(split, cfg), observed, training)
    rows = list(ds.as_numpy_iterator())
    return tf.nest.map_structure(lambda *a: np.concatenate(a), *rows)
