"""Tests of ensai_tf.calibration: interval coverage and its post-hoc calibration."""

import numpy as np
import pytest

from ensai_tf import calibration


def test_zero_std_is_refused():
    with pytest.raises(ValueError, match="std must be"):
        calibration.coverage(np.zeros((3, 5)), np.zeros((3, 5)), np.zeros((3, 5)))


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
    cov = calibration.coverage(y, mean, std)
    for level, nominal in ((0.68, 0.68), (0.95, 0.95)):
        tol = 4 * np.sqrt(nominal * (1 - nominal) / n)
        np.testing.assert_array_less(np.abs(cov[level] - nominal), tol)


def test_coverage_detects_overconfidence():
    y, mean, std = _synthetic(5000, 0.02, 0.01, seed=9)
    assert np.all(calibration.coverage(y, mean, std)[0.68] < 0.45)  # true ~0.38


def test_calibration_restores_nominal_coverage():
    # stds too small by 2x (params 0-2) or too large by 1.5x (3-4); fit on one set, test on another
    true_sigma = np.array([0.02, 0.02, 0.02, 0.01, 0.01])
    pred_sigma = np.array([0.01, 0.01, 0.01, 0.015, 0.015])
    y_val, m_val, s_val = _synthetic(20000, true_sigma, pred_sigma, seed=10)
    scales = calibration.fit_calibration(y_val, m_val, s_val)
    np.testing.assert_allclose(scales, true_sigma / pred_sigma, rtol=0.03)  # 4 sd of 1/sqrt(2N)
    n = 20000
    y, m, s = _synthetic(n, true_sigma, pred_sigma, seed=11)
    cov = calibration.coverage(y, m, calibration.apply_calibration(s, scales))
    for level in (0.68, 0.95):
        tol = 4 * np.sqrt(level * (1 - level) / n) + 0.01  # + calibration-fit error
        np.testing.assert_array_less(np.abs(cov[level] - level), tol)


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
    cal = calibration.fit_interval_calibration(*draw(n))
    y, m, s = draw(n)
    raw = calibration.coverage(y, m, s)
    fixed = calibration.coverage(y, m, s, calibration=cal)
    for level in (0.68, 0.95):
        tol = 2 * 4 * np.sqrt(level * (1 - level) / n)
        np.testing.assert_array_less(np.abs(fixed[level] - level), tol)
    assert np.all(np.abs(raw[0.68] - 0.68) > 0.05)  # t3 within 1 scale: 0.82, far from 0.68
    np.testing.assert_allclose(calibration.interval_multipliers(0.95), 1.959964, rtol=1e-6)
    with pytest.raises(ValueError, match="outside the calibrated levels"):
        calibration.interval_multipliers(0.999, cal)
