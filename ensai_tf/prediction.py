"""Predict lens parameters for user images: files to a table, or arrays to named arrays.

:func:`predict_files` is ``ensai predict``: it streams ``.npy`` and FITS files
through the image preparation of :mod:`ensai_tf.preprocess.images` and a
model loaded by :func:`ensai_tf.inference.load_predictor`, and writes a CSV or
JSON table. :func:`predict` (also ``ensai_tf.predict``) is the same for a
Python user, returning named numpy arrays; :func:`load_model` loads a model
folder as plain Keras.

Example:
    >>> import numpy as np, ensai_tf
    >>> image = np.zeros((192, 192)); image[90:100, 60:130] = 1.0
    >>> out = ensai_tf.predict(image, model="trained_weights/alexnet")  # doctest: +SKIP
    >>> sorted(out)[:3]  # doctest: +SKIP
    ['dec_deg', 'e_x', 'e_y']
"""

import dataclasses
import os
import pathlib
import sys
import time

import numpy as np

from ensai_tf import conventions, model_dir, symmetry, uncertainty
from ensai_tf.flags import flag_columns, model_thresholds, warning_lines
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.inference import (load_calibration, load_predictor, result_rows,
                                uncertainty_columns)
from ensai_tf.preprocess.images import iter_prepared, iter_prepared_array
from ensai_tf.preprocess.reading import FITS_SUFFIXES, as_stack
from ensai_tf.tables import TableStream, check_writable, output_columns, output_format

__all__ = ["DEFAULT_MODEL", "TablePredictor", "load_model", "load_table_predictor", "predict",
           "predict_files"]

DEFAULT_MODEL = "combined"
"""The shipped model :func:`predict` uses by default (a folder of ``trained_weights/``)."""


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


def _check_files(files):
    """Refuse a missing file or an unknown file type at once, naming it."""
    for f in files:
        name = str(f)
        if not os.path.isfile(name):
            raise InputError(f"{name}: no such file")
        if not name.lower().endswith((".npy", *FITS_SUFFIXES)):
            raise InputError(f"{name}: unknown file type; give .npy or FITS (.fits, .fit, .fts, "
                             ".fits.fz)")


@dataclasses.dataclass
class TablePredictor:
    """A model loaded for ``ensai predict``'s tables: batches of prepared images to table rows.

    Made by :func:`load_table_predictor`; :func:`predict_files` and
    :func:`ensai_tf.catalog.predict_catalog` write what :meth:`rows` returns.

    Attributes:
        predict_fn: the raw-output function of :func:`ensai_tf.inference.load_predictor`.
        npix: the network's input side, pixels.
        head: ``"point"``, ``"diagonal"`` or ``"full"``
            (:func:`ensai_tf.uncertainty.head_layout`).
        n_targets: 5, or 7 with the shear.
        calibration: the interval calibration of a Gaussian head, or None.
        thresholds: quality-flag thresholds (:func:`ensai_tf.flags.model_thresholds`).
        seconds: time spent in the network so far (warm-up excluded), seconds.
    """

    predict_fn: object
    npix: int
    head: str
    n_targets: int
    calibration: object
    thresholds: dict
    seconds: float = 0.0

    @property
    def columns(self):
        """The table's CSV columns (:func:`ensai_tf.tables.output_columns`)."""
        return output_columns(self.head, self.n_targets)

    def rows(self, prepared, make_rows=result_rows, pad_to=None):
        """Table rows of a batch: parameters, intervals and shear, quality flags.

        Args:
            prepared: non-empty list of :class:`ensai_tf.preprocess.images.PreparedImage`.
            make_rows: ``make_rows(prepared, params)`` -> the base row dicts
                from the ``(B, 5)`` parameters (arcsec, -, -, arcsec, arcsec);
                default :func:`ensai_tf.inference.result_rows`.
            pad_to: run the network on batches of exactly this many images
                (repeating the last), so that an image's numbers do not depend
                on how many share its batch: CPU kernels may round float32
                sums differently for another batch size.

        Returns:
            list of row dicts, one per image, keyed by :attr:`columns`
            (Gaussian heads add ``covariance``).
        """
        images = np.stack([p.image for p in prepared])
        if pad_to is not None and len(images) < pad_to:
            images = np.concatenate([images, np.repeat(images[-1:], pad_to - len(images), 0)])
        start = time.perf_counter()
        raw = self.predict_fn(images)[:len(prepared)]
        self.seconds += time.perf_counter() - start
        rows = make_rows(prepared, raw[:, :conventions.NUM_PARAMS])
        if raw.shape[1] > conventions.NUM_PARAMS:
            for row, extra in zip(rows, uncertainty_columns(raw, self.calibration)):
                row.update(extra)
        for row, extra in zip(rows, flag_columns(prepared, raw, self.thresholds)):
            row.update(extra)
        return rows


