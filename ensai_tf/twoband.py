"""Synthetic two-band lenses and the ICA experiment (docs/design.md §8.4, project note).

MAST data cannot be downloaded here, so the ICA path is tested on mixtures:
a **red Sersic lens galaxy** plus **blue lensed arcs**, with a range of
colour ratios and slightly different Gaussian PSFs per band (docs/design.md §8.4
"Project note"). Following the draw-then-apply rule (docs/design.md §11):

- :func:`sample_two_band` draws, per lens, the lens light (Sersic index,
  effective radius, axis ratio and angle jittered about the mass), the
  colours, the two PSF FWHMs and the noise level, from a stateless seed;
- :func:`apply_two_band` renders the bands from the noise-free arcs and the
  lens parameters of :func:`ensai_tf.data.simulate.simulate` (arcs peak 1):

  ``blue = P_b * (arcs + f_lb * A * L) + n_b`` and
  ``red  = P_r * (g_ar * arcs + A * L) + n_r``

  with ``L`` the lens light normalised to peak 1, ``A`` its red peak in units
  of the blue arc peak, ``f_lb`` the lens's blue/red flux ratio and
  ``g_ar = 1 / (kappa f_lb)`` the arcs' red/blue ratio, so that the arcs are
  ``kappa`` ("colour ratio") times bluer than the lens. Noise is white and
  Gaussian with the same arc signal-to-noise in both bands.

:func:`recover_arcs` runs the real-data steps (Gaussian PSF matching,
optional lens-core mask, ICA); :func:`recover_arcs_fitted` subtracts a fitted
lens light from each PSF-matched band instead, as ``ensai predict --bands``
does by default (:func:`ensai_tf.realdata.lens_light.subtract_two_bands`,
docs/design.md §8.4 "Fitted subtraction"). :func:`ica_experiment` measures the
correlation of the ICA arcs with the true (PSF-matched) arcs per colour
ratio and, given a model, the growth of the 68% parameter errors relative to
the arcs alone; :mod:`ensai_tf.lens_light_report` writes its report (``ensai
evaluate --experiment ica``) and compares every path (``--experiment lens-light``).
"""

import json
import pathlib

import numpy as np
import tensorflow as tf
from scipy import ndimage

from ensai_tf import atomic, conventions
from ensai_tf import config as config_lib
from ensai_tf.data import simulate
from ensai_tf.data.draws import lerp
from ensai_tf.errors import InputError
from ensai_tf.inference import load_predictor, predict_images
from ensai_tf.lensing import light
from ensai_tf.metrics import error_table
from ensai_tf.preprocess import ica
from ensai_tf.preprocess.images import normalise_peak
from ensai_tf.realdata.lens_light import subtract_two_bands
from ensai_tf.realdata.masks import circular_mask
from ensai_tf.realdata.psf import FWHM_PER_SIGMA, match_psfs

__all__ = [
    "COLOUR_RATIOS",
    "sample_two_band",
    "apply_two_band",
    "recover_arcs",
    "recover_arcs_fitted",
    "simulated_test_arcs",
    "matched_truth",
    "arcs_alone",
    "correlation_summary",
    "ica_experiment",
]

COLOUR_RATIOS = (1.5, 2.0, 3.0, 5.0, 10.0)
"""Colour ratios kappa (arc blue/red over lens blue/red) of the experiment."""

_DRAW_KEYS = ("colour_ratio", "lens_blue_red", "lens_to_arc", "lens_n", "lens_r_eff",
              "lens_q", "lens_angle", "fwhm_blue", "fwhm_red", "noise_rms", "noise_seed")


