"""The source-stamp library: packaged HDF cut-outs and user stamps (docs/design.md §3.2, §3.7 [R]).

Stamps are read (FITS, PNG, JPEG), resized, tapered and normalised as the
original processes GREAT3 stamps (docs/design.md §3.2 steps 1-5), and split
into disjoint train/validation/test pools: packaged stamps by
``source_splits.json``, user stamps by a hash of their file name
(:func:`user_stamp_split`).
"""

import hashlib
import importlib.resources
import json
import os
import pathlib

import numpy as np
import tensorflow as tf
from astropy.io import fits
from PIL import Image, UnidentifiedImageError

from ensai_tf.data.seeds import SPLIT_IDS
from ensai_tf.errors import InputError

__all__ = [
    "STAMP_SIZE",
    "TAPER_RADIUS",
    "LIBRARY_FILE",
    "SPLITS_FILE",
    "SPLITS",
    "STAMP_EXTENSIONS",
    "stamp_taper",
    "load_stamp_library",
    "read_stamp_file",
    "user_stamp_split",
]

STAMP_SIZE = 64
"""Side of library stamps, pixels (the HDF cut-outs are stored at this size)."""

TAPER_RADIUS = 0.6
"""Taper radius in stamp units, the stamp spanning [-1, 1] (docs/design.md §3.2 step 3)."""

LIBRARY_FILE = "hdf_stamps.npz"
SPLITS_FILE = "source_splits.json"
SPLITS = tuple(SPLIT_IDS)
"""Split names, in the order of :data:`ensai_tf.data.seeds.SPLIT_IDS`."""

STAMP_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".png", ".jpg", ".jpeg")
"""File types read from user stamp folders (case-insensitive)."""

_USER_SPLIT_PERCENT = (("train", 80), ("validation", 90), ("test", 100))


def stamp_taper(size, taper_radius=TAPER_RADIUS):
    """Radial taper ``T(r) = 1 / (1 + (r / taper_radius)**6)`` on a stamp grid.

    Args:
        size: stamp side, pixels.
        taper_radius: taper radius in stamp units (docs/design.md §3.2 step 3).

    Returns:
        float32 ``(size, size)`` array, renormalised to peak 1, with ``r``
        measured from the stamp centre in stamp units: pixel centres at
        ``(j + 0.5) * 2 / size - 1``, so the stamp spans [-1, 1].
    """
    u = (np.arange(size, dtype=np.float64) + 0.5) * 2.0 / size - 1.0
    r = np.hypot(u[None, :], u[:, None])
    taper = 1.0 / (1.0 + (r / taper_radius) ** 6)
    return (taper / taper.max()).astype(np.float32)


def _resize(image, size):
    """Bicubic, anti-aliased resize of a 2-D array to ``(size, size)`` (docs/design.md §3.2 step 1)."""
    if image.shape == (size, size):
        return image.astype(np.float32)
    out = tf.image.resize(image[..., None].astype(np.float32), (size, size), method="bicubic",
                          antialias=True)
    return out.numpy()[..., 0]


