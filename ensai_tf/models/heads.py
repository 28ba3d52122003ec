"""Networks with uncertainty: Gaussian-head builders and Monte Carlo dropout.

- :func:`build_uncertainty_model`: a paper network whose last layer predicts
  a Gaussian (layout in :mod:`ensai_tf.uncertainty`), trained with
  :class:`~ensai_tf.uncertainty.GaussianNLL`;
- :class:`MCDropout` and :func:`mc_dropout_predict`: Monte Carlo dropout, the
  cheap alternative that needs no new head.

Example:
    >>> model = build_uncertainty_model("ensai_net", (32, 32, 1), "diagonal", width=0.25)
    >>> model.output_shape
    (None, 10)
"""

import keras
import numpy as np
from keras import ops

from ensai_tf import models
from ensai_tf.conventions import NUM_PARAMS
from ensai_tf.losses import parity_correct
from ensai_tf.uncertainty import num_outputs_for

__all__ = [
    "MCDropout",
    "build_uncertainty_model",
    "mc_dropout_predict",
]


def build_uncertainty_model(name, input_shape, covariance="diagonal", n_targets=NUM_PARAMS,
                            **kwargs):
    """A paper network whose last layer predicts a Gaussian (mean + covariance).

    Args:
        name: architecture name for :func:`ensai_tf.models.build_model`.
        input_shape: ``(H, W, C)``, pixels, C = 1 or 2 bands.
        covariance: ``"diagonal"`` or ``"full"``.
        n_targets: 5, or 7 to predict the shear too.
        **kwargs: passed to the builder (not ``num_outputs``).

    Returns:
        ``keras.Model`` images -> ``(B, num_outputs_for(covariance,
        n_targets))``; train it with ``GaussianNLL(covariance)``.
    """
    if "num_outputs" in kwargs:
        raise ValueError("num_outputs is set by the covariance type; do not pass it")
    return models.build_model(name, input_shape=input_shape,
                              num_outputs=num_outputs_for(covariance, n_targets), **kwargs)


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

    Each pass is parity-aligned to the first pass (:func:`~ensai_tf.losses.parity_correct`,
    as the combiner aligns signs, docs/design.md §7.4) so that sign flips of ``e`` do not
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
