"""Evaluation on the fixed test set: Table 1, Figure 1 and the robustness experiments.

``evaluate`` runs a trained model on the first ``n`` lenses of the fixed
test split (docs/design.md §8.3), corrects the ellipticity parity against the truth
(docs/design.md §8.1) and writes into the output folder (:mod:`ensai_tf.reports`;
by default ``./ensai_eval/<model name>``, never the model's own folder; an
existing non-empty folder only with ``overwrite``):

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
Airy-plus-halo PSF) and ``lens-light`` (Sersic lens light in the images; the
command ``ensai evaluate --experiment lens-light`` runs the two-band comparison
of :mod:`ensai_tf.lens_light_report` instead).
:func:`compare_shear` puts several networks (trained with and without shear)
side by side in bins of gamma.

Networks with a Gaussian head are scored on their means, and the
report adds, per parameter, the fraction of test lenses whose truth falls in
the predicted 68% and 95% intervals, raw and after the post-hoc calibration
that training fitted on the validation set (``calibration.json``), with a
calibration plot ``calibration.png``. Networks with shear outputs add the
errors of ``gamma_1`` and ``gamma_2`` when the test lenses have shear.
"""

import pathlib
import sys
import time

import numpy as np

from ensai_tf import atomic
from ensai_tf import config as config_lib
from ensai_tf import conventions, inference, losses, reports, run_dir, symmetry, uncertainty
from ensai_tf.data import pipeline
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.metrics import error_table
from ensai_tf.callbacks import format_duration
from ensai_tf.model_dir import (COMBINER_JSON, CONFIG_YAML, FIGURE1_PNG, METRICS_JSON, MODEL_KERAS,
                                SAVED_MODEL_DIR, TABLE1_MD)

__all__ = [
    "DEFAULT_EVAL_ROOT",
    "SHEAR_BIN_EDGES",
    "check_out_dir",
    "default_out_dir",
    "shear_bins",
    "collect_test_set",
    "collect_fixed_split",
    "evaluate",
    "compare_shear",
]

SHEAR_BIN_EDGES = (0.0, 0.01, 0.05, 0.10, 0.15, 0.30)
"""Bins of the shear magnitude gamma for the shear experiment (docs/design.md §8.5)."""

DEFAULT_EVAL_ROOT = "ensai_eval"
"""Folder, relative to the working directory, of the default evaluation output folders."""

_INPUT_SETTINGS = (("simulate", "lens_light"), ("observe", "peak_normalise"))
"""Test-data settings that change what a network's input images look like (docs/design.md §8.3):
scoring a network on test lenses that differ from its training lenses in one of them is allowed,
with a warning."""

_PAPER_ROW_BY_MODEL = {"inception_v4": "Network 1 (Inception-v4)", "alexnet": "Network 2 (AlexNet)",
                       "overfeat": "Network 3 (Overfeat)", "ensai_net": "Network 4 (own design)"}


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


def _model_label(model_path):
    path = pathlib.Path(model_path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):
        cfg_path = candidate / CONFIG_YAML
        if cfg_path.is_file():
            try:
                name = config_lib.load_config(cfg_path).model.name
            except config_lib.ConfigError:
                return path.name
            if (candidate / COMBINER_JSON).is_file():
                return "combined"
            return name
    return path.name


