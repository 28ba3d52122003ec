"""Training the combiner of frozen trained networks (docs/design.md §7.4).

``ensai combine`` loads the backbones' ``model.keras`` files, freezes them and
trains only the combination weights (:mod:`ensai_tf.models.combiner`) on
freshly simulated validation-distribution lenses. The model folder receives
``config.yaml``, ``tb/``, ``log.csv``, ``combiner.json`` (the record from which
the combined network is rebuilt without ``model.keras``), ``saved_model/``
and ``model.keras``.
"""

import json
import math
import os
import pathlib
import time

import keras
import numpy as np

from ensai_tf import atomic, losses, metrics
from ensai_tf import config as config_lib
from ensai_tf.callbacks import StopOnNonFinite, format_duration
from ensai_tf.conventions import NUM_PARAMS, PARAM_NAMES
from ensai_tf.data import pipeline
from ensai_tf.dirlock import ModelDirLock
from ensai_tf.errors import ModelDirError, NonFiniteLossError
from ensai_tf.model_dir import (COMBINER_JSON, CONFIG_YAML, LOG_CSV, MODEL_KERAS, SAVED_MODEL_DIR,
                                TENSORBOARD_DIR)
from ensai_tf.models import combiner, stored_combiner
from ensai_tf.run_dir import (data_cache_dir, prepare_model_dir, run_config, save_keras_atomic,
                              trained_keras_file)
from ensai_tf.symmetry import AXIS_VIEWS, SWAPPED_AXIS_VIEWS, VIEW_SETS
from ensai_tf.train import compile_model, export_saved_model_atomic

__all__ = ["backbone_name", "backbone_views", "train_combiner"]

HEAD_BATCH = 256
"""Batch of the combination weights' fit over the cached predictions: a few hundred lenses
per Adam step of a layer of M x 5 weights (35 for the shipped combination)."""


def train_combiner(model_dirs, model_dir, config=None, mode="per_parameter", steps=None,
                   overwrite=False, *, verbose="auto"):
    """Train the combiner of frozen trained networks (docs/design.md §7.4).

    The backbones' ``model.keras`` files are loaded and frozen, each averaging
    its predictions over ``train.combine_views`` views of the image
    (:func:`ensai_tf.models.combiner.with_views`; one view for those named in
    ``train.single_view_backbones``, two members for those in
    ``train.split_view_backbones``, :func:`backbone_views`). The members'
    aligned predictions of ``steps`` batches of freshly simulated
    validation-distribution lenses (drawn with ``train.combine_seed``, never the
    fixed validation or test sets) are computed once; only the combination
    weights (one per member and parameter by default) are then fitted over
    them, with Adam at ``train.combine_learning_rate`` for
    ``train.combine_epochs`` epochs of ``train.combine_loss`` (docs/design.md §7.4 [R]).

    Args:
        model_dirs: trained model folders (or ``.keras`` files); the first is
            the parity reference.
        model_dir: output folder (new or empty unless ``overwrite``).
        config: the resolved config (default: the first network's).
        mode: ``"per_parameter"`` (paper) or ``"dense"``.
        steps: batches of fresh lenses the members predict (default
            ``train.combine_steps``).
        overwrite: replace a previous combiner's files.
        verbose: the progress bar of those predictions (``"auto"`` or 1: shown, 0: not).

    Returns:
        ``(model, summary)``: the trained combiner and the dict written to
        ``combiner.json``: :func:`ensai_tf.models.stored_combiner.combiner_record`
        (the backbone files and the combination weights, from which
        :func:`~ensai_tf.models.stored_combiner.load_combined` rebuilds the model
        without ``model.keras``), ``steps``, ``lenses``, ``epochs``, ``loss``, and the
        validation loss, parity MSE and per-parameter rms of the plain average of the
        sign-aligned members and of the fitted combination.

    Raises:
        ModelDirError: a backbone folder lacks ``model.keras``, the output
            folder is not empty, or another process is using it.
        NonFiniteLossError: the combiner's loss became NaN or Inf; nothing
            is exported.
    """
    paths = [trained_keras_file(d) for d in model_dirs]
    names = [backbone_name(d) for d in model_dirs]
    if config is None:
        config = run_config(model_dirs[0])
    t = config.train
    # an unknown name fails here, before any file is written
    members = backbone_views(names, t)
    paths, views = [paths[i] for i, _ in members], [v for _, v in members]
    steps = t.combine_steps if steps is None else int(steps)
    if steps < 1:
        raise ModelDirError(f"combiner steps {steps} must be >= 1")
    started = time.monotonic()
    with ModelDirLock(model_dir, "ensai combine"):
        model, summary = _train_combiner_locked(paths, views, model_dir, config, mode, steps,
                                                overwrite, verbose)
    mse = summary["trained_validation"]["parity_mse"]
    plain = summary["plain_average_validation"]["parity_mse"]
    label = f"{len(model_dirs)} networks" + (
        f" ({len(paths)} members)" if len(paths) != len(model_dirs) else "")
    print(f"ensai combine: fitted the {mode} combination of {label} to their "
          f"predictions of {summary['lenses']:,} fresh lenses ({t.combine_epochs} epochs of "
          f"{t.combine_loss}) in {format_duration(time.monotonic() - started)}; validation "
          f"parity MSE {mse:.4g} (plain average {plain:.4g}); wrote {model_dir} "
          f"({COMBINER_JSON}, {MODEL_KERAS}, {SAVED_MODEL_DIR}/, {LOG_CSV}, {CONFIG_YAML})",
          flush=True)
    return model, summary


