"""Lens-light reports: ``ensai evaluate --experiment lens-light`` and ``--experiment ica``
(docs/design.md §8.4, §8.5).

``--experiment lens-light`` compares the ways of dealing with the lens galaxy.
The same ``n`` test-split lenses (docs/design.md §8.3) are rendered as two bands
(:func:`ensai_tf.twoband.apply_two_band`) at each colour ratio of
:data:`ensai_tf.twoband.COLOUR_RATIOS`, each lens with a lens-light
**brightness** ``B``: the lens light's peak over the arcs' peak in the red
band (both before the PSF), log-uniform in :data:`BRIGHTNESS_RANGE`. The red
band is then one image per lens whatever the colour ratio, and the blue
band's lens light peaks at ``B / kappa`` times its arcs. Each **path** turns the
two bands into the five parameters:

- ``arcs alone``, the ceiling: the true arcs at the matched PSF with the blue
  band's noise (no lens light; the same at every colour ratio);
- ``ICA``: :func:`ensai_tf.twoband.recover_arcs` (PSF matching, FastICA);
- ``fitted subtraction + ICA``: :func:`ensai_tf.twoband.recover_arcs_fitted`,
  ICA on the two lens-subtracted bands;
- ``fitted subtraction``: the same fits, the blue residual without ICA;
- given a lens-light model, ``lens-light network``: a single-band network
  trained with lens light in its images, fed the red band with the lens light
  left in, prepared like any single-band image (peak 1,
  :func:`ensai_tf.preprocess.images.normalise_peak`); and ``lens-light
  network, truth-scaled``, the same band divided by the arcs' true red peak
  (the training normalisation, docs/design.md §5.7): a diagnostic that needs the truth.

A path is a function of a :class:`TwoBandBatch` (the lenses of one colour
ratio) that returns ``(N, 5)`` parameters; :data:`TWO_BAND_NETWORK_PATHS` is
the slot for a two-band network. The report holds the five 68% errors
(docs/design.md §8.2, after parity correction) per path, colour ratio and brightness
bin: ``lens_light.json``, ``lens_light.md`` and ``lens_light.png`` (the
theta_E error against colour ratio, one line per path, the ceiling dashed).

``--experiment ica`` writes the report of :func:`ensai_tf.twoband.ica_experiment`
(:func:`evaluate_ica`).
"""

import dataclasses
import json
import pathlib
import sys
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from ensai_tf import atomic, conventions, twoband
from ensai_tf import config as config_lib
from ensai_tf.errors import InputError
from ensai_tf.evaluate import check_out_dir, default_out_dir
from ensai_tf.inference import load_predictor, predict_images
from ensai_tf.metrics import error_table
from ensai_tf.preprocess import ica
from ensai_tf.preprocess.images import normalise_peak

__all__ = [
    "EXPERIMENT",
    "BRIGHTNESS_RANGE",
    "BRIGHTNESS_BINS",
    "ARCS_ALONE",
    "TWO_BAND_NETWORK_PATHS",
    "LENS_LIGHT_JSON",
    "LENS_LIGHT_MD",
    "LENS_LIGHT_PNG",
    "TwoBandBatch",
    "make_batch",
    "draw_brightness",
    "image_path",
    "standard_paths",
    "lens_light_experiment",
    "lens_light_markdown",
    "plot_lens_light",
    "evaluate_lens_light",
    "ica_markdown",
    "evaluate_ica",
]

EXPERIMENT = "lens-light"
"""The ``--experiment`` name of this report (also the output folder's suffix)."""

BRIGHTNESS_RANGE = (1.0, 10.0)
"""Range of the red-band lens-light peak over the arcs' peak, drawn log-uniformly."""

BRIGHTNESS_BINS = ((1.0, 3.0), (3.0, 10.0))
"""Brightness bins of the report, ``[lo, hi)`` (the last one closed)."""

ARCS_ALONE = "arcs alone"
"""Name of the ceiling: the arcs without lens light."""

