"""Gaussian heads: per-lens uncertainties beyond the paper.

* :class:`GaussianNLL` — a parity-aware Gaussian negative log-likelihood for
  networks that predict a mean and a (diagonal or full) covariance;
  :func:`gaussian_summary` and :func:`predict_with_uncertainty` read such
  networks (:func:`ensai_tf.models.heads.build_uncertainty_model` builds them).
* :func:`ensemble_predict` — the four independently trained networks (the
  combiner's backbones) as a deep ensemble: mean and spread.

Checking and fixing the calibration of the predicted standard deviations is
:mod:`ensai_tf.calibration`; Monte Carlo dropout is :mod:`ensai_tf.models.heads`.

Output layouts (last axis, ``n`` targets in ``target_names(n)`` order, docs/design.md
§0; ``n = 5``, or 7 with the shear ``(gamma_1, gamma_2)`` appended):

* ``"diagonal"``: ``[mu (n), log sigma^2 (n)]`` — 10 numbers (14 with shear).
* ``"full"``: ``[mu (n), log diag(L) (n), strictly-lower entries of L
  (n(n-1)/2)]`` — 20 numbers (35 with shear), with ``Sigma = L L^T``
  (Cholesky factor ``L``, lower triangular). The off-diagonal entries are in
  row-major order of the strict lower triangle: ``(1,0), (2,0), (2,1), (3,0),
  (3,1), (3,2), (4,0), ...``, see :func:`tril_indices`.

The four widths 10, 20, 14 and 35 are distinct, so an output's width tells its
layout (:func:`layout_from_width`).

Parity (docs/design.md §2.3): ``(e_x, e_y)`` and ``(-e_x, -e_y)`` are the same lens. With
``S = diag(PARITY_SIGNS)`` the twin of a prediction ``(mu, Sigma)`` is
``(S mu, S Sigma S)``. For the Cholesky factor that is ``S L S``: still lower
triangular with a positive diagonal (unchanged), and off-diagonal entry
``L_ij`` multiplied by ``s_i s_j`` — i.e. negated exactly when one of ``i, j``
is an ellipticity index. The loss is the minimum of the NLL of the prediction
and of its twin, so it is invariant when the network outputs the twin.
"""

import keras
import numpy as np
from keras import ops

from ensai_tf.conventions import NUM_PARAMS, TARGET_COUNTS, target_names
from ensai_tf.losses import parity_correct, parity_signs
from ensai_tf.metrics import as_params

__all__ = [
    "COVARIANCE_TYPES",
    "TRIL_INDICES",
    "tril_indices",
    "num_outputs_for",
    "layout_from_width",
    "head_layout",
    "unpack_gaussian",
    "gaussian_nll",
    "GaussianNLL",
    "parity_twin",
    "predict_with_uncertainty",
    "gaussian_summary",
    "ensemble_predict",
    "shear_targets",
]

COVARIANCE_TYPES = ("diagonal", "full")
"""Accepted values of the ``covariance`` argument."""

def tril_indices(n=NUM_PARAMS):
    """(row, column) of the ``n(n-1)/2`` off-diagonal Cholesky entries, in output order.

    Args:
        n: number of targets, 5 or 7 (with the shear).

    Returns:
        tuple of ``(i, j)`` int pairs with ``j < i``, row by row.
    """
    return tuple((i, j) for i in range(int(n)) for j in range(i))


TRIL_INDICES = tril_indices(NUM_PARAMS)
"""(row, column) of the 10 off-diagonal Cholesky entries of a 5-target head."""

_LOG2PI = float(np.log(2.0 * np.pi))
_LOGVAR_CLIP = 30.0  # keeps exp(-log var) finite early in training


def _check_covariance(covariance):
    if covariance not in COVARIANCE_TYPES:
        raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")


def num_outputs_for(covariance, n=NUM_PARAMS):
    """Width of the network output for a covariance type.

    Args:
        covariance: ``"diagonal"`` or ``"full"``.
        n: number of targets, 5 or 7 (with the shear).

    Returns:
        ``2 n`` for ``"diagonal"`` (10 or 14), ``2 n + n (n - 1) / 2`` for
        ``"full"`` (20 or 35).
    """
    _check_covariance(covariance)
    n = len(target_names(n))
    return 2 * n if covariance == "diagonal" else 2 * n + n * (n - 1) // 2


