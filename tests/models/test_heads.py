"""Tests of ensai_tf.models.heads: Gaussian-head builder and Monte Carlo dropout."""

import keras
import numpy as np
import pytest

from ensai_tf import uncertainty as U
from ensai_tf.models import heads


def test_loss_and_layer_keras_round_trip(tmp_path):
    inp = keras.Input((4,))
    x = heads.MCDropout(0.3, always_on=False)(keras.layers.Dense(8)(inp))
    model = keras.Model(inp, keras.layers.Dense(20)(x))
    model.compile(optimizer="adam", loss=U.GaussianNLL("full"))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, U.GaussianNLL) and loaded.loss.covariance == "full"
    layer = [lay for lay in loaded.layers if isinstance(lay, heads.MCDropout)][0]
    assert layer.always_on is False and layer.rate == pytest.approx(0.3)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)


@pytest.mark.parametrize("covariance,width", [("diagonal", 10), ("full", 20)])
def test_uncertainty_model_and_predict(covariance, width):
    model = heads.build_uncertainty_model("ensai_net", (32, 32, 1), covariance)
    assert model.output_shape == (None, width)
    images = np.random.default_rng(5).random((2, 32, 32, 1)).astype(np.float32)
    out = U.predict_with_uncertainty(model, images)
    assert out["mean"].shape == (2, 5) and out["covariance"].shape == (2, 5, 5)
    np.testing.assert_allclose(out["upper"] - out["lower"], 2 * out["std"], rtol=1e-12)
    np.testing.assert_allclose(np.diagonal(out["covariance"], axis1=1, axis2=2),
                               out["std"] ** 2, rtol=1e-10)
    assert np.all(np.linalg.eigvalsh(out["covariance"]) > 0)


def _linear_dropout_model(rate, seed=0):
    inp = keras.Input((16,))
    x = heads.MCDropout(rate, seed=seed)(inp)
    dense = keras.layers.Dense(5, use_bias=False, kernel_initializer="ones")
    return keras.Model(inp, dense(x))


def test_mc_dropout_rate_zero_is_deterministic():
    model = _linear_dropout_model(0.0)
    x = np.ones((3, 16), np.float32)
    mean, std = heads.mc_dropout_predict(model, x, samples=4)
    np.testing.assert_array_equal(std, 0.0)
    np.testing.assert_allclose(mean, 16.0, rtol=1e-6)


def test_mc_dropout_spread_and_mean_converge():
    # y = sum of 16 inputs kept w.p. 0.5 and scaled by 2: E y = 16, sd = 2*sqrt(16*0.25) = 4.
    # e_x, e_y are aligned to the first pass by parity, so check theta_e, x_l, y_l only.
    # 400 passes: mean within 4 * 4/sqrt(400) = 0.8, std within 15%.
    model = _linear_dropout_model(0.5, seed=7)
    x = np.ones((1, 16), np.float32)
    mean, std = heads.mc_dropout_predict(model, x, samples=400)
    for k in (0, 3, 4):
        assert abs(mean[0, k] - 16.0) < 0.8
        assert abs(std[0, k] - 4.0) < 0.6
