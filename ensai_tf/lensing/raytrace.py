"""Ray tracing on an oversampled, extended grid (docs/design.md §3.4 [R]).

The image plane is sampled with ``oversample`` sub-pixels per output pixel
and per axis, over a field wider than the output by ``pad_pix`` whole output
pixels on every side (``field_factor`` 1.6 by default, docs/design.md §3.4). Sub-pixel
values are point samples of the surface brightness, so block-averaging gives
the mean brightness of each output pixel and sums are flux-conserving.
"""

import math

import numpy as np
import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.lensing import geometry, shear, sie

__all__ = ["extended_grid", "lens_equation", "sample_source_image", "block_average",
           "crop_center"]


def extended_grid(npix=conventions.NPIX, pixel_scale=conventions.PIXEL_SCALE, oversample=2,
                  field_factor=1.6):
    """Sky-frame ray-tracing grid covering an extended field.

    Args:
        npix: output image side, pixels.
        pixel_scale: output pixel side, arcsec.
        oversample: sub-pixels per output pixel per axis (integer >= 1).
        field_factor: traced field side / output field side (>= 1).

    Returns:
        ``(x, y, pad_pix)``: float32 tensors of shape (N, N),
        ``N = (npix + 2 pad_pix) oversample``, arcsec (x = +column, y = +row),
        and the integer padding ``pad_pix = ceil(npix (field_factor - 1) / 2)``
        in output pixels. The central ``npix * oversample`` block, block-averaged,
        lands exactly on :func:`ensai_tf.conventions.pixel_grid`.
    """
    if int(npix) != npix or npix < 1:
        raise ValueError(f"npix must be a positive integer, got {npix}")
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be an integer >= 1, got {oversample}")
    if not pixel_scale > 0:
        raise ValueError(f"pixel_scale must be > 0 arcsec, got {pixel_scale}")
    if not field_factor >= 1:
        raise ValueError(f"field_factor must be >= 1, got {field_factor}")
    # [R] docs/design.md §3.4: pad by whole output pixels so the crop is exact; 1e-9 absorbs float round-off.
    pad = int(math.ceil(int(npix) * (field_factor - 1.0) / 2.0 - 1e-9))
    coords = conventions.pixel_coordinates(int(npix) + 2 * pad, pixel_scale, int(oversample))
    x, y = np.meshgrid(coords, coords, indexing="xy")
    return tf.constant(x, tf.float32), tf.constant(y, tf.float32), pad


def lens_equation(x, y, params, gamma_1=None, gamma_2=None):
    """Source-plane positions ``beta = theta - alpha_SIE - Gamma theta``.

    Args:
        x, y: image-plane positions, arcsec, sky frame, shape (H, W) or (B, H, W).
        params: (B, 5) lens parameters in ``conventions.PARAM_NAMES`` order
            (arcsec, -, -, arcsec, arcsec).
        gamma_1, gamma_2: optional (B,) external shear components about the
            lens centre, dimensionless (docs/design.md §2.2 [R] standard sign).

    Per-example parameters are broadcast as (B, 1, 1) against the grid.

    Returns:
        ``(beta_x, beta_y)``, each (B, H, W), arcsec, sky frame.
    """
    params = tf.convert_to_tensor(params, tf.float32)
    if params.shape.rank != 2 or params.shape[-1] != conventions.NUM_PARAMS:
        raise ValueError(f"params must have shape (B, {conventions.NUM_PARAMS}) in PARAM_NAMES "
                         f"order {conventions.PARAM_NAMES}, got {params.shape}")
    if (gamma_1 is None) != (gamma_2 is None):
        raise ValueError("gamma_1 and gamma_2 must be given together (or both None)")
    p = [params[:, int(i)][:, None, None] for i in conventions.Param]
    theta_e, e_x, e_y, x_l, y_l = p
    alpha_x, alpha_y = sie.sie_deflection(x, y, theta_e, e_x, e_y, x_l, y_l)
    beta_x = x - alpha_x
    beta_y = y - alpha_y
    if gamma_1 is not None:
        g1, g2 = geometry.as_float(gamma_1, gamma_2)
        s_x, s_y = shear.shear_deflection(x, y, g1[:, None, None], g2[:, None, None], x_l, y_l)
        beta_x -= s_x
        beta_y -= s_y
    return beta_x, beta_y


