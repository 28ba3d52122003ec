"""Write simulated lenses to a folder for inspection (``ensai simulate``).

:func:`write_observed_dataset` streams ``n`` lenses from the canonical
pipeline (:func:`ensai_tf.data.pipeline.example_dataset`) into::

    images.npy         (n, 192, 192, 1) float32, observed (or clean) images
    params.csv         PARAM_NAMES, q, major-axis PA, magnification, source family
    draws.npz          per-example seeds, simulator outputs and observation draws
    config.yaml        the resolved config (config.save_config)
    contact_sheet.png  the first lenses, with their labels (and curves)

Everything is written into a temporary sibling folder and moved into place
at the end, so an interrupted run leaves nothing half-written and a full disk
leaves no temporary folder. Images are appended to ``images.npy`` batch by
batch with ordinary writes (a full disk is an ``OSError``, never a SIGBUS), so
memory does not grow with ``n``; the free space is checked before starting.

``--overwrite`` replaces only what ``ensai simulate`` writes
(:data:`SIMULATE_FILES`): a folder holding anything else (a training run,
another command's output, the user's own files) is refused, and the folder's
lock (:class:`ensai_tf.dirlock.ModelDirLock`) is held while it is written, so a
running training or a second simulate is never overwritten.
"""

import csv
import os
import pathlib
import shutil

import numpy as np

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf import conventions, plotting
from ensai_tf.data import pipeline
from ensai_tf.data import sources
from ensai_tf.data.arrays import BULKY_KEYS, open_npy
from ensai_tf.dirlock import LOCK_NAME, ModelDirLock
from ensai_tf.errors import InputError
from ensai_tf.lensing import caustics
from ensai_tf.model_dir import CONFIG_YAML

__all__ = ["CSV_COLUMNS", "CONTACT_SHEET_MAX", "SIMULATE_FILES", "write_observed_dataset",
           "lens_curves", "csv_rows"]

CSV_COLUMNS = conventions.PARAM_NAMES + ("q", "major_axis_pa_deg", "magnification",
                                         "source_family")
"""Header of ``params.csv``: the targets (docs/design.md §0), then q = 1 - ``|e|``, the mass
major-axis angle phi + 90 deg mod 180 (degrees, from +x towards +y), the
magnification and the source family name."""

CONTACT_SHEET_MAX = 32
"""Lenses shown on the contact sheet."""

SIMULATE_FILES = ("images.npy", "params.csv", "draws.npz", CONFIG_YAML, "contact_sheet.png")
"""The files ``ensai simulate`` writes; ``--overwrite`` replaces these and nothing else."""


def _check_out(out, overwrite):
    out = pathlib.Path(os.path.expanduser(str(out)))
    if out.exists() and not out.is_dir():
        raise InputError(f"output {str(out)!r} exists and is not a folder")
    held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
    if held and not overwrite:
        raise InputError(f"output folder {str(out)!r} is not empty; choose a new folder or "
                         "pass --overwrite to replace an earlier 'ensai simulate' output")
    foreign = [name for name in held if name not in SIMULATE_FILES]
    if foreign:
        raise InputError(f"output folder {str(out)!r} holds files 'ensai simulate' did not "
                         f"write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''});"
                         " --overwrite replaces only an earlier simulate output: choose a new "
                         "folder")
    return out


def _check_space(folder, n, npix):
    """Refuse to start when the images alone would not fit on the disk."""
    need = n * npix * npix * 4
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        raise InputError(f"{n} lenses of {npix}x{npix} pixels need {need / 1e6:.1f} MB, but only "
                         f"{free / 1e6:.1f} MB are free in {str(folder)!r}")


def csv_rows(batch):
    """The ``params.csv`` rows of one batch (columns :data:`CSV_COLUMNS`).

    Args:
        batch: canonical example dict of numpy arrays with ``"params"``
            ``(B, 5)`` and optionally ``"source_family"``, ``"magnification"``.

    Yields:
        list of str per example, numbers with 7 significant digits.
    """
    params = np.asarray(batch["params"], np.float64)
    e_x, e_y = params[:, conventions.Param.E_X], params[:, conventions.Param.E_Y]
    q, _ = conventions.q_phi_from_ellipticity(e_x, e_y)
    pa = conventions.mass_major_axis_angle(e_x, e_y)
    family = np.asarray(batch.get("source_family", np.full(len(params), -1)))
    mag = np.asarray(batch.get("magnification", np.full(len(params), np.nan)), np.float64)
    for i in range(len(params)):
        fam = int(family[i])
        name = sources.SOURCE_FAMILIES[fam] if 0 <= fam < len(sources.SOURCE_FAMILIES) else ""
        yield [f"{v:.7g}" for v in params[i]] + [f"{q[i]:.7g}", f"{pa[i]:.7g}",
                                                 f"{mag[i]:.7g}", name]


def lens_curves(params):
    """Tangential critical curve and caustic of each lens (docs/design.md §2.5).

    Args:
        params: ``(N, 5)`` labels (theta_E, e_x, e_y, x_L, y_L); arcsec, -, -,
            arcsec, arcsec.

    Returns:
        list (one per lens) of ``{"critical": (K, 2), "caustic": (K, 2)}``
        float64 closed polylines (last point = first) of (x, y), arcsec, sky
        frame (x = +column, y = +row), as
        :func:`ensai_tf.plotting.contact_sheet` draws them.
    """
    p = [np.asarray(params, np.float32)[:, i] for i in range(conventions.NUM_PARAMS)]
    curves = {"critical": caustics.tangential_critical_curve(*p),
              "caustic": caustics.tangential_caustic(*p)}
    closed = {k: np.concatenate([np.asarray(v, np.float64), np.asarray(v, np.float64)[:, :1]],
                                axis=1) for k, v in curves.items()}
    return [{k: v[i] for k, v in closed.items()} for i in range(len(p[0]))]


