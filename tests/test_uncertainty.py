"""Tests of ensai_tf.uncertainty: Gaussian NLL, heads, MC dropout, coverage."""

import numpy as np
import pytest
import keras

from ensai_tf import uncertainty as U
from ensai_tf.losses import PARITY_SIGNS

S = np.diag(PARITY_SIGNS)


def _numpy_nll(y, mu, cov):
    r = y - mu
    _, logdet = np.linalg.slogdet(2.0 * np.pi * cov)
    return 0.5 * (logdet + r @ np.linalg.solve(cov, r))


def _random_full(rng, batch):
    out = rng.normal(size=(batch, 20)) * 0.3
    return out.astype(np.float64)


def _cov_from_full(row):
    L = np.diag(np.exp(row[5:10]))
    for m, (i, j) in enumerate(U.TRIL_INDICES):
        L[i, j] = row[10 + m]
    return L @ L.T


def test_diagonal_nll_matches_numpy():
    # closed form; float64 inputs -> 1e-9 relative tolerance (round-off only)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(6, 5))
    pred = np.concatenate([y + rng.normal(size=(6, 5)) * 0.1, rng.normal(size=(6, 5))], -1)
    got = np.asarray(U.gaussian_nll(y, pred, "diagonal"))
    for b in range(6):
        mu, cov = pred[b, :5], np.diag(np.exp(pred[b, 5:]))
        want = min(_numpy_nll(y[b], mu, cov), _numpy_nll(y[b], S @ mu, cov))
        np.testing.assert_allclose(got[b], want, rtol=1e-9)


def test_full_nll_matches_numpy():
    # closed form with a dense Sigma = L L^T; 1e-8 relative (triangular solve round-off)
    rng = np.random.default_rng(1)
    y = rng.normal(size=(6, 5))
    pred = _random_full(rng, 6)
    pred[:, :5] = y + rng.normal(size=(6, 5)) * 0.2
    got = np.asarray(U.gaussian_nll(y, pred, "full"))
    for b in range(6):
        cov = _cov_from_full(pred[b])
        mu = pred[b, :5]
        want = min(_numpy_nll(y[b], mu, cov), _numpy_nll(y[b], S @ mu, S @ cov @ S))
        np.testing.assert_allclose(got[b], want, rtol=1e-8)


def test_full_unpack_gives_the_covariance_used():
    rng = np.random.default_rng(2)
    pred = _random_full(rng, 3)
    _, chol = U.unpack_gaussian(pred, "full")
    chol = np.asarray(chol)
    for b in range(3):
        np.testing.assert_allclose(chol[b] @ chol[b].T, _cov_from_full(pred[b]), rtol=1e-12)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_nll_invariant_under_parity_twin(covariance):
    # the twin (S mu, S Sigma S) gives the same loss; and its covariance really is S Sigma S
    rng = np.random.default_rng(3)
    y = rng.normal(size=(8, 5))
    pred = rng.normal(size=(8, U.num_outputs_for(covariance))) * 0.3
    twin = np.asarray(U._parity_twin(pred, covariance))
    np.testing.assert_allclose(U.gaussian_nll(y, twin, covariance),
                               U.gaussian_nll(y, pred, covariance), rtol=1e-12)
    np.testing.assert_allclose(twin[:, :5], pred[:, :5] @ S)
    _, c0 = U.unpack_gaussian(pred, covariance)
    _, c1 = U.unpack_gaussian(twin, covariance)
    c0, c1 = np.asarray(c0), np.asarray(c1)
    np.testing.assert_allclose(c1 @ np.swapaxes(c1, 1, 2), S @ (c0 @ np.swapaxes(c0, 1, 2)) @ S,
                               rtol=1e-12, atol=1e-15)


def test_nll_not_invariant_without_covariance_flip():
    # a full-covariance twin that forgets to flip the e-covariances is a different Gaussian
    rng = np.random.default_rng(4)
    y = rng.normal(size=(8, 5))
    pred = rng.normal(size=(8, 20)) * 0.5
    naive = pred.copy()
    naive[:, :5] = naive[:, :5] @ S
    assert not np.allclose(U.gaussian_nll(y, naive, "full"), U.gaussian_nll(y, pred, "full"))


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="covariance"):
        U.GaussianNLL("banana")
    with pytest.raises(ValueError, match="20 outputs"):
        U.gaussian_nll(np.zeros((2, 5)), np.zeros((2, 10)), "full")
    with pytest.raises(ValueError, match="std must be"):
        U.coverage(np.zeros((3, 5)), np.zeros((3, 5)), np.zeros((3, 5)))


