"""Evaluation reports: Table 1, Figure 1, residuals, interval coverage, the shear comparison.

:func:`ensai_tf.evaluate.evaluate` scores a model on the fixed test set and
passes the numbers here, which writes them into the output folder:

- ``metrics.json``: the result dict with the paper's Table 1 numbers
  (docs/design.md §10.1) beside it;
- ``table1.md``: the same as a Markdown table (:func:`table1_markdown`);
- ``figure1.png``: predicted against true theta_E, e_x, e_y with binned 68%
  and 95% bands (:func:`plot_figure1`, the paper's Figure 1 layout);
- ``residuals.png``: residual histograms of the five parameters;
- ``calibration.png``: observed against nominal interval coverage, for
  networks with a Gaussian head (:func:`plot_calibration`).

Example:
    >>> import numpy as np
    >>> from ensai_tf import metrics
    >>> true = np.random.default_rng(0).normal(size=(50, 5))
    >>> text = table1_markdown({"metrics": metrics.error_table(true, true + 0.01)})
    >>> text.splitlines()[0]
    '# Table 1: errors on 50 test lenses'
"""

import json
import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ensai_tf import atomic, conventions, losses
from ensai_tf.calibration import coverage
from ensai_tf.model_dir import FIGURE1_PNG, METRICS_JSON, TABLE1_MD

__all__ = [
    "CALIBRATION_PNG",
    "COVERAGE_LEVELS",
    "PAPER_SHEAR_RMS",
    "PAPER_TABLE1",
    "RESIDUALS_PNG",
    "SHEAR_COMPARISON_MD",
    "coverage_report",
    "plot_calibration",
    "plot_figure1",
    "plot_residuals",
    "shear_comparison_markdown",
    "table1_markdown",
    "write_report",
]

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

COVERAGE_LEVELS = (0.68, 0.95)
"""Nominal levels of the reported interval coverage."""

RESIDUALS_PNG = "residuals.png"
"""Residual histograms, written beside ``figure1.png``."""
CALIBRATION_PNG = "calibration.png"
"""Calibration plot of a Gaussian-head network, written beside ``figure1.png``."""
SHEAR_COMPARISON_MD = "shear_comparison.md"
"""Several networks on lenses with external shear (``ensai evaluate`` of several models)."""


def _fmt(v):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _paper_shear_line():
    return "paper (rms ellipticity): " + ", ".join(
        f"{k}: {v:.2f}" for k, v in PAPER_SHEAR_RMS.items())


def _header_names():
    units = [f" ({u})" if u else "" for u in conventions.PARAM_UNITS]
    return [f"{n}{u}" for n, u in zip(conventions.PARAM_NAMES, units)]


def _error_rows(result, label, paper_rows):
    m = result["metrics"]
    names = _header_names()
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
    return lines


