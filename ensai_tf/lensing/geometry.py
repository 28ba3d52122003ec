"""Frame changes between the sky frame and an SIE's lens frame (spec §2.1).

The sky frame has x along image columns and y along image rows (spec §0).
The lens frame is the sky frame translated to the lens centre and rotated by
``-phi``, where ``e = eps (cos phi, sin phi)``. Angles are carried as
``(cos, sin)`` pairs so that no ``atan2`` is evaluated on the hot path and the
gradient stays finite at ``eps = 0``.
"""

import tensorflow as tf

__all__ = ["as_float", "safe_norm", "ellipticity_angle", "to_lens_frame", "from_lens_frame"]


def as_float(*values, dtype=None):
    """Convert values to one float dtype (that of the first float tensor, else float32)."""
    if dtype is None:
        dtype = tf.float32
        for v in values:
            if isinstance(v, (tf.Tensor, tf.Variable)) and v.dtype.is_floating:
                dtype = v.dtype
                break
    return [tf.convert_to_tensor(v, dtype=dtype) for v in values]


def safe_norm(a, b, tiny=0.0):
    """``sqrt(a^2 + b^2)`` and a flag where it exceeds ``sqrt(tiny)``.

    Uses the double-``tf.where`` pattern so that the gradient is finite (zero)
    where the norm vanishes.

    Returns:
        ``(norm, nonzero)``: the norm (0 where the flag is False) and the flag.
    """
    r2 = a * a + b * b
    nonzero = r2 > tiny
    safe = tf.sqrt(tf.where(nonzero, r2, tf.ones_like(r2)))
    return tf.where(nonzero, safe, tf.zeros_like(safe)), nonzero


def ellipticity_angle(e_x, e_y):
    """Magnitude and direction of the Ensai ellipticity.

    Args:
        e_x, e_y: ellipticity components ``eps (cos phi, sin phi)``, dimensionless.

    Returns:
        ``(eps, cos_phi, sin_phi)``: ``eps = 1 - q`` and the direction of
        ``phi``; at ``eps = 0`` the direction is (1, 0), with zero gradient.
    """
    eps, nonzero = safe_norm(e_x, e_y)
    safe = tf.where(nonzero, eps, tf.ones_like(eps))
    cos_phi = tf.where(nonzero, e_x / safe, tf.ones_like(eps))
    sin_phi = tf.where(nonzero, e_y / safe, tf.zeros_like(eps))
    return eps, cos_phi, sin_phi


def to_lens_frame(x, y, x_l, y_l, cos_phi, sin_phi):
    """Sky-frame positions to the lens frame: translate, then rotate by ``-phi``.

    Args:
        x, y: sky-frame positions, arcsec (x = +column, y = +row).
        x_l, y_l: lens centre, arcsec.
        cos_phi, sin_phi: direction of the ellipticity angle phi.

    Returns:
        ``(x', y')``, arcsec, lens frame; the mass major axis lies along y'.
    """
    dx = x - x_l
    dy = y - y_l
    return cos_phi * dx + sin_phi * dy, -sin_phi * dx + cos_phi * dy


def from_lens_frame(v_x, v_y, cos_phi, sin_phi):
    """Rotate a lens-frame vector by ``+phi`` back into the sky frame.

    Args:
        v_x, v_y: vector components in the lens frame (e.g. a deflection, arcsec).
        cos_phi, sin_phi: direction of the ellipticity angle phi.

    Returns:
        The sky-frame components, same unit.
    """
    return cos_phi * v_x - sin_phi * v_y, sin_phi * v_x + cos_phi * v_y