def backbone_name(path):
    """The name ``train.single_view_backbones`` knows a backbone by: its folder's name
    (``trained_weights/alexnet`` -> ``"alexnet"``), or a ``.keras`` file's stem."""
    path = pathlib.Path(os.path.abspath(path))
    return path.stem if path.suffix == ".keras" else path.name


def backbone_views(names, train_config):
    """The members of a combination: which backbone each is and the views it averages
    (docs/design.md §8.6).

    Every backbone is one member averaging ``combine_views`` views, but those in
    ``single_view_backbones``, which see the image as given, and those in
    ``split_view_backbones``, which are two members: one averaging
    :data:`ensai_tf.symmetry.AXIS_VIEWS` in the backbone's place, and a
    twin averaging :data:`ensai_tf.symmetry.SWAPPED_AXIS_VIEWS`, appended after
    all the backbones in the order given.

    Args:
        names: the backbones' names (:func:`backbone_name`), in order.
        train_config: the ``train`` section.

    Returns:
        list of ``(index into names, views)``, one per member.

    Raises:
        ConfigError: a name in either list is not a backbone or is in both, or
            the backbones' names are not distinct.

    Example:
        >>> from ensai_tf import config
        >>> t = config.apply_overrides(config.get_preset("paper"), [
        ...     "train.combine_views=2", "train.single_view_backbones=[ensai_net]",
        ...     "train.split_view_backbones=[overfeat]"]).train
        >>> [(i, len(v)) for i, v in backbone_views(["alexnet", "ensai_net", "overfeat"], t)]
        [(0, 2), (1, 1), (2, 4), (2, 4)]
    """
    single, split = set(train_config.single_view_backbones), set(train_config.split_view_backbones)
    for key, named in (("single_view_backbones", single), ("split_view_backbones", split)):
        if named and len(set(names)) < len(names):
            raise config_lib.ConfigError(f"train.{key}: the backbones' names "
                                         f"({', '.join(names)}) are not distinct; give each "
                                         "network its own folder")
        unknown = sorted(named - set(names))
        if unknown:
            raise config_lib.ConfigError(f"train.{key}: {', '.join(unknown)} "
                                         f"{'is' if len(unknown) == 1 else 'are'} not among the "
                                         f"backbones ({', '.join(names)})")
    both = sorted(single & split)
    if both:
        raise config_lib.ConfigError(f"train.single_view_backbones and train.split_view_backbones "
                                     f"both name {', '.join(both)}; a backbone has one set of views")
    members = [(i, VIEW_SETS[1] if name in single else AXIS_VIEWS if name in split
                else VIEW_SETS[train_config.combine_views]) for i, name in enumerate(names)]
    return members + [(i, SWAPPED_AXIS_VIEWS) for i, name in enumerate(names) if name in split]


def _fresh_lenses(config):
    """The endless stream of fresh validation-distribution lenses the combiner trains on."""
    # [R] docs/design.md §7.4: validation source pool, validation-time effects, under a
    # user seed that differs from the fixed validation set's; never the test split
    fresh = pipeline.example_dataset("validation", config,
                                     seed=config.data.seed + config.train.combine_seed,
                                     batch_size=config.train.batch_size, training=False)
    return fresh.map(pipeline.to_supervised).prefetch(2)


def _check_finite(summary, model_dir):
    for name, value in summary["trained_validation"].items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"model folder {str(model_dir)!r}: the combiner's validation "
                                     f"{name} is {value}; nothing was exported. Lower "
                                     "train.combine_learning_rate and retry with --overwrite")


