"""Tangential critical curve, tangential caustic and cut of the SIE (docs/design.md §2.5).

In the lens frame and in units of theta_E, with ``f = q`` and
``Delta = sqrt(cos^2 t + f^2 sin^2 t)``:

- tangential critical curve: ``(sqrt(f)/Delta) (cos t, sin t)``, an ellipse
  with semi-axes ``sqrt(q)`` along x' and ``1/sqrt(q)`` along y' (area pi);
- cut (pseudo-caustic): ``-(sqrt(f)/f') (asinh(f'/f cos t), asin(f' sin t))``;
- tangential caustic: critical curve minus the deflection at the same polar
  angle (the deflection depends on the polar angle only).

Curves are scaled by theta_E, rotated by ``+phi`` and shifted to the lens
centre. Polygons are ``(B, num, 2)`` tensors of sky-frame vertices in arcsec,
implicitly closed (the last vertex connects to the first).
"""

import math

import tensorflow as tf

from ensai_tf.lensing import geometry, sie

__all__ = ["tangential_critical_curve", "tangential_caustic", "cut_curve", "polygon_centroid",
           "polygon_area", "points_in_polygons"]


def _polar_samples(num, dtype):
    return tf.cast(tf.range(num), dtype) * (2.0 * math.pi / num)


def _batch_params(theta_e, e_x, e_y, x_l, y_l):
    """Check and broadcast the lens parameters to one (B,) shape; scalars become (1,)."""
    values = geometry.as_float(theta_e, e_x, e_y, x_l, y_l)
    names = ("theta_e", "e_x", "e_y", "x_l", "y_l")
    for name, v in zip(names, values):
        if v.shape.rank is not None and v.shape.rank > 1:
            raise ValueError(f"{name} must be a scalar or a (B,) tensor, got shape {v.shape}")
    sizes = {v.shape[0] for v in values if v.shape.rank == 1 and v.shape[0] is not None} - {1}
    if len(sizes) > 1:
        raise ValueError(f"lens parameters have mismatched batch sizes: "
                         f"{[tuple(v.shape) for v in values]}")
    batch = tf.reduce_max(tf.stack([tf.size(v) for v in values]))
    return [tf.broadcast_to(tf.reshape(v, [-1]), [batch]) for v in values]


def _curve(theta_e, e_x, e_y, x_l, y_l, num, kind):
    """Shared construction of the three curves; parameters are (B,) tensors."""
    if int(num) != num or num < 3:
        raise ValueError(f"num must be an integer >= 3 (polygon vertices), got {num}")
    theta_e, e_x, e_y, x_l, y_l = _batch_params(theta_e, e_x, e_y, x_l, y_l)
    t = _polar_samples(int(num), theta_e.dtype)[None, :]
    eps, cos_phi, sin_phi = geometry.ellipticity_angle(e_x[:, None], e_y[:, None])
    cos_t, sin_t = tf.cos(t), tf.sin(t)
    f = 1.0 - eps
    # Delta >= f >= 0.1 over the prior, so the division is safe (docs/design.md §2.5).
    radius = tf.sqrt(f) / tf.sqrt(cos_t * cos_t + f * f * sin_t * sin_t)
    critical_x, critical_y = radius * cos_t, radius * sin_t
    a_x, a_y = sie.sie_angular_deflection(cos_t, sin_t, eps)
    if kind == "critical":
        u, v = critical_x, critical_y
    elif kind == "caustic":
        u, v = critical_x - a_x, critical_y - a_y
    else:
        u, v = -a_x, -a_y
    u, v = geometry.from_lens_frame_cs(u, v, cos_phi, sin_phi)
    return tf.stack([theta_e[:, None] * u + x_l[:, None],
                     theta_e[:, None] * v + y_l[:, None]], axis=-1)


