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
- ``fitted subtraction``: the same fits, the blue residual without ICA (the
  default of ``ensai predict --bands``);
- ``single band, lens light left in``, ``single band, fitted subtraction`` and
  ``single band, auto``: the red band alone through ``ensai predict``'s
  single-band path (:class:`ensai_tf.prediction.TablePredictor`, the model's
  quality flags and the shipped screening network included), with
  ``--subtract-lens-light never``, ``always`` and ``auto`` (subtracted where
  the image raises the ``lens_light`` flag; the report gives how often it did);
- given a lens-light model, ``lens-light network``: a single-band network
  trained with lens light in its images, fed the red band with the lens light
  left in, prepared like any single-band image (peak 1,
  :func:`ensai_tf.preprocess.images.normalise_peak`); and ``lens-light
  network, truth-scaled``, the same band divided by the arcs' true red peak
  (the training normalisation, docs/design.md §5.7): a diagnostic that needs the truth.

A path is a function of a :class:`~ensai_tf.lens_light_paths.TwoBandBatch`
(the lenses of one colour ratio) that returns ``(N, 5)`` parameters
(:mod:`ensai_tf.lens_light_paths`); given a two-band model, ``two-band network``: a
network trained on both bands (docs/design.md §5.10), fed the PSF-matched bands, each
scaled to its own peak. The report holds the five 68% errors
(docs/design.md §8.2, after parity correction) per path, colour ratio and brightness
bin: ``lens_light.json``, ``lens_light.md`` and ``lens_light.png`` (the
theta_E error against colour ratio, one line per path, the ceiling dashed).

