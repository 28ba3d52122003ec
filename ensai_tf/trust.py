"""How far to trust a prediction: interval coverage under shifts, flag rates and detection rates.

``ensai evaluate --experiment trust MODEL`` (:func:`evaluate_trust`) measures,
on fixed simulated sets:

* the coverage of the model's 68% and 95% intervals, raw and calibrated, on
  the test split and on two shifted sets the validation split does not
  contain (external shear with gamma <= 0.1, and a Gaussian PSF twice as wide
  as the prior's widest), with the mean interval width on each, so a reader
  sees whether the intervals widen when the data move away from training;
* a reliability diagram (observed against nominal coverage);
* the rate of each quality flag (:mod:`ensai_tf.flags`) on the clean test
  split, and the detection rate of the matching flag on sets made to trigger
  it (:func:`bad_sets`): pure noise and blank sky, unlensed galaxies, lens
  light left in, small cutouts, and arcs cut by the cutout's edge.

Every set is deterministic: its images depend only on the config and seeds.
"""

import json
import pathlib

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from ensai_tf import atomic, conventions, flags, reports, uncertainty
from ensai_tf import config as config_lib
from ensai_tf.calibration import interval_multipliers
from ensai_tf.inference import load_calibration, load_predictor, predict_images
from ensai_tf.preprocess.images import iter_prepared_array
from ensai_tf.data import sources
from ensai_tf.data.draws import fold_seeds, uniforms
from ensai_tf.data.observe import observe
from ensai_tf.data.render import ray_geometry, render_arcs
from ensai_tf.data.seeds import example_seeds
from ensai_tf.data.stages import load_stamps, observe_seeds
from ensai_tf.evaluate import check_out_dir, collect_fixed_split, default_out_dir

__all__ = [
    "BAD_SET_FLAGS",
    "DEFAULT_N",
    "FLAGS_PNG",
    "RELIABILITY_PNG",
    "TRUST_JSON",
    "TRUST_MD",
    "bad_sets",
    "evaluate_trust",
    "flag_rates",
    "interval_report",
    "shifted_configs",
    "blank_sky_images",
    "edge_cut_images",
    "noise_images",
    "prepare_stack",
    "small_cutouts",
    "unlensed_galaxy_images",
]

BAD_SET_FLAGS = {
    "noise": "no_lens",
    "blank_sky": "no_lens",
    "unlensed_galaxy": "no_lens",
    "lens_light": "lens_light",
    "lens_light_bright": "lens_light",
    "small_cutout": "small_field",
    "edge_cut": "small_field",
}
"""The flag each bad set of :func:`bad_sets` must trigger. ``lens_light`` has the training
prior's lens light (peak 0.3-10 times the arcs'), ``lens_light_bright`` that of the
lens-light experiment (1-10 times, :mod:`ensai_tf.lens_light_report`)."""

DEFAULT_N = 200
"""Lenses per set of ``ensai evaluate --experiment trust`` unless ``--n`` says otherwise."""

TRUST_MD = "trust.md"
"""The report's Markdown table."""
TRUST_JSON = "trust.json"
"""The report's numbers."""
RELIABILITY_PNG = "reliability.png"
"""Observed against nominal coverage on the test split, raw (dashed) and calibrated."""
FLAGS_PNG = "flag_rates.png"
"""Flag rates on the clean test split and detection rates on each bad set."""

WIDE_PSF_FACTOR = 2.0
"""The wide-PSF shifted set: a Gaussian PSF on every image, this many times the prior's widest sigma."""
SHIFTED_SHEAR_MAX = 0.1
"""The shear shifted set: external shear gamma ~ U(0, this)."""

UNLENSED_SEED = 9173
"""User seed of the unlensed-galaxy set (test-split stream, so test stamps)."""

UNLENSED_STREAM = 41
"""Seed stream (folded into each example's seed) of an unlensed galaxy's offset."""

UNLENSED_CHUNK = 64
"""Unlensed galaxies rendered per batch (bounds the memory of the oversampled grids)."""

UNLENSED_OFFSET = 0.3
"""Half-side of the uniform offset of an unlensed galaxy from the field centre, arcsec."""


