"""The parity rule, the parity-min MSE loss and the combiner's log-cosh (docs/design.md §2.3,
§7.1, §7.4, §8.1).

``(e_x, e_y)`` and ``(-e_x, -e_y)`` describe the same lens. :func:`parity_correct`
is the single implementation of the choice between the two signs; the loss,
the metrics, the combiner's sign alignment (docs/design.md §7.4) and the evaluation all
call it.
"""

import math

import keras
from keras import ops

from ensai_tf.conventions import ELLIPTICITY_INDICES, NUM_PARAMS, TARGET_COUNTS

__all__ = ["PARITY_SIGNS", "parity_signs", "parity_flip", "parity_correct", "parity_mse",
           "parity_log_cosh", "ParityMSE", "ParityLogCosh"]

PARITY_SIGNS = tuple(-1.0 if k in ELLIPTICITY_INDICES else 1.0 for k in range(NUM_PARAMS))
"""Multiplier that maps a parameter vector to its parity twin (e negated).
Shear targets appended after these keep their sign."""


def parity_signs(n=NUM_PARAMS):
    """``PARITY_SIGNS`` extended with +1 for the shear targets of an ``n``-long vector.

    Args:
        n: length of the target vector: 5, or 7 with the shear.

    Returns:
        tuple of ``n`` floats: -1.0 for ``e_x`` and ``e_y``, +1.0 otherwise.
    """
    return PARITY_SIGNS + (1.0,) * (int(n) - NUM_PARAMS)


def _signs_like(x):
    return ops.cast(ops.convert_to_tensor(parity_signs(x.shape[-1])), ops.dtype(x))


def _check_last_axis(x, what):
    if x.shape[-1] is not None and x.shape[-1] not in TARGET_COUNTS:
        raise ValueError(f"{what} must have {NUM_PARAMS} parameters on its last axis "
                         f"(theta_e, e_x, e_y, x_l, y_l), or {TARGET_COUNTS[1]} with the shear "
                         f"(gamma_1, gamma_2) appended, got shape {tuple(x.shape)}")


def parity_flip(params):
    """Negate the ellipticity of parameter vectors (docs/design.md §2.3).

    Args:
        params: ``(..., 5)`` parameters ``(theta_e, e_x, e_y, x_l, y_l)``,
            arcsec / dimensionless.

    Returns:
        ``params`` with ``e_x`` and ``e_y`` negated, same units.
    """
    params = ops.convert_to_tensor(params)
    _check_last_axis(params, "params")
    return params * _signs_like(params)


def parity_correct(y_true, y_pred):
    """Per example, the prediction or its parity twin, whichever is closer (docs/design.md §8.1).

    Keeps ``y_pred`` when its mean squared error over the 5 parameters is
    <= that of the ellipticity-negated version, otherwise returns the negated
    version. Only ``e_x`` and ``e_y`` can change. Shear targets appended as
    columns 6-7 never flip, so they do not change the choice.

    Args:
        y_true: ``(..., 5)`` reference parameters (truth, or the reference
            network in the combiner), arcsec / dimensionless.
        y_pred: ``(..., 5)`` predictions, same units.

    Returns:
        The corrected predictions, ``(..., 5)``, dtype of ``y_pred`` (a
        backend tensor; ``keras.ops.convert_to_numpy`` gives numpy).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), ops.dtype(y_pred))
    _check_last_axis(y_true, "y_true")
    _check_last_axis(y_pred, "y_pred")
    if y_true.shape[-1] != y_pred.shape[-1]:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ "
                         "in their number of parameters")
    flipped = y_pred * _signs_like(y_pred)
    mse_kept = ops.mean(ops.square(y_pred - y_true), axis=-1, keepdims=True)
    mse_flipped = ops.mean(ops.square(flipped - y_true), axis=-1, keepdims=True)
    # docs/design.md §8.1: keep A when mse(A) <= mse(B)
    return ops.where(mse_flipped < mse_kept, flipped, y_pred)


def parity_mse(y_true, y_pred):
    """Per-example parity-min MSE, ``min(mse, mse with e negated)`` (docs/design.md §7.1).

    Args:
        y_true: ``(B, 5)`` true parameters, arcsec / dimensionless.
        y_pred: ``(B, 5)`` predictions, same units.

    Returns:
        ``(B,)`` losses in squared parameter units (unweighted mean over the
        5 parameters, docs/design.md §6.2).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), ops.dtype(y_pred))
    corrected = parity_correct(y_true, y_pred)
    return ops.mean(ops.square(corrected - y_true), axis=-1)


