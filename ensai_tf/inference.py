"""Run trained models: load any model folder, predict in batches, turn outputs into table rows.

:func:`load_predictor` is the one loader behind ``ensai predict``,
``ensai evaluate``, ``ensai demo`` and :func:`ensai_tf.predict`: it follows
the loading rule of :mod:`ensai_tf.model_dir` (``model.keras`` in Keras' safe
mode first; a SavedModel, which is a program, only when it is the only model
in the folder or the caller trusts it). :func:`result_rows` turns predictions
into the rows of ``ensai predict``'s table: the five parameters
(docs/design.md §0), the axis ratio ``q``, the position angle of the mass
major axis (east of north when the file has a celestial WCS, otherwise in the
image frame from +x towards +y; the ``pa_frame`` column says which), and the
lens centre in the input file's pixel coordinates (and RA/Dec with a WCS).

Example:
    >>> import numpy as np
    >>> predict_fn, npix = load_predictor("trained_weights/alexnet")  # doctest: +SKIP
    >>> predict_images(predict_fn, np.zeros((2, npix, npix, 1))).shape  # doctest: +SKIP
    (2, 5)
"""

import json
import pathlib
import zipfile

import keras
import numpy as np
import tensorflow as tf

from ensai_tf import calibration as calibration_lib
from ensai_tf import conventions, model_dir, uncertainty
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.models import ensemble, stored_combiner
from ensai_tf.models.loading import load_keras_model
from ensai_tf.tables import INTERVAL_LEVEL, PA_FRAME_IMAGE, PA_FRAME_SKY

__all__ = [
    "ENDPOINT",
    "InferenceModel",
    "input_bands",
    "load_calibration",
    "load_for_inference",
    "load_predictor",
    "predict_images",
    "result_rows",
    "uncertainty_columns",
]

ENDPOINT = "serve"
"""Name of the SavedModel endpoint that ``ensai export`` writes and the loaders call."""


def _head_array(outputs):
    """(B, width) float64 array of an array output whose width is a known head."""
    out = np.asarray(outputs, dtype=np.float64)
    try:
        if out.ndim != 2:
            raise ValueError("not 2-D")
        uncertainty.head_layout(out.shape[1])
    except ValueError:
        raise ModelDirError(f"the model returned shape {out.shape}; expected (batch, "
                            f"{conventions.NUM_PARAMS}) parameters, 7 with the shear, or a "
                            "Gaussian head of width 10/20/14/35") from None
    return out


def _raw_array(outputs):
    """(B, width) float64 array of the whole head output (array or SavedModel dict)."""
    if isinstance(outputs, dict):
        if "outputs" in outputs:
            return np.asarray(outputs["outputs"], dtype=np.float64)
        names = conventions.target_names(
            conventions.TARGET_COUNTS[1] if all(k in outputs for k in conventions.SHEAR_NAMES)
            else conventions.NUM_PARAMS)
        return _as_param_array({k: outputs[k] for k in names if k in outputs}, names)
    return _head_array(outputs)


def _as_param_array(outputs, names=conventions.PARAM_NAMES):
    """(B, 5) float64 array from a model output (array or dict of named params).

    Wider array outputs (the shear, or a Gaussian head whose means come first)
    give their first five columns.
    """
    if isinstance(outputs, dict):
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ModelDirError(f"the model's outputs {sorted(outputs)} lack {missing}; "
                                f"expected the five parameters {conventions.PARAM_NAMES}")
        cols = [np.asarray(outputs[n], dtype=np.float64).reshape(-1) for n in names]
        return np.stack(cols, axis=-1)
    return _head_array(outputs)[:, :conventions.NUM_PARAMS]


def _with_spread(model, source):
    """A point-estimate network with its calibrated spread as a Gaussian head, when fitted.

    ``calibration.json`` beside a point-estimate network holds, once
    ``ensai calibrate`` has fitted it, the ``spread`` (method, scale and floor)
    of :mod:`ensai_tf.models.ensemble`: over a combined network's members, or
    over the eight flips and rotations of the image for a single network.
    """
    if model.output_shape[-1] != conventions.NUM_PARAMS:
        return model
    calibration = load_calibration(source)
    if not calibration or "spread" not in calibration:
        return model
    try:
        spread = calibration["spread"]
        method = spread.get("method", "members")
        if method not in ensemble.SPREAD_METHODS:
            raise ValueError(f"unknown method {method!r}")
        build = ensemble.with_spread if method == "members" else ensemble.with_dihedral_spread
        return build(model, spread["scale"], spread["floor"])
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ModelDirError(f"the spread in the calibration beside {str(source)!r} is invalid "
                            f"({err}); run 'ensai calibrate' again") from None


