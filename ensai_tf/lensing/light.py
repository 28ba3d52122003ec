"""Analytic surface-brightness profiles: elliptical Sersic and Gaussian (docs/design.md §3.2, §4).

Pure TensorFlow functions of tensors, used for clumpy and parametric sources
(docs/design.md §3.2 [R]) and for the optional lens light (docs/design.md §4 [R]).

Conventions shared by every profile here:

* Positions ``x, y`` and centres ``x0, y0`` are in arcsec in one frame (the
  sky frame for lens light, the source plane for sources), x along columns
  and y along rows (docs/design.md §0).
* ``angle`` is the position angle of the **major axis**, radians, measured
  from +x towards +y.
* ``q`` is the minor/major axis ratio in (0, 1]. The elliptical radius is the
  *circularised* (intermediate-axis) radius
  ``r = sqrt(q * x'**2 + y'**2 / q)``, where ``x'`` runs along the major axis
  and ``y'`` along the minor axis. An isophote of radius ``r`` is an ellipse
  with semi-axes ``r / sqrt(q)`` (major) and ``r * sqrt(q)`` (minor), whose
  area is ``pi * r**2`` whatever ``q``; so ``r_eff`` is the circularised
  half-light radius and the total flux does not depend on ``q``. This is the
  same convention as the SIE's area-equivalent Einstein radius (docs/design.md §0) and
  as lenstronomy's ``SERSIC_ELLIPSE``.
* Parameters broadcast against the grid: ``(B, 1, 1)`` parameters with
  ``(B, H, W)`` or ``(1, H, W)`` grids give ``(B, H, W)`` images. Every
  result has the dtype of ``x``.
"""

import math

import tensorflow as tf

__all__ = [
    "sersic_b",
    "elliptical_radius",
    "elliptical_sersic",
    "sersic_total_flux",
    "gaussian_blob",
]


def _as_dtype(value, dtype):
    """``value`` as a tensor of ``dtype``; Python floats convert without a float32 detour."""
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)


def _safe_sqrt(value):
    """sqrt with a zero (not NaN) gradient at exactly 0 (double-where pattern)."""
    positive = value > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, value, tf.ones_like(value))),
                    tf.zeros_like(value))


def sersic_b(n):
    """Sersic ``b_n``, so that ``r_eff`` encloses half the light (docs/design.md §3.2).

    Uses the Ciotti & Bertin (1999) expansion quoted in docs/design.md §2,
    ``b_n ~= 2n - 1/3 + 4/(405 n) + 46/(25515 n**2)``; it agrees with the exact
    root of ``gamma(2n, b_n) = Gamma(2n) / 2`` to better than 1e-3 relative
    for ``n >= 0.5``.

    Args:
        n: Sersic index, dimensionless, > 0 (float tensor of any shape).

    Returns:
        ``b_n``, dimensionless, same shape and dtype as ``n``.
    """
    n = tf.convert_to_tensor(n)
    if not n.dtype.is_floating:
        n = tf.cast(n, tf.float32)
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def elliptical_radius(x, y, q, angle, x0, y0):
    """Circularised elliptical radius about ``(x0, y0)``.

    Args:
        x, y: positions, arcsec (x = +column, y = +row).
        q: minor/major axis ratio, dimensionless, in (0, 1].
        angle: major-axis position angle, radians from +x towards +y.
        x0, y0: centre, arcsec.

    Returns:
        ``sqrt(q * x'**2 + y'**2 / q)``, arcsec, where ``x'`` is the offset
        along the major axis and ``y'`` along the minor axis.
    """
    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    y, q, angle, x0, y0 = (_as_dtype(v, dtype) for v in (y, q, angle, x0, y0))
    dx = x - x0
    dy = y - y0
    cos_a = tf.cos(angle)
    sin_a = tf.sin(angle)
    # Apply R(-angle): x' along the major axis, y' along the minor axis.
    x_major = cos_a * dx + sin_a * dy
    y_minor = -sin_a * dx + cos_a * dy
    return _safe_sqrt(q * tf.square(x_major) + tf.square(y_minor) / q)


