"""Error metrics, all taken after parity correction (docs/design.md §8.1, §8.2).

Numpy functions for evaluation (``error68``, ``rms``, ``half_width_16_84``,
``binned_bands``, ``error_table``) and Keras metrics (``ParameterRMS``,
``ParameterMAE``) so that TensorBoard shows each parameter's error during
training. The parity rule itself lives only in :func:`ensai_tf.losses.parity_correct`.
"""

import keras
import numpy as np
from keras import ops

from ensai_tf.conventions import NUM_PARAMS, TARGET_COUNTS, target_names
from ensai_tf.losses import parity_correct

__all__ = [
    "as_params",
    "parity_correct_np",
    "residuals",
    "error68",
    "rms",
    "half_width_16_84",
    "binned_bands",
    "error_table",
    "ParameterRMS",
    "ParameterMAE",
    "parameter_metrics",
]


def as_params(x, what, allow_empty=False):
    """Check and convert an array of targets: ``(N, 5)``, or ``(N, 7)`` with the shear.

    Args:
        x: array-like of parameters in ``target_names(n)`` order (arcsec /
            dimensionless).
        what: the argument's name, for the error message.
        allow_empty: accept ``N = 0``.

    Returns:
        ``x`` as a float64 numpy array.

    Raises:
        ValueError: ``x`` is not 2-D with 5 or 7 columns, or is empty (unless
            ``allow_empty``).

    Example:
        >>> as_params([[1.2, 0.1, -0.1, 0.0, 0.0]], "pred").shape
        (1, 5)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] not in TARGET_COUNTS:
        raise ValueError(f"{what} must have shape (N, {NUM_PARAMS}) (theta_e, e_x, e_y, x_l, y_l), "
                         f"or (N, {TARGET_COUNTS[1]}) with the shear (gamma_1, gamma_2), "
                         f"got {x.shape}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{what} is empty: need at least one example")
    return x


def parity_correct_np(y_true, y_pred):
    """Numpy front end of :func:`ensai_tf.losses.parity_correct` (docs/design.md §8.1).

    Args:
        y_true, y_pred: ``(N, 5)`` arrays, arcsec / dimensionless.

    Returns:
        ``(N, 5)`` float64 parity-corrected predictions.
    """
    y_true = as_params(y_true, "y_true")
    y_pred = as_params(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return np.asarray(ops.convert_to_numpy(parity_correct(y_true, y_pred)), dtype=np.float64)


def residuals(y_true, y_pred):
    """Parity-corrected residuals ``pred - true``, ``(N, 5)`` float64, parameter units.

    Args:
        y_true, y_pred: ``(N, 5)`` arrays, or ``(N, 7)`` with the shear appended;
            arcsec / dimensionless.

    Returns:
        ``(N, 5)`` (or ``(N, 7)``) float64 residuals, in each parameter's unit.

    Raises:
        ValueError: an input is not ``(N, 5)`` or ``(N, 7)``, is empty, or the
            two shapes differ.
    """
    return parity_correct_np(y_true, y_pred) - as_params(y_true, "y_true")


def error68(y_true, y_pred):
    """The paper's 68% error per parameter (docs/design.md §8.2 [R]).

    Args:
        y_true, y_pred: ``(N, 5)`` arrays, arcsec / dimensionless.

    Returns:
        ``(5,)`` 68th percentile of ``|pred - true|`` after parity
        correction, in each parameter's unit.
    """
    return np.percentile(np.abs(residuals(y_true, y_pred)), 68.0, axis=0)


def rms(y_true, y_pred):
    """Root mean square of the parity-corrected residuals, ``(5,)`` (docs/design.md §8.2).

    Args:
        y_true, y_pred: ``(N, 5)`` arrays, or ``(N, 7)`` with the shear appended;
            arcsec / dimensionless.

    Returns:
        ``(5,)`` (or ``(7,)``) float64 rms, in each parameter's unit.

    Raises:
        ValueError: an input is not ``(N, 5)`` or ``(N, 7)``, is empty, or the
            two shapes differ.
    """
    return np.sqrt(np.mean(np.square(residuals(y_true, y_pred)), axis=0))


def half_width_16_84(y_true, y_pred):
    """``(P84 - P16) / 2`` of the parity-corrected residuals, ``(5,)`` (docs/design.md §8.2).

    Args:
        y_true, y_pred: ``(N, 5)`` arrays, or ``(N, 7)`` with the shear appended;
            arcsec / dimensionless.

    Returns:
        ``(5,)`` (or ``(7,)``) float64 half-widths, in each parameter's unit.

    Raises:
        ValueError: an input is not ``(N, 5)`` or ``(N, 7)``, is empty, or the
            two shapes differ.
    """
    lo, hi = np.percentile(residuals(y_true, y_pred), [16.0, 84.0], axis=0)
    return 0.5 * (hi - lo)


def binned_bands(true, pred, bins=12, min_count=5):
    """68% and 95% bands of one predicted parameter in bins of its true value.

    For the paper's Figure 1 (docs/design.md §8.2). Pass one parameter column of the
    parity-corrected predictions (see :func:`parity_correct_np`).

    Args:
        true: ``(N,)`` true values of one parameter, its unit.
        pred: ``(N,)`` predicted values, same unit.
        bins: number of equal-width bins over ``[min(true), max(true)]``, or
            an increasing array of bin edges.
        min_count: bins with fewer examples get NaN percentiles.

    Returns:
        dict of ``(nbins,)`` arrays: ``"centres"``, ``"count"``, and the
        percentiles ``"p2_5"``, ``"p16"``, ``"p50"``, ``"p84"``, ``"p97_5"``
        of ``pred`` in each bin (68% band = p16..p84, 95% band =
        p2_5..p97_5). The last bin includes its upper edge.
    """
    true = np.asarray(true, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if true.shape != pred.shape or true.size == 0:
        raise ValueError(f"true {true.shape} and pred {pred.shape} must be equal, non-empty 1-D")
    if np.ndim(bins) == 0:
        nbins = int(bins)
        if nbins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        lo, hi = float(true.min()), float(true.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, nbins + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("bin edges must be a strictly increasing 1-D array of >= 2 values")
    nbins = edges.size - 1
    which = np.clip(np.searchsorted(edges, true, side="right") - 1, 0, nbins - 1)
    inside = (true >= edges[0]) & (true <= edges[-1])
    levels = (2.5, 16.0, 50.0, 84.0, 97.5)
    keys = ("p2_5", "p16", "p50", "p84", "p97_5")
    out = {"centres": 0.5 * (edges[:-1] + edges[1:]), "count": np.zeros(nbins, dtype=np.int64)}
    out.update({k: np.full(nbins, np.nan) for k in keys})
    for b in range(nbins):
        sel = inside & (which == b)
        out["count"][b] = int(sel.sum())
        if out["count"][b] >= min_count:
            for k, v in zip(keys, np.percentile(pred[sel], levels)):
                out[k][b] = v
    return out


def error_table(y_true, y_pred):
    """All error summaries per parameter: the numbers of Table 1 (docs/design.md §8.1-8.2).

    ``ensai evaluate`` writes this table into ``metrics.json``.

    Args:
        y_true, y_pred: ``(N, 5)`` arrays, arcsec / dimensionless, or
            ``(N, 7)`` with the shear appended.

    Returns:
        ``{name: {"error68", "rms", "half_width_16_84", "bias"}}`` for each
        name in ``target_names(n)``, values as Python floats in the parameter's
        unit (``bias`` = mean residual), plus ``"n"``: the number of examples.

    Example:
        >>> import numpy as np
        >>> true = np.zeros((4, 5))
        >>> table = error_table(true, true + 0.1)
        >>> round(table["theta_e"]["rms"], 6), table["n"]
        (0.1, 4)
    """
    res = residuals(y_true, y_pred)
    e68 = np.percentile(np.abs(res), 68.0, axis=0)
    rmsv = np.sqrt(np.mean(np.square(res), axis=0))
    lo, hi = np.percentile(res, [16.0, 84.0], axis=0)
    bias = np.mean(res, axis=0)
    table = {"n": int(res.shape[0])}
    for k, name in enumerate(target_names(res.shape[1])):
        table[name] = {"error68": float(e68[k]), "rms": float(rmsv[k]),
                       "half_width_16_84": float(0.5 * (hi[k] - lo[k])), "bias": float(bias[k])}
    return table


class _ParameterError(keras.metrics.Metric):
    """Running mean of a power of one parameter's parity-corrected residual.

    ``y_pred`` may be wider than ``y_true``: a Gaussian head puts
    its means first, so only the first ``y_true.shape[-1]`` columns are read.
    """

    _suffix = ""

    def __init__(self, param_index, name=None, dtype=None):
        index = int(param_index)
        names = target_names(TARGET_COUNTS[-1])
        if not 0 <= index < len(names):
            raise ValueError(f"param_index must be in [0, {len(names)}), got {param_index}")
        super().__init__(name=name or f"{names[index]}_{self._suffix}", dtype=dtype)
        self.param_index = index
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _per_example(self, residual):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.cast(y_pred, self.dtype)
        y_true = ops.cast(y_true, self.dtype)
        corrected = parity_correct(y_true, y_pred[..., : y_true.shape[-1]])
        values = self._per_example(corrected[:, self.param_index] - y_true[:, self.param_index])
        if sample_weight is None:
            weights = ops.ones_like(values)
        else:
            weights = ops.reshape(ops.cast(sample_weight, self.dtype), (-1,))
            weights = ops.broadcast_to(weights, ops.shape(values))
        self.total.assign_add(ops.sum(values * weights))
        self.count.assign_add(ops.sum(weights))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"param_index": self.param_index, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="ensai_tf")
class ParameterRMS(_ParameterError):
    """RMS of one parameter's parity-corrected residual (docs/design.md §8.1, §8.2).

    Args:
        param_index: index into ``target_names(7)`` (use ``conventions.Param``;
            5 and 6 are the shear components).
        name: metric name (default ``"<param>_rms"``, e.g. ``"theta_e_rms"``).
        dtype: accumulator dtype (default float32).

    ``result()`` is in the parameter's unit (arcsec or dimensionless).
    """

    _suffix = "rms"

    def _per_example(self, residual):
        return ops.square(residual)

    def result(self):
        return ops.sqrt(ops.divide_no_nan(self.total, self.count))


@keras.saving.register_keras_serializable(package="ensai_tf")
class ParameterMAE(_ParameterError):
    """Mean absolute parity-corrected residual of one parameter (docs/design.md §8.1).

    Args:
        param_index: index into ``target_names(7)`` (use ``conventions.Param``;
            5 and 6 are the shear components).
        name: metric name (default ``"<param>_mae"``).
        dtype: accumulator dtype (default float32).
    """

    _suffix = "mae"

    def _per_example(self, residual):
        return ops.abs(residual)

    def result(self):
        return ops.divide_no_nan(self.total, self.count)


def parameter_metrics(kinds=("rms",), n=NUM_PARAMS):
    """One metric per parameter and kind, for ``model.compile(metrics=...)``.

    Args:
        kinds: any of ``"rms"``, ``"mae"``.
        n: number of targets, 5, or 7 with the shear.

    Returns:
        List of metrics named ``"<param>_<kind>"`` in ``target_names(n)`` order.
    """
    classes = {"rms": ParameterRMS, "mae": ParameterMAE}
    unknown = [k for k in kinds if k not in classes]
    if unknown:
        raise ValueError(f"unknown metric kind(s) {unknown}; choose from {sorted(classes)}")
    return [classes[k](p) for k in kinds for p in range(len(target_names(n)))]
