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
  wall-clock budget;
- :class:`RunProgress`: after each epoch, how long it took and an estimate
  of the time left for the whole run or its time budget;
- :class:`InitialState`: starts the plateau and checkpoint counters of a
  continued finished run from its log;
- :func:`announce_run`, :func:`summarise_run`: the lines opening and closing a run.
"""

import json
import math
import os
import pathlib
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from ensai_tf import atomic, conventions, losses
from ensai_tf.errors import ModelDirError, NonFiniteLossError
from ensai_tf.checkpoint import BACKUP_WEIGHTS, PREVIOUS_SUFFIX
from ensai_tf.distribute import all_workers
from ensai_tf.model_dir import (BACKUP_DIR, BEST_KERAS, CALIBRATION_JSON, CALLBACK_STATE_JSON,
                                CONFIG_YAML, LOG_CSV, MODEL_KERAS, SAVED_MODEL_DIR,
                                TENSORBOARD_DIR, file_sha256)
from ensai_tf.run_dir import completed_epochs, log_summary

__all__ = [
    "AtomicCheckpoint",
    "InitialState",
    "RunProgress",
    "StatefulBackup",
    "StopOnNonFinite",
    "TimeBudget",
    "ValidationImages",
    "Warmup",
    "announce_run",
    "build_callbacks",
    "format_duration",
    "summarise_run",
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
        # the previous epoch's state stays beside Keras' previous weights and metadata
        path = self._state_path()
        if path.is_file():
            shutil.copyfile(path, path.with_name(path.name + PREVIOUS_SUFFIX))
        super()._save_model()
        state = {name: {k: float(getattr(cb, k)) for k in keys if hasattr(cb, k)}
                 for name, (cb, keys) in self._stateful.items()}
        # the checksum and epoch tie this state to its weights and metadata (run_dir.settle_backup)
        weights = pathlib.Path(self.backup_dir) / BACKUP_WEIGHTS
        state["weights_sha256"] = file_sha256(weights)
        state["epoch"] = int(self._current_epoch)
        atomic.write_text(path, json.dumps(state))

    def _load_model(self):
        super()._load_model()
        if not self._state_path().is_file():
            return
        try:
            state = json.loads(self._state_path().read_text())
            for name, values in state.items():
                cb = self._stateful.get(name, (None, ()))[0]
                if cb is None or not isinstance(values, dict):
                    continue
                for k, v in values.items():
                    setattr(cb, k, int(v) if k in _INTEGER_STATE else float(v))
        except (ValueError, TypeError, AttributeError) as err:
            raise ModelDirError(f"{str(self._state_path())!r} is damaged ({err}); start over with "
                                "--overwrite") from None


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
    resumed run gets a fresh budget. In a multi-worker run every worker stops
    once any worker's clock is past the budget.

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
        spent = time.monotonic() - self._start >= self._seconds
        # every worker of a multi-worker run stops at the same epoch, or the others would wait
        if not all_workers(self.model.distribute_strategy, not spent):
            print(f"ensai train: time budget of {self._seconds / 60:.1f} min reached "
                  f"after epoch {epoch + 1}; finishing")
            self.model.stop_training = True


def format_duration(seconds):
    """A duration for people: ``"42 s"``, ``"3 min 20 s"``, ``"9 h 10 min"``.

    Args:
        seconds: the duration, seconds (>= 0).

    Returns:
        str.

    Example:
        >>> format_duration(42.4), format_duration(200), format_duration(33000)
        ('42 s', '3 min 20 s', '9 h 10 min')
    """
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class RunProgress(keras.callbacks.Callback):
    """Prints how long each epoch took and about how long the run has left.

    Keras' progress bar estimates the time left in the current epoch; this
    adds, before the next epoch starts, the estimate for the rest of the run:
    the remaining epochs times the mean epoch time so far, capped by what is
    left of the time budget (:class:`TimeBudget` stops at the first epoch end
    past it, so the cap is rounded up to whole epochs).

    Args:
        epochs: ``train.epochs``, the last epoch of the run.
        budget_minutes: ``train.time_budget_minutes`` (0: no budget).
        print_fn: where the line goes (default ``print``).
    """

    def __init__(self, epochs, budget_minutes=0.0, print_fn=print):
        super().__init__()
        self._epochs = int(epochs)
        self._budget = 60.0 * float(budget_minutes)
        self._print = print_fn
        self._start = None
        self._done = 0
        self._pending = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        self._done = 0
        self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        self._done += 1
        elapsed = time.monotonic() - self._start
        per_epoch = elapsed / self._done
        left = self._epochs - (epoch + 1)
        estimate = left * per_epoch
        budget = ""
        if self._budget > 0:
            budget_left = max(0.0, self._budget - elapsed)
            estimate = min(estimate, math.ceil(budget_left / per_epoch) * per_epoch)
            budget = (f", time budget {format_duration(self._budget)} "
                      f"({format_duration(budget_left)} left)")
        # printed when the next epoch starts, after Keras' progress bar has closed this one
        self._pending = (f"ensai train: epoch {epoch + 1}/{self._epochs} done, "
                         f"{format_duration(per_epoch)} per epoch; about "
                         f"{format_duration(estimate)} left{budget}")

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending:
            self._print(self._pending, flush=True)
            self._pending = None


class InitialState(keras.callbacks.Callback):
    """Sets attributes of other callbacks when training begins (a continued finished run).

    Put it after the callbacks it sets: ``ReduceLROnPlateau`` resets its
    counters in its own ``on_train_begin``.

    Args:
        state: ``{callback: {attribute: value}}``, e.g.
            ``{checkpoint: {"best": 0.012}}``.
    """

    def __init__(self, state):
        super().__init__()
        self._state = state

    def on_train_begin(self, logs=None):
        for callback, values in self._state.items():
            for name, value in values.items():
                setattr(callback, name, value)


def _count(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt_loss(value):
    return "none yet" if value is None else f"{value:.4g}"


def announce_run(cfg, model_dir, point, model):
    """Print what a training run does: a new run, or where a resumed one continues from.

    Args:
        cfg, model_dir: the run's config and folder.
        point: None for a new run, else :func:`ensai_tf.run_dir.resume_point`.
        model: the built network (its parameter count is printed).
    """
    t = cfg.train
    budget = (f", time budget {format_duration(60 * t.time_budget_minutes)}"
              if t.time_budget_minutes > 0 else "")
    plan = (f"{cfg.model.name} (width {cfg.model.width:g}, {model.count_params():,} parameters), "
            f"up to {_count(t.epochs, 'epoch')} of {t.steps_per_epoch} steps, batch "
            f"{t.batch_size}{budget}")
    if point is None:
        print(f"ensai train: training {plan} into {model_dir}", flush=True)
        return
    what = "continuing the finished run" if point["finished"] else "resuming"
    source = f" from its {MODEL_KERAS}" if point["finished"] else ""
    print(f"ensai train: {what} {model_dir}{source} after epoch {point['epoch']} "
          f"(step {point['step']}, best validation loss {_fmt_loss(point['best_val_loss'])}): "
          f"{plan}", flush=True)


def summarise_run(cfg, model_dir, point, seconds):
    """Print a run's closing line: epochs trained, time, best validation loss, folder and files.

    Args:
        cfg, model_dir: the run's config and folder (its ``log.csv`` is read).
        point: the resume point the run started from, or None.
        seconds: the run's duration, seconds.
    """
    logged = log_summary(model_dir / LOG_CSV)
    trained = logged["epochs"] - (point["epoch"] if point else 0)
    extra = f", {CALIBRATION_JSON}" if cfg.model.head != "point" else ""
    best = _fmt_loss(logged["best_val_loss"])
    if logged["best_epoch"] is not None:
        best += f" (epoch {logged['best_epoch']})"
    print(f"ensai train: trained {cfg.model.name} for {_count(trained, 'epoch')} "
          f"({trained * cfg.train.steps_per_epoch} steps; {logged['epochs']} in all) in "
          f"{format_duration(seconds)}; best validation loss {best}; wrote {model_dir} ({MODEL_KERAS}, {SAVED_MODEL_DIR}/, "
          f"{BEST_KERAS}, {LOG_CSV}, {CONFIG_YAML}{extra})", flush=True)


def build_callbacks(cfg, model_dir, sample=None, resume=False, extra=(), progress=False,
                    best_val_loss=None):
    """The training callbacks (docs/design.md §7.2-7.3 [R]).

    Args:
        cfg: the :class:`~ensai_tf.config.ExperimentConfig`.
        model_dir: the model folder.
        sample: optional ``(images, params)`` validation examples to show in
            TensorBoard.
        resume: append to an existing CSV log.
        extra: further callbacks, run before the backup callback.
        progress: print each epoch's time and the estimated time left
            (:class:`RunProgress`).
        best_val_loss: the best validation loss of a finished run being
            continued: the checkpoint and the plateau schedule start from it
            (:class:`InitialState`), so ``best.keras`` is replaced only by
            better weights.

    Returns:
        List of Keras callbacks: StopOnNonFinite (raises
        :class:`~ensai_tf.errors.NonFiniteLossError` on a NaN/Inf loss),
        TensorBoard, ValidationImages, ModelCheckpoint(best.keras, written
        atomically), ReduceLROnPlateau, CSVLogger, optional TimeBudget,
        RunProgress, Warmup and InitialState, the extras and, last, the backup.
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
    if progress:
        callbacks.append(RunProgress(t.epochs, t.time_budget_minutes))
    if t.warmup_steps > 0:
        callbacks.append(Warmup(t.learning_rate, t.warmup_steps))
    if best_val_loss is not None:
        callbacks.append(InitialState({plateau: {"best": float(best_val_loss)},
                                       checkpoint: {"best": float(best_val_loss)}}))
    callbacks += list(extra)
    callbacks.append(StatefulBackup(str(model_dir / BACKUP_DIR),
                                    {"plateau": (plateau, ("best", "wait", "cooldown_counter")),
                                     "checkpoint": (checkpoint, ("best",))}))
    return callbacks
