"""Reading a catalogue of cutouts: its columns, its rows and its shards.

The catalogue format is that of ``ensai predict MODEL --catalog``
(:mod:`ensai_tf.catalog`): a CSV file with a header line and one row per lens,
columns :data:`CATALOG_COLUMNS`. :func:`iter_catalog` yields its checked rows
(:class:`CatalogEntry`), one shard of them when asked (:func:`parse_shard`); a
bad header or cell is one line naming the catalogue line.
"""

import csv
import dataclasses
import math
import os

from ensai_tf.errors import InputError

__all__ = ["CATALOG_COLUMNS", "CatalogEntry", "iter_catalog", "parse_shard"]

CATALOG_COLUMNS = ("path", "ra", "dec", "x", "y", "band2")
"""The columns a catalogue may have (``path`` is required); any other is refused."""

_RANGES = {"ra": (0.0, 360.0, "degrees"), "dec": (-90.0, 90.0, "degrees"),
           "x": (-1e6, 1e6, "pixels"), "y": (-1e6, 1e6, "pixels")}


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One checked catalogue row: ``row`` (0-based, header excluded), ``line`` (in the file,
    1-based, header included), ``path`` (as written: the output's ``file``), ``file`` and
    ``band2`` (resolved against the catalogue's folder; ``band2`` None for one band), ``sky``
    (``(ra, dec)`` degrees) or ``pixel`` (``(x, y)`` 0-based file pixels), or neither."""

    row: int
    line: int
    path: str
    file: str
    band2: str = None
    sky: tuple = None
    pixel: tuple = None


def parse_shard(shard):
    """A shard as ``(i, n)``, from ``"i/n"`` or a pair, with ``0 <= i < n``.

    Raises:
        InputError: anything else; the message says what a shard is.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
    """
    text = shard if isinstance(shard, str) else "/".join(str(v) for v in shard)
    parts = text.strip().split("/")
    try:
        i, n = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        i, n = None, None
    if i is None or not 0 <= i < n <= 10**6:
        raise InputError(f"shard {text[:40]!r} must be I/N with 0 <= I < N <= 10^6, e.g. 0/4 "
                         "for the first of four parts (rows with catalog_row % N == I)")
    return i, n


def _number(where, name, text):
    """A finite float in the column's range, None for an empty cell."""
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {name} {text[:40]!r} is not a number") from None
    lo, hi, unit = _RANGES[name]
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InputError(f"{where}: {name} {text[:40]!r} is out of range; give a value from "
                         f"{lo:g} to {hi:g} {unit}")
    return value


def _header(catalog, cells, line):
    """Column name -> cell index, checking the header."""
    names = [c.strip().lower() for c in cells]
    where = f"{catalog} line {line}"
    for name in names:
        if name not in CATALOG_COLUMNS:
            raise InputError(f"{where}: unknown column {name[:40]!r}; the columns are path "
                             "(required), ra, dec, x, y, band2")
        if names.count(name) > 1:
            raise InputError(f"{where}: column {name!r} appears twice")
    if "path" not in names:
        raise InputError(f"{where}: no 'path' column (the header must name the columns: path "
                         "and optionally ra, dec, x, y, band2)")
    for a, b in (("ra", "dec"), ("x", "y")):
        if (a in names) != (b in names):
            raise InputError(f"{where}: column {a if a in names else b!r} needs its partner "
                             f"{b if a in names else a!r}")
    return {name: k for k, name in enumerate(names)}


def _entry(catalog, base, columns, cells, row, line):
    """A :class:`CatalogEntry` from a row's cells, or an InputError naming the line."""
    where = f"{catalog} line {line}"
    if len(cells) != len(columns):
        raise InputError(f"{where}: {len(cells)} cells where the header has {len(columns)}")
    cell = {name: cells[k].strip() for name, k in columns.items()}
    path = cell["path"]
    if not path:
        raise InputError(f"{where}: empty path")
    if "\n" in path or "\r" in path or "\n" in cell.get("band2", ""):
        raise InputError(f"{where}: a path holds a line break")
    values = {name: _number(where, name, cell[name]) for name in _RANGES if name in cell}
    positions = {}
    for a, b in (("ra", "dec"), ("x", "y")):
        if (values.get(a) is None) != (values.get(b) is None):
            raise InputError(f"{where}: {a} and {b} are given together or not at all")
        if values.get(a) is not None:
            positions[a] = (values[a], values[b])
    if len(positions) > 1:
        raise InputError(f"{where}: give the lens position as ra/dec or as x/y, not both")
    band2 = cell.get("band2") or None
    return CatalogEntry(row=row, line=line, path=path, file=os.path.join(base, path),
                        band2=None if band2 is None else os.path.join(base, band2),
                        sky=positions.get("ra"), pixel=positions.get("x"))


def iter_catalog(catalog, shard=(0, 1)):
    """Yield the checked rows (:class:`CatalogEntry`) of a catalogue shard, row by row.

    Args:
        catalog: the catalogue CSV file (see the module's description); blank
            lines are not rows.
        shard: ``(i, n)`` or ``"i/n"``: the rows with ``row % n == i``.

    Raises:
        InputError: a missing or unreadable catalogue, a bad header or a bad
            cell; the message names the catalogue line.
    """
    i, n = parse_shard(shard)
    catalog = os.fspath(catalog)
    base = os.path.dirname(catalog)
    try:
        with open(catalog, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            columns, row = None, 0
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if columns is None:
                    columns = _header(catalog, cells, reader.line_num)
                    continue
                entry = _entry(catalog, base, columns, cells, row, reader.line_num)
                if row % n == i:
                    yield entry
                row += 1
            if columns is None:
                raise InputError(f"{catalog}: the catalogue is empty; its first line must name "
                                 "the columns (path and optionally ra, dec, x, y, band2)")
    except FileNotFoundError:
        raise InputError(f"catalogue {catalog!r}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{catalog}: not a UTF-8 text (CSV) file") from None
    except csv.Error as err:
        raise InputError(f"{catalog}: not a readable CSV file ({err})") from None
    except IsADirectoryError:
        raise InputError(f"catalogue {catalog!r} is a folder; give its CSV file") from None
