"""Prediction tables: their columns, and CSV/JSON files written whole, streamed or appended.

A table of :func:`write_table` or :class:`TableStream` is published only when
complete: it is written under a temporary name in the destination folder and
renamed, so an error or Ctrl-C never leaves half a file and never clobbers an
existing one. ``'-'`` writes CSV to stdout.

An :class:`AppendTable` (``ensai predict --catalog``) is the other kind: rows
are appended to the output itself and flushed after each batch, so a run that
is killed keeps what it wrote and a later run resumes it. Only formats that
can grow line by line qualify (:func:`append_format`): CSV and JSON lines.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> write_table([{"file": "a.npy", "index": 0, "theta_e": 1.2}], str(out),
    ...             columns=("file", "index", "theta_e"))
    >>> out.read_text().splitlines()[1]
    'a.npy,0,1.2'
"""

import csv
import fcntl
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
import uuid

from ensai_tf import conventions
from ensai_tf.errors import InputError

__all__ = [
    "APPEND_FORMATS",
    "AppendTable",
    "FLAG_COLUMNS",
    "INTERVAL_LEVEL",
    "LENS_LIGHT_COLUMN",
    "OUTPUT_COLUMNS",
    "PA_FRAME_IMAGE",
    "PA_FRAME_SKY",
    "TableStream",
    "append_format",
    "check_writable",
    "output_columns",
    "output_format",
    "write_table",
]

PA_FRAME_SKY = "east_of_north"
"""``pa_frame`` of a position angle measured east of north (the file has a celestial WCS)."""
PA_FRAME_IMAGE = "image_x_towards_y"
"""``pa_frame`` of a position angle measured from +x (column) towards +y (row)."""
FLAG_COLUMNS = ("flags", "ood_percentile")
"""Quality columns (:mod:`ensai_tf.flags`): flag names (semicolon-separated in CSV, a list in
JSON, empty when none) and the out-of-distribution percentile against the validation split."""
LENS_LIGHT_COLUMN = "lens_light_path"
"""How the lens light left the image (:mod:`ensai_tf.realdata.lens_light`): ``subtract``,
``ica`` or ``subtract+ica`` for two bands, ``subtract`` or ``none`` for one; always the last
column."""
OUTPUT_COLUMNS = ("file", "index", *conventions.PARAM_NAMES, "q", "pa_deg", "pa_frame",
                  "x_pix", "y_pix", "ra_deg", "dec_deg", *FLAG_COLUMNS, LENS_LIGHT_COLUMN)
"""Columns of a point-estimate network's table; see :func:`output_columns` for the others."""

APPEND_FORMATS = ("csv", "jsonl")
"""Formats an :class:`AppendTable` writes: CSV, and JSON lines (one JSON object per line)."""

INTERVAL_LEVEL = 0.68
"""Level of the per-parameter intervals in ``ensai predict``'s table."""


def output_columns(head="point", n_targets=conventions.NUM_PARAMS):
    """Columns of ``ensai predict``'s table for a network's outputs.

    Args:
        head: ``"point"``, ``"diagonal"`` or ``"full"``.
        n_targets: 5, or 7 with the shear.

    Returns:
        ``OUTPUT_COLUMNS`` without its last, then ``gamma_1``, ``gamma_2`` for
        shear outputs, then for Gaussian heads ``<name>_std``, ``<name>_lo68``
        and ``<name>_hi68`` per target (JSON rows also carry ``covariance``),
        and last :data:`LENS_LIGHT_COLUMN`.

    Example:
        >>> output_columns("diagonal")[-2:]
        ('y_l_hi68', 'lens_light_path')
    """
    names = conventions.target_names(n_targets)
    cols = list(OUTPUT_COLUMNS[:-1]) + list(names[conventions.NUM_PARAMS:])
    if head != "point":
        for suffix in ("std", "lo68", "hi68"):
            cols += [f"{name}_{suffix}" for name in names]
    return tuple(cols) + (LENS_LIGHT_COLUMN,)


