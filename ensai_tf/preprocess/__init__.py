"""Preprocessing: the model's bias-removal layer (docs/design.md §6.1) and, separately,
the numpy-only steps for real data.

``BiasRemoval`` is imported on first use so that numpy-only submodules do not
pull in Keras.
"""

import importlib

__all__ = ["BiasRemoval"]


def __getattr__(name):
    if name == "BiasRemoval":
        return importlib.import_module("ensai_tf.preprocess.bias").BiasRemoval
    raise AttributeError(f"module 'ensai_tf.preprocess' has no attribute {name!r}")
