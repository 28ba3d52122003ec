"""Per-lens uncertainties beyond the paper (issue 9).

Three pieces:

* :class:`GaussianNLL` — a parity-aware Gaussian negative log-likelihood for
  networks that predict a mean and a (diagonal or full) covariance;
  :func:`build_uncertainty_model` and :func:`predict_with_uncertainty` build
  and read such networks.
* :class:`MCDropout` and :func:`mc_dropout_predict` — Monte Carlo dropout, the
  cheap alternative that needs no new head.
* :func:`coverage`, :func:`fit_calibration`, :func:`apply_calibration` —
  check and fix the calibration of predicted standard deviations.

Output layouts (last axis, parameters in ``PARAM_NAMES`` order, spec §0):

* ``"diagonal"``: ``[mu (5), log sigma^2 (5)]`` — 10 numbers.
* ``"full"``: ``[mu (5), log diag(L) (5), strictly-lower entries of L (10)]``
  — 20 numbers, with ``Sigma = L L^T`` (Cholesky factor ``L``, lower
  triangular). The 10 off-diagonal entries are in row-major order of the
  strict lower triangle: ``(1,0), (2,0), (2,1), (3,0), (3,1), (3,2), (4,0),
  ...``, see :data:`TRIL_INDICES`.

Parity (spec §2.3): ``(e_x, e_y)`` and ``(-e_x, -e_y)`` are the same lens. With
``S = diag(PARITY_SIGNS)`` the twin of a prediction ``(mu, Sigma)`` is
``(S mu, S Sigma S)``. For the Cholesky factor that is ``S L S``: still lower
triangular with a positive diagonal (unchanged), and off-diagonal entry
``L_ij`` multiplied by ``s_i s_j`` — i.e. negated exactly when one of ``i, j``
is an ellipticity index. The loss is the minimum of the NLL of the prediction
and of its twin, so it is invariant when the network outputs the twin.
"""

import numpy as np
import scipy.special
import keras
from keras import ops

from ensai_tf.conventions import NUM_PARAMS
from ensai_tf.losses import PARITY_SIGNS, parity_correct
from ensai_tf.models import build_model

__all__ = [
    "COVARIANCE_TYPES",
    "TRIL_INDICES",
    "num_outputs_for",
    "unpack_gaussian",
    "gaussian_nll",
    "GaussianNLL",
    "build_uncertainty_model",
    "predict_with_uncertainty",
    "MCDropout",
    "mc_dropout_predict",
    "coverage",
    "fit_calibration",
    "apply_calibration",
    "shear_targets",
]

COVARIANCE_TYPES = ("diagonal", "full")
"""Accepted values of the ``covariance`` argument."""

TRIL_INDICES = tuple((i, j) for i in range(NUM_PARAMS) for j in range(i))
"""(row, column) of the 10 off-diagonal Cholesky entries, in output order."""

_LOG2PI = float(np.log(2.0 * np.pi))
_LOGVAR_CLIP = 30.0  # keeps exp(-log var) finite early in training


def _check_covariance(covariance):
    if covariance not in COVARIANCE_TYPES:
        raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")


def num_outputs_for(covariance):
    """Width of the network output for a covariance type.

    Args:
        covariance: ``"diagonal"`` or ``"full"``.

    Returns:
        10 for ``"diagonal"``, 20 for ``"full"``.
    """
    _check_covariance(covariance)
    n = NUM_PARAMS
    return 2 * n if covariance == "diagonal" else 2 * n + n * (n - 1) // 2


def _covariance_from_width(width):
    for covariance in COVARIANCE_TYPES:
        if width == num_outputs_for(covariance):
            return covariance
    raise ValueError(f"output width {width} is neither a diagonal (10) nor a full (20) "
                     "Gaussian head")


def _check_width(y_pred, covariance):
    want = num_outputs_for(covariance)
    if y_pred.shape[-1] is not None and y_pred.shape[-1] != want:
        raise ValueError(f"a {covariance!r} Gaussian head has {want} outputs on its last axis, "
                         f"got shape {tuple(y_pred.shape)}")


def _cholesky_basis(dtype):
    """``(15, 5, 5)`` one-hot matrices: diagonal entries first, then TRIL_INDICES."""
    n = NUM_PARAMS
    basis = np.zeros((n + len(TRIL_INDICES), n, n), dtype=np.float64)
    for k in range(n):
        basis[k, k, k] = 1.0
    for m, (i, j) in enumerate(TRIL_INDICES):
        basis[n + m, i, j] = 1.0
    return ops.cast(ops.convert_to_tensor(basis), dtype)


