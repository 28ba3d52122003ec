"""Noise-free lensed-image generator (docs/design.md §3.1, §3.3-§3.5, §4).

One example is drawn, placed, ray-traced and tested like this:

1. **Seeds** (docs/design.md §11 rule 4). Example ``i`` of a split has the seed
   ``fold_in([seed, SPLIT_IDS[split]], i)`` (:func:`example_seeds`); its
   candidate ``k`` uses ``fold_in(seed_i, k)``, and each candidate splits
   into the streams :data:`LENS_STREAM`, :data:`SOURCE_STREAM`,
   :data:`PLACEMENT_STREAM` and :data:`LENS_LIGHT_STREAM`. An example's image
   therefore depends on its seed only, never on the batch it sits in.
2. **Draws** (docs/design.md §3.1): SIE parameters (:func:`sample_lens_params`), a
   source (:func:`ensai_tf.data.sources.sample_sources`) and its position
   relative to the caustics (:func:`place_sources`, docs/design.md §3.3).
3. **Ray tracing** (docs/design.md §3.4 [R]): the lens equation on a grid oversampled
   ``simulate.oversample`` times inside the output field, bilinear sampling
   of the source image, block averaging to the output pixels.
   [R] The ring between the output field and the ``field_factor`` (1.6x)
   field exists only for the containment test, so it is traced at one ray
   per output pixel; each region's flux is its point-sampled sum times its
   own sample area, so the total (and the containment fraction) stays a
   flux-conserving estimate.
4. **Acceptance** (docs/design.md §3.5 with the [R] flux-conserving estimate):
   magnification ``mu = lensed flux on the extended field / unlensed flux
   >= simulate.min_magnification``, containment ``flux inside the output
   field / flux on the extended field >= simulate.min_containment``, a
   positive maximum, and (docs/design.md §9 #23 [R]) finite values. A rejected
   example is redrawn entirely with its next candidate seed; only the
   still-pending examples are re-rendered. The arcs are then normalised to
   peak 1.
5. **Lens light** (docs/design.md §4 [R], only with ``simulate.lens_light``): a
   separate ``"lens_light"`` image, added by the observation step before
   the PSF.

Seeds live in :mod:`~ensai_tf.data.seeds`, the lens draws and the
placement in :mod:`~ensai_tf.data.placement`, ray tracing in
:mod:`~ensai_tf.data.render` and the lens light in
:mod:`~ensai_tf.data.lens_light`; this module runs the acceptance loop and
re-exports their public names.

All of it is TensorFlow, vectorised over the batch, with no Python branching
on tensor values, so :func:`simulate_batch` runs inside ``tf.function`` and
``Dataset.map``.
"""

import math

import numpy as np
import tensorflow as tf
import tqdm

from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf.data import sources
from ensai_tf.data.draws import fold_seeds
from ensai_tf.data.lens_light import render_lens_light, sample_lens_light
from ensai_tf.data.placement import (CURVE_SAMPLES, RULE_A, RULE_B, in_placement_region,
                                     place_sources, placement_polygons, sample_lens_params)
from ensai_tf.data.render import ray_geometry, render_arcs, render_sie_sersic
from ensai_tf.data.seeds import (LENS_LIGHT_STREAM, LENS_STREAM, PLACEMENT_STREAM, SOURCE_STREAM,
                                 SPLIT_IDS, candidate_seeds, example_seeds)
from ensai_tf.errors import EnsaiError, InputError

__all__ = [
    "SPLIT_IDS",
    "LENS_STREAM",
    "SOURCE_STREAM",
    "PLACEMENT_STREAM",
    "LENS_LIGHT_STREAM",
    "CURVE_SAMPLES",
    "MAX_PLAUSIBLE_MAGNIFICATION",
    "RULE_A",
    "RULE_B",
    "OUTPUT_KEYS",
    "SimulationError",
    "example_seeds",
    "candidate_seeds",
    "sample_lens_params",
    "placement_polygons",
    "in_placement_region",
    "place_sources",
    "ray_geometry",
    "render_arcs",
    "sample_lens_light",
    "render_lens_light",
    "render_sie_sersic",
    "check_feasible",
    "simulate_batch",
    "simulate",
]

