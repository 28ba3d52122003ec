"""Export any model folder for TensorFlow Serving, ``keras.layers.TFSMLayer`` or plain Keras.

``export_saved_model`` writes a SavedModel whose ``serve`` endpoint (also the
``serving_default`` signature) takes ``images`` ``(None, H, W, 1)`` float32
and returns a dict of the five named parameters, each ``(None,)``. It loads
with ``tf.saved_model.load`` alone, in a process that never imports ensai_tf.
Keep ``.keras`` files for anything to be retrained (the combiner loads those).

Networks with the shear outputs add ``gamma_1`` and ``gamma_2``; Gaussian
heads add ``<name>_std`` per target, ``covariance`` ``(None, n, n)``
and the raw head output ``outputs`` ``(None, width)``; the named values are
then the Gaussian means.

:func:`export_model` (``ensai export MODEL OUT``) does it for a model folder,
the combined network stored by reference included: its backbones and
combination weights become one self-contained SavedModel or ``.keras`` file.

Example:
    >>> export_model("trained_weights/combined", "/tmp/combined_sm")  # doctest: +SKIP
    >>> import tensorflow as tf  # in any process, without ensai_tf
    >>> serve = tf.saved_model.load("/tmp/combined_sm").serve  # doctest: +SKIP
"""

import pathlib
import shutil

import keras
import tensorflow as tf

from ensai_tf import atomic, model_dir, uncertainty
from ensai_tf.conventions import target_names
from ensai_tf.errors import InputError
from ensai_tf.inference import ENDPOINT, load_predictor
from ensai_tf.models.loading import float32_model

__all__ = ["ENDPOINT", "EXPORT_FORMATS", "INPUT_NAME", "export_model", "export_saved_model"]

INPUT_NAME = "images"
"""Name of the endpoint's input tensor."""

EXPORT_FORMATS = ("savedmodel", "keras")
"""What :func:`export_model` writes: a SavedModel folder, or a folder with one ``model.keras``."""

_EXPORTED = frozenset({model_dir.SAVED_MODEL_PB, "fingerprint.pb", "variables", "assets",
                       model_dir.MODEL_KERAS, model_dir.CALIBRATION_JSON, model_dir.CONFIG_YAML})
"""Names an export writes; ``--overwrite`` replaces a folder holding nothing else."""


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
        ValueError: the model does not take ``(B, H, W, 1)`` (or two-band
            ``(B, H, W, 2)``) images or does not
            return 5 parameters.
    """
    # the endpoint serves in float32 whatever the training precision was
    model = float32_model(model)
    in_shape = tuple(model.input_shape)
    out_shape = tuple(model.output_shape)
    if len(in_shape) != 4 or in_shape[-1] not in (1, 2):
        raise ValueError(f"export_saved_model needs a model taking (B, H, W, 1) images, or "
                         f"(B, H, W, 2) for two bands, got input shape {in_shape}")
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


def _check_out(out, overwrite):
    out = pathlib.Path(out)
    if not out.exists():
        if not out.parent.is_dir():
            raise InputError(f"output {str(out)!r}: folder {str(out.parent)!r} does not exist")
        return out
    if not out.is_dir():
        raise InputError(f"output {str(out)!r} exists and is not a folder")
    names = {p.name for p in out.iterdir()}
    if names and not overwrite:
        raise InputError(f"output {str(out)!r} exists and is not empty; give --overwrite to "
                         "replace an earlier export there")
    foreign = sorted(names - _EXPORTED)
    if foreign:
        raise InputError(f"output {str(out)!r} holds files an export does not write "
                         f"({', '.join(foreign[:5])}); choose another folder")
    return out


def export_model(model, out, export_format="savedmodel", overwrite=False,
                 trust_savedmodel=False):
    """Export a model folder as a self-contained SavedModel or ``.keras`` model folder.

    The model is loaded exactly as ``ensai predict`` loads it
    (:func:`ensai_tf.inference.load_predictor`), so the export's ``serve``
    endpoint reproduces ``ensai predict``'s numbers on the same prepared
    images. The folder's ``calibration.json`` and ``config.yaml`` are copied
    beside the export, so ``ensai predict OUT`` gives the same intervals.

    Args:
        model: model folder, ``.keras`` file or SavedModel folder.
        out: the output folder (created; written complete, then renamed into place).
        export_format: ``"savedmodel"`` (``OUT/saved_model.pb``, loads with
            ``tf.saved_model.load`` or ``keras.layers.TFSMLayer``) or
            ``"keras"`` (``OUT/model.keras``).
        overwrite: replace an earlier export in ``out``; a folder holding
            anything an export does not write is always refused.
        trust_savedmodel: as :func:`ensai_tf.inference.load_predictor`.

    Returns:
        ``out`` as a ``pathlib.Path``.

    Raises:
        InputError: an unknown format, or an output that exists.
        ModelDirError: a missing or corrupt model.
    """
    if export_format not in EXPORT_FORMATS:
        raise InputError(f"export format {export_format!r}: choose one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    out = _check_out(out, overwrite)
    predict_fn, _ = load_predictor(model, raw=True, trust_savedmodel=trust_savedmodel)
    holder = predict_fn.holder
    if not isinstance(holder, keras.Model):
        raise InputError(f"{str(model)!r} is a SavedModel; it is already exported")
    tmp = atomic.temp_path(out)
    try:
        tmp.mkdir()
        if export_format == "savedmodel":
            export_saved_model(holder, tmp)
        else:
            holder.save(tmp / model_dir.MODEL_KERAS)
        folder = pathlib.Path(model)
        folder = folder if folder.is_dir() else folder.parent
        for name in (model_dir.CALIBRATION_JSON, model_dir.CONFIG_YAML):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
        atomic.replace_folder(tmp, out)
    except OSError as err:
        raise InputError(f"cannot write {str(out)!r}: {err}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