def load_table_predictor(model, symmetrize=False, trust_savedmodel=False):
    """Load a model for ``ensai predict``'s tables, run its warm-up, read its calibration.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        symmetrize: average each prediction over the eight flips and
            rotations of the image (:func:`ensai_tf.symmetry.symmetrize`;
            point-estimate models only, 8x the time per lens).
        trust_savedmodel: as :func:`ensai_tf.inference.load_predictor`.

    Returns:
        :class:`TablePredictor`.

    Raises:
        InputError: ``symmetrize`` with a Gaussian-head model.
        ModelDirError: a missing or corrupt model.
    """
    # averaging over flips and rotations works on point estimates: no spread head then
    predict_fn, npix = load_predictor(model, raw=True, trust_savedmodel=trust_savedmodel,
                                      with_spread=not symmetrize)
    if symmetrize:
        predict_fn = symmetry.symmetrize(predict_fn)  # refuses a Gaussian head at the warm-up
    # warm-up: build and trace once, not timed; its width tells the head
    head, n_targets = uncertainty.head_layout(
        predict_fn(np.zeros((1, npix, npix, 1), np.float32)).shape[1])
    calibration = load_calibration(model) if head != "point" else None
    return TablePredictor(predict_fn, npix, head, n_targets, calibration,
                          model_thresholds(load_calibration(model)))


def predict_files(model, files, output="-", pixel_scale=None, batch_size=100, return_rows=True,
                  symmetrize=False, trust_savedmodel=False):
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
        trust_savedmodel: as :func:`ensai_tf.inference.load_predictor`.

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
    check_writable(output)
    output_format(output)
    _check_files(files)  # before the seconds of model loading
    predictor = load_table_predictor(model, symmetrize, trust_savedmodel)
    table = TableStream(output, predictor.columns)
    kept = [] if return_rows else None
    frames = set()
    flagged = {}
    try:
        for batch in _batches(files, predictor.npix, pixel_scale, batch_size):
            rows = predictor.rows(batch)
            for row in rows:
                for name in row["flags"]:
                    flagged.setdefault(row["file"], {}).setdefault(name, 0)
                    flagged[row["file"]][name] += 1
            table.write(rows)
            frames.update(r["pa_frame"] for r in rows)
            if kept is not None:
                kept.extend(rows)
            del batch, rows
        table.commit()
    except BaseException:
        table.discard()
        raise
    n = table.count
    elapsed = predictor.seconds
    print(f"ensai predict: {n} lenses in {elapsed:.3f} s "
          f"({1e3 * elapsed / max(n, 1):.2f} ms per lens, batch {batch_size}); "
          f"PA frame: {', '.join(sorted(frames))}", file=sys.stderr)
    for line in warning_lines(flagged):
        print(line, file=sys.stderr)
    return kept if return_rows else n


def _resolve_model(model):
    """A model argument as a path: a shipped model's name, or the path itself."""
    if model is None:
        model = DEFAULT_MODEL
    path = pathlib.Path(model)
    if not path.exists() and (model_dir.shipped_weights_dir() / str(model)).exists():
        return model_dir.shipped_weights_dir() / str(model)
    return path


def _prepared_inputs(images_or_paths, npix, pixel_scale):
    """Prepared images of an array, a path, or a list of paths."""
    if isinstance(images_or_paths, (str, os.PathLike)):
        images_or_paths = [images_or_paths]
    if isinstance(images_or_paths, (list, tuple)) and images_or_paths \
            and all(isinstance(p, (str, os.PathLike)) for p in images_or_paths):
        return [item for p in images_or_paths for item in iter_prepared(p, npix, pixel_scale)]
    data = np.asarray(images_or_paths)
    if data.dtype.kind not in "fiub":
        raise InputError(f"images of dtype {data.dtype}: give a numeric array, a path or a "
                         "list of paths")
    images = as_stack("images", np.asarray(data, dtype=np.float64))
    if not np.isfinite(images).all():
        raise InputError("images contain NaN or Inf values; mask bad pixels with exactly 0")
    scale = conventions.PIXEL_SCALE if pixel_scale is None else float(pixel_scale)
    if not (np.isfinite(scale) and scale > 0):
        raise InputError(f"pixel scale {pixel_scale!r} must be a positive number of arcsec")
    return list(iter_prepared_array(images, (scale, scale), npix))