TWO_BAND_NETWORK_PATHS = {}
"""Slot for more paths, e.g. a network that reads both bands: ``{name: function}``,
each function mapping a :class:`TwoBandBatch` to ``(N, 5)`` parameters (arcsec, -, -,
arcsec, arcsec). Every entry becomes one more row of the tables and line of the plot
of :func:`lens_light_experiment` (empty until such a network exists)."""

LENS_LIGHT_JSON = "lens_light.json"
LENS_LIGHT_MD = "lens_light.md"
LENS_LIGHT_PNG = "lens_light.png"

_ICA = "ICA"
_FITTED_ICA = "fitted subtraction + ICA"
_FITTED = "fitted subtraction"
_NETWORK = "lens-light network"
_NETWORK_SCALED = "lens-light network, truth-scaled"


@dataclasses.dataclass
class TwoBandBatch:
    """The lenses of one colour ratio, as a path sees them.

    Attributes:
        blue, red: ``(N, n, n)`` float64 observed bands (arcs peak 1 in blue).
        fwhm_blue, fwhm_red: ``(N,)`` Gaussian PSF FWHMs, arcsec.
        colour_ratio: kappa of the batch.
        brightness: ``(N,)`` red-band lens-light peak / arcs' peak.
        arc_peak_red: ``(N,)`` the arcs' red peak before the PSF, in red-band
            units (truth, for diagnostics only).
        pixel_scale: pixel side, arcsec.
        fit_model: lens-light model of the fitted paths (``"mge"``/``"sersic"``).
        fit_seconds: wall time of each lens's two fits (filled by :meth:`fitted`).
    """

    blue: np.ndarray
    red: np.ndarray
    fwhm_blue: np.ndarray
    fwhm_red: np.ndarray
    colour_ratio: float
    brightness: np.ndarray
    arc_peak_red: np.ndarray
    pixel_scale: float = conventions.PIXEL_SCALE
    fit_model: str = "mge"
    fit_seconds: list = dataclasses.field(default_factory=list)
    _fitted: list = dataclasses.field(default=None, repr=False)

    def __len__(self):
        return len(self.blue)

    def fitted(self):
        """:class:`ensai_tf.twoband.FittedArcs` of every lens (ICA on the residuals
        included), computed once and shared by the paths."""
        if self._fitted is None:
            self._fitted = []
            for i in range(len(self)):
                start = time.perf_counter()
                self._fitted.append(twoband.recover_arcs_fitted(
                    self.blue[i], self.red[i], self.fwhm_blue[i], self.fwhm_red[i], unmix=True,
                    model=self.fit_model, pixel_scale=self.pixel_scale))
                self.fit_seconds.append(time.perf_counter() - start)
        return self._fitted


def draw_brightness(seed, n, bounds=BRIGHTNESS_RANGE):
    """Lens-light brightnesses of ``n`` lenses, log-uniform in ``bounds``.

    Args:
        seed: user seed (int); the first ``k`` values do not depend on ``n``.
        n: number of lenses.
        bounds: ``(lo, hi)``, red-band lens-light peak / arcs' peak, > 0.

    Returns:
        ``(n,)`` float64.

    Example:
        >>> b = draw_brightness(0, 1000)
        >>> bool(b.min() >= 1.0 and b.max() < 10.0), bool(abs(np.median(b) - 10 ** 0.5) < 0.3)
        (True, True)
    """
    u = np.random.default_rng([int(seed), 85]).uniform(size=int(n))
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    return np.exp(lo + (hi - lo) * u)


