"""Evaluation on the fixed test set: Table 1, Figure 1 and the robustness experiments.

``evaluate`` runs a trained model on the first ``n`` lenses of the fixed
test split (docs/design.md §8.3), corrects the ellipticity parity against the truth
(docs/design.md §8.1) and writes into the output folder:

- ``metrics.json``: per parameter the 68% error (68th percentile of
  ``|pred - true|``), the rms and the 16-84 half-width (docs/design.md §8.2), with the
  paper's Table 1 numbers (docs/design.md §10.1) beside them;
- ``table1.md``: the same as a Markdown table;
- ``figure1.png``: predicted against true theta_E, e_x, e_y with binned 68%
  and 95% bands (the paper's Figure 1 layout);
- ``residuals.png``: residual histograms of the five parameters.

Experiments (docs/design.md §8.5, §4): ``shear`` (test lenses with external shear;
rms errors in bins of gamma, to compare with the paper's ellipticity rms of
0.11 for gamma < 0.01 and 0.23 for gamma > 0.15), ``psf`` (a non-Gaussian
Airy-plus-halo PSF) and ``lens-light`` (Sersic lens light in the images).
:func:`compare_shear` puts several networks (trained with and without shear)
side by side in bins of gamma.

Networks with a Gaussian head are scored on their means, and the
report adds, per parameter, the fraction of test lenses whose truth falls in
the predicted 68% and 95% intervals, raw and after the post-hoc calibration
that training fitted on the validation set (``calibration.json``), with a
calibration plot ``calibration.png``. Networks with shear outputs add the
errors of ``gamma_1`` and ``gamma_2`` when the test lenses have shear.
"""

import dataclasses
import json
import pathlib
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf.errors import InputError, ModelDirError

__all__ = [
    "EXPERIMENTS",
    "PAPER_TABLE1",
    "PAPER_SHEAR_RMS",
    "SHEAR_BIN_EDGES",
    "experiment_config",
    "parameter_metrics",
    "shear_bins",
    "table1_markdown",
    "plot_figure1",
    "plot_residuals",
    "write_report",
    "collect_test_set",
    "collect_fixed_split",
    "coverage_report",
    "plot_calibration",
    "evaluate",
    "compare_shear",
]

EXPERIMENTS = ("shear", "psf", "lens-light")

PAPER_TABLE1 = {
    "Network 1 (Inception-v4)": (0.03, 0.04, 0.05, 0.06, 0.06),
    "Network 2 (AlexNet)": (0.03, 0.04, 0.04, 0.05, 0.06),
    "Network 3 (Overfeat)": (0.04, 0.05, 0.05, 0.06, 0.06),
    "Network 4 (own design)": (0.03, 0.05, 0.06, 0.05, 0.05),
    "Combined": (0.02, 0.04, 0.04, 0.04, 0.04),
}
"""68% errors on the simulated test set, docs/design.md §10.1 [P], ordered as PARAM_NAMES."""

PAPER_SHEAR_RMS = {"gamma < 0.01": 0.11, "gamma > 0.15": 0.23}
"""Paper's rms ellipticity error without and with strong external shear (docs/design.md §8.5)."""

SHEAR_BIN_EDGES = (0.0, 0.01, 0.05, 0.10, 0.15, 0.30)
"""Bins of the shear magnitude gamma for the shear experiment (docs/design.md §8.5)."""

_PAPER_ROW_BY_MODEL = {"inception_v4": "Network 1 (Inception-v4)", "alexnet": "Network 2 (AlexNet)",
                       "overfeat": "Network 3 (Overfeat)", "ensai_net": "Network 4 (own design)"}