MAX_PLAUSIBLE_MAGNIFICATION = 1.0e4
"""``simulate.min_magnification`` above this is refused up front (:func:`check_feasible`).

Accepted systems have a median magnification of about 7.5 and a 95th
percentile of about 20 (docs/design.md §2.6); a magnification of 1e4 would need a
source some 1e4 times smaller in area than its lensed image, far below the
smallest source of any family here.
"""

OUTPUT_KEYS = ("arcs", "params", "magnification", "containment", "source_family",
               "source_index", "source_position", "source_scale", "placement_rule", "attempts")
"""Keys always returned by :func:`simulate_batch` (plus ``lens_light``, ``gamma_1``,
``gamma_2`` when enabled)."""


class SimulationError(EnsaiError, ValueError):
    """No acceptable lens could be drawn under the configuration."""


def _candidate(seeds, config, stamps, num_stamps, geo):
    """Draw and render one candidate per example; returns a dict incl. ``"accepted"``."""
    sim = config.simulate
    lens = sample_lens_params(fold_seeds(seeds, LENS_STREAM), config.lens)
    params = lens["params"]
    gamma_1, gamma_2 = lens.get("gamma_1"), lens.get("gamma_2")
    draws = sources.sample_sources(fold_seeds(seeds, SOURCE_STREAM), None, config.source, num_stamps)
    images, half = sources.render_sources(draws, stamps, size=int(sim.source_pixels),
                                          taper_radius=float(config.source.taper_radius))
    place = place_sources(fold_seeds(seeds, PLACEMENT_STREAM), params, config.source,
                          int(sim.placement_candidates))
    arcs, flux_field, flux_ext, flux_src = render_arcs(params, gamma_1, gamma_2, images, half,
                                                        place["position"], geo)
    mu = tf.cast(tf.math.divide_no_nan(flux_ext, flux_src), tf.float32)
    containment = tf.cast(tf.math.divide_no_nan(flux_field, flux_ext), tf.float32)
    peak = tf.reduce_max(arcs, axis=(1, 2))
    finite = tf.reduce_all(tf.math.is_finite(arcs), axis=(1, 2)) & tf.math.is_finite(mu)
    # docs/design.md §3.5 (flux-conserving [R]) and §9 #23 [R]: redraw non-finite examples.
    accepted = (finite & (mu >= float(sim.min_magnification))
                & (containment >= float(sim.min_containment)) & (peak > 0.0))
    safe_peak = tf.where(peak > 0.0, peak, 1.0)
    family = tf.cast(draws["family"], tf.int32)
    stamp = sources.SOURCE_FAMILIES.index("stamp")
    shear_out = {} if gamma_1 is None else {"gamma_1": gamma_1, "gamma_2": gamma_2}
    return {
        **shear_out,
        "accepted": accepted,
        # x / max(x) is exactly 1 at the maximum (IEEE division), so the peak is exactly 1.
        "arcs": tf.where(finite[:, None, None], arcs / safe_peak[:, None, None], 0.0),
        "params": params,
        "magnification": mu,
        "containment": containment,
        "source_family": family,
        "source_index": tf.where(family == stamp, tf.cast(draws["stamp_index"], tf.int32), -1),
        "source_position": place["position"],
        "source_scale": half,
        "placement_rule": tf.cast(place["rule"], tf.int32),
        "seed": tf.cast(seeds, tf.int64),
    }


# ---------------------------------------------------------------------------
# Acceptance loop and public API
# ---------------------------------------------------------------------------

