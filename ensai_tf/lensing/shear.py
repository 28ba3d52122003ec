"""External shear in the standard convention (docs/design.md §2.2 [R]).

The lens equation with shear is ``beta = theta - alpha_SIE - Gamma theta`` with
``Gamma = [[g1, g2], [g2, -g1]]`` about the lens centre, so the shear
deflection is ``(g1 x + g2 y, g2 x - g1 y)``, as lenstronomy's ``SHEAR``. The
original simulator used the opposite sign and never switched shear on.
"""

import tensorflow as tf

from ensai_tf.lensing import geometry

__all__ = ["shear_components", "shear_deflection"]


def shear_components(gamma, phi_gamma):
    """Cartesian shear components.

    Args:
        gamma: shear magnitude, dimensionless.
        phi_gamma: shear angle, radians, from +x towards +y.

    Returns:
        ``(gamma_1, gamma_2) = gamma (cos 2 phi_gamma, sin 2 phi_gamma)``.
    """
    gamma, phi_gamma = geometry.as_float(gamma, phi_gamma)
    return gamma * tf.cos(2.0 * phi_gamma), gamma * tf.sin(2.0 * phi_gamma)


def shear_deflection(x, y, gamma_1, gamma_2, x_l=0.0, y_l=0.0):
    """Deflection of an external shear field about the lens centre.

    Args:
        x, y: image-plane positions, arcsec, sky frame.
        gamma_1, gamma_2: shear components, dimensionless (broadcast like x).
        x_l, y_l: the shear's reference point (the lens centre), arcsec.

    Returns:
        ``(alpha_x, alpha_y) = (g1 dx + g2 dy, g2 dx - g1 dy)``, arcsec, sky frame.
    """
    x, y, gamma_1, gamma_2, x_l, y_l = geometry.as_float(x, y, gamma_1, gamma_2, x_l, y_l)
    dx = x - x_l
    dy = y - y_l
    return gamma_1 * dx + gamma_2 * dy, gamma_2 * dx - gamma_1 * dy
