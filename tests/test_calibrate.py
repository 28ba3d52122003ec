"""Tests of ensai_tf.calibrate: refitting a Gaussian head's interval calibration."""

import json

import keras
import numpy as np
import pytest

from ensai_tf import calibrate, cli, config, inference
from ensai_tf.errors import ModelDirError
from ensai_tf.model_dir import CALIBRATION_JSON
from training_helpers import NPIX, small_config, tiny_model


def test_calibrate_refits_on_more_validation_lenses_and_keeps_the_old_file(tmp_path, tiny, cache):
    cfg = config.apply_overrides(small_config(cache), ["model.head=diagonal"])
    run = tmp_path / "run"
    run.mkdir()
    tiny_model("x", input_shape=(NPIX, NPIX, 1), num_outputs=10).save(run / "model.keras")
    config.save_config(cfg, run / "config.yaml")
    first = {"n": cfg.data.val_size, "note": "the user's earlier calibration"}
    (run / CALIBRATION_JSON).write_text(json.dumps(first))
    assert cli.main(["calibrate", str(run), "--n", "12"]) == 0
    new = json.loads((tmp_path / "run" / CALIBRATION_JSON).read_text())
    assert first["n"] == cfg.data.val_size and new["n"] == 12
    assert json.loads((tmp_path / "run" / "calibration-previous.json").read_text()) == first
    point = tmp_path / "point"
    point.mkdir()
    tiny_model("x", input_shape=(NPIX, NPIX, 1)).save(point / "model.keras")
    # a robustness experiment refits a Gaussian head only
    with pytest.raises(ModelDirError, match="point-estimate network"):
        calibrate.calibrate(point, config=cfg, experiment="psf")
    # a point-estimate network gets intervals from the spread of its eight flipped views
    spread = calibrate.calibrate(point, config=cfg, n=12)
    assert spread["spread"]["method"] == "dihedral" and spread["n"] == 12
    predict_fn, npix = inference.load_predictor(point, raw=True)
    assert predict_fn(np.zeros((1, npix, npix, 1), np.float32)).shape == (1, 10)
    assert keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
