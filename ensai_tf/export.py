"""SavedModel export and a uniform inference loader.

``export_saved_model`` writes a SavedModel whose ``serve`` endpoint (also the
``serving_default`` signature) takes ``images`` ``(None, H, W, 1)`` float32
and returns a dict of the five named parameters, each ``(None,)``. It loads
with ``tf.saved_model.load`` alone, without ensai_tf. Keep ``.keras`` files
for anything to be retrained (the combiner loads those).

Networks with the shear outputs add ``gamma_1`` and ``gamma_2``; Gaussian
heads add ``<name>_std`` per target, ``covariance`` ``(None, n, n)``
and the raw head output ``outputs`` ``(None, width)``; the named values are
then the Gaussian means.
"""

import pathlib
import zipfile

import numpy as np

from ensai_tf.conventions import PARAM_NAMES, target_names
from ensai_tf.errors import ModelDirError

__all__ = ["ENDPOINT", "INPUT_NAME", "export_saved_model", "InferenceModel", "load_for_inference",
           "float32_model", "load_keras_model"]

ENDPOINT = "serve"
"""Name of the SavedModel endpoint."""

INPUT_NAME = "images"
"""Name of the endpoint's input tensor."""


def _float32_policies(obj):
    """``obj`` (a serialised Keras config) with every mixed dtype policy made float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and \
                str(obj.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {key: _float32_policies(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_float32_policies(value) for value in obj]
    return obj


def float32_model(model):
    """``model`` with every layer computing in float32, for inference.

    ``train.mixed_precision`` trains in ``mixed_bfloat16`` for speed; the
    variables are float32 either way. Predicting in bfloat16 rounds every
    activation to 8 bits of mantissa, and how (oneDNN's native AVX512_BF16
    kernels or the AVX2 emulation) depends on the CPU: on the 200 check
    lenses the shipped Inception-v4 moved by a median 0.006 arcsec (at most
    0.22 arcsec) between bfloat16 and float32, and its 68% errors by 2% between
    two CPUs. In float32 the same weights give the same predictions on every
    machine to float rounding. A float32 model is returned unchanged.

    Args:
        model: a Keras model (any dtype policy).

    Returns:
        A Keras model with the same architecture, names and weights (copied)
        whose layers all use the ``float32`` policy.
    """
    import keras

    serialised = keras.saving.serialize_keras_object(model)
    converted = _float32_policies(serialised)
    if converted == serialised:
        return model
    copy = keras.saving.deserialize_keras_object(converted)
    copy.set_weights(model.get_weights())
    return copy


def load_keras_model(path):
    """Load a ``.keras`` file for inference: no optimizer, float32 throughout.

    Args:
        path: a ``.keras`` file written by ``ensai train`` or ``ensai combine``.

    Returns:
        The Keras model, every layer computing in float32
        (:func:`float32_model`).

    Raises:
        OSError, ValueError, zipfile.BadZipFile: as ``keras.saving.load_model``
            (callers turn them into a ``ModelDirError`` naming the file).
    """
    import keras

    from ensai_tf import predict

    predict.register_custom_objects()
    return float32_model(keras.saving.load_model(str(path), compile=False))


def export_saved_model(model, path, verbose=False):
    """Write ``model`` as a SavedModel with a named-parameter ``serve`` endpoint.

    Args:
        model: Keras model, images ``(B, H, W, 1)`` -> ``(B, 5)`` in the order
            ``PARAM_NAMES``, target units.
        path: output folder (created; must not hold a previous export's
            files the caller wants kept).
        verbose: let Keras print the exported variables.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: the model does not take ``(B, H, W, 1)`` images or does not
            return 5 parameters.
    """
    import keras
    import tensorflow as tf

    # the endpoint serves in float32 whatever the training precision was
    model = float32_model(model)
    in_shape = tuple(model.input_shape)
    out_shape = tuple(model.output_shape)
    if len(in_shape) != 4 or in_shape[-1] != 1:
        raise ValueError(f"export_saved_model needs a model taking (B, H, W, 1) images, "
                         f"got input shape {in_shape}")
    from ensai_tf import uncertainty

    try:
        if len(out_shape) != 2:
            raise ValueError("not (B, width)")
        head, n = uncertainty.head_layout(out_shape[-1])
    except ValueError:
        raise ValueError(f"export_saved_model needs a model returning (B, 5) parameters (7 with "
                         "the shear, or a Gaussian head of width 10/20/14/35), got output shape "
                         f"{out_shape}") from None
    names = target_names(n)

    def serve(images):
        raw = tf.cast(model(images, training=False), tf.float32)
        if head == "point":
            return {name: raw[:, k] for k, name in enumerate(names)}
        mean, chol = uncertainty.unpack_gaussian(raw, head)
        cov = tf.matmul(chol, chol, transpose_b=True)
        std = tf.sqrt(tf.linalg.diag_part(cov))
        out = {name: mean[:, k] for k, name in enumerate(names)}
        out.update({f"{name}_std": std[:, k] for k, name in enumerate(names)})
        out.update(covariance=cov, outputs=raw)
        return out

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec(shape=(None, *in_shape[1:]), dtype=tf.float32, name=INPUT_NAME)
    archive.add_endpoint(name=ENDPOINT, fn=serve, input_signature=[spec])
    path = pathlib.Path(path)
    archive.write_out(str(path), verbose=verbose)
    return path


class InferenceModel:
    """Callable images -> ``(N, 5)`` numpy parameters, from either file format.

    Attributes:
        path: the loaded file or folder.
        input_shape: ``(H, W, 1)`` the model takes, pixels (None where unknown).
        kind: ``"saved_model"`` or ``"keras"``.
        serve: SavedModels only, the raw ``serve`` endpoint (images tensor ->
            dict of the five named ``(N,)`` parameters); absent for ``.keras``
            files, so ``hasattr(model, "serve")`` tells the two apart.
    """

    def __init__(self, path, fn, input_shape, kind):
        self.path = path
        self.input_shape = input_shape
        self.kind = kind
        self._fn = fn

    def __call__(self, images):
        """Predict lens parameters.

        Args:
            images: ``(N, H, W, 1)`` (or ``(N, H, W)``) array, image units,
                masked pixels exactly 0.

        Returns:
            ``(N, 5)`` float32 numpy array in the order ``PARAM_NAMES``,
            arcsec / dimensionless.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] != 1:
            raise ValueError(f"images must have shape (N, H, W, 1), got {images.shape}")
        expected = tuple(s for s in self.input_shape[:2]) if self.input_shape else None
        if expected and None not in expected and images.shape[1:3] != expected:
            raise ValueError(f"the model at {str(self.path)!r} takes {expected[0]}x{expected[1]} "
                             f"images, got {images.shape[1]}x{images.shape[2]}")
        return np.asarray(self._fn(images), dtype=np.float32)


