"""Per-lens uncertainties from the disagreement of several predictions of the same lens.

Two ensembles come for free. The combined network (docs/design.md §7.4)
merges several independently trained networks (:func:`with_spread`); a single
network sees the lens through the eight flips and rotations of the pixel grid
(:mod:`ensai_tf.symmetry`, :func:`with_dihedral_spread`), each mapped back to
the original frame. Where the predictions disagree on a lens, the answer is
less certain: :class:`EnsembleSpread` turns the variance ``v_k`` of the
aligned predictions of parameter ``k`` into a Gaussian head's log-variance

    ``log sigma_k^2 = log(a_k^2 v_k + b_k^2)``,

with a scale ``a_k`` and a floor ``b_k`` fitted on validation lenses by
maximum likelihood (:func:`fit_spread`). The combined network then outputs
``(B, 10)`` in the diagonal Gaussian-head layout of :mod:`ensai_tf.uncertainty`
(five means, five log-variances), so its intervals flow through
``ensai predict``, ``ensai evaluate`` and ``ensai export`` like those of any
Gaussian head (a single network keeps its own prediction of the unturned
image as the mean), and are recalibrated by the quantile multipliers of
``calibration.json`` (docs/design.md §6.7).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> var = rng.uniform(0.01, 1.0, (4000, 5))
    >>> resid = rng.normal(size=(4000, 5)) * np.sqrt(4.0 * var + 0.01)
    >>> scale, floor = fit_spread(resid, var)
    >>> [round(float(scale[0]), 1), round(float(floor[0]), 1)]
    [2.0, 0.1]
"""

import keras
import numpy as np
import scipy.optimize
from keras import ops

from ensai_tf.conventions import NUM_PARAMS
from ensai_tf.models.combiner import aligned_views
from ensai_tf.symmetry import DIHEDRAL_GROUP, DihedralImages, DihedralParams

__all__ = [
    "ALIGN_LAYER",
    "SPREAD_METHODS",
    "DihedralImages",
    "DihedralParams",
    "EnsembleSpread",
    "fit_spread",
    "with_dihedral_spread",
    "with_spread",
]

SPREAD_METHODS = ("members", "dihedral")
"""What a spread is taken over: a combined network's members, or the eight flips and rotations."""

ALIGN_LAYER = "parity_align"
"""Name of the combiner layer whose ``(B, M, 5)`` output holds the aligned backbone predictions."""


@keras.saving.register_keras_serializable(package="ensai_tf")
class EnsembleSpread(keras.layers.Layer):
    """Gaussian-head output from a combination and the spread of its members.

    Input:
        ``[aligned, mean]``: ``(B, M, 5)`` parity-aligned member predictions
        and the ``(B, 5)`` combination, target units.

    Output:
        ``(B, 10)``: the five means, then ``log(a^2 v + b^2)`` per parameter
        (``v`` the variance over the members), the diagonal layout of
        :mod:`ensai_tf.uncertainty`.

    Args:
        scale: five ``a_k`` (dimensionless).
        floor: five ``b_k``, target units (arcsec or dimensionless).
    """

    def __init__(self, scale, floor, **kwargs):
        super().__init__(**kwargs)
        self.scale = [float(v) for v in scale]
        self.floor = [float(v) for v in floor]
        if len(self.scale) != NUM_PARAMS or len(self.floor) != NUM_PARAMS:
            raise ValueError(f"scale and floor need {NUM_PARAMS} values each")
        if not all(np.isfinite(self.scale + self.floor)) or min(self.floor) <= 0:
            raise ValueError("scale must be finite and floor finite and > 0")

    def call(self, inputs):
        aligned, mean = inputs
        aligned = ops.cast(aligned, "float32")
        variance = ops.var(aligned, axis=1)
        scale = ops.convert_to_tensor(np.square(self.scale), "float32")
        floor = ops.convert_to_tensor(np.square(self.floor), "float32")
        return ops.concatenate([ops.cast(mean, "float32"), ops.log(scale * variance + floor)],
                               axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[1][0], 2 * NUM_PARAMS)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "floor": self.floor})
        return config


def with_spread(model, scale, floor):
    """A combined network that also outputs its per-lens log-variances.

    Args:
        model: a combined network of :func:`ensai_tf.models.combiner.build_combiner`
            (it has a ``parity_align`` layer), images -> ``(B, 5)``.
        scale: five ``a_k`` of :class:`EnsembleSpread`.
        floor: five ``b_k``.

    Returns:
        ``keras.Model`` images -> ``(B, 10)``, sharing ``model``'s layers and weights.

    Raises:
        ValueError: ``model`` has no ``parity_align`` layer.
    """
    try:
        aligned = model.get_layer(ALIGN_LAYER).output
    except ValueError:
        raise ValueError(f"model {model.name!r} is not a combined network (no {ALIGN_LAYER!r} "
                         "layer); only those have a member spread") from None
    out = EnsembleSpread(scale, floor, dtype="float32", name="spread")([aligned, model.output])
    return keras.Model(model.input, out, name=model.name)


def with_dihedral_spread(model, scale, floor):
    """A single network that also outputs the spread of its eight flipped and rotated views.

    The mean is the network's own prediction for the image as given (its
    point estimates are unchanged); the variance is that of the eight
    predictions mapped back to the image's frame and aligned in parity with it.

    Args:
        model: a network images ``(B, N, N, 1)`` -> ``(B, >= 5)`` (five parameters first).
        scale: five ``a_k`` of :class:`EnsembleSpread`.
        floor: five ``b_k``.

    Returns:
        ``keras.Model`` images -> ``(B, 10)``, calling ``model`` eight times per image.
    """
    inputs = keras.Input(model.input_shape[1:], name="images")
    views, aligned = aligned_views(model, inputs, DIHEDRAL_GROUP, ALIGN_LAYER)
    out = EnsembleSpread(scale, floor, dtype="float32", name="spread")([aligned, views[0]])
    return keras.Model(inputs, out, name=model.name)


def _nll(log_ab, resid2, var):
    a2, b2 = np.exp(2.0 * log_ab)
    total = a2 * var + b2
    return float(np.mean(resid2 / total + np.log(total)))


def fit_spread(residuals, variance):
    """Maximum-likelihood scale and floor of :class:`EnsembleSpread`, per parameter.

    Models the residual ``r`` of parameter ``k`` as ``N(0, a_k^2 v + b_k^2)``.

    Args:
        residuals: ``(N, 5)`` parity-corrected errors of the combination on
            validation lenses, target units.
        variance: ``(N, 5)`` variance of the aligned member predictions, units squared.

    Returns:
        ``(scale, floor)``, two ``(5,)`` float64 arrays (floor in target units, > 0).
    """
    residuals = np.asarray(residuals, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    scale, floor = np.zeros(residuals.shape[1]), np.zeros(residuals.shape[1])
    for k in range(residuals.shape[1]):
        resid2, var = residuals[:, k] ** 2, variance[:, k]
        start = np.log([1.0, 0.5 * np.sqrt(np.mean(resid2)) + 1e-12])
        best = scipy.optimize.minimize(_nll, start, args=(resid2, var), method="Nelder-Mead",
                                       options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 4000})
        scale[k], floor[k] = np.exp(best.x)
    return scale, floor
