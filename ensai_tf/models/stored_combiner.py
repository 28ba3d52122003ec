"""A combined network stored by reference to its backbone files (docs/design.md §7.4).

``combiner.json`` names the backbone files, relative to its own folder, with
their SHA-256, and holds the combination weights and the views each backbone
averages. ``trained_weights/combined`` ships this way, beside the backbones it
merges, instead of a ``model.keras`` holding a second copy of every backbone.
:func:`load_combined` rebuilds the network (:mod:`ensai_tf.models.combiner`)
after checking every field and checksum, reading no backbone outside
:func:`trusted_roots` unless trusted.
"""

import json
import os
import pathlib

import numpy as np

from ensai_tf import model_dir
from ensai_tf.errors import ModelDirError
from ensai_tf.models.combiner import COMBINE_MODES, build_combiner, load_backbones, with_views
from ensai_tf.symmetry import DIHEDRAL_GROUP

__all__ = ["MAX_BACKBONES", "MAX_RECORD_BYTES", "backbone_files", "combiner_record",
           "load_combined", "record_views", "trusted_roots"]

MAX_BACKBONES = 64
"""Most backbones a combiner record may name."""

MAX_RECORD_BYTES = 16 << 20
"""Largest ``combiner.json`` read, bytes (the shipped one is about 2 kB)."""


def combiner_record(model, backbone_paths, folder, views=DIHEDRAL_GROUP[:1]):
    """What ``combiner.json`` needs to rebuild ``model`` from its backbone files.

    Args:
        model: a combined network from :func:`build_combiner`.
        backbone_paths: the ``.keras`` files its backbones were loaded from,
            in order.
        folder: the folder ``combiner.json`` is written to; the paths are
            stored relative to it.
        views: the views every backbone averages over (:func:`with_views`),
            or a list of such view sets, one per backbone.

    Returns:
        Dict with ``backbones`` (relative paths), ``backbone_sha256``,
        ``reference``, ``mode``, ``weights`` (the combination weights as
        nested lists; float32 values survive JSON exactly) and ``views``
        (``[transpose, flip_rows, flip_cols]`` per view; a list of those
        lists, one per backbone, where the backbones' views differ).
    """
    folder = pathlib.Path(folder).resolve()
    align = model.get_layer("parity_align")
    params = model.get_layer("params")
    per_backbone = [[[bool(v) for v in g] for g in views_of]
                    for views_of in _per_backbone(views, len(backbone_paths))]
    same = all(v == per_backbone[0] for v in per_backbone)
    return {"backbones": [os.path.relpath(pathlib.Path(p).resolve(), folder)
                          for p in backbone_paths],
            "backbone_sha256": [model_dir.file_sha256(p) for p in backbone_paths],
            "reference": int(align.reference), "mode": params.mode,
            "weights": [w.tolist() for w in params.get_weights()],
            "views": per_backbone[0] if same else per_backbone}


def _per_backbone(views, count):
    """``views`` (one view set, or one per backbone) as a list of ``count`` view sets."""
    views = list(views)
    if views and not isinstance(views[0][0], (list, tuple)):  # one view set: triples of flags
        return [views] * count
    if len(views) != count:
        raise ValueError(f"{len(views)} view sets for {count} backbones")
    return views


def record_views(record):
    """The views each backbone of a combiner record averages over, one list per backbone.

    Args:
        record: a dict read from ``combiner.json``; without ``views`` every
            backbone sees the image as given (records written before views).

    Returns:
        list (one per backbone) of lists of ``(transpose, flip_rows,
        flip_cols)`` tuples.

    Raises:
        ModelDirError: ``views`` is neither one list of distinct views nor
            one such list per backbone.
    """
    views = record.get("views", [list(DIHEDRAL_GROUP[0])])
    count = len(record["backbones"])
    nested = isinstance(views, list) and bool(views) and all(
        isinstance(v, list) and v and all(isinstance(g, list) for g in v) for v in views)
    sets = views if nested else [views] * count
    if len(sets) != count or not all(_valid_view_set(v) for v in sets):
        raise ModelDirError(f"'views' must be a list of distinct [transpose, flip_rows, "
                            f"flip_cols] triples of true/false, or {count} such lists, one per "
                            "backbone")
    return [[tuple(g) for g in v] for v in sets]


def _valid_view_set(views):
    return (isinstance(views, list) and 1 <= len(views) <= len(DIHEDRAL_GROUP)
            and all(isinstance(g, list) and tuple(g) in DIHEDRAL_GROUP for g in views)
            and len({tuple(g) for g in views}) == len(views))


def backbone_files(folder, record):
    """The backbone files of a combiner record, absolute (stored relative to ``folder``)."""
    folder = pathlib.Path(folder).resolve()
    return [pathlib.Path(os.path.normpath(folder / p)) for p in record["backbones"]]


def trusted_roots(folder):
    """Folders a combiner in ``folder`` may load backbones from without being trusted.

    The folder that holds ``folder`` (so the combiner's own folder and its
    siblings, where ``ensai combine`` writes beside the networks it combines)
    and the shipped ``trained_weights/``; symbolic links are resolved.

    Args:
        folder: the folder holding ``combiner.json``.

    Returns:
        list of ``pathlib.Path``, absolute.
    """
    return [pathlib.Path(os.path.realpath(folder)).parent,
            pathlib.Path(os.path.realpath(model_dir.shipped_weights_dir()))]