def _shear_bin_rows(bins):
    names = _header_names()
    lines = ["", "## rms errors in bins of external shear gamma (docs/design.md §8.5)", "",
             "| gamma | n | " + " | ".join(names) + " | ellipticity |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for b in bins:
        vals = " | ".join(_fmt(b["rms"][n]) for n in conventions.PARAM_NAMES)
        lines.append(f"| [{b['gamma_lo']:.2f}, {b['gamma_hi']:.2f}) | {b['n']} | {vals} | "
                     f"{_fmt(b['rms_ellipticity'])} |")
    return lines + ["", _paper_shear_line()]


def _shear_output_rows(sm):
    lines = ["", "## External shear outputs", "",
             "| metric | " + " | ".join(conventions.SHEAR_NAMES) + " |", "|---|---|---|"]
    for key, title in (("error68", "68% error"), ("rms", "rms")):
        lines.append(f"| {title} | " + " | ".join(_fmt(sm[k][key])
                                                 for k in conventions.SHEAR_NAMES) + " |")
    return lines


def _coverage_rows(cov):
    shown = list(next(iter(cov["raw"].values())))
    lines = ["", "## Interval coverage", "",
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
    return lines


def table1_markdown(result, label="this model", paper_rows=None):
    """Table 1 as Markdown: this model's errors and the paper's (docs/design.md §10.1).

    Args:
        result: the result dict of :func:`ensai_tf.evaluate.evaluate`:
            ``"metrics"`` (:func:`ensai_tf.metrics.error_table`) and optionally
            ``"experiment"``, ``"shear_bins"`` (:func:`ensai_tf.evaluate.shear_bins`),
            ``"shear_metrics"``, ``"coverage"`` (:func:`coverage_report`),
            ``"time_per_lens_s"`` (seconds) and ``"batch_size"``.
        label: name of this model's rows.
        paper_rows: ``{row name: five 68% errors}`` in
            :data:`~ensai_tf.conventions.PARAM_NAMES` order (arcsec for theta_E,
            x_L, y_L; dimensionless e_x, e_y); None uses :data:`PAPER_TABLE1`.

    Returns:
        str: the Markdown text, ending in a newline.
    """
    lines = _error_rows(result, label, paper_rows)
    if result.get("shear_bins"):
        lines += _shear_bin_rows(result["shear_bins"])
    if result.get("shear_metrics"):
        lines += _shear_output_rows(result["shear_metrics"])
    if result.get("coverage"):
        lines += _coverage_rows(result["coverage"])
    if result.get("time_per_lens_s") is not None:
        lines += ["", f"Time per lens: {1e3 * result['time_per_lens_s']:.2f} ms "
                      f"(batch {result.get('batch_size')}, this machine)."]
    return "\n".join(lines) + "\n"


_MIN_PER_BIN = 5


def _bin_groups(t, bins):
    """Indices of ``t`` in equal-width bins, sparse bins merged towards the centre.

    Scanning from the smallest value, bins are joined until a group holds at
    least 5 lenses; a short last group joins the one before it.
    """
    lo, hi = np.min(t), np.max(t)
    edges = np.linspace(lo, hi, int(bins) + 1) if hi > lo else np.array([lo - 0.5, hi + 0.5])
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    groups, current = [], []
    for b in range(len(edges) - 1):
        current.extend(np.flatnonzero(which == b))
        if len(current) >= _MIN_PER_BIN:
            groups.append(np.array(current))
            current = []
    if current and groups:
        groups[-1] = np.concatenate([groups[-1], current])
    return groups


def _percentile_bands(t, p, bins):
    """Band positions and 2.5/16/50/84/97.5 percentiles of ``p`` in bins of ``t``.

    Equal-width bins of the true value, sparse ones merged so that each holds
    at least 5 lenses (:func:`_bin_groups`); each band sits at the median true
    value of its bin, and the end bins' bands are carried out to the smallest
    and largest true value, so the bands span the data.

    Returns:
        ``(x, q)``: ``(K,)`` positions and ``(K, 5)`` percentiles; empty for
        fewer than 5 lenses.
    """
    t, p = np.asarray(t, np.float64), np.asarray(p, np.float64)
    groups = _bin_groups(t, bins) if len(t) >= _MIN_PER_BIN else []
    if not groups:
        return np.zeros(0), np.zeros((0, 5))
    x = np.array([np.median(t[g]) for g in groups])
    q = np.array([np.percentile(p[g], [2.5, 16, 50, 84, 97.5]) for g in groups])
    x = np.concatenate([[np.min(t)], x, [np.max(t)]])
    q = np.concatenate([q[:1], q, q[-1:]])
    return x, q


def plot_figure1(pred, true, path, bins=12):
    """Figure 1: predicted vs true theta_E, e_x, e_y with binned 68%/95% bands.

    Bands are the 2.5/16/50/84/97.5 percentiles of the parity-corrected
    prediction in equal-width bins of the true value (docs/design.md §8.2), a bin
    with fewer than 5 lenses merged with its neighbour towards the centre; the
    bands span the whole range of true values.

    Args:
        pred: ``(N, 5)`` predictions (theta_E, x_L, y_L in arcsec; e_x, e_y
            dimensionless), before parity correction.
        true: ``(N, 5)`` truths, same order and units.
        path: output image file (``.png``), written atomically.
        bins: number of equal-width bins of the true value (fewer after
            sparse bins are merged).

    Returns:
        ``path``, as given.
    """
    pred = np.asarray(losses.parity_correct(np.asarray(true, np.float64),
                                            np.asarray(pred, np.float64)), dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    shown = (conventions.Param.THETA_E, conventions.Param.E_X, conventions.Param.E_Y)
    labels = (r"$\theta_E$ (arcsec)", r"$e_x$", r"$e_y$")
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    used = 0
    for ax, k, label in zip(axes, shown, labels):
        t, p = true[:, k], pred[:, k]
        x, q = _percentile_bands(t, p, bins)
        used = max(used, len(x) - 2)
        ax.plot(t, p, ".", ms=2, alpha=0.3, color="0.4", rasterized=True, label="test lenses")
        if len(x):
            ax.fill_between(x, q[:, 0], q[:, 4], color="C0", alpha=0.25, label="95% band")
            ax.fill_between(x, q[:, 1], q[:, 3], color="C0", alpha=0.5, label="68% band")
            ax.plot(x, q[:, 2], color="C0", lw=1.5, label="median")
        span = [min(np.min(t), np.min(p)), max(np.max(t), np.max(p))]
        ax.plot(span, span, "k--", lw=1, label="predicted = true")
        ax.set_xlabel(f"true {label}", fontsize=11)
        ax.set_ylabel(f"predicted {label}", fontsize=11)
        ax.tick_params(labelsize=9)
    axes[0].legend(loc="upper left", fontsize=9, markerscale=4)
    fig.suptitle(f"{len(true)} test lenses; bands: central 68% and 95% of the predictions in "
                 f"up to {used} bins of the true value (5 lenses or more each)", fontsize=11)
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
    true = np.asarray(true, dtype=np.float64)
    res = np.asarray(losses.parity_correct(true, np.asarray(pred, np.float64))) - true
    fig = Figure(figsize=(15, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, conventions.NUM_PARAMS)
    for k, ax in enumerate(axes):
        ax.hist(res[:, k], bins=50, color="C1")
        ax.axvline(0.0, color="k", lw=0.8, ls="--")
        unit = conventions.PARAM_UNITS[k]
        ax.set_xlabel("predicted - true " + conventions.PARAM_NAMES[k]
                      + (f" ({unit})" if unit else ""), fontsize=10)
        ax.set_ylabel("test lenses per bin", fontsize=10)
        ax.tick_params(labelsize=9)
    fig.suptitle(f"Residuals after parity correction, {len(res)} test lenses", fontsize=11)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=100)
    return path


def write_report(result, pred, true, out_dir, label="this model", bins=12):
    """Write metrics.json, table1.md, figure1.png and residuals.png into ``out_dir``.

    Args:
        result: the result dict of :func:`ensai_tf.evaluate.evaluate` (see
            :func:`table1_markdown`); written to ``metrics.json`` with the
            paper's numbers added.
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
    atomic.write_text(out_dir / METRICS_JSON, json.dumps(payload, indent=1, allow_nan=True) + "\n")
    atomic.write_text(out_dir / TABLE1_MD, table1_markdown(result, label))
    plot_figure1(pred, true, out_dir / FIGURE1_PNG, bins=bins)
    plot_residuals(pred, true, out_dir / RESIDUALS_PNG)
    return out_dir


def coverage_report(true, mean, std, calibration=None, levels=COVERAGE_LEVELS):
    """Interval coverage per parameter, raw and calibrated.

    Args:
        true: ``(N, n)`` truths (n = 5, or 7 with the shear).
        mean, std: ``(N, n)`` predicted Gaussian means and standard
            deviations, parameter units.
        calibration: the dict of :func:`ensai_tf.calibration.fit_interval_calibration`
            (``calibration.json``), or None.
        levels: nominal levels.

    Returns:
        ``{"raw": {level: {name: fraction}}, "calibrated": {...} or None,
        "levels": [...]}`` with string level keys (``"0.68"``).
    """
    names = conventions.target_names(np.shape(true)[1])

    def table(cal):
        cov = coverage(true, mean, std, levels=levels, calibration=cal)
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
        calibration: the dict of :func:`ensai_tf.calibration.fit_interval_calibration`
            (``calibration.json``), or None for raw intervals only.

    Returns:
        ``path``, as given.
    """
    levels = np.linspace(0.02, 0.98, 49)
    names = conventions.target_names(np.shape(true)[1])
    raw = coverage(true, mean, std, levels=levels)
    cal, cal_levels = None, levels
    if calibration is not None:
        lo, hi = min(calibration["levels"]), max(calibration["levels"])
        cal_levels = levels[(levels >= lo) & (levels <= hi)]
        cal = coverage(true, mean, std, levels=cal_levels, calibration=calibration)
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
    ax.set_title(f"interval calibration on {len(true)} test lenses\n"
                 + ("dashed: raw Gaussian intervals, solid: calibrated" if cal is not None
                    else "raw Gaussian intervals"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=110)
    return path


def shear_comparison_markdown(names, results):
    """Several networks on the same lenses with external shear, as Markdown (docs/design.md §8.5).

    Args:
        names: one row label per network.
        results: the result dicts of :func:`ensai_tf.evaluate.evaluate` with
            ``experiment="shear"``, in the order of ``names``, all on the same
            lenses (their ``"shear_bins"`` share the bins).

    Returns:
        str: the rms ellipticity error of every network in bins of gamma, with
        the paper's figures, and the 68% errors of every parameter over all
        lenses; ends in a newline.
    """
    lines = ["# Networks on lenses with external shear (docs/design.md §8.5)", "",
             f"{results[0]['n']} test lenses with gamma ~ U(0, 0.3); rms of the parity-corrected "
             "ellipticity error (both components) in bins of gamma.", "",
             "| gamma | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for b, row in enumerate(results[0]["shear_bins"]):
        vals = " | ".join(_fmt(r["shear_bins"][b]["rms_ellipticity"]) for r in results)
        lines.append(f"| [{row['gamma_lo']:.2f}, {row['gamma_hi']:.2f}) | {row['n']} | {vals} |")
    lines += ["", _paper_shear_line(), "",
              "68% errors over all these lenses:", "",
              "| network | " + " | ".join(conventions.PARAM_NAMES + conventions.SHEAR_NAMES) + " |",
              "|---|" + "---|" * (conventions.NUM_PARAMS + 2)]
    for name, r in zip(names, results):
        vals = [_fmt(r["metrics"][k]["error68"]) for k in conventions.PARAM_NAMES]
        vals += [_fmt(r.get("shear_metrics", {}).get(k, {}).get("error68")) for k in
                 conventions.SHEAR_NAMES]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
