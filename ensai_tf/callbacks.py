"""Keras callbacks of a training run (docs/design.md §7.2-7.3, §8.1).

:func:`build_callbacks` assembles the list that ``ensai train`` passes to
``model.fit``; the classes here are the ones Keras does not provide:

- :class:`StopOnNonFinite`: stops at the first NaN or Inf loss, before
  anything is saved from the bad weights;
- :class:`AtomicCheckpoint`: ``best.keras`` written under a temporary name
  and renamed;
- :class:`StatefulBackup`: ``BackupAndRestore`` that also keeps the plateau
  and checkpoint counters, so an interrupted run resumes exactly;
- :class:`ValidationImages`: validation images with true and predicted
  parameters in TensorBoard;
- :class:`Warmup`: linear learning-rate warm-up;
- :class:`TimeBudget`: ends training at the first epoch end past a
  wall-clock budget.
"""

import json
import math
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from ensai_tf import atomic, conventions, losses
from ensai_tf.errors import NonFiniteLossError
from ensai_tf.model_dir import (BACKUP_DIR, BEST_KERAS, CALLBACK_STATE_JSON, LOG_CSV,
                                TENSORBOARD_DIR)
from ensai_tf.run_dir import completed_epochs

__all__ = [
    "AtomicCheckpoint",
    "StatefulBackup",
    "StopOnNonFinite",
    "TimeBudget",
    "ValidationImages",
    "Warmup",
    "build_callbacks",
]

_INTEGER_STATE = ("wait", "cooldown_counter")


class StatefulBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also keeps the plateau and checkpoint counters.

    Keras backs up weights, optimiser state (learning rate included) and
    the epoch; the ``best``/``wait`` counters of ReduceLROnPlateau and
    ModelCheckpoint would otherwise restart on resume. Put it last in the
    callback list so that it restores after the others have reset. The
    counters are stored in ``callback_state.json`` in the backup folder.

    Args:
        backup_dir: the model folder's ``backup/`` folder.
        stateful: ``{name: (callback, attribute names)}`` of the counters to
            keep, e.g. ``{"plateau": (plateau, ("best", "wait"))}``.
    """

    def __init__(self, backup_dir, stateful):
        # the backup outlives fit(): train() deletes it after the exports,
        # so a kill between the end of fit and the exports still resumes
        super().__init__(backup_dir, save_freq="epoch", double_checkpoint=True,
                         delete_checkpoint=False)
        self._stateful = stateful

    def _state_path(self):
        return pathlib.Path(self.backup_dir) / CALLBACK_STATE_JSON

    def _save_model(self):
        super()._save_model()
        state = {name: {k: float(getattr(cb, k)) for k in keys if hasattr(cb, k)}
                 for name, (cb, keys) in self._stateful.items()}
        atomic.write_text(self._state_path(), json.dumps(state))

    def _load_model(self):
        super()._load_model()
        if self._state_path().is_file():
            state = json.loads(self._state_path().read_text())
            for name, values in state.items():
                cb = self._stateful.get(name, (None, ()))[0]
                for k, v in values.items():
                    if cb is not None:
                        setattr(cb, k, int(v) if k in _INTEGER_STATE else v)


class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes under a temporary name and renames.

    A kill while ``best.keras`` is being written leaves the previous
    best checkpoint intact instead of a truncated zip. Takes the arguments
    of ``keras.callbacks.ModelCheckpoint``.
    """

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        tmp = atomic.temp_path(final, ".keras")
        self.filepath = str(tmp)
        try:
            super()._save_model(epoch, batch, logs)
            if tmp.exists():
                os.replace(tmp, final)
        finally:
            self.filepath = final
            tmp.unlink(missing_ok=True)


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first NaN or Inf loss, before anything is saved.

    Replaces ``TerminateOnNaN``, which lets the epoch end run: the backup
    would then save the bad weights. This callback raises
    :class:`~ensai_tf.errors.NonFiniteLossError` at the end of the batch
    (or epoch, for a non-finite validation loss), so the checkpoint, the
    backup and the exports keep the last good weights. Put it first in
    the callback list.

    Args:
        model_dir: the model folder (named in the error message, with the
            checkpoint and backup it still holds).
    """

    def __init__(self, model_dir):
        super().__init__()
        self._model_dir = pathlib.Path(model_dir)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _fail(self, what, value, where):
        best = self._model_dir / BEST_KERAS
        backup = self._model_dir / BACKUP_DIR
        kept = []
        if best.is_file():
            kept.append(f"the best checkpoint {str(best)!r}")
        backed_up = completed_epochs(backup)
        if backed_up:
            kept.append(f"the backup of epoch {backed_up}")
        kept = " and ".join(kept) if kept else "no checkpoint (none was saved yet)"
        raise NonFiniteLossError(
            f"model folder {str(self._model_dir)!r}: the {what} became {value} {where}; "
            f"training stopped and nothing was saved from the bad weights (kept: {kept}). "
            "Lower train.learning_rate or set train.clipnorm, then start again with "
            "--overwrite")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._fail("training loss", float(loss),
                       f"at epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                name = "validation loss" if key == "val_loss" else "training loss"
                self._fail(name, float(value), f"at the end of epoch {epoch + 1}")


def _parameter_table(params, pred):
    """Markdown table of true / predicted parameters, one row per example."""
    n = params.shape[1]
    header = "| # | " + " | ".join(conventions.target_names(n)) + " |"
    lines = [header, "|" + "---|" * (n + 1)]
    for i, (t, p) in enumerate(zip(params, pred)):
        cells = " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(t, p))
        lines.append(f"| {i} | {cells} |")
    return "true / predicted (parity-corrected)\n\n" + "\n".join(lines)


class ValidationImages(keras.callbacks.Callback):
    """Writes a few validation inputs with true and predicted parameters.

    At every epoch end, ``tf.summary.image`` shows the images (scaled to
    [0, 1] per image, origin at the top as TensorBoard draws them) and
    ``tf.summary.text`` a Markdown table of true and parity-corrected
    predicted parameters (docs/design.md §8.1).

    Args:
        images: ``(K, H, W, 1)`` validation images, as the network takes them.
        params: ``(K, n)`` their true parameters (arcsec / dimensionless).
        log_dir: TensorBoard folder to write to.
    """

    def __init__(self, images, params, log_dir):
        super().__init__()
        self._images = np.asarray(images, dtype=np.float32)
        self._params = np.asarray(params, dtype=np.float64)
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def on_epoch_end(self, epoch, logs=None):
        pred = np.asarray(self.model(self._images, training=False), dtype=np.float64)
        n = self._params.shape[1]
        # a Gaussian head puts its means first
        pred = np.asarray(losses.parity_correct(self._params, pred[:, :n]), dtype=np.float64)
        lo = self._images.min(axis=(1, 2, 3), keepdims=True)
        hi = self._images.max(axis=(1, 2, 3), keepdims=True)
        shown = (self._images - lo) / np.where(hi > lo, hi - lo, 1.0)
        text = _parameter_table(self._params, pred)
        with self._writer.as_default(step=epoch):
            tf.summary.image("validation/images", shown, max_outputs=len(shown))
            tf.summary.text("validation/parameters", text)
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()


class Warmup(keras.callbacks.Callback):
    """Linear learning-rate warm-up over the first steps (docs/design.md §7.2 [R]).

    Uses the optimiser's global step, so it is resume-safe, and stops
    touching the rate after ``steps`` so that plateau decay owns it.

    Args:
        base_lr: the learning rate reached at the end of the warm-up.
        steps: number of warm-up steps (batches).
    """

    def __init__(self, base_lr, steps):
        super().__init__()
        self._base_lr = float(base_lr)
        self._steps = int(steps)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step <= self._steps:
            self.model.optimizer.learning_rate = self._base_lr * min(1.0, (step + 1)
                                                                     / self._steps)


class TimeBudget(keras.callbacks.Callback):
    """Ends training at the first epoch end past a wall-clock budget.

    The epoch completes (validation, checkpoint and backup included), so
    the run finishes normally: best weights restored and exported. A
    resumed run gets a fresh budget.

    Args:
        minutes: the budget, wall-clock minutes.
    """

    def __init__(self, minutes):
        super().__init__()
        self._seconds = 60.0 * float(minutes)
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._start >= self._seconds:
            print(f"ensai train: time budget of {self._seconds / 60:.1f} min reached "
                  f"after epoch {epoch + 1}; finishing")
            self.model.stop_training = True


def build_callbacks(cfg, model_dir, sample=None, resume=False, extra=()):
    """The training callbacks (docs/design.md §7.2-7.3 [R]).

    Args:
        cfg: the :class:`~ensai_tf.config.ExperimentConfig`.
        model_dir: the model folder.
        sample: optional ``(images, params)`` validation examples to show in
            TensorBoard.
        resume: append to an existing CSV log.
        extra: further callbacks, run before the backup callback.

    Returns:
        List of Keras callbacks: StopOnNonFinite (raises
        :class:`~ensai_tf.errors.NonFiniteLossError` on a NaN/Inf loss),
        TensorBoard, ValidationImages, ModelCheckpoint(best.keras, written
        atomically), ReduceLROnPlateau, CSVLogger, optional TimeBudget and
        Warmup, the extras and, last, the backup.
    """
    model_dir = pathlib.Path(model_dir)
    t = cfg.train
    checkpoint = AtomicCheckpoint(str(model_dir / BEST_KERAS), monitor="val_loss",
                                  save_best_only=True)
    # [R] docs/design.md §7.2: divide the lr by 10 on a validation plateau, down to 1e-6
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=t.plateau_factor,
                                                patience=t.plateau_patience,
                                                min_lr=t.min_learning_rate)
    callbacks = [
        StopOnNonFinite(model_dir),  # first: stops before any other callback sees bad weights
        keras.callbacks.TensorBoard(log_dir=str(model_dir / TENSORBOARD_DIR),
                                    update_freq=max(1, min(100, t.steps_per_epoch // 10))),
    ]
    if sample is not None and t.image_summaries > 0:
        images, params = sample
        callbacks.append(ValidationImages(images[: t.image_summaries], params[: t.image_summaries],
                                          model_dir / TENSORBOARD_DIR / "images"))
    callbacks += [checkpoint, plateau,
                  keras.callbacks.CSVLogger(str(model_dir / LOG_CSV), append=resume)]
    if t.time_budget_minutes > 0:
        callbacks.append(TimeBudget(t.time_budget_minutes))
    if t.warmup_steps > 0:
        callbacks.append(Warmup(t.learning_rate, t.warmup_steps))
    callbacks += list(extra)
    callbacks.append(StatefulBackup(str(model_dir / BACKUP_DIR),
                                    {"plateau": (plateau, ("best", "wait", "cooldown_counter")),
                                     "checkpoint": (checkpoint, ("best",))}))
    return callbacks
