"""Frame changes between the sky frame and an SIE's lens frame (docs/design.md §2.1).

The sky frame has x along image columns and y along image rows (docs/design.md §0).
The lens frame is the sky frame translated to the lens centre and rotated by
``-phi``, where ``e = eps (cos phi, sin phi)``; the mass major axis lies along
the lens-frame y' axis, at sky position angle ``phi + 90 deg``.

The public ``to_lens_frame``/``from_lens_frame`` take the angle ``phi`` in
radians. The hot path (:mod:`sie`, :mod:`caustics`) uses the ``*_cs``
variants, which carry the angle as a ``(cos phi, sin phi)`` pair obtained from
``e / |e|`` by :func:`ellipticity_angle`, so that no ``atan2``/``cos``/``sin``
is evaluated per pixel and the gradient stays finite at ``eps = 0``.

Every function broadcasts its arguments with numpy rules: per-example
parameters are passed as ``(B, 1, 1)`` tensors against ``(B, H, W)`` or
``(1, H, W)`` grids.
"""

import tensorflow as tf

__all__ = ["as_float", "safe_norm", "ellipticity_angle", "ellipticity_to_q_phi",
           "to_lens_frame", "from_lens_frame", "to_lens_frame_cs", "from_lens_frame_cs"]


def as_float(*values, dtype=None):
    """Convert values to one float dtype.

    Args:
        *values: tensors, arrays or Python numbers.
        dtype: target dtype; default: that of the first floating tensor among
            ``values``, else float32.

    Returns:
        A list of tensors of that dtype, in the order given.
    """
    if dtype is None:
        dtype = tf.float32
        for v in values:
            if isinstance(v, (tf.Tensor, tf.Variable)) and v.dtype.is_floating:
                dtype = v.dtype
                break
    return [tf.convert_to_tensor(v, dtype=dtype) for v in values]


def safe_norm(a, b, tiny=0.0):
    """``sqrt(a^2 + b^2)`` and a flag where its square exceeds ``tiny``.

    Uses the double-``tf.where`` pattern so that the gradient is finite (zero)
    where the norm vanishes.

    Args:
        a, b: vector components, any unit (broadcast together).
        tiny: threshold on the squared norm, same unit squared.

    Returns:
        ``(norm, nonzero)``: the norm, same unit (0 where the flag is False),
        and the boolean flag.
    """
    r2 = a * a + b * b
    nonzero = r2 > tiny
    safe = tf.sqrt(tf.where(nonzero, r2, tf.ones_like(r2)))
    return tf.where(nonzero, safe, tf.zeros_like(safe)), nonzero


def ellipticity_angle(e_x, e_y):
    """Magnitude and direction of the Ensai ellipticity, without trigonometry.

    Args:
        e_x, e_y: ellipticity components ``eps (cos phi, sin phi)``, dimensionless.

    Returns:
        ``(eps, cos_phi, sin_phi)``: ``eps = 1 - q`` (dimensionless) and the
        direction of ``phi``; at ``eps = 0`` the direction is (1, 0), with zero
        gradient.
    """
    eps, nonzero = safe_norm(e_x, e_y)
    safe = tf.where(nonzero, eps, tf.ones_like(eps))
    cos_phi = tf.where(nonzero, e_x / safe, tf.ones_like(eps))
    sin_phi = tf.where(nonzero, e_y / safe, tf.zeros_like(eps))
    return eps, cos_phi, sin_phi


def ellipticity_to_q_phi(e_x, e_y):
    """Axis ratio and ellipticity angle from the Ensai ellipticity (docs/design.md §0, §2.3).

    Args:
        e_x, e_y: ellipticity components ``eps (cos phi, sin phi)``, dimensionless.

    Returns:
        ``(q, phi)``: ``q = 1 - eps`` (minor/major axis ratio, dimensionless)
        and ``phi`` in radians, in (-pi, pi], measured from +x towards +y; the
        mass major axis lies at ``phi + pi/2``. At ``e = 0`` ``phi`` is 0 and
        both outputs have finite (zero) gradients with respect to ``e``.
    """
    e_x, e_y = as_float(e_x, e_y)
    eps, nonzero = safe_norm(e_x, e_y)
    # Double tf.where: atan2 (and its gradient) is never evaluated at (0, 0).
    safe_x = tf.where(nonzero, e_x, tf.ones_like(e_x))
    safe_y = tf.where(nonzero, e_y, tf.zeros_like(e_y))
    phi = tf.where(nonzero, tf.atan2(safe_y, safe_x), tf.zeros_like(eps))
    return 1.0 - eps, phi


def to_lens_frame_cs(x, y, x_l, y_l, cos_phi, sin_phi):
    """Sky-frame positions to the lens frame, the angle given as a (cos, sin) pair.

    Args:
        x, y: sky-frame positions, arcsec (x = +column, y = +row).
        x_l, y_l: lens centre, arcsec, sky frame.
        cos_phi, sin_phi: cosine and sine of the ellipticity angle phi.

    Returns:
        ``(x', y')``, arcsec, lens frame; the mass major axis lies along y'.
    """
    dx = x - x_l
    dy = y - y_l
    # Apply R(-phi).
    return cos_phi * dx + sin_phi * dy, -sin_phi * dx + cos_phi * dy


def from_lens_frame_cs(v_x, v_y, cos_phi, sin_phi):
    """Rotate a lens-frame vector by ``+phi`` into the sky frame, angle as (cos, sin).

    Args:
        v_x, v_y: vector components in the lens frame (e.g. a deflection, arcsec).
        cos_phi, sin_phi: cosine and sine of the ellipticity angle phi.

    Returns:
        The sky-frame components, same unit.
    """
    return cos_phi * v_x - sin_phi * v_y, sin_phi * v_x + cos_phi * v_y


def to_lens_frame(x, y, x_l, y_l, phi):
    """Sky-frame positions to the lens frame: translate to the lens centre, rotate by ``-phi``.

    Args:
        x, y: sky-frame positions, arcsec (x = +column, y = +row).
        x_l, y_l: lens centre, arcsec, sky frame.
        phi: ellipticity angle, radians, from +x towards +y.

    Returns:
        ``(x', y')``, arcsec, lens frame; the mass major axis lies along y'.
    """
    x, y, x_l, y_l, phi = as_float(x, y, x_l, y_l, phi)
    return to_lens_frame_cs(x, y, x_l, y_l, tf.cos(phi), tf.sin(phi))


def from_lens_frame(ax, ay, phi):
    """Rotate a lens-frame vector by ``+phi`` back into the sky frame.

    Args:
        ax, ay: vector components in the lens frame (e.g. a deflection, arcsec).
        phi: ellipticity angle, radians, from +x towards +y.

    Returns:
        The sky-frame components, same unit (no translation: it is a vector).
    """
    ax, ay, phi = as_float(ax, ay, phi)
    return from_lens_frame_cs(ax, ay, tf.cos(phi), tf.sin(phi))
