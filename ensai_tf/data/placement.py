"""Lens-parameter draws and source placement relative to the caustics.

docs/design.md §3.1 (SIE and shear priors, :func:`sample_lens_params`) and
§3.3 (rule A inside the expanded tangential caustic, rule B inside the
shrunk cut, :func:`place_sources`).
"""

import math

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data.draws import lerp, uniforms
from ensai_tf.lensing import caustics, shear

__all__ = [
    "CURVE_SAMPLES",
    "RULE_A",
    "RULE_B",
    "sample_lens_params",
    "placement_polygons",
    "in_placement_region",
    "place_sources",
]


CURVE_SAMPLES = 200
"""Vertices of the caustic and cut polygons (docs/design.md §2.5: 200 samples of theta)."""


RULE_A = 0
"""``placement_rule`` value: inside the expanded tangential caustic (docs/design.md §3.3)."""
RULE_B = 1
"""``placement_rule`` value: inside the shrunk cut (docs/design.md §3.3)."""


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
    u = uniforms(tf.cast(seeds, tf.int64), 7)
    theta_e = lerp(u[:, 0], cfg.theta_e)
    eps = lerp(u[:, 1], cfg.epsilon)
    phi = lerp(u[:, 2], cfg.phi_deg) * (math.pi / 180.0)
    x_l = lerp(u[:, 3], cfg.center)
    y_l = lerp(u[:, 4], cfg.center)
    out = {"params": tf.stack([theta_e, eps * tf.cos(phi), eps * tf.sin(phi), x_l, y_l], axis=1)}
    if cfg.shear:
        gamma = lerp(u[:, 5], cfg.shear_gamma)
        phi_g = lerp(u[:, 6], cfg.shear_angle_deg) * (math.pi / 180.0)
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
    u = uniforms(tf.cast(seeds, tf.int64), 1 + 4 * k)
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