def sample_source_image(source_images, half_size, centre_x, centre_y, beta_x, beta_y):
    """Bilinear interpolation of per-example source images at source-plane positions.

    Args:
        source_images: (B, S, S) surface brightness; rows run along +y and
            columns along +x (docs/design.md §3.2 step 5).
        half_size: (B,) half-side of each source image, arcsec; pixel ``k``
            has its centre at ``centre - half_size + (k + 0.5) 2 half_size / S``,
            so the centres span ``centre +- half_size (1 - 1/S)``.
        centre_x, centre_y: (B,) source-image centre, arcsec, sky frame.
        beta_x, beta_y: (B, H, W) source-plane positions, arcsec.

    Returns:
        (B, H, W) brightness; 0 outside each source image (the image is
        padded by one pixel of zeros, so the edge fades over one pixel).
    """
    source_images = tf.convert_to_tensor(source_images, tf.float32)
    if source_images.shape.rank != 3 or (source_images.shape[1] is not None
                                         and source_images.shape[1] != source_images.shape[2]):
        raise ValueError(f"source_images must have shape (B, S, S), got {source_images.shape}")
    half_size, centre_x, centre_y, beta_x, beta_y = geometry.as_float(
        half_size, centre_x, centre_y, beta_x, beta_y)
    size = tf.shape(source_images)[1]
    batch = tf.shape(source_images)[0]
    size_f = tf.cast(size, tf.float32)
    half = half_size[:, None, None]
    u = (beta_x - centre_x[:, None, None] + half) / (2.0 * half) * size_f + 0.5
    v = (beta_y - centre_y[:, None, None] + half) / (2.0 * half) * size_f + 0.5
    # Indices in the zero-padded image of side S + 2; clipping sends far points to the zero rim.
    u = tf.clip_by_value(u, 0.0, size_f + 1.0)
    v = tf.clip_by_value(v, 0.0, size_f + 1.0)
    j0 = tf.minimum(tf.floor(u), size_f)
    i0 = tf.minimum(tf.floor(v), size_f)
    fu = u - j0
    fv = v - i0
    j0 = tf.cast(j0, tf.int32)
    i0 = tf.cast(i0, tf.int32)
    padded = tf.pad(source_images, [[0, 0], [1, 1], [1, 1]])
    side = size + 2
    flat = tf.reshape(padded, [-1])
    base = (tf.range(batch, dtype=tf.int32) * side * side)[:, None, None] + i0 * side + j0
    top = (1.0 - fu) * tf.gather(flat, base) + fu * tf.gather(flat, base + 1)
    bottom = (1.0 - fu) * tf.gather(flat, base + side) + fu * tf.gather(flat, base + side + 1)
    return (1.0 - fv) * top + fv * bottom


def block_average(fine, oversample):
    """Average ``oversample x oversample`` blocks of sub-pixels.

    Args:
        fine: (B, N, N) sub-pixel values, N divisible by ``oversample``.
        oversample: block side (Python int).

    Returns:
        (B, N / oversample, N / oversample) block means.
    """
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be an integer >= 1, got {oversample}")
    oversample = int(oversample)
    fine = tf.convert_to_tensor(fine)
    if fine.shape.rank != 3:
        raise ValueError(f"fine must have shape (B, N, N), got {fine.shape}")
    for n in fine.shape[1:]:
        if n is not None and n % oversample:
            raise ValueError(f"image side {n} is not divisible by oversample={oversample}")
    if oversample == 1:
        return fine
    shape = tf.shape(fine)
    n = shape[1] // oversample
    blocks = tf.reshape(fine, [shape[0], n, oversample, n, oversample])
    return tf.reduce_mean(blocks, axis=[2, 4])


def crop_center(image, pad_pix):
    """Remove ``pad_pix`` pixels from every side of images.

    Args:
        image: (B, N, N) images.
        pad_pix: pixels to remove per side (Python int, ``0 <= 2 pad_pix < N``).

    Returns:
        (B, N - 2 pad_pix, N - 2 pad_pix) central block.
    """
    if int(pad_pix) != pad_pix or pad_pix < 0:
        raise ValueError(f"pad_pix must be an integer >= 0, got {pad_pix}")
    pad_pix = int(pad_pix)
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"image must have shape (B, N, N), got {image.shape}")
    for n in image.shape[1:]:
        if n is not None and 2 * pad_pix >= n:
            raise ValueError(f"cannot crop {pad_pix} pixels per side from a side of {n}")
    if pad_pix == 0:
        return image
    return image[:, pad_pix:-pad_pix, pad_pix:-pad_pix]
