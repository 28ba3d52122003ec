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
from ensai_tf.flag_messages import warning_lines
from ensai_tf.flags import flag_columns, model_thresholds
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.inference import (input_bands, load_calibration, load_predictor, result_rows,
                                uncertainty_columns)
from ensai_tf.preprocess.images import iter_prepared, iter_prepared_array
from ensai_tf.preprocess.reading import FITS_SUFFIXES, as_stack
from ensai_tf.preprocess.window import prepare_lens_file
from ensai_tf.realdata.lens_light import (DEFAULT_SINGLE_BAND_MODE, NETWORK_LENS_LIGHT_PATH,
                                         NO_LENS_LIGHT_PATH, check_single_band_mode,
                                         subtract_single_band)
from ensai_tf.run_dir import run_config
from ensai_tf.tables import (LENS_LIGHT_COLUMN, TableStream, check_writable, output_columns,
                             output_format)

__all__ = ["DEFAULT_MODEL", "LENS_LIGHT_FLAG", "TablePredictor", "load_model",
           "load_table_predictor", "lens_light_lines", "predict", "predict_files"]

DEFAULT_MODEL = "combined"
"""The shipped model :func:`predict` uses by default (a folder of ``trained_weights/``)."""

LENS_LIGHT_FLAG = "lens_light"
"""The quality flag (:mod:`ensai_tf.flags`) whose image gets its lens light subtracted with
``--subtract-lens-light auto``."""


