"""Load ``.keras`` files for inference: Keras safe mode, float32 throughout.

A ``.keras`` file is data: Keras' safe mode refuses the ones that would run
code on loading (``Lambda`` layers, pickled functions). Every custom object of
ensai_tf is registered with ``keras.saving.register_keras_serializable`` where
it is defined, and ``import ensai_tf`` imports them all, so plain
``keras.saving.load_model`` reads every file ensai_tf writes.

Example:
    >>> import keras, tempfile, os
    >>> inputs = keras.Input((8, 8, 1))
    >>> model = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras"); model.save(path)
    >>> load_keras_model(path).output_shape
    (None, 5)
"""

import keras

__all__ = ["float32_model", "load_keras_model"]


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

    Training may run in ``mixed_bfloat16`` for speed; the variables are
    float32 either way. Predicting in bfloat16 rounds every activation to 8
    bits of mantissa, and how (oneDNN's native AVX512_BF16 kernels or the AVX2
    emulation) depends on the CPU: on 200 check lenses the shipped
    Inception-v4 moved by a median 0.006 arcsec (at most 0.22 arcsec) between
    bfloat16 and float32, and its 68% errors by 2% between two CPUs. In
    float32 the same weights give the same predictions on every machine to
    float rounding. A float32 model is returned unchanged.

    Args:
        model: a Keras model (any dtype policy).

    Returns:
        A Keras model with the same architecture, names and weights (copied)
        whose layers all use the ``float32`` policy.
    """
    serialised = keras.saving.serialize_keras_object(model)
    converted = _float32_policies(serialised)
    if converted == serialised:
        return model
    copy = keras.saving.deserialize_keras_object(converted)
    copy.set_weights(model.get_weights())
    return copy


def load_keras_model(path):
    """Load a ``.keras`` file for inference: safe mode, no optimizer, float32 throughout.

    Args:
        path: a ``.keras`` file written by ``ensai train`` or ``ensai combine``.

    Returns:
        The Keras model, every layer computing in float32 (:func:`float32_model`).

    Raises:
        OSError, ValueError, zipfile.BadZipFile: as ``keras.saving.load_model``
            (callers turn them into a ``ModelDirError`` naming the file).
    """
    return float32_model(keras.saving.load_model(str(path), compile=False, safe_mode=True))