def test_loss_and_layer_keras_round_trip(tmp_path):
    inp = keras.Input((4,))
    x = U.MCDropout(0.3, always_on=False)(keras.layers.Dense(8)(inp))
    model = keras.Model(inp, keras.layers.Dense(20)(x))
    model.compile(optimizer="adam", loss=U.GaussianNLL("full"))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, U.GaussianNLL) and loaded.loss.covariance == "full"
    layer = [lay for lay in loaded.layers if isinstance(lay, U.MCDropout)][0]
    assert layer.always_on is False and layer.rate == pytest.approx(0.3)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)


@pytest.mark.parametrize("covariance,width", [("diagonal", 10), ("full", 20)])
def test_uncertainty_model_and_predict(covariance, width):
    model = U.build_uncertainty_model("ensai_net", (32, 32, 1), covariance)
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
    x = U.MCDropout(rate, seed=seed)(inp)
    dense = keras.layers.Dense(5, use_bias=False, kernel_initializer="ones")
    return keras.Model(inp, dense(x))


def test_mc_dropout_rate_zero_is_deterministic():
    model = _linear_dropout_model(0.0)
    x = np.ones((3, 16), np.float32)
    mean, std = U.mc_dropout_predict(model, x, samples=4)
    np.testing.assert_array_equal(std, 0.0)
    np.testing.assert_allclose(mean, 16.0, rtol=1e-6)


def test_mc_dropout_spread_and_mean_converge():
    # y = sum of 16 inputs kept w.p. 0.5 and scaled by 2: E y = 16, sd = 2*sqrt(16*0.25) = 4.
    # e_x, e_y are aligned to the first pass by parity, so check theta_e, x_l, y_l only.
    # 400 passes: mean within 4 * 4/sqrt(400) = 0.8, std within 15%.
    model = _linear_dropout_model(0.5, seed=7)
    x = np.ones((1, 16), np.float32)
    mean, std = U.mc_dropout_predict(model, x, samples=400)
    for k in (0, 3, 4):
        assert abs(mean[0, k] - 16.0) < 0.8
        assert abs(std[0, k] - 4.0) < 0.6


def _synthetic(n, true_sigma, pred_sigma, seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, size=(n, 5))
    y[:, 0] = rng.uniform(0.1, 3.0, size=n)  # keep theta_e positive, far from parity twin
    mean = y + rng.normal(size=(n, 5)) * true_sigma
    return y, mean, np.full((n, 5), pred_sigma)


def test_coverage_nominal_for_known_gaussian_errors():
    # binomial: sd of a coverage fraction = sqrt(p(1-p)/N); allow 4 sd.
    # Small errors (0.01) so parity correction never swaps a correct mean.
    n = 20000
    y, mean, std = _synthetic(n, 0.01, 0.01, seed=8)
    cov = U.coverage(y, mean, std)
    for level, nominal in ((0.68, 0.68), (0.95, 0.95)):
        tol = 4 * np.sqrt(nominal * (1 - nominal) / n)
        np.testing.assert_array_less(np.abs(cov[level] - nominal), tol)


def test_coverage_detects_overconfidence():
    y, mean, std = _synthetic(5000, 0.02, 0.01, seed=9)
    assert np.all(U.coverage(y, mean, std)[0.68] < 0.45)  # true ~0.38


def test_calibration_restores_nominal_coverage():
    # stds too small by 2x (params 0-2) or too large by 1.5x (3-4); fit on one set, test on another
    true_sigma = np.array([0.02, 0.02, 0.02, 0.01, 0.01])
    pred_sigma = np.array([0.01, 0.01, 0.01, 0.015, 0.015])
    y_val, m_val, s_val = _synthetic(20000, true_sigma, pred_sigma, seed=10)
    scales = U.fit_calibration(y_val, m_val, s_val)
    np.testing.assert_allclose(scales, true_sigma / pred_sigma, rtol=0.03)  # 4 sd of 1/sqrt(2N)
    n = 20000
    y, m, s = _synthetic(n, true_sigma, pred_sigma, seed=11)
    cov = U.coverage(y, m, U.apply_calibration(s, scales))
    for level in (0.68, 0.95):
        tol = 4 * np.sqrt(level * (1 - level) / n) + 0.01  # + calibration-fit error
        np.testing.assert_array_less(np.abs(cov[level] - level), tol)


