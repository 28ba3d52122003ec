"""Parity rule and parity-min MSE (docs/design.md §2.3, §7.1, §8.1)."""

import keras
import numpy as np
import pytest

from ensai_tf.conventions import ELLIPTICITY_INDICES, Param
from ensai_tf.losses import ParityMSE, parity_correct, parity_flip, parity_mse

TRUE = np.array([[1.2, 0.30, -0.20, 0.10, -0.05],
                 [0.5, -0.10, 0.40, -0.20, 0.15],
                 [2.0, 0.00, 0.05, 0.00, 0.00]], np.float32)


def _flip(y):
    y = np.array(y, copy=True)
    y[:, list(ELLIPTICITY_INDICES)] *= -1
    return y


def test_flip_negates_only_ellipticity():
    flipped = np.asarray(parity_flip(TRUE))
    np.testing.assert_array_equal(flipped[:, Param.E_X], -TRUE[:, Param.E_X])
    np.testing.assert_array_equal(flipped[:, Param.E_Y], -TRUE[:, Param.E_Y])
    for k in (Param.THETA_E, Param.X_L, Param.Y_L):
        np.testing.assert_array_equal(flipped[:, k], TRUE[:, k])


def test_zero_loss_for_perfect_prediction_with_flipped_ellipticity():
    # exact: the flipped candidate equals the truth bit for bit
    assert float(ParityMSE()(TRUE, _flip(TRUE))) == 0.0
    np.testing.assert_array_equal(np.asarray(parity_correct(TRUE, _flip(TRUE))), TRUE)


def test_invariant_under_prediction_parity():
    pred = TRUE + np.random.default_rng(0).normal(0, 0.2, TRUE.shape).astype(np.float32)
    a = float(ParityMSE()(TRUE, pred))
    b = float(ParityMSE()(TRUE, _flip(pred)))
    assert a == pytest.approx(b, rel=1e-7)  # same two candidates, in the other order


def test_equals_closed_form_on_hand_made_batch():
    y = np.array([[1.0, 0.5, 0.5, 0.0, 0.0],
                  [1.0, 0.5, 0.5, 0.0, 0.0]], np.float32)
    p = np.array([[1.5, 0.5, 0.5, 0.0, 0.0],      # mse 0.25/5; flipped: (0.25 + 1 + 1)/5
                  [1.0, -0.4, -0.6, 0.1, 0.0]],   # flipped: (0.01 + 0.01 + 0.01)/5
                 np.float32)
    expected = np.mean([0.25 / 5, 0.03 / 5])
    assert float(ParityMSE()(y, p)) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(np.asarray(parity_mse(y, p)), [0.05, 0.006], rtol=1e-6)


def test_tie_keeps_prediction():
    y = np.zeros((1, 5), np.float32)
    p = np.array([[0.0, 0.3, 0.0, 0.0, 0.0]], np.float32)  # both candidates equally far
    np.testing.assert_array_equal(np.asarray(parity_correct(y, p)), p)


def test_float64_numpy_inputs_stay_float64():
    out = parity_correct(TRUE.astype(np.float64), _flip(TRUE).astype(np.float64))
    assert keras.ops.convert_to_numpy(out).dtype == np.float64


def test_rejects_wrong_parameter_count():
    with pytest.raises(ValueError, match="5 parameters"):
        parity_correct(np.zeros((2, 4)), np.zeros((2, 4)))


def test_round_trip_through_keras_file(tmp_path):
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(5, name="params")(inputs))
    model.compile(optimizer="adam", loss=ParityMSE())
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.loss, ParityMSE)
    assert loaded.loss.get_config() == model.loss.get_config()
    x = TRUE
    assert float(loaded.loss(TRUE, loaded(x))) == pytest.approx(float(model.loss(TRUE, model(x))),
                                                                 rel=1e-7)
