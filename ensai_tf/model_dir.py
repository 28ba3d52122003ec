"""The model folder: the names of its files and the rule for which one is loaded.

A model folder is what ``ensai train`` and ``ensai combine`` write and what
``ensai predict``, ``ensai evaluate`` and ``ensai export`` read. This module
owns its file names, so no other module spells them, and the loading rule
(docs/design.md §7.3):

1. ``model.keras`` whenever it exists. It is data, read with Keras' safe mode.
2. Otherwise ``combiner.json``, a combined network stored by reference to its
   backbone files (:mod:`ensai_tf.models.stored_combiner`).
3. A SavedModel (``saved_model/`` or a folder holding ``saved_model.pb``) only
   when it is the only model in the folder, or when the caller trusts it.
   SavedModels are programs: loading one runs the graph its author wrote.

It also finds the shipped networks (:func:`shipped_weights_dir`,
:func:`find_weights`). Nothing here imports TensorFlow or Keras.

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / MODEL_KERAS).write_bytes(b"")
    0
    >>> model_source(folder)[0]
    'keras'
"""

import hashlib
import json
import math
import pathlib

from ensai_tf.conventions import PAPER_ORDER
from ensai_tf.errors import ModelDirError

__all__ = [
    "BACKUP_DIR",
    "BEST_KERAS",
    "CALIBRATION_JSON",
    "CALLBACK_STATE_JSON",
    "COMBINER_JSON",
    "CONFIG_YAML",
    "FIGURE1_PNG",
    "LOG_CSV",
    "METRICS_JSON",
    "MODEL_KERAS",
    "RUN_ARTEFACTS",
    "SAVED_MODEL_DIR",
    "SAVED_MODEL_PB",
    "TABLE1_MD",
    "TENSORBOARD_DIR",
    "file_sha256",
    "find_weights",
    "has_combiner_record",
    "mean_error68",
    "shipped_weights_dir",
    "is_model",
    "keras_model_path",
    "model_source",
    "saved_model_path",
]

MODEL_KERAS = "model.keras"
"""The trained network, Keras' zip format (loaded in safe mode)."""
BEST_KERAS = "best.keras"
"""The network at its best validation loss during training."""
SAVED_MODEL_DIR = "saved_model"
"""The SavedModel export of a model folder (a program: loaded only when trusted)."""
SAVED_MODEL_PB = "saved_model.pb"
"""The graph file that marks a folder as a SavedModel."""
COMBINER_JSON = "combiner.json"
"""A combined network stored by reference: backbone files, their SHA-256 and the weights."""
CONFIG_YAML = "config.yaml"
"""The resolved configuration a model was trained with."""
CALIBRATION_JSON = "calibration.json"
"""Post-hoc interval calibration of a model, fitted on the validation split."""
CALLBACK_STATE_JSON = "callback_state.json"
"""Learning-rate schedule and early-stopping state, for ``--resume``."""
LOG_CSV = "log.csv"
"""Per-epoch training log."""
TENSORBOARD_DIR = "tb"
"""TensorBoard event files."""
BACKUP_DIR = "backup"
"""``keras.callbacks.BackupAndRestore`` checkpoints."""
METRICS_JSON = "metrics.json"
"""Test-set metrics written by ``ensai evaluate``."""
TABLE1_MD = "table1.md"
"""The paper's Table 1 for one model, written by ``ensai evaluate``."""
FIGURE1_PNG = "figure1.png"
"""The paper's Figure 1 for one model, written by ``ensai evaluate``."""

RUN_ARTEFACTS = (CONFIG_YAML, TENSORBOARD_DIR, BEST_KERAS, BACKUP_DIR, LOG_CSV, MODEL_KERAS,
                 SAVED_MODEL_DIR, COMBINER_JSON, CALIBRATION_JSON, CALLBACK_STATE_JSON)
"""Files and folders that ``ensai train`` and ``ensai combine`` write into a model folder."""


def keras_model_path(path):
    """The ``.keras`` file a path names or holds, or None.

    Args:
        path: a ``.keras`` file or a model folder.

    Returns:
        ``pathlib.Path`` of the file, or None when there is none.
    """
    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".keras":
        return path
    if path.is_dir() and (path / MODEL_KERAS).is_file():
        return path / MODEL_KERAS
    return None