def _offdiag_parity_signs():
    """Sign of each off-diagonal Cholesky entry under ``L -> S L S``."""
    return tuple(PARITY_SIGNS[i] * PARITY_SIGNS[j] for i, j in TRIL_INDICES)


def unpack_gaussian(y_pred, covariance):
    """Split a Gaussian-head output into mean and Cholesky factor.

    Args:
        y_pred: ``(B, 10)`` or ``(B, 20)`` network output (layout in the
            module docstring); means in parameter units (arcsec /
            dimensionless).
        covariance: ``"diagonal"`` or ``"full"``.

    Returns:
        ``(mean, chol)``: ``(B, 5)`` means and ``(B, 5, 5)`` lower-triangular
        ``L`` with ``Sigma = L L^T`` (parameter units squared).
    """
    _check_covariance(covariance)
    y_pred = ops.convert_to_tensor(y_pred)
    _check_width(y_pred, covariance)
    n = NUM_PARAMS
    mean = y_pred[..., :n]
    log_diag = ops.clip(y_pred[..., n:2 * n], -_LOGVAR_CLIP, _LOGVAR_CLIP)
    if covariance == "diagonal":
        # log sigma^2 -> diag(L) = sigma
        diag = ops.exp(0.5 * log_diag)
        off = ops.zeros_like(ops.concatenate([diag, diag], axis=-1))
    else:
        diag = ops.exp(log_diag)
        off = y_pred[..., 2 * n:]
    values = ops.concatenate([diag, off], axis=-1)
    chol = ops.einsum("bk,kij->bij", values, _cholesky_basis(ops.dtype(y_pred)))
    return mean, chol


def _nll_one_sign(y_true, y_pred, covariance):
    n = NUM_PARAMS
    mean = y_pred[..., :n]
    resid = y_true - mean
    if covariance == "diagonal":
        log_var = ops.clip(y_pred[..., n:2 * n], -_LOGVAR_CLIP, _LOGVAR_CLIP)
        maha = ops.sum(ops.square(resid) * ops.exp(-log_var), axis=-1)
        log_det = ops.sum(log_var, axis=-1)
    else:
        _, chol = unpack_gaussian(y_pred, covariance)
        z = ops.solve_triangular(chol, ops.expand_dims(resid, -1), lower=True)
        maha = ops.sum(ops.square(z[..., 0]), axis=-1)
        log_det = 2.0 * ops.sum(ops.clip(y_pred[..., n:2 * n], -_LOGVAR_CLIP, _LOGVAR_CLIP),
                                axis=-1)
    return 0.5 * (log_det + n * _LOG2PI + maha)


def _parity_twin(y_pred, covariance):
    """Output of the twin prediction ``(S mu, S Sigma S)`` (module docstring)."""
    n = NUM_PARAMS
    signs = list(PARITY_SIGNS) + [1.0] * n
    if covariance == "full":
        signs += list(_offdiag_parity_signs())
    return y_pred * ops.cast(ops.convert_to_tensor(signs), ops.dtype(y_pred))


def gaussian_nll(y_true, y_pred, covariance="diagonal"):
    """Per-example parity-min Gaussian negative log-likelihood.

    ``NLL = 0.5 (log det(2 pi Sigma) + r^T Sigma^-1 r)``, ``r = y - mu``,
    minimised over the prediction and its parity twin (module docstring).

    Args:
        y_true: ``(B, 5)`` true parameters, arcsec / dimensionless.
        y_pred: ``(B, 10)`` or ``(B, 20)`` Gaussian-head output.
        covariance: ``"diagonal"`` or ``"full"``.

    Returns:
        ``(B,)`` NLL in nats.
    """
    _check_covariance(covariance)
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), ops.dtype(y_pred))
    _check_width(y_pred, covariance)
    if y_true.shape[-1] is not None and y_true.shape[-1] != NUM_PARAMS:
        raise ValueError(f"y_true must have {NUM_PARAMS} parameters on its last axis, "
                         f"got shape {tuple(y_true.shape)}")
    kept = _nll_one_sign(y_true, y_pred, covariance)
    twin = _nll_one_sign(y_true, _parity_twin(y_pred, covariance), covariance)
    return ops.minimum(kept, twin)


