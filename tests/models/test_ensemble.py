"""Per-lens spread of a combined network's members or of a network's eight views (models.ensemble)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ensai_tf import calibrate
from ensai_tf.losses import parity_correct
from ensai_tf.models import combiner, ensemble
from ensai_tf.preprocess.bias import BiasRemoval
from ensai_tf.symmetry import DIHEDRAL_GROUP, transform_params

SIDE = 16
SCALE = [1.5, 2.0, 0.5, 1.0, 3.0]
FLOOR = [0.01, 0.02, 0.03, 0.04, 0.05]


def _constant_network(params, name="const"):
    """A network whose output is ``params`` whatever the image (zero kernel, bias = params)."""
    inputs = keras.Input((SIDE, SIDE, 1), name="images")
    x = keras.layers.GlobalAveragePooling2D()(BiasRemoval()(inputs))
    dense = keras.layers.Dense(5, kernel_initializer="zeros", name="params")
    model = keras.Model(inputs, dense(x), name=name)
    dense.set_weights([np.zeros((1, 5), np.float32), np.asarray(params, np.float32)])
    return model


def _images(n=3):
    return np.random.default_rng(0).uniform(0, 1, (n, SIDE, SIDE, 1)).astype(np.float32)


def test_spread_layer_is_the_closed_form():
    aligned = np.random.default_rng(1).normal(size=(4, 3, 5)).astype(np.float32)
    mean = aligned.mean(axis=1)
    out = np.asarray(ensemble.EnsembleSpread(SCALE, FLOOR)([aligned, mean]))
    want = np.log(np.square(SCALE) * aligned.var(axis=1) + np.square(FLOOR))
    np.testing.assert_allclose(out[:, :5], mean, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out[:, 5:], want, rtol=1e-5, atol=1e-6)


def test_spread_of_combined_members():
    members = [_constant_network([1.0, 0.1, 0.2, 0.0, 0.0], "a"),
               _constant_network([1.2, 0.1, 0.2, 0.1, 0.0], "b")]
    model = ensemble.with_spread(combiner.build_combiner(members), SCALE, FLOOR)
    out = np.asarray(model(_images()))
    var = np.var([[1.0, 0.1, 0.2, 0.0, 0.0], [1.2, 0.1, 0.2, 0.1, 0.0]], axis=0)
    want = np.square(SCALE) * var + np.square(FLOOR)
    np.testing.assert_allclose(np.exp(out[:, 5:]), np.repeat(want[None], 3, 0), rtol=1e-5)


def test_dihedral_spread_of_a_constant_network_is_that_of_its_mapped_back_outputs():
    p = np.array([[1.3, 0.2, -0.1, 0.3, -0.2]])
    model = ensemble.with_dihedral_spread(_constant_network(p[0]), SCALE, FLOOR)
    out = np.asarray(model(_images()))
    views = np.concatenate([transform_params(p, g, inverse=True) for g in DIHEDRAL_GROUP])
    aligned = np.asarray(parity_correct(np.repeat(views[:1], 8, 0), views))
    want = np.square(SCALE) * aligned.var(axis=0) + np.square(FLOOR)
    np.testing.assert_allclose(out[:, :5], np.repeat(p, 3, 0), atol=1e-6)
    np.testing.assert_allclose(np.exp(out[:, 5:]), np.repeat(want[None], 3, 0), rtol=1e-5)


@pytest.mark.parametrize("method", ["members", "dihedral"])
def test_spread_models_round_trip_keras_and_savedmodel(tmp_path, method):
    if method == "members":
        model = ensemble.with_spread(combiner.build_combiner(
            [_constant_network([1, 0, 0, 0, 0], "a"), _constant_network([2, 0, 0, 0, 0], "b")]),
            SCALE, FLOOR)
    else:
        model = ensemble.with_dihedral_spread(_constant_network([1, .1, 0, .2, 0]), SCALE, FLOOR)
    x = _images()
    want = np.asarray(model(x))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(x)), want, rtol=0, atol=1e-6)
    model.export(str(tmp_path / "sm"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(np.asarray(loaded.serve(x)), want, rtol=0, atol=1e-6)


def test_fit_spread_recovers_scale_and_floor_within_five_percent():
    rng = np.random.default_rng(3)
    var = 10.0 ** rng.uniform(-5, -1, (20000, 5))  # spans the floor and the scaled spread
    resid = rng.normal(size=var.shape) * np.sqrt(np.square(SCALE) * var + np.square(FLOOR))
    scale, floor = ensemble.fit_spread(resid, var)
    np.testing.assert_allclose(scale, SCALE, rtol=0.05)
    np.testing.assert_allclose(floor, FLOOR, rtol=0.05)


def test_spread_calibration_covers_the_fitted_set_at_every_level():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0.5, 2.0, (5000, 5))
    aligned = truth[:, None, :] + rng.normal(scale=0.05, size=(5000, 4, 5))
    mean = aligned.mean(axis=1) + rng.normal(scale=0.02, size=(5000, 5))
    cal = calibrate.fit_spread_calibration(aligned, mean, truth)
    assert cal["spread"]["method"] == "members" and len(cal["spread"]["scale"]) == 5
    std = np.sqrt(np.square(cal["spread"]["scale"]) * aligned.var(axis=1)
                  + np.square(cal["spread"]["floor"]))
    z = np.abs(np.asarray(parity_correct(truth, mean)) - truth) / std
    for level in (0.68, 0.95):
        k = np.interp(level, cal["levels"], np.asarray(cal["multipliers"])[:, 0])
        assert abs(np.mean(z[:, 0] <= k) - level) < 0.005
