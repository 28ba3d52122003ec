"""Training: one network with ``model.fit`` on the online pipeline.

``train`` follows the Model Garden driver shape: write the resolved config into the model
folder first, seed Keras, build and compile the network (Adam + the parity-min loss,
docs/design.md §7.1-7.2), fit on the endless online training stream with the fixed validation
set, and finish by exporting a SavedModel. A killed run continues with ``resume=True`` from the
last completed epoch: Keras' ``BackupAndRestore`` restores weights and optimiser state, and the
training stream restarts at the matching step (``make_dataset(start_step=...)``), so an
interrupted and resumed run ends with the same weights as an uninterrupted one. A finished run
continues with ``resume=True`` and a larger ``train.epochs`` or a new
``train.time_budget_minutes``: from its ``model.keras`` (the best-validation weights and the
optimiser state saved with them), at the step after its last logged epoch, keeping its best
validation loss.

It prints what it does: the run it starts or resumes (epoch, step, best
validation loss), after each epoch the estimated time left
(:class:`ensai_tf.callbacks.RunProgress`), and one closing line with the
epochs trained, the time taken, the best validation loss and the folder.

Files in the model folder (names in :mod:`ensai_tf.model_dir`): ``config.yaml``,
``tb/`` (TensorBoard), ``best.keras`` (best validation loss, docs/design.md §7.3),
``backup/`` (while training), ``log.csv``, and at the end ``model.keras`` and
``saved_model/`` holding the best-validation weights (and ``calibration.json``
for a Gaussian head, :mod:`ensai_tf.calibrate`).

Robustness: a run holds an exclusive lock on its folder
(:class:`ensai_tf.dirlock.ModelDirLock`), so a second ``ensai train`` or
``ensai combine`` on the same folder is refused; ``best.keras``,
``model.keras`` and ``saved_model/`` are written under a temporary name in
the folder and renamed into place, so a kill leaves the old file or the new
one; the backup is removed only after the exports, so a run killed at any
moment resumes; and a NaN or Inf loss stops the run with a
:class:`~ensai_tf.errors.NonFiniteLossError` before anything is saved from
the bad weights. The folder rules are :mod:`ensai_tf.run_dir`, the callbacks
:mod:`ensai_tf.callbacks`; the combiner is trained by :mod:`ensai_tf.combine`.

Several GPUs or machines (``strategy="mirrored"`` or ``"multi-worker"``)
train with the same global batch and the same examples per step as one
process; in a multi-worker run only the chief writes the model folder, the
other workers run the same steps in scratch folders (:mod:`ensai_tf.distribute`).
"""

import contextlib
import pathlib
import shutil
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf import conventions, export, losses, metrics, models, uncertainty
from ensai_tf.calibrate import calibrate_on_validation, write_calibration
from ensai_tf.callbacks import announce_run, build_callbacks, summarise_run
from ensai_tf.data.pipeline import make_dataset
from ensai_tf.dirlock import ModelDirLock
from ensai_tf.distribute import (agreed, all_workers, copy_run_state, keras_fit, make_strategy,
                                 read_tf_config, replica_batch_size, replicated_dataset,
                                 scratch_folder, training_dataset, worker_lost_error)
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.model_dir import (BACKUP_DIR, BEST_KERAS, CALIBRATION_JSON, CONFIG_YAML, LOG_CSV,
                                MODEL_KERAS, SAVED_MODEL_DIR)
from ensai_tf.run_dir import (data_cache_dir, prepare_model_dir, remove_backup,
                              resume_point, save_keras_atomic, trim_log)

__all__ = [
    "compile_model",
    "cpu_has_native_bf16",
    "dtype_policy",
    "export_saved_model_atomic",
    "freeze_batch_norm",
    "train",
]


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
    path = pathlib.Path(path)
    tmp = atomic.temp_path(path)
    try:
        export.export_saved_model(model, str(tmp))
        atomic.replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


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
    n_targets = conventions.NUM_PARAMS if n_targets is None else int(n_targets)
    # [R] docs/design.md §7.2: Adam, gradient clipping at global norm 10 as a safety net
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, global_clipnorm=clipnorm)
    loss = losses.ParityMSE() if head == "point" else uncertainty.GaussianNLL(head)
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=metrics.parameter_metrics(n=n_targets))
    return model