def check_feasible(config):
    """Refuse settings under which no lens can be accepted (cheap, up front).

    Args:
        config: :class:`ensai_tf.config.ExperimentConfig`; reads the
            ``simulate``, ``image`` and ``lens`` sections.

    Returns:
        None.

    Raises:
        SimulationError: ``simulate.min_magnification`` above
            :data:`MAX_PLAUSIBLE_MAGNIFICATION`, or (with
            ``simulate.min_containment >= 0.5``) an Einstein-radius prior whose
            smallest value puts even the nearest point of every critical
            curve outside the image.
    """
    sim = config.simulate
    if sim.min_magnification > MAX_PLAUSIBLE_MAGNIFICATION:
        raise SimulationError(
            f"simulate.min_magnification = {sim.min_magnification:g} cannot be met: accepted "
            f"lenses have magnifications of a few to a few tens (docs/design.md §2.6), and none of the "
            f"source families can exceed {MAX_PLAUSIBLE_MAGNIFICATION:g}; lower "
            "simulate.min_magnification (docs/design.md §3.5: 2)")
    # The tangential critical curve's semi-minor axis is theta_E sqrt(q) >= theta_E
    # sqrt(1 - eps_max) (docs/design.md §0). The magnified images lie along it, so when even that
    # lies beyond the output field's half-diagonal, most of the flux is outside the field.
    half_diag = math.sqrt(0.5) * config.image.npix * config.image.pixel_scale
    nearest = config.lens.theta_e[0] * math.sqrt(1.0 - config.lens.epsilon[1])
    if nearest > half_diag and sim.min_containment >= 0.5:
        raise SimulationError(
            f"lens.theta_e = {tuple(config.lens.theta_e)} puts every critical curve outside the "
            f"{half_diag:.2f} arcsec half-diagonal of the image, so simulate.min_containment = "
            f"{sim.min_containment:g} can never be met; lower lens.theta_e or raise image.npix")


def _failure_message(failed, total, config):
    sim = config.simulate
    return (f"{failed} of {total} examples found no acceptable lens in simulate.max_attempts = "
            f"{sim.max_attempts} candidates (docs/design.md §3.5: magnification >= "
            f"simulate.min_magnification = {sim.min_magnification:g}, containment >= "
            f"simulate.min_containment = {sim.min_containment:g}); relax those keys, widen "
            "the priors (lens.theta_e, source.stamp_scale) or raise simulate.max_attempts")


def _check_inputs(seeds, config, stamps):
    seeds = tf.convert_to_tensor(seeds)
    if seeds.dtype not in (tf.int32, tf.int64) or seeds.shape.rank != 2 or seeds.shape[1] != 2:
        raise InputError(f"seeds must be a (B, 2) int32/int64 tensor of per-example seeds "
                         f"(see example_seeds), got {seeds.dtype.name} {seeds.shape}")
    if config is None:
        config = config_lib.ExperimentConfig()
    if not isinstance(config, config_lib.ExperimentConfig):
        raise InputError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    if stamps is None:
        stamps = np.zeros((0, 4, 4), np.float32)
    stamps = tf.convert_to_tensor(stamps, tf.float32)
    if stamps.shape.rank != 3 or stamps.shape[0] is None or stamps.shape[1] != stamps.shape[2]:
        raise InputError(f"stamps must be an (N, S, S) array with a known N (from "
                         f"sources.load_stamp_library), got shape {stamps.shape}")
    return tf.cast(seeds, tf.int64), config, stamps


