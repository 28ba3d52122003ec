"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file and folder the package writes for a user (configs, logs, metrics,
reports, figures, calibrations, model folders) is first written under a
temporary name in the destination's own folder, so the final ``os.replace``
is a rename on one file system, and then renamed into place. A kill in
between leaves a temporary entry whose name starts with :data:`TMP_PREFIX`,
which ``ensai train`` removes from its model folder on the next start.
"""

import os
import pathlib
import shutil
import uuid

__all__ = ["TMP_PREFIX", "temp_path", "write_text", "save_figure", "replace_folder"]

TMP_PREFIX = ".ensai-tmp-"
"""Name prefix of every temporary file or folder written beside its destination."""


def temp_path(final, suffix=""):
    """A fresh temporary name in the folder of ``final``.

    Args:
        final: the destination file or folder.
        suffix: appended to the name (``".keras"`` and ``".png"`` writers
            choose their format from it).

    Returns:
        ``pathlib.Path`` ``<folder>/.ensai-tmp-<8 hex>-<name><suffix>``, not yet created.
    """
    final = pathlib.Path(final)
    return final.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{final.name}{suffix}")


def write_text(path, text):
    """Write ``text`` to ``path`` atomically.

    Args:
        path: destination file; an existing file is replaced only once the
            new text is complete.
        text: the contents (UTF-8).

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    path = pathlib.Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_figure(fig, path, **kwargs):
    """``fig.savefig(path, **kwargs)`` atomically.

    Args:
        fig: a matplotlib ``Figure``.
        path: destination image; its suffix picks the format (``.png``, ``.pdf``).
        **kwargs: passed to ``savefig`` (``dpi``, ...).

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    path = pathlib.Path(path)
    tmp = temp_path(path, path.suffix)
    try:
        fig.savefig(str(tmp), **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_folder(tmp, final):
    """Rename the complete folder ``tmp`` to ``final``.

    An existing ``final`` is first renamed aside, then deleted once the new
    folder is in place, so at every instant one complete version exists.

    Args:
        tmp: the finished folder (in the same parent folder as ``final``).
        final: the destination folder.

    Returns:
        ``final`` as a ``pathlib.Path``.
    """
    final = pathlib.Path(final)
    old = None
    if final.exists():
        old = temp_path(final, ".old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
