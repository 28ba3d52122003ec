"""Folders of named ``.npy`` arrays with a checksummed ``manifest.json``.

The on-disk form of validation/test caches (:mod:`ensai_tf.data.cache`) and
of pre-generated arcs (:mod:`ensai_tf.data.arcstore`): arrays are streamed
batch by batch into ``.npy`` files with ordinary writes (:class:`ArrayStreams`), and a
folder counts only when every array has its recorded shape, dtype and
SHA-256 (:func:`verify_cache`).
"""

import json
import pathlib

import numpy as np
from tqdm.auto import tqdm

from ensai_tf import atomic
from ensai_tf.errors import InputError
from ensai_tf.model_dir import file_sha256

__all__ = [
    "CACHE_FORMAT",
    "BULKY_KEYS",
    "CacheError",
    "ArrayStreams",
    "open_npy",
    "flatten_example",
    "progress_bar",
    "materialise",
    "write_manifest",
    "read_manifest",
    "verify_cache",
    "load_cache",
]


CACHE_FORMAT = 1
"""Version of the on-disk cache layout; part of every cache key."""

BULKY_KEYS = ("arcs", "mask", "lens_light")
"""Image-sized keys that caches leave out: the stored draws re-create them."""


class CacheError(InputError):
    """A cache or arcs folder is missing, incomplete, corrupt or made for other settings."""


def progress_bar(total, desc, enabled):
    """A tqdm progress bar counting lenses (disabled unless ``enabled``).

    Args:
        total: number of lenses expected.
        desc: label shown before the bar.
        enabled: show the bar; when False the bar is a silent no-op.

    Returns:
        a ``tqdm.auto.tqdm`` bar (a context manager; advance it with ``update``).
    """
    return tqdm(total=total, desc=desc, unit="lens", disable=not enabled, leave=False)


def flatten_example(example, drop=BULKY_KEYS):
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


class ArrayStreams:
    """Append batches of named arrays to ``.npy`` files, memory independent of n.

    Each name becomes ``<folder>/<name>.npy``: its header, for the final
    shape ``(total, ...)``, is written when its first batch arrives, and every
    batch is appended with an ordinary write. A full disk therefore raises
    ``OSError`` (ENOSPC) at the write that does not fit, instead of the
    SIGBUS a memory-mapped file gets when a page cannot be backed.
    """

    def __init__(self, folder, total):
        """Args: folder: existing output folder. total: rows of every array."""
        self.folder = pathlib.Path(folder)
        self.total = int(total)
        self.filled = 0
        self._files = {}

    def append(self, arrays):
        """Write the next rows; every array of the batch has the same length."""
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays of one batch differ in length: {sorted(lengths)}")
        n = lengths.pop()
        if self.filled + n > self.total:
            raise ValueError(f"{self.filled + n} rows exceed the declared total {self.total}")
        if self._files and set(arrays) != set(self._files):
            raise ValueError(f"batch arrays {sorted(arrays)} differ from {sorted(self._files)}")
        for name, arr in arrays.items():
            if name not in self._files:
                if self.filled:
                    raise ValueError(f"array {name!r} first appears after row {self.filled}")
                self._files[name] = open_npy(self.folder / f"{name}.npy", arr.dtype,
                                             (self.total,) + arr.shape[1:])
            f, dtype, row_shape = self._files[name]
            if arr.shape[1:] != row_shape:
                raise ValueError(f"array {name!r} rows of shape {arr.shape[1:]}, expected "
                                 f"{row_shape}")
            f.write(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        self.filled += n

    def close(self):
        """Flush, check completeness; returns ``{name: {file, shape, dtype, sha256}}``."""
        if self.filled != self.total:
            self.discard()
            raise ValueError(f"only {self.filled} of {self.total} rows were written")
        entries = {}
        for name, (f, dtype, row_shape) in self._files.items():
            f.close()
            entries[name] = {"file": f"{name}.npy", "shape": [self.total, *row_shape],
                             "dtype": dtype.str}
        self._files.clear()
        for name, entry in entries.items():
            entry["sha256"] = file_sha256(self.folder / entry["file"])
        return entries

    def discard(self):
        """Close every file without checking (after an error); the caller removes the folder."""
        for f, _, _ in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()


def open_npy(path, dtype, shape):
    """Open a new ``.npy`` file for appending rows: writes the header for ``shape``.

    Args:
        path: the file to create (replaced if it exists).
        dtype: element type of the array.
        shape: the final shape; rows of ``shape[1:]`` are appended with
            ``f.write(rows.tobytes())`` until ``shape[0]`` rows are written.

    Returns:
        ``(file, dtype, row_shape)``: the open binary file (positioned after the
        header), ``np.dtype(dtype)`` and ``tuple(shape[1:])``.
    """
    dtype = np.dtype(dtype)
    f = open(path, "wb")
    try:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": tuple(int(v) for v in shape)}
        np.lib.format.write_array_header_1_0(f, header)
    except BaseException:
        f.close()
        raise
    return f, dtype, tuple(int(v) for v in shape[1:])


def write_manifest(folder, manifest):
    """Write ``manifest`` as ``<folder>/manifest.json`` atomically (sorted keys)."""
    atomic.write_text(folder / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(path):
    """The parsed ``<path>/manifest.json``, or None when it is missing or not JSON."""
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
    manifest = read_manifest(path)
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
    manifest = verify_cache(path) if verify else read_manifest(path)
    if manifest is None:
        raise CacheError(f"{str(path)!r} is not a complete ensai_tf cache (missing, partial or "
                         "corrupt manifest.json or array files)")
    return {name: np.load(path / entry["file"], mmap_mode="r")
            for name, entry in manifest["arrays"].items()}


def materialise(ds, folder, size, progress, desc, drop):
    """Stream a finite canonical dataset into ``folder``; returns array entries."""
    streams = ArrayStreams(folder, size)
    try:
        with progress_bar(size, desc, progress) as bar:
            for batch in ds.as_numpy_iterator():
                flat = flatten_example(batch, drop=drop)
                streams.append(flat)
                bar.update(len(flat["index"]))
    except BaseException:
        streams.discard()
        raise
    return streams.close()