def _batches(files, npix, pixel_scale, batch_size, position=None, sky=None):
    """Lists of at most ``batch_size`` prepared images, streamed over the files (the field
    cut around ``position`` or ``sky`` in the one file when given)."""
    batch = []
    for f in files:
        items = (iter_prepared(f, npix, pixel_scale) if position is None and sky is None
                 else [prepare_lens_file(f, None, position, sky, npix, pixel_scale)])
        for item in items:
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
        subtracted: names of the single-band images whose lens light was
            subtracted so far (:meth:`rows`).
        fit_failures: ``"name: reason"`` of the images whose lens-light fit
            failed (predicted as given).
        lens_light_network: the network was trained on images with their lens
            light (``simulate.lens_light``): ``"auto"`` subtracts nothing, the
            ``lens_light`` flag is not raised, and rows say
            ``lens_light_path=network``.
        bands: bands the network reads (2: blue and red as channels, docs/design.md
            §5.10); the quality flags of a two-band image are those of its blue band,
            the first channel, as ``ensai calibrate`` fits them.
    """

    predict_fn: object
    npix: int
    head: str
    n_targets: int
    calibration: object
    thresholds: dict
    seconds: float = 0.0
    subtracted: list = dataclasses.field(default_factory=list)
    fit_failures: list = dataclasses.field(default_factory=list)
    lens_light_network: bool = False
    bands: int = 1

    @property
    def columns(self):
        """The table's CSV columns (:func:`ensai_tf.tables.output_columns`)."""
        return output_columns(self.head, self.n_targets)

    def _forward(self, prepared, pad_to):
        """Raw network outputs ``(B, width)`` of prepared images, padded to ``pad_to``."""
        images = np.stack([p.image for p in prepared])
        if pad_to is not None and len(images) < pad_to:
            images = np.concatenate([images, np.repeat(images[-1:], pad_to - len(images), 0)])
        start = time.perf_counter()
        raw = np.array(self.predict_fn(images)[:len(prepared)])
        self.seconds += time.perf_counter() - start
        return raw

    def _subtract(self, prepared, todo, pad_to):
        """Fit and subtract the lens light of ``prepared[i]`` for ``i`` in ``todo``, predict
        them again, and return ``(indices done, their raw outputs, their flag columns)``."""
        done = []
        for i in todo:
            try:
                image, _ = subtract_single_band(prepared[i].image, name=prepared[i].name)
            except InputError as err:
                self.fit_failures.append(" ".join(str(err).split()))
                continue
            prepared[i] = dataclasses.replace(prepared[i], image=image)
            done.append(i)
        if not done:
            return done, None, None
        items = [prepared[i] for i in done]
        raw = self._forward(items, pad_to)
        self.subtracted.extend(item.name for item in items)
        return done, raw, self._flags(items, raw)

    def _flags(self, prepared, raw):
        """The flag columns; a lens-light network's images do not raise ``lens_light``."""
        columns = flag_columns(prepared, raw, self.thresholds)
        if self.lens_light_network:
            for column in columns:
                column["flags"] = [f for f in column["flags"] if f != LENS_LIGHT_FLAG]
        return columns

    def rows(self, prepared, make_rows=result_rows, pad_to=None, subtract="never",
             eligible=None):
        """Table rows of a batch: parameters, intervals and shear, quality flags, lens-light path.

        Args:
            prepared: non-empty list of :class:`ensai_tf.preprocess.images.PreparedImage`.
            make_rows: ``make_rows(prepared, params)`` -> the base row dicts
                from the ``(B, 5)`` parameters (arcsec, -, -, arcsec, arcsec);
                default :func:`ensai_tf.inference.result_rows`.
            pad_to: run the network on batches of exactly this many images
                (repeating the last), so that an image's numbers do not depend
                on how many share its batch: CPU kernels may round float32
                sums differently for another batch size.
            subtract: single-band lens light
                (:data:`ensai_tf.realdata.lens_light.SINGLE_BAND_MODES`): ``"auto"`` fits and subtracts it
                (:func:`ensai_tf.realdata.lens_light.subtract_single_band`) from
                each image that raises the :data:`LENS_LIGHT_FLAG` flag and
                predicts the residual again, ``"always"`` from every image,
                ``"never"`` from none. The row of a subtracted image is that
                of its residual, flags included; an image whose fit fails is
                kept as it was (:attr:`fit_failures`).
            eligible: optional sequence of bools, the images ``subtract`` may
                touch (False for a two-band arc map); default all.

        Returns:
            list of row dicts, one per image, keyed by :attr:`columns`
            (Gaussian heads add ``covariance``); ``lens_light_path`` is
            ``"subtract"`` for a subtracted image, else what ``make_rows``
            put there, else ``"none"``.
        """
        check_single_band_mode(subtract)
        if self.lens_light_network and subtract == "auto":
            subtract = "never"  # it was trained on images with their lens light
        prepared = list(prepared)
        raw = self._forward(prepared, pad_to)
        flags = self._flags(prepared, raw)
        eligible = [True] * len(prepared) if eligible is None else list(eligible)
        todo = [i for i, ok in enumerate(eligible) if ok and (
            subtract == "always" or (subtract == "auto" and LENS_LIGHT_FLAG in flags[i]["flags"]))]
        done, raw_done, flags_done = self._subtract(prepared, todo, pad_to)
        for k, i in enumerate(done):
            raw[i], flags[i] = raw_done[k], flags_done[k]
        rows = make_rows(prepared, raw[:, :conventions.NUM_PARAMS])
        if raw.shape[1] > conventions.NUM_PARAMS:
            for row, extra in zip(rows, uncertainty_columns(raw, self.calibration)):
                row.update(extra)
        for row, extra in zip(rows, flags):
            row.update(extra)
            row.setdefault(LENS_LIGHT_COLUMN, NETWORK_LENS_LIGHT_PATH if self.lens_light_network
                           else NO_LENS_LIGHT_PATH)
        for i in done:
            rows[i][LENS_LIGHT_COLUMN] = "subtract"
        return rows


