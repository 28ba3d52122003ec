"""Training: one network with ``model.fit`` on the online pipeline, and the combiner.

``train`` follows the Model Garden driver shape: write
the resolved config into the model folder first, seed Keras, build and
compile the network (Adam + the parity-min loss, docs/design.md §7.1-7.2), fit on the
endless online training stream with the fixed validation set, and finish by
exporting a SavedModel. A killed run continues with ``resume=True`` from the
last completed epoch: Keras' ``BackupAndRestore`` restores weights and
optimiser state, and the training stream restarts at the matching step
(``make_dataset(start_step=...)``), so an interrupted and resumed run ends
with the same weights as an uninterrupted one.

Files in the model folder: ``config.yaml``, ``tb/`` (TensorBoard),
``best.keras`` (best validation loss, docs/design.md §7.3), ``backup/`` (while
training), ``log.csv``, and at the end ``model.keras`` and ``saved_model/``
holding the best-validation weights.

Robustness: a run holds an exclusive lock on its folder
(:class:`ensai_tf.dirlock.ModelDirLock`), so a second ``ensai train`` or
``ensai combine`` on the same folder is refused; ``best.keras``,
``model.keras`` and ``saved_model/`` are written under a temporary name in
the folder and renamed into place, so a kill leaves the old file or the new
one; the backup is removed only after the exports, so a run killed at any
moment resumes; and a NaN or Inf loss stops the run with a
:class:`~ensai_tf.errors.NonFiniteLossError` before anything is saved from
the bad weights.
"""

import contextlib
import json
import math
import os
import pathlib
import shutil
import time
import warnings

import numpy as np
import yaml

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf.dirlock import LOCK_NAME, ModelDirLock
from ensai_tf.errors import ModelDirError, NonFiniteLossError

__all__ = [
    "ARTEFACTS",
    "CALIBRATION_NAME",
    "calibrate_on_validation",
    "calibrate",
    "freeze_batch_norm",
    "prepare_model_dir",
    "completed_epochs",
    "TMP_PREFIX",
    "save_keras_atomic",
    "export_saved_model_atomic",
    "build_callbacks",
    "compile_model",
    "train",
    "train_combiner",
]

CALIBRATION_NAME = "calibration.json"
"""Post-hoc interval calibration of a Gaussian head, fitted on the validation set."""

ARTEFACTS = ("config.yaml", "tb", "best.keras", "backup", "log.csv", "model.keras",
             "saved_model", "combiner.json", CALIBRATION_NAME)
"""Files and folders that ``train``/``train_combiner`` write into a model folder."""

_STATE_FILE = "callback_state.json"

TMP_PREFIX = atomic.TMP_PREFIX
"""Prefix of the temporary names that files are written under before their rename."""


# ---------------------------------------------------------------- model folder


def _config_differences(saved, cfg):
    a, b = config_lib.config_to_dict(saved), config_lib.config_to_dict(cfg)
    return [f"{s}.{k} ({a[s][k]!r} -> {b[s][k]!r})" for s in b for k in b[s]
            if a.get(s, {}).get(k) != b[s][k]]