def tangential_critical_curve(theta_e, e_x, e_y, x_l, y_l, num=200):
    """Tangential critical curve of the SIE.

    Args:
        theta_e: intermediate-axis Einstein radius, arcsec, shape (B,) (or scalar).
        e_x, e_y: Ensai ellipticity ``eps (cos phi, sin phi)``, dimensionless, shape (B,).
        x_l, y_l: lens centre, arcsec, sky frame, shape (B,).
        num: number of vertices (lens-frame polar angles ``2 pi k / num``,
            without the repeated endpoint of the original's ``linspace``).

    Returns:
        (B, num, 2) sky-frame polygon, arcsec; area ``pi theta_E^2``.
    """
    return _curve(theta_e, e_x, e_y, x_l, y_l, num, "critical")


def tangential_caustic(theta_e, e_x, e_y, x_l, y_l, num=200):
    """Tangential caustic (astroid-like) of the SIE; arguments as the critical curve.

    Args:
        theta_e, e_x, e_y, x_l, y_l, num: as :func:`critical_curve` (arcsec, dimensionless).

    Returns:
        (B, num, 2) sky-frame polygon, arcsec; collapses to the lens centre
        for an SIS.

    Raises:
        ValueError: as :func:`critical_curve`.
    """
    return _curve(theta_e, e_x, e_y, x_l, y_l, num, "caustic")


def cut_curve(theta_e, e_x, e_y, x_l, y_l, num=200):
    """Cut (pseudo-caustic, image of the lens centre); arguments as the critical curve.

    Args:
        theta_e, e_x, e_y, x_l, y_l, num: as :func:`critical_curve` (arcsec, dimensionless).

    Returns:
        (B, num, 2) sky-frame polygon, arcsec; a circle of radius theta_E for an SIS.

    Raises:
        ValueError: as :func:`critical_curve`.
    """
    return _curve(theta_e, e_x, e_y, x_l, y_l, num, "cut")


def polygon_centroid(poly):
    """Vertex centroid of polygons (docs/design.md §3.3 uses the vertex mean).

    Args:
        poly: (B, V, 2) vertices, arcsec.

    Returns:
        (B, 2) centroid, arcsec.
    """
    return tf.reduce_mean(poly, axis=-2)


def polygon_area(poly):
    """Area of simple polygons by the shoelace formula.

    Args:
        poly: (B, V, 2) vertices, arcsec, implicitly closed.

    Returns:
        (B,) area, arcsec^2.
    """
    x, y = poly[..., 0], poly[..., 1]
    x2, y2 = tf.roll(x, -1, axis=-1), tf.roll(y, -1, axis=-1)
    return 0.5 * tf.abs(tf.reduce_sum(x * y2 - x2 * y, axis=-1))


def points_in_polygons(px, py, poly):
    """Even-odd (ray casting) point-in-polygon test, vectorised over a batch.

    Args:
        px, py: point coordinates, arcsec, shape (B,) or (B, K).
        poly: (B, V, 2) polygons, arcsec, implicitly closed.

    Returns:
        bool tensor shaped like ``px``: True where the point lies inside
        polygon ``b`` of its row.
    """
    px, py, poly = geometry.as_float(px, py, poly)
    squeeze = px.shape.rank == 1
    if squeeze:
        px, py = px[:, None], py[:, None]
    x1 = poly[:, None, :, 0]
    y1 = poly[:, None, :, 1]
    x2 = tf.roll(x1, -1, axis=-1)
    y2 = tf.roll(y1, -1, axis=-1)
    xq = px[..., None]
    yq = py[..., None]
    straddles = (y1 > yq) != (y2 > yq)
    dy = tf.where(straddles, y2 - y1, tf.ones_like(y1))
    x_cross = x1 + (yq - y1) * (x2 - x1) / dy
    crossings = tf.reduce_sum(tf.cast(straddles & (xq < x_cross), tf.int32), axis=-1)
    inside = tf.equal(crossings % 2, 1)
    return inside[:, 0] if squeeze else inside
