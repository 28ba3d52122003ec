"""Post-hoc interval calibration on validation lenses: Gaussian heads and combined networks.

``ensai train`` ends a Gaussian-head run with :func:`calibrate_on_validation`
and writes ``calibration.json`` into the model folder; ``ensai calibrate``
(:func:`calibrate`) refits it later, on more validation lenses or on
validation lenses simulated like a robustness experiment. The fit is the
quantile recalibration of :func:`ensai_tf.calibration.fit_interval_calibration`,
always on the fixed validation split, never the test split.

A point-estimate network has no Gaussian head of its own: :func:`calibrate_spread`
fits the scale and floor that turn the spread of several predictions of each
lens into per-lens standard deviations
(:class:`ensai_tf.models.ensemble.EnsembleSpread`), then the quantile
multipliers on top, and stores both in ``calibration.json``; from then on the
network predicts intervals (docs/design.md §6.7). The predictions are a
combined network's members (docs/design.md §7.4), or, for a single network,
its views of the eight flips and rotations of the image.
"""

import json
import os
import pathlib

import numpy as np

import keras

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf import conventions, uncertainty
from ensai_tf.calibration import coverage, fit_interval_calibration, standardised_errors
from ensai_tf.data.pipeline import make_dataset
from ensai_tf.errors import ModelDirError
from ensai_tf.evaluate import collect_fixed_split
from ensai_tf.flags import fit_flag_thresholds, image_statistics
from ensai_tf.model_dir import CALIBRATION_JSON, model_source
from ensai_tf.models import ensemble, stored_combiner
from ensai_tf.models.loading import float32_model, load_keras_model
from ensai_tf.preprocess.images import iter_prepared_array
from ensai_tf.run_dir import data_cache_dir, run_config, trained_keras_file
from ensai_tf.screen import load_screen

__all__ = [
    "CALIBRATION_PREVIOUS_JSON",
    "calibrate",
    "calibrate_spread",
    "calibrate_on_validation",
    "fit_spread_calibration",
    "write_calibration",
]

CALIBRATION_PREVIOUS_JSON = "calibration-previous.json"
"""The calibration that :func:`calibrate` replaced, kept beside the new one."""


def _flag_statistics(images, params, screen):
    """:func:`ensai_tf.flags.image_statistics` of single-band validation images prepared as
    ``ensai predict`` prepares a user's, with the screening network's probabilities."""
    images = np.asarray(images)
    images = images[..., 0] if images.ndim == 4 else images
    prepared = np.stack([p.image for p in iter_prepared_array(images, npix=images.shape[-1])])
    return image_statistics(prepared, np.asarray(params)[:, :conventions.NUM_PARAMS],
                            screen=screen)


def _validation_outputs(model, cfg):
    """Raw outputs of ``model``, the truths and the quality-flag statistics
    (:func:`_flag_statistics`) on the fixed validation split, float64."""
    val_ds = make_dataset("validation", cfg, seed=cfg.data.seed,
                          batch_size=cfg.evaluate.batch_size, cache_dir=data_cache_dir(cfg))
    outputs, truths, stats = [], [], []
    screen = load_screen()
    for images, params in val_ds:
        outputs.append(np.asarray(model(images, training=False), dtype=np.float64))
        truths.append(np.asarray(params, dtype=np.float64))
        if images.shape[-1] == 1:  # the quality flags judge one-band images (§8.7)
            stats.append(_flag_statistics(images, outputs[-1], screen))
    stats = {k: np.concatenate([s[k] for s in stats]) for k in stats[0]} if stats else None
    return np.concatenate(outputs), np.concatenate(truths), stats