def prepare_model_dir(model_dir, cfg=None, resume=False, overwrite=False):
    """Check a model folder and make it ready; never destroys data silently.

    The lock file and temporary files of a killed run do not count as
    contents; with ``resume`` or ``overwrite`` the temporary files are
    deleted, so call this while holding the folder's
    :class:`~ensai_tf.dirlock.ModelDirLock` (as ``train`` does).

    Args:
        model_dir: the folder.
        cfg: the resolved config; with ``resume`` it must equal the one the
            run started with.
        resume: continue the run whose files are in the folder.
        overwrite: delete this package's files in the folder (see
            :data:`ARTEFACTS`) and start afresh.

    Raises:
        ModelDirError: the path is a file; the folder already holds files
            and neither flag is given; both flags are given; there is nothing
            to resume, the run has finished, or its config differs.
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
        _remove_leftovers(model_dir)
    if resume:
        saved_path = model_dir / "config.yaml"
        if not saved_path.is_file():
            raise ModelDirError(f"nothing to resume in {str(model_dir)!r}: it holds no "
                                "config.yaml; start a new run without --resume")
        if (model_dir / "model.keras").exists() and not (model_dir / "backup").exists():
            raise ModelDirError(f"the run in {str(model_dir)!r} has already finished "
                                "(model.keras exists); use --overwrite to train again")
        if cfg is not None:
            try:
                saved = config_lib.config_from_dict(yaml.safe_load(saved_path.read_text()))
            except (config_lib.ConfigError, yaml.YAMLError, UnicodeDecodeError) as err:
                reason = " ".join(str(err).split())
                raise ModelDirError(f"{saved_path}: cannot read the run's config ({reason})") from None
            diff = _config_differences(saved, cfg)
            if diff:
                raise ModelDirError(
                    f"cannot resume {str(model_dir)!r} with a different config: "
                    f"{'; '.join(diff)}. Resume with the settings the run started with "
                    "(see its config.yaml) or use --overwrite")
        return model_dir
    if contents and not overwrite:
        raise ModelDirError(f"model folder {str(model_dir)!r} is not empty ({', '.join(contents[:5])}"
                            f"{', ...' if len(contents) > 5 else ''}); pass --resume to continue "
                            "its training or --overwrite to start afresh")
    if overwrite:
        for name in ARTEFACTS:
            path = model_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    model_dir.mkdir(parents=True, exist_ok=True)
    return model_dir


def _remove_leftovers(model_dir):
    """Delete temporary files of a killed run (the caller holds the folder's lock)."""
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


def export_saved_model_atomic(model, path):
    """Export a SavedModel to a temporary folder beside ``path``, then rename it into place.

    An existing ``path`` is kept until the new export is complete; a failure
    or a kill during the export leaves it untouched.

    Args:
        model: Keras model, images ``(B, H, W, 1)`` -> ``(B, 5)``.
        path: the final SavedModel folder.

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    from ensai_tf.export import export_saved_model

    path = pathlib.Path(path)
    tmp = atomic.temp_path(path)
    try:
        export_saved_model(model, str(tmp))
        atomic.replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _remove_backup(backup_dir):
    """Delete the backup only after the exports; renamed first so no half-deleted backup is seen."""
    backup_dir = pathlib.Path(backup_dir)
    if backup_dir.exists():
        gone = atomic.temp_path(backup_dir)
        os.replace(backup_dir, gone)
        shutil.rmtree(gone, ignore_errors=True)


def _trim_log(log_path, epochs):
    """Keep the header and the rows of the first ``epochs`` epochs of a CSV log (resume).

    A run killed after logging an epoch but before backing it up repeats that
    epoch on resume; trimming keeps one row per epoch.
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
    meta = pathlib.Path(backup_dir) / "training_metadata.json"
    if not meta.is_file():
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelDirError(f"{meta}: unreadable backup metadata ({err}); "
                            "use --overwrite to start afresh") from None


# ---------------------------------------------------------------- callbacks


def _callback_classes():
    """Callback classes built lazily so that importing this module stays light."""
    import keras
    import tensorflow as tf

    from ensai_tf import losses

    class StatefulBackup(keras.callbacks.BackupAndRestore):
        """BackupAndRestore that also keeps the plateau and checkpoint counters.

        Keras backs up weights, optimiser state (learning rate included) and
        the epoch; the ``best``/``wait`` counters of ReduceLROnPlateau and
        ModelCheckpoint would otherwise restart on resume. Put it last in the
        callback list so that it restores after the others have reset.
        """

        def __init__(self, backup_dir, stateful):
            # the backup outlives fit(): train() deletes it after the exports,
            # so a kill between the end of fit and the exports still resumes
            super().__init__(backup_dir, save_freq="epoch", double_checkpoint=True,
                             delete_checkpoint=False)
            self._stateful = stateful

        def _state_path(self):
            return pathlib.Path(self.backup_dir) / _STATE_FILE

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
                            setattr(cb, k, int(v) if k in ("wait", "cooldown_counter") else v)

    class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
        """ModelCheckpoint that writes under a temporary name and renames.

        A kill while ``best.keras`` is being written leaves the previous
        best checkpoint intact instead of a truncated zip.
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
        """

        def __init__(self, model_dir):
            super().__init__()
            self._model_dir = pathlib.Path(model_dir)
            self._epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def _fail(self, what, value, where):
            best = self._model_dir / "best.keras"
            backup = self._model_dir / "backup"
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

    class ValidationImages(keras.callbacks.Callback):
        """Writes a few validation inputs with true and predicted parameters.

        At every epoch end, ``tf.summary.image`` shows the images (scaled to
        [0, 1] per image, origin at the top as TensorBoard draws them) and
        ``tf.summary.text`` a Markdown table of true and parity-corrected
        predicted parameters (docs/design.md §8.1).
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
            header = "| # | " + " | ".join(conventions.target_names(n)) + " |"
            lines = [header, "|" + "---|" * (n + 1)]
            for i, (t, p) in enumerate(zip(self._params, pred)):
                cells = " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(t, p))
                lines.append(f"| {i} | {cells} |")
            text = "true / predicted (parity-corrected)\n\n" + "\n".join(lines)
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

    return {"backup": StatefulBackup, "images": ValidationImages, "warmup": Warmup,
            "budget": TimeBudget, "checkpoint": AtomicCheckpoint, "finite": StopOnNonFinite}


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
    import keras

    classes = _callback_classes()
    model_dir = pathlib.Path(model_dir)
    t = cfg.train
    checkpoint = classes["checkpoint"](str(model_dir / "best.keras"), monitor="val_loss",
                                       save_best_only=True)
    # [R] docs/design.md §7.2: divide the lr by 10 on a validation plateau, down to 1e-6
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=t.plateau_factor,
                                                patience=t.plateau_patience,
                                                min_lr=t.min_learning_rate)
    callbacks = [
        classes["finite"](model_dir),  # first: stops before any other callback sees bad weights
        keras.callbacks.TensorBoard(log_dir=str(model_dir / "tb"),
                                    update_freq=max(1, min(100, t.steps_per_epoch // 10))),
    ]
    if sample is not None and t.image_summaries > 0:
        images, params = sample
        callbacks.append(classes["images"](images[: t.image_summaries], params[: t.image_summaries],
                                          model_dir / "tb" / "images"))
    callbacks += [checkpoint, plateau,
                  keras.callbacks.CSVLogger(str(model_dir / "log.csv"), append=resume)]
    if t.time_budget_minutes > 0:
        callbacks.append(classes["budget"](t.time_budget_minutes))
    if t.warmup_steps > 0:
        callbacks.append(classes["warmup"](t.learning_rate, t.warmup_steps))
    callbacks += list(extra)
    callbacks.append(classes["backup"](str(model_dir / "backup"),
                                    {"plateau": (plateau, ("best", "wait", "cooldown_counter")),
                                     "checkpoint": (checkpoint, ("best",))}))
    return callbacks


# ---------------------------------------------------------------- model


def compile_model(model, learning_rate, clipnorm=None, head="point", n_targets=None):
    """Compile with Adam, the head's loss and per-parameter metrics.

    Args:
        model: the network.
        learning_rate: Adam learning rate.
        clipnorm: global gradient-norm clip (docs/design.md §7.2 [R]), or None.
        head: ``"point"`` (parity-min MSE, docs/design.md §7.1) or ``"diagonal"`` /
            ``"full"`` (parity-aware Gaussian NLL; the metrics read
            the means, which come first).
        n_targets: 5, or 7 with the shear (default 5).

    Returns:
        the compiled model.
    """
    import keras

    from ensai_tf import losses, metrics, uncertainty

    n_targets = conventions.NUM_PARAMS if n_targets is None else int(n_targets)
    # [R] docs/design.md §7.2: Adam, gradient clipping at global norm 10 as a safety net
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, global_clipnorm=clipnorm)
    loss = losses.ParityMSE() if head == "point" else uncertainty.GaussianNLL(head)
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=metrics.parameter_metrics(n=n_targets))
    return model


def _float32_outputs(model):
    """Cast the outputs to float32 under mixed precision (the loss stays float32)."""
    import keras

    if all(o.dtype == "float32" for o in model.outputs):
        return model
    outputs = keras.layers.Activation("linear", dtype="float32", name="float32_output")(
        model.outputs[0])
    return keras.Model(model.inputs, outputs, name=model.name)


def _strategy(distribute):
    import tensorflow as tf

    if distribute is None:
        return tf.distribute.get_strategy()
    if distribute != "mirrored":
        raise ModelDirError(f"unknown distribution strategy {distribute!r}; use 'mirrored'")
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU computes bfloat16 in hardware (AVX512_BF16 or AMX-BF16).

    Args:
        cpuinfo: the Linux CPU description to read.

    Returns:
        True or False from the ``flags`` line of ``cpuinfo``; None where it
        cannot be read (not Linux).
    """
    try:
        text = pathlib.Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _warn_if_emulated_bf16(policy):
    """Warn when mixed_bfloat16 would run emulated on a CPU (about 2x slower than float32)."""
    if policy != "mixed_bfloat16":
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or cpu_has_native_bf16() is not False:
        return
    warnings.warn("train.mixed_precision is on, but this CPU has no AVX512_BF16 or AMX-BF16: "
                  "bfloat16 is emulated and training runs about 2x slower than in float32 "
                  "(AlexNet at full width: 1.4 against 3.0 images/s on a 2-core AVX2 CPU); "
                  "pass --set train.mixed_precision=false", stacklevel=3)


@contextlib.contextmanager
def _dtype_policy(name):
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _cache_dir(cfg):
    return cfg.data.cache_dir or None


def _first_batch(dataset, n):
    images, params = [], []
    for x, y in dataset:
        images.append(np.asarray(x))
        params.append(np.asarray(y))
        if sum(len(a) for a in images) >= n:
            break
    return np.concatenate(images)[:n], np.concatenate(params)[:n]


def train(cfg, model_dir, resume=False, overwrite=False, distribute=None, *, callbacks=(),
          verbose="auto"):
    """Train one network on the online pipeline and export it.

    Args:
        cfg: the resolved :class:`~ensai_tf.config.ExperimentConfig`.
        model_dir: output folder (new or empty, unless ``resume`` or
            ``overwrite``).
        resume: continue the interrupted run in ``model_dir`` from its last
            completed epoch (same weights as an uninterrupted run).
        overwrite: delete a previous run's files in ``model_dir`` first.
        distribute: None, or ``"mirrored"`` for ``tf.distribute.MirroredStrategy``
            over all GPUs (or all logical CPUs when there is no GPU).
        callbacks: extra Keras callbacks (for notebooks and tests).
        verbose: passed to ``model.fit``.

    Returns:
        The trained Keras model, holding the best-validation weights that
        were exported.

    Raises:
        ModelDirError: see :func:`prepare_model_dir`; also when another
            process is using ``model_dir`` (see :class:`~ensai_tf.dirlock.ModelDirLock`).
        NonFiniteLossError: the loss became NaN or Inf; ``best.keras`` and
            the backup keep the last good weights and nothing is exported.
    """
    with ModelDirLock(model_dir, "ensai train"):
        return _train_locked(cfg, model_dir, resume, overwrite, distribute, callbacks, verbose)


def _train_locked(cfg, model_dir, resume, overwrite, distribute, callbacks, verbose):
    model_dir = prepare_model_dir(model_dir, cfg, resume=resume, overwrite=overwrite)
    config_lib.save_config(cfg, model_dir / "config.yaml")

    import keras

    from ensai_tf.data.pipeline import make_dataset
    from ensai_tf.models import build_model

    t = cfg.train
    keras.utils.set_random_seed(t.seed)
    policy = "mixed_bfloat16" if t.mixed_precision else "float32"
    _warn_if_emulated_bf16(policy)
    with _dtype_policy(policy):
        strategy = _strategy(distribute)
        with strategy.scope():
            model = build_model(cfg.model.name, input_shape=(cfg.image.npix, cfg.image.npix, 1),
                                **_model_kwargs(cfg))
            model = _float32_outputs(model)
            frozen = freeze_batch_norm(model) if t.freeze_batch_norm else []
            compile_model(model, t.learning_rate, t.clipnorm, head=cfg.model.head,
                          n_targets=config_lib.target_count(cfg))
            if t.init_weights and not resume:
                _load_init_weights(model, t.init_weights)
        start_epoch = completed_epochs(model_dir / "backup") if resume else 0
        if resume:
            _trim_log(model_dir / "log.csv", start_epoch)
        # the stream continues where the interrupted run stopped (docs/design.md §11 rule 4)
        train_ds = make_dataset("train", cfg, seed=cfg.data.seed, batch_size=t.batch_size,
                                cache_dir=_cache_dir(cfg), start_step=start_epoch * t.steps_per_epoch)
        val_ds = make_dataset("validation", cfg, seed=cfg.data.seed,
                              batch_size=cfg.evaluate.batch_size, cache_dir=_cache_dir(cfg))
        sample = _first_batch(val_ds, t.image_summaries) if t.image_summaries else None
        cbs = build_callbacks(cfg, model_dir, sample=sample, resume=resume, extra=callbacks)
        model.fit(train_ds, steps_per_epoch=t.steps_per_epoch, epochs=t.epochs,
                  validation_data=val_ds, callbacks=cbs, shuffle=False, verbose=verbose)
        best = model_dir / "best.keras"
        if best.is_file():
            model.load_weights(str(best))  # [R] docs/design.md §7.3: keep the best validation loss
        for layer in frozen:
            layer.trainable = True
        # saved_model first, model.keras (the "finished" mark) next, the backup last:
        # a kill at any point leaves a folder that --resume completes
        if cfg.model.head != "point":
            calibration = calibrate_on_validation(model, cfg)
            atomic.write_text(model_dir / CALIBRATION_NAME, json.dumps(calibration, indent=1) + "\n")
        export_saved_model_atomic(model, model_dir / "saved_model")
        save_keras_atomic(model, model_dir / "model.keras")
        _remove_backup(model_dir / "backup")
    return model


def freeze_batch_norm(model):
    """Put every ``BatchNormalization`` layer of ``model`` in inference mode for good.

    A frozen Keras 3 batch-norm layer normalises with its moving mean and
    variance even when called with ``training=True``, and neither those nor
    its offset are updated. Fine-tuning a trained network this way
    (``train.freeze_batch_norm``, with ``train.init_weights``) makes the
    training loss and the validation loss measure the same function: when
    Inception-v4's moving statistics were left to follow the changing weights
    in an earlier run, its training loss fell while its validation loss rose 2-3x.
    Call before ``compile``.

    Args:
        model: a Keras model; nested models are searched too.

    Returns:
        list: the layers frozen (set their ``trainable`` back to ``True``
        before saving, so that the saved network is an ordinary one).
    """
    import keras

    def walk(parent):
        for layer in parent.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from walk(layer)

    layers = [layer for layer in walk(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.trainable = False
    return layers


def _load_init_weights(model, path):
    """Start from the weights of a trained ``.keras`` file of the same architecture.

    Weights are copied layer by layer, matched by name. Only the output layer
    may differ in shape (a new head: Gaussian outputs or the shear);
    it then keeps its fresh initialisation, and the message says so.
    """
    source = pathlib.Path(path).expanduser()
    if not source.is_file() or source.suffix != ".keras":
        raise ModelDirError(f"train.init_weights {str(source)!r} is not a .keras file")
    import keras

    from ensai_tf import predict

    predict.register_custom_objects()
    try:
        trained = keras.saving.load_model(str(source), compile=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelDirError(f"train.init_weights {str(source)!r} cannot be loaded: {err}") from None
    by_name = {layer.name: layer for layer in trained.layers}
    with_weights = [layer for layer in model.layers if layer.weights]
    for layer in with_weights:
        other = by_name.get(layer.name)
        same = other is not None and [tuple(w.shape) for w in other.weights] == \
            [tuple(w.shape) for w in layer.weights]
        if same:
            layer.set_weights(other.get_weights())
        elif layer is with_weights[-1] and other is not None:
            print(f"ensai train: init_weights: output layer {layer.name!r} has another shape "
                  "in the trained file (a new head); it starts fresh", flush=True)
        else:
            raise ModelDirError(f"train.init_weights {str(source)!r} does not fit the "
                                f"{model.name} network being trained: layer {layer.name!r} "
                                + ("is missing" if other is None else "has other weight shapes")
                                + " in the trained file")


def calibrate_on_validation(model, cfg):
    """Fit the post-hoc interval calibration of a Gaussian head on the validation set.

    Quantile recalibration (:func:`ensai_tf.uncertainty.fit_interval_calibration`)
    on the fixed validation split, never the test split.

    Args:
        model: a trained Gaussian-head ``keras.Model``.
        cfg: its :class:`~ensai_tf.config.ExperimentConfig`.

    Returns:
        the JSON-ready calibration dict, with the raw (uncalibrated) validation
        coverage at 68% and 95% added under ``"raw_coverage"``.
    """
    from ensai_tf import export, uncertainty
    from ensai_tf.data.pipeline import make_dataset

    # calibrate the predictions that inference will make: float32, whatever
    # precision the network was trained in
    model = export.float32_model(model)
    val_ds = make_dataset("validation", cfg, seed=cfg.data.seed,
                          batch_size=cfg.evaluate.batch_size, cache_dir=_cache_dir(cfg))
    outputs, truths = [], []
    for images, params in val_ds:
        outputs.append(np.asarray(model(images, training=False), dtype=np.float64))
        truths.append(np.asarray(params, dtype=np.float64))
    summary = uncertainty.gaussian_summary(np.concatenate(outputs))
    truth = np.concatenate(truths)
    calibration = uncertainty.fit_interval_calibration(truth, summary["mean"], summary["std"])
    raw = uncertainty.coverage(truth, summary["mean"], summary["std"])
    calibration["names"] = list(conventions.target_names(truth.shape[1]))
    calibration["fitted_on"] = f"validation split, {truth.shape[0]} lenses"
    calibration["raw_coverage"] = {str(k): v.tolist() for k, v in raw.items()}
    return calibration


def _model_kwargs(cfg):
    from ensai_tf import uncertainty

    n_targets = config_lib.target_count(cfg)
    num_outputs = (n_targets if cfg.model.head == "point"
                   else uncertainty.num_outputs_for(cfg.model.head, n_targets))
    kwargs = {"width": cfg.model.width, "num_outputs": num_outputs}
    if cfg.model.name == "inception_v4":
        kwargs["bn_mode"] = cfg.model.bn_mode
    return kwargs


def calibrate(model_dir, config=None, n=None, experiment=None):
    """Refit a Gaussian head's interval calibration on validation lenses.

    Writes ``calibration.json`` into the model folder (a previous one is kept
    as ``calibration-previous.json``). Use it to fit on more validation lenses
    than training used, or on validation lenses simulated like the test set
    (``config``; ``experiment="shear"`` for lenses with shear); the test split
    is never used.

    Args:
        model_dir: a folder written by ``ensai train`` with a Gaussian head.
        config: the config of the validation data (default: the folder's
            ``config.yaml``).
        n: validation lenses (default ``config.data.val_size``).
        experiment: None or an :data:`ensai_tf.evaluate.EXPERIMENTS` name.

    Returns:
        the calibration dict written.

    Raises:
        ModelDirError: no trained model, or a point-estimate network.
    """
    from ensai_tf import evaluate, export, uncertainty

    model_dir = pathlib.Path(model_dir)
    path = _keras_file(model_dir)
    cfg = config if config is not None else _dir_config(model_dir)
    cfg = evaluate.experiment_config(cfg, experiment)
    if n is not None:
        cfg = config_lib.apply_overrides(cfg, [f"data.val_size={int(n)}"])
    model = export.load_keras_model(path)
    head, n_targets = uncertainty.head_layout(model.output_shape[-1])
    if n_targets > conventions.NUM_PARAMS and not cfg.model.shear_outputs:
        if not cfg.lens.shear:
            raise ModelDirError(f"{str(model_dir)!r} predicts the shear: calibrate it on lenses "
                                "with shear (--experiment shear or --set lens.shear=true)")
        cfg = config_lib.apply_overrides(cfg, ["model.shear_outputs=true"])
    if head == "point":
        raise ModelDirError(f"{str(model_dir)!r} holds a point-estimate network; only Gaussian "
                            "heads (model.head = diagonal or full) have intervals to calibrate")
    calibration = calibrate_on_validation(model, cfg)
    calibration["fitted_on"] += f" ({experiment} experiment)" if experiment else ""
    final = model_dir / CALIBRATION_NAME
    if final.is_file():
        os.replace(final, model_dir / "calibration-previous.json")
    atomic.write_text(final, json.dumps(calibration, indent=1) + "\n")
    print(f"ensai calibrate: wrote {final} ({calibration['fitted_on']})")
    return calibration


# ---------------------------------------------------------------- combiner


def train_combiner(model_dirs, model_dir, config=None, mode="per_parameter", steps=None,
                   overwrite=False, *, verbose="auto"):
    """Train the combiner of frozen trained networks (docs/design.md §7.4).

    The backbones' ``model.keras`` files are loaded and frozen; only the
    combination weights (20 per-parameter weights by default) are trained,
    with Adam at ``train.combine_learning_rate`` (docs/design.md §7.4 [R]: 1e-3), on
    freshly simulated validation-distribution lenses drawn with
    ``train.combine_seed``, never the fixed validation or test sets.

    Args:
        model_dirs: trained model folders (or ``.keras`` files); the first is
            the parity reference.
        model_dir: output folder (new or empty unless ``overwrite``).
        config: the resolved config (default: the first network's).
        mode: ``"per_parameter"`` (paper) or ``"dense"``.
        steps: training steps (default ``train.combine_steps``).
        overwrite: replace a previous combiner's files.

    Returns:
        ``(model, summary)``: the trained combiner and the dict written to
        ``combiner.json``: :func:`ensai_tf.models.combiner.combiner_record`
        (the backbone files and the combination weights, from which
        :func:`~ensai_tf.models.combiner.load_combined` rebuilds the model
        without ``model.keras``), and the validation loss of the plain
        average of the sign-aligned networks and of the trained combination.

    Raises:
        ModelDirError: a backbone folder lacks ``model.keras``, the output
            folder is not empty, or another process is using it.
        NonFiniteLossError: the combiner's loss became NaN or Inf; nothing
            is exported.
    """
    paths = [_keras_file(d) for d in model_dirs]
    if config is None:
        config = _dir_config(model_dirs[0])
    t = config.train
    steps = t.combine_steps if steps is None else int(steps)
    if steps < 1:
        raise ModelDirError(f"combiner steps {steps} must be >= 1")
    with ModelDirLock(model_dir, "ensai combine"):
        return _train_combiner_locked(paths, model_dir, config, mode, steps, overwrite, verbose)


def _train_combiner_locked(paths, model_dir, config, mode, steps, overwrite, verbose):
    t = config.train
    model_dir = prepare_model_dir(model_dir, overwrite=overwrite)
    config_lib.save_config(config, model_dir / "config.yaml")

    import keras

    from ensai_tf.data import pipeline
    from ensai_tf.models import combiner

    keras.utils.set_random_seed(t.seed)
    backbones = combiner.load_backbones([str(p) for p in paths])
    val_ds = pipeline.make_dataset("validation", config, seed=config.data.seed,
                                   batch_size=config.evaluate.batch_size,
                                   cache_dir=_cache_dir(config))
    average = combiner.build_combiner(backbones, reference=0, mode="per_parameter")
    compile_model(average, t.combine_learning_rate)
    plain = average.evaluate(val_ds, verbose=0, return_dict=True)
    model = average if mode == "per_parameter" else combiner.build_combiner(
        backbones, reference=0, mode=mode)
    compile_model(model, t.combine_learning_rate)
    # [R] docs/design.md §7.4: an endless stream of fresh validation-distribution lenses
    # (validation source pool, validation-time effects) under a user seed that
    # differs from the fixed validation set's; never the test split
    fresh = pipeline.example_dataset("validation", config, seed=config.data.seed + t.combine_seed,
                                     batch_size=t.batch_size, training=False)
    fresh = fresh.map(pipeline.to_supervised).prefetch(2)
    model.fit(fresh, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=verbose,
              callbacks=[_callback_classes()["finite"](model_dir),
                         keras.callbacks.TensorBoard(log_dir=str(model_dir / "tb")),
                         keras.callbacks.CSVLogger(str(model_dir / "log.csv"))])
    trained = model.evaluate(val_ds, verbose=0, return_dict=True)
    # the record (backbone files relative to model_dir, their SHA-256, the
    # combination weights) lets the combiner ship without copying its backbones
    summary = {**combiner.combiner_record(model, paths, model_dir), "steps": steps,
               "plain_average_validation": {k: float(v) for k, v in plain.items()},
               "trained_validation": {k: float(v) for k, v in trained.items()}}
    for name, value in summary["trained_validation"].items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"model folder {str(model_dir)!r}: the combiner's validation "
                                     f"{name} is {value}; nothing was exported. Lower "
                                     "train.combine_learning_rate and retry with --overwrite")
    atomic.write_text(model_dir / "combiner.json", json.dumps(summary, indent=1) + "\n")
    export_saved_model_atomic(model, model_dir / "saved_model")
    save_keras_atomic(model, model_dir / "model.keras")
    return model, summary


def _keras_file(path):
    path = pathlib.Path(path)
    candidate = path / "model.keras" if path.is_dir() else path
    if not candidate.is_file() or candidate.suffix != ".keras":
        raise ModelDirError(f"{str(path)!r} is not a trained model folder: it has no model.keras "
                            "(train it with 'ensai train' first)")
    return candidate


def _dir_config(path):
    path = pathlib.Path(path)
    cfg_path = (path if path.is_dir() else path.parent) / "config.yaml"
    if not cfg_path.is_file():
        return config_lib.get_preset("paper")
    return config_lib.load_config(cfg_path, preset="paper")
