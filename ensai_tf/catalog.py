"""Survey-scale prediction from a catalogue of cutouts: ``ensai predict MODEL --catalog``.

A catalogue is a CSV file with a header line and one row per lens, with the columns
``path`` (required: a ``.npy`` or FITS file holding one image; relative to the
catalogue's folder unless absolute), ``ra``/``dec`` (ICRS degrees; the file needs a
celestial WCS) or ``x``/``y`` (0-based file column and row) for the lens position,
and ``band2``: a second, redder filter (FITS), which sends the row through the
two-band path of ``ensai predict --bands`` (docs/design.md §8.4; ``lens_light``
chooses fitted subtraction, ICA or both) with ``path`` the bluer band; a network
trained on two bands (docs/design.md §5.10) reads both itself, and then every row
needs its ``band2``. Without a
position a row is predicted at its image's centre, exactly as ``ensai predict FILE``;
with one, the 7.68 arcsec field is cut around it
(:func:`ensai_tf.preprocess.window.prepare_lens_file`). A single-band row's lens light
is fitted and subtracted as ``ensai predict``'s (``subtract_lens_light``). The
catalogue is read and checked by :mod:`ensai_tf.catalog_rows`.

:func:`predict_catalog` streams: rows are read, prepared and predicted
``batch_size`` at a time and appended to the output, flushed after each batch
(:class:`ensai_tf.tables.AppendTable`); memory stays flat (plus 5 bytes per
catalogue row). Its rules:

- **The catalogue is checked first**, whole, before the model loads: a bad header
  (no ``path``, an unknown or repeated column) or cell (not a number, half or two
  positions) stops the run with one line naming the catalogue line.
- **Output**: ``ensai predict``'s table (:func:`ensai_tf.tables.output_columns`)
  after a ``catalog_row`` column (0-based catalogue row); ``file`` is the row's
  ``path`` as written; ``lens_light_path`` the lens-light path. CSV or JSON lines
  (``.jsonl``); a ``.json`` array cannot grow row by row and is refused.
- **An unusable image is skipped**, not fatal: a missing, corrupt, blank or
  badly-positioned image is reported on stderr (one line naming the catalogue
  line) and in ``<output>.errors.csv`` (:data:`ERROR_COLUMNS`; made only when
  something fails, removed when a run starts or resumes the output), and the run
  goes on. Only if every lens fails does the run end in an error.
- **Shards**: ``shard=(i, n)`` takes the rows with ``catalog_row % n == i``;
  shards are disjoint and together give the unsharded output's rows, to the bit
  when they use the same ``batch_size``: every forward pass holds that many
  images (or the catalogue's row count if smaller; the last batch is padded),
  since CPU kernels round float32 sums by batch size. Each shard needs its own
  output (a second run on a file being written is refused).
- **Resume**: ``resume=True`` keeps the output's rows, drops an incomplete last
  line left by a killed run, and predicts the rows not there yet (failed ones
  again). A row naming another file, of another shard, or another header is
  refused. Without ``resume`` an existing output is replaced only with
  ``overwrite``.

Command line: ``ensai predict MODEL --catalog CSV --out OUT.csv [--shard I/N] [--resume]``.
"""

import array
import dataclasses
import os
import sys
import time
import zlib

import numpy as np

from ensai_tf import conventions
from ensai_tf.catalog_rows import CATALOG_COLUMNS, CatalogEntry, iter_catalog, parse_shard
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.flag_messages import FLAG_ADVICE
from ensai_tf.flags import FLAG_NAMES
from ensai_tf.inference import result_rows
from ensai_tf.prediction import lens_light_lines, load_table_predictor
from ensai_tf.preprocess.window import prepare_lens_file
from ensai_tf.realdata.lens_light import (DEFAULT_LENS_LIGHT_PATH, DEFAULT_SINGLE_BAND_MODE,
                                          NETWORK_LENS_LIGHT_PATH, check_lens_light_path,
                                          check_single_band_mode)
from ensai_tf.realdata.pipeline import cutout_row, prepare_two_band, two_band_path
from ensai_tf.tables import AppendTable, append_format, check_writable

__all__ = [
    "CATALOG_COLUMNS",
    "ERROR_COLUMNS",
    "ROW_COLUMN",
    "CatalogEntry",
    "CatalogSummary",
    "errors_path",
    "iter_catalog",
    "parse_shard",
    "predict_catalog",
    "prepare_entry",
]

ROW_COLUMN = "catalog_row"
"""First column of the output: the 0-based catalogue row (header excluded) of the lens."""