``--experiment ica`` writes the report of :func:`ensai_tf.twoband.ica_experiment`
(:func:`evaluate_ica`). The tables and the figure are drawn by
:mod:`ensai_tf.lens_light_tables`.
"""

import json
import pathlib
import sys

import numpy as np

from ensai_tf import atomic, twoband
from ensai_tf import config as config_lib
from ensai_tf.errors import InputError
from ensai_tf.evaluate import check_out_dir, default_out_dir
from ensai_tf.inference import load_predictor, predict_images
from ensai_tf.lens_light_paths import (SingleBand, TwoBandBatch, image_path, make_batch,
                                       single_band_paths, standard_paths)
from ensai_tf.lens_light_tables import (ARCS_ALONE, ica_markdown, lens_light_markdown,
                                        plot_lens_light)
from ensai_tf.metrics import error_table
from ensai_tf.prediction import load_table_predictor
from ensai_tf.preprocess import ica
from ensai_tf.preprocess.images import normalise_peak

__all__ = [
    "EXPERIMENT",
    "BRIGHTNESS_RANGE",
    "BRIGHTNESS_BINS",
    "ARCS_ALONE",
    "LENS_LIGHT_JSON",
    "LENS_LIGHT_MD",
    "LENS_LIGHT_PNG",
    "TwoBandBatch",
    "make_batch",
    "draw_brightness",
    "image_path",
    "SingleBand",
    "single_band_paths",
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

LENS_LIGHT_JSON = "lens_light.json"
LENS_LIGHT_MD = "lens_light.md"
LENS_LIGHT_PNG = "lens_light.png"


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
                          fit_model="mge", draw_kwargs=None, single_band=True,
                          two_band_model=None):
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
        paths: optional extra ``{name: path}``, each mapping a :class:`TwoBandBatch` to
            ``(N, 5)`` parameters.
        fit_model: lens-light model of the fitted paths, ``"mge"`` or ``"sersic"``.
        draw_kwargs: keyword arguments of :func:`ensai_tf.twoband.sample_two_band`.
        single_band: run the three single-band paths (:func:`single_band_paths`).
        two_band_model: optional network trained on both bands (docs/design.md §5.10).

    Returns:
        dict: ``"paths"`` (names, the ceiling first), ``"colour_ratios"``,
        ``"bins"`` (labels), ``"counts"`` (lenses per bin), ``"errors"``
        (``{path: {ratio: {bin: error_table}}}``), ``"pooled"`` (``{path:
        {bin: error_table}}`` over all colour ratios), ``"fit_seconds"`` (median
        and maximum seconds per lens of the two fits), ``"single_band"`` (per
        colour ratio: lenses, how many raised the ``lens_light`` flag, failed
        fits; None without the single-band paths), ``"single_band_fit_seconds"``,
        and the inputs.
    """
    if arcs is None:
        arcs, params = twoband.simulated_test_arcs(n, seed, config)
    arcs = np.asarray(arcs, np.float64)
    arcs = arcs[..., 0] if arcs.ndim == 4 else arcs
    params = np.asarray(params, np.float64)
    predict_fn = _load(model, arcs.shape[1], "model")
    lens_light_fn = (None if lens_light_model is None
                     else _load(lens_light_model, arcs.shape[1], "lens-light model"))
    two_band_fn = (None if two_band_model is None
                   else _load(two_band_model, arcs.shape[1], "two-band model"))
    table_predictor = load_table_predictor(model) if single_band else None
    all_paths = dict(standard_paths(predict_fn, lens_light_fn, table_predictor, two_band_fn),
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
    fit_seconds, single, single_seconds = [], {}, []
    for kappa in colour_ratios:
        batch = make_batch(arcs, params, draws, brightness, kappa, fit_model)
        errors[ARCS_ALONE][str(kappa)] = _tables(params, alone_pred, bins)
        pooled[ARCS_ALONE].append(alone_pred)
        for name, path in all_paths.items():
            pred = np.asarray(path(batch), np.float64)
            errors.setdefault(name, {})[str(kappa)] = _tables(params, pred, bins)
            pooled[name].append(pred)
        fit_seconds += batch.fit_seconds
        if single_band:
            result = batch.single_band(table_predictor)
            single[str(kappa)] = {"n": len(batch), "flagged": int(result.flagged.sum()),
                                  "failed": result.failed}
            single_seconds += result.fit_seconds.tolist()
    reps = len(colour_ratios)
    rep_bins = {k: np.tile(v, reps) for k, v in bins.items()}
    return {
        "model": str(model), "lens_light_model": None if lens_light_model is None
        else str(lens_light_model), "two_band_model": None if two_band_model is None
        else str(two_band_model), "n": int(len(arcs)), "seed": int(seed),
        "fit_model": fit_model, "colour_ratios": [str(k) for k in colour_ratios],
        "brightness_range": list(BRIGHTNESS_RANGE), "bins": list(bins),
        "counts": {k: int(v.sum()) for k, v in bins.items()}, "paths": list(errors),
        "errors": errors,
        "pooled": {name: _tables(np.tile(params, (reps, 1)), np.concatenate(preds), rep_bins)
                   for name, preds in pooled.items()},
        "fit_seconds": _seconds(fit_seconds), "single_band": single or None,
        "single_band_fit_seconds": _seconds(single_seconds),
    }


def _seconds(values):
    """Median, maximum and count of wall times (seconds), or None when there are none."""
    return ({"median": float(np.median(values)), "max": float(np.max(values)),
             "n": len(values)} if values else None)


def evaluate_lens_light(model, n=None, out_dir=None, config=None, seed=0, lens_light_model=None,
                        overwrite=False, fit_model="mge", two_band_model=None):
    """``ensai evaluate MODEL --experiment lens-light [--lens-light-model A] [--two-band-model B]``.

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
        two_band_model: optional network trained on both bands (docs/design.md §5.10).

    Returns:
        The summary dict of :func:`lens_light_experiment`, also written to
        :data:`LENS_LIGHT_JSON`, :data:`LENS_LIGHT_MD` and :data:`LENS_LIGHT_PNG`.
    """
    cfg = config if config is not None else config_lib.get_preset("paper")
    n = min(int(cfg.evaluate.n), 200) if n is None else int(n)
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    out = check_out_dir(out_dir or default_out_dir(model, EXPERIMENT), model, overwrite)
    for other in (lens_light_model, two_band_model):
        if other is not None:
            check_out_dir(out, other, overwrite=True)
    summary = lens_light_experiment(model, n=n, seed=seed, config=cfg,
                                    lens_light_model=lens_light_model, fit_model=fit_model,
                                    two_band_model=two_band_model)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / LENS_LIGHT_JSON, json.dumps(summary, indent=1) + "\n")
    text = lens_light_markdown(summary)
    atomic.write_text(out / LENS_LIGHT_MD, text)
    plot_lens_light(summary, out / LENS_LIGHT_PNG)
    sys.stdout.write(text)
    return summary


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
