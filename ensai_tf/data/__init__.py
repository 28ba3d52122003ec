"""Simulated observed lenses: the simulator, the observation effects and the tf.data pipeline.

The public entry point is :func:`ensai_tf.data.make_dataset` (defined in
:mod:`ensai_tf.data.pipeline`): a ``tf.data.Dataset`` of ``(images, params)``
batches for the ``"train"``, ``"validation"`` or ``"test"`` split, with
stateless seeds per split and example (docs/design.md §11), so validation and
test data are identical on every run.

Example:
    >>> from ensai_tf import config
    >>> from ensai_tf.data import make_dataset
    >>> ds = make_dataset("train", config.get_preset("smoke"), batch_size=2)  # doctest: +SKIP
    >>> images, params = next(iter(ds))  # doctest: +SKIP
    >>> images.shape, params.shape  # doctest: +SKIP
    (TensorShape([2, 48, 48, 1]), TensorShape([2, 5]))
"""

import importlib

__all__ = ["make_dataset"]


def __getattr__(name):
    # the pipeline (and with it TensorFlow's data stack) loads on first use of make_dataset
    if name == "make_dataset":
        return importlib.import_module("ensai_tf.data.pipeline").make_dataset
    raise AttributeError(f"module 'ensai_tf.data' has no attribute {name!r}")