def _loss(train_config):
    """The loss the combination weights are fitted with (docs/design.md §7.4 [R])."""
    return (losses.ParityLogCosh(train_config.combine_loss_scale)
            if train_config.combine_loss == "logcosh" else losses.ParityMSE())


def _scores(layer, x, y, loss):
    """The loss, parity MSE and per-parameter rms of a combination layer on aligned
    predictions ``x`` of lenses with targets ``y`` (computed eagerly, once)."""
    pred = keras.ops.convert_to_numpy(layer(x))
    table = metrics.error_table(y, pred)
    scores = {"loss": float(keras.ops.convert_to_numpy(loss(y, pred))),
              "parity_mse": float(np.mean(keras.ops.convert_to_numpy(losses.parity_mse(y, pred))))}
    scores.update({f"{name}_rms": table[name]["rms"] for name in PARAM_NAMES})
    return scores


def _predictions(features, dataset, steps, verbose):
    """The frozen networks' aligned ``(N, M, 5)`` predictions and the ``(N, 5)`` targets of
    ``steps`` batches of ``dataset`` (all of it for None), with a progress bar."""
    bar = keras.utils.Progbar(steps, verbose=1 if verbose == "auto" else int(verbose),
                              unit_name="batch")
    xs, ys = [], []
    for k, (images, targets) in enumerate(dataset if steps is None else dataset.take(steps)):
        xs.append(np.asarray(features.predict_on_batch(images), np.float32))
        ys.append(np.asarray(targets, np.float32))
        if steps is not None:
            bar.update(k + 1)
    return np.concatenate(xs), np.concatenate(ys)


def _train_combiner_locked(paths, views, model_dir, config, mode, steps, overwrite,
                           verbose):
    t = config.train
    model_dir = prepare_model_dir(model_dir, overwrite=overwrite)
    config_lib.save_config(config, model_dir / CONFIG_YAML)
    keras.utils.set_random_seed(t.seed)
    backbones = [combiner.with_views(b, v)
                 for b, v in zip(combiner.load_backbones([str(p) for p in paths]), views)]
    model = combiner.build_combiner(backbones, reference=0, mode=mode)
    # [R] docs/design.md §7.4: the backbones are frozen, so their aligned predictions are
    # computed once and the combination weights are fitted over them for many epochs
    features = keras.Model(model.inputs, model.get_layer("parity_align").output,
                           name="aligned_predictions")
    x, y = _predictions(features, _fresh_lenses(config), steps, verbose)
    x_val, y_val = _predictions(features, pipeline.make_dataset(
        "validation", config, seed=config.data.seed, batch_size=config.evaluate.batch_size,
        cache_dir=data_cache_dir(config)), None, 0)
    plain = _scores(combiner.PerParameterWeights(dtype="float32"), x_val, y_val, _loss(t))
    # a fresh layer of the same kind, fitted alone and then copied in, so that the saved model's
    # own layer belongs to that model only
    fitted = combiner.PerParameterWeights(mode=mode, dtype="float32", name="params")
    inputs = keras.Input((len(backbones), NUM_PARAMS), name="aligned")
    head = keras.Model(inputs, fitted(inputs), name="combination")
    head.compile(optimizer=keras.optimizers.Adam(t.combine_learning_rate), loss=_loss(t))
    head.fit(x, y, batch_size=HEAD_BATCH, epochs=t.combine_epochs, shuffle=True,
             validation_data=(x_val, y_val), verbose=0,
             callbacks=[StopOnNonFinite(model_dir),
                        keras.callbacks.TensorBoard(log_dir=str(model_dir / TENSORBOARD_DIR)),
                        keras.callbacks.CSVLogger(str(model_dir / LOG_CSV))])
    model.get_layer("params").set_weights(fitted.get_weights())
    trained = _scores(fitted, x_val, y_val, _loss(t))
    # compiled as every saved ensai model is (parity MSE and per-parameter metrics), whatever
    # loss fitted the weights
    compile_model(model, t.combine_learning_rate)
    # the record (backbone files relative to model_dir, their SHA-256, the
    # combination weights) lets the combiner ship without copying its backbones
    summary = {**stored_combiner.combiner_record(model, paths, model_dir, views), "steps": steps,
               "lenses": int(len(y)), "epochs": t.combine_epochs, "loss": t.combine_loss,
               "plain_average_validation": plain, "trained_validation": trained}
    _check_finite(summary, model_dir)
    atomic.write_text(model_dir / COMBINER_JSON, json.dumps(summary, indent=1) + "\n")
    export_saved_model_atomic(model, model_dir / SAVED_MODEL_DIR)
    save_keras_atomic(model, model_dir / MODEL_KERAS)
    return model, summary
