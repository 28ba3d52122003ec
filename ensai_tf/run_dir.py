"""The training-run folder: checks before a run, atomic writes, resume bookkeeping.

``ensai train`` and ``ensai combine`` write into a model folder (file names in
:mod:`ensai_tf.model_dir`). This module decides whether a folder may be used
(:func:`prepare_model_dir`: never destroys data silently), writes the Keras
file under a temporary name and renames it into place
(:func:`save_keras_atomic`), and reads back what an interrupted run left
(:func:`completed_epochs`, :func:`trim_log`). Call these while holding the
folder's :class:`~ensai_tf.dirlock.ModelDirLock`.

Nothing here imports TensorFlow or Keras.

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> prepare_model_dir(folder).is_dir()
    True
    >>> completed_epochs(folder / BACKUP_DIR)
    0
"""

import csv
import json
import math
import os
import pathlib
import shutil

import yaml

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf.checkpoint import BACKUP_METADATA_JSON, settle_backup
from ensai_tf.dirlock import LOCK_NAME
from ensai_tf.errors import ModelDirError
from ensai_tf.model_dir import (BACKUP_DIR, CALLBACK_STATE_JSON, CONFIG_YAML, LOG_CSV, MODEL_KERAS,
                                RUN_ARTEFACTS, keras_model_path)

__all__ = [
    "BACKUP_METADATA_JSON",
    "CONTINUABLE_KEYS",
    "TMP_PREFIX",
    "completed_epochs",
    "data_cache_dir",
    "is_finished",
    "log_summary",
    "prepare_model_dir",
    "remove_backup",
    "remove_leftovers",
    "resume_point",
    "run_config",
    "save_keras_atomic",
    "trained_keras_file",
    "trim_log",
]

TMP_PREFIX = atomic.TMP_PREFIX
"""Prefix of the temporary names that files are written under before their rename."""


CONTINUABLE_KEYS = ("train.epochs", "train.time_budget_minutes")
"""Config keys that may change when a finished run is continued with ``--resume``."""


def _config_differences(saved, cfg):
    a, b = config_lib.config_to_dict(saved), config_lib.config_to_dict(cfg)
    return [f"{s}.{k} ({a[s][k]!r} -> {b[s][k]!r})" for s in b for k in b[s]
            if a.get(s, {}).get(k) != b[s][k]]