def _simulate(seeds, config, stamps):
    """The acceptance loop; returns (outputs dict, done (B,) bool)."""
    check_feasible(config)
    num_stamps = int(stamps.shape[0])
    geo = ray_geometry(config.image, config.simulate)
    npix = geo["npix"]
    b = tf.shape(seeds)[0]
    zeros_f = tf.zeros([b], tf.float32)
    zeros_i = tf.zeros([b], tf.int32)
    results = {
        "arcs": tf.zeros([b, npix, npix], tf.float32),
        "params": tf.zeros([b, conventions.NUM_PARAMS], tf.float32),
        "magnification": zeros_f,
        "containment": zeros_f, "source_family": zeros_i, "source_index": zeros_i,
        "source_position": tf.zeros([b, 2], tf.float32), "source_scale": zeros_f,
        "placement_rule": zeros_i, "seed": tf.zeros([b, 2], tf.int64),
    }
    if config.lens.shear:
        results.update(gamma_1=zeros_f, gamma_2=zeros_f)
    max_attempts = int(config.simulate.max_attempts)

    def cond(k, done, attempts, res):
        return (k < max_attempts) & tf.reduce_any(~done)

    def body(k, done, attempts, res):
        pending = tf.where(~done)[:, 0]
        cand = _candidate(candidate_seeds(tf.gather(seeds, pending), k), config, stamps,
                          num_stamps, geo)
        accepted = cand.pop("accepted")
        rows = tf.boolean_mask(pending, accepted)[:, None]
        res = {key: tf.tensor_scatter_nd_update(value, rows, tf.boolean_mask(cand[key], accepted))
               for key, value in res.items()}
        attempts = tf.tensor_scatter_nd_update(attempts, pending[:, None],
                                               tf.fill(tf.shape(pending), k + 1))
        done = tf.tensor_scatter_nd_update(done, rows, tf.ones_like(rows[:, 0], tf.bool))
        return k + 1, done, attempts, res

    _, done, attempts, results = tf.while_loop(
        cond, body, (tf.constant(0), tf.zeros([b], tf.bool), zeros_i, results))
    out = {key: results[key] for key in OUTPUT_KEYS if key in results}
    out["arcs"] = results["arcs"][..., None]
    out["attempts"] = attempts
    if config.lens.shear:
        out["gamma_1"], out["gamma_2"] = results["gamma_1"], results["gamma_2"]
    if config.simulate.lens_light:
        draws = sample_lens_light(fold_seeds(results["seed"], LENS_LIGHT_STREAM), results["params"],
                                  config.simulate)
        out["lens_light"] = render_lens_light(draws, geo)[..., None]
    return out, done


def simulate_batch(seeds, config, stamps):
    """Simulate one noise-free lens per seed (docs/design.md §3).

    Graph-friendly: call it eagerly, inside ``tf.function`` or in
    ``Dataset.map``; the batch size may be unknown.

    Args:
        seeds: ``(B, 2)`` int32/int64 per-example seeds (:func:`example_seeds`).
        config: :class:`ensai_tf.config.ExperimentConfig` (sections image,
            lens, source, simulate).
        stamps: ``(N, S, S)`` float32 stamp library of the split
            (:func:`ensai_tf.data.sources.load_stamp_library`), or None.

    Returns:
        dict of tensors, leading dimension B:

        * ``"arcs"`` ``(B, npix, npix, 1)`` float32, finite, >= 0, peak
          exactly 1 (docs/design.md §3.5); ``img[b, row, col, 0]``, x = col, y = row.
        * ``"params"`` ``(B, 5)`` float32: theta_E (arcsec), e_x, e_y, x_L,
          y_L (arcsec).
        * ``"magnification"`` ``(B,)``: lensed flux on the extended field /
          unlensed flux; ``"containment"`` ``(B,)``: flux fraction inside
          the output field.
        * ``"source_family"`` ``(B,)`` int32 (index into
          :data:`ensai_tf.data.sources.SOURCE_FAMILIES`); ``"source_index"``
          ``(B,)`` int32 stamp index (-1 for analytic families);
          ``"source_position"`` ``(B, 2)`` (x_s, y_s) arcsec;
          ``"source_scale"`` ``(B,)`` source-image half-side, arcsec.
        * ``"placement_rule"`` ``(B,)`` int32, :data:`RULE_A` or
          :data:`RULE_B`; ``"attempts"`` ``(B,)`` int32, candidates drawn.
        * with ``lens.shear``: ``"gamma_1"``, ``"gamma_2"`` ``(B,)``.
        * with ``simulate.lens_light``: ``"lens_light"`` ``(B, npix, npix,
          1)``, peak relative to the arc peak (docs/design.md §4 [R]).

    Raises:
        SimulationError: eagerly, when some example exhausts
            ``simulate.max_attempts`` or the settings are infeasible. In a
            graph the former is a ``tf.debugging`` assertion
            (``InvalidArgumentError``) with the same message.
        InputError: seeds or stamps of the wrong shape.
    """
    seeds, config, stamps = _check_inputs(seeds, config, stamps)
    out, done = _simulate(seeds, config, stamps)
    failed = tf.reduce_sum(tf.cast(~done, tf.int32))
    if tf.executing_eagerly():
        if int(failed) > 0:
            raise SimulationError(_failure_message(int(failed), int(done.shape[0]), config))
        return out
    message = _failure_message("some", "the", config)
    with tf.control_dependencies([tf.debugging.assert_equal(failed, 0, message=message)]):
        return {key: tf.identity(value) for key, value in out.items()}