def layout_from_width(width):
    """``(covariance, n)`` of a Gaussian head from its output width.

    Args:
        width: last-axis size of the network output.

    Returns:
        ``("diagonal" or "full", 5 or 7)``.

    Raises:
        ValueError: ``width`` is none of 10, 20, 14, 35.
    """
    for n in TARGET_COUNTS:
        for covariance in COVARIANCE_TYPES:
            if width == num_outputs_for(covariance, n):
                return covariance, n
    known = sorted(num_outputs_for(c, n) for n in TARGET_COUNTS for c in COVARIANCE_TYPES)
    raise ValueError(f"output width {width} is not a Gaussian head (widths {known}: diagonal or "
                     "full covariance of 5 targets, or of 7 with the shear)")


def head_layout(width):
    """``(head, n)`` of any ensai network output from its width.

    Args:
        width: last-axis size of the network output.

    Returns:
        ``("point", 5 or 7)`` for point estimates (with the shear for 7), or
        ``("diagonal" or "full", 5 or 7)`` for Gaussian heads.

    Raises:
        ValueError: an unknown width.
    """
    if width in TARGET_COUNTS:
        return "point", int(width)
    try:
        return layout_from_width(width)
    except ValueError:
        raise ValueError(f"output width {width} is neither a point estimate "
                         f"({TARGET_COUNTS[0]}, or {TARGET_COUNTS[1]} with the shear) nor a "
                         "Gaussian head (10/20, or 14/35 with the shear)") from None


def _targets_of(y_pred, covariance):
    """Number of targets of a Gaussian-head output, checking its width."""
    width = y_pred.shape[-1]
    for n in TARGET_COUNTS:
        if width == num_outputs_for(covariance, n):
            return n
    want = [num_outputs_for(covariance, n) for n in TARGET_COUNTS]
    raise ValueError(f"a {covariance!r} Gaussian head has {want[0]} outputs on its last axis "
                     f"({want[1]} with the shear), got shape {tuple(y_pred.shape)}")


def _cholesky_basis(dtype, n):
    """``(n + n(n-1)/2, n, n)`` one-hot matrices: diagonal entries first, then tril_indices."""
    tril = tril_indices(n)
    basis = np.zeros((n + len(tril), n, n), dtype=np.float64)
    for k in range(n):
        basis[k, k, k] = 1.0
    for m, (i, j) in enumerate(tril):
        basis[n + m, i, j] = 1.0
    return ops.cast(ops.convert_to_tensor(basis), dtype)


def _offdiag_parity_signs(n):
    """Sign of each off-diagonal Cholesky entry under ``L -> S L S``."""
    signs = parity_signs(n)
    return tuple(signs[i] * signs[j] for i, j in tril_indices(n))


def unpack_gaussian(y_pred, covariance):
    """Split a Gaussian-head output into mean and Cholesky factor.

    Args:
        y_pred: ``(B, 10)`` or ``(B, 20)`` network output (``(B, 14)`` or
            ``(B, 35)`` with the shear; layout in the module docstring); means
            in parameter units (arcsec / dimensionless).
        covariance: ``"diagonal"`` or ``"full"``.

    Returns:
        ``(mean, chol)``: ``(B, n)`` means and ``(B, n, n)`` lower-triangular
        ``L`` with ``Sigma = L L^T`` (parameter units squared).
    """
    _check_covariance(covariance)
    y_pred = ops.convert_to_tensor(y_pred)
    n = _targets_of(y_pred, covariance)
    mean = y_pred[..., :n]
    log_diag = ops.clip(y_pred[..., n:2 * n], -_LOGVAR_CLIP, _LOGVAR_CLIP)
    if covariance == "diagonal":
        # log sigma^2 -> diag(L) = sigma
        diag = ops.exp(0.5 * log_diag)
        off = ops.zeros_like(y_pred[..., :1]) * ops.zeros((n * (n - 1) // 2,), ops.dtype(y_pred))
    else:
        diag = ops.exp(log_diag)
        off = y_pred[..., 2 * n:]
    values = ops.concatenate([diag, off], axis=-1)
    chol = ops.einsum("bk,kij->bij", values, _cholesky_basis(ops.dtype(y_pred), n))
    return mean, chol


def _nll_one_sign(y_true, y_pred, covariance):
    n = y_true.shape[-1]
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


def parity_twin(y_pred, covariance):
    """The Gaussian-head output of the parity twin ``(S mu, S Sigma S)`` (module docstring).

    Both describe the same lens (docs/design.md §2.3); the loss is the minimum
    of the NLL of a prediction and of its twin.

    Args:
        y_pred: ``(B, width)`` Gaussian-head output (layout in the module docstring).
        covariance: ``"diagonal"`` or ``"full"``.

    Returns:
        ``(B, width)`` tensor: the means of the ellipticity negated and, for a
        full covariance, the off-diagonal Cholesky entries that couple an
        ellipticity component to another parameter negated.
    """
    n = _targets_of(y_pred, covariance)
    signs = list(parity_signs(n)) + [1.0] * n
    if covariance == "full":
        signs += list(_offdiag_parity_signs(n))
    return y_pred * ops.cast(ops.convert_to_tensor(signs), ops.dtype(y_pred))


def gaussian_nll(y_true, y_pred, covariance="diagonal"):
    """Per-example parity-min Gaussian negative log-likelihood.

    ``NLL = 0.5 (log det(2 pi Sigma) + r^T Sigma^-1 r)``, ``r = y - mu``,
    minimised over the prediction and its parity twin (module docstring).

    Args:
        y_true: ``(B, 5)`` true parameters, arcsec / dimensionless, or
            ``(B, 7)`` with the shear appended.
        y_pred: ``(B, 10)`` or ``(B, 20)`` Gaussian-head output (14 or 35
            with the shear).
        covariance: ``"diagonal"`` or ``"full"``.

    Returns:
        ``(B,)`` NLL in nats.
    """
    _check_covariance(covariance)
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), ops.dtype(y_pred))
    n = _targets_of(y_pred, covariance)
    if y_true.shape[-1] is not None and y_true.shape[-1] != n:
        raise ValueError(f"y_true must have {n} parameters on its last axis to match a "
                         f"{y_pred.shape[-1]}-output {covariance!r} head, "
                         f"got shape {tuple(y_true.shape)}")
    kept = _nll_one_sign(y_true, y_pred, covariance)
    twin = _nll_one_sign(y_true, parity_twin(y_pred, covariance), covariance)
    return ops.minimum(kept, twin)