def sample_two_band(seed, params, colour_ratio=(1.5, 10.0), lens_blue_red=(0.2, 0.5),
                    lens_to_arc=(1.0, 5.0), lens_n=(2.0, 4.0), lens_r_eff=(0.3, 1.0),
                    lens_q_jitter=0.1, lens_pa_sigma_deg=10.0, fwhm_blue=(0.06, 0.08),
                    red_fwhm_factor=(1.05, 1.25), noise_rms=(0.01, 0.04)):
    """Draw the two-band parameters of ``len(params)`` lenses.

    Args:
        seed: shape-(2,) int seed (stateless; ``tf.random.fold_in`` per lens).
        params: ``(B, 5)`` lens parameters (arcsec, -, -, arcsec, arcsec);
            the lens light follows the mass q and major axis.
        colour_ratio: ``(lo, hi)`` of kappa, drawn log-uniformly.
        lens_blue_red: ``(lo, hi)`` lens blue/red flux ratio ``f_lb``.
        lens_to_arc: ``(lo, hi)`` lens-light red peak / blue arc peak.
        lens_n: ``(lo, hi)`` lens Sersic index.
        lens_r_eff: ``(lo, hi)`` lens effective radius, arcsec.
        lens_q_jitter: lens-light q = mass q + U(-j, j), clipped to [0.2, 1].
        lens_pa_sigma_deg: lens-light major axis = mass major axis + N(0, s),
            degrees.
        fwhm_blue: ``(lo, hi)`` blue PSF FWHM, arcsec.
        red_fwhm_factor: ``(lo, hi)`` red FWHM / blue FWHM.
        noise_rms: ``(lo, hi)`` noise rms / arc peak, per band.

    Returns:
        dict of ``(B,)`` float64 arrays (``noise_seed``: ``(B, 2)`` int64):
        the keys of ``_DRAW_KEYS``; angles in radians from +x towards +y.
    """
    params = np.asarray(params, dtype=np.float64).reshape(-1, conventions.NUM_PARAMS)
    n = len(params)
    seed = tf.convert_to_tensor(seed, tf.int64)
    seeds = tf.stack([tf.random.fold_in(seed, i) for i in range(n)]) if n else tf.zeros(
        [0, 2], tf.int64)
    u = np.stack([tf.random.stateless_uniform([9], s, dtype=tf.float64).numpy() for s in seeds]
                 ) if n else np.zeros((0, 9))
    g = np.stack([tf.random.stateless_normal([1], tf.random.fold_in(s, 1),
                                             dtype=tf.float64).numpy() for s in seeds]
                 ) if n else np.zeros((0, 1))
    noise_seed = np.stack([tf.random.fold_in(s, 2).numpy() for s in seeds]) if n else np.zeros(
        (0, 2), np.int64)
    P = conventions.Param
    q_mass, phi = conventions.q_phi_from_ellipticity(params[:, P.E_X], params[:, P.E_Y])
    blue_fwhm = lerp(u[:, 6], fwhm_blue)
    return {
        "colour_ratio": np.exp(lerp(u[:, 0], np.log(colour_ratio))),
        "lens_blue_red": lerp(u[:, 1], lens_blue_red),
        "lens_to_arc": lerp(u[:, 2], lens_to_arc),
        "lens_n": lerp(u[:, 3], lens_n),
        "lens_r_eff": lerp(u[:, 4], lens_r_eff),
        "lens_q": np.clip(q_mass + lerp(u[:, 5], (-lens_q_jitter, lens_q_jitter)), 0.2, 1.0),
        "lens_angle": phi + np.pi / 2.0 + np.radians(lens_pa_sigma_deg) * g[:, 0],
        "fwhm_blue": blue_fwhm,
        "fwhm_red": blue_fwhm * lerp(u[:, 7], red_fwhm_factor),
        "noise_rms": lerp(u[:, 8], noise_rms),
        "noise_seed": noise_seed.astype(np.int64),
    }


def _blur(images, fwhm_arcsec, pixel_scale):
    """Gaussian PSF per image (scipy, reflect boundary as docs/design.md §5.3 [C]); flux-conserving."""
    return np.stack([ndimage.gaussian_filter(im, f / FWHM_PER_SIGMA / pixel_scale,
                                             mode="reflect")
                     for im, f in zip(images, fwhm_arcsec)])


