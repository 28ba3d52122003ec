"""The lens-light reports as Markdown tables and a figure (docs/design.md §8.4).

:func:`lens_light_markdown` and :func:`plot_lens_light` write the tables and
the figure of :func:`ensai_tf.lens_light_report.lens_light_experiment`
(``ensai evaluate --experiment lens-light``); :func:`ica_markdown` the table
of :func:`ensai_tf.twoband.ica_experiment` (``--experiment ica``).
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from ensai_tf import atomic, conventions

__all__ = ["ARCS_ALONE", "lens_light_markdown", "plot_lens_light", "ica_markdown"]

ARCS_ALONE = "arcs alone"
"""Name of the ceiling: the arcs without lens light."""


def _e68(table, name="theta_e"):
    return f"{table[name]['error68']:.3f}" if table else "-"


def lens_light_markdown(summary):
    """The lens-light experiment as Markdown tables.

    Args:
        summary: the dict of :func:`lens_light_experiment`.

    Returns:
        str, ending in a newline: theta_E's 68% error (arcsec) per path and
        colour ratio, for all lenses and per brightness bin, then all five
        errors per path and colour ratio, and per path and brightness bin
        (all colour ratios pooled).
    """
    ratios, bins, names = summary["colour_ratios"], summary["bins"], conventions.PARAM_NAMES
    counts = ", ".join(f"{summary['counts'][b]} with B in {b}" for b in bins[1:])
    lines = [f"# Lens light: {summary['n']} test lenses per colour ratio ({counts})", "",
             "68% errors (docs/design.md §8.2, after parity correction) of each path from two "
             "synthetic bands (docs/design.md §8.4): a red Sersic lens galaxy and blue arcs, the "
             "arcs `kappa` (colour ratio) times bluer; brightness B = red-band lens-light peak "
             f"/ arcs' peak, log-uniform in [{summary['brightness_range'][0]:g}, "
             f"{summary['brightness_range'][1]:g}]. Model: `{summary['model']}`"
             + (f"; lens-light network: `{summary['lens_light_model']}`"
                if summary["lens_light_model"] else "") + f"; fits: {summary['fit_model']}.", ""]
    for b in bins:
        title = "all lenses" if b == "all" else f"B in {b}"
        lines += [f"## theta_E 68% error (arcsec) against colour ratio, {title}", "",
                  "| path | " + " | ".join(ratios) + " |", "|---" * (len(ratios) + 1) + "|"]
        for path in summary["paths"]:
            row = [_e68(summary["errors"][path][k].get(b)) for k in ratios]
            lines.append(f"| {path} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## All five 68% errors per colour ratio (all lenses)", "",
              "| path | colour ratio | " + " | ".join(names) + " |",
              "|---" * (len(names) + 2) + "|"]
    for path in summary["paths"]:
        for k in ratios:
            t = summary["errors"][path][k]["all"]
            lines.append(f"| {path} | {k} | " + " | ".join(_e68(t, p) for p in names) + " |")
    lines += ["", "## All five 68% errors per brightness bin (colour ratios pooled)", "",
              "| path | B | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for path in summary["paths"]:
        for b in bins:
            t = summary["pooled"][path].get(b)
            lines.append(f"| {path} | {b} | " + " | ".join(_e68(t, p) for p in names) + " |")
    fit = summary.get("fit_seconds")
    if fit:
        lines += ["", f"Lens-light fits (two bands, PSF matching and ICA of the residuals): "
                      f"median {fit['median']:.2f} s, max {fit['max']:.2f} s per lens "
                      f"({fit['n']} lenses)."]
    lines += _single_band_lines(summary)
    return "\n".join(lines) + "\n"


def _single_band_lines(summary):
    """How often the single-band ``auto`` path subtracted, and the single-band fit times."""
    single, fit = summary.get("single_band"), summary.get("single_band_fit_seconds")
    if not single:
        return []
    flagged = ", ".join(f"{v['flagged']}/{v['n']} at {k}" for k, v in single.items())
    failed = sum(v["failed"] for v in single.values())
    lines = ["", f"Single band (the red band): `single band, auto` subtracted the lens light "
                 f"where the image raised the `lens_light` flag: {flagged} (colour ratio); "
                 f"{failed} lens-light fits failed."]
    if fit:
        lines[-1] += (f" Single-band fits: median {fit['median']:.2f} s, max {fit['max']:.2f} s "
                      "per image.")
    return lines


def plot_lens_light(summary, path):
    """theta_E's 68% error against colour ratio, one line per path, the ceiling dashed.

    One panel for all lenses and one per brightness bin; log axes.

    Args:
        summary: the dict of :func:`lens_light_experiment`.
        path: output image file (``.png``), written atomically.
    """
    bins = summary["bins"]
    ratios = [float(k) for k in summary["colour_ratios"]]
    fig = Figure(figsize=(4.4 * len(bins), 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(bins), sharey=True, squeeze=False)[0]
    for ax, b in zip(axes, bins):
        for j, name in enumerate(summary["paths"]):
            values = [summary["errors"][name][k].get(b, {}).get("theta_e", {}).get(
                "error68", np.nan) for k in summary["colour_ratios"]]
            ceiling = name == ARCS_ALONE
            ax.plot(ratios, values, ls="--" if ceiling else "-", marker=None if ceiling else "o",
                    color="0.4" if ceiling else f"C{j}", label=name + (" (ceiling)" if ceiling
                                                                    else ""))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ratios)
        ax.set_xticklabels([f"{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("colour ratio (arcs bluer than the lens by)")
        ax.set_title("all lenses" if b == "all" else f"lens-light brightness B in {b}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("theta_E 68% error (arcsec)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)
    rows = -(-len(labels) // 4)
    fig.tight_layout(rect=(0.0, 0.06 * rows, 1.0, 1.0))
    atomic.save_figure(fig, path, dpi=110)


def ica_markdown(summary):
    """The ICA experiment as a Markdown table (correlation and, if present, 68% errors).

    Args:
        summary: the summary dict of :func:`ensai_tf.twoband.ica_experiment`:
            ``"n_per_ratio"``, ``"colour_ratios"`` (``{ratio:
            correlation_summary}``), ``"all"``, ``"arcs_alone"``
            (:func:`ensai_tf.twoband.correlation_summary` dicts) and optionally
            ``"errors"`` (``{"arcs_alone": metrics, "ica": {ratio: metrics}}``
            of :func:`ensai_tf.metrics.error_table`, in parameter units).

    Returns:
        str: the Markdown text, ending in a newline.
    """
    lines = ["ICA arc recovery on synthetic two-band lenses (docs/design.md §8.4): Pearson "
             "correlation of the recovered arc component with the true arcs (PSF-matched), "
             f"{summary['n_per_ratio']} lenses per colour ratio.", "",
             "| colour ratio | median | 5th percentile | min |", "|---|---|---|---|"]
    for kappa, s in summary["colour_ratios"].items():
        lines.append(f"| {kappa} | {s['median']:.3f} | {s['p5']:.3f} | {s['min']:.3f} |")
    for label, s in (("all", summary["all"]), ("arcs alone (noise ceiling)",
                                               summary["arcs_alone"])):
        lines.append(f"| {label} | {s['median']:.3f} | {s['p5']:.3f} | {s['min']:.3f} |")
    errors = summary.get("errors")
    if errors:
        names = conventions.PARAM_NAMES
        lines += ["", "68% errors (docs/design.md §8.2):", "",
                  "| input | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        rows = [("arcs alone", errors["arcs_alone"])] + [
            (f"ICA, colour ratio {k}", v) for k, v in errors["ica"].items()]
        for label, m in rows:
            lines.append(f"| {label} | " + " | ".join(f"{m[n]['error68']:.3f}" for n in names)
                         + " |")
    return "\n".join(lines) + "\n"
