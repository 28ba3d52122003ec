"""Predict lens parameters for user images (.npy and FITS).

The networks take ``(N, N, 1)`` float32 images of 0.04 arcsec pixels with
masked pixels exactly 0 (docs/design.md §0). This module turns user files into that
form and runs a trained model on them in batches:

1. read the file: ``.npy`` (an image or a stack of images, assumed to be on
   the package's own 0.04 arcsec grid unless ``pixel_scale`` is given) or
   FITS (first HDU holding an image; pixel scale from the celestial WCS via
   ``astropy.wcs.utils.proj_plane_pixel_scales``, or ``pixel_scale``);
2. refuse NaN/Inf, all-masked and constant images, naming the file;
3. resample to 0.04 arcsec flux-conservingly when the scale differs;
4. zero-pad (padding is "masked", which the bias-removal layer ignores,
   docs/design.md §6.1) or centrally crop to the network's input size;
5. normalise to an arc peak of about 1, as the training images are
   (docs/design.md §5.7): divide by the maximum of the 3x3-median-filtered image over
   unmasked pixels, so a single hot pixel or cosmic ray cannot set the scale.

The output table has the five parameters (docs/design.md §0), the axis ratio ``q``
and the position angle of the mass major axis (east of north when the file
has a celestial WCS, otherwise in the image frame from +x towards +y; the
``pa_frame`` column says which), plus the lens centre in the input file's
pixel coordinates (and RA/Dec with a celestial WCS).
"""

import csv
import dataclasses
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import uuid
import warnings
import zipfile

import numpy as np

from ensai_tf import conventions
from ensai_tf.errors import InputError, ModelDirError

__all__ = [
    "PreparedImage",
    "load_predictor",
    "register_custom_objects",
    "resolve_pixel_scales",
    "read_image_file",
    "resample_flux_conserving",
    "fit_to_grid",
    "normalise_peak",
    "iter_prepared",
    "prepare_images",
    "predict_images",
    "result_rows",
    "INTERVAL_LEVEL",
    "load_calibration",
    "output_columns",
    "uncertainty_columns",
    "write_table",
    "predict_files",
]

PA_FRAME_SKY = "east_of_north"
PA_FRAME_IMAGE = "image_x_towards_y"
OUTPUT_COLUMNS = ("file", "index", *conventions.PARAM_NAMES, "q", "pa_deg", "pa_frame",
                  "x_pix", "y_pix", "ra_deg", "dec_deg")
"""Columns of a point-estimate network's table; see :func:`output_columns` for the others."""

INTERVAL_LEVEL = 0.68
"""Level of the per-parameter intervals in ``ensai predict``'s table."""
_MIN_SIDE = 8
_PIXEL_SCALE_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """One network-ready image and how it maps back to its file.

    Attributes:
        name: file name, with ``[i]`` for the i-th image of a stack.
        file: the source file path.
        index: position in the file's stack (0 for a single image).
        image: ``(npix, npix, 1)`` float32 network input, 0.04 arcsec pixels.
        centre_pix: ``(col, row)``, the input file's pixel coordinates
            (0-based) of the prepared image's centre.
        scale_arcsec: ``(sx, sy)``, arcsec per input pixel along columns and
            rows.
        wcs: celestial ``astropy.wcs.WCS`` of the file, or None.
    """

    name: str
    file: str
    index: int
    image: np.ndarray
    centre_pix: tuple
    scale_arcsec: tuple
    wcs: object = None


# ---------------------------------------------------------------- model loading


def _keras_model_path(path):
    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".keras":
        return path
    if path.is_dir() and (path / "model.keras").is_file() and not (path / "saved_model").is_dir():
        return path / "model.keras"
    return None


def _saved_model_path(path):
    path = pathlib.Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return path
    if path.is_dir() and (path / "saved_model" / "saved_model.pb").is_file():
        return path / "saved_model"
    return None