def elliptical_sersic(x, y, amplitude, n, r_eff, q, angle, x0, y0, core=0.0):
    """Elliptical Sersic surface brightness.

    ``I(r) = amplitude * exp(-b_n * ((r / r_eff)**(1/n) - 1))`` with ``r`` the
    circularised elliptical radius (module docstring) and ``b_n`` from
    :func:`sersic_b`.

    ``amplitude`` is the surface brightness **at the effective radius**
    (``I_e``), not the central brightness; the central brightness is
    ``amplitude * exp(b_n)`` (e.g. x5.4 for n = 1, x2100 for n = 4). This is
    the convention of the closed-form total flux (:func:`sersic_total_flux`)
    and of lenstronomy's ``amp``.

    Args:
        x, y: positions, arcsec (x = +column, y = +row).
        amplitude: surface brightness at ``r = r_eff``, any flux unit per
            arcsec**2.
        n: Sersic index, dimensionless, > 0.
        r_eff: circularised half-light radius, arcsec, > 0. The half-light
            ellipse has semi-major axis ``r_eff / sqrt(q)``.
        q: minor/major axis ratio, dimensionless, in (0, 1].
        angle: major-axis position angle, radians from +x towards +y.
        x0, y0: centre, arcsec.
        core: softening radius, arcsec, >= 0: the profile is evaluated at
            ``sqrt(r**2 + core**2)``, which caps the cusp of high-n profiles
            at the value ``core`` away from the centre. 0 = exact profile.
            Used to keep point-sampled images of cuspy profiles stable
            (about half a sampling pixel).

    Returns:
        Surface brightness, same unit as ``amplitude``; the broadcast shape
        of the inputs, dtype of ``x``.
    """
    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    amplitude, n, r_eff, core = (_as_dtype(v, dtype) for v in (amplitude, n, r_eff, core))
    r = elliptical_radius(x, y, q, angle, x0, y0)
    r = _safe_sqrt(tf.square(r) + tf.square(core))
    scaled = r / r_eff
    # Double where: r**(1/n) is exactly 0 at the centre with a finite gradient.
    positive = scaled > 0
    # exp(log(s) / n) rather than tf.pow: the same value, ~3x faster on this CPU.
    log_scaled = tf.math.log(tf.where(positive, scaled, tf.ones_like(scaled)))
    power = tf.where(positive, tf.exp(log_scaled / n), tf.zeros_like(scaled))
    return amplitude * tf.exp(-sersic_b(n) * (power - 1.0))


def sersic_total_flux(amplitude, n, r_eff):
    """Closed-form total flux of a Sersic profile of any axis ratio.

    ``F = 2 pi n r_eff**2 I_e exp(b_n) b_n**(-2n) Gamma(2n)``; with the
    circularised radius convention the flux is independent of ``q``.

    Args:
        amplitude: surface brightness at ``r_eff`` (``I_e``), flux per
            arcsec**2.
        n: Sersic index, dimensionless, > 0.
        r_eff: circularised half-light radius, arcsec.

    Returns:
        Total flux, flux unit of ``amplitude`` times arcsec**2.
    """
    n = tf.convert_to_tensor(n)
    if not n.dtype.is_floating:
        n = tf.cast(n, tf.float32)
    amplitude, r_eff = (_as_dtype(v, n.dtype) for v in (amplitude, r_eff))
    b = sersic_b(n)
    log_flux = (tf.math.log(2.0 * math.pi * n) + 2.0 * tf.math.log(r_eff) + b
                - 2.0 * n * tf.math.log(b) + tf.math.lgamma(2.0 * n))
    return amplitude * tf.exp(log_flux)


def gaussian_blob(x, y, amplitude, sigma, x0, y0, q=1.0, angle=0.0):
    """Elliptical Gaussian surface brightness.

    ``I = amplitude * exp(-r**2 / (2 sigma**2))`` with ``r`` the circularised
    elliptical radius (module docstring); for ``q = 1`` this is a circular
    Gaussian of standard deviation ``sigma``.

    Args:
        x, y: positions, arcsec (x = +column, y = +row).
        amplitude: **peak** (central) surface brightness, flux per arcsec**2.
        sigma: circularised standard deviation, arcsec, > 0; the major-axis
            standard deviation is ``sigma / sqrt(q)``.
        x0, y0: centre, arcsec.
        q: minor/major axis ratio, dimensionless, in (0, 1].
        angle: major-axis position angle, radians from +x towards +y.

    Returns:
        Surface brightness, unit of ``amplitude``; total flux is
        ``2 pi sigma**2 * amplitude``. Broadcast shape, dtype of ``x``.
    """
    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    amplitude, sigma = (_as_dtype(v, dtype) for v in (amplitude, sigma))
    r = elliptical_radius(x, y, q, angle, x0, y0)
    return amplitude * tf.exp(-0.5 * tf.square(r / sigma))
