"""Post-hoc interval calibration of a Gaussian-head network on validation lenses.

``ensai train`` ends a Gaussian-head run with :func:`calibrate_on_validation`
and writes ``calibration.json`` into the model folder; ``ensai calibrate``
(:func:`calibrate`) refits it later, on more validation lenses or on
validation lenses simulated like a robustness experiment. The fit is the
quantile recalibration of :func:`ensai_tf.calibration.fit_interval_calibration`,
always on the fixed validation split, never the test split.
"""

import json
import os
import pathlib

import numpy as np

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf import conventions, uncertainty
from ensai_tf.calibration import coverage, fit_interval_calibration
from ensai_tf.data.pipeline import make_dataset
from ensai_tf.errors import ModelDirError
from ensai_tf.model_dir import CALIBRATION_JSON
from ensai_tf.models.loading import float32_model, load_keras_model
from ensai_tf.run_dir import data_cache_dir, run_config, trained_keras_file

__all__ = [
    "CALIBRATION_PREVIOUS_JSON",
    "calibrate",
    "calibrate_on_validation",
    "write_calibration",
]

CALIBRATION_PREVIOUS_JSON = "calibration-previous.json"
"""The calibration that :func:`calibrate` replaced, kept beside the new one."""


def _validation_outputs(model, cfg):
    """Raw outputs of ``model`` and the truths on the fixed validation split, float64."""
    val_ds = make_dataset("validation", cfg, seed=cfg.data.seed,
                          batch_size=cfg.evaluate.batch_size, cache_dir=data_cache_dir(cfg))
    outputs, truths = [], []
    for images, params in val_ds:
        outputs.append(np.asarray(model(images, training=False), dtype=np.float64))
        truths.append(np.asarray(params, dtype=np.float64))
    return np.concatenate(outputs), np.concatenate(truths)


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
    outputs, truth = _validation_outputs(float32_model(model), cfg)
    summary = uncertainty.gaussian_summary(outputs)
    calibration = fit_interval_calibration(truth, summary["mean"], summary["std"])
    raw = coverage(truth, summary["mean"], summary["std"])
    calibration["names"] = list(conventions.target_names(truth.shape[1]))
    calibration["fitted_on"] = f"validation split, {truth.shape[0]} lenses"
    calibration["raw_coverage"] = {str(k): v.tolist() for k, v in raw.items()}
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
        experiment: None or an :data:`ensai_tf.config.EXPERIMENTS` name.

    Returns:
        the calibration dict written.

    Raises:
        ModelDirError: no trained model, or a point-estimate network.
    """
    model_dir = pathlib.Path(model_dir)
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