@keras.saving.register_keras_serializable(package="ensai_tf")
class GaussianNLL(keras.losses.Loss):
    """Batch mean of the parity-min Gaussian NLL (parity as docs/design.md §7.1).

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


def predict_with_uncertainty(model, images, batch_size=32):
    """Means, 68% intervals and covariances from a Gaussian-head model.

    Args:
        model: a model from :func:`ensai_tf.models.heads.build_uncertainty_model` (the output
            width picks the layout, :func:`layout_from_width`).
        images: ``(B, H, W, 1)`` images as the model expects.
        batch_size: prediction batch size.

    Returns:
        dict of numpy arrays: ``mean`` ``(B, n)``, ``std`` ``(B, n)``,
        ``lower`` / ``upper`` ``(B, n)`` (mean -+ 1 std, the central 68.27%
        interval of the marginal Gaussian), ``covariance`` ``(B, n, n)``;
        parameter units (squared for the covariance); ``n`` = 5, or 7 with
        the shear.
    """
    out = model.predict(images, batch_size=batch_size, verbose=0)
    return gaussian_summary(out)


def gaussian_summary(outputs):
    """Means, standard deviations and covariances of Gaussian-head outputs.

    Args:
        outputs: ``(B, width)`` numpy outputs of a Gaussian head (layout from
            :func:`layout_from_width`).

    Returns:
        dict as :func:`predict_with_uncertainty`.
    """
    out = np.asarray(outputs, dtype=np.float32)
    covariance, _ = layout_from_width(out.shape[-1])
    mean, chol = unpack_gaussian(out, covariance)
    mean = ops.convert_to_numpy(mean).astype(np.float64)
    chol = ops.convert_to_numpy(chol).astype(np.float64)
    cov = chol @ np.swapaxes(chol, -1, -2)
    std = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    return {"mean": mean, "std": std, "lower": mean - std, "upper": mean + std,
            "covariance": cov}


def ensemble_predict(predictions):
    """Deep-ensemble mean and spread of independently trained networks.

    Each member's predictions are parity-aligned to the first member's (as
    the combiner aligns signs, docs/design.md §7.4) before the mean and the standard
    deviation over members are taken. The spread alone is rarely calibrated;
    pass it through :func:`ensai_tf.calibration.fit_interval_calibration` on validation
    lenses.

    Args:
        predictions: sequence of ``M >= 2`` arrays ``(N, n)``, one per
            network, parameter units.

    Returns:
        ``(mean, std)``: numpy ``(N, n)`` each; ``std`` is the sample
        standard deviation over members (ddof=1).
    """
    members = [as_params(p, "each member's predictions", allow_empty=True) for p in predictions]
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    if any(m.shape != members[0].shape for m in members):
        raise ValueError(f"members' predictions differ in shape: {[m.shape for m in members]}")
    aligned = [members[0]] + [
        ops.convert_to_numpy(parity_correct(members[0], m)).astype(np.float64)
        for m in members[1:]]
    stack = np.stack(aligned)
    return stack.mean(axis=0), stack.std(axis=0, ddof=1)


def shear_targets(gamma_1, gamma_2):
    """Extra regression targets for external shear (not wired in).

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
