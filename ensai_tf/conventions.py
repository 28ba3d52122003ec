"""Conventions shared by every part of ensai_tf (docs/design.md §0), defined once.

Images are ``(B, NPIX, NPIX, 1)`` float32 arrays indexed ``img[b, row, col, 0]``.
The sky frame has x increasing with the column index and y increasing with
the row index, with no flips anywhere. The origin sits midway between pixels
95 and 96 on both axes, so pixel ``j`` has its centre at
``(j - 95.5) * PIXEL_SCALE`` arcsec. Masked pixels are exactly 0.

Targets are ``(theta_e, e_x, e_y, x_l, y_l)`` in arcsec, dimensionless,
dimensionless, arcsec, arcsec, never rescaled. The ellipticity is
``e = eps * (cos phi, sin phi)`` with ``eps = 1 - q`` (q = minor/major axis
ratio); the mass major axis lies at position angle ``phi + 90 deg`` measured
from +x towards +y. ``(e_x, e_y)`` and ``(-e_x, -e_y)`` describe the same lens
(parity, docs/design.md §2.3).

This module depends on numpy only, so it is cheap to import everywhere.
"""

import enum

import numpy as np

__all__ = [
    "NPIX",
    "PIXEL_SCALE",
    "IMAGE_SHAPE",
    "PARAM_NAMES",
    "PARAM_UNITS",
    "PARAM_DESCRIPTIONS",
    "NUM_PARAMS",
    "Param",
    "ELLIPTICITY_INDICES",
    "SHEAR_NAMES",
    "SHEAR_UNITS",
    "TARGET_COUNTS",
    "target_names",
    "pixel_coordinates",
    "pixel_grid",
    "ellipticity_from_q_phi",
    "q_phi_from_ellipticity",
    "mass_major_axis_angle",
    "NETWORK_NAMES",
    "PAPER_ORDER",
]

NETWORK_NAMES = ("inception_v4", "alexnet", "overfeat", "ensai_net", "resnet")
"""The four paper networks and the project's residual network, by the names ``build_model``,
configs and ``ensai train --model`` use (docs/design.md §6.5); the paper's combiner order is
:data:`PAPER_ORDER`."""

PAPER_ORDER = ("overfeat", "ensai_net", "alexnet", "inception_v4")
"""Combiner order of the paper's code, models [5, 8, 9, 11]; the first is the parity
reference (docs/design.md §7.4)."""

NPIX = 192
"""Image side, pixels (docs/design.md §0)."""

PIXEL_SCALE = 0.04
"""Pixel side, arcsec (HST WFC3/UVIS; docs/design.md §0 [R]: exactly 0.04, not 7.68/191)."""

IMAGE_SHAPE = (NPIX, NPIX, 1)
"""Shape of one network input, channels-last."""

PARAM_NAMES = ("theta_e", "e_x", "e_y", "x_l", "y_l")
"""Target names, in the order of every ``params`` array."""

PARAM_UNITS = ("arcsec", "", "", "arcsec", "arcsec")
"""Unit of each target ("" = dimensionless)."""

PARAM_DESCRIPTIONS = (
    "Einstein radius (intermediate-axis, area-equivalent), arcsec",
    "ellipticity x component, eps*cos(phi), eps = 1 - q",
    "ellipticity y component, eps*sin(phi)",
    "lens centre x (column direction), arcsec",
    "lens centre y (row direction), arcsec",
)

NUM_PARAMS = len(PARAM_NAMES)


class Param(enum.IntEnum):
    """Index of each target in a ``params`` array: ``params[:, Param.E_X]``."""

    THETA_E = 0
    E_X = 1
    E_Y = 2
    X_L = 3
    Y_L = 4


ELLIPTICITY_INDICES = (int(Param.E_X), int(Param.E_Y))
"""Indices whose sign flips together under parity (docs/design.md §2.3)."""

SHEAR_NAMES = ("gamma_1", "gamma_2")
"""Optional external-shear targets, appended after ``PARAM_NAMES``:
``gamma (cos 2 phi_g, sin 2 phi_g)``, dimensionless (docs/design.md §2.2 [R]). Their sign
is physical: parity leaves them alone."""

SHEAR_UNITS = ("", "")
"""Unit of each shear target (dimensionless)."""