@keras.saving.register_keras_serializable(package="ensai_tf")
class ParityMSE(keras.losses.Loss):
    """Mean over the batch of the parity-min MSE (docs/design.md §7.1).

    ``L = mean_b min(mean_k (yhat_k - y_k)^2, mean_k (yhat'_k - y_k)^2)`` with
    ``yhat'`` the prediction with ``e_x``, ``e_y`` negated. No regularisation
    and no per-parameter weights (docs/design.md §6.2, §7.1).

    Args:
        name: loss name (default ``"parity_mse"``).
        reduction: Keras reduction (default ``"sum_over_batch_size"``, the
            batch mean).
        dtype: computation dtype (default float32, also under mixed
            precision).
    """

    def __init__(self, name="parity_mse", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return parity_mse(y_true, y_pred)


def parity_log_cosh(y_true, y_pred, scale):
    """Per-example parity-corrected log-cosh loss (docs/design.md §7.4).

    ``mean_k s^2 log cosh((yhat_k - y_k) / s)`` over the 5 parameters of the
    parity-corrected prediction (:func:`parity_correct`): ``r^2 / 2`` for a
    residual ``|r|`` well below ``s``, ``s (|r| - s log 2)`` well above it, so
    a few large misses weigh like their size, not its square.

    Args:
        y_true: ``(B, 5)`` true parameters, arcsec / dimensionless.
        y_pred: ``(B, 5)`` predictions, same units.
        scale: ``s`` > 0, in the targets' units (arcsec for theta_E, x, y).

    Returns:
        ``(B,)`` losses in squared parameter units.

    Example:
        >>> import numpy as np
        >>> t = np.zeros((1, 5), "float32")
        >>> p = np.array([[0.001, 0, 0, 0, 0]], "float32")
        >>> round(float(parity_log_cosh(t, p, 0.01)[0]) * 5 / (0.001 ** 2 / 2), 2)
        1.0
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), ops.dtype(y_pred))
    z = (parity_correct(y_true, y_pred) - y_true) / scale
    a = ops.abs(z)
    # log cosh z = log1p(2 sinh^2(z/2)) keeps float32 precision for small z (logaddexp(z, -z) -
    # log 2 would cancel), and |z| - log 2 + log1p(exp(-2|z|)) cannot overflow for large z; the
    # small-z branch sees a clipped z so that neither branch's gradient is ever inf or NaN
    near = ops.log1p(2.0 * ops.square(ops.sinh(ops.clip(z, -10.0, 10.0) / 2.0)))
    far = a - math.log(2.0) + ops.log1p(ops.exp(-2.0 * a))
    return ops.mean(ops.where(a < 10.0, near, far), axis=-1) * scale ** 2


@keras.saving.register_keras_serializable(package="ensai_tf")
class ParityLogCosh(keras.losses.Loss):
    """Mean over the batch of the parity-corrected log-cosh (:func:`parity_log_cosh`).

    The combiner's loss (docs/design.md §7.4 [R]): quadratic for residuals
    below ``scale``, linear beyond, so that the combination weights are set
    by the bulk of the lenses that the 68% errors measure rather than by the
    worst few that dominate a mean square.

    Args:
        scale: the residual (target units: arcsec for theta_E, x, y) where the
            loss turns from quadratic to linear; > 0.
        name: loss name (default ``"parity_log_cosh"``).
        reduction: Keras reduction (default the batch mean).
        dtype: computation dtype (default float32).

    Raises:
        ValueError: ``scale`` is not > 0.
    """

    def __init__(self, scale=0.01, name="parity_log_cosh", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not float(scale) > 0:
            raise ValueError(f"the log-cosh scale must be > 0, got {scale!r}")
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        return parity_log_cosh(y_true, y_pred, self.scale)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config