def _saved_config(model_dir):
    saved_path = model_dir / CONFIG_YAML
    try:
        return config_lib.config_from_dict(yaml.safe_load(saved_path.read_text()))
    except (config_lib.ConfigError, yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise ModelDirError(f"{saved_path}: cannot read the run's config ({reason})") from None


def _check_continuable(model_dir, diff, cfg):
    """Refuse to continue a finished run unless only its epochs or time budget change."""
    done = log_summary(model_dir / LOG_CSV)["epochs"]
    others = [d for d in diff if d.split(" ", 1)[0] not in CONTINUABLE_KEYS]
    if diff and not others and cfg.train.epochs > done:
        return
    how = (f"to continue it, resume with more epochs (--set train.epochs=N, N > {done}) or a "
           "new time budget (--set train.time_budget_minutes=M)")
    if others:
        how = (f"it can be continued only with a new train.epochs or train.time_budget_minutes, "
               f"not with {'; '.join(others)}")
    raise ModelDirError(f"the run in {str(model_dir)!r} has already finished ({MODEL_KERAS} "
                        f"exists, {done} epoch{'' if done == 1 else 's'} logged); {how}; or use "
                        "--overwrite to train again")


def _check_resumable(model_dir, cfg):
    """Refuse ``--resume``: nothing to resume, a finished run without new epochs or budget,
    or a config that differs."""
    if not (model_dir / CONFIG_YAML).is_file():
        raise ModelDirError(f"nothing to resume in {str(model_dir)!r}: it holds no "
                            f"{CONFIG_YAML}; start a new run without --resume")
    diff = [] if cfg is None else _config_differences(_saved_config(model_dir), cfg)
    if is_finished(model_dir):
        _check_continuable(model_dir, diff, cfg)
        return
    if diff:
        raise ModelDirError(
            f"cannot resume {str(model_dir)!r} with a different config: "
            f"{'; '.join(diff)}. Resume with the settings the run started with "
            f"(see its {CONFIG_YAML}) or use --overwrite")


def _remove_artefacts(model_dir):
    """Delete this package's files in a model folder (:data:`~ensai_tf.model_dir.RUN_ARTEFACTS`)."""
    for name in RUN_ARTEFACTS:
        path = model_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_model_dir(model_dir, cfg=None, resume=False, overwrite=False):
    """Check a model folder and make it ready; never destroys data silently.

    The lock file and temporary files of a killed run do not count as
    contents; with ``resume`` or ``overwrite`` the temporary files are
    deleted, so call this while holding the folder's
    :class:`~ensai_tf.dirlock.ModelDirLock` (as ``ensai train`` does).

    Args:
        model_dir: the folder.
        cfg: the resolved config; with ``resume`` it must equal the one the
            run started with (a finished run: up to :data:`CONTINUABLE_KEYS`).
        resume: continue the run whose files are in the folder, interrupted
            or finished.
        overwrite: delete this package's files in the folder (see
            :data:`~ensai_tf.model_dir.RUN_ARTEFACTS`) and start afresh.

    Returns:
        ``model_dir`` as a ``pathlib.Path``; the folder exists.

    Raises:
        ModelDirError: the path is a file; the folder already holds files
            and neither flag is given; both flags are given; there is nothing
            to resume; its config differs; or the run has finished and the
            config does not give it more epochs (``train.epochs`` above the
            epochs logged) or a new ``train.time_budget_minutes`` (only these
            may change to continue a finished run, see :func:`is_finished`).
    """
    model_dir = pathlib.Path(model_dir)
    if resume and overwrite:
        raise ModelDirError("--resume and --overwrite contradict each other; give one")
    if model_dir.exists() and not model_dir.is_dir():
        raise ModelDirError(f"model folder {str(model_dir)!r} is a file, not a folder")
    contents = sorted(p.name for p in model_dir.iterdir()
                      if p.name != LOCK_NAME and not p.name.startswith(TMP_PREFIX)
                      ) if model_dir.is_dir() else []
    if resume or overwrite:
        remove_leftovers(model_dir)
    if resume:
        _check_resumable(model_dir, cfg)
        return model_dir
    if contents and not overwrite:
        raise ModelDirError(f"model folder {str(model_dir)!r} is not empty ({', '.join(contents[:5])}"
                            f"{', ...' if len(contents) > 5 else ''}); pass --resume to continue "
                            "its training or --overwrite to start afresh")
    if overwrite:
        _remove_artefacts(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    return model_dir


def remove_leftovers(model_dir):
    """Delete the temporary files of a killed run.

    Call it while holding the folder's :class:`~ensai_tf.dirlock.ModelDirLock`:
    another run's temporary files are not leftovers.

    Args:
        model_dir: the model folder; nothing happens when it does not exist.
    """
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return
    for path in model_dir.glob(TMP_PREFIX + "*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def save_keras_atomic(model, path):
    """``model.save(path)`` under a temporary name in the same folder, then renamed.

    Args:
        model: the Keras model.
        path: the final ``.keras`` file; an existing one is replaced only once
            the new file is complete, so a kill leaves the old file or the new.

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    path = pathlib.Path(path)
    tmp = atomic.temp_path(path, ".keras")  # Keras wants the .keras suffix
    try:
        model.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_backup(backup_dir):
    """Delete a run's ``backup/`` folder; renamed first so no half-deleted backup is seen.

    ``ensai train`` calls it only after the exports, so a run killed at any
    moment before still resumes.

    Args:
        backup_dir: the model folder's ``backup/`` folder; nothing happens
            when it does not exist.
    """
    backup_dir = pathlib.Path(backup_dir)
    if backup_dir.exists():
        gone = atomic.temp_path(backup_dir)
        os.replace(backup_dir, gone)
        shutil.rmtree(gone, ignore_errors=True)


def trim_log(log_path, epochs):
    """Keep the header and the rows of the first ``epochs`` epochs of a CSV log (resume).

    A run killed after logging an epoch but before backing it up repeats that
    epoch on resume; trimming keeps one row per epoch.

    Args:
        log_path: the run's ``log.csv``; nothing happens when it does not exist.
        epochs: number of completed epochs (rows with epoch index below it are kept).

    Example:
        >>> import pathlib, tempfile
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
        >>> _ = log.write_text("epoch,loss\\n0,1.0\\n1,0.9\\n")
        >>> trim_log(log, 1)
        >>> log.read_text()
        'epoch,loss\\n0,1.0\\n'
    """
    log_path = pathlib.Path(log_path)
    if not log_path.is_file():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    if not lines:
        return
    kept = [lines[0]]
    for line in lines[1:]:
        first = line.split(",", 1)[0].strip()
        if first.isdigit() and int(first) < epochs:
            kept.append(line)
    if len(kept) != len(lines):
        atomic.write_text(log_path, "".join(kept))


def completed_epochs(backup_dir):
    """Epochs completed by an interrupted run, from its BackupAndRestore metadata (0 if none).

    Args:
        backup_dir: the model folder's ``backup/`` folder (Keras
            ``BackupAndRestore``).

    Returns:
        int: the ``"epoch"`` of ``training_metadata.json``, or 0 without that file.

    Raises:
        ModelDirError: the metadata file is not valid JSON or has no integer ``"epoch"``.
    """
    meta = pathlib.Path(backup_dir) / BACKUP_METADATA_JSON
    if not meta.is_file():
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelDirError(f"{meta}: unreadable backup metadata ({err}); "
                            "use --overwrite to start afresh") from None


def trained_keras_file(path):
    """The ``model.keras`` of a trained model folder, or the ``.keras`` file given.

    Args:
        path: a model folder written by ``ensai train`` or a ``.keras`` file.

    Returns:
        ``pathlib.Path`` of the ``.keras`` file.

    Raises:
        ModelDirError: there is no such file.
    """
    found = keras_model_path(path)
    if found is None:
        raise ModelDirError(f"{str(path)!r} is not a trained model folder: it has no {MODEL_KERAS} "
                            "(train it with 'ensai train' first)")
    return found


def run_config(path):
    """The config a model was trained with: its folder's ``config.yaml``, else the paper preset.

    Args:
        path: a model folder or a ``.keras`` file in one.

    Returns:
        :class:`~ensai_tf.config.ExperimentConfig`.
    """
    path = pathlib.Path(path)
    cfg_path = (path if path.is_dir() else path.parent) / CONFIG_YAML
    if not cfg_path.is_file():
        return config_lib.get_preset("paper")
    return config_lib.load_config(cfg_path, preset="paper")


def data_cache_dir(cfg):
    """The data cache folder of a config (``data.cache_dir``), or None for the default.

    Args:
        cfg: :class:`~ensai_tf.config.ExperimentConfig`.

    Returns:
        str or None, as :func:`ensai_tf.data.pipeline.make_dataset` takes it.
    """
    return cfg.data.cache_dir or None


def is_finished(model_dir):
    """Whether a run folder holds a finished run: ``model.keras`` and no ``backup/``.

    ``ensai train`` removes the backup only after its exports, so a folder with
    both is a run killed while finishing, which ``--resume`` completes.

    Args:
        model_dir: the model folder.

    Returns:
        bool.
    """
    model_dir = pathlib.Path(model_dir)
    return (model_dir / MODEL_KERAS).exists() and not (model_dir / BACKUP_DIR).exists()


def _float_or_none(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def log_summary(log_path):
    """What a run's ``log.csv`` says: epochs logged, best validation loss, last learning rate.

    Args:
        log_path: the run's ``log.csv`` (Keras ``CSVLogger``: one row per epoch).

    Returns:
        dict: ``"epochs"`` (int, rows logged; 0 without the file),
        ``"best_val_loss"`` and ``"best_epoch"`` (1-based; None without a
        validation loss), ``"learning_rate"`` of the last row (None if not logged).

    Example:
        >>> import pathlib, tempfile
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
        >>> _ = log.write_text("epoch,learning_rate,val_loss\\n0,0.001,0.5\\n1,0.0001,0.25\\n")
        >>> log_summary(log)
        {'epochs': 2, 'best_val_loss': 0.25, 'best_epoch': 2, 'learning_rate': 0.0001}
    """
    log_path = pathlib.Path(log_path)
    summary = {"epochs": 0, "best_val_loss": None, "best_epoch": None, "learning_rate": None}
    if not log_path.is_file():
        return summary
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    summary["epochs"] = len(rows)
    losses = [(_float_or_none(r.get("val_loss")), i) for i, r in enumerate(rows)]
    losses = [(v, i) for v, i in losses if v is not None]
    if losses:
        best, index = min(losses)
        summary.update(best_val_loss=best, best_epoch=index + 1)
    if rows:
        summary["learning_rate"] = _float_or_none(rows[-1].get("learning_rate"))
    return summary


def resume_point(model_dir, steps_per_epoch):
    """Where ``ensai train --resume`` continues a run: epoch, step and best validation loss.

    Args:
        model_dir: the model folder.
        steps_per_epoch: ``train.steps_per_epoch`` of the run.

    Returns:
        dict: ``"finished"`` (bool, :func:`is_finished`), ``"epoch"`` (epochs
        completed: from the backup of an interrupted run, from ``log.csv`` for
        a finished one), ``"step"`` (= epoch x steps_per_epoch), ``"best_val_loss"``
        (float or None) and ``"learning_rate"`` (the last logged; None if unknown).
    """
    model_dir = pathlib.Path(model_dir)
    logged = log_summary(model_dir / LOG_CSV)
    finished = is_finished(model_dir)
    if not finished:
        settle_backup(model_dir / BACKUP_DIR)
    epoch = logged["epochs"] if finished else completed_epochs(model_dir / BACKUP_DIR)
    best = logged["best_val_loss"]
    state = model_dir / BACKUP_DIR / CALLBACK_STATE_JSON
    if not finished and state.is_file():
        try:
            best = _float_or_none(json.loads(state.read_text())["checkpoint"]["best"])
        except (ValueError, KeyError, TypeError):
            pass
    return {"finished": finished, "epoch": epoch, "step": epoch * int(steps_per_epoch),
            "best_val_loss": best, "learning_rate": logged["learning_rate"]}