def make_batch(arcs, params, draws, brightness, colour_ratio, fit_model="mge",
               pixel_scale=conventions.PIXEL_SCALE):
    """Render the two bands of every lens at one colour ratio and brightness.

    Args:
        arcs: ``(N, n, n)`` noise-free arcs, peak 1.
        params: ``(N, 5)`` lens parameters.
        draws: dict of :func:`ensai_tf.twoband.sample_two_band`; its
            ``colour_ratio`` and ``lens_to_arc`` are replaced.
        brightness: ``(N,)`` red-band lens-light peak / arcs' peak.
        colour_ratio: kappa.
        fit_model: lens-light model of the fitted paths.
        pixel_scale: pixel side, arcsec.

    Returns:
        :class:`TwoBandBatch`.
    """
    n = len(arcs)
    d = dict(draws, colour_ratio=np.full(n, float(colour_ratio)))
    # the arcs' red peak is g_ar = 1 / (kappa f_lb) of their blue peak (twoband's model)
    arc_peak_red = 1.0 / (float(colour_ratio) * np.asarray(d["lens_blue_red"], np.float64))
    d["lens_to_arc"] = np.asarray(brightness, np.float64) * arc_peak_red
    bands = twoband.apply_two_band(arcs, params, d, pixel_scale)
    return TwoBandBatch(blue=bands["blue"], red=bands["red"], fwhm_blue=np.asarray(d["fwhm_blue"]),
                        fwhm_red=np.asarray(d["fwhm_red"]), colour_ratio=float(colour_ratio),
                        brightness=np.asarray(brightness, np.float64), arc_peak_red=arc_peak_red,
                        pixel_scale=pixel_scale, fit_model=fit_model)


def image_path(prepare, predict_fn):
    """A path that prepares one single-band image per lens and runs a network on them.

    Args:
        prepare: ``prepare(batch, i)`` -> ``(n, n)`` map of lens ``i``, masked
            pixels exactly 0.
        predict_fn: a function of :func:`ensai_tf.inference.load_predictor`.

    Returns:
        ``path(batch)`` -> ``(N, 5)`` float64 parameters.
    """
    def path(batch):
        images = np.stack([ica.to_network_input(prepare(batch, i)) for i in range(len(batch))])
        return predict_images(predict_fn, images)

    return path


def _ica_arc(batch, i):
    return twoband.recover_arcs(batch.blue[i], batch.red[i], batch.fwhm_blue[i],
                                batch.fwhm_red[i], pixel_scale=batch.pixel_scale).arc


def _fitted_ica_arc(batch, i):
    return batch.fitted()[i].ica.arc


def _fitted_arc(batch, i):
    return normalise_peak(batch.fitted()[i].residual_blue, "lens-subtracted blue band")


def _red_band(batch, i):
    return normalise_peak(batch.red[i], "red band")


def _red_band_truth_scaled(batch, i):
    return batch.red[i] / batch.arc_peak_red[i]


def standard_paths(predict_fn, lens_light_fn=None):
    """The paths of the report, by name, in report order (the ceiling is separate).

    Args:
        predict_fn: the evaluated network (arcs without lens light).
        lens_light_fn: optional single-band network trained with lens light.

    Returns:
        dict ``{name: path}``, each path mapping a :class:`TwoBandBatch` to
        ``(N, 5)`` parameters (module docstring).
    """
    paths = {_ICA: image_path(_ica_arc, predict_fn),
             _FITTED_ICA: image_path(_fitted_ica_arc, predict_fn),
             _FITTED: image_path(_fitted_arc, predict_fn)}
    if lens_light_fn is not None:
        paths[_NETWORK] = image_path(_red_band, lens_light_fn)
        paths[_NETWORK_SCALED] = image_path(_red_band_truth_scaled, lens_light_fn)
    return paths


def _bin_label(lo, hi):
    return f"{lo:g}-{hi:g}"


def _bins(brightness):
    """``{label: bool selection}``: ``"all"`` and each of :data:`BRIGHTNESS_BINS`."""
    out = {"all": np.ones(len(brightness), bool)}
    for k, (lo, hi) in enumerate(BRIGHTNESS_BINS):
        last = k == len(BRIGHTNESS_BINS) - 1
        out[_bin_label(lo, hi)] = (brightness >= lo) & (
            (brightness <= hi) if last else (brightness < hi))
    return out