def _setting_text(value):
    """A setting as ``--set`` writes it: ``true``/``false`` for booleans."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_input_settings(model, cfg):
    """Compare the test data with the lenses the model was trained on (its ``config.yaml``).

    A different band count cannot be scored and is refused. A different lens-light or
    normalisation setting is scored, with one warning line on stderr that names the settings
    and the ``--set`` options that would match the training lenses: without them a network
    trained with lens light is silently scored on lenses without it.

    Raises:
        ConfigError: the model reads another number of bands than the test images have.
    """
    folder = _model_folder(model)
    if not (folder / CONFIG_YAML).is_file():
        return  # a bare .keras file: its training config is unknown
    try:
        trained = run_dir.run_config(folder)
    except config_lib.ConfigError:
        return  # an unreadable config.yaml: nothing to compare (its model file is checked later)
    if trained.bands.count != cfg.bands.count:
        raise config_lib.ConfigError(
            f"the model reads {trained.bands.count}-band images (bands.count in its "
            f"{CONFIG_YAML}) but the test config has bands.count = {cfg.bands.count}; add "
            f"--set bands.count={trained.bands.count}")
    settings = [(f"{section}.{name}", getattr(getattr(trained, section), name),
                 getattr(getattr(cfg, section), name)) for section, name in _INPUT_SETTINGS]
    differ = [(key, t, c) for key, t, c in settings if t != c]
    if differ:
        was = ", ".join(f"{key}={_setting_text(t)}" for key, t, _ in differ)
        now = ", ".join(f"{key}={_setting_text(c)}" for key, _, c in differ)
        sets = " ".join(f"--set {key}={_setting_text(t)}" for key, t, _ in differ)
        print(f"ensai evaluate: warning: {folder.name} was trained with {was} but these "
              f"test lenses have {now}; add {sets} to score it on lenses like its training",
              file=sys.stderr, flush=True)


def _model_folder(model):
    """The folder a model lives in: the model folder of a file or of its ``saved_model/``."""
    path = pathlib.Path(model)
    folder = path if path.is_dir() else path.parent
    return folder.parent if folder.name == SAVED_MODEL_DIR else folder


def default_out_dir(model, experiment=None, symmetrize=False):
    """The default output folder of an evaluation: ``./ensai_eval/<model name>[-EXP][-d4]``.

    The model name is its folder's name (``trained_weights/alexnet`` -> ``alexnet``),
    followed by the file's stem for a ``.keras`` file other than ``model.keras``
    (``runs/a/best.keras`` -> ``a-best``). It lies in the working directory, never
    inside the model folder, the installed package or ``trained_weights/``.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        experiment: None or an experiment name, appended as ``-EXP``.
        symmetrize: append ``-d4``.

    Returns:
        ``pathlib.Path``, relative to the working directory.

    Example:
        >>> str(default_out_dir("trained_weights/alexnet", "shear"))
        'ensai_eval/alexnet-shear'
    """
    path = pathlib.Path(model)
    name = _model_folder(model).resolve().name or "model"
    if path.suffix == ".keras" and path.name != MODEL_KERAS:
        name += f"-{path.stem}"
    name += "" if experiment is None else f"-{experiment}"
    return pathlib.Path(DEFAULT_EVAL_ROOT) / (name + ("-d4" if symmetrize else ""))


def check_out_dir(out_dir, model, overwrite=False):
    """Refuse an output folder that would destroy data; never creates it.

    Args:
        out_dir: the evaluation's output folder.
        model: the model evaluated (its folder is never an output folder: the
            report would replace the model's own ``metrics.json``).
        overwrite: allow an existing non-empty folder (its report files are
            replaced, other files kept).

    Returns:
        ``out_dir`` as a ``pathlib.Path``.

    Raises:
        InputError: ``out_dir`` is the model's folder, a file, or a non-empty
            folder without ``overwrite``.
    """
    out_dir = pathlib.Path(out_dir)
    if out_dir.resolve() == _model_folder(model).resolve():
        raise InputError(f"--out {str(out_dir)!r} is the model's own folder: the report would "
                         f"replace its {METRICS_JSON}; choose another folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {str(out_dir)!r} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"output folder {str(out_dir)!r} is not empty; pass --overwrite to "
                         "replace its report or choose another --out")
    return out_dir


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
    sizes = {"validation": "val_size", "test": "test_size"}
    if split not in sizes:
        raise config_lib.ConfigError(f"split {split!r} is not a fixed split; use one of "
                                     f"{', '.join(sizes)}")
    size_key = sizes[split]
    if n > getattr(cfg.data, size_key):
        raise config_lib.ConfigError(f"--n {n} exceeds the fixed {split} set's size "
                                     f"data.{size_key} = {getattr(cfg.data, size_key)}")
    # example i depends only on its index (stateless seeds): a bigger cache of the split
    # holds the same first n lenses, and materialising just n simulates no others
    cache_dir = cfg.data.cache_dir or None
    path = pipeline.find_split_cache(split, cfg, cfg.data.seed, n, cache_dir)
    if path is None:
        path = pipeline.materialise_split(split, cfg, cfg.data.seed, size=n, cache_dir=cache_dir)
    arrays = pipeline.load_cache(path, verify=False)  # just verified or just written
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


def _shear_truth(extras):
    if all(k in extras for k in conventions.SHEAR_NAMES):
        return np.stack([np.asarray(extras[k], np.float64) for k in conventions.SHEAR_NAMES], -1)
    return None


def _test_config(config, experiment, n):
    """The test-data config of an evaluation and its number of lenses, checked."""
    cfg = config if config is not None else config_lib.get_preset("paper")
    cfg = config_lib.experiment_config(cfg, experiment)
    n = cfg.evaluate.n if n is None else int(n)
    if n < 1:
        raise config_lib.ConfigError(f"--n {n} must be >= 1")
    if n > cfg.data.test_size:
        raise config_lib.ConfigError(f"--n {n} exceeds the fixed test set's size "
                                     f"data.test_size = {cfg.data.test_size}")
    return cfg, n


def _load_scorer(model, cfg, trust_savedmodel=False, with_spread=True):
    """The model's raw predict function and input side, checked against the test images."""
    predict_fn, npix = inference.load_predictor(model, raw=True, trust_savedmodel=trust_savedmodel,
                                                with_spread=with_spread)
    if npix != cfg.image.npix:
        raise ModelDirError(f"the model takes {npix}x{npix} images but the test config has "
                            f"image.npix = {cfg.image.npix}")
    return predict_fn, npix


def _score_shear(result, outputs, true, extras, n_out, experiment):
    """Add the shear outputs' errors and the shear bins to ``result``; the truths scored."""
    shear_true = _shear_truth(extras) if n_out > conventions.NUM_PARAMS else None
    scored_true = true
    if shear_true is not None:
        scored_true = np.concatenate([true, shear_true], axis=1)
        table = error_table(scored_true, outputs)
        result["shear_metrics"] = {k: table[k] for k in conventions.SHEAR_NAMES}
    if experiment == "shear":
        result["shear_bins"] = shear_bins(outputs[:, :scored_true.shape[1]], scored_true,
                                          _shear_gamma(extras))
    return scored_true


def _score_intervals(result, summary, scored_true, calibration, out_dir):
    """Add the interval coverage to ``result`` and write ``calibration.png``."""
    scored = scored_true.shape[1]
    mean, std = summary["mean"][:, :scored], summary["std"][:, :scored]
    if calibration is not None and np.shape(calibration["multipliers"])[1] != scored:
        calibration = _subset_calibration(calibration, scored)
    result["coverage"] = reports.coverage_report(scored_true, mean, std, calibration)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports.plot_calibration(scored_true, mean, std, out_dir / reports.CALIBRATION_PNG,
                             calibration)


def evaluate(model, n=None, experiment=None, out_dir=None, config=None, symmetrize=False,
             trust_savedmodel=False, overwrite=False):
    """Evaluate a trained model on the fixed test set and write Table 1 and Figure 1.

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        n: number of test lenses (default ``config.evaluate.n``).
        experiment: None or an :data:`ensai_tf.config.EXPERIMENTS` name: ``"shear"``,
            ``"psf"`` or ``"lens-light"`` (:func:`ensai_tf.config.experiment_config`).
        out_dir: output folder (default :func:`default_out_dir`:
            ``./ensai_eval/<model name>[-EXP][-d4]``); never the model's folder.
        config: the resolved config that defines the test data (default:
            the paper preset, whose test split is the fixed test set of
            docs/design.md §8.3; a model's own training config is deliberately not
            used, so every model is scored on the same lenses; where its training lenses
            differ in lens light or normalisation, a warning line names the ``--set``
            options that match them).
        symmetrize: average each prediction over the eight flips and
            rotations of the image (:func:`ensai_tf.symmetry.symmetrize`;
            point-estimate models only, 8x the time per lens).
        trust_savedmodel: as :func:`ensai_tf.inference.load_predictor`.
        overwrite: write into an existing non-empty ``out_dir``
            (:func:`check_out_dir`).

    Returns:
        The result dict written to ``metrics.json``: ``"metrics"``
        (:func:`ensai_tf.metrics.error_table`); for a Gaussian head
        ``"coverage"`` (:func:`ensai_tf.reports.coverage_report`), for shear
        outputs on lenses with shear ``"shear_metrics"``.

    Raises:
        ModelDirError: missing or corrupt model.
        ConfigError: bad ``n`` or experiment; a model that reads another number of
            bands than ``config.bands.count``.
        InputError: ``symmetrize`` with a Gaussian-head model; an output
            folder refused by :func:`check_out_dir`.
    """
    started = time.perf_counter()
    out_dir = check_out_dir(out_dir or default_out_dir(model, experiment, symmetrize), model,
                            overwrite)
    cfg, n = _test_config(config, experiment, n)
    if experiment is None:  # an experiment changes the test lenses on purpose
        _check_input_settings(model, cfg)
    # averaging over flips and rotations works on point estimates: no spread head then
    predict_fn, npix = _load_scorer(model, cfg, trust_savedmodel, with_spread=not symmetrize)
    calibration = inference.load_calibration(model)
    if symmetrize:
        predict_fn = symmetry.symmetrize(predict_fn)
    # trace once, untimed, before the test set is simulated: a model that --symmetrize
    # cannot average fails here, not after minutes of simulation
    predict_fn(np.zeros((1, npix, npix, cfg.bands.count), np.float32))
    images, true, extras = collect_test_set(cfg, n)
    start = time.perf_counter()
    raw = inference.predict_images(predict_fn, images, cfg.evaluate.batch_size)
    elapsed = time.perf_counter() - start
    head, n_out = uncertainty.head_layout(raw.shape[1])
    summary = uncertainty.gaussian_summary(raw) if head != "point" else None
    outputs = raw if summary is None else summary["mean"]
    pred = outputs[:, :conventions.NUM_PARAMS]
    result = {"model": str(model), "experiment": experiment, "n": n, "head": head,
              "metrics": error_table(true, pred),
              "time_per_lens_s": elapsed / n, "batch_size": cfg.evaluate.batch_size,
              "symmetrize": "d4" if symmetrize else None}
    scored_true = _score_shear(result, outputs, true, extras, n_out, experiment)
    label = _model_label(model)
    result["paper_row"] = _PAPER_ROW_BY_MODEL.get(label, "Combined" if label == "combined"
                                                  else None)
    if symmetrize:
        label += " (D4-averaged)"
    if summary is not None:
        _score_intervals(result, summary, scored_true, calibration, out_dir)
    out = reports.write_report(result, pred, true, out_dir, label=label,
                               bins=cfg.evaluate.band_bins)
    print((out / TABLE1_MD).read_text())
    extra = f", {reports.CALIBRATION_PNG}" if summary is not None else ""
    print(f"ensai evaluate: scored {label} on {n} test lenses in "
          f"{format_duration(time.perf_counter() - started)} ({1e3 * elapsed / n:.2f} ms per lens "
          f"in batches of {cfg.evaluate.batch_size}); wrote {out} ({TABLE1_MD}, {METRICS_JSON}, "
          f"{FIGURE1_PNG}, {reports.RESIDUALS_PNG}{extra})", flush=True)
    return result


def _subset_calibration(calibration, n):
    """The first ``n`` targets' columns of a calibration (shear network, lenses without shear)."""
    table = np.asarray(calibration["multipliers"], dtype=np.float64)
    if table.shape[1] < n:
        raise ModelDirError(f"calibration.json covers {table.shape[1]} targets, fewer than the "
                            f"{n} being scored")
    return dict(calibration, multipliers=table[:, :n].tolist())


def compare_shear(models, out_dir, n=None, config=None, overwrite=False):
    """Several networks on the same lenses with external shear, side by side.

    Runs :func:`evaluate` with ``experiment="shear"`` for each model (its
    report goes to ``out_dir/<i>-<label>/``), then writes
    ``out_dir/shear_comparison.md`` (:func:`ensai_tf.reports.shear_comparison_markdown`):
    the rms ellipticity error and the 68% errors of every parameter in bins
    of gamma, with the paper's figures (docs/design.md §8.5).

    Args:
        models: model folders, SavedModel folders or ``.keras`` files (for
            example one trained without shear and one with).
        out_dir: output folder.
        n: test lenses per model (default ``config.evaluate.n``).
        config: test-data config (default: the paper preset).
        overwrite: write into an existing non-empty ``out_dir``.

    Returns:
        list of the per-model result dicts.

    Raises:
        InputError: no model, or ``out_dir`` refused by :func:`check_out_dir`
            (for any of the models).
    """
    if not models:
        raise InputError("compare_shear needs at least one model")
    started = time.perf_counter()
    for model in models:
        out_dir = check_out_dir(out_dir, model, overwrite)
    results = []
    for i, model in enumerate(models):
        sub = out_dir / f"{i + 1}-{_model_label(model)}"
        results.append(evaluate(model, n=n, experiment="shear", out_dir=sub, config=config,
                                overwrite=overwrite))
    names = [f"{i + 1}-{_model_label(m)}" for i, m in enumerate(models)]
    text = reports.shear_comparison_markdown(names, results)
    atomic.write_text(out_dir / reports.SHEAR_COMPARISON_MD, text)
    print(text)
    print(f"ensai evaluate: compared {len(models)} networks on {results[0]['n']} test lenses "
          f"with shear in {format_duration(time.perf_counter() - started)}; wrote "
          f"{out_dir} ({reports.SHEAR_COMPARISON_MD} and one folder per network)", flush=True)
    return results
