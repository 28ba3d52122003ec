"""Parity rule and parity-min MSE (docs/design.md §2.3, §7.1, §8.1)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ensai_tf.conventions import ELLIPTICITY_INDICES, Param
from ensai_tf.losses import (ParityLogCosh, ParityMSE, parity_correct, parity_flip,
                             parity_log_cosh, parity_mse)

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


def test_log_cosh_is_quadratic_inside_its_scale_linear_outside_and_parity_blind():
    """s^2 log cosh(r/s): r^2/2 (1 - r^2/(12 s^2)) for |r| << s, s|r| - s^2 log 2 for |r| >> s
    (closed forms, relative 1e-4); a flipped ellipticity costs nothing; it round-trips through
    Keras serialisation with its scale."""
    s = 0.01
    truth = np.zeros((2, 5), np.float32)
    small, large = 1e-4, 1.0
    pred = np.array([[small, 0, 0, 0, 0], [large, 0, 0, 0, 0]], np.float32)
    per_lens = np.asarray(parity_log_cosh(truth, pred, s), np.float64) * 5
    assert per_lens[0] == pytest.approx(small ** 2 / 2 * (1 - small ** 2 / (12 * s ** 2)), rel=1e-4)
    assert per_lens[1] == pytest.approx(s * large - s ** 2 * np.log(2.0), rel=1e-4)
    noisy = TRUE + np.random.default_rng(1).normal(0, 0.05, TRUE.shape).astype(np.float32)
    loss = ParityLogCosh(scale=s)
    assert float(loss(TRUE, _flip(noisy))) == pytest.approx(float(loss(TRUE, noisy)), rel=1e-6)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, ParityLogCosh) and again.scale == s
    with pytest.raises(ValueError, match="scale must be > 0"):
        ParityLogCosh(scale=0.0)


def test_log_cosh_gradient_is_finite_for_any_residual():
    pred = tf.Variable(np.array([[1e-6, 0, 0, 0, 0], [50.0, 0, 0, 0, 0],
                                 [-1e3, 0, 0, 0, 0]], np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(parity_log_cosh(np.zeros((3, 5), np.float32), pred, 0.01))
    grad = tape.gradient(loss, pred).numpy()
    assert np.all(np.isfinite(grad))
    # d/dr of s^2 log cosh(r/s) / 5 = s tanh(r/s) / 5: +-s/5 far out, r/5 near 0
    np.testing.assert_allclose(grad[:, 0], [1e-6 / 5, 0.01 / 5, -0.01 / 5], rtol=1e-4)