def _tables(params, pred, bins):
    """``{bin: error_table}`` over the lenses of each non-empty bin."""
    return {label: error_table(params[sel], pred[sel]) for label, sel in bins.items() if sel.any()}


def _load(model, npix_expected, what):
    predict_fn, npix = load_predictor(model)
    if npix != npix_expected:
        raise InputError(f"{what} {str(model)!r} takes {npix}-pixel images; the experiment makes "
                         f"{npix_expected}")
    return predict_fn


def lens_light_experiment(model, n=16, seed=0, colour_ratios=twoband.COLOUR_RATIOS, config=None,
                          lens_light_model=None, arcs=None, params=None, paths=None,
                          fit_model="mge", draw_kwargs=None):
    """The five 68% errors of every path, per colour ratio and brightness bin.

    Args:
        model: the network of the arcs paths (folder, SavedModel or ``.keras``).
        n: test lenses; each is rendered once per colour ratio.
        seed: user seed of the test split, the two-band draws and the brightness.
        colour_ratios: kappa values.
        config: :class:`~ensai_tf.config.ExperimentConfig` of the arcs
            (default the paper preset).
        lens_light_model: optional single-band network trained with lens light.
        arcs, params: optional precomputed noise-free arcs ``(n, 192, 192[, 1])``
            and parameters ``(n, 5)`` (skips the simulation).
        paths: optional extra ``{name: path}`` (as :data:`TWO_BAND_NETWORK_PATHS`).
        fit_model: lens-light model of the fitted paths, ``"mge"`` or ``"sersic"``.
        draw_kwargs: keyword arguments of :func:`ensai_tf.twoband.sample_two_band`.

    Returns:
        dict: ``"paths"`` (names, the ceiling first), ``"colour_ratios"``,
        ``"bins"`` (labels), ``"counts"`` (lenses per bin), ``"errors"``
        (``{path: {ratio: {bin: error_table}}}``), ``"pooled"`` (``{path:
        {bin: error_table}}`` over all colour ratios), ``"fit_seconds"`` (median
        and maximum seconds per lens of the two fits), and the inputs.
    """
    if arcs is None:
        arcs, params = twoband.simulated_test_arcs(n, seed, config)
    arcs = np.asarray(arcs, np.float64)
    arcs = arcs[..., 0] if arcs.ndim == 4 else arcs
    params = np.asarray(params, np.float64)
    predict_fn = _load(model, arcs.shape[1], "model")
    lens_light_fn = (None if lens_light_model is None
                     else _load(lens_light_model, arcs.shape[1], "lens-light model"))
    all_paths = dict(standard_paths(predict_fn, lens_light_fn), **TWO_BAND_NETWORK_PATHS,
                     **(paths or {}))
    draws = twoband.sample_two_band(np.array([int(seed), 84], np.int64), params,
                                    **(draw_kwargs or {}))
    brightness = draw_brightness(seed, len(arcs))
    bins = _bins(brightness)
    alone = twoband.arcs_alone(twoband.matched_truth(arcs, draws), draws)
    alone_pred = predict_images(predict_fn, np.stack(
        [ica.to_network_input(normalise_peak(a)) for a in alone]))
    errors = {ARCS_ALONE: {}}
    pooled = {ARCS_ALONE: [], **{name: [] for name in all_paths}}
    fit_seconds = []
    for kappa in colour_ratios:
        batch = make_batch(arcs, params, draws, brightness, kappa, fit_model)
        errors[ARCS_ALONE][str(kappa)] = _tables(params, alone_pred, bins)
        pooled[ARCS_ALONE].append(alone_pred)
        for name, path in all_paths.items():
            pred = np.asarray(path(batch), np.float64)
            errors.setdefault(name, {})[str(kappa)] = _tables(params, pred, bins)
            pooled[name].append(pred)
        fit_seconds += batch.fit_seconds
    reps = len(colour_ratios)
    rep_bins = {k: np.tile(v, reps) for k, v in bins.items()}
    return {
        "model": str(model), "lens_light_model": None if lens_light_model is None
        else str(lens_light_model), "n": int(len(arcs)), "seed": int(seed),
        "fit_model": fit_model, "colour_ratios": [str(k) for k in colour_ratios],
        "brightness_range": list(BRIGHTNESS_RANGE), "bins": list(bins),
        "counts": {k: int(v.sum()) for k, v in bins.items()}, "paths": list(errors),
        "errors": errors,
        "pooled": {name: _tables(np.tile(params, (reps, 1)), np.concatenate(preds), rep_bins)
                   for name, preds in pooled.items()},
        "fit_seconds": ({"median": float(np.median(fit_seconds)), "max": float(np.max(fit_seconds)),
                         "n": len(fit_seconds)} if fit_seconds else None),
    }


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
    return "\n".join(lines) + "\n"


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