def apply_two_band(arcs, params, draws, pixel_scale=conventions.PIXEL_SCALE):
    """Render the two bands from arcs, lens parameters and draws.

    Args:
        arcs: ``(B, n, n)`` or ``(B, n, n, 1)`` noise-free arcs, peak 1.
        params: ``(B, 5)`` lens parameters (the lens light is centred on
            ``(x_L, y_L)`` arcsec).
        draws: dict from :func:`sample_two_band` (values may be replaced, e.g.
            a fixed ``colour_ratio``).
        pixel_scale: pixel side, arcsec.

    Returns:
        dict of ``(B, n, n)`` float64 arrays: ``blue``, ``red`` (the observed
        bands), ``arcs_blue`` and ``arcs_red`` (the noise-free arc part of
        each band) and ``lens_red`` (the noise-free lens light in red).
    """
    arcs = np.asarray(arcs, dtype=np.float64)
    arcs = arcs[..., 0] if arcs.ndim == 4 else arcs
    params = np.asarray(params, dtype=np.float64).reshape(-1, conventions.NUM_PARAMS)
    if arcs.ndim != 3 or arcs.shape[0] != params.shape[0]:
        raise InputError(f"arcs of shape {arcs.shape} do not match params {params.shape}")
    b, n = arcs.shape[0], arcs.shape[1]
    d = {k: np.asarray(draws[k]) for k in _DRAW_KEYS}
    x, y = conventions.pixel_grid(n, pixel_scale)
    P = conventions.Param
    col = lambda v: tf.constant(np.asarray(v, np.float64)[:, None, None])  # noqa: E731
    lens = light.elliptical_sersic(
        tf.constant(x[None]), tf.constant(y[None]), 1.0, col(d["lens_n"]), col(d["lens_r_eff"]),
        col(d["lens_q"]), col(d["lens_angle"]), col(params[:, P.X_L]), col(params[:, P.Y_L]),
        core=0.5 * pixel_scale).numpy()
    lens = lens / lens.max(axis=(1, 2), keepdims=True)
    lens_amp = d["lens_to_arc"][:, None, None]
    g_ar = (1.0 / (d["colour_ratio"] * d["lens_blue_red"]))[:, None, None]
    arcs_blue = _blur(arcs, d["fwhm_blue"], pixel_scale)
    arcs_red = g_ar * _blur(arcs, d["fwhm_red"], pixel_scale)
    lens_red = lens_amp * _blur(lens, d["fwhm_red"], pixel_scale)
    lens_blue = d["lens_blue_red"][:, None, None] * lens_amp * _blur(lens, d["fwhm_blue"],
                                                                     pixel_scale)
    noise = np.stack([tf.random.stateless_normal([2, n, n], s, dtype=tf.float64).numpy()
                      for s in d["noise_seed"]]) if b else np.zeros((0, 2, n, n))
    rms = d["noise_rms"][:, None, None]
    return {
        "blue": arcs_blue + lens_blue + rms * noise[:, 0],
        "red": arcs_red + lens_red + rms * g_ar * noise[:, 1],
        "arcs_blue": arcs_blue,
        "arcs_red": arcs_red,
        "lens_red": lens_red,
    }


def recover_arcs(blue, red, fwhm_blue, fwhm_red, core_mask_arcsec=None, centre=(0.0, 0.0),
                 pixel_scale=conventions.PIXEL_SCALE):
    """PSF-match two aligned bands, optionally mask the lens core, and unmix.

    Args:
        blue, red: ``(n, n)`` bands on one grid.
        fwhm_blue, fwhm_red: PSF FWHMs, arcsec (None: no matching).
        core_mask_arcsec: radius of a disc masking the brightest lens-light
            region (docs/design.md §8.4 step 2), arcsec, centred on ``centre``; None
            for no mask.
        centre: ``(x, y)`` lens centre, arcsec, grid frame.
        pixel_scale: pixel side, arcsec.

    Returns:
        :class:`ensai_tf.preprocess.ica.IcaResult`.
    """
    blue = np.asarray(blue, np.float64)
    red = np.asarray(red, np.float64)
    if fwhm_blue is not None:
        blue, red = match_psfs(blue, red, fwhm_blue, fwhm_red, pixel_scale,
                               keep=np.ones(blue.shape, bool))
    mask = None
    if core_mask_arcsec is not None:
        mask = circular_mask(blue.shape[0], [centre], core_mask_arcsec, pixel_scale)
    centre_pix = (centre[0] / pixel_scale + (blue.shape[1] - 1) / 2.0,
                  centre[1] / pixel_scale + (blue.shape[0] - 1) / 2.0)
    return ica.unmix_two_bands(blue, red, mask=mask, centre_pix=centre_pix,
                               name="synthetic two-band lens")