def lens_light_lines(predictor, total, mode):
    """The lines ``ensai predict`` prints on stderr about single-band lens light.

    Args:
        predictor: the :class:`TablePredictor` after its rows were made.
        total: images predicted.
        mode: the ``--subtract-lens-light`` mode used.

    Returns:
        list of str: one info line when images were subtracted, one warning
        line per failed fit (at most five, then a count).
    """
    lines = []
    if predictor.lens_light_network and mode == "auto":
        lines.append(f"ensai predict: the network was trained on images with their lens light; "
                     f"images are predicted as given ({LENS_LIGHT_COLUMN}="
                     f"{NETWORK_LENS_LIGHT_PATH})")
    k = len(predictor.subtracted)
    if k:
        why = ("--subtract-lens-light always" if mode == "always" else
               f"they raised the {LENS_LIGHT_FLAG} flag; --subtract-lens-light never keeps it")
        lines.append(f"ensai predict: lens light fitted and subtracted in {k} of {total} "
                     f"image{'s' * (total != 1)} ({why}); their rows say "
                     f"{LENS_LIGHT_COLUMN}=subtract and carry the flags of the residual")
    for failure in predictor.fit_failures[:5]:
        lines.append(f"ensai predict: warning: {failure}; predicted with its lens light "
                     f"({LENS_LIGHT_COLUMN}=none)")
    if len(predictor.fit_failures) > 5:
        lines.append(f"ensai predict: warning: {len(predictor.fit_failures) - 5} more lens-light "
                     "fits failed")
    return lines


def load_table_predictor(model, symmetrize=False, trust_savedmodel=False, two_band=False):
    """Load a model for ``ensai predict``'s tables, run its warm-up, read its calibration.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        symmetrize: average each prediction over the eight flips and
            rotations of the image (:func:`ensai_tf.symmetry.symmetrize`;
            point-estimate models only, 8x the time per lens).
        trust_savedmodel: as :func:`ensai_tf.inference.load_predictor`.
        two_band: accept a network that reads two bands (a catalogue whose
            rows have ``band2``).

    Returns:
        :class:`TablePredictor`.

    Raises:
        InputError: ``symmetrize`` with a Gaussian-head or two-band model, or
            a two-band model without ``two_band``.
        ModelDirError: a missing or corrupt model.
    """
    # averaging over flips and rotations works on point estimates: no spread head then
    predict_fn, npix = load_predictor(model, raw=True, trust_savedmodel=trust_savedmodel,
                                      with_spread=not symmetrize)
    bands = input_bands(predict_fn)
    if bands != 1 and (symmetrize or not two_band):
        raise InputError(f"model {str(model)!r} reads two bands (blue and red); give them "
                         "as --bands BLUE.fits RED.fits, or as a catalogue's path and band2"
                         + (" (without --symmetrize)" if two_band else ""))
    if symmetrize:
        predict_fn = symmetry.symmetrize(predict_fn)  # refuses a Gaussian head at the warm-up
    # warm-up: build and trace once, not timed; its width tells the head
    head, n_targets = uncertainty.head_layout(
        predict_fn(np.zeros((1, npix, npix, bands), np.float32)).shape[1])
    calibration = load_calibration(model) if head != "point" else None
    return TablePredictor(predict_fn, npix, head, n_targets, calibration,
                          model_thresholds(load_calibration(model)),
                          lens_light_network=bool(run_config(model).simulate.lens_light),
                          bands=bands)


def _check_position(files, position, sky):
    """Refuse a lens position that cannot be placed: half given, given twice, several files."""
    if (position is not None and None in position) or (sky is not None and None in sky):
        raise InputError("give both --ra and --dec, or both --x and --y")
    if position is not None and sky is not None:
        raise InputError("give the lens position as --ra/--dec or as --x/--y, not both")
    if (position is not None or sky is not None) and len(files) != 1:
        raise InputError(f"a lens position (--x/--y or --ra/--dec) places the lens in one image; "
                         f"got {len(files)} files (use --catalog for many lenses at positions)")