@keras.saving.register_keras_serializable(package="ensai_tf")
class GaussianNLL(keras.losses.Loss):
    """Batch mean of the parity-min Gaussian NLL (issue 9; parity as spec §7.1).

    Args:
        covariance: ``"diagonal"`` (10 outputs) or ``"full"`` (20 outputs).
        name: loss name (default ``"gaussian_nll"``).
        reduction: Keras reduction (default the batch mean).
        dtype: computation dtype (default float32).
    """

    def __init__(self, covariance="diagonal", name="gaussian_nll",
                 reduction="sum_over_batch_size", dtype=None):
        _check_covariance(covariance)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.covariance = covariance

    def call(self, y_true, y_pred):
        return gaussian_nll(y_true, y_pred, covariance=self.covariance)

    def get_config(self):
        config = super().get_config()
        config["covariance"] = self.covariance
        return config


def build_uncertainty_model(name, input_shape, covariance="diagonal", **kwargs):
    """A paper network whose last layer predicts a Gaussian (mean + covariance).

    Args:
        name: architecture name for :func:`ensai_tf.models.build_model`.
        input_shape: ``(H, W, 1)``, pixels.
        covariance: ``"diagonal"`` or ``"full"``.
        **kwargs: passed to the builder (not ``num_outputs``).

    Returns:
        ``keras.Model`` images -> ``(B, 10)`` or ``(B, 20)``; train it with
        ``GaussianNLL(covariance)``.
    """
    if "num_outputs" in kwargs:
        raise ValueError("num_outputs is set by the covariance type; do not pass it")
    return build_model(name, input_shape=input_shape,
                       num_outputs=num_outputs_for(covariance), **kwargs)


def predict_with_uncertainty(model, images, batch_size=32):
    """Means, 68% intervals and covariances from a Gaussian-head model.

    Args:
        model: a model from :func:`build_uncertainty_model` (output width 10
            or 20 picks the covariance type).
        images: ``(B, H, W, 1)`` images as the model expects.
        batch_size: prediction batch size.

    Returns:
        dict of numpy arrays: ``mean`` ``(B, 5)``, ``std`` ``(B, 5)``,
        ``lower`` / ``upper`` ``(B, 5)`` (mean -+ 1 std, the central 68.27%
        interval of the marginal Gaussian), ``covariance`` ``(B, 5, 5)``;
        parameter units (squared for the covariance).
    """
    out = model.predict(images, batch_size=batch_size, verbose=0)
    covariance = _covariance_from_width(out.shape[-1])
    mean, chol = unpack_gaussian(out, covariance)
    mean = ops.convert_to_numpy(mean).astype(np.float64)
    chol = ops.convert_to_numpy(chol).astype(np.float64)
    cov = chol @ np.swapaxes(chol, -1, -2)
    std = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    return {"mean": mean, "std": std, "lower": mean - std, "upper": mean + std,
            "covariance": cov}


@keras.saving.register_keras_serializable(package="ensai_tf")
class MCDropout(keras.layers.Dropout):
    """Dropout that can stay active at inference (Monte Carlo dropout).

    Args:
        rate: drop probability in [0, 1).
        always_on: if True, drop units in every call, training or not; if
            False, behaves as ``keras.layers.Dropout``.
        **kwargs: passed to ``keras.layers.Dropout`` (``seed``, ``name``...).
    """

    def __init__(self, rate, always_on=True, **kwargs):
        super().__init__(rate, **kwargs)
        self.always_on = bool(always_on)

    def call(self, inputs, training=False):
        return super().call(inputs, training=True if self.always_on else training)

    def get_config(self):
        config = super().get_config()
        config["always_on"] = self.always_on
        return config


def mc_dropout_predict(model, images, samples=20):
    """Mean and spread over repeated stochastic forward passes.

    Each pass is parity-aligned to the first pass (:func:`parity_correct`, as
    the combiner aligns signs, spec §7.4) so that sign flips of ``e`` do not
    inflate the spread.

    Args:
        model: model with :class:`MCDropout` layers (``always_on=True``),
            images -> ``(B, 5)``.
        images: ``(B, H, W, 1)`` images.
        samples: number of passes, >= 2.

    Returns:
        ``(mean, std)``: numpy ``(B, 5)`` each, parameter units; ``std`` is
        the sample standard deviation (ddof=1).
    """
    if int(samples) < 2:
        raise ValueError(f"samples must be >= 2 to estimate a spread, got {samples}")
    images = ops.convert_to_tensor(images)
    first = model(images, training=False)
    draws = [first]
    for _ in range(int(samples) - 1):
        draws.append(parity_correct(first, model(images, training=False)))
    stack = np.stack([ops.convert_to_numpy(d).astype(np.float64) for d in draws])
    return stack.mean(axis=0), stack.std(axis=0, ddof=1)


