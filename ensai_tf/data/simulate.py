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

All of it is TensorFlow, vectorised over the batch, with no Python branching
on tensor values, so :func:`simulate_batch` runs inside ``tf.function`` and
``Dataset.map``.
"""

import math

import numpy as np
import tensorflow as tf

from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf.data import sources
from ensai_tf.errors import EnsaiError, InputError
from ensai_tf.lensing import caustics, light, raytrace, shear

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

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
"""Second word of every split's base seed (docs/design.md §11 rule 4)."""

LENS_STREAM = 0
"""Sub-stream of a candidate seed for the lens parameters."""
SOURCE_STREAM = 1
"""Sub-stream of a candidate seed for the source draws."""
PLACEMENT_STREAM = 2
"""Sub-stream of a candidate seed for the source position."""
LENS_LIGHT_STREAM = 3
"""Sub-stream of the accepted candidate seed for the lens light."""

CURVE_SAMPLES = 200
"""Vertices of the caustic and cut polygons (docs/design.md §2.5: 200 samples of theta)."""

MAX_PLAUSIBLE_MAGNIFICATION = 1.0e4
"""``simulate.min_magnification`` above this is refused up front (:func:`check_feasible`).

Accepted systems have a median magnification of about 7.5 and a 95th
percentile of about 20 (docs/design.md §2.6); a magnification of 1e4 would need a
source some 1e4 times smaller in area than its lensed image, far below the
smallest source of any family here.
"""

RULE_A = 0
"""``placement_rule`` value: inside the expanded tangential caustic (docs/design.md §3.3)."""
RULE_B = 1
"""``placement_rule`` value: inside the shrunk cut (docs/design.md §3.3)."""

OUTPUT_KEYS = ("arcs", "params", "magnification", "containment", "source_family",
               "source_index", "source_position", "source_scale", "placement_rule", "attempts")
"""Keys always returned by :func:`simulate_batch` (plus ``lens_light``, ``gamma_1``,
``gamma_2`` when enabled)."""


class SimulationError(EnsaiError, ValueError):
    """No acceptable lens could be drawn under the configuration."""


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------

def _fold(seeds, data):
    """``fold_in(seeds[i], data[i])`` per example; ``seeds`` (B, 2), ``data`` scalar or (B,)."""
    seeds = tf.cast(seeds, tf.int64)
    data = tf.broadcast_to(tf.cast(data, tf.int64), tf.shape(seeds)[:1])
    # map_fn, not vectorized_map: pfor has no converter for the stateless RNG ops and
    # would fall back to a (slower, warning) while_loop anyway.
    return tf.map_fn(lambda a: tf.random.fold_in(a[0], a[1]), (seeds, data),
                     fn_output_signature=tf.TensorSpec([2], tf.int64))


def _uniforms(seeds, count):
    """``(B, count)`` float32 U[0, 1) draws, row ``i`` from ``seeds[i]`` only."""
    return tf.map_fn(lambda s: tf.random.stateless_uniform([count], s, dtype=tf.float32), seeds,
                     fn_output_signature=tf.TensorSpec([count], tf.float32))


def _between(u, bounds):
    lo, hi = (float(b) for b in bounds)
    return lo + (hi - lo) * u


def example_seeds(seed, split, start, count):
    """Per-example seeds of a split (docs/design.md §11 rule 4).

    Args:
        seed: user seed (Python int, >= 0; ``data.seed`` is added by callers).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        start: index of the first example (Python int or int scalar tensor).
        count: number of examples (Python int or int scalar tensor).

    Returns:
        ``(count, 2)`` int64 tensor; row ``i`` is
        ``tf.random.fold_in([seed, SPLIT_IDS[split]], start + i)`` with an
        int64 index, so it does not depend on ``start``/``count`` grouping.

    Raises:
        InputError: unknown split or a negative seed.
    """
    if split not in SPLIT_IDS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_IDS)}")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(SPLIT_IDS[split], tf.int64)])
    index = tf.cast(start, tf.int64) + tf.range(tf.cast(count, tf.int64), dtype=tf.int64)
    base = tf.broadcast_to(base[None], tf.stack([tf.size(index), 2]))
    return _fold(base, index)