def calibrate_on_validation(model, cfg):
    """Fit the post-hoc interval calibration of a Gaussian head on the validation set.

    Quantile recalibration (:func:`ensai_tf.calibration.fit_interval_calibration`)
    on the fixed validation split, never the test split.

    Args:
        model: a trained Gaussian-head ``keras.Model``.
        cfg: its :class:`~ensai_tf.config.ExperimentConfig`.

    Returns:
        the JSON-ready calibration dict, with the raw (uncalibrated) validation
        coverage at 68% and 95% added under ``"raw_coverage"``.
    """
    # calibrate the predictions that inference will make: float32, whatever
    # precision the network was trained in
    outputs, truth, stats = _validation_outputs(float32_model(model), cfg)
    summary = uncertainty.gaussian_summary(outputs)
    calibration = fit_interval_calibration(truth, summary["mean"], summary["std"])
    raw = coverage(truth, summary["mean"], summary["std"])
    calibration["names"] = list(conventions.target_names(truth.shape[1]))
    calibration["fitted_on"] = f"validation split, {truth.shape[0]} lenses"
    calibration["raw_coverage"] = {str(k): v.tolist() for k, v in raw.items()}
    if stats is not None:
        calibration["flags"] = fit_flag_thresholds(stats)
    return calibration


def write_calibration(path, calibration):
    """Write a calibration dict as ``calibration.json`` (atomically).

    Args:
        path: the file, normally ``MODEL_DIR/calibration.json``.
        calibration: the dict of :func:`calibrate_on_validation`.

    Returns:
        ``path``, as given.
    """
    atomic.write_text(path, json.dumps(calibration, indent=1) + "\n")
    return path


def _calibration_config(model, model_dir, cfg):
    """``cfg`` made to match the network: shear outputs on for a network that predicts shear."""
    head, n_targets = uncertainty.head_layout(model.output_shape[-1])
    if n_targets > conventions.NUM_PARAMS and not cfg.model.shear_outputs:
        if not cfg.lens.shear:
            raise ModelDirError(f"{str(model_dir)!r} predicts the shear: calibrate it on lenses "
                                "with shear (--experiment shear or --set lens.shear=true)")
        cfg = config_lib.apply_overrides(cfg, ["model.shear_outputs=true"])
    if head == "point":
        raise ModelDirError(f"{str(model_dir)!r} holds a point-estimate network; only Gaussian "
                            "heads (model.head = diagonal or full) have intervals to calibrate")
    return cfg


def _point_network(folder):
    """``(network, method)`` of a point-estimate folder: a combined network and ``"members"``,
    a single network and ``"dihedral"``, or ``(None, None)`` for a Gaussian head."""
    kind, source = model_source(folder)
    if kind not in ("keras", "combined"):
        raise ModelDirError(f"{str(folder)!r} holds no model.keras or combiner.json to calibrate")
    model = stored_combiner.load_combined(source) if kind == "combined" else load_keras_model(source)
    if model.output_shape[-1] != conventions.NUM_PARAMS:
        return None, None
    members = any(layer.name == ensemble.ALIGN_LAYER for layer in model.layers)
    return model, ("members" if members else "dihedral")


def _aligned_and_mean(model, method, images, batch_size):
    """``(aligned, mean)``: ``(N, M, 5)`` aligned predictions and the ``(N, 5)`` point estimates."""
    if method == "dihedral":
        model = ensemble.with_dihedral_spread(model, [1.0] * 5, [1.0] * 5)
        mean_out = model.get_layer("back_0").output
    else:
        mean_out = model.output
    probe = keras.Model(model.input, [model.get_layer(ensemble.ALIGN_LAYER).output, mean_out])
    aligned, mean = [], []
    for start in range(0, len(images), batch_size):
        a, m = probe(images[start:start + batch_size], training=False)
        aligned.append(np.asarray(a, dtype=np.float64))
        mean.append(np.asarray(m, dtype=np.float64))
    return np.concatenate(aligned), np.concatenate(mean)


def fit_spread_calibration(aligned, mean, truth, method="members"):
    """The spread and interval calibration of a point-estimate network.

    Args:
        aligned: ``(N, M, 5)`` parity-aligned predictions of validation
            lenses (members or views), target units.
        mean: ``(N, 5)`` the network's point estimates of the same lenses.
        truth: ``(N, 5)`` their true parameters.
        method: ``"members"`` or ``"dihedral"`` (:data:`ensai_tf.models.ensemble.SPREAD_METHODS`).

    Returns:
        the JSON-ready calibration dict of :func:`ensai_tf.calibration.fit_interval_calibration`
        with ``"spread"``: ``{"method", "scale": [5], "floor": [5]}`` added, and
        the raw (spread-only) coverage under ``"raw_coverage"``.
    """
    variance = np.var(aligned, axis=1)
    residuals = standardised_errors(truth, mean, np.ones_like(mean))
    scale, floor = ensemble.fit_spread(residuals, variance)
    std = np.sqrt(scale ** 2 * variance + floor ** 2)
    calibration = fit_interval_calibration(truth, mean, std)
    calibration["spread"] = {"method": method, "scale": scale.tolist(), "floor": floor.tolist()}
    calibration["names"] = list(conventions.PARAM_NAMES)
    calibration["raw_coverage"] = {str(k): v.tolist() for k, v in coverage(truth, mean, std).items()}
    return calibration