def _finish_stamp(image, size, taper_radius, name):
    """Resize, clip, peak-normalise, taper and renormalise one stamp (docs/design.md §3.2 steps 1-3)."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    side = max(image.shape)
    if image.shape[0] != image.shape[1]:
        # [R] Non-square stamps are zero-padded to a square, centred, before resizing.
        pad_r, pad_c = side - image.shape[0], side - image.shape[1]
        image = np.pad(image, ((pad_r // 2, pad_r - pad_r // 2), (pad_c // 2, pad_c - pad_c // 2)))
    stamp = np.clip(_resize(image, size), 0.0, None)
    peak = stamp.max()
    if not peak > 0:
        raise InputError(f"source stamp {name}: no positive finite pixel (all zero, negative or "
                         "NaN); a stamp must show a galaxy")
    stamp = stamp / peak * stamp_taper(size, taper_radius)
    return (stamp / stamp.max()).astype(np.float32)


def read_stamp_file(path):
    """Read one user stamp as a 2-D float array (not yet normalised).

    FITS: the first HDU holding 2-D data (length-1 axes are dropped).
    PNG/JPEG: read with Pillow; colour channels are averaged to grayscale as
    the paper does for Galaxy Zoo (docs/design.md §3.2); an alpha channel is ignored.

    Args:
        path: file path.

    Returns:
        float64 ``(H, W)`` array.

    Raises:
        InputError: naming the file, if it cannot be read or holds no 2-D image.
    """
    path = pathlib.Path(path)
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
        try:
            with fits.open(path, memmap=False) as hdul:
                shapes = []
                for hdu in hdul:
                    if hdu.data is None or not hasattr(hdu.data, "shape"):
                        continue
                    data = np.squeeze(np.asarray(hdu.data))
                    if data.ndim == 2 and data.dtype.kind in "fiu":
                        return data.astype(np.float64)
                    shapes.append(np.shape(hdu.data))
        except (OSError, ValueError, TypeError, IndexError, KeyError, fits.VerifyError) as err:
            raise InputError(f"source stamp {str(path)!r} is not a readable FITS file: {err}") \
                from None
        raise InputError(f"source stamp {str(path)!r} has no HDU with 2-D image data "
                         f"(data shapes found: {shapes or 'none'})")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "LA", "I", "I;16", "F", "RGB", "RGBA"):
                img = img.convert("RGBA")
            data = np.asarray(img, dtype=np.float64)
    except (OSError, ValueError, UnidentifiedImageError) as err:
        raise InputError(f"source stamp {str(path)!r} is not a readable image: {err}") from None
    if data.ndim == 3:
        channels = 1 if data.shape[-1] in (1, 2) else 3
        data = data[..., :channels].mean(axis=-1)
    if data.ndim != 2:
        raise InputError(f"source stamp {str(path)!r} is not a 2-D image (shape {data.shape})")
    return data


def user_stamp_split(file_name):
    """Split of a user stamp, from a hash of its file name (80/10/10).

    Args:
        file_name: the stamp's file name; only the base name is used, so the
            assignment does not depend on the folder.

    Returns:
        ``"train"``, ``"validation"`` or ``"test"``, the same on every run.
    """
    digest = hashlib.sha256(os.path.basename(str(file_name)).encode("utf-8")).digest()
    percent = int.from_bytes(digest[:8], "big") % 100
    return next(name for name, upper in _USER_SPLIT_PERCENT if percent < upper)


def _user_stamp_files(folder):
    folder = pathlib.Path(os.path.expanduser(str(folder)))
    if not folder.is_dir():
        raise InputError(f"source stamp folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.lower().endswith(STAMP_EXTENSIONS))
    if not files:
        raise InputError(f"source stamp folder {str(folder)!r} holds no stamp files "
                         f"({', '.join(STAMP_EXTENSIONS)})")
    return files


def _packaged_stamps(split):
    base = importlib.resources.files("ensai_tf.data").joinpath("resources")
    try:
        table = json.loads(base.joinpath(SPLITS_FILE).read_text())
        with base.joinpath(LIBRARY_FILE).open("rb") as fh, np.load(fh) as npz:
            stamps, ids = npz["stamps"].astype(np.float32), npz["ids"]
    except FileNotFoundError:
        raise InputError(f"the packaged stamp library ({LIBRARY_FILE}, {SPLITS_FILE}) is missing "
                         "from ensai_tf/data/resources; run tools/make_source_library.py") \
            from None
    wanted = set(table["splits"][split])
    return stamps[np.array([int(i) in wanted for i in ids], dtype=bool)]


def load_stamp_library(split, stamp_dirs=(), size=STAMP_SIZE, taper_radius=TAPER_RADIUS,
                       packaged=True):
    """Source stamps of one split: the packaged HDF pool plus user stamps.

    Every stamp is resized to ``size`` (bicubic, anti-aliased), clipped at 0,
    normalised to peak 1, multiplied by :func:`stamp_taper` and renormalised
    to peak 1 (docs/design.md §3.2 steps 1-3). The train, validation and test pools are
    disjoint: packaged stamps by ``source_splits.json``, user stamps by
    :func:`user_stamp_split`. Every user file is read and checked, whatever
    its split. NaN pixels of user stamps become 0; negative pixels
    (background noise) are clipped to 0; non-square stamps are zero-padded
    to a square. No background subtraction, recentring or rotation
    (docs/design.md §3.2 step 5).

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        stamp_dirs: folders of user stamps (FITS, PNG, JPEG; top level only).
        size: output stamp side, pixels.
        taper_radius: taper radius, stamp units (``SourceConfig.taper_radius``).
        packaged: include the packaged HDF stamps.

    Returns:
        float32 ``(N, size, size)`` array; a stamp spans ``+-s`` arcsec once
        placed (docs/design.md §3.2 step 4), rows along +y and columns along +x.

    Raises:
        InputError: unknown split, missing folder, folder without stamps,
            unreadable or non-2-D file, or a stamp without positive pixels
            (the message names the file).
    """
    if split not in SPLITS:
        raise InputError(f"unknown stamp split {split!r}; valid splits: {', '.join(SPLITS)}")
    if isinstance(stamp_dirs, (str, os.PathLike)):
        stamp_dirs = (stamp_dirs,)
    size = int(size)
    if size < 4:
        raise InputError(f"stamp size must be >= 4 pixels, got {size}")
    stamps = []
    if packaged:
        stamps.extend(_finish_stamp(s, size, taper_radius, f"{LIBRARY_FILE}[{i}]")
                      for i, s in enumerate(_packaged_stamps(split)))
    for folder in stamp_dirs:
        for path in _user_stamp_files(folder):
            # Every file is read and checked, so a bad stamp is reported whatever its split.
            stamp = _finish_stamp(read_stamp_file(path), size, taper_radius, repr(str(path)))
            if user_stamp_split(path.name) == split:
                stamps.append(stamp)
    if not stamps:
        return np.zeros((0, size, size), np.float32)
    return np.stack(stamps)