def candidate_seeds(seeds, attempt):
    """Seeds of candidate ``attempt`` (0-based) of each example: ``fold_in(seed_i, attempt)``.

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        attempt: candidate index, a Python int, an int scalar tensor or a
            ``(B,)`` int tensor (one index per example).

    Returns:
        ``(B, 2)`` int64 candidate seeds.
    """
    return _fold(seeds, attempt)


# ---------------------------------------------------------------------------
# Lens parameters and source placement
# ---------------------------------------------------------------------------

def sample_lens_params(seeds, cfg):
    """Draw SIE (and optional shear) parameters (docs/design.md §3.1, §2.2 [R]).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        cfg: :class:`ensai_tf.config.LensPrior`.

    Returns:
        dict with ``"params"`` ``(B, 5)`` float32 in :data:`PARAM_NAMES`
        order: theta_E ~ U(cfg.theta_e) arcsec; ``e = eps (cos phi, sin phi)``
        with eps ~ U(cfg.epsilon), phi ~ U(cfg.phi_deg) degrees; x_L, y_L ~
        U(cfg.center) arcsec each. With ``cfg.shear`` also ``"gamma_1"`` and
        ``"gamma_2"`` ``(B,)``: ``gamma (cos 2 phi_g, sin 2 phi_g)`` with
        gamma ~ U(cfg.shear_gamma), phi_g ~ U(cfg.shear_angle_deg) degrees,
        the standard convention (docs/design.md §2.2 [R]).
    """
    u = _uniforms(tf.cast(seeds, tf.int64), 7)
    theta_e = _between(u[:, 0], cfg.theta_e)
    eps = _between(u[:, 1], cfg.epsilon)
    phi = _between(u[:, 2], cfg.phi_deg) * (math.pi / 180.0)
    x_l = _between(u[:, 3], cfg.center)
    y_l = _between(u[:, 4], cfg.center)
    out = {"params": tf.stack([theta_e, eps * tf.cos(phi), eps * tf.sin(phi), x_l, y_l], axis=1)}
    if cfg.shear:
        gamma = _between(u[:, 5], cfg.shear_gamma)
        phi_g = _between(u[:, 6], cfg.shear_angle_deg) * (math.pi / 180.0)
        out["gamma_1"], out["gamma_2"] = shear.shear_components(gamma, phi_g)
    return out


def _lens_curves(params):
    """Tangential caustic and cut polygons ``(B, CURVE_SAMPLES, 2)``, arcsec, sky frame."""
    p = [params[:, i] for i in range(conventions.NUM_PARAMS)]
    return (caustics.tangential_caustic(*p, num=CURVE_SAMPLES),
            caustics.cut_curve(*p, num=CURVE_SAMPLES))


def placement_polygons(params, cfg):
    """The two placement regions of docs/design.md §3.3.

    Args:
        params: ``(B, 5)`` lens parameters.
        cfg: :class:`ensai_tf.config.SourceConfig` (``caustic_pad``,
            ``cut_shrink``).

    Returns:
        dict of float32 tensors, arcsec, sky frame:

        * ``"caustic_centre"`` ``(B, 2)``: vertex centroid c of the
          tangential caustic; ``"expanded_caustic"`` ``(B, N, 2)``: every
          vertex pushed ``caustic_pad`` further from c (rule A). A vertex at
          c (the SIS point caustic) stays there, so rule A also accepts the
          disc of radius ``caustic_pad`` about c (docs/design.md §3.3 step 5).
        * ``"cut_centre"`` ``(B, 2)`` and ``"shrunk_cut"`` ``(B, N, 2)``: the
          cut shrunk by ``cut_shrink`` about its vertex centroid (rule B).
    """
    caustic, cut = _lens_curves(params)
    c_a = caustics.polygon_centroid(caustic)
    offset = caustic - c_a[:, None]
    radius = tf.norm(offset, axis=-1, keepdims=True)
    expanded = caustic + float(cfg.caustic_pad) * tf.math.divide_no_nan(offset, radius)
    c_b = caustics.polygon_centroid(cut)
    shrunk = c_b[:, None] + float(cfg.cut_shrink) * (cut - c_b[:, None])
    return {"caustic_centre": c_a, "expanded_caustic": expanded,
            "cut_centre": c_b, "shrunk_cut": shrunk}