def recover_arcs_fitted(blue, red, fwhm_blue, fwhm_red, centre=(0.0, 0.0), unmix=False,
                        model="mge", pixel_scale=conventions.PIXEL_SCALE):
    """PSF-match two bands, subtract a fitted lens light from each, then optionally unmix.

    The steps after the PSF matching are those of ``ensai predict --bands``
    (:func:`ensai_tf.realdata.lens_light.subtract_two_bands`): the red band is
    fitted first, centre and shape free; the blue band with that centre and
    shape held (docs/design.md §8.4, "Fitted subtraction").

    Args:
        blue, red: ``(n, n)`` bands on one grid, exact zeros masked.
        fwhm_blue, fwhm_red: PSF FWHMs, arcsec (None: no matching; the fits
            then assume no PSF).
        centre: ``(x, y)`` guess of the lens centre, arcsec, grid frame.
        unmix: run ICA on the two residuals and return its arc component;
            False (default, the better of the two in the lens-light
            experiment, docs/design.md §8.4): the arc map is the blue
            residual, peak-normalised.
        model: the lens-light model, ``"mge"`` or ``"sersic"``.
        pixel_scale: pixel side, arcsec.

    Returns:
        :class:`ensai_tf.realdata.lens_light.FittedArcs`.
    """
    blue = np.asarray(blue, np.float64)
    red = np.asarray(red, np.float64)
    fwhm = None
    if fwhm_blue is not None:
        blue, red = match_psfs(blue, red, fwhm_blue, fwhm_red, pixel_scale,
                               keep=np.ones(blue.shape, bool))
        fwhm = max(fwhm_blue, fwhm_red)
    return subtract_two_bands(blue, red, fwhm, centre, unmix=unmix, model=model,
                              pixel_scale=pixel_scale)


def correlation_summary(values):
    """Median, 5th percentile and minimum of correlations (dict of floats).

    Args:
        values: non-empty 1-D array of Pearson correlations, dimensionless.

    Returns:
        dict: ``"n"`` (int, number of values), ``"median"``, ``"p5"`` and
        ``"min"`` (floats).
    """
    values = np.asarray(values, dtype=np.float64)
    return {"n": int(values.size), "median": float(np.median(values)),
            "p5": float(np.percentile(values, 5)), "min": float(values.min())}


def matched_truth(arcs, draws, pixel_scale=conventions.PIXEL_SCALE):
    """The true arcs at the PSF-matched (broader) resolution.

    Args:
        arcs: ``(B, n, n)`` noise-free arcs, peak 1.
        draws: dict of :func:`sample_two_band` (``fwhm_blue``, ``fwhm_red``).
        pixel_scale: pixel side, arcsec.

    Returns:
        ``(B, n, n)`` float64: each lens's arcs blurred by the broader of its
        two Gaussian PSFs.
    """
    broad = np.maximum(draws["fwhm_blue"], draws["fwhm_red"])
    return _blur(arcs, broad, pixel_scale)


def arcs_alone(truth, draws):
    """The true arcs plus the blue band's own noise: the no-lens-light reference.

    Args:
        truth: ``(B, n, n)`` arcs of :func:`matched_truth`.
        draws: dict of :func:`sample_two_band` (``noise_rms``, ``noise_seed``).

    Returns:
        ``(B, n, n)`` float64, the arcs with the blue band's noise
        realisation (rms ``noise_rms`` per arc peak).
    """
    n = truth.shape[1]
    noise = np.stack([tf.random.stateless_normal([2, n, n], s, dtype=tf.float64).numpy()[0]
                      for s in draws["noise_seed"]])
    return truth + draws["noise_rms"][:, None, None] * noise