def predict(images_or_paths, model=None, pixel_scale=None, batch_size=100,
            trust_savedmodel=False):
    """Predict lens parameters, with the image preparation of ``ensai predict``.

    Each image is checked, resampled to 0.04 arcsec when ``pixel_scale`` (or
    the FITS WCS) says otherwise, zero-padded or cropped to the network's
    field and normalised to an arc peak of 1 (:mod:`ensai_tf.preprocess.images`).

    Args:
        images_or_paths: an ``(H, W)``, ``(N, H, W)`` or ``(N, H, W, 1)``
            array (masked pixels exactly 0; 0.04 arcsec pixels unless
            ``pixel_scale`` is given), or a ``.npy``/FITS path, or a list of paths.
        model: a model folder, ``.keras`` file or SavedModel folder, or the
            name of a shipped model (``"combined"``, ``"alexnet"``, ...);
            default the shipped combined network.
        pixel_scale: pixel side of the images, arcsec (overrides a FITS WCS).
        batch_size: images per forward pass.
        trust_savedmodel: as :func:`ensai_tf.inference.load_predictor`.

    Returns:
        dict of column name -> ``(N,)`` numpy array, the columns of ``ensai
        predict``'s table (:func:`ensai_tf.tables.output_columns`): the five
        parameters (arcsec, dimensionless), ``q``, ``pa_deg`` (degrees),
        ``x_pix``/``y_pix`` (input pixels), ``ra_deg``/``dec_deg`` (NaN without
        a celestial WCS), ``flags`` (semicolon-separated quality flags,
        :mod:`ensai_tf.flags`, empty when none), ``ood_percentile`` (0-100,
        NaN without a reference), and for Gaussian heads ``<name>_std``,
        ``<name>_lo68``, ``<name>_hi68``.

    Raises:
        InputError: bad images or paths.
        ModelDirError: a missing or corrupt model.
    """
    path = _resolve_model(model)
    predict_fn, npix = load_predictor(path, raw=True, trust_savedmodel=trust_savedmodel)
    prepared = _prepared_inputs(images_or_paths, npix, pixel_scale)
    raw = np.concatenate([predict_fn(np.stack([p.image for p in prepared[i:i + batch_size]]))
                          for i in range(0, len(prepared), max(1, int(batch_size)))])
    head, n_targets = uncertainty.head_layout(raw.shape[1])
    rows = result_rows(prepared, raw[:, :conventions.NUM_PARAMS])
    if raw.shape[1] > conventions.NUM_PARAMS:
        calibration = load_calibration(path) if head != "point" else None
        for row, extra in zip(rows, uncertainty_columns(raw, calibration)):
            row.update(extra)
    for row, extra in zip(rows, flag_columns(prepared, raw, model_thresholds(load_calibration(path)))):
        row.update(extra)
    columns = [c for c in output_columns(head, n_targets)
               if c not in ("file", "index", "pa_frame", "flags")]
    out = {c: np.array([np.nan if r[c] is None else r[c] for r in rows], dtype=np.float64)
           for c in columns}
    out["pa_frame"] = np.array([r["pa_frame"] for r in rows])
    out["flags"] = np.array([";".join(r["flags"]) for r in rows], dtype=object)
    return out


def load_model(path):
    """Load a model folder (or ``.keras`` file) as one plain Keras model.

    The combined network stored by reference (``combiner.json``) is rebuilt
    from its backbone files. A SavedModel is a program and is not loaded here
    (see :func:`ensai_tf.inference.load_for_inference`).

    Args:
        path: model folder or ``.keras`` file, or the name of a shipped model.

    Returns:
        ``keras.Model``: images ``(B, 192, 192, 1)`` -> ``(B, width)`` raw
        outputs (the five parameters first, arcsec and dimensionless),
        computing in float32.

    Raises:
        ModelDirError: no ``.keras`` or combined model, or a corrupt one.
    """
    path = _resolve_model(path)
    kind, _ = model_dir.model_source(path)
    if kind not in ("keras", "combined"):
        raise ModelDirError(f"{str(path)!r} holds no model.keras or combiner.json; "
                            "ensai_tf.load_model loads those (a SavedModel is a program)")
    predict_fn, _ = load_predictor(path, raw=True)
    return predict_fn.holder
