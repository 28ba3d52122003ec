"""A training run's backup as one unit: weights, Keras metadata and callback state agree.

``keras.callbacks.BackupAndRestore`` keeps, per epoch, the weights
(:data:`BACKUP_WEIGHTS`) and ``training_metadata.json``, each with the
previous epoch's copy; :class:`ensai_tf.callbacks.StatefulBackup` adds
``callback_state.json`` with the SHA-256 and epoch of the weights it was
written with. :func:`settle_backup` puts the newest complete unit in place
before a resume, so a kill at any moment (a truncated weights file, a state
from another epoch) never makes Keras, the log and the data stream disagree
on the epoch. Nothing here imports TensorFlow or Keras.

Example:
    >>> import tempfile
    >>> settle_backup(tempfile.mkdtemp())
    'none'
"""

import json
import pathlib
import shutil

import h5py

from ensai_tf.errors import ModelDirError
from ensai_tf.model_dir import CALLBACK_STATE_JSON, file_sha256

__all__ = ["BACKUP_METADATA_JSON", "BACKUP_WEIGHTS", "PREVIOUS_SUFFIX", "settle_backup"]

BACKUP_METADATA_JSON = "training_metadata.json"
"""Keras' record of the epoch the backup weights belong to."""

BACKUP_WEIGHTS = "latest.weights.h5"
"""Weights and optimiser state of the last completed epoch (``keras.callbacks.BackupAndRestore``)."""

PREVIOUS_SUFFIX = ".bkp"
"""Suffix of the previous epoch's copy of each backup file."""


def _readable_weights(path):
    """Whether an HDF5 weights file opens and every dataset in it reads back."""
    def read(_, obj):
        if isinstance(obj, h5py.Dataset):
            obj[()]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(read)
        return True
    except (OSError, ValueError, KeyError, RuntimeError, TypeError):
        return False


def _json_or_none(path):
    try:
        value = json.loads(pathlib.Path(path).read_text())
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _backup_unit(backup, weights):
    """``(metadata path, state path)`` that belong with a readable ``weights`` file, or None.

    The callback state records the SHA-256 of the weights it was written with
    and their epoch; the metadata must give the same epoch.
    """
    if not _readable_weights(weights):
        return None
    sha = file_sha256(weights)
    for state in (backup / CALLBACK_STATE_JSON, backup / (CALLBACK_STATE_JSON + PREVIOUS_SUFFIX)):
        record = _json_or_none(state)
        if not record or record.get("weights_sha256") != sha:
            continue
        for meta in (backup / BACKUP_METADATA_JSON,
                     backup / (BACKUP_METADATA_JSON + PREVIOUS_SUFFIX)):
            data = _json_or_none(meta)
            if data is not None and data.get("epoch") == record.get("epoch"):
                return meta, state
    return None


def _install(source, final):
    if source != final:
        shutil.copyfile(source, final)


def settle_backup(backup_dir):
    """Make a run's backup one consistent unit before it is resumed.

    The backup holds the weights, Keras' ``training_metadata.json`` and ensai's
    ``callback_state.json``, each with the previous epoch's copy
    (:data:`PREVIOUS_SUFFIX`). A kill can leave them from different epochs or
    truncated. The callback state records the SHA-256 and epoch of the weights
    it belongs to, so this picks the newest complete unit (latest, else
    previous) whose three files agree, and puts it in place; Keras, the log
    trimming and the data stream then all continue from the same epoch.

    Args:
        backup_dir: the model folder's ``backup/`` folder.

    Returns:
        ``"none"`` (no backup), ``"latest"``, ``"previous"`` (the previous
        epoch was put back) or ``"unchecked"`` (a backup without checksums,
        whose weights read back).

    Raises:
        ModelDirError: no complete unit is left; the message says to start
            over with ``--overwrite``.
    """
    backup = pathlib.Path(backup_dir)
    latest = backup / BACKUP_WEIGHTS
    previous = backup / (BACKUP_WEIGHTS + PREVIOUS_SUFFIX)
    if not latest.exists() and not previous.exists():
        return "none"
    states = [_json_or_none(backup / (CALLBACK_STATE_JSON + s)) for s in ("", PREVIOUS_SUFFIX)]
    if not any(st and "weights_sha256" in st for st in states):
        if latest.exists() and _readable_weights(latest) \
                and _json_or_none(backup / BACKUP_METADATA_JSON) is not None:
            return "unchecked"
    for weights, label in ((latest, "latest"), (previous, "previous")):
        unit = weights.exists() and _backup_unit(backup, weights)
        if unit:
            meta, state = unit
            _install(weights, latest)
            _install(meta, backup / BACKUP_METADATA_JSON)
            _install(state, backup / CALLBACK_STATE_JSON)
            return label
    raise ModelDirError(f"{str(backup)!r}: the training checkpoint is damaged (truncated or "
                        "from mixed epochs) and no complete earlier copy is left; start over "
                        "with --overwrite")