def evaluate_lens_light(model, n=None, out_dir=None, config=None, seed=0, lens_light_model=None,
                        overwrite=False, fit_model="mge"):
    """``ensai evaluate MODEL --experiment lens-light [--lens-light-model FOLDER]``.

    Args:
        model: the network of the arcs paths.
        n: test lenses (default ``config.evaluate.n``, capped at 200: every
            lens is fitted and unmixed once per colour ratio).
        out_dir: output folder (default ``./ensai_eval/<model name>-lens-light``,
            :func:`ensai_tf.evaluate.default_out_dir`; checked by
            :func:`ensai_tf.evaluate.check_out_dir`).
        config: :class:`~ensai_tf.config.ExperimentConfig` of the arcs.
        seed: user seed.
        lens_light_model: optional single-band network trained with lens light.
        overwrite: write into an existing non-empty folder.
        fit_model: lens-light model of the fitted paths.

    Returns:
        The summary dict of :func:`lens_light_experiment`, also written to
        :data:`LENS_LIGHT_JSON`, :data:`LENS_LIGHT_MD` and :data:`LENS_LIGHT_PNG`.
    """
    cfg = config if config is not None else config_lib.get_preset("paper")
    n = min(int(cfg.evaluate.n), 200) if n is None else int(n)
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    out = check_out_dir(out_dir or default_out_dir(model, EXPERIMENT), model, overwrite)
    if lens_light_model is not None:
        check_out_dir(out, lens_light_model, overwrite=True)
    summary = lens_light_experiment(model, n=n, seed=seed, config=cfg,
                                    lens_light_model=lens_light_model, fit_model=fit_model)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / LENS_LIGHT_JSON, json.dumps(summary, indent=1) + "\n")
    text = lens_light_markdown(summary)
    atomic.write_text(out / LENS_LIGHT_MD, text)
    plot_lens_light(summary, out / LENS_LIGHT_PNG)
    sys.stdout.write(text)
    return summary


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


def evaluate_ica(model, n=None, out_dir=None, config=None, seed=0):
    """``ensai evaluate MODEL --experiment ica``: :func:`ensai_tf.twoband.ica_experiment`
    with a model.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        n: test lenses per colour ratio (default: ``config.evaluate.n``,
            capped at 200 since every lens is unmixed once per ratio).
        out_dir: output folder (default ``./ensai_eval/<model name>-ica``,
            :func:`ensai_tf.evaluate.default_out_dir`).
        config: :class:`~ensai_tf.config.ExperimentConfig` of the arcs.
        seed: user seed.

    Returns:
        The summary dict, also written to ``ica.json`` and ``ica.md``.
    """
    cfg = config if config is not None else config_lib.get_preset("paper")
    n = min(int(cfg.evaluate.n), 200) if n is None else int(n)
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if out_dir is None:
        out_dir = default_out_dir(model, "ica")
    summary = twoband.ica_experiment(n=n, seed=seed, config=cfg, model=model, out_dir=out_dir)
    text = ica_markdown(summary)
    atomic.write_text(pathlib.Path(out_dir) / "ica.md", text)
    sys.stdout.write(text)
    return summary