def _check_record(record, where):
    """Refuse a record whose fields have the wrong types or sizes (before any file is read)."""
    backbones, sums = record["backbones"], record["backbone_sha256"]
    if not (isinstance(backbones, list) and 1 <= len(backbones) <= MAX_BACKBONES
            and all(isinstance(p, str) and p for p in backbones)):
        raise ModelDirError(f"{where!r}: 'backbones' must be a list of 1 to {MAX_BACKBONES} "
                            "file names")
    if not (isinstance(sums, list) and all(isinstance(h, str) and len(h) == 64 for h in sums)):
        raise ModelDirError(f"{where!r}: 'backbone_sha256' must be a list of SHA-256 hex digests")
    reference = record["reference"]
    if isinstance(reference, bool) or not isinstance(reference, int) \
            or not 0 <= reference < len(backbones):
        raise ModelDirError(f"{where!r}: 'reference' must be a backbone index from 0 to "
                            f"{len(backbones) - 1}")
    if not isinstance(record["mode"], str) or record["mode"] not in COMBINE_MODES:
        raise ModelDirError(f"{where!r}: 'mode' must be one of {', '.join(COMBINE_MODES)}")
    try:
        record_views(record)
    except ModelDirError as err:
        raise ModelDirError(f"{where!r}: {err}") from None


def _check_backbone_places(folder, paths, where):
    """Refuse backbones outside :func:`trusted_roots` (checked on names only; nothing is read)."""
    roots = trusted_roots(folder)
    for path in paths:
        real = pathlib.Path(os.path.realpath(path))
        if not any(real == root or root in real.parents for root in roots):
            raise ModelDirError(
                f"{where!r} names the backbone {str(path)[:200]!r}, which lies outside the "
                f"folder holding the combiner and the shipped trained_weights/; move the "
                "networks beside the combiner, or pass --trust-savedmodel if you trust its "
                "author")


def _read_record(folder):
    path = pathlib.Path(folder) / model_dir.COMBINER_JSON
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise ModelDirError(f"{str(path)!r} is {path.stat().st_size} bytes; a combiner "
                                f"record holds at most {MAX_RECORD_BYTES}")
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ModelDirError(f"cannot read {str(path)!r}: {err}") from None
    except RecursionError:
        raise ModelDirError(f"{str(path)!r} is not a combiner record (nested too deeply)") from None
    except ValueError as err:
        raise ModelDirError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(record, dict):
        raise ModelDirError(f"{str(path)!r} is not a combiner record (a JSON object)")
    return record


def load_combined(folder, trust=False):
    """Rebuild a combined network stored by reference (:func:`combiner_record`).

    Each backbone file must be the one the combiner was trained on: its
    SHA-256 is checked, so a retrained backbone never silently changes the
    combination.

    Args:
        folder: the folder holding ``combiner.json``.
        trust: load backbones from anywhere; by default they must lie under
            :func:`trusted_roots` (checked before any backbone file is read).

    Returns:
        The combined Keras model, images ``(B, H, W, 1)`` -> float32
        ``(B, 5)`` in target units, computing in float32.

    Raises:
        ModelDirError: ``combiner.json`` is missing, corrupt or incomplete, a
            backbone is missing, corrupt, changed or (without ``trust``)
            outside the trusted folders, or the weights do not fit; the
            message names the file.
    """
    folder = pathlib.Path(folder)
    record = _read_record(folder)
    where = str(folder / model_dir.COMBINER_JSON)
    missing = [k for k in ("backbones", "backbone_sha256", "reference", "mode", "weights")
               if k not in record]
    if missing:
        raise ModelDirError(f"{where!r} lacks {missing}: it is not a combiner stored by reference")
    _check_record(record, where)
    paths = backbone_files(folder, record)
    if not trust:
        _check_backbone_places(folder, paths, where)
    if len(paths) != len(record["backbone_sha256"]):
        raise ModelDirError(f"{where!r} lists {len(paths)} backbones but "
                            f"{len(record['backbone_sha256'])} checksums")
    for path, expected in zip(paths, record["backbone_sha256"]):
        if path.is_file() and model_dir.file_sha256(path) != expected:
            raise ModelDirError(f"backbone {str(path)!r} is not the file the combiner in "
                                f"{str(folder)!r} was trained on (SHA-256 differs); run "
                                "'ensai combine' again on the current networks")
    backbones = [with_views(b, v) for b, v in zip(load_backbones(paths), record_views(record))]
    try:
        model = build_combiner(backbones, reference=record["reference"], mode=record["mode"])
        model.get_layer("params").set_weights(
            [np.asarray(w, dtype=np.float32) for w in record["weights"]])
    except (ValueError, TypeError) as err:
        raise ModelDirError(f"{where!r}: its combination weights do not fit its "
                            f"{len(paths)} backbones ({err})") from None
    return model