def write_observed_dataset(out, n, seed=0, config=None, split="test", overwrite=False,
                           clean=False, curves=False, progress=True):
    """Simulate (and observe) ``n`` lenses and write them to the folder ``out``.

    Args:
        out: output folder; must be new or empty unless ``overwrite``.
        n: number of lenses (>= 1).
        seed: user seed; with the same seed, config and split the lenses
            equal examples ``0 ... n-1`` of the pipeline's split.
        config: :class:`ensai_tf.config.ExperimentConfig` (default: paper).
        split: ``"train"`` (training-time effects, f_min 0.75),
            ``"validation"`` or ``"test"`` (f_min 0.98, docs/design.md §5.6); also picks
            the source pool and seed stream.
        overwrite: replace the contents of a non-empty ``out``.
        clean: write the noise-free arcs (docs/design.md §3) instead of observed images.
        curves: overlay the critical curve and caustic on the contact sheet.
        progress: show a progress bar.

    Returns:
        ``pathlib.Path`` of the written folder.

    Raises:
        InputError: non-empty ``out`` without ``overwrite``, ``out`` is a
            file, bad ``n`` or split.
    """
    cfg = config if config is not None else config_lib.get_preset("paper")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer number of lenses, got {n!r}")
    if split not in pipeline.SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(pipeline.SPLITS)}")
    out = _check_out(out, overwrite)
    n = int(n)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_space(out.parent, n, cfg.image.npix)
    with ModelDirLock(out, "ensai simulate"):
        _check_out(out, overwrite)  # again, now that no other command can write there
        tmp = atomic.temp_path(out)
        try:
            (tmp / "draws").mkdir(parents=True)
            ds = pipeline.example_dataset(split, cfg, seed, count=n, observed=not clean,
                                          training=split == "train")
            sheet = _write_batches(ds, tmp, n, cfg, progress)
            config_lib.save_config(cfg, tmp / CONFIG_YAML)
            _contact_sheet(tmp / "contact_sheet.png",
                           {k: np.concatenate(v) for k, v in sheet.items()}, curves, cfg)
            for name in SIMULATE_FILES:
                os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_batches(ds, tmp, n, cfg, progress):
    """Stream ``ds`` into ``images.npy``, ``params.csv`` and ``draws.npz`` in ``tmp``.

    Returns:
        the contact-sheet lenses: ``{"image", "params", "mask"}`` lists of arrays.
    """
    images, _, _ = open_npy(tmp / "images.npy", np.float32,
                            (n, cfg.image.npix, cfg.image.npix, cfg.bands.count))
    draws = pipeline.ArrayStreams(tmp / "draws", n)
    sheet = {"image": [], "params": [], "mask": [], "sources": []}
    filled = 0
    with images, open(tmp / "params.csv", "w", newline="") as f, \
            pipeline.progress_bar(n, "simulating", progress) as bar:
        table = csv.writer(f)
        table.writerow(CSV_COLUMNS)
        for batch in ds.as_numpy_iterator():
            size = len(batch["index"])
            images.write(np.ascontiguousarray(batch["image"], np.float32).tobytes())
            table.writerows(csv_rows(batch))
            draws.append(pipeline.flatten_example(batch, drop=BULKY_KEYS + ("image",)))
            room = CONTACT_SHEET_MAX - sum(len(a) for a in sheet["image"])
            if room > 0:
                sheet["image"].append(batch["image"][:room])
                sheet["params"].append(batch["params"][:room])
                sheet["mask"].append(batch["mask"][:room] == 0)
                sheet["sources"].append(_source_positions(batch)[:room])
            filled += size
            bar.update(size)
    if filled != n:
        draws.discard()
        raise InputError(f"the pipeline gave {filled} lenses instead of {n}")
    arrays = draws.close()
    np.savez(tmp / "draws.npz", **{name: np.load(tmp / "draws" / entry["file"],
                                                 mmap_mode="r")
                                   for name, entry in arrays.items()})
    shutil.rmtree(tmp / "draws")
    return sheet


def _source_positions(batch):
    """``(B, 2)`` source centres in the frame of the observed image, arcsec.

    The simulator places the source relative to the lens it drew; the
    lens-centre shift of docs/design.md §5.2 moves the whole image, source included.
    """
    position = np.asarray(batch["source_position"], dtype=np.float64)
    if "clean_params" in batch:
        shift = np.asarray(batch["params"], np.float64) - np.asarray(batch["clean_params"],
                                                                      np.float64)
        position = position + shift[:, [conventions.Param.X_L, conventions.Param.Y_L]]
    return position


def _contact_sheet(path, sheet, curves, cfg):
    """The first lenses with labels, lens centre, masks tinted and optional curves and sources."""
    overlay = lens_curves(sheet["params"]) if curves else None
    plotting.contact_sheet(sheet["image"], str(path), params=sheet["params"], curves=overlay,
                           masks=sheet["mask"], pixel_scale=cfg.image.pixel_scale,
                           sources=sheet["sources"] if curves else None)