def _extent(poly):
    """Larger of the x- and y-extent of each polygon, arcsec, ``(B,)``."""
    span = tf.reduce_max(poly, axis=1) - tf.reduce_min(poly, axis=1)
    return tf.reduce_max(span, axis=-1)


def in_placement_region(px, py, rule, regions, pad):
    """Whether points lie in their example's placement region.

    Args:
        px, py: ``(B, K)`` points, arcsec, sky frame.
        rule: ``(B,)`` int32, :data:`RULE_A` or :data:`RULE_B`.
        regions: dict from :func:`placement_polygons`.
        pad: ``SourceConfig.caustic_pad``, arcsec.

    Returns:
        ``(B, K)`` bool: inside the expanded caustic or within ``pad`` of its
        centre (rule A), or inside the shrunk cut (rule B).
    """
    c = regions["caustic_centre"]
    near = tf.square(px - c[:, :1]) + tf.square(py - c[:, 1:]) <= float(pad) ** 2
    in_a = caustics.points_in_polygons(px, py, regions["expanded_caustic"]) | near
    in_b = caustics.points_in_polygons(px, py, regions["shrunk_cut"])
    return tf.where((rule == RULE_A)[:, None], in_a, in_b)


def place_sources(seeds, params, cfg, candidates=16):
    """Source-centre positions relative to the caustics (docs/design.md §3.3).

    Rule A (probability ``cfg.rule_a_prob``): ``candidates`` points uniform
    in the square of side D (the larger extent of the expanded caustic, at
    least ``2 caustic_pad``) centred on the caustic centroid; the first inside
    the expanded caustic wins. Rule B: points ~ N(c, (D/5)**2) per axis about
    the cut centroid, D the larger extent of the shrunk cut; the first inside
    the shrunk cut wins. [R] The original loops until a point is inside; here
    the first of ``candidates`` draws wins (``argmax`` over the inside mask)
    and, if none is inside, the region's centroid is used (``"found"`` is
    then False).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        params: ``(B, 5)`` lens parameters.
        cfg: :class:`ensai_tf.config.SourceConfig`.
        candidates: points drawn per rule.

    Returns:
        dict with ``"position"`` ``(B, 2)`` float32 (x_s, y_s), arcsec, sky
        frame; ``"rule"`` ``(B,)`` int32; ``"found"`` ``(B,)`` bool.
    """
    k = int(candidates)
    u = _uniforms(tf.cast(seeds, tf.int64), 1 + 4 * k)
    rule = tf.where(u[:, 0] < float(cfg.rule_a_prob), RULE_A, RULE_B)
    regions = placement_polygons(params, cfg)
    pad = float(cfg.caustic_pad)
    c_a, c_b = regions["caustic_centre"], regions["cut_centre"]
    side_a = tf.maximum(_extent(regions["expanded_caustic"]), 2.0 * pad)[:, None]
    sigma_b = (_extent(regions["shrunk_cut"]) / 5.0)[:, None]
    normal = tf.math.ndtri(tf.clip_by_value(u[:, 1 + 2 * k:], 1e-7, 1.0 - 1e-7))
    is_a = (rule == RULE_A)[:, None]
    px = tf.where(is_a, c_a[:, :1] + side_a * (u[:, 1:1 + k] - 0.5),
                  c_b[:, :1] + sigma_b * normal[:, :k])
    py = tf.where(is_a, c_a[:, 1:] + side_a * (u[:, 1 + k:1 + 2 * k] - 0.5),
                  c_b[:, 1:] + sigma_b * normal[:, k:])
    inside = in_placement_region(px, py, rule, regions, pad)
    first = tf.argmax(tf.cast(inside, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(inside, axis=1)
    centre = tf.where(is_a, c_a, c_b)
    pick = tf.stack([tf.gather(px, first, batch_dims=1), tf.gather(py, first, batch_dims=1)],
                    axis=1)
    return {"position": tf.where(found[:, None], pick, centre), "rule": rule, "found": found}


# ---------------------------------------------------------------------------
# Ray tracing
# ---------------------------------------------------------------------------

def ray_geometry(image_cfg, sim_cfg):
    """Constant ray-tracing grids (docs/design.md §3.4 [R]).

    Args:
        image_cfg: :class:`ensai_tf.config.ImageConfig`.
        sim_cfg: :class:`ensai_tf.config.SimulateConfig` (``oversample``,
            ``field_factor``).

    Returns:
        dict: ``"npix"``, ``"scale"`` (arcsec), ``"oversample"``, ``"pad"``
        (output pixels added on each side of the field); float32 ``(1, H,
        W)`` grids in arcsec, sky frame: ``"x_fine"``/``"y_fine"`` (output
        field, ``oversample`` rays per pixel per axis) and
        ``"x_ext"``/``"y_ext"`` (the ``field_factor`` field at one ray per
        output pixel).
    """
    npix, scale = int(image_cfg.npix), float(image_cfg.pixel_scale)
    oversample = int(sim_cfg.oversample)
    x_ext, y_ext, pad = raytrace.extended_grid(npix, scale, 1, float(sim_cfg.field_factor))
    x_fine, y_fine, _ = raytrace.extended_grid(npix, scale, oversample, 1.0)
    return {"npix": npix, "scale": scale, "oversample": oversample, "pad": int(pad),
            "x_ext": x_ext[None], "y_ext": y_ext[None],
            "x_fine": x_fine[None], "y_fine": y_fine[None]}


def _image_sum(images):
    """Per-image sums ``(B,)`` in float64.

    The reduction's order may depend on the batch size (threading); in float64 the
    differences are ~1e-16 relative, so the float32 results derived from them do not
    depend on how examples are batched.
    """
    return tf.reduce_sum(tf.cast(images, tf.float64), axis=(1, 2))


def render_arcs(params, gamma_1, gamma_2, images, half, position, geo):
    """Lensed image of each example's source and its flux bookkeeping (docs/design.md §3.4, §3.5).

    Args:
        params: ``(B, 5)`` lens parameters.
        gamma_1, gamma_2: ``(B,)`` external shear components, or None for none.
        images: ``(B, S, S)`` source-plane images centred on the source,
            rows along +y (:func:`ensai_tf.data.sources.render_sources`).
        half: ``(B,)`` source-image half-sides, arcsec.
        position: ``(B, 2)`` source centres (x_s, y_s), arcsec.
        geo: dict from :func:`ray_geometry`.

    Returns:
        ``(arcs, flux_field, flux_ext, flux_src)``: ``(B, npix, npix)`` float32
        block-averaged surface brightness (source image units), and
        ``(B,)`` float64 fluxes in source units x arcsec**2 inside the output
        field, on the extended field and of the unlensed source.
    """
    scale, oversample, pad = geo["scale"], geo["oversample"], geo["pad"]
    bx, by = raytrace.lens_equation(geo["x_ext"], geo["y_ext"], params, gamma_1, gamma_2)
    coarse = raytrace.sample_source_image(images, half, position[:, 0], position[:, 1], bx, by)
    coarse_sum = _image_sum(coarse)
    centre_sum = _image_sum(raytrace.crop_center(coarse, pad))
    if oversample == 1:
        arcs = raytrace.crop_center(coarse, pad)
        field_sum = centre_sum
    else:
        fx, fy = raytrace.lens_equation(geo["x_fine"], geo["y_fine"], params, gamma_1, gamma_2)
        fine = raytrace.sample_source_image(images, half, position[:, 0], position[:, 1], fx, fy)
        arcs = raytrace.block_average(fine, oversample)
        field_sum = _image_sum(arcs)
    pixel_area = scale * scale
    flux_field = field_sum * pixel_area
    flux_ext = flux_field + (coarse_sum - centre_sum) * pixel_area
    size = tf.cast(tf.shape(images)[1], tf.float64)
    flux_src = _image_sum(images) * tf.square(2.0 * tf.cast(half, tf.float64) / size)
    return arcs, flux_field, flux_ext, flux_src


def _candidate(seeds, config, stamps, num_stamps, geo):
    """Draw and render one candidate per example; returns a dict incl. ``"accepted"``."""
    sim = config.simulate
    lens = sample_lens_params(_fold(seeds, LENS_STREAM), config.lens)
    params = lens["params"]
    gamma_1, gamma_2 = lens.get("gamma_1"), lens.get("gamma_2")
    draws = sources.sample_sources(_fold(seeds, SOURCE_STREAM), None, config.source, num_stamps)
    images, half = sources.render_sources(draws, stamps, size=int(sim.source_pixels),
                                          taper_radius=float(config.source.taper_radius))
    place = place_sources(_fold(seeds, PLACEMENT_STREAM), params, config.source,
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
# Lens light
# ---------------------------------------------------------------------------

def sample_lens_light(seeds, params, cfg):
    """Draw the lens-light Sersic of each example (docs/design.md §4 [R], invented values).

    Args:
        seeds: ``(B, 2)`` int per-example seeds.
        params: ``(B, 5)`` lens parameters.
        cfg: :class:`ensai_tf.config.SimulateConfig`.

    Returns:
        dict of ``(B,)`` float32: ``"n"`` ~ U(cfg.lens_light_n); ``"r_eff"``
        ~ U(cfg.lens_light_r_eff), arcsec (circularised); ``"q"`` = mass q
        + U(-j, j) clipped to [0.3, 1]; ``"angle"`` = mass major-axis angle
        ``phi + pi/2`` + N(0, cfg.lens_light_pa_sigma_deg), radians from +x
        towards +y; ``"amplitude"``: peak relative to the arc peak,
        log-uniform in cfg.lens_light_amplitude; ``"x0"``, ``"y0"`` = (x_L,
        y_L), arcsec.
    """
    u = _uniforms(tf.cast(seeds, tf.int64), 5)
    e_x, e_y = params[:, conventions.Param.E_X], params[:, conventions.Param.E_Y]
    q_mass = 1.0 - tf.sqrt(tf.square(e_x) + tf.square(e_y))
    jitter = float(cfg.lens_light_q_jitter)
    lo, hi = (math.log(float(a)) for a in cfg.lens_light_amplitude)
    pa_sigma = float(cfg.lens_light_pa_sigma_deg) * math.pi / 180.0
    normal = tf.math.ndtri(tf.clip_by_value(u[:, 3], 1e-7, 1.0 - 1e-7))
    return {
        "n": _between(u[:, 0], cfg.lens_light_n),
        "r_eff": _between(u[:, 1], cfg.lens_light_r_eff),
        "q": tf.clip_by_value(q_mass + jitter * (2.0 * u[:, 2] - 1.0), 0.3, 1.0),
        "angle": tf.atan2(e_y, e_x) + 0.5 * math.pi + pa_sigma * normal,
        "amplitude": tf.exp(lo + (hi - lo) * u[:, 4]),
        "x0": params[:, conventions.Param.X_L],
        "y0": params[:, conventions.Param.Y_L],
    }


def render_lens_light(draws, geo):
    """Lens-light images ``(B, npix, npix)`` with peak ``draws["amplitude"]`` (docs/design.md §4 [R]).

    The elliptical Sersic is evaluated on the oversampled output grid (with a
    half-sub-pixel core) and block-averaged to output pixels, then scaled to
    peak ``amplitude``.

    Args:
        draws: dict of ``(B,)`` float32 from :func:`sample_lens_light`: ``"n"``,
            ``"r_eff"`` (arcsec), ``"q"``, ``"angle"`` (radians from +x towards
            +y), ``"amplitude"`` (relative to the arc peak), ``"x0"``, ``"y0"``
            (arcsec).
        geo: dict from :func:`ray_geometry` (``"x_fine"``, ``"y_fine"``,
            ``"scale"``, ``"oversample"``).

    Returns:
        ``(B, npix, npix)`` float32 images.
    """
    p = {k: v[:, None, None] for k, v in draws.items()}
    core = 0.5 * geo["scale"] / geo["oversample"]  # half a sub-pixel tames the n = 6 cusp
    fine = light.elliptical_sersic(geo["x_fine"], geo["y_fine"], 1.0, p["n"], p["r_eff"],
                                   p["q"], p["angle"], p["x0"], p["y0"], core=core)
    image = raytrace.block_average(fine, geo["oversample"])
    peak = tf.reduce_max(image, axis=(1, 2), keepdims=True)
    return p["amplitude"] * tf.math.divide_no_nan(image, peak)


# ---------------------------------------------------------------------------
# Benchmark companion: SIE + elliptical Sersic
# ---------------------------------------------------------------------------

def render_sie_sersic(params, source, npix=conventions.NPIX, pixel_scale=conventions.PIXEL_SCALE,
                      oversample=2):
    """Lensed image of an analytic elliptical Sersic source by an SIE.

    Ray-traces the oversampled output grid, evaluates
    :func:`ensai_tf.lensing.light.elliptical_sersic` at beta and block-
    averages; no PSF, no noise. The twin of lenstronomy's ``ImageModel`` with
    ``supersampling_factor=oversample`` in ``tools/benchmark_simulate.py``.

    Args:
        params: ``(B, 5)`` lens parameters (theta_E arcsec, e_x, e_y, x_L,
            y_L arcsec).
        source: dict of ``(B,)`` tensors: ``amplitude`` (surface brightness
            at r_eff), ``n``, ``r_eff`` (arcsec), ``q``, ``angle`` (major
            axis, radians from +x towards +y), ``x0``, ``y0`` (arcsec,
            source plane).
        npix: output side, pixels.
        pixel_scale: output pixel side, arcsec.
        oversample: rays per output pixel per axis.

    Returns:
        ``(B, npix, npix)`` float32 surface brightness, source units.
    """
    params = tf.convert_to_tensor(params, tf.float32)
    x, y, _ = raytrace.extended_grid(npix, pixel_scale, oversample, 1.0)
    bx, by = raytrace.lens_equation(x, y, params, None, None)
    s = {k: tf.convert_to_tensor(v, tf.float32)[:, None, None] for k, v in source.items()}
    fine = light.elliptical_sersic(bx, by, s["amplitude"], s["n"], s["r_eff"], s["q"],
                                   s["angle"], s["x0"], s["y0"])
    return raytrace.block_average(fine, int(oversample))


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
        draws = sample_lens_light(_fold(results["seed"], LENS_LIGHT_STREAM), results["params"],
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
    chunks = []
    bar = None
    if progress:
        import tqdm

        bar = tqdm.tqdm(total=int(n), desc=f"simulate {split}", unit="lens")
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
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
