"""Tests of ensai_tf.uncertainty: Gaussian NLL, output layouts, deep ensembles."""

import numpy as np
import pytest

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
    twin = np.asarray(U.parity_twin(pred, covariance))
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
