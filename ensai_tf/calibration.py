"""Interval calibration of predicted standard deviations (numpy, post-hoc).

A network with a Gaussian head (:mod:`ensai_tf.uncertainty`) predicts a mean
and a standard deviation per parameter. This module checks how often the
truth falls inside the predicted intervals (:func:`coverage`) and fixes
intervals that are too narrow or too wide, fitted on the validation split,
never the test split:

- :func:`fit_calibration` / :func:`apply_calibration`: one scale factor per
  parameter (right when the errors are Gaussian);
- :func:`fit_interval_calibration` / :func:`interval_multipliers`: quantile
  recalibration, one multiplier per parameter and level (right whatever the
  shape of the errors); this is what ``calibration.json`` holds.

Means are parity-corrected against the truth first (docs/design.md §8.1).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(2000, 5))
    >>> mean = truth + rng.normal(size=(2000, 5))
    >>> std = np.full((2000, 5), 0.5)  # overconfident: the errors have std 1
    >>> bool(coverage(truth, mean, std)[0.68][0] < 0.5)
    True
    >>> cal = fit_interval_calibration(truth, mean, std)
    >>> bool(abs(coverage(truth, mean, std, calibration=cal)[0.68][0] - 0.68) < 0.01)
    True
"""

import numpy as np
import scipy.special
from keras import ops

from ensai_tf.conventions import NUM_PARAMS
from ensai_tf.losses import parity_correct
from ensai_tf.metrics import as_params

__all__ = [
    "CALIBRATION_LEVELS",
    "apply_calibration",
    "coverage",
    "fit_calibration",
    "fit_interval_calibration",
    "interval_multipliers",
    "standardised_errors",
]

CALIBRATION_LEVELS = tuple(round(0.01 * k, 2) for k in range(1, 100)) + (0.995,)
"""Nominal levels at which :func:`fit_interval_calibration` stores multipliers."""


def standardised_errors(y_true, mean, std):
    """Parity-corrected errors in units of the predicted standard deviation.

    Args:
        y_true: ``(N, n)`` true parameters, arcsec / dimensionless (n = 5, or
            7 with the shear).
        mean: ``(N, n)`` predicted means, same units.
        std: ``(N, n)`` predicted standard deviations, same units, > 0.

    Returns:
        ``(N, n)`` float64 ``(mean - y_true) / std`` after parity correction
        of ``mean``, dimensionless.

    Raises:
        ValueError: shapes are not ``(N, 5)`` / ``(N, 7)`` or differ, or
            ``std`` is not finite and positive everywhere.
    """
    y_true = as_params(y_true, "y_true", allow_empty=True)
    mean = as_params(mean, "mean", allow_empty=True)
    std = as_params(std, "std", allow_empty=True)
    if not (y_true.shape == mean.shape == std.shape):
        raise ValueError(f"y_true, mean, std shapes differ: {y_true.shape}, {mean.shape}, "
                         f"{std.shape}")
    if np.any(~np.isfinite(std)) or np.any(std <= 0):
        raise ValueError("std must be finite and > 0 everywhere")
    corrected = ops.convert_to_numpy(parity_correct(y_true, mean)).astype(np.float64)
    return (corrected - y_true) / std


def coverage(y_true, mean, std, levels=(0.68, 0.95), calibration=None):
    """Fraction of truths inside the central interval, per parameter.

    The interval at level ``p`` is ``mean -+ m_p std`` with ``m_p =
    Phi^-1((1 + p) / 2)`` (1.0 sigma ~ 68.27%, 1.96 sigma = 95%), or the
    fitted multipliers of ``calibration`` (:func:`interval_multipliers`). The
    mean is parity-corrected against the truth first (docs/design.md §8.1).

    Args:
        y_true: ``(N, n)`` true parameters, arcsec / dimensionless (n = 5, or
            7 with the shear).
        mean: ``(N, n)`` predicted means, same units.
        std: ``(N, n)`` predicted standard deviations, same units, > 0.
        levels: nominal levels in (0, 1).
        calibration: optional dict from :func:`fit_interval_calibration`.

    Returns:
        dict ``level -> (n,)`` numpy array of empirical coverage fractions.
    """
    z = np.abs(standardised_errors(y_true, mean, std))
    return {level: np.mean(z <= interval_multipliers(level, calibration, z.shape[1]), axis=0)
            for level in levels}