def experiment_config(cfg, experiment=None):
    """The test-data config of a robustness experiment.

    Args:
        cfg: the base :class:`~ensai_tf.config.ExperimentConfig`.
        experiment: None, ``"shear"`` (``lens.shear`` on, docs/design.md §8.5),
            ``"psf"`` (``observe.psf = "airy"``, docs/design.md §8.5) or
            ``"lens-light"`` (``simulate.lens_light`` on, docs/design.md §4 [R]).
    """
    if experiment is None:
        return cfg
    if experiment == "shear":
        return dataclasses.replace(cfg, lens=dataclasses.replace(cfg.lens, shear=True))
    if experiment == "psf":
        return dataclasses.replace(cfg, observe=dataclasses.replace(cfg.observe, psf="airy"))
    if experiment == "lens-light":
        return dataclasses.replace(cfg, simulate=dataclasses.replace(cfg.simulate, lens_light=True))
    raise config_lib.ConfigError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")


def parameter_metrics(pred, true):
    """Table 1 metrics per parameter, after parity correction (docs/design.md §8.1-8.2).

    Args:
        pred, true: ``(N, 5)`` arrays (arcsec, -, -, arcsec, arcsec).

    Returns:
        ``{name: {"error68", "rms", "half_width_16_84", "bias"}}`` in the
        parameter's unit, plus ``"n"``.
    """
    from ensai_tf import losses, metrics

    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    corrected = np.asarray(losses.parity_correct(true, pred), dtype=np.float64)
    out = {"n": int(len(true))}
    e68 = np.asarray(metrics.error68(true, corrected))
    rms = np.asarray(metrics.rms(true, corrected))
    hw = np.asarray(metrics.half_width_16_84(true, corrected))
    bias = np.mean(corrected - true, axis=0)
    for k, name in enumerate(conventions.PARAM_NAMES):
        out[name] = {"error68": float(e68[k]), "rms": float(rms[k]),
                     "half_width_16_84": float(hw[k]), "bias": float(bias[k])}
    return out


def shear_bins(pred, true, gamma, edges=SHEAR_BIN_EDGES):
    """Parity-corrected rms errors in bins of the external shear (docs/design.md §8.5).

    Args:
        pred, true: ``(N, 5)`` arrays, or ``(N, 7)`` with the shear
            ``(gamma_1, gamma_2)`` appended (a network with shear outputs).
        gamma: ``(N,)`` shear magnitudes, dimensionless.
        edges: bin edges of gamma; the last bin includes its upper edge.

    Returns:
        List of ``{"gamma_lo", "gamma_hi", "n", "rms": {name: value},
        "rms_ellipticity"}``; ``rms_ellipticity`` is the rms over both
        ellipticity components; ``rms`` also holds ``gamma_1``/``gamma_2``
        for 7-column inputs. Empty bins have ``n = 0`` and NaN values.
    """
    from ensai_tf import losses

    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    corrected = np.asarray(losses.parity_correct(true, pred), dtype=np.float64)
    sq = (corrected - true) ** 2
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        sel = (gamma >= lo) & ((gamma <= hi) if last else (gamma < hi))
        n = int(sel.sum())
        rms = np.sqrt(sq[sel].mean(axis=0)) if n else np.full(sq.shape[1], np.nan)
        e = list(conventions.ELLIPTICITY_INDICES)
        names = conventions.target_names(sq.shape[1])
        rows.append({"gamma_lo": float(lo), "gamma_hi": float(hi), "n": n,
                     "rms": {name: float(v) for name, v in zip(names, rms)},
                     "rms_ellipticity": float(np.sqrt(sq[sel][:, e].mean())) if n else float("nan")})
    return rows