TARGET_COUNTS = (NUM_PARAMS, NUM_PARAMS + len(SHEAR_NAMES))
"""Accepted lengths of a target vector: the 5 lens parameters, or those plus shear."""


def target_names(n=NUM_PARAMS):
    """Names of an ``n``-long target vector.

    Args:
        n: 5 (``PARAM_NAMES``) or 7 (``PARAM_NAMES + SHEAR_NAMES``).

    Returns:
        tuple of names, in target order.

    Raises:
        ValueError: ``n`` is not one of ``TARGET_COUNTS``.
    """
    if int(n) not in TARGET_COUNTS:
        raise ValueError(f"a target vector has {TARGET_COUNTS[0]} parameters "
                         f"{PARAM_NAMES} or {TARGET_COUNTS[1]} with the shear "
                         f"{SHEAR_NAMES}, got {n}")
    return PARAM_NAMES + (SHEAR_NAMES if int(n) > NUM_PARAMS else ())


def pixel_coordinates(npix=NPIX, pixel_scale=PIXEL_SCALE, oversample=1):
    """1-D pixel-centre coordinates along one axis.

    Args:
        npix: number of output pixels along the axis.
        pixel_scale: output pixel side, arcsec.
        oversample: sub-pixels per output pixel along the axis (integer >= 1).
            The sub-pixel centres of output pixel ``j`` tile that pixel
            exactly, so block-averaging ``oversample`` consecutive values
            gives back the output pixel centres.

    Returns:
        float64 array of shape ``(npix * oversample,)``, arcsec, centred on 0:
        ``(k - (n - 1) / 2) * pixel_scale / oversample`` with
        ``n = npix * oversample``.
    """
    oversample = int(oversample)
    if oversample < 1:
        raise ValueError(f"oversample must be an integer >= 1, got {oversample}")
    n = npix * oversample
    step = pixel_scale / oversample
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * step


def pixel_grid(npix=NPIX, pixel_scale=PIXEL_SCALE, oversample=1):
    """2-D pixel-centre grid in the sky frame (x = column, y = row).

    Args:
        npix: number of output pixels per side.
        pixel_scale: output pixel side, arcsec.
        oversample: sub-pixels per output pixel per axis.

    Returns:
        ``(x, y)``, two float64 arrays of shape ``(n, n)`` with
        ``n = npix * oversample``, arcsec: ``x[row, col]`` depends on ``col``
        only and ``y[row, col]`` on ``row`` only (``indexing="xy"``).
    """
    coords = pixel_coordinates(npix, pixel_scale, oversample)
    return np.meshgrid(coords, coords, indexing="xy")


def ellipticity_from_q_phi(q, phi):
    """Ensai ellipticity from axis ratio and angle.

    Args:
        q: minor/major axis ratio, in (0, 1].
        phi: ellipticity angle, radians; the mass major axis lies at
            ``phi + pi/2`` from +x towards +y.

    Returns:
        ``(e_x, e_y)``, dimensionless: ``(1 - q) * (cos phi, sin phi)``.
    """
    eps = 1.0 - np.asarray(q, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    return eps * np.cos(phi), eps * np.sin(phi)


def q_phi_from_ellipticity(e_x, e_y):
    """Axis ratio and angle from the Ensai ellipticity.

    Args:
        e_x, e_y: Ensai ellipticity components, dimensionless.

    Returns:
        ``(q, phi)``: axis ratio ``1 - |e|`` and angle ``atan2(e_y, e_x)`` in
        radians, in ``(-pi, pi]``. Under parity ``phi`` moves by pi, which is
        the same lens.
    """
    e_x = np.asarray(e_x, dtype=np.float64)
    e_y = np.asarray(e_y, dtype=np.float64)
    return 1.0 - np.hypot(e_x, e_y), np.arctan2(e_y, e_x)


def mass_major_axis_angle(e_x, e_y):
    """Position angle of the mass major axis in the image frame.

    Args:
        e_x, e_y: Ensai ellipticity components, dimensionless.

    Returns:
        Angle of the major axis, degrees in ``[0, 180)``, measured from +x
        (increasing column) towards +y (increasing row); ``phi + 90 deg``
        modulo 180.
    """
    _, phi = q_phi_from_ellipticity(e_x, e_y)
    return np.mod(np.degrees(phi) + 90.0, 180.0)