def simulate(n, seed=0, config=None, split="train", batch_size=None, progress=False):
    """Simulate ``n`` noise-free lenses of a split, as numpy arrays.

    ``ensai_tf.simulate(...)`` is this function.

    Args:
        n: number of examples (>= 1).
        seed: user seed, >= 0; example ``i`` uses
            ``example_seeds(seed, split, i, 1)``.
        config: :class:`ensai_tf.config.ExperimentConfig` (default: the
            paper preset).
        split: ``"train"``, ``"validation"`` or ``"test"``: the seed stream
            and the disjoint stamp pool (docs/design.md §3.7 [R]).
        batch_size: examples per graph call (default ``data.sim_batch_size``).
        progress: show a tqdm progress bar.

    Returns:
        dict of numpy arrays with the keys of :func:`simulate_batch`.

    Raises:
        SimulationError: infeasible settings, or examples that exhaust
            ``simulate.max_attempts`` (naming how many and the keys to relax).
        InputError: bad ``n``, ``seed``, ``split`` or ``batch_size``.
    """
    config, batch_size = _check_simulate_args(n, config, split, batch_size)
    stamps = sources.load_stamp_library(split, config.source.stamp_dirs,
                                        taper_radius=float(config.source.taper_radius))
    _, config, stamps = _check_inputs(tf.zeros([1, 2], tf.int64), config, stamps)

    # Run in Dataset.map with autograph off, like the data pipeline: tf.data and
    # tf.function graphs may round float32 arithmetic differently (a few ulp), so
    # this keeps ensai_tf.simulate bit-identical to the pipeline's arcs for the same
    # seeds (and autograph has no Python control flow to convert here).
    total = int(n)
    no_autograph = tf.autograph.experimental.do_not_convert
    dataset = (tf.data.Dataset.range(0, total, batch_size)
               .map(no_autograph(lambda start: example_seeds(
                   seed, split, start, tf.minimum(tf.constant(batch_size, tf.int64),
                                                  total - start))))
               .map(no_autograph(lambda s: _simulate(s, config, stamps)))
               .prefetch(1))
    chunks = _collect(dataset, total, config, f"simulate {split}" if progress else None)
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def _check_simulate_args(n, config, split, batch_size):
    """Validate the arguments of :func:`simulate`; returns ``(config, batch_size)``."""
    if config is None:
        config = config_lib.get_preset("paper")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if split not in SPLIT_IDS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_IDS)}")
    batch_size = int(config.data.sim_batch_size if batch_size is None else batch_size)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    check_feasible(config)
    return config, batch_size


def _collect(dataset, total, config, desc):
    """The numpy chunks of ``dataset``, refusing failed examples; a progress bar if ``desc``."""
    chunks = []
    bar = None
    if desc is not None:
        bar = tqdm.tqdm(total=total, desc=desc, unit="lens")
    try:
        for out, done in dataset.as_numpy_iterator():
            if not done.all():
                raise SimulationError(_failure_message(int((~done).sum()), len(done), config))
            chunks.append(out)
            if bar is not None:
                bar.update(len(done))
    finally:
        if bar is not None:
            bar.close()
    return chunks