def _load_holder(kind, source, trust=False, with_spread=True):
    """The loaded model and its input side (None when unknown) for one model source."""
    if kind == "saved_model":
        holder = load_for_inference(source)
        return holder, _saved_model_npix(holder.serve)
    holder = (stored_combiner.load_combined(source, trust) if kind == "combined"
              else load_keras_model(source))
    if with_spread:
        holder = _with_spread(holder, source)
    return holder, holder.input_shape[1]


def load_predictor(path, raw=False, trust_savedmodel=False, with_spread=True):
    """Load a trained model for inference.

    Args:
        path: a model folder written by ``ensai train``/``ensai combine``, a
            SavedModel folder, or a ``.keras`` file. Which file of a folder
            is loaded follows :func:`ensai_tf.model_dir.model_source`:
            ``model.keras`` (safe mode), else ``combiner.json``
            (:func:`ensai_tf.models.stored_combiner.load_combined`), else a
            SavedModel when it is the only model there.
        raw: return the whole head output instead of the five parameters
            (the shear and the Gaussian head's variances too;
            :func:`ensai_tf.uncertainty.head_layout` reads its width).
        trust_savedmodel: load a folder's SavedModel even where a
            ``model.keras`` or ``combiner.json`` is beside it. SavedModels are
            programs: trust only your own.
        with_spread: apply the spread calibration of a point-estimate
            network (its intervals); False gives its plain point estimates.

    Returns:
        ``(predict_fn, npix)``: ``predict_fn(images)`` maps a ``(B, npix,
        npix, 1)`` float32 array to a ``(B, 5)`` float64 array of
        ``(theta_e [arcsec], e_x, e_y, x_l [arcsec], y_l [arcsec])`` (the
        means of a Gaussian head), or with ``raw`` to ``(B, width)``;
        ``npix`` is the input side in pixels. ``predict_fn.holder`` is the
        loaded Keras model or :class:`InferenceModel`. A point-estimate
        network whose ``calibration.json`` holds a spread (``ensai
        calibrate``) returns a diagonal Gaussian head
        (:mod:`ensai_tf.models.ensemble`).

    Raises:
        ModelDirError: the path is missing, is not a model, or is corrupt.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelDirError(f"model {str(path)!r} does not exist; give a folder written by "
                            "'ensai train' or 'ensai combine', a SavedModel folder or a .keras file")
    kind, source = model_dir.model_source(path, trust_savedmodel)
    if kind is None:
        raise ModelDirError(f"{str(path)!r} is not a model: expected a folder with model.keras, "
                            "a combiner.json with its weights or saved_model/, a SavedModel "
                            "folder (saved_model.pb) or a .keras file")
    try:
        holder, npix = _load_holder(kind, source, trust_savedmodel, with_spread)
    except ModelDirError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            zipfile.BadZipFile, tf.errors.OpError) as err:
        # IndexError: a truncated variables.data file; one line for the CLI
        raise ModelDirError(f"cannot load the model in {str(path)!r}: it is missing files or "
                            f"corrupt ({type(err).__name__}: {' '.join(str(err).split())})"
                            ) from None
    npix = int(npix) if npix else conventions.NPIX
    fn = holder.serve if hasattr(holder, "serve") else holder

    # the closure keeps the loaded object (and so its variables) alive
    def predict_fn(images):
        # a model that loads but does not fit (other input channels, other
        # outputs) is named here, not left to a deep Keras traceback
        try:
            outputs = _to_numpy(fn(tf.constant(images, dtype=tf.float32)))
            return _raw_array(outputs) if raw else _as_param_array(outputs)
        except ModelDirError as err:
            raise ModelDirError(f"model {str(path)!r}: {err}") from None
        except (ValueError, TypeError, tf.errors.OpError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelDirError(f"model {str(path)!r} does not take (batch, {npix}, {npix}, 1) "
                                f"images and return the five parameters ({first})") from None

    predict_fn.holder = holder
    return predict_fn, npix


def _to_numpy(outputs):
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    return np.asarray(outputs)


def input_bands(predict_fn):
    """Bands (input channels) a :func:`load_predictor` function reads: 1, or 2 for a
    network trained on two bands (docs/design.md §5.10); 1 when the model does not say.

    Example:
        >>> import keras
        >>> fn = lambda images: images
        >>> fn.holder = keras.Sequential([keras.Input((8, 8, 2))])
        >>> input_bands(fn)
        2
    """
    holder = getattr(predict_fn, "holder", None)
    shape = getattr(holder, "input_shape", None)
    if shape is None and hasattr(holder, "serve"):
        shape = _saved_model_input_shape(holder.serve)
    return int(shape[-1]) if shape is not None and len(shape) in (3, 4) and shape[-1] else 1


def _saved_model_npix(fn):
    """Input side of a SavedModel serving function, or None when unknown."""
    shape = _saved_model_input_shape(fn)
    return shape[1] if shape is not None else None


def _saved_model_input_shape(fn):
    """Input shape ``(B, H, W, C)`` of a SavedModel serving function, or None when unknown."""
    signature = getattr(fn, "structured_input_signature", None)
    if signature is None:
        concrete = getattr(fn, "concrete_functions", None) or ()
        signature = concrete[0].structured_input_signature if concrete else None
    if signature is None:
        return None
    specs = [s for s in list(signature[0]) + list(signature[1].values()) if hasattr(s, "shape")]
    return tuple(specs[0].shape) if specs and len(specs[0].shape) == 4 else None



def predict_images(predict_fn, images, batch_size=100):
    """Run ``predict_fn`` over ``(N, npix, npix, 1)`` images in batches.

    Args:
        predict_fn: the function of :func:`load_predictor`, mapping a
            ``(B, npix, npix, 1)`` float32 array to a ``(B, 5)`` (or, with
            ``raw``, ``(B, width)``) array.
        images: ``(N, npix, npix, 1)`` array, 0.04 arcsec pixels; cast to float32.
        batch_size: images per call of ``predict_fn``, >= 1.

    Returns:
        ``(N, 5)`` float64 array of parameters (arcsec, -, -, arcsec, arcsec).

    Raises:
        InputError: ``batch_size`` < 1.
    """
    images = np.asarray(images, dtype=np.float32)
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be >= 1")
    chunks = [predict_fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, conventions.NUM_PARAMS))


def _position_angle(prepared, params):
    """(pa_deg, frame, x_pix, y_pix, ra_deg, dec_deg) of one prediction."""
    e_x, e_y = params[conventions.Param.E_X], params[conventions.Param.E_Y]
    angle_img = float(conventions.mass_major_axis_angle(e_x, e_y))
    sx, sy = prepared.scale_arcsec
    x_pix = prepared.centre_pix[0] + params[conventions.Param.X_L] / sx
    y_pix = prepared.centre_pix[1] + params[conventions.Param.Y_L] / sy
    if prepared.wcs is None:
        return angle_img, PA_FRAME_IMAGE, x_pix, y_pix, None, None
    step = 1.0  # arcsec along the major axis, converted to input pixels per axis
    a = np.radians(angle_img)
    p0 = prepared.wcs.pixel_to_world(x_pix, y_pix)
    p1 = prepared.wcs.pixel_to_world(x_pix + step * np.cos(a) / sx, y_pix + step * np.sin(a) / sy)
    pa = float(np.mod(p0.position_angle(p1).deg, 180.0))
    return pa, PA_FRAME_SKY, x_pix, y_pix, float(p0.spherical.lon.deg), float(p0.spherical.lat.deg)


def result_rows(prepared, params):
    """Output rows (dicts keyed by ``OUTPUT_COLUMNS``) for prepared images.

    ``q = 1 - |e|`` (docs/design.md §0) and ``pa_deg`` is the mass major-axis position
    angle in [0, 180) degrees, east of north with a celestial WCS, else from
    +x (column) towards +y (row); ``x_pix``/``y_pix`` are the lens centre in
    the input file's 0-based pixel coordinates (column, row).

    Args:
        prepared: sequence of :class:`PreparedImage` (as from :func:`prepare_images`).
        params: ``(N, 5)`` predictions in the same order, ``(theta_e, e_x,
            e_y, x_l, y_l)`` in arcsec / dimensionless; extra columns are ignored.

    Returns:
        list of ``N`` dicts with the keys of ``OUTPUT_COLUMNS``: the five
        parameters, ``q`` (dimensionless), ``pa_deg`` (degrees), ``pa_frame``,
        ``x_pix``, ``y_pix`` (input pixels) and ``ra_deg``, ``dec_deg``
        (degrees; None without a celestial WCS).
    """
    rows = []
    for item, p in zip(prepared, np.asarray(params, dtype=np.float64)):
        q, _ = conventions.q_phi_from_ellipticity(p[conventions.Param.E_X],
                                                  p[conventions.Param.E_Y])
        pa, frame, x_pix, y_pix, ra, dec = _position_angle(item, p)
        row = {"file": item.file, "index": item.index}
        row.update({n: float(v) for n, v in zip(conventions.PARAM_NAMES, p)})
        row.update({"q": float(q), "pa_deg": pa, "pa_frame": frame, "x_pix": float(x_pix),
                    "y_pix": float(y_pix), "ra_deg": ra, "dec_deg": dec})
        rows.append(row)
    return rows


def load_calibration(model):
    """The post-hoc interval calibration stored beside a model, or None.

    Args:
        model: model folder, its ``saved_model/`` or a ``.keras`` file in it.

    Returns:
        the dict of ``calibration.json`` (written by ``ensai train`` for
        Gaussian heads, fitted on the validation set), or None if absent.

    Raises:
        ModelDirError: the file exists but is unreadable.
    """
    path = pathlib.Path(model)
    folder = path if path.is_dir() else path.parent
    if folder.name == model_dir.SAVED_MODEL_DIR:
        folder = folder.parent
    cal_path = folder / model_dir.CALIBRATION_JSON
    if not cal_path.is_file():
        return None
    try:
        return json.loads(cal_path.read_text())
    except (OSError, ValueError) as err:
        raise ModelDirError(f"{str(cal_path)!r} is unreadable or not JSON ({err}); retrain, or "
                            "delete it to report raw coverage only") from None


def uncertainty_columns(raw, calibration=None, level=INTERVAL_LEVEL):
    """Per-row shear values and intervals from raw network outputs.

    Args:
        raw: ``(B, width)`` head outputs (:func:`load_predictor` with ``raw``).
        calibration: the model's ``calibration.json`` dict, or None for the
            raw Gaussian intervals.
        level: nominal level of the central intervals.

    Returns:
        list of ``B`` dicts: ``gamma_1``/``gamma_2`` for shear outputs; for
        Gaussian heads ``<name>_std``, ``<name>_lo68``, ``<name>_hi68``
        (parameter units) and ``covariance`` (``n x n`` nested lists).
    """
    raw = np.asarray(raw, dtype=np.float64)
    head, n = uncertainty.head_layout(raw.shape[1])
    names = conventions.target_names(n)
    extra_names = names[conventions.NUM_PARAMS:]
    if head == "point":
        return [{k: float(v) for k, v in zip(extra_names, r[conventions.NUM_PARAMS:])}
                for r in raw]
    summary = uncertainty.gaussian_summary(raw)
    half = summary["std"] * calibration_lib.interval_multipliers(level, calibration, n)
    lo, hi = summary["mean"] - half, summary["mean"] + half
    rows = []
    for b in range(raw.shape[0]):
        row = {k: float(v) for k, v in zip(extra_names, summary["mean"][b, conventions.NUM_PARAMS:])}
        row.update({f"{k}_std": float(v) for k, v in zip(names, summary["std"][b])})
        row.update({f"{k}_lo68": float(v) for k, v in zip(names, lo[b])})
        row.update({f"{k}_hi68": float(v) for k, v in zip(names, hi[b])})
        row["covariance"] = summary["covariance"][b].tolist()
        rows.append(row)
    return rows


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
            ``(N, 5)`` float32 numpy array in the order ``conventions.PARAM_NAMES``,
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
    loaded = tf.saved_model.load(str(path))
    if not hasattr(loaded, ENDPOINT):
        raise ModelDirError(f"SavedModel {str(path)!r} has no {ENDPOINT!r} endpoint; "
                            "export it with ensai_tf.export.export_saved_model or 'ensai export'")
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
            return np.stack([np.asarray(out[name]) for name in conventions.PARAM_NAMES], axis=-1)
        return np.asarray(out)

    # the closure holds `loaded`, which keeps the variables alive
    fn.loaded = loaded
    model = InferenceModel(path, fn, input_shape, "saved_model")
    model.serve = endpoint
    return model


def _load_keras(path):
    model = load_keras_model(path)

    def fn(images):
        # the lens parameters (or a Gaussian head's means) come first
        return keras.ops.convert_to_numpy(model(images, training=False))[:, :len(conventions.PARAM_NAMES)]

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
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelDirError(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        if not any(path.iterdir()):
            raise ModelDirError(f"model folder {str(path)!r} is empty")
        if not (path / model_dir.SAVED_MODEL_PB).is_file():
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