ERROR_COLUMNS = (ROW_COLUMN, "line", "path", "error")
"""Columns of ``<output>.errors.csv``: catalogue row, catalogue line (1-based, the header is
line 1), the row's ``path`` and the one-line reason."""

_STDERR_ERRORS = 20  # failures echoed to stderr when an errors file keeps them all


@dataclasses.dataclass(frozen=True)
class CatalogSummary:
    """What :func:`predict_catalog` did: rows ``written`` by this run, lenses ``failed``
    (skipped), rows ``skipped`` as already in the output, the ``total`` rows of the shard,
    ``network_seconds`` and ``wall_seconds`` (first row read to last written), the
    ``output`` and its ``errors`` file (present only when ``failed``; None for ``'-'``)."""

    written: int
    failed: int
    skipped: int
    total: int
    network_seconds: float
    wall_seconds: float
    output: str
    errors: str = None


def errors_path(output):
    """The errors file beside an output: ``<output>.errors.csv`` (None for ``'-'``).

    Example:
        >>> errors_path("run/out.csv")
        'run/out.csv.errors.csv'
    """
    return None if str(output) == "-" else f"{output}.errors.csv"


def prepare_entry(entry, npix=conventions.NPIX, pixel_scale=None, hdu=None, psf_fwhm=None,
                  cosmic_rays=None, lens_light=DEFAULT_LENS_LIGHT_PATH, bands=1):
    """The network input of one catalogue row.

    Args:
        entry: a :class:`CatalogEntry`.
        npix: network input side, pixels.
        pixel_scale, hdu, psf_fwhm, cosmic_rays: as :func:`predict_catalog`.
        lens_light: the two-band path (:func:`ensai_tf.realdata.pipeline.two_band_path`).
        bands: bands the network reads; 2 needs the row's ``band2``.

    Returns:
        ``(item, cutout)``: the :class:`~ensai_tf.preprocess.images.PreparedImage`
        (``file`` is the row's ``path``), and for a two-band row its
        :class:`~ensai_tf.realdata.cutout.TwoBandCutout` (None otherwise).

    Raises:
        InputError: the image cannot be read or used (naming the file).
    """
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)  # "--hdu 1" from the command line is an index
    if bands == 2:
        if entry.band2 is None:
            raise InputError(f"{entry.path}: the model reads two bands (it was trained on blue "
                             "and red); give this row its band2")
        lens_light = NETWORK_LENS_LIGHT_PATH  # the network separates the lens light itself
    if entry.band2 is None:
        return prepare_lens_file(entry.file, entry.path, entry.pixel, entry.sky, npix,
                                 pixel_scale, hdu), None
    item, cutout, _ = prepare_two_band(entry.file, entry.band2, entry.path, entry.pixel,
                                       entry.sky, psf_fwhm=psf_fwhm, cosmic_rays=cosmic_rays,
                                       npix=npix, hdu=hdu, pixel_scale=pixel_scale,
                                       lens_light=lens_light)
    return item, cutout


class _ErrorLog:
    """Failed rows: one line on stderr each (the first few when a file keeps them) and a CSV."""

    def __init__(self, catalog, path):
        self.catalog, self.path, self.count, self._table = catalog, path, 0, None
        if path is not None and os.path.lexists(path):
            os.unlink(path)  # the failures of an earlier run of this output

    def add(self, entry, message):
        self.count += 1
        if self.path is None or self.count <= _STDERR_ERRORS:
            print(f"ensai predict: {self.catalog} line {entry.line}: {message} (skipped)",
                  file=sys.stderr)
        elif self.count == _STDERR_ERRORS + 1:
            print(f"ensai predict: further failures are listed in {self.path} only",
                  file=sys.stderr)
        if self.path is not None:
            self._table = self._table or AppendTable(self.path, ERROR_COLUMNS)
            self._table.write([dict(zip(ERROR_COLUMNS, (entry.row, entry.line, entry.path,
                                                        message)))])

    def close(self):
        if self._table is not None:
            self._table.close()


def _check_request(catalog, out, shard, resume, overwrite, batch_size, lens_light, subtract):
    """Refuse bad arguments before any work; return the shard."""
    shard = parse_shard(shard)
    if lens_light not in (None, NETWORK_LENS_LIGHT_PATH):
        check_lens_light_path(lens_light)
    check_single_band_mode(subtract)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise InputError(f"batch size {batch_size!r} must be an integer >= 1")
    if resume and overwrite:
        raise InputError("give --resume (continue the output) or --overwrite, not both")
    if resume and out == "-":
        raise InputError("--resume needs an output file (--output FILE.csv), not stdout")
    check_writable(out)
    append_format(out)
    if out != "-" and os.path.abspath(out) == os.path.abspath(catalog):
        raise InputError(f"output {out!r} is the catalogue itself")
    if out != "-" and os.path.lexists(out) and not (resume or overwrite):
        raise InputError(f"output {out!r} already exists; pass --resume to continue it, "
                         "--overwrite to replace it, or choose a new file name")
    return shard