def test_shear_targets():
    t = U.shear_targets([0.01, -0.02], [0.0, 0.03])
    np.testing.assert_array_equal(t, np.array([[0.01, 0.0], [-0.02, 0.03]], np.float32))
    with pytest.raises(ValueError, match="magnitude"):
        U.shear_targets([1.2], [0.0])


# ------------------------------------------------------- shear targets

SIGNS7 = np.array(list(PARITY_SIGNS) + [1.0, 1.0])


@pytest.mark.parametrize("covariance,width", [("diagonal", 14), ("full", 35)])
def test_seven_target_nll_matches_numpy_and_keeps_the_shear_sign(covariance, width):
    """With the shear appended, NLL = closed form; parity flips e only, never gamma."""
    rng = np.random.default_rng(21)
    out = rng.normal(size=(6, width)) * 0.3
    y = rng.normal(size=(6, 7)) * 0.2
    mean, chol = (np.asarray(a, np.float64) for a in U.unpack_gaussian(out, covariance))
    cov = chol @ np.swapaxes(chol, -1, -2)
    got = np.asarray(U.gaussian_nll(y, out, covariance))
    want = [min(_numpy_nll(y[b], mean[b], cov[b]),
                _numpy_nll(y[b], SIGNS7 * mean[b], np.diag(SIGNS7) @ cov[b] @ np.diag(SIGNS7)))
            for b in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    twin = np.asarray(U.gaussian_nll(y * SIGNS7, out, covariance))
    np.testing.assert_allclose(twin, got, rtol=1e-4, atol=1e-4)
    shear_flipped = y.copy()
    shear_flipped[:, 5:] *= -1
    assert not np.allclose(np.asarray(U.gaussian_nll(shear_flipped, out, covariance)), got)


def test_head_layouts_are_distinct_and_named():
    assert {U.head_layout(w) for w in (5, 7, 10, 20, 14, 35)} == {
        ("point", 5), ("point", 7), ("diagonal", 5), ("full", 5), ("diagonal", 7), ("full", 7)}
    with pytest.raises(ValueError, match="width 11"):
        U.head_layout(11)
    with pytest.raises(ValueError, match="y_true must have 7"):
        U.gaussian_nll(np.zeros((2, 5)), np.zeros((2, 14)), "diagonal")


def test_interval_calibration_fixes_heavy_tails_that_a_scale_cannot():
    """Student-t (3 dof) errors with std = their scale: quantile recalibration fitted on one
    set gives nominal 68% and 95% coverage on another; tolerance 4 binomial sd + the fit's
    own sampling error (same size)."""
    rng = np.random.default_rng(5)

    def draw(n):
        y = rng.uniform(-1, 1, size=(n, 5))
        y[:, 0] = rng.uniform(0.1, 3.0, size=n)
        sigma = 0.01
        mean = y + sigma * rng.standard_t(3, size=(n, 5))
        return y, mean, np.full((n, 5), sigma)

    n = 20000
    cal = U.fit_interval_calibration(*draw(n))
    y, m, s = draw(n)
    raw = U.coverage(y, m, s)
    fixed = U.coverage(y, m, s, calibration=cal)
    for level in (0.68, 0.95):
        tol = 2 * 4 * np.sqrt(level * (1 - level) / n)
        np.testing.assert_array_less(np.abs(fixed[level] - level), tol)
    assert np.all(np.abs(raw[0.68] - 0.68) > 0.05)  # t3 within 1 scale: 0.82, far from 0.68
    np.testing.assert_allclose(U.interval_multipliers(0.95), 1.959964, rtol=1e-6)
    with pytest.raises(ValueError, match="outside the calibrated levels"):
        U.interval_multipliers(0.999, cal)


def test_ensemble_aligns_parity_before_the_spread():
    """A member predicting the parity twin adds no spread; known offsets give the closed-form
    sample std (ddof=1)."""
    y = np.array([[1.0, 0.3, -0.2, 0.01, 0.02], [2.0, -0.1, 0.4, -0.03, 0.0]])
    twin = y * np.asarray(PARITY_SIGNS)
    mean, std = U.ensemble_predict([y, twin, y])
    np.testing.assert_allclose(mean, y)
    np.testing.assert_allclose(std, 0.0, atol=1e-12)
    mean, std = U.ensemble_predict([y - 0.01, y + 0.01])
    np.testing.assert_allclose(std, np.sqrt(2) * 0.01, rtol=1e-9)
    with pytest.raises(ValueError, match="at least 2 members"):
        U.ensemble_predict([y])