def noise_images(n, npix=conventions.NPIX, seed=0):
    """Images of pure noise: white or pixel-correlated Gaussian noise, zero mean.

    Args:
        n: number of images.
        npix: side, pixels.
        seed: numpy seed.

    Returns:
        ``(n, npix, npix)`` float64 images (arbitrary units; half white, half
        smoothed by a 3-pixel box so neighbouring pixels correlate).
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, npix, npix))
    smooth = np.arange(n) % 2 == 1
    if smooth.any():
        k = np.ones(3) / 3.0
        sm = images[smooth]
        sm = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 1, sm)
        sm = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 2, sm)
        images[smooth] = sm
    return images


def blank_sky_images(n, npix=conventions.NPIX, seed=0):
    """Blank sky: a sky level with Poisson noise, hot pixels and a cosmic-ray streak.

    Args:
        n: number of images.
        npix: side, pixels.
        seed: numpy seed.

    Returns:
        ``(n, npix, npix)`` float64 images in counts: sky ~ U(20, 2000)
        counts per pixel, Poisson-distributed, plus U{0..50} hot pixels of
        10-50 sky rms and one cosmic-ray streak of 3-15 pixels.
    """
    rng = np.random.default_rng(seed)
    sky = rng.uniform(20.0, 2000.0, size=(n, 1, 1))
    images = rng.poisson(np.broadcast_to(sky, (n, npix, npix))).astype(np.float64)
    rms = np.sqrt(sky[:, 0, 0])
    for i in range(n):
        k = rng.integers(0, 51)
        rows, cols = rng.integers(0, npix, k), rng.integers(0, npix, k)
        images[i, rows, cols] += rng.uniform(10.0, 50.0, k) * rms[i]
        length = rng.integers(3, 16)
        r0, c0 = rng.integers(0, npix - 16, 2)
        images[i, r0 + np.arange(length), c0 + np.arange(length)] += 30.0 * rms[i]
    return images


def unlensed_galaxy_images(cfg, n, seed=UNLENSED_SEED, split="test", start=0):
    """Single galaxies without a lens, observed like the test lenses.

    The sources of :mod:`ensai_tf.data.sources` (the split's stamps) are drawn
    as for the simulator, placed within ``UNLENSED_OFFSET`` arcsec of the
    field centre, rendered with zero deflection (theta_E = 0), scaled to
    peak 1 and passed through the evaluation observation chain
    (:func:`ensai_tf.data.observe.observe`, docs/design.md §5).

    Args:
        cfg: :class:`~ensai_tf.config.ExperimentConfig` of the test data.
        n: number of images.
        seed: user seed; the example seeds are those of ``split``.
        split: whose source stamps and seed stream, ``"train"``,
            ``"validation"`` or ``"test"`` (the trust report's set).
        start: index of the first example.

    Returns:
        ``(n, npix, npix)`` float32 observed images, masked pixels 0.
    """
    stamps = load_stamps(split, cfg)
    geo = ray_geometry(cfg.image, cfg.simulate)
    chunks = [_unlensed_chunk(cfg, stamps, geo, example_seeds(int(seed), split, int(start) + i,
                                                              min(UNLENSED_CHUNK, n - i)))
              for i in range(0, n, UNLENSED_CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0,) + (cfg.image.npix,) * 2, np.float32)


def _unlensed_chunk(cfg, stamps, geo, seeds):
    """Observed unlensed galaxies of the per-example ``seeds``, ``(B, npix, npix)`` float32."""
    n = int(seeds.shape[0])
    draws = sources.sample_sources(seeds, None, cfg.source, len(stamps))
    images, half = sources.render_sources(draws, stamps, size=int(cfg.simulate.source_pixels),
                                          taper_radius=float(cfg.source.taper_radius))
    position = UNLENSED_OFFSET * (2.0 * uniforms(fold_seeds(seeds, UNLENSED_STREAM), 2) - 1.0)
    params = tf.zeros((n, conventions.NUM_PARAMS), tf.float32)
    arcs, _, _, _ = render_arcs(params, None, None, images, half, position, geo)
    peak = tf.reduce_max(arcs, axis=(1, 2), keepdims=True)
    arcs = arcs / tf.where(peak > 0, peak, 1.0)
    out = observe(arcs[..., None], params, observe_seeds(seeds), cfg.observe, training=False)
    return np.asarray(out["image"][..., 0], dtype=np.float32)


def small_cutouts(images, side=100):
    """Central ``side x side`` crops of field images (a cutout smaller than the field).

    Args:
        images: ``(N, H, W)`` or ``(N, H, W, 1)`` images.
        side: crop side, pixels.

    Returns:
        ``(N, side, side)`` array.
    """
    images = np.asarray(images)
    images = images[..., 0] if images.ndim == 4 else images
    r0 = (images.shape[1] - side) // 2
    c0 = (images.shape[2] - side) // 2
    return images[:, r0:r0 + side, c0:c0 + side]


def edge_cut_images(images, seed=0):
    """Field-sized cutouts whose edge cuts through the arcs: the brightest arc moved onto the edge.

    Each image is translated along the axis on which its brightest point
    (maximum of the 3x3 median-filtered image) lies farthest from the
    centre, towards that side, until that point sits on the field's last
    pixel, so the arc through it is cut by the edge; the vacated pixels are
    filled with Gaussian noise of the image's own background level and rms
    (median and 1.4826 MAD of its unmasked pixels), as a cutout of a larger
    exposure would be.

    Args:
        images: ``(N, H, W)`` or ``(N, H, W, 1)`` images, 0.04 arcsec pixels.
        seed: numpy seed of the fill noise.

    Returns:
        ``(images, shifts)``: ``(N, H, W)`` float64 images and the integer
        shifts ``(N, 2)`` applied, ``(columns, rows)``, pixels.
    """
    images = np.asarray(images, dtype=np.float64)
    images = images[..., 0] if images.ndim == 4 else images
    rng = np.random.default_rng(seed)
    n, h, w = images.shape
    smooth = ndimage.median_filter(images, size=(1, 3, 3), mode="nearest")
    out = np.empty_like(images)
    shifts = np.zeros((n, 2), dtype=int)
    for i in range(n):
        img = images[i]
        vals = img[img != 0]
        bg = np.median(vals)
        rms = 1.4826 * np.median(np.abs(vals - bg))
        row, col = np.unravel_index(np.argmax(smooth[i]), (h, w))
        offset = np.array([col - (w - 1) / 2.0, row - (h - 1) / 2.0])
        axis = int(np.argmax(np.abs(offset)))
        d = np.zeros(2, dtype=int)
        d[axis] = (w - 1 - col) if axis == 0 and offset[0] >= 0 else \
            (-col if axis == 0 else ((h - 1 - row) if offset[1] >= 0 else -row))
        shifted = np.roll(img, shift=(d[1], d[0]), axis=(0, 1))
        valid = np.zeros_like(img, dtype=bool)
        valid[max(d[1], 0):h + min(d[1], 0), max(d[0], 0):w + min(d[0], 0)] = True
        out[i] = np.where(valid, shifted, bg + rms * rng.normal(size=img.shape))
        shifts[i] = d
    return out, shifts


def shifted_configs(cfg):
    """Test-data configs that the validation split does not contain.

    Args:
        cfg: the base :class:`~ensai_tf.config.ExperimentConfig`.

    Returns:
        dict name -> config: ``"shear"`` (external shear, gamma ~ U(0,
        ``SHIFTED_SHEAR_MAX``), docs/design.md §2.2) and ``"wide_psf"`` (a
        Gaussian PSF on every image with sigma ``WIDE_PSF_FACTOR`` times the
        prior's largest, docs/design.md §5.3 step 1).
    """
    sigma = WIDE_PSF_FACTOR * float(cfg.observe.psf_sigma_pix[1])
    shear = config_lib.apply_overrides(config_lib.experiment_config(cfg, "shear"),
                                       [f"lens.shear_gamma=[0.0,{SHIFTED_SHEAR_MAX}]"])
    wide = config_lib.apply_overrides(cfg, ["observe.psf=gaussian", "observe.psf_prob=1.0",
                                            f"observe.psf_sigma_pix=[{sigma},{sigma}]"])
    return {"shear": shear, "wide_psf": wide}


def interval_report(predict_fn, images, truth, calibration):
    """Coverage and mean width of a model's intervals on one set.

    Args:
        predict_fn: :func:`ensai_tf.inference.load_predictor` with ``raw=True``.
        images: ``(N, npix, npix, 1)`` images.
        truth: ``(N, >=5)`` true parameters (the first five are scored).
        calibration: the model's ``calibration.json`` dict, or None.

    Returns:
        dict: ``"coverage"`` (:func:`ensai_tf.reports.coverage_report`) and
        ``"mean_std"`` (name -> mean predicted standard deviation, parameter
        units, after calibration when there is one), or None for a model
        without intervals.
    """
    raw = predict_images(predict_fn, images)
    head, _ = uncertainty.head_layout(raw.shape[1])
    if head == "point":
        return None
    summary = uncertainty.gaussian_summary(raw)
    k = conventions.NUM_PARAMS
    mean, std = summary["mean"][:, :k], summary["std"][:, :k]
    if calibration is not None and "multipliers" in calibration:
        table = np.asarray(calibration["multipliers"], dtype=np.float64)
        calibration = dict(calibration, multipliers=table[:, :k].tolist())
    else:
        calibration = None
    truth = np.asarray(truth, dtype=np.float64)[:, :k]
    half = std * interval_multipliers(0.68, calibration, n=k)
    return {"coverage": reports.coverage_report(truth, mean, std, calibration),
            "half_width68": dict(zip(conventions.PARAM_NAMES, half.mean(axis=0).tolist())),
            "arrays": (truth, mean, std, calibration)}


def prepare_stack(images):
    """``(N, 192, 192, 1)`` float32 images and their ``N`` footprints.

    Prepared as ``ensai predict`` prepares ``(N, H, W[, 1])`` images of 0.04 arcsec pixels.
    """
    images = np.asarray(images)
    items = list(iter_prepared_array(images[..., 0] if images.ndim == 4 else images))
    return np.stack([p.image for p in items]), [p.footprint for p in items]


def flag_rates(predict_fn, images, thresholds):
    """Fraction of images raising each flag, as ``ensai predict`` would flag them.

    Args:
        predict_fn: :func:`ensai_tf.inference.load_predictor` (five parameters).
        images: ``(N, H, W)`` or ``(N, H, W, 1)`` images of any size,
            0.04 arcsec pixels.
        thresholds: the model's flag thresholds (:func:`ensai_tf.flags.model_thresholds`).

    Returns:
        dict flag name -> fraction, plus ``"any"`` (fraction with at least
        one flag) and ``"n"``.
    """
    images = np.asarray(images)
    images = images[..., 0] if images.ndim == 4 else images
    prepared, footprints = prepare_stack(images)
    params = predict_images(predict_fn, prepared)[:, :conventions.NUM_PARAMS]
    stats = flags.image_statistics(prepared, params, footprints, screen=thresholds.get("screen"))
    masks = flags.flag_masks(stats, thresholds, prepared.shape[1])
    rates = {name: float(np.mean(masks[name])) for name in flags.FLAG_NAMES}
    rates["any"] = float(np.mean(np.any([masks[m] for m in flags.FLAG_NAMES], axis=0)))
    rates["n"] = int(len(images))
    return rates


def bad_sets(cfg, n, test_images):
    """The sets each quality flag must catch, ``n`` images each (deterministic).

    Args:
        cfg: :class:`~ensai_tf.config.ExperimentConfig` of the test data.
        n: images per set.
        test_images: ``(>=n, npix, npix[, 1])`` clean test images (for the
            small cutouts and the arcs cut by the edge).

    Returns:
        dict set name (the keys of :data:`BAD_SET_FLAGS`) -> images.
    """
    ll_cfg = config_lib.experiment_config(cfg, "lens-light")
    ll_images, _, _ = collect_fixed_split(ll_cfg, n, "test")
    bright = config_lib.apply_overrides(ll_cfg, ["simulate.lens_light_amplitude=[1.0,10.0]"])
    return {
        "noise": noise_images(n),
        "blank_sky": blank_sky_images(n),
        "unlensed_galaxy": unlensed_galaxy_images(cfg, n),
        "lens_light": ll_images,
        "lens_light_bright": collect_fixed_split(bright, n, "test")[0],
        "small_cutout": small_cutouts(test_images[:n], 100),
        "edge_cut": edge_cut_images(test_images[:n])[0],
    }


def _coverage_rows(intervals):
    """Markdown rows: set, kind, then the 68% and 95% coverage of each parameter."""
    rows = []
    for name, rep in intervals.items():
        if rep is None:
            continue
        for kind in ("raw", "calibrated"):
            table = rep["coverage"][kind]
            if table is None:
                continue
            cells = [f"{100 * table[str(level)][p]:.1f}" for p in conventions.PARAM_NAMES
                     for level in (0.68, 0.95)]
            rows.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return rows


def _markdown(result):
    """The report as Markdown."""
    head = " | ".join(f"{p} 68 | {p} 95" for p in conventions.PARAM_NAMES)
    lines = [f"# Trust report: {result['model']}", "",
             f"{result['n']} lenses per set; intervals fitted on the validation split only.", "",
             "## Interval coverage (%)", "", f"| set | intervals | {head} |",
             "|---|---|" + "---|" * (2 * conventions.NUM_PARAMS)]
    rows = _coverage_rows(result["intervals"])
    lines += rows if rows else ["| (the model has no intervals: run `ensai calibrate`) |"]
    lines += ["", "## Mean half-width of the 68% interval", "",
              "| set | " + " | ".join(conventions.PARAM_NAMES) + " | widens |",
              "|---|" + "---|" * (conventions.NUM_PARAMS + 1)]
    for name, rep in result["intervals"].items():
        if rep is not None:
            w = rep["half_width68"]
            lines.append(f"| {name} | " + " | ".join(f"{w[p]:.4f}" for p in conventions.PARAM_NAMES)
                         + f" | {result['widens'].get(name, '')} |")
    lines += ["", "## Quality flags", "",
              f"Thresholds: {result['thresholds_fitted_on']}.", "",
              "| set | expected flag | n | " + " | ".join(flags.FLAG_NAMES) + " | any |",
              "|---|---|---|" + "---|" * (len(flags.FLAG_NAMES) + 1)]
    for name, rates in result["flags"].items():
        expected = BAD_SET_FLAGS.get(name, "(none: false positives)")
        lines.append(f"| {name} | {expected} | {rates['n']} | "
                     + " | ".join(f"{100 * rates[f]:.1f}" for f in flags.FLAG_NAMES)
                     + f" | {100 * rates['any']:.1f} |")
    return "\n".join(lines) + "\n"


def _plot_flags(result, path):
    """Bar chart: detection rate of each bad set's flag and the clean test set's flag rate."""
    names = list(result["flags"])
    values = [100 * result["flags"][n][BAD_SET_FLAGS[n]] if n in BAD_SET_FLAGS
              else 100 * result["flags"][n]["any"] for n in names]
    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(names, values, color=["grey" if n not in BAD_SET_FLAGS else "C0" for n in names])
    ax.axhline(90, color="C3", ls="--", lw=1, label="90% detection")
    ax.axhline(2, color="C2", ls=":", lw=1, label="2% flagged (clean)")
    ax.set_ylabel("% flagged")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def evaluate_trust(model, n=None, out_dir=None, config=None, overwrite=False):
    """``ensai evaluate --experiment trust``: coverage under shifts, flag and detection rates.

    Args:
        model: model folder (or ``.keras`` file / SavedModel folder).
        n: lenses (and bad images) per set; default :data:`DEFAULT_N`.
        out_dir: output folder (default ``./ensai_eval/<model>-trust``).
        config: config of the test data (default: the paper preset).
        overwrite: write into an existing non-empty folder.

    Returns:
        the result dict written to ``trust.json``.
    """
    cfg = config if config is not None else config_lib.get_preset("paper")
    n = DEFAULT_N if n is None else int(n)
    out_dir = check_out_dir(out_dir or default_out_dir(model, "trust"), model, overwrite)
    raw_fn, _ = load_predictor(model, raw=True)
    point_fn, _ = load_predictor(model)
    calibration = load_calibration(model)
    thresholds = flags.model_thresholds(calibration)
    test_images, test_truth, _ = collect_fixed_split(cfg, n, "test")
    intervals = {"test": interval_report(raw_fn, test_images, test_truth, calibration)}
    for name, shifted in shifted_configs(cfg).items():
        images, truth, _ = collect_fixed_split(shifted, n, "test")
        intervals[name] = interval_report(raw_fn, images, truth, calibration)
    rates = {"clean_test": flag_rates(point_fn, test_images, thresholds)}
    for name, images in bad_sets(cfg, n, test_images).items():
        rates[name] = flag_rates(point_fn, images, thresholds)
    return _write_trust(out_dir, model, n, intervals, rates, thresholds)


def _write_trust(out_dir, model, n, intervals, rates, thresholds):
    """Write trust.md, trust.json, reliability.png and flag_rates.png; return the result."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = intervals["test"]
    widens = {}
    if test is not None:
        for name, rep in intervals.items():
            if name != "test" and rep is not None:
                widens[name] = all(rep["half_width68"][p] > test["half_width68"][p]
                                   for p in conventions.PARAM_NAMES)
        truth, mean, std, cal = test["arrays"]
        reports.plot_calibration(truth, mean, std, out_dir / RELIABILITY_PNG, cal)
    result = {
        "model": str(model), "n": n,
        "intervals": {k: (None if v is None else {"coverage": v["coverage"],
                                                  "half_width68": v["half_width68"]})
                      for k, v in intervals.items()},
        "widens": widens,
        "flags": rates,
        "detection": {k: rates[k][BAD_SET_FLAGS[k]] for k in BAD_SET_FLAGS if k in rates},
        "false_positive_rate": rates["clean_test"]["any"],
        "thresholds_fitted_on": thresholds.get("fitted_on", ""),
    }
    atomic.write_text(out_dir / TRUST_JSON, json.dumps(result, indent=1) + "\n")
    atomic.write_text(out_dir / TRUST_MD, _markdown(result))
    _plot_flags(result, out_dir / FLAGS_PNG)
    print(f"ensai evaluate: wrote {out_dir / TRUST_MD} (false positives "
          f"{100 * result['false_positive_rate']:.1f}% on {rates['clean_test']['n']} clean lenses)")
    return result