def saved_model_path(path):
    """The SavedModel folder a path is or holds, or None.

    Args:
        path: a SavedModel folder or a model folder with ``saved_model/``.

    Returns:
        ``pathlib.Path`` of the folder holding ``saved_model.pb``, or None.
    """
    path = pathlib.Path(path)
    if path.is_dir() and (path / SAVED_MODEL_PB).is_file():
        return path
    if path.is_dir() and (path / SAVED_MODEL_DIR / SAVED_MODEL_PB).is_file():
        return path / SAVED_MODEL_DIR
    return None


def has_combiner_record(path):
    """Whether ``path`` is a folder with a ``combiner.json`` (it may still be invalid)."""
    path = pathlib.Path(path)
    return path.is_dir() and (path / COMBINER_JSON).is_file()


def model_source(path, trust_savedmodel=False):
    """Which model a path holds, by the loading rule of this module.

    Args:
        path: a ``.keras`` file, a SavedModel folder or a model folder.
        trust_savedmodel: load a SavedModel even where a ``model.keras`` or a
            ``combiner.json`` is present beside it.

    Returns:
        ``(kind, path)`` with kind ``"keras"``, ``"combined"`` or
        ``"saved_model"``, or ``(None, None)`` when the path holds no model.
        ``"combined"`` is returned for any ``combiner.json``; whether its
        record is valid is checked when it is loaded.
    """
    saved = saved_model_path(path)
    if saved is not None and trust_savedmodel:
        return "saved_model", saved
    keras_path = keras_model_path(path)
    if keras_path is not None:
        return "keras", keras_path
    if has_combiner_record(path):
        return "combined", pathlib.Path(path)
    if saved is not None:
        return "saved_model", saved
    return None, None


def is_model(path):
    """Whether ``path`` holds a model that can be loaded (it may still be corrupt).

    Args:
        path: a ``.keras`` file, a SavedModel folder or a model folder.

    Returns:
        bool.
    """
    return model_source(path)[0] is not None


def file_sha256(path, chunk_bytes=1 << 22):
    """Hex SHA-256 of a file's bytes, read in chunks.

    Args:
        path: file to hash.
        chunk_bytes: bytes read at a time.

    Returns:
        64-character lower-case hex string.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_weights_dir():
    """The repository's ``trained_weights/`` folder (next to the package in a source checkout)."""
    return pathlib.Path(__file__).resolve().parent.parent / "trained_weights"


def mean_error68(folder):
    """Mean 68% test error of a model folder's ``metrics.json``, or infinity when unreadable."""
    try:
        data = json.loads((pathlib.Path(folder) / METRICS_JSON).read_text())
        values = [float(v["error68"]) for k, v in data["metrics"].items() if k != "n"]
        return sum(values) / len(values) if values else math.inf
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return math.inf


def find_weights(weights_dir=None):
    """The model folder ``ensai demo`` uses.

    Args:
        weights_dir: folder of trained networks (default
            :func:`shipped_weights_dir`), or a single model folder.

    Returns:
        ``(path, label)``: the combined model if present, else the network
        with the smallest mean 68% error in its ``metrics.json`` (ties: paper order).

    Raises:
        ModelDirError: no trained model is installed, with instructions.
    """
    root = pathlib.Path(weights_dir) if weights_dir is not None else shipped_weights_dir()
    how = ("train one with 'ensai train --model alexnet --preset cpu --model-dir runs/alexnet' "
           "and run 'ensai demo --weights runs/alexnet', or see trained_weights/README.md")
    if not root.is_dir():
        raise ModelDirError(f"no trained weights are installed: {str(root)!r} does not exist; {how}")
    if is_model(root):
        return root, root.name
    if is_model(root / "combined"):
        return root / "combined", "combined"
    singles = [p for p in sorted(root.iterdir()) if p.is_dir() and is_model(p)]
    if not singles:
        raise ModelDirError(f"no trained weights are installed in {str(root)!r}; {how}")

    def rank(p):
        order = PAPER_ORDER.index(p.name) if p.name in PAPER_ORDER else len(PAPER_ORDER)
        return (mean_error68(p), order, p.name)

    best = min(singles, key=rank)
    return best, best.name