def fit_calibration(y_true, mean, std):
    """Per-parameter factors that rescale ``std`` so it matches the errors.

    Maximum-likelihood scale of a Gaussian with known shape: ``s_k^2 =
    mean_n (r_nk / std_nk)^2`` (parity-corrected residuals ``r``). Fit it on a
    validation set; if the errors are Gaussian the calibrated coverage is
    nominal at every level.

    Args:
        y_true: ``(N, 5)`` validation truths, arcsec / dimensionless.
        mean: ``(N, 5)`` predicted means, same units.
        std: ``(N, 5)`` predicted standard deviations, same units, > 0.

    Returns:
        ``(5,)`` numpy array of dimensionless scale factors.
    """
    z = standardised_errors(y_true, mean, std)
    return np.sqrt(np.mean(np.square(z), axis=0))


def apply_calibration(std, scales):
    """Rescale predicted standard deviations.

    Args:
        std: ``(N, n)`` standard deviations, parameter units.
        scales: ``(n,)`` factors from :func:`fit_calibration`, dimensionless.

    Returns:
        ``(N, n)`` calibrated standard deviations, parameter units.
    """
    std = as_params(std, "std", allow_empty=True)
    scales = np.asarray(scales, dtype=np.float64)
    n = std.shape[1]
    if scales.shape != (n,) or np.any(~np.isfinite(scales)) or np.any(scales <= 0):
        raise ValueError(f"scales must be {n} finite positive numbers, got {scales}")
    return std * scales


def fit_interval_calibration(y_true, mean, std, levels=CALIBRATION_LEVELS):
    """Interval multipliers that give nominal coverage at every level (post-hoc).

    Quantile recalibration (Kuleshov et al. 2018): for each parameter ``k``
    and level ``p`` the multiplier is the ``p``-quantile of the standardised
    errors ``|r_nk| / std_nk`` over the fitting set (parity-corrected
    residuals ``r``). The interval ``mean -+ m_p std`` then holds a fraction
    ``p`` of that set whatever the error distribution's shape, and the same
    fraction of any set drawn like it. Fit it on the validation set, never the
    test set.

    Args:
        y_true: ``(N, n)`` validation truths, arcsec / dimensionless.
        mean: ``(N, n)`` predicted means, same units.
        std: ``(N, n)`` predicted standard deviations, same units, > 0.
        levels: increasing nominal levels in (0, 1).

    Returns:
        JSON-ready dict: ``"levels"`` (list of floats), ``"multipliers"``
        (``len(levels)`` lists of ``n`` dimensionless floats, non-decreasing
        in the level), ``"n"`` (examples used).
    """
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or levels.size < 2 or np.any(np.diff(levels) <= 0) \
            or levels[0] <= 0 or levels[-1] >= 1:
        raise ValueError("levels must be an increasing list of >= 2 values in (0, 1)")
    z = np.abs(standardised_errors(y_true, mean, std))
    if z.shape[0] < 5:
        raise ValueError(f"need at least 5 examples to fit a calibration, got {z.shape[0]}")
    multipliers = np.quantile(z, levels, axis=0)
    return {"levels": levels.tolist(), "multipliers": multipliers.tolist(), "n": int(z.shape[0])}


def interval_multipliers(level, calibration=None, n=NUM_PARAMS):
    """How many standard deviations the central interval at ``level`` spans.

    Args:
        level: nominal level in (0, 1), e.g. 0.68.
        calibration: optional dict from :func:`fit_interval_calibration`;
            its multipliers are interpolated linearly in the level. Without
            one, the Gaussian ``Phi^-1((1 + level) / 2)``.
        n: number of targets (5, or 7 with the shear).

    Returns:
        ``(n,)`` numpy array of multipliers, dimensionless.

    Raises:
        ValueError: ``level`` outside (0, 1) or outside the calibrated
            levels, or a calibration for another number of targets.

    Example:
        >>> round(float(interval_multipliers(0.95)[0]), 2)
        1.96
    """
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval levels must lie in (0, 1), got {level}")
    if calibration is None:
        return np.full(int(n), scipy.special.ndtri(0.5 * (1.0 + level)))
    levels = np.asarray(calibration["levels"], dtype=np.float64)
    table = np.asarray(calibration["multipliers"], dtype=np.float64)
    if table.shape != (levels.size, int(n)):
        raise ValueError(f"the calibration holds multipliers of shape {table.shape}, not "
                         f"({levels.size}, {int(n)}) for {int(n)} targets")
    if not levels[0] <= level <= levels[-1]:
        raise ValueError(f"level {level} is outside the calibrated levels "
                         f"[{levels[0]}, {levels[-1]}]")
    return np.array([np.interp(level, levels, table[:, k]) for k in range(int(n))])