def _done_rows(table, digests, shard):
    """A bytearray marking the catalogue rows already in the output (checked against it)."""
    i, n = shard
    done = bytearray(len(digests))
    for line, row in table.existing_rows():
        where = f"{table.output} line {line}"
        try:
            r = int(row[ROW_COLUMN])
        except (TypeError, ValueError):
            raise InputError(f"{where}: {ROW_COLUMN} {str(row[ROW_COLUMN])[:40]!r} is not a row "
                             "number; the file is not a catalogue table") from None
        if not 0 <= r < len(digests) or zlib.crc32(str(row["file"]).encode()) != digests[r]:
            raise InputError(f"{where}: {ROW_COLUMN} {r} ({str(row['file'])[:80]!r}) is not that "
                             "row of the catalogue; the output was written from another catalogue")
        if r % n != i:
            raise InputError(f"{where}: {ROW_COLUMN} {r} belongs to another shard than {i}/{n}; "
                             "give each shard its own output file")
        done[r] = 1
    return done


def predict_catalog(model, catalog, out, shard=(0, 1), resume=False, overwrite=False,
                    batch_size=100, pixel_scale=None, hdu=None, psf_fwhm=None, cosmic_rays=None,
                    symmetrize=False, trust_savedmodel=False, progress=True,
                    lens_light=None, subtract_lens_light=DEFAULT_SINGLE_BAND_MODE):
    """Predict every lens of a catalogue (or of one shard) into a table, streaming.

    The catalogue, the output and the rules on failures, shards and resuming
    are those of the module's description.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        catalog: the catalogue CSV file.
        out: ``.csv`` or ``.jsonl`` output file, or ``'-'`` for CSV on stdout.
        shard: ``(i, n)`` or ``"i/n"``: predict the rows with ``catalog_row % n == i``.
        resume: keep the rows already in ``out`` and predict the others.
        overwrite: replace an existing ``out`` (without ``resume``).
        batch_size: images per forward pass and per write.
        pixel_scale: pixel side of all images, arcsec (overrides the WCS).
        hdu: FITS HDU to read (index or EXTNAME); None takes the first image.
        psf_fwhm: ``(blue, red)`` PSF FWHM of two-band rows, arcsec, or None.
        cosmic_rays: cosmic-ray detection of two-band rows, or None.
        symmetrize, trust_savedmodel: as :func:`ensai_tf.prediction.predict_files`.
        progress: True prints a line on stderr at each tenth of the rows;
            a callable is called as ``progress(done, total)`` after each batch
            (rows handled by this run, rows it has to handle); False is silent.
        lens_light: the lens-light path of two-band rows for a one-band
            network, ``"subtract"`` (None: the default), ``"ica"`` or
            ``"subtract+ica"`` (``ensai predict --lens-light``); a two-band
            network reads both bands itself and refuses a path.
        subtract_lens_light: single-band rows: ``"auto"`` (default),
            ``"always"`` or ``"never"`` (:meth:`ensai_tf.prediction.TablePredictor.rows`).

    Returns:
        :class:`CatalogSummary`.

    Raises:
        InputError: a bad catalogue, shard, batch size or output (one line naming
            it), an existing output without ``resume``/``overwrite``, or every lens failing.
        ModelDirError: a missing or corrupt model.
    """
    out, catalog = os.fspath(out), os.fspath(catalog)
    shard = _check_request(catalog, out, shard, resume, overwrite, batch_size, lens_light,
                           subtract_lens_light)
    # the whole catalogue is checked before the model loads; resume checks the output against
    # a CRC-32 of each row's path
    digests = array.array("I", (zlib.crc32(e.path.encode()) for e in iter_catalog(catalog)))
    total = len(range(shard[0], len(digests), shard[1]))
    predictor = load_table_predictor(model, symmetrize, trust_savedmodel, two_band=True)
    lens_light = two_band_path(lens_light, predictor.bands)
    table = AppendTable(out, (ROW_COLUMN, *predictor.columns), resume=resume)
    errors = None
    try:
        if table.dropped:
            print(f"ensai predict: dropped an incomplete last line ({table.dropped} bytes) of "
                  f"{out}, left by an interrupted run", file=sys.stderr)
        done = _done_rows(table, digests, shard) if resume else bytearray(len(digests))
        errors = _ErrorLog(catalog, errors_path(out))
        # every forward pass has the same size, so a lens's numbers do not depend on its shard
        state = _Run(predictor, table, progress, total - sum(done), min(batch_size, len(digests)),
                     (lens_light, subtract_lens_light))
        batch = []
        for entry in iter_catalog(catalog, shard):
            if done[entry.row]:
                continue
            try:
                batch.append((entry, *prepare_entry(entry, predictor.npix, pixel_scale, hdu,
                                                    psf_fwhm, cosmic_rays, lens_light,
                                                    predictor.bands)))
            except (InputError, OSError, ValueError) as err:
                if isinstance(err, ModelDirError):
                    raise
                errors.add(entry, " ".join(str(err).split()) or type(err).__name__)
                state.handled += 1
            if len(batch) == batch_size:
                state.write(batch)
                batch = []
        if batch:
            state.write(batch)
        state.report()
    finally:
        table.close()
        if errors is not None:
            errors.close()
    summary = CatalogSummary(state.written, errors.count, sum(done), total, predictor.seconds,
                             time.perf_counter() - state.start, out, errors_path(out))
    _print_summary(summary, shard, batch_size, state.flagged,
                   lens_light_lines(predictor, summary.written, subtract_lens_light))
    if summary.written == 0 and summary.failed:
        raise InputError(f"no lens could be predicted: all {summary.failed} failed"
                         + (f"; see {summary.errors}" if summary.errors else ""))
    return summary