def _csv_cell(value):
    """A CSV cell: None empty, a list of names joined by semicolons, anything else as is."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return value


def output_format(output):
    """The table format an output name asks for.

    Args:
        output: a ``.csv`` or ``.json`` path, or ``'-'`` for CSV on stdout.

    Returns:
        ``"csv"`` or ``"json"``.

    Raises:
        InputError: any other extension.
    """
    if output == "-":
        return "csv"
    suffix = pathlib.Path(output).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InputError(f"output {output!r}: unknown format {suffix or '(none)'}; "
                         "use a .csv or .json file, or '-' for CSV on stdout")
    return suffix[1:]


def check_writable(output):
    """Refuse an output file that cannot be written, before any work is done.

    Args:
        output: file path, or ``'-'`` (always writable).

    Raises:
        InputError: the path is a folder, its folder does not exist, or it is
            not writable; the message names it.
    """
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
    fmt = output_format(output)
    buf = io.StringIO()
    if fmt == "json":
        json.dump(rows, buf, indent=1)
        buf.write("\n")
    else:
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
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


class TableStream:
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
        self.format = output_format(output)
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
                    self._csv.writerow({k: _csv_cell(v) for k, v in row.items()})
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


def append_format(output):
    """The format of a table written row by row and resumable (:class:`AppendTable`).

    Args:
        output: a ``.csv`` or ``.jsonl`` path, or ``'-'`` for CSV on stdout.

    Returns:
        ``"csv"`` or ``"jsonl"``.

    Raises:
        InputError: a ``.json`` file (one JSON array, which cannot grow row by
            row or be resumed) or any other extension.

    Example:
        >>> append_format("out.jsonl")
        'jsonl'
    """
    if output == "-":
        return "csv"
    suffix = pathlib.Path(output).suffix.lower()
    if suffix == ".json":
        raise InputError(f"output {output!r}: a .json table is one JSON array, which cannot be "
                         "written as it goes or resumed; use .csv or .jsonl (one JSON object "
                         "per line)")
    if suffix[1:] not in APPEND_FORMATS:
        raise InputError(f"output {output!r}: unknown format {suffix or '(none)'}; use a .csv "
                         "or .jsonl file, or '-' for CSV on stdout")
    return suffix[1:]


class AppendTable:
    """Rows appended to a CSV or JSON-lines file and flushed batch by batch, resumable.

    The file is locked (``flock``) while open, so a second run writing the
    same output is refused instead of interleaving lines. A new table (or
    ``resume=False``) starts empty; ``resume=True`` keeps the rows there and
    first drops an incomplete last line, the trace of a run killed in the
    middle of a write. ``'-'`` writes CSV to stdout (no resume).

    Args:
        output: ``.csv`` or ``.jsonl`` path, or ``'-'`` (:func:`append_format`).
        columns: the table's columns: the CSV header, and the keys every JSON
            line must hold (other keys are written to JSON lines only).
        resume: keep the rows already in ``output``.

    Attributes:
        dropped: bytes of an incomplete last line removed on resume (0 when none).

    Raises:
        InputError: the output cannot be opened or locked, or (on resume) its
            header is not ``columns``.
    """

    def __init__(self, output, columns, resume=False):
        self.output = output
        self.format = append_format(output)
        self.columns = tuple(columns)
        self.dropped = 0
        self._file = None
        if output == "-":
            if resume:
                raise InputError("a table on stdout ('-') cannot be resumed; give a file")
            self._file = sys.stdout
        else:
            try:
                self._file = open(output, "a+", newline="", encoding="utf-8")
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                if resume:
                    self.dropped = self._drop_partial_line()
                    self._check_header()
                else:
                    self._file.truncate(0)
            except BlockingIOError:
                self.close()
                raise InputError(f"output {output!r} is being written by another run; give "
                                 "each run (each --shard) its own output file") from None
            except OSError as err:
                self.close()
                raise InputError(f"cannot write {output!r}: {err}") from None
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, lineterminator="\n",
                                   extrasaction="ignore") if self.format == "csv" else None
        if self._csv is not None and (output == "-" or os.fstat(self._file.fileno()).st_size == 0):
            self._csv.writeheader()
            self._flush()

    def _drop_partial_line(self):
        """Cut the file after its last newline; return the bytes dropped."""
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        end, chunk = size, 1 << 16
        while end > 0:
            start = max(0, end - chunk)
            data = os.pread(fd, end - start, start)
            newline = data.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            self._file.truncate(keep)
        self._file.seek(0, os.SEEK_END)
        return size - keep

    def _check_header(self):
        """Refuse to append to a CSV whose header is not this table's."""
        if self.format != "csv" or os.fstat(self._file.fileno()).st_size == 0:
            return
        self._file.seek(0)
        header = next(csv.reader([self._file.readline()]), [])
        self._file.seek(0, os.SEEK_END)
        if tuple(header) != self.columns:
            raise InputError(f"output {self.output!r} has the columns {','.join(header)[:200]!r}, "
                             "not those of this table; resume with the model and settings that "
                             "wrote it, or give a new output file")

    def existing_rows(self):
        """Yield ``(line number, row dict)`` of the rows already in the file.

        CSV values are the strings of the file; JSON lines are parsed.

        Raises:
            InputError: a line that is not a row of this table (names it).
        """
        if self.output == "-":
            return
        with open(self.output, newline="", encoding="utf-8") as f:
            if self.format == "csv":
                reader = csv.DictReader(f)
                for row in reader:
                    if None in row or None in row.values():
                        raise InputError(f"{self.output} line {reader.line_num}: "
                                         f"{len(row) - (None in row)} cells where the header has "
                                         f"{len(self.columns)}; the file is not this table")
                    yield reader.line_num, row
                return
            for number, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict) or not set(self.columns) <= set(row):
                    raise InputError(f"{self.output} line {number}: not a JSON object with this "
                                     "table's columns; the file is not this table")
                yield number, row

    def write(self, rows):
        """Append row dicts and flush them to the operating system.

        Args:
            rows: dicts keyed by the table's columns; None values become empty
                CSV cells (``null`` in JSON lines).
        """
        try:
            for row in rows:
                if self._csv is not None:
                    self._csv.writerow({k: _csv_cell(v) for k, v in row.items()})
                else:
                    self._file.write(json.dumps(row) + "\n")
            self._flush()
        except OSError as err:
            raise InputError(f"cannot write {self.output!r}: {err}") from None

    def _flush(self):
        self._file.flush()

    def close(self):
        """Flush and close the file, releasing its lock (idempotent; stdout stays open)."""
        file, self._file = self._file, None
        if file is not None and file is not sys.stdout and not file.closed:
            file.close()
