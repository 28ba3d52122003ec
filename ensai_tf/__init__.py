"""ensai_tf: fast strong-lens parameter estimation with convolutional networks.

A TensorFlow/Keras 3 re-implementation of Hezaveh, Perreault Levasseur &
Marshall 2017 (Nature 548, 555). Conventions (docs/design.md §0) live in
:mod:`ensai_tf.conventions`; settings in :mod:`ensai_tf.config`.

Heavy submodules (TensorFlow, Keras) are imported on first use of the names
below, so ``import ensai_tf`` and ``ensai --help`` stay fast.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "simulate": "ensai_tf.data.simulate",
    "make_dataset": "ensai_tf.data.pipeline",
    "build_model": "ensai_tf.models",
    "BiasRemoval": "ensai_tf.preprocess.bias",
    "ParityMSE": "ensai_tf.losses",
    "parity_correct": "ensai_tf.losses",
    "load_config": "ensai_tf.config",
    "save_config": "ensai_tf.config",
    "ExperimentConfig": "ensai_tf.config",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ensai_tf' has no attribute {name!r}")