def _float32_outputs(model):
    """Cast the outputs to float32 under mixed precision (the loss stays float32)."""
    if all(o.dtype == "float32" for o in model.outputs):
        return model
    outputs = keras.layers.Activation("linear", dtype="float32", name="float32_output")(
        model.outputs[0])
    return keras.Model(model.inputs, outputs, name=model.name)


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
    if tf.config.list_physical_devices("GPU") or cpu_has_native_bf16() is not False:
        return
    warnings.warn("train.mixed_precision is on, but this CPU has no AVX512_BF16 or AMX-BF16: "
                  "bfloat16 is emulated and training runs about 2x slower than in float32 "
                  "(AlexNet at full width: 1.4 against 3.0 images/s on a 2-core AVX2 CPU); "
                  "pass --set train.mixed_precision=false", stacklevel=3)


@contextlib.contextmanager
def dtype_policy(name):
    """Set Keras' global dtype policy for the duration of a ``with`` block.

    Args:
        name: a Keras dtype policy name, e.g. ``"float32"`` or ``"mixed_bfloat16"``
            (``train.mixed_precision``).

    Yields:
        None; the previous policy is restored on exit, also after an error.

    Example:
        >>> import keras
        >>> with dtype_policy("mixed_bfloat16"):
        ...     keras.config.dtype_policy().name
        'mixed_bfloat16'
        >>> keras.config.dtype_policy().name
        'float32'
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _first_batch(dataset, n):
    """The first ``n`` examples of a batched ``(images, params)`` dataset, as numpy."""
    images, params = [], []
    for x, y in dataset:
        images.append(np.asarray(x))
        params.append(np.asarray(y))
        if sum(len(a) for a in images) >= n:
            break
    return np.concatenate(images)[:n], np.concatenate(params)[:n]


def train(cfg, model_dir, resume=False, overwrite=False, strategy=None, *, callbacks=(),
          verbose="auto", distribute=None):
    """Train one network on the online pipeline and export it.

    Args:
        cfg: the resolved :class:`~ensai_tf.config.ExperimentConfig`.
        model_dir: output folder (new or empty, unless ``resume`` or
            ``overwrite``).
        resume: continue the interrupted run in ``model_dir`` from its last
            completed epoch (same weights as an uninterrupted run), or a
            finished run given more ``train.epochs`` or a new
            ``train.time_budget_minutes`` (see
            :func:`ensai_tf.run_dir.prepare_model_dir`).
        overwrite: delete a previous run's files in ``model_dir`` first.
        strategy: None (one device), ``"mirrored"`` (all GPUs of this
            machine, or all logical CPUs without one) or ``"multi-worker"``
            (one process per machine, the cluster in ``TF_CONFIG``; only the
            chief writes ``model_dir``): see :mod:`ensai_tf.distribute`. The
            global batch stays ``train.batch_size``.
        callbacks: extra Keras callbacks (for notebooks and tests).
        verbose: passed to ``model.fit``.
        distribute: deprecated name of ``strategy``.

    Returns:
        The trained Keras model, holding the best-validation weights that
        were exported.

    Raises:
        ModelDirError: see :func:`ensai_tf.run_dir.prepare_model_dir`; also when another
            process is using ``model_dir`` (see :class:`~ensai_tf.dirlock.ModelDirLock`).
        InputError: an unknown strategy, or a missing or malformed ``TF_CONFIG``.
        NonFiniteLossError: the loss became NaN or Inf; ``best.keras`` and
            the backup keep the last good weights and nothing is exported.
        EnsaiError: a multi-worker run lost a worker; restart every worker
            with ``resume=True``.
    """
    if distribute is not None:
        warnings.warn("train(distribute=...) is deprecated; use strategy=...", DeprecationWarning,
                      stacklevel=2)
        if strategy not in (None, distribute):
            raise InputError(f"strategy={strategy!r} and distribute={distribute!r} disagree; "
                             "give strategy only")
        strategy = distribute
    if strategy == "multi-worker":
        return _train_multi_worker(cfg, model_dir, resume, overwrite, callbacks, verbose)
    start = time.monotonic()
    strategy = make_strategy(strategy)
    replica_batch_size(strategy, cfg.train.batch_size)  # refused before the folder is touched
    with ModelDirLock(model_dir, "ensai train"):
        run = _prepare_run(cfg, model_dir, resume, overwrite)
        return _run(cfg, *run, strategy, callbacks, verbose, start)


def _prepare_run(cfg, model_dir, resume, overwrite):
    """Check and ready the folder, find the resume point, save the config: ``(folder, point)``."""
    model_dir = prepare_model_dir(model_dir, cfg, resume=resume, overwrite=overwrite)
    point = resume_point(model_dir, cfg.train.steps_per_epoch) if resume else None
    config_lib.save_config(cfg, model_dir / CONFIG_YAML)
    return model_dir, point


def _train_multi_worker(cfg, model_dir, resume, overwrite, callbacks, verbose):
    """One worker of a multi-worker run: the chief in ``model_dir``, the others in scratch folders.

    Every worker runs the same collective steps: the chief readies its
    folder, then the others copy its state (resume) and ready their scratch
    folders, then all train, save and export (docs/design.md §7.2).
    """
    start = time.monotonic()
    task = read_tf_config()
    strategy = make_strategy("multi-worker")  # before any TensorFlow operation
    replica_batch_size(strategy, cfg.train.batch_size)  # the same answer on every worker
    chief_failed = f"the chief could not start the run in {str(model_dir)!r} (see its message)"
    worker_failed = "another worker could not start (see its message)"
    try:
        if task.is_chief:
            lock = ModelDirLock(model_dir, "ensai train")

            def ready_chief():
                lock.acquire()
                return _prepare_run(cfg, model_dir, resume, overwrite)

            try:
                run = agreed(strategy, ready_chief, chief_failed)
                agreed(strategy, lambda: None, worker_failed)
                model = _run(cfg, *run, strategy, callbacks, verbose, start, task)
            finally:
                lock.release()
            all_workers(strategy, True)  # the workers end together (none sees another vanish)
            return model
        with scratch_folder(task) as scratch:
            print(f"ensai train: {task.name} of {task.num_workers} workers; the chief writes "
                  f"{model_dir}, this worker writes {scratch} (removed at the end)", flush=True)
            agreed(strategy, lambda: None, chief_failed)

            def ready():
                if resume:
                    copy_run_state(model_dir, scratch, task)
                return _prepare_run(cfg, scratch, resume, overwrite)

            run = agreed(strategy, ready, worker_failed)
            with ModelDirLock(scratch, "ensai train"):
                model = _run(cfg, *run, strategy, callbacks, 0, start, task)
            all_workers(strategy, True)
            print(f"ensai train: {task.name} done", flush=True)
            return model
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError, tf.errors.InternalError) as err:
        raise worker_lost_error(err, task) from err


def _build_compiled(cfg, resume):
    """The network of ``cfg``, compiled, warm-started from ``train.init_weights`` unless resuming.

    Returns:
        ``(model, frozen)``: the model and its frozen batch-norm layers.
    """
    t = cfg.train
    model = models.build_model(cfg.model.name, input_shape=(cfg.image.npix, cfg.image.npix, cfg.bands.count),
                               **_model_kwargs(cfg))
    model = _float32_outputs(model)
    frozen = freeze_batch_norm(model) if t.freeze_batch_norm else []
    compile_model(model, t.learning_rate, t.clipnorm, head=cfg.model.head,
                  n_targets=config_lib.target_count(cfg))
    if t.init_weights and not resume:
        _load_init_weights(model, t.init_weights)
    return model, frozen


def _fit(model, cfg, model_dir, point, callbacks, verbose, strategy):
    """``model.fit`` on the training stream, continuing after the epochs of ``point`` on resume."""
    t = cfg.train
    start_epoch = point["epoch"] if point else 0
    if point:
        trim_log(model_dir / LOG_CSV, start_epoch)
    # the stream continues where the interrupted run stopped (docs/design.md §11 rule 4)
    start_step = start_epoch * t.steps_per_epoch

    def validation():
        return make_dataset("validation", cfg, seed=cfg.data.seed,
                            batch_size=cfg.evaluate.batch_size, cache_dir=data_cache_dir(cfg))

    val_ds = validation()
    if strategy.num_replicas_in_sync > 1:
        # each replica takes its part of the global batch, and reads all validation lenses
        train_ds = training_dataset(strategy, cfg, start_step)
        fit_val_ds = replicated_dataset(strategy, validation)
    else:
        train_ds = make_dataset("train", cfg, seed=cfg.data.seed, batch_size=t.batch_size,
                                cache_dir=data_cache_dir(cfg), start_step=start_step)
        fit_val_ds = val_ds
    sample = _first_batch(val_ds, t.image_summaries) if t.image_summaries else None
    finished = bool(point and point["finished"])
    cbs = build_callbacks(cfg, model_dir, sample=sample, resume=point is not None,
                          extra=callbacks, progress=verbose != 0,
                          best_val_loss=point["best_val_loss"] if finished else None)
    # an interrupted run's backup sets the first epoch itself; a finished run has no backup
    with keras_fit(model, strategy):
        model.fit(train_ds, steps_per_epoch=t.steps_per_epoch, epochs=t.epochs,
                  initial_epoch=start_epoch if finished else 0,
                  validation_data=fit_val_ds, callbacks=cbs, shuffle=False, verbose=verbose)


def _continue_finished(model, model_dir, point):
    """Load a finished run's ``model.keras``: weights and, where it matches, optimiser state."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(model_dir / MODEL_KERAS))
    if int(model.optimizer.iterations.numpy()) == 0 and point["learning_rate"]:
        model.optimizer.learning_rate = point["learning_rate"]