def predict_files(model, files, output="-", pixel_scale=None, batch_size=100, return_rows=True,
                  symmetrize=False, trust_savedmodel=False,
                  subtract_lens_light=DEFAULT_SINGLE_BAND_MODE, position=None, sky=None,
                  thresholds=None):
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
        subtract_lens_light: ``"auto"`` (default): fit and subtract the lens
            light of each image that raises the ``lens_light`` flag and
            predict the residual; ``"always"``; ``"never"``
            (:meth:`TablePredictor.rows`, docs/design.md §8.4). Each row's
            ``lens_light_path`` says ``subtract`` or ``none``.
        position: ``(col, row)`` 0-based pixel of the lens in the one file:
            the field is cut around it
            (:func:`ensai_tf.preprocess.window.prepare_lens_file`); or
        sky: ``(ra, dec)`` ICRS degrees of the lens (the file needs a WCS).
        thresholds: quality-flag thresholds (:func:`ensai_tf.flags.model_thresholds`)
            instead of the model's own.

    Returns:
        The list of row dicts written (see :func:`result_rows`), or their
        count when ``return_rows`` is False.

    Raises:
        InputError: a bad image file, batch size, mode, position or output
            path (the message names it), or ``symmetrize`` with a
            Gaussian-head model.
        ModelDirError: a missing or corrupt model.
    """
    if not files:
        raise InputError("no image files given")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise InputError(f"batch size {batch_size!r} must be an integer >= 1 (images per forward pass)")
    check_single_band_mode(subtract_lens_light)
    _check_position(files, position, sky)
    check_writable(output)
    output_format(output)
    _check_files(files)  # before the seconds of model loading
    predictor = load_table_predictor(model, symmetrize, trust_savedmodel)
    if thresholds is not None:
        predictor.thresholds = thresholds
    table = TableStream(output, predictor.columns)
    kept = [] if return_rows else None
    frames = set()
    flagged = {}
    try:
        for batch in _batches(files, predictor.npix, pixel_scale, batch_size, position, sky):
            rows = predictor.rows(batch, subtract=subtract_lens_light)
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
    for line in lens_light_lines(predictor, n, subtract_lens_light) + warning_lines(flagged):
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
            trust_savedmodel=False, subtract_lens_light=DEFAULT_SINGLE_BAND_MODE):
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
        subtract_lens_light: ``"auto"``, ``"always"`` or ``"never"``, as
            :func:`predict_files`.

    Returns:
        dict of column name -> ``(N,)`` numpy array, the columns of ``ensai
        predict``'s table (:func:`ensai_tf.tables.output_columns`): the five
        parameters (arcsec, dimensionless), ``q``, ``pa_deg`` (degrees),
        ``x_pix``/``y_pix`` (input pixels), ``ra_deg``/``dec_deg`` (NaN without
        a celestial WCS), ``flags`` (semicolon-separated quality flags,
        :mod:`ensai_tf.flags`, empty when none), ``ood_percentile`` (0-100,
        NaN without a reference), for Gaussian heads ``<name>_std``,
        ``<name>_lo68``, ``<name>_hi68``, and ``lens_light_path``
        (``"subtract"`` or ``"none"``).

    Raises:
        InputError: bad images, paths or mode.
        ModelDirError: a missing or corrupt model.
    """
    check_single_band_mode(subtract_lens_light)
    predictor = load_table_predictor(_resolve_model(model), trust_savedmodel=trust_savedmodel)
    prepared = _prepared_inputs(images_or_paths, predictor.npix, pixel_scale)
    step = max(1, int(batch_size))
    rows = [row for i in range(0, len(prepared), step)
            for row in predictor.rows(prepared[i:i + step], subtract=subtract_lens_light)]
    text = ("file", "index", "pa_frame", "flags", LENS_LIGHT_COLUMN)
    out = {c: np.array([np.nan if r[c] is None else r[c] for r in rows], dtype=np.float64)
           for c in predictor.columns if c not in text}
    out["pa_frame"] = np.array([r["pa_frame"] for r in rows])
    out["flags"] = np.array([";".join(r["flags"]) for r in rows], dtype=object)
    out[LENS_LIGHT_COLUMN] = np.array([r[LENS_LIGHT_COLUMN] for r in rows])
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