def calibrate_spread(folder, config=None, n=None):
    """Fit the per-lens intervals of a point-estimate network on validation lenses.

    Writes ``calibration.json`` into the folder (a previous one is kept as
    ``calibration-previous.json``); :func:`ensai_tf.inference.load_predictor`
    then returns the network with its spread as a diagonal Gaussian head.

    Args:
        folder: a model folder with a point-estimate ``model.keras`` or a
            ``combiner.json``.
        config: the config of the validation data (default: the folder's ``config.yaml``).
        n: validation lenses (default ``config.data.val_size``).

    Returns:
        the calibration dict written.

    Raises:
        ModelDirError: the folder holds no point-estimate network.
    """
    folder = pathlib.Path(folder)
    model, method = _point_network(folder)
    if model is None:
        raise ModelDirError(f"{str(folder)!r} holds a Gaussian head, not a point-estimate network")
    cfg = config if config is not None else run_config(folder)
    n = int(n) if n is not None else cfg.data.val_size
    cfg = config_lib.apply_overrides(cfg, [f"data.val_size={max(n, cfg.data.val_size)}",
                                           f"image.npix={model.input_shape[1]}"])
    images, truth, _ = collect_fixed_split(cfg, n, "validation")
    aligned, mean = _aligned_and_mean(model, method, images, cfg.evaluate.batch_size)
    calibration = fit_spread_calibration(aligned, mean, truth, method)
    calibration["fitted_on"] = f"validation split, {len(truth)} lenses"
    if images.shape[-1] == 1:  # the quality flags judge one-band images (docs/design.md §8.7)
        calibration["flags"] = fit_flag_thresholds(_flag_statistics(images, mean, load_screen()))
    final = folder / CALIBRATION_JSON
    if final.is_file():
        os.replace(final, folder / CALIBRATION_PREVIOUS_JSON)
    write_calibration(final, calibration)
    print(f"ensai calibrate: wrote {final} ({method} spread and intervals, "
          f"{calibration['fitted_on']})")
    return calibration


def calibrate(model_dir, config=None, n=None, experiment=None):
    """Refit a Gaussian head's or a combined network's interval calibration on validation lenses.

    A point-estimate network (a combined one included) gets a spread
    calibration instead (:func:`calibrate_spread`).

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
        experiment: None or an :data:`ensai_tf.config.EXPERIMENTS` name.

    Returns:
        the calibration dict written.

    Raises:
        ModelDirError: no trained model, or a point-estimate network.
    """
    model_dir = pathlib.Path(model_dir)
    if experiment is None and model_source(model_dir)[0] in ("keras", "combined") \
            and _point_network(model_dir)[0] is not None:
        return calibrate_spread(model_dir, config=config, n=n)
    path = trained_keras_file(model_dir)
    cfg = config if config is not None else run_config(model_dir)
    cfg = config_lib.experiment_config(cfg, experiment)
    if n is not None:
        cfg = config_lib.apply_overrides(cfg, [f"data.val_size={int(n)}"])
    model = load_keras_model(path)
    cfg = _calibration_config(model, model_dir, cfg)
    calibration = calibrate_on_validation(model, cfg)
    calibration["fitted_on"] += f" ({experiment} experiment)" if experiment else ""
    final = model_dir / CALIBRATION_JSON
    if final.is_file():
        os.replace(final, model_dir / CALIBRATION_PREVIOUS_JSON)
    write_calibration(final, calibration)
    print(f"ensai calibrate: wrote {final} ({calibration['fitted_on']})")
    return calibration
