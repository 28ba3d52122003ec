"""ensai_tf: fast strong-lens parameter estimation with convolutional networks.

A TensorFlow/Keras 3 re-implementation of Hezaveh, Perreault Levasseur &
Marshall 2017 (Nature 548, 555). Conventions (docs/design.md §0) live in
:mod:`ensai_tf.conventions`; settings in :mod:`ensai_tf.config`.

The public entry points:

- :func:`ensai_tf.predict`: lens parameters of images or ``.npy``/FITS files,
  with the image preparation of ``ensai predict``, as named arrays;
- :func:`ensai_tf.load_model`: a model folder as one plain Keras model;
- :func:`ensai_tf.data.make_dataset`: the ``tf.data`` pipeline of simulated
  observed lenses.

``import ensai_tf`` registers every custom Keras object of the package (each
is decorated with ``keras.saving.register_keras_serializable(package="ensai_tf")``
where it is defined), so plain ``keras.saving.load_model`` reads every
``.keras`` file ensai_tf writes. The workflow modules behind the names below
are imported on first use. TensorFlow starts without its native log lines
unless ``ENSAI_VERBOSE=1`` (:mod:`ensai_tf.quiet`).

Example:
    >>> import ensai_tf, keras
    >>> model = keras.saving.load_model("trained_weights/alexnet/model.keras")  # doctest: +SKIP
"""

import importlib

from ensai_tf.quiet import start_tensorflow

# TensorFlow's native start-up lines are dropped unless ENSAI_VERBOSE=1 (ensai_tf.quiet).
start_tensorflow()

# Importing the modules that define custom Keras objects registers them with Keras.
from ensai_tf import losses, metrics, uncertainty  # noqa: E402, F401
from ensai_tf.models import combiner, ensemble, heads  # noqa: E402, F401
from ensai_tf.preprocess import bias, stretch  # noqa: E402, F401

__version__ = "0.1.0"

_LAZY = {
    "predict": "ensai_tf.prediction",
    "load_model": "ensai_tf.prediction",
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
    # Workflow modules (astropy, scipy, the pipeline) load on first use of their public name.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ensai_tf' has no attribute {name!r}")