def ica_experiment(n=16, seed=0, colour_ratios=COLOUR_RATIOS, config=None, model=None,
                   out_dir=None, core_mask_arcsec=None, arcs=None, params=None,
                   draw_kwargs=None):
    """Arc recovery (and parameter-error growth) of ICA on synthetic two-band lenses.

    For each colour ratio the same ``n`` test lenses (docs/design.md §8.3 split) are
    mixed with lens light, unmixed (:func:`recover_arcs`) and compared with
    the true arcs at the matched PSF: Pearson correlation over unmasked
    pixels. Noise alone limits that correlation (faint arcs cover few of the
    36,864 pixels), so the same statistic is given for the **arcs alone**:
    the true arcs plus the blue band's noise, the ceiling that a perfect
    separation would reach. With a ``model``, the 68% errors (docs/design.md §8.2,
    after parity correction) on the ICA arcs are compared with those on the
    arcs alone.

    Args:
        n: lenses per colour ratio.
        seed: user seed of the test split and the two-band draws.
        colour_ratios: kappa values.
        config: :class:`~ensai_tf.config.ExperimentConfig` for the arcs
            (default the paper preset).
        model: optional model path for the parameter errors.
        out_dir: optional folder for ``ica.json``.
        core_mask_arcsec: optional lens-core mask radius, arcsec.
        arcs, params: optional precomputed noise-free arcs ``(n, 192, 192[, 1])``
            and parameters ``(n, 5)`` (skips the simulation).
        draw_kwargs: optional keyword arguments of :func:`sample_two_band`
            (e.g. ``noise_rms=(0.001, 0.004)`` to isolate the separation
            from the noise).

    Returns:
        dict: ``{"colour_ratios": {kappa: summary}, "all": summary,
        "arcs_alone": summary, "rule_counts": ..., "errors": {...}}`` where a
        summary is :func:`correlation_summary`'s and ``errors`` (with a
        model) holds :func:`ensai_tf.metrics.error_table` for the
        arcs alone and per colour ratio.
    """
    if arcs is None:
        arcs, params = simulated_test_arcs(n, seed, config)
    arcs = np.asarray(arcs, np.float64)
    arcs = arcs[..., 0] if arcs.ndim == 4 else arcs
    params = np.asarray(params, np.float64)
    pixel_scale = conventions.PIXEL_SCALE
    draws = sample_two_band(np.array([int(seed), 84], np.int64), params, **(draw_kwargs or {}))
    truth = matched_truth(arcs, draws, pixel_scale)
    alone = arcs_alone(truth, draws)
    summary = {"n_per_ratio": int(len(arcs)), "seed": int(seed),
               "core_mask_arcsec": core_mask_arcsec, "colour_ratios": {},
               "arcs_alone": correlation_summary([ica.arc_correlation(a, t)
                                                  for a, t in zip(alone, truth)]),
               "rule_counts": {"colour": 0, "concentration": 0}}
    all_corr, inputs, ratio_of = [], [], []
    for kappa in colour_ratios:
        corr, rules, ratio_inputs = _unmix_at_ratio(arcs, params, draws, kappa, truth,
                                                    core_mask_arcsec, pixel_scale)
        for rule in rules:
            summary["rule_counts"][rule] += 1
        inputs.extend(ratio_inputs)
        ratio_of.extend([kappa] * len(ratio_inputs))
        summary["colour_ratios"][str(kappa)] = correlation_summary(corr)
        all_corr.extend(corr)
    summary["all"] = correlation_summary(all_corr)
    if model is not None:
        summary["errors"] = _parameter_errors(model, alone, params, np.stack(inputs),
                                              np.asarray(ratio_of), colour_ratios)
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "ica.json", json.dumps(summary, indent=1) + "\n")
    return summary


def simulated_test_arcs(n, seed=0, config=None):
    """Noise-free arcs and parameters of the first ``n`` test-split lenses (docs/design.md §8.3).

    Args:
        n: number of lenses.
        seed: user seed of the split.
        config: :class:`~ensai_tf.config.ExperimentConfig` (default the
            paper preset).

    Returns:
        ``(arcs, params)``: ``(n, npix, npix, 1)`` arcs, peak 1, and
        ``(n, 5)`` parameters.
    """
    cfg = config if config is not None else config_lib.get_preset("paper")
    sim = simulate.simulate(int(n), seed=int(seed), config=cfg, split="test")
    return sim["arcs"], sim["params"]


def _unmix_at_ratio(arcs, params, draws, kappa, truth, core_mask_arcsec, pixel_scale):
    """Correlations with the truth, ICA rules and network inputs at colour ratio ``kappa``."""
    d = dict(draws, colour_ratio=np.full(len(arcs), float(kappa)))
    bands = apply_two_band(arcs, params, d, pixel_scale)
    corr, rules, inputs = [], [], []
    for i in range(len(arcs)):
        centre = (params[i, conventions.Param.X_L], params[i, conventions.Param.Y_L])
        res = recover_arcs(bands["blue"][i], bands["red"][i], d["fwhm_blue"][i],
                           d["fwhm_red"][i], core_mask_arcsec, centre, pixel_scale)
        corr.append(ica.arc_correlation(res.arc, truth[i], res.mask))
        rules.append(res.rule)
        inputs.append(ica.to_network_input(res.arc))
    return corr, rules, inputs


def _parameter_errors(model, alone, params, ica_inputs, ratio_of, colour_ratios):
    """68% errors of ICA arcs vs arcs alone (same PSF and noise), per colour ratio."""
    predict_fn, npix = load_predictor(model)
    if npix != alone.shape[1]:
        raise InputError(f"model {model!r} takes {npix}-pixel images; the experiment makes "
                         f"{alone.shape[1]}")
    alone_in = np.stack([normalise_peak(a)[..., None] for a in alone]).astype(np.float32)
    out = {"arcs_alone": error_table(params, predict_images(predict_fn, alone_in)), "ica": {}}
    pred = predict_images(predict_fn, ica_inputs)
    for kappa in colour_ratios:
        sel = ratio_of == kappa
        out["ica"][str(kappa)] = error_table(params, pred[sel])
    return out