class _Run:
    """The counters and writes of one :func:`predict_catalog` run."""

    def __init__(self, predictor, table, progress, total, batch_size, lens_light):
        self.predictor, self.table, self.progress, self.batch_size = (predictor, table, progress,
                                                                      batch_size)
        self.path, self.subtract = lens_light
        self.total, self.handled, self.written, self.next_tenth = total, 0, 0, 1
        self.flagged, self.start = {}, time.perf_counter()

    def write(self, batch):
        """Predict one batch of ``(entry, item, cutout)`` and append its rows."""
        def make_rows(prepared, params):
            rows = []
            for (entry, item, cutout), p in zip(batch, params):
                row = (cutout_row(cutout, p, entry.path, self.path) if cutout is not None
                       else result_rows([item], p[None])[0])
                rows.append({ROW_COLUMN: entry.row, **row})
            return rows

        rows = self.predictor.rows([item for _, item, _ in batch], make_rows, self.batch_size,
                                   self.subtract, [cutout is None for _, _, cutout in batch])
        self.table.write(rows)
        for row in rows:
            for name in row["flags"]:
                self.flagged[name] = self.flagged.get(name, 0) + 1
        self.written += len(rows)
        self.handled += len(rows)
        self.report()

    def report(self):
        """Tell the progress callback, or print a line at each tenth of the rows."""
        if callable(self.progress):
            self.progress(self.handled, self.total)
        elif self.progress and self.total and self.handled * 10 >= self.next_tenth * self.total:
            rate = self.handled / max(time.perf_counter() - self.start, 1e-9)
            print(f"ensai predict: {self.handled}/{self.total} lenses "
                  f"({100 * self.handled // self.total}%), {rate:.1f} lenses per second",
                  file=sys.stderr)
            self.next_tenth = self.handled * 10 // self.total + 1


def _print_summary(summary, shard, batch_size, flagged, lens_light):
    """The closing line on stderr, the ``lens_light`` lines, one warning line per flag raised."""
    rate = summary.written / max(summary.wall_seconds, 1e-9)
    ms = 1e3 * summary.network_seconds / max(summary.written, 1)
    failed = f"{summary.failed} failed"
    if summary.failed and summary.errors:
        failed += f" (listed in {summary.errors})"
    print(f"ensai predict: {summary.written} lenses written to {summary.output} in "
          f"{summary.wall_seconds:.1f} s ({rate:.1f} lenses per second; network {ms:.2f} ms per "
          f"lens, batch {batch_size}); {failed}; {summary.skipped} already there; "
          f"shard {shard[0]}/{shard[1]} of {summary.total} rows", file=sys.stderr)
    for line in lens_light:
        print(line, file=sys.stderr)
    for name in FLAG_NAMES:
        if flagged.get(name):
            print(f"ensai predict: warning: {flagged[name]} lens{'es' * (flagged[name] > 1)} "
                  f"flagged {name} (the flags column says which): {FLAG_ADVICE[name]}",
                  file=sys.stderr)