def _fmt(v):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def table1_markdown(result, label="this model", paper_rows=None):
    """Table 1 as Markdown: this model's errors and the paper's (docs/design.md §10.1).

    Args:
        result: the result dict of :func:`evaluate`: ``"metrics"``
            (:func:`parameter_metrics`) and optionally ``"experiment"``,
            ``"shear_bins"`` (:func:`shear_bins`), ``"shear_metrics"``,
            ``"coverage"`` (:func:`coverage_report`), ``"time_per_lens_s"``
            (seconds) and ``"batch_size"``.
        label: name of this model's rows.
        paper_rows: ``{row name: five 68% errors}`` in
            :data:`~ensai_tf.conventions.PARAM_NAMES` order (arcsec for theta_E,
            x_L, y_L; dimensionless e_x, e_y); None uses :data:`PAPER_TABLE1`.

    Returns:
        str: the Markdown text, ending in a newline.
    """
    units = [f" ({u})" if u else "" for u in conventions.PARAM_UNITS]
    names = [f"{n}{u}" for n, u in zip(conventions.PARAM_NAMES, units)]
    m = result["metrics"]
    lines = [f"# Table 1: errors on {m['n']} test lenses"
             + (f" ({result['experiment']} experiment)" if result.get("experiment") else ""),
             "",
             "68% error = 68th percentile of |predicted - true| after parity correction "
             "(docs/design.md §8.1-8.2).", "",
             "| Network | metric | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for key, title in (("error68", "68% error"), ("rms", "rms"),
                       ("half_width_16_84", "16-84 half-width")):
        vals = " | ".join(_fmt(m[n][key]) for n in conventions.PARAM_NAMES)
        lines.append(f"| **{label}** | {title} | {vals} |")
    for row, vals in (paper_rows or PAPER_TABLE1).items():
        lines.append(f"| paper: {row} | 68% error | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    if result.get("shear_bins"):
        lines += ["", "## rms errors in bins of external shear gamma (docs/design.md §8.5)", "",
                  "| gamma | n | " + " | ".join(names) + " | ellipticity |",
                  "|---|---|" + "---|" * (len(names) + 1)]
        for b in result["shear_bins"]:
            vals = " | ".join(_fmt(b["rms"][n]) for n in conventions.PARAM_NAMES)
            lines.append(f"| [{b['gamma_lo']:.2f}, {b['gamma_hi']:.2f}) | {b['n']} | {vals} | "
                         f"{_fmt(b['rms_ellipticity'])} |")
        lines.append("")
        lines.append("paper (rms ellipticity): " + ", ".join(
            f"{k}: {v:.2f}" for k, v in PAPER_SHEAR_RMS.items()))
    if result.get("shear_metrics"):
        sm = result["shear_metrics"]
        lines += ["", "## External shear outputs", "",
                  "| metric | " + " | ".join(conventions.SHEAR_NAMES) + " |", "|---|---|---|"]
        for key, title in (("error68", "68% error"), ("rms", "rms")):
            lines.append(f"| {title} | " + " | ".join(_fmt(sm[k][key])
                                                     for k in conventions.SHEAR_NAMES) + " |")
    if result.get("coverage"):
        cov = result["coverage"]
        shown = list(next(iter(cov["raw"].values())))
        lines += ["", "## Interval coverage", "",
                  "Fraction of test lenses whose truth lies in the predicted central interval; "
                  "calibrated = quantile recalibration fitted on the validation set.", "",
                  "| intervals | nominal | " + " | ".join(shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for kind in ("raw", "calibrated"):
            if cov.get(kind) is None:
                continue
            for level, row in cov[kind].items():
                lines.append(f"| {kind} | {float(level):.0%} | "
                             + " | ".join(f"{row[k]:.1%}" for k in shown) + " |")
    if result.get("time_per_lens_s") is not None:
        lines += ["", f"Time per lens: {1e3 * result['time_per_lens_s']:.2f} ms "
                      f"(batch {result.get('batch_size')}, this machine)."]
    return "\n".join(lines) + "\n"


def plot_figure1(pred, true, path, bins=12):
    """Figure 1: predicted vs true theta_E, e_x, e_y with binned 68%/95% bands.

    Bands are the 2.5/16/50/84/97.5 percentiles of the parity-corrected
    prediction in bins of the true value (docs/design.md §8.2).

    Args:
        pred: ``(N, 5)`` predictions (theta_E, x_L, y_L in arcsec; e_x, e_y
            dimensionless), before parity correction.
        true: ``(N, 5)`` truths, same order and units.
        path: output image file (``.png``), written atomically.
        bins: number of equal-width bins of the true value; a bin with fewer
            than 5 lenses gets no band.

    Returns:
        ``path``, as given.
    """
    from ensai_tf import losses

    pred = np.asarray(losses.parity_correct(np.asarray(true, np.float64),
                                            np.asarray(pred, np.float64)), dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    shown = (conventions.Param.THETA_E, conventions.Param.E_X, conventions.Param.E_Y)
    labels = (r"$\theta_E$ (arcsec)", r"$e_x$", r"$e_y$")
    fig = Figure(figsize=(12, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, k, label in zip(axes, shown, labels):
        t, p = true[:, k], pred[:, k]
        lo, hi = np.min(t), np.max(t)
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo - 0.5, hi + 0.5])
        centres, bands = [], []
        for a, b in zip(edges[:-1], edges[1:]):
            sel = (t >= a) & (t <= b)
            if sel.sum() >= 5:
                centres.append(0.5 * (a + b))
                bands.append(np.percentile(p[sel], [2.5, 16, 50, 84, 97.5]))
        ax.plot(t, p, ".", ms=2, alpha=0.3, color="0.4", rasterized=True)
        if centres:
            c, q = np.array(centres), np.array(bands)
            ax.fill_between(c, q[:, 0], q[:, 4], color="C0", alpha=0.25, label="95%")
            ax.fill_between(c, q[:, 1], q[:, 3], color="C0", alpha=0.5, label="68%")
            ax.plot(c, q[:, 2], color="C0", lw=1.5, label="median")
        span = [min(lo, np.min(p)), max(hi, np.max(p))]
        ax.plot(span, span, "k--", lw=1)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"predicted {label}")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=120)
    return path


def plot_residuals(pred, true, path):
    """Histograms of the parity-corrected residuals of the five parameters.

    Args:
        pred: ``(N, 5)`` predictions (theta_E, x_L, y_L in arcsec; e_x, e_y
            dimensionless), before parity correction.
        true: ``(N, 5)`` truths, same order and units.
        path: output image file (``.png``), written atomically.

    Returns:
        ``path``, as given.
    """
    from ensai_tf import losses

    true = np.asarray(true, dtype=np.float64)
    res = np.asarray(losses.parity_correct(true, np.asarray(pred, np.float64))) - true
    fig = Figure(figsize=(15, 3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, conventions.NUM_PARAMS)
    for k, ax in enumerate(axes):
        ax.hist(res[:, k], bins=50, color="C1")
        unit = conventions.PARAM_UNITS[k]
        ax.set_xlabel(f"{conventions.PARAM_NAMES[k]} residual" + (f" ({unit})" if unit else ""))
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=100)
    return path


def write_report(result, pred, true, out_dir, label="this model", bins=12):
    """Write metrics.json, table1.md, figure1.png and residuals.png into ``out_dir``.

    Args:
        result: the result dict of :func:`evaluate` (see :func:`table1_markdown`);
            written to ``metrics.json`` with the paper's numbers added.
        pred: ``(N, 5)`` predictions (theta_E, x_L, y_L in arcsec; e_x, e_y
            dimensionless), before parity correction.
        true: ``(N, 5)`` truths, same order and units.
        out_dir: output folder, created if missing.
        label: name of this model's rows in ``table1.md``.
        bins: number of true-value bins of ``figure1.png``.

    Returns:
        ``out_dir`` as a ``pathlib.Path``.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(result)
    payload["paper_table1_error68"] = {row: dict(zip(conventions.PARAM_NAMES, vals))
                                       for row, vals in PAPER_TABLE1.items()}
    if result.get("shear_bins"):
        payload["paper_shear_rms_ellipticity"] = PAPER_SHEAR_RMS
    atomic.write_text(out_dir / "metrics.json", json.dumps(payload, indent=1, allow_nan=True) + "\n")
    atomic.write_text(out_dir / "table1.md", table1_markdown(result, label))
    plot_figure1(pred, true, out_dir / "figure1.png", bins=bins)
    plot_residuals(pred, true, out_dir / "residuals.png")
    return out_dir


def _model_label(model_path):
    path = pathlib.Path(model_path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):
        cfg_path = candidate / "config.yaml"
        if cfg_path.is_file():
            try:
                name = config_lib.load_config(cfg_path).model.name
            except config_lib.ConfigError:
                return path.name
            if (candidate / "combiner.json").is_file():
                return "combined"
            return name
    return path.name


def _default_out_dir(model, experiment, symmetrize=False):
    path = pathlib.Path(model)
    base = path if path.is_dir() else path.parent
    if base.name == "saved_model":
        base = base.parent
    name = "eval" if experiment is None else f"eval-{experiment}"
    return base / (name + ("-d4" if symmetrize else ""))


def collect_test_set(cfg, n):
    """The first ``n`` lenses of the fixed test set: ``(images, params, extras)``.

    The test split is materialised once by the pipeline (docs/design.md §3.7 [R]) and
    read back from its cache, with the per-example quantities stored beside
    the images (``extras``: 1-D arrays such as the external shear).

    Args:
        cfg: the resolved :class:`~ensai_tf.config.ExperimentConfig` that
            defines the test data (``data.seed``, ``data.cache_dir``,
            ``evaluate.batch_size`` and the simulation sections).
        n: number of lenses, at most ``cfg.data.test_size``.

    Returns:
        tuple ``(images, params, extras)``: ``(n, 192, 192, 1)`` float32
        images, ``(n, 5)`` float64 labels (theta_E, x_L, y_L in arcsec; e_x,
        e_y dimensionless) and a dict of the other cached per-example arrays
        (first axis ``n``), such as ``"gamma_1"``, ``"gamma_2"``.

    Raises:
        ConfigError: ``n`` exceeds ``data.test_size``.
    """
    return collect_fixed_split(cfg, n, "test")


def collect_fixed_split(cfg, n, split):
    """The first ``n`` lenses of the fixed ``"validation"`` or ``"test"`` split.

    :func:`collect_test_set` for either fixed split; the validation split is
    the one to choose between checkpoints on (``tools/compare_on_validation.py``),
    never the test split.

    Args:
        cfg: the resolved config that defines the data (as in :func:`collect_test_set`).
        n: number of lenses, at most ``data.test_size`` (test) or
            ``data.val_size`` (validation).
        split: ``"validation"`` or ``"test"``.

    Returns:
        tuple ``(images, params, extras)`` as :func:`collect_test_set`.

    Raises:
        ConfigError: ``n`` exceeds the split's configured size, or an unknown split.
    """
    from ensai_tf.data import pipeline

    sizes = {"validation": "val_size", "test": "test_size"}
    if split not in sizes:
        raise config_lib.ConfigError(f"split {split!r} is not a fixed split; use one of "
                                     f"{', '.join(sizes)}")
    size_key = sizes[split]
    if n > getattr(cfg.data, size_key):
        raise config_lib.ConfigError(f"--n {n} exceeds the fixed {split} set's size "
                                     f"data.{size_key} = {getattr(cfg.data, size_key)}")
    # example i depends only on its index (stateless seeds), so materialising
    # just the first n gives the same lenses without simulating the rest
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **{size_key: n}))
    _, info = pipeline.make_dataset(split, cfg, seed=cfg.data.seed,
                                    batch_size=cfg.evaluate.batch_size,
                                    cache_dir=cfg.data.cache_dir or None, with_info=True)
    arrays = pipeline.load_cache(info["cache_path"])
    images = np.asarray(arrays["image"][:n], dtype=np.float32)
    params = np.asarray(arrays["params"][:n], dtype=np.float64)
    extras = {k: np.asarray(v[:n]) for k, v in arrays.items()
              if k not in ("image", "params") and np.ndim(v) >= 1 and len(v) >= n}
    return images, params, extras


def _shear_gamma(extras):
    """Shear magnitude per example, |(gamma_1, gamma_2)|, from the stored simulator outputs.

    The simulator stores ``gamma (cos 2 phi_g, sin 2 phi_g)`` (docs/design.md §2.2 [R]).
    """
    if "gamma_1" in extras and "gamma_2" in extras:
        return np.hypot(np.asarray(extras["gamma_1"], np.float64),
                        np.asarray(extras["gamma_2"], np.float64))
    raise InputError("the test data hold no external-shear values; keys available: "
                        f"{', '.join(sorted(extras))}")


COVERAGE_LEVELS = (0.68, 0.95)
"""Nominal levels of the reported interval coverage."""


def coverage_report(true, mean, std, calibration=None, levels=COVERAGE_LEVELS):
    """Interval coverage per parameter, raw and calibrated.

    Args:
        true: ``(N, n)`` truths (n = 5, or 7 with the shear).
        mean, std: ``(N, n)`` predicted Gaussian means and standard
            deviations, parameter units.
        calibration: the dict of :func:`ensai_tf.uncertainty.fit_interval_calibration`
            (``calibration.json``), or None.
        levels: nominal levels.

    Returns:
        ``{"raw": {level: {name: fraction}}, "calibrated": {...} or None,
        "levels": [...]}`` with string level keys (``"0.68"``).
    """
    from ensai_tf import uncertainty

    names = conventions.target_names(np.shape(true)[1])

    def table(cal):
        cov = uncertainty.coverage(true, mean, std, levels=levels, calibration=cal)
        return {str(level): {k: float(v) for k, v in zip(names, cov[level])} for level in levels}

    return {"levels": list(levels), "raw": table(None),
            "calibrated": table(calibration) if calibration is not None else None}


def plot_calibration(true, mean, std, path, calibration=None):
    """Calibration plot: observed against nominal interval coverage per parameter.

    A perfectly calibrated network lies on the diagonal; below it the
    intervals are too narrow (overconfident). Dashed lines use the raw
    Gaussian intervals, solid lines the validation-fitted calibration.

    Args:
        true: ``(N, n)`` truths (n = 5, or 7 with the shear), parameter units.
        mean: ``(N, n)`` predicted Gaussian means, parameter units.
        std: ``(N, n)`` predicted standard deviations, parameter units.
        path: output image file (``.png``), written atomically.
        calibration: the dict of :func:`ensai_tf.uncertainty.fit_interval_calibration`
            (``calibration.json``), or None for raw intervals only.

    Returns:
        ``path``, as given.
    """
    from ensai_tf import uncertainty

    levels = np.linspace(0.02, 0.98, 49)
    names = conventions.target_names(np.shape(true)[1])
    raw = uncertainty.coverage(true, mean, std, levels=levels)
    cal, cal_levels = None, levels
    if calibration is not None:
        lo, hi = min(calibration["levels"]), max(calibration["levels"])
        cal_levels = levels[(levels >= lo) & (levels <= hi)]
        cal = uncertainty.coverage(true, mean, std, levels=cal_levels, calibration=calibration)
    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for k, name in enumerate(names):
        colour = f"C{k}"
        ax.plot(levels, [raw[lv][k] for lv in levels], "--", color=colour, lw=1,
                label=f"{name} raw" if cal is None else None)
        if cal is not None:
            ax.plot(cal_levels, [cal[lv][k] for lv in cal_levels], "-", color=colour, lw=1.5,
                    label=f"{name}")
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("fraction of test lenses inside")
    ax.set_title("calibration (dashed: raw, solid: calibrated)" if cal is not None
                 else "calibration (raw Gaussian intervals)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=110)
    return path


def _shear_truth(extras):
    if all(k in extras for k in conventions.SHEAR_NAMES):
        return np.stack([np.asarray(extras[k], np.float64) for k in conventions.SHEAR_NAMES], -1)
    return None


def evaluate(model, n=None, experiment=None, out_dir=None, config=None, symmetrize=False):
    """Evaluate a trained model on the fixed test set and write Table 1 and Figure 1.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        n: number of test lenses (default ``config.evaluate.n``).
        experiment: None, ``"shear"``, ``"psf"`` or ``"lens-light"``.
        out_dir: output folder (default ``MODEL/eval`` or ``MODEL/eval-EXP``,
            with ``-d4`` appended when ``symmetrize``).
        config: the resolved config that defines the test data (default:
            the paper preset, whose test split is the fixed test set of
            docs/design.md §8.3; a model's own training config is deliberately not
            used, so every model is scored on the same lenses).
        symmetrize: average each prediction over the eight flips and
            rotations of the image (:func:`ensai_tf.symmetry.symmetrize`;
            point-estimate models only, 8x the time per lens).

    Returns:
        The result dict written to ``metrics.json``; for a Gaussian head it
        has ``"coverage"`` (:func:`coverage_report`), for shear outputs on
        lenses with shear ``"shear_metrics"``.

    Raises:
        ModelDirError: missing or corrupt model.
        ConfigError: bad ``n`` or experiment.
        InputError: ``symmetrize`` with a Gaussian-head model.
    """
    from ensai_tf import predict, symmetry, uncertainty

    cfg = config if config is not None else config_lib.get_preset("paper")
    cfg = experiment_config(cfg, experiment)
    n = cfg.evaluate.n if n is None else int(n)
    if n < 1:
        raise config_lib.ConfigError(f"--n {n} must be >= 1")
    if n > cfg.data.test_size:
        raise config_lib.ConfigError(f"--n {n} exceeds the fixed test set's size "
                                     f"data.test_size = {cfg.data.test_size}")
    predict_fn, npix = predict.load_predictor(model, raw=True)
    if npix != cfg.image.npix:
        raise ModelDirError(f"the model takes {npix}x{npix} images but the test config has "
                            f"image.npix = {cfg.image.npix}")
    calibration = predict.load_calibration(model)
    if symmetrize:
        predict_fn = symmetry.symmetrize(predict_fn)
    # trace once, untimed, before the test set is simulated: a model that --symmetrize
    # cannot average fails here, not after minutes of simulation
    predict_fn(np.zeros((1, npix, npix, 1), np.float32))
    images, true, extras = collect_test_set(cfg, n)
    start = time.perf_counter()
    raw = predict.predict_images(predict_fn, images, cfg.evaluate.batch_size)
    elapsed = time.perf_counter() - start
    head, n_out = uncertainty.head_layout(raw.shape[1])
    summary = uncertainty.gaussian_summary(raw) if head != "point" else None
    outputs = raw if summary is None else summary["mean"]
    pred = outputs[:, :conventions.NUM_PARAMS]
    result = {"model": str(model), "experiment": experiment, "n": n, "head": head,
              "metrics": parameter_metrics(pred, true),
              "time_per_lens_s": elapsed / n, "batch_size": cfg.evaluate.batch_size,
              "symmetrize": "d4" if symmetrize else None}
    shear_true = _shear_truth(extras) if n_out > conventions.NUM_PARAMS else None
    scored_true, scored = true, conventions.NUM_PARAMS
    if shear_true is not None:
        from ensai_tf import metrics

        scored_true, scored = np.concatenate([true, shear_true], axis=1), n_out
        table = metrics.error_table(scored_true, outputs)
        result["shear_metrics"] = {k: table[k] for k in conventions.SHEAR_NAMES}
    if experiment == "shear":
        result["shear_bins"] = shear_bins(outputs[:, :scored], scored_true, _shear_gamma(extras))
    label = _model_label(model)
    paper_row = _PAPER_ROW_BY_MODEL.get(label, "Combined" if label == "combined" else None)
    result["paper_row"] = paper_row
    if symmetrize:
        label += " (D4-averaged)"
    out_dir = pathlib.Path(out_dir or _default_out_dir(model, experiment, symmetrize))
    if summary is not None:
        mean, std = summary["mean"][:, :scored], summary["std"][:, :scored]
        if calibration is not None and np.shape(calibration["multipliers"])[1] != scored:
            calibration = _subset_calibration(calibration, scored)
        result["coverage"] = coverage_report(scored_true, mean, std, calibration)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_calibration(scored_true, mean, std, out_dir / "calibration.png", calibration)
    out = write_report(result, pred, true, out_dir, label=label, bins=cfg.evaluate.band_bins)
    print((out / "table1.md").read_text())
    extra = ", calibration.png" if summary is not None else ""
    print(f"ensai evaluate: wrote {out}/table1.md, metrics.json, figure1.png, residuals.png{extra}")
    return result


def _subset_calibration(calibration, n):
    """The first ``n`` targets' columns of a calibration (shear network, lenses without shear)."""
    table = np.asarray(calibration["multipliers"], dtype=np.float64)
    if table.shape[1] < n:
        raise ModelDirError(f"calibration.json covers {table.shape[1]} targets, fewer than the "
                            f"{n} being scored")
    return dict(calibration, multipliers=table[:, :n].tolist())


def compare_shear(models, out_dir, n=None, config=None):
    """Several networks on the same lenses with external shear, side by side.

    Runs :func:`evaluate` with ``experiment="shear"`` for each model (its
    report goes to ``out_dir/<i>-<label>/``), then writes
    ``out_dir/shear_comparison.md``: the rms ellipticity error and the 68%
    errors of every parameter in bins of gamma, with the paper's figures
    (docs/design.md §8.5).

    Args:
        models: model folders, SavedModel folders or ``.keras`` files (for
            example one trained without shear and one with).
        out_dir: output folder.
        n: test lenses per model (default ``config.evaluate.n``).
        config: test-data config (default: the paper preset).

    Returns:
        list of the per-model result dicts.
    """
    if not models:
        raise InputError("compare_shear needs at least one model")
    out_dir = pathlib.Path(out_dir)
    results = []
    for i, model in enumerate(models):
        sub = out_dir / f"{i + 1}-{_model_label(model)}"
        results.append(evaluate(model, n=n, experiment="shear", out_dir=sub, config=config))
    names = [f"{i + 1}-{_model_label(m)}" for i, m in enumerate(models)]
    lines = ["# Networks on lenses with external shear (docs/design.md §8.5)", "",
             f"{results[0]['n']} test lenses with gamma ~ U(0, 0.3); rms of the parity-corrected "
             "ellipticity error (both components) in bins of gamma.", "",
             "| gamma | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for b, row in enumerate(results[0]["shear_bins"]):
        vals = " | ".join(_fmt(r["shear_bins"][b]["rms_ellipticity"]) for r in results)
        lines.append(f"| [{row['gamma_lo']:.2f}, {row['gamma_hi']:.2f}) | {row['n']} | {vals} |")
    lines += ["", "paper (rms ellipticity): " + ", ".join(
        f"{k}: {v:.2f}" for k, v in PAPER_SHEAR_RMS.items()), "",
        "68% errors over all these lenses:", "",
        "| network | " + " | ".join(conventions.PARAM_NAMES + conventions.SHEAR_NAMES) + " |",
        "|---|" + "---|" * (conventions.NUM_PARAMS + 2)]
    for name, r in zip(names, results):
        vals = [_fmt(r["metrics"][k]["error68"]) for k in conventions.PARAM_NAMES]
        vals += [_fmt(r.get("shear_metrics", {}).get(k, {}).get("error68")) for k in
                 conventions.SHEAR_NAMES]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    text = "\n".join(lines) + "\n"
    atomic.write_text(out_dir / "shear_comparison.md", text)
    print(text)
    print(f"ensai evaluate: wrote {out_dir}/shear_comparison.md")
    return results