def _finish(model, cfg, model_dir, frozen):
    """Restore the best weights, calibrate a Gaussian head, export, then delete the backup."""
    best = model_dir / BEST_KERAS
    if best.is_file():
        model.load_weights(str(best))  # [R] docs/design.md §7.3: keep the best validation loss
    for layer in frozen:
        layer.trainable = True
    # saved_model first, model.keras (the "finished" mark) next, the backup last:
    # a kill at any point leaves a folder that --resume completes
    if cfg.model.head != "point":
        write_calibration(model_dir / CALIBRATION_JSON, calibrate_on_validation(model, cfg))
    export_saved_model_atomic(model, model_dir / SAVED_MODEL_DIR)
    save_keras_atomic(model, model_dir / MODEL_KERAS)
    remove_backup(model_dir / BACKUP_DIR)


def _run(cfg, model_dir, point, strategy, callbacks, verbose, start, task=None):
    """Build, fit and export in a ready folder; the chief (or the only process) reports."""
    reports = task is None or task.is_chief
    keras.utils.set_random_seed(cfg.train.seed)
    policy = "mixed_bfloat16" if cfg.train.mixed_precision else "float32"
    _warn_if_emulated_bf16(policy)
    with dtype_policy(policy):
        with strategy.scope():
            model, frozen = _build_compiled(cfg, point is not None)
            if point and point["finished"]:
                _continue_finished(model, model_dir, point)
        if reports:
            announce_run(cfg, model_dir, point, model)
        _fit(model, cfg, model_dir, point, callbacks, verbose, strategy)
        _finish(model, cfg, model_dir, frozen)
    if reports:
        summarise_run(cfg, model_dir, point, time.monotonic() - start)
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

    Weights are copied layer by layer, matched by name. Only the output layers may differ in
    shape (a new head: Gaussian outputs or the shear; they keep their fresh initialisation, and
    the message says so) and the first one in its bands (:func:`_spread_bands`). The output
    layers are the trailing layers with weights, after the last one that fits, whose kernels
    map onto the outputs: AlexNet's ``fc8``, or Overfeat's ``fc8`` and the ``params`` Dense
    behind it.
    """
    source = pathlib.Path(path).expanduser()
    if not source.is_file() or source.suffix != ".keras":
        raise ModelDirError(f"train.init_weights {str(source)!r} is not a .keras file")
    # ``import ensai_tf`` has registered the package's custom objects
    try:
        trained = keras.saving.load_model(str(source), compile=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelDirError(f"train.init_weights {str(source)!r} cannot be loaded: {err}") from None
    by_name = {layer.name: layer for layer in trained.layers}
    with_weights = [layer for layer in model.layers if layer.weights]

    width = model.output_shape[-1]

    def fits(layer):
        other = by_name.get(layer.name)
        return other is not None and [w.shape for w in other.weights] == [w.shape for w in
                                                                           layer.weights]

    def output_sized(layer):  # a layer of the head: its kernel maps onto the outputs
        return by_name.get(layer.name) is not None and layer.weights[0].shape[-1] == width

    head_start = len(with_weights)
    while head_start > 1 and not fits(with_weights[head_start - 1]) \
            and output_sized(with_weights[head_start - 1]):
        head_start -= 1
    fresh = [layer.name for layer in with_weights[head_start:]]
    for index, layer in enumerate(with_weights):
        other = by_name.get(layer.name)
        if fits(layer):
            layer.set_weights(other.get_weights())
        elif index == 0 and other is not None and _spread_bands(layer, other):
            print(f"ensai train: init_weights: first layer {layer.name!r} starts with the "
                  "trained one-band kernel over the number of bands", flush=True)
        elif index == head_start:
            print(f"ensai train: init_weights: output layer{'s' if len(fresh) > 1 else ''} "
                  f"{', '.join(repr(n) for n in fresh)} "
                  f"{'have' if len(fresh) > 1 else 'has'} another shape in the trained file "
                  f"(a new head); {'they start' if len(fresh) > 1 else 'it starts'} fresh",
                  flush=True)
        elif index > head_start:
            continue
        else:
            raise ModelDirError(f"train.init_weights {str(source)!r} does not fit the "
                                f"{model.name} network being trained: layer {layer.name!r} "
                                + ("is missing" if other is None else "has other weight shapes")
                                + " in the trained file")


def _spread_bands(layer, trained):
    """Give a first layer reading K bands the trained one-band kernel / K per band (input
    channels after the band, such as resnet's coordinates, keep theirs); True if done."""
    mine, theirs = layer.get_weights(), trained.get_weights()
    k, m = (theirs or [np.zeros((1, 1))])[0], mine[0]
    bands = m.shape[-2] - k.shape[-2] + 1
    if len(mine) != len(theirs) or bands < 2 or k.shape[:-2] + k.shape[-1:] != m.shape[:-2] \
            + m.shape[-1:] or any(a.shape != b.shape for a, b in zip(mine[1:], theirs[1:])):
        return False
    layer.set_weights([np.concatenate([np.repeat(k[..., :1, :], bands, -2) / bands,
                                       k[..., 1:, :]], axis=-2)] + theirs[1:])
    return True


def _model_kwargs(cfg):
    """Keyword arguments of ``build_model`` from the model section of a config."""
    n_targets = config_lib.target_count(cfg)
    kwargs = {"width": cfg.model.width, "input_stretch": cfg.model.input_stretch,
              "num_outputs": n_targets if cfg.model.head == "point"
              else uncertainty.num_outputs_for(cfg.model.head, n_targets)}
    if cfg.model.name == "inception_v4":
        kwargs["bn_mode"] = cfg.model.bn_mode
    return kwargs