def _load_saved_model(path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if not hasattr(loaded, ENDPOINT):
        raise ModelDirError(f"SavedModel {str(path)!r} has no {ENDPOINT!r} endpoint; "
                            "export it with ensai_tf.export.export_saved_model")
    endpoint = getattr(loaded, ENDPOINT)
    concrete = endpoint.concrete_functions[0] if getattr(endpoint, "concrete_functions", None) \
        else None
    input_shape = None
    if concrete is not None:
        specs = tf.nest.flatten(concrete.structured_input_signature)
        if specs and len(specs[0].shape) == 4:
            input_shape = tuple(specs[0].shape[1:])

    def fn(images):
        out = endpoint(tf.constant(images))
        if isinstance(out, dict):
            return np.stack([np.asarray(out[name]) for name in PARAM_NAMES], axis=-1)
        return np.asarray(out)

    # the closure holds `loaded`, which keeps the variables alive
    fn.loaded = loaded
    model = InferenceModel(path, fn, input_shape, "saved_model")
    model.serve = endpoint
    return model


def _load_keras(path):
    import keras

    model = load_keras_model(path)

    def fn(images):
        # the lens parameters (or a Gaussian head's means) come first
        return keras.ops.convert_to_numpy(model(images, training=False))[:, :len(PARAM_NAMES)]

    fn.model = model
    return InferenceModel(path, fn, tuple(model.input_shape[1:]), "keras")


def load_for_inference(path):
    """Load a SavedModel folder or a ``.keras`` file for prediction.

    Args:
        path: a SavedModel folder (holding ``saved_model.pb``) written by
            :func:`export_saved_model`, or a ``.keras`` file.

    Returns:
        An :class:`InferenceModel`: call it on ``(N, H, W, 1)`` images to get
        ``(N, 5)`` numpy parameters.

    Raises:
        ModelDirError (a ValueError): the path is missing, empty, of another
            kind, or corrupt; the message names it.
    """
    import tensorflow as tf

    path = pathlib.Path(path)
    if not path.exists():
        raise ModelDirError(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        if not any(path.iterdir()):
            raise ModelDirError(f"model folder {str(path)!r} is empty")
        if not (path / "saved_model.pb").is_file():
            raise ModelDirError(f"{str(path)!r} is not a SavedModel folder (no saved_model.pb)")
        loader = _load_saved_model
    elif path.suffix == ".keras":
        if path.stat().st_size == 0:
            raise ModelDirError(f"model file {str(path)!r} is empty")
        loader = _load_keras
    else:
        raise ModelDirError(f"{str(path)!r} is neither a SavedModel folder nor a .keras file")
    try:
        return loader(path)
    except ModelDirError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            zipfile.BadZipFile, tf.errors.OpError) as err:
        # IndexError: a truncated variables.data file; one line for the CLI
        raise ModelDirError(f"cannot load the model at {str(path)!r}: missing parts or corrupt "
                            f"({type(err).__name__}: {' '.join(str(err).split())})") from None
