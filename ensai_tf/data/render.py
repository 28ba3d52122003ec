"""Ray tracing of the noise-free arcs and their flux bookkeeping (docs/design.md §3.4 [R]).

The lens equation is solved on a grid oversampled ``simulate.oversample``
times inside the output field, the source image is sampled bilinearly and
the result block-averaged to the output pixels. [R] The ring between the
output field and the ``field_factor`` (1.6x) field exists only for the
containment test, so it is traced at one ray per output pixel; each
region's flux is its point-sampled sum times its own sample area, so the
total (and the containment fraction) stays a flux-conserving estimate.
"""

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.lensing import light, raytrace

__all__ = [
    "ray_geometry",
    "render_arcs",
    "render_sie_sersic",
]


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
