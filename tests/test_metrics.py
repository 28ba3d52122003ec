"""Error metrics after parity correction (docs/design.md §8.1, §8.2)."""

import keras
import numpy as np
import pytest

from closed_forms import SCALES, odd_even_errors
from ensai_tf import metrics
from ensai_tf.conventions import NUM_PARAMS, PARAM_NAMES, Param

N = 40000
SIGMAS = np.array([0.03, 0.04, 0.05, 0.06, 0.07])


def _synthetic(seed=0):
    """Truth with |e| ~ 0.3 >> sigma, so parity correction never picks the wrong twin."""
    rng = np.random.default_rng(seed)
    true = np.column_stack([rng.uniform(0.1, 3.0, N), 0.3 * np.ones(N), -0.3 * np.ones(N),
                            rng.uniform(-0.3, 0.3, N), rng.uniform(-0.3, 0.3, N)])
    pred = true + rng.normal(0.0, 1.0, (N, NUM_PARAMS)) * SIGMAS
    return true, pred


def _flip_half(pred):
    out = pred.copy()
    out[::2, [Param.E_X, Param.E_Y]] *= -1
    return out


def test_error68_of_gaussian_residuals():
    true, pred = _synthetic()
    # 68th percentile of |N(0, s)| = 0.9945 s; its standard error at N = 40000 is
    # about 0.005 s, so rtol 2% is > 3 sigma
    np.testing.assert_allclose(metrics.error68(true, _flip_half(pred)), 0.9945 * SIGMAS, rtol=0.02)


def test_rms_and_half_width_of_gaussian_residuals():
    true, pred = _synthetic(seed=1)
    # rms -> s (standard error s/sqrt(2N) = 0.35%); (P84-P16)/2 -> 0.9945 s (~0.6%)
    np.testing.assert_allclose(metrics.rms(true, _flip_half(pred)), SIGMAS, rtol=0.015)
    np.testing.assert_allclose(metrics.half_width_16_84(true, _flip_half(pred)),
                               0.9945 * SIGMAS, rtol=0.025)


def test_parity_correction_is_applied():
    true, pred = _synthetic(seed=2)
    flipped = _flip_half(pred)
    np.testing.assert_allclose(metrics.error68(true, flipped), metrics.error68(true, pred),
                               rtol=0, atol=0)
    # without correction the flipped half would give errors near 2 * 0.3
    assert metrics.error68(true, flipped)[Param.E_X] < 0.1
    np.testing.assert_array_equal(metrics.parity_correct_np(true, flipped), pred)


def test_error_table_keys_and_values():
    true, pred = _synthetic(seed=3)
    table = metrics.error_table(true, pred)
    assert table["n"] == N
    e68 = metrics.error68(true, pred)
    for k, name in enumerate(PARAM_NAMES):
        assert set(table[name]) == {"error68", "rms", "half_width_16_84", "bias"}
        assert table[name]["error68"] == pytest.approx(e68[k], rel=1e-12)
        assert abs(table[name]["bias"]) < 4 * SIGMAS[k] / np.sqrt(N)  # 4 standard errors


def test_binned_bands_of_known_scatter():
    rng = np.random.default_rng(4)
    true = rng.uniform(0.0, 1.0, N)
    pred = true + rng.normal(0.0, 0.1, N)
    bands = metrics.binned_bands(true, pred, bins=np.linspace(0.0, 1.0, 5))
    np.testing.assert_allclose(bands["centres"], [0.125, 0.375, 0.625, 0.875], rtol=1e-12)
    auto = metrics.binned_bands(true, pred, bins=4)  # equal bins over [min, max] of true
    np.testing.assert_allclose(auto["centres"], bands["centres"], atol=1e-3)
    assert bands["count"].sum() == N
    # 68% band half-width -> 0.1 and 95% -> 0.196 (+- bin spread 0.25/sqrt(12) in quadrature)
    spread = 0.25 / np.sqrt(12)
    np.testing.assert_allclose(0.5 * (bands["p84"] - bands["p16"]),
                               np.sqrt(0.1 ** 2 + spread ** 2), rtol=0.1)
    np.testing.assert_allclose(bands["p50"], bands["centres"], atol=0.01)
    assert np.all(bands["p97_5"] > bands["p84"]) and np.all(bands["p2_5"] < bands["p16"])


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        metrics.error68(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="empty"):
        metrics.rms(np.zeros((0, 5)), np.zeros((0, 5)))


def test_error_table_matches_closed_forms():
    pred, true = odd_even_errors()
    m = metrics.error_table(true, pred)
    assert m["n"] == len(true)
    for k, name in enumerate(PARAM_NAMES):
        s = SCALES[k]
        # float64 arithmetic on values of order 0.1: 1e-9 relative is round-off
        np.testing.assert_allclose(m[name]["error68"], 69 * s, rtol=1e-9)
        np.testing.assert_allclose(m[name]["rms"], s * np.sqrt(3451.0), rtol=1e-9)
        np.testing.assert_allclose(m[name]["half_width_16_84"], 68.5 * s, rtol=1e-9)
        np.testing.assert_allclose(m[name]["bias"], s * 51 / len(true), rtol=1e-9)  # sum = 51 s


def test_error_table_without_parity_correction_would_fail():
    """The flipped half must matter: with the flip kept, e_x errors are ~1."""
    pred, true = odd_even_errors()
    raw = np.percentile(np.abs(pred - true)[:, 1], 68)
    assert raw > 0.5
    assert metrics.error_table(true, pred)["e_x"]["error68"] < 0.1


def test_as_params_checks_shapes_and_emptiness():
    assert metrics.as_params([[1.0, 0.1, 0.2, 0.0, 0.0]], "x").dtype == np.float64
    assert metrics.as_params(np.zeros((3, 7)), "x").shape == (3, 7)
    assert metrics.as_params(np.zeros((0, 5)), "x", allow_empty=True).shape == (0, 5)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 5\)"):
        metrics.as_params(np.zeros((3, 6)), "x")
    with pytest.raises(ValueError, match="x is empty"):
        metrics.as_params(np.zeros((0, 5)), "x")


def test_keras_parameter_metrics_match_numpy():
    true, pred = _synthetic(seed=5)
    true, pred = true[:64].astype(np.float32), _flip_half(pred[:64]).astype(np.float32)
    ms = metrics.parameter_metrics(("rms", "mae"))
    assert [m.name for m in ms[:2]] == ["theta_e_rms", "e_x_rms"]
    for m in ms:
        m.update_state(true[:32], pred[:32])
        m.update_state(true[32:], pred[32:])
    rms = metrics.rms(true, pred)
    mae = np.mean(np.abs(metrics.residuals(true, pred)), axis=0)
    # float32 accumulation of 64 values
    np.testing.assert_allclose([float(m.result()) for m in ms[:5]], rms, rtol=1e-5)
    np.testing.assert_allclose([float(m.result()) for m in ms[5:]], mae, rtol=1e-5)


def test_keras_metric_round_trip(tmp_path):
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    model.compile(optimizer="sgd", loss="mse", metrics=metrics.parameter_metrics())
    x = np.random.default_rng(6).normal(size=(8, 5)).astype(np.float32)
    before = model.evaluate(x, x, verbose=0, return_dict=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    after = loaded.evaluate(x, x, verbose=0, return_dict=True)
    assert "y_l_rms" in after
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-6)
    clone = metrics.ParameterRMS.from_config(metrics.ParameterRMS(Param.E_Y).get_config())
    assert (clone.name, clone.param_index) == ("e_y_rms", 2)