def _as_params(x, what):
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[-1] != NUM_PARAMS:
        raise ValueError(f"{what} must have shape (N, {NUM_PARAMS}), got {arr.shape}")
    return arr


def _standardised_errors(y_true, mean, std):
    y_true = _as_params(y_true, "y_true")
    mean = _as_params(mean, "mean")
    std = _as_params(std, "std")
    if not (y_true.shape == mean.shape == std.shape):
        raise ValueError(f"y_true, mean, std shapes differ: {y_true.shape}, {mean.shape}, "
                         f"{std.shape}")
    if np.any(~np.isfinite(std)) or np.any(std <= 0):
        raise ValueError("std must be finite and > 0 everywhere")
    corrected = ops.convert_to_numpy(parity_correct(y_true, mean)).astype(np.float64)
    return (corrected - y_true) / std


def coverage(y_true, mean, std, levels=(0.68, 0.95)):
    """Fraction of truths inside the central Gaussian interval, per parameter.

    The interval at level ``p`` is ``mean -+ z_p std`` with ``z_p =
    Phi^-1((1 + p) / 2)`` (1.0 sigma ~ 68.27%, 1.96 sigma = 95%). The mean is
    parity-corrected against the truth first (spec §8.1).

    Args:
        y_true: ``(N, 5)`` true parameters, arcsec / dimensionless.
        mean: ``(N, 5)`` predicted means, same units.
        std: ``(N, 5)`` predicted standard deviations, same units, > 0.
        levels: nominal levels in (0, 1).

    Returns:
        dict ``level -> (5,)`` numpy array of empirical coverage fractions.
    """
    z = np.abs(_standardised_errors(y_true, mean, std))
    result = {}
    for level in levels:
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"coverage levels must lie in (0, 1), got {level}")
        z_p = scipy.special.ndtri(0.5 * (1.0 + float(level)))
        result[level] = np.mean(z <= z_p, axis=0)
    return result


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
    z = _standardised_errors(y_true, mean, std)
    return np.sqrt(np.mean(np.square(z), axis=0))


def apply_calibration(std, scales):
    """Rescale predicted standard deviations.

    Args:
        std: ``(N, 5)`` standard deviations, parameter units.
        scales: ``(5,)`` factors from :func:`fit_calibration`, dimensionless.

    Returns:
        ``(N, 5)`` calibrated standard deviations, parameter units.
    """
    std = _as_params(std, "std")
    scales = np.asarray(scales, dtype=np.float64)
    if scales.shape != (NUM_PARAMS,) or np.any(~np.isfinite(scales)) or np.any(scales <= 0):
        raise ValueError(f"scales must be {NUM_PARAMS} finite positive numbers, got {scales}")
    return std * scales


def shear_targets(gamma_1, gamma_2):
    """Extra regression targets for external shear (issue 9, not wired in).

    A 7-output model would predict ``(theta_e, e_x, e_y, x_l, y_l, gamma_1,
    gamma_2)`` with the 5 lens targets as now and these two appended: build it
    with ``build_model(name, num_outputs=7)`` and a loss that applies the
    parity rule to ``e`` only (shear has no such degeneracy; its sign is
    physical). Not part of the pipeline yet.

    Args:
        gamma_1: ``(N,)`` shear component along x/y axes, dimensionless.
        gamma_2: ``(N,)`` shear component along the diagonals, dimensionless.

    Returns:
        ``(N, 2)`` float32 array ``[gamma_1, gamma_2]``.
    """
    g1 = np.asarray(gamma_1, dtype=np.float64)
    g2 = np.asarray(gamma_2, dtype=np.float64)
    if g1.ndim != 1 or g1.shape != g2.shape:
        raise ValueError(f"gamma_1 and gamma_2 must be 1-D of equal length, got {g1.shape}, "
                         f"{g2.shape}")
    if np.any(~np.isfinite(g1)) or np.any(~np.isfinite(g2)):
        raise ValueError("shear components must be finite")
    if np.any(np.hypot(g1, g2) >= 1.0):
        raise ValueError("shear magnitude must be < 1")
    return np.stack([g1, g2], axis=-1).astype(np.float32)