def _model_source(path):
    """``(kind, path)`` that :func:`load_predictor` loads: ``"saved_model"``,
    ``"keras"`` or ``"combined"`` (stored by reference), or ``(None, None)``."""
    from ensai_tf.models import combiner

    saved = _saved_model_path(path)
    if saved is not None:
        return "saved_model", saved
    keras_path = _keras_model_path(path)
    if keras_path is not None:
        return "keras", keras_path
    if combiner.is_by_reference(path):
        return "combined", pathlib.Path(path)
    return None, None


def is_model(path):
    """Whether ``path`` holds a model :func:`load_predictor` loads (it may still be corrupt)."""
    return _model_source(path)[0] is not None


def _head_array(outputs):
    """(B, width) float64 array of an array output whose width is a known head."""
    from ensai_tf import uncertainty

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

    Wider array outputs (the shear, or a Gaussian head whose means come first,
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


def load_predictor(path, raw=False):
    """Load a trained model for inference.

    Args:
        path: a model folder written by ``ensai train``/``ensai combine``
            (its ``saved_model/`` is used, else its ``model.keras``, else a
            combiner stored by reference in its ``combiner.json``,
            :func:`ensai_tf.models.combiner.load_combined`), a SavedModel
            folder, or a ``.keras`` file.
        raw: return the whole head output instead of the five parameters
            (the shear and the Gaussian head's variances too;
            :func:`ensai_tf.uncertainty.head_layout` reads its width).

    Returns:
        ``(predict_fn, npix)``: ``predict_fn(images)`` maps a ``(B, npix,
        npix, 1)`` float32 array to a ``(B, 5)`` float64 array of
        ``(theta_e [arcsec], e_x, e_y, x_l [arcsec], y_l [arcsec])`` (the
        means of a Gaussian head), or with ``raw`` to ``(B, width)``;
        ``npix`` is the input side in pixels.

    Raises:
        ModelDirError: the path is missing, is not a model, or is corrupt.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelDirError(f"model {str(path)!r} does not exist; give a folder written by "
                            "'ensai train' or 'ensai combine', a SavedModel folder or a .keras file")
    from ensai_tf.models import combiner

    kind, source = _model_source(path)
    if kind is None:
        raise ModelDirError(f"{str(path)!r} is not a model: expected a folder with saved_model/, "
                            "model.keras or a combiner.json with its weights, a SavedModel "
                            "folder (saved_model.pb) or a .keras file")
    import tensorflow as tf

    from ensai_tf import export

    try:
        if kind == "saved_model":
            holder = export.load_for_inference(str(source))
            npix = _saved_model_npix(holder.serve if hasattr(holder, "serve") else holder)
        else:
            holder = (combiner.load_combined(source) if kind == "combined"
                      else export.load_keras_model(source))
            npix = holder.input_shape[1]
    except ModelDirError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            zipfile.BadZipFile, tf.errors.OpError) as err:
        # IndexError: a truncated variables.data file; one line for the CLI
        raise ModelDirError(f"cannot load the model in {str(path)!r}: it is missing files or "
                            f"corrupt ({type(err).__name__}: {' '.join(str(err).split())})"
                            ) from None
    npix = int(npix) if npix else conventions.NPIX

    # the closure keeps the loaded object (and so its variables) alive
    def predict_fn(images):
        fn = holder.serve if hasattr(holder, "serve") else holder
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

    return predict_fn, npix


def _to_numpy(outputs):
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    return np.asarray(outputs)


def _saved_model_npix(fn):
    """Input side of a SavedModel serving function, or None when unknown."""
    signature = getattr(fn, "structured_input_signature", None)
    if signature is None:
        concrete = getattr(fn, "concrete_functions", None) or ()
        signature = concrete[0].structured_input_signature if concrete else None
    if signature is None:
        return None
    specs = [s for s in list(signature[0]) + list(signature[1].values()) if hasattr(s, "shape")]
    return specs[0].shape[1] if specs and len(specs[0].shape) == 4 else None


def register_custom_objects():
    """Import the modules whose custom Keras objects a ``.keras`` file may name.

    Call it before ``keras.saving.load_model`` on an ensai_tf ``.keras`` file
    (``load_predictor`` and ``train.init_weights`` do).
    """
    import importlib

    for name in ("ensai_tf.preprocess.bias", "ensai_tf.losses", "ensai_tf.metrics",
                 "ensai_tf.uncertainty",
                 "ensai_tf.models", "ensai_tf.models.combiner"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue


# ---------------------------------------------------------------- reading files


def _read_fits(path, hdu=None):
    """(data, celestial WCS or None, pixel scales (sx, sy) arcsec or None) of a FITS file.

    ``hdu`` (an index, an EXTNAME or an ``(EXTNAME, EXTVER)`` pair) names the
    HDU to read; None takes the first HDU holding 2-D data.
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the FITS file is empty")
    try:
        # astropy's warnings on a short or odd file would add lines to the CLI's
        # one-line error: truncation is checked and reported below instead
        with warnings.catch_warnings(action="ignore", category=AstropyUserWarning), \
                fits.open(path, memmap=False) as hdul:
            wanted = None if hdu is None else _hdu_index(path, hdul, hdu)
            chosen = None
            for idx, candidate in enumerate(hdul):
                if wanted is not None and idx != wanted:
                    continue
                if not candidate.is_image:
                    continue
                # a short file is named as truncated (astropy's own error is a
                # reshape message); size read before .data rescales the header
                data_end = hdul.fileinfo(idx)["datLoc"] + candidate.size
                if data_end > os.path.getsize(path):
                    raise InputError(f"{path}: the FITS file is truncated "
                                     f"({os.path.getsize(path)} bytes; HDU {idx} needs "
                                     f"{data_end})")
                if candidate.data is not None and np.asarray(candidate.data).ndim >= 2:
                    chosen = candidate
                    break
            if chosen is None:
                which = "no HDU holds" if wanted is None else f"HDU {hdu!r} does not hold"
                raise InputError(f"{path}: {which} an image (2-D data)")
            data = np.array(chosen.data, dtype=np.float64)
            header = chosen.header.copy()
    except InputError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as err:
        raise InputError(f"{path}: not a readable FITS file "
                         f"({' '.join(str(err).split())})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
    except (ValueError, KeyError, MemoryError) as err:
        raise InputError(f"{path}: the FITS header has an invalid WCS "
                         f"({' '.join(str(err).split())})") from None
    if not wcs.has_celestial:
        return data, None, None
    celestial = wcs.celestial
    units = [str(u) for u in celestial.world_axis_units]
    if any(u not in ("deg", "") for u in units):
        raise InputError(f"{path}: celestial WCS axes in {units}, expected degrees")
    scales = proj_plane_pixel_scales(celestial) * 3600.0
    return data, celestial, (float(scales[0]), float(scales[1]))


def _hdu_index(path, hdul, hdu):
    """Index of the HDU named by ``hdu`` (index, EXTNAME or (EXTNAME, EXTVER))."""
    try:
        idx = hdul.index_of(hdu)
    except (KeyError, ValueError, TypeError):
        idx = None
    if idx is None or not 0 <= idx < len(hdul):
        raise InputError(f"{path}: has no HDU {hdu!r} (it has {len(hdul)} HDUs: "
                         f"{', '.join(h.name or str(i) for i, h in enumerate(hdul))})")
    return idx


def resolve_pixel_scales(path, scales, pixel_scale=None):
    """The pixel scales of one image: the user's ``pixel_scale`` if given, else the file's.

    Args:
        path: the file, for messages.
        scales: ``(sx, sy)`` arcsec per pixel read from the file (its WCS), or None.
        pixel_scale: the user's override, arcsec per pixel, or None.

    Returns:
        ``(sx, sy)``, arcsec per pixel.

    Raises:
        InputError: a non-positive or non-finite override, or no scale at all.
    """
    if pixel_scale is not None:
        if not (np.isfinite(pixel_scale) and pixel_scale > 0):
            raise InputError(f"pixel scale {pixel_scale!r} must be a positive number of arcsec")
        return (float(pixel_scale),) * 2
    if scales is None:
        raise InputError(f"{path}: the pixel scale is unknown (no celestial WCS in the header); "
                         "give it with --pixel-scale ARCSEC (pixel_scale=...)")
    return tuple(scales)


def read_image_file(path, pixel_scale=None):
    """Read the images of one .npy or FITS file.

    Args:
        path: ``.npy`` file holding ``(H, W)``, ``(H, W, 1)``, ``(N, H, W)`` or
            ``(N, H, W, 1)``, or a FITS file (``.fits``, ``.fit``, ``.fts``,
            optionally ``.gz``) whose first image HDU is used.
        pixel_scale: pixel side in arcsec, overriding the file's; needed for
            a FITS file without a celestial WCS. ``.npy`` files are assumed
            to be on the package grid (0.04 arcsec, docs/design.md §0) unless given.

    Returns:
        ``(images, wcs, scales)``: float64 array ``(N, H, W)``, the celestial
        WCS or None, and ``(sx, sy)`` arcsec per pixel along columns, rows.

    Raises:
        InputError: unreadable, empty or corrupt file, unsupported type or
            shape, NaN/Inf values, or an unknown pixel scale; each message
            names the file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    lower = path.lower()
    wcs = None
    scales = None
    if lower.endswith(".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise InputError(f"{path}: not a readable .npy array "
                             f"({' '.join(str(err).split())})") from None
        if data.dtype.kind not in "fiub":
            raise InputError(f"{path}: dtype {data.dtype} is not numeric")
        data = np.asarray(data, dtype=np.float64)
        scales = (conventions.PIXEL_SCALE,) * 2
    elif lower.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")):
        data, wcs, scales = _read_fits(path)
        while data.ndim > 2 and data.shape[0] == 1:
            data = data[0]
    else:
        raise InputError(f"{path}: unknown file type; give .npy or FITS (.fits, .fit, .fts)")
    scales = resolve_pixel_scales(path, scales, pixel_scale)
    images = _as_stack(path, data)
    bad = ~np.isfinite(images)
    if bad.any():
        idx = int(np.argwhere(bad.reshape(len(images), -1).any(axis=1))[0, 0])
        what = "NaN" if np.isnan(images).any() else "Inf"
        raise InputError(f"{path}: image {idx} contains {what} values ({int(bad.sum())} pixels); "
                         "mask bad pixels with exactly 0 instead")
    return images, wcs, scales


def _as_stack(path, data):
    expected = (f"expected an image of shape (H, W) or (H, W, 1), or a stack (N, H, W) or "
                f"(N, H, W, 1), at least {_MIN_SIDE} pixels a side; the networks take "
                f"({conventions.NPIX}, {conventions.NPIX}, 1) at {conventions.PIXEL_SCALE} arcsec "
                "per pixel, and other sizes are padded or cropped")
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    elif data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[0] == 0 or min(data.shape[1:]) < _MIN_SIDE:
        raise InputError(f"{path}: wrong shape {tuple(data.shape)}; {expected}")
    return data


# ---------------------------------------------------------------- geometry


def _overlap_matrix(n_in, scale_in, n_out, scale_out):
    """W[i, j]: fraction of input pixel j inside output pixel i (both centred on 0)."""
    e_in = (np.arange(n_in + 1) - n_in / 2.0) * scale_in
    e_out = (np.arange(n_out + 1) - n_out / 2.0) * scale_out
    lo = np.maximum(e_out[:-1, None], e_in[None, :-1])
    hi = np.minimum(e_out[1:, None], e_in[None, 1:])
    return np.clip(hi - lo, 0.0, None) / scale_in


def resample_flux_conserving(image, scale_in, scale_out=conventions.PIXEL_SCALE):
    """Rebin an image to a new pixel scale, conserving flux, about its centre.

    Each input pixel is treated as uniform over its area and its flux is
    shared among the output pixels it overlaps (exact area weighting). Masked
    pixels (exactly 0) do not dilute their neighbours: an output pixel is the
    flux of its unmasked area scaled up to its full area, and is masked (0)
    when less than half of it is covered by unmasked input.

    Args:
        image: ``(H, W)`` array; exact zeros are masked.
        scale_in: ``(sx, sy)`` input pixel side along columns and rows, arcsec.
        scale_out: output pixel side, arcsec.

    Returns:
        ``(out, (sx_ratio, sy_ratio))``: the ``(H', W')`` float64 image with
        ``H' = round(H * sy / scale_out)`` and the same centre, whose sum
        equals the input's when nothing is masked; and ``n_out / n_in``
        per axis.
    """
    image = np.asarray(image, dtype=np.float64)
    sx, sy = scale_in
    n_y, n_x = image.shape
    m_y = max(1, int(round(n_y * sy / scale_out)))
    m_x = max(1, int(round(n_x * sx / scale_out)))
    w_y = _overlap_matrix(n_y, sy, m_y, scale_out)
    w_x = _overlap_matrix(n_x, sx, m_x, scale_out)
    unmasked = (image != 0).astype(np.float64)
    flux = w_y @ image @ w_x.T
    covered = w_y @ unmasked @ w_x.T
    total = w_y @ np.ones_like(image) @ w_x.T
    frac = np.divide(covered, total, out=np.zeros_like(covered), where=total > 0)
    out = np.where(frac >= 0.5, flux / np.where(frac > 0, frac, 1.0), 0.0)
    return out, (m_x / n_x, m_y / n_y)


def fit_to_grid(image, npix=conventions.NPIX):
    """Zero-pad or centrally crop an image to ``(npix, npix)``.

    Padding is masked data (exact zeros, docs/design.md §0), which the bias-removal
    layer ignores (docs/design.md §6.1).

    Args:
        image: ``(H, W)`` array.
        npix: output side, pixels.

    Returns:
        ``(out, (start_col, start_row))``: the ``(npix, npix)`` image, and
        the input pixel index at output pixel 0 along each axis (negative
        when padded).
    """
    image = np.asarray(image)
    out = np.zeros((npix, npix), dtype=image.dtype)
    starts = []
    for axis in (1, 0):
        n = image.shape[axis]
        starts.append((n - npix) // 2)
    start_x, start_y = starts
    src_y = slice(max(start_y, 0), min(start_y + npix, image.shape[0]))
    src_x = slice(max(start_x, 0), min(start_x + npix, image.shape[1]))
    dst_y = slice(src_y.start - start_y, src_y.stop - start_y)
    dst_x = slice(src_x.start - start_x, src_x.stop - start_x)
    out[dst_y, dst_x] = image[src_y, src_x]
    return out, (start_x, start_y)


def normalise_peak(image, name="image"):
    """Scale an image so its arc peak is about 1 (docs/design.md §5.7).

    The peak is the maximum, over unmasked pixels, of the 3x3 median-filtered
    image, so isolated hot pixels and cosmic rays do not set the scale.
    Masked pixels (exact zeros) stay 0.

    Args:
        image: ``(H, W)`` array; exact zeros are masked.
        name: what to call the image in error messages.

    Raises:
        InputError: all pixels masked, a constant image, or no positive
            signal.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    unmasked = image != 0
    if not unmasked.any():
        raise InputError(f"{name}: every pixel is masked (exactly 0); nothing to measure")
    values = image[unmasked]
    if values.max() == values.min():
        raise InputError(f"{name}: the image is constant ({values.max():g}); it holds no arcs")
    peak = np.max(ndimage.median_filter(image, size=3, mode="nearest")[unmasked])
    if not peak > 0:
        peak = values.max()
    if not peak > 0:
        raise InputError(f"{name}: no positive pixel; the arcs must be positive")
    return np.where(unmasked, image / peak, 0.0)


def iter_prepared(path, npix=conventions.NPIX, pixel_scale=None):
    """Read one file and yield its network-ready :class:`PreparedImage` items one by one.

    The file's pixels are read at once (a stack is one array), but prepared
    images are made as they are consumed, so a caller holding a batch holds
    only that batch of network inputs.

    Args:
        path: ``.npy`` or FITS file (see :func:`read_image_file`).
        npix: network input side, pixels.
        pixel_scale: optional pixel side of the file, arcsec.

    Yields:
        :class:`PreparedImage`, in the file's stack order.
    """
    images, wcs, scales = read_image_file(path, pixel_scale)
    n_in_y, n_in_x = images.shape[1:]
    for i, image in enumerate(images):
        name = f"{path}[{i}]" if len(images) > 1 else str(path)
        normalise_peak(image, name)  # refuses all-masked and constant input early
        ratio = (1.0, 1.0)
        if not np.allclose(scales, conventions.PIXEL_SCALE, rtol=_PIXEL_SCALE_RTOL, atol=0):
            image, ratio = resample_flux_conserving(image, scales)
        n_y, n_x = image.shape
        fitted, (start_x, start_y) = fit_to_grid(image, npix)
        fitted = normalise_peak(fitted, name)
        # offset of the prepared centre from the resampled centre, 0.04" pixels
        d_x = start_x + (npix - 1) / 2.0 - (n_x - 1) / 2.0
        d_y = start_y + (npix - 1) / 2.0 - (n_y - 1) / 2.0
        centre = ((n_in_x - 1) / 2.0 + d_x / ratio[0], (n_in_y - 1) / 2.0 + d_y / ratio[1])
        yield PreparedImage(name=name, file=str(path), index=i,
                            image=fitted.astype(np.float32)[..., None],
                            centre_pix=centre, scale_arcsec=tuple(scales), wcs=wcs)


def prepare_images(path, npix=conventions.NPIX, pixel_scale=None):
    """Read one file and return its network-ready :class:`PreparedImage` list.

    Args:
        path: ``.npy`` or FITS file (see :func:`read_image_file`).
        npix: network input side, pixels.
        pixel_scale: optional pixel side of the file, arcsec.
    """
    return list(iter_prepared(path, npix, pixel_scale))


# ---------------------------------------------------------------- prediction


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
    from ensai_tf.train import CALIBRATION_NAME

    path = pathlib.Path(model)
    folder = path if path.is_dir() else path.parent
    if folder.name == "saved_model":
        folder = folder.parent
    cal_path = folder / CALIBRATION_NAME
    if not cal_path.is_file():
        return None
    try:
        return json.loads(cal_path.read_text())
    except (OSError, ValueError) as err:
        raise ModelDirError(f"{str(cal_path)!r} is unreadable or not JSON ({err}); retrain, or "
                            "delete it to report raw coverage only") from None


def output_columns(head="point", n_targets=conventions.NUM_PARAMS):
    """Columns of ``ensai predict``'s table for a network's outputs.

    Args:
        head: ``"point"``, ``"diagonal"`` or ``"full"``.
        n_targets: 5, or 7 with the shear.

    Returns:
        ``OUTPUT_COLUMNS``, then ``gamma_1``, ``gamma_2`` for shear outputs,
        then for Gaussian heads ``<name>_std``, ``<name>_lo68`` and
        ``<name>_hi68`` per target (JSON rows also carry ``covariance``).
    """
    names = conventions.target_names(n_targets)
    cols = list(OUTPUT_COLUMNS) + list(names[conventions.NUM_PARAMS:])
    if head != "point":
        for suffix in ("std", "lo68", "hi68"):
            cols += [f"{name}_{suffix}" for name in names]
    return tuple(cols)


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
    from ensai_tf import uncertainty

    raw = np.asarray(raw, dtype=np.float64)
    head, n = uncertainty.head_layout(raw.shape[1])
    names = conventions.target_names(n)
    extra_names = names[conventions.NUM_PARAMS:]
    if head == "point":
        return [{k: float(v) for k, v in zip(extra_names, r[conventions.NUM_PARAMS:])}
                for r in raw]
    summary = uncertainty.gaussian_summary(raw)
    half = summary["std"] * uncertainty.interval_multipliers(level, calibration, n)
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


def _output_format(output):
    if output == "-":
        return "csv"
    suffix = pathlib.Path(output).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InputError(f"output {output!r}: unknown format {suffix or '(none)'}; "
                         "use a .csv or .json file, or '-' for CSV on stdout")
    return suffix[1:]


def _check_writable(output):
    if output == "-":
        return
    path = pathlib.Path(output)
    parent = path.parent if str(path.parent) else pathlib.Path(".")
    if path.is_dir():
        raise InputError(f"output {output!r} is a folder; give a .csv or .json file name")
    if not parent.is_dir():
        raise InputError(f"output {output!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"output {output!r} is not writable")


def write_table(rows, output, columns=OUTPUT_COLUMNS):
    """Write rows as CSV or JSON (by extension); ``'-'`` writes CSV to stdout.

    The file is written under a temporary name and renamed, so a failure
    never leaves half a file or clobbers an existing one. CSV has the given
    ``columns`` (other keys, such as ``covariance``, are JSON-only).

    Args:
        rows: list of dicts (as from :func:`result_rows`); None values become
            empty CSV cells.
        output: ``.csv`` or ``.json`` file path, or ``'-'`` for stdout.
        columns: CSV column names, in order (see :func:`output_columns`).

    Returns:
        None.

    Raises:
        InputError: unknown file extension, or the file cannot be written.
    """
    fmt = _output_format(output)
    buf = io.StringIO()
    if fmt == "json":
        json.dump(rows, buf, indent=1)
        buf.write("\n")
    else:
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    if output == "-":
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
        return
    path = pathlib.Path(output)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(buf.getvalue())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {output!r}: {err}") from None


class _TableStream:
    """Rows written one batch at a time to a temporary file, published only when complete.

    A file ``output`` is written as ``.NAME.tmp-PID-XXXX`` in its own folder
    and renamed onto ``output`` by :meth:`commit`; ``'-'`` is spooled to an
    anonymous temporary file and copied to stdout by :meth:`commit`. Until
    then nothing is visible, so an error or Ctrl-C (:meth:`discard`) leaves
    no partial table and an existing ``output`` untouched. Memory does not
    grow with the number of rows.

    Args:
        output: ``.csv`` or ``.json`` path, or ``'-'``.
        columns: CSV columns (keys outside them are written to JSON only).
    """

    def __init__(self, output, columns=OUTPUT_COLUMNS):
        self.output = output
        self.format = _output_format(output)
        self.count = 0
        self._tmp = None
        try:
            if output == "-":
                self._file = tempfile.TemporaryFile("w+", newline="")
            else:
                path = pathlib.Path(output)
                self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-"
                                           f"{uuid.uuid4().hex[:8]}")
                self._file = open(self._tmp, "w", newline="")
            if self.format == "csv":
                self._csv = csv.DictWriter(self._file, fieldnames=columns,
                                           lineterminator="\n", extrasaction="ignore")
                self._csv.writeheader()
            else:
                self._file.write("[")
        except OSError as err:
            self.discard()
            raise InputError(f"cannot write {output!r}: {err}") from None

    def write(self, rows):
        """Append row dicts (see :func:`result_rows`)."""
        try:
            for row in rows:
                if self.format == "csv":
                    self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
                else:
                    # the layout of json.dump(rows, f, indent=1), one row at a time
                    text = json.dumps(row, indent=1).replace("\n", "\n ")
                    self._file.write(("," if self.count else "") + "\n " + text)
                self.count += 1
        except OSError as err:
            self.discard()
            raise InputError(f"cannot write {self.output!r}: {err}") from None

    def commit(self):
        """Finish the table and publish it (rename, or copy to stdout)."""
        try:
            if self.format == "json":
                self._file.write("\n]\n" if self.count else "]\n")
            if self.output == "-":
                self._file.seek(0)
                shutil.copyfileobj(self._file, sys.stdout)
                sys.stdout.flush()
                self._file.close()
            else:
                self._file.close()
                os.replace(self._tmp, self.output)
                self._tmp = None
        except OSError as err:
            self.discard()
            raise InputError(f"cannot write {self.output!r}: {err}") from None

    def discard(self):
        """Drop the partial table (idempotent)."""
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def _batches(files, npix, pixel_scale, batch_size):
    """Lists of at most ``batch_size`` prepared images, streamed over the files."""
    batch = []
    for f in files:
        for item in iter_prepared(f, npix, pixel_scale):
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def predict_files(model, files, output="-", pixel_scale=None, batch_size=100, return_rows=True,
                  symmetrize=False):
    """Predict lens parameters for image files and write a table, streaming.

    Files are read, prepared, predicted and written ``batch_size`` images at
    a time, so memory does not grow with the number of files (only with the
    largest single file, which is read whole). The table is written to a
    temporary file that replaces ``output`` only at the end, so a bad input
    file, an error or Ctrl-C never leaves a partial table and leaves an
    existing ``output`` untouched.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        files: ``.npy`` and FITS paths (see :func:`read_image_file`).
        output: ``.csv`` or ``.json`` path, or ``'-'`` for CSV on stdout.
        pixel_scale: pixel side of all files, arcsec (overrides the WCS;
            required for FITS files without a celestial WCS).
        batch_size: images per forward pass (and per write).
        return_rows: return the row dicts; False returns only their number,
            which keeps memory flat for any number of files (the CLI).
        symmetrize: average each prediction over the eight flips and
            rotations of the image (:func:`ensai_tf.symmetry.symmetrize`;
            point-estimate models only, 8x the time per lens).

    Returns:
        The list of row dicts written (see :func:`result_rows`), or their
        count when ``return_rows`` is False.

    Raises:
        InputError: a bad image file, batch size or output path (the
            message names it), or ``symmetrize`` with a Gaussian-head model.
        ModelDirError: a missing or corrupt model.
    """
    if not files:
        raise InputError("no image files given")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise InputError(f"batch size {batch_size!r} must be an integer >= 1 (images per forward pass)")
    _check_writable(output)
    _output_format(output)
    from ensai_tf import uncertainty

    predict_fn, npix = load_predictor(model, raw=True)
    if symmetrize:
        from ensai_tf import symmetry

        predict_fn = symmetry.symmetrize(predict_fn)  # refuses a Gaussian head at the warm-up
    # warm-up: build and trace once, not timed; its width tells the head
    head, n_targets = uncertainty.head_layout(
        predict_fn(np.zeros((1, npix, npix, 1), np.float32)).shape[1])
    calibration = load_calibration(model) if head != "point" else None
    table = _TableStream(output, output_columns(head, n_targets))
    kept = [] if return_rows else None
    frames = set()
    elapsed = 0.0
    try:
        for batch in _batches(files, npix, pixel_scale, batch_size):
            images = np.stack([p.image for p in batch])
            start = time.perf_counter()
            raw = predict_fn(images)
            elapsed += time.perf_counter() - start
            rows = result_rows(batch, raw[:, :conventions.NUM_PARAMS])
            if raw.shape[1] > conventions.NUM_PARAMS:
                for row, extra in zip(rows, uncertainty_columns(raw, calibration)):
                    row.update(extra)
            table.write(rows)
            frames.update(r["pa_frame"] for r in rows)
            if kept is not None:
                kept.extend(rows)
            del images, batch, rows
        table.commit()
    except BaseException:
        table.discard()
        raise
    n = table.count
    print(f"ensai predict: {n} lenses in {elapsed:.3f} s "
          f"({1e3 * elapsed / max(n, 1):.2f} ms per lens, batch {batch_size}); "
          f"PA frame: {', '.join(sorted(frames))}", file=sys.stderr)
    return kept if return_rows else n
