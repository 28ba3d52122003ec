"""Two bands cut, aligned on the sky, resampled, PSF-matched and masked (docs/design.md §8.4).

:func:`cut_two_bands` cuts both bands around one sky position or blue pixel
with ``astropy.nddata.Cutout2D`` (``mode="partial"``: the part outside the
image is filled with 0, i.e. masked). The red cutout is centred on the
**same sky point** as the blue one (sub-pixel residuals are removed with a
bilinear shift), and the two grids must agree in scale and orientation
(their pixel-to-sky Jacobians within 1%), because the unmixing compares the
bands pixel by pixel. Both are then resampled flux-conservingly to 0.04
arcsec pixels, optionally cleaned of cosmic rays and PSF-matched, cropped to
the network grid and masked.
"""

import dataclasses
import math

import numpy as np
from astropy.nddata import Cutout2D
from astropy.nddata.utils import NoOverlapError
from scipy import ndimage

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess.images import fit_to_grid, resample_flux_conserving
from ensai_tf.realdata.cosmics import cosmic_ray_centres, detect_cosmic_rays
from ensai_tf.realdata.masks import MASK_RADIUS_ARCSEC, circular_mask
from ensai_tf.realdata.psf import match_psfs
from ensai_tf.realdata.sky import Frame, pixel_to_sky_jacobian, sky_to_pixel

__all__ = ["TwoBandCutout", "cut_two_bands"]

_ALIGN_RTOL = 0.01
_MARGIN_PIX = 8


@dataclasses.dataclass(frozen=True)
class TwoBandCutout:
    """Both bands on the network's grid, ready for ICA.

    Attributes:
        blue, red: ``(npix, npix)`` float64 images, 0.04 arcsec pixels,
            PSF-matched, file units; 0 outside the files.
        mask: ``(npix, npix)`` bool, True where masked (outside the files,
            cosmic rays, user masks).
        cosmic_mask: ``(npix, npix)`` bool, the cosmic-ray discs alone.
        frame: :class:`~ensai_tf.realdata.sky.Frame` of the grid.
        name: ``"BLUE + RED"`` file names, for messages.
    """

    blue: np.ndarray
    red: np.ndarray
    mask: np.ndarray
    cosmic_mask: np.ndarray
    frame: Frame
    name: str


def _cut(band, centre, size):
    """Cutout2D of a band around a file pixel; returns (data, centre of the cutout)."""
    try:
        cut = Cutout2D(band.data, position=centre, size=(size[1], size[0]), mode="partial",
                       fill_value=0.0, copy=True)
    except NoOverlapError:
        raise InputError(f"{band.path}: the cutout around pixel {centre} does not overlap the "
                         f"image ({band.data.shape[1]} x {band.data.shape[0]} pixels)") from None
    n_y, n_x = cut.data.shape
    # file pixel of cutout pixel (0, 0); origin_original is clipped to the image in
    # mode="partial", the input positions are not
    x0, y0 = (cut.input_position_original[i] - cut.input_position_cutout[i] for i in range(2))
    return np.asarray(cut.data, dtype=np.float64), (x0 + (n_x - 1) / 2.0, y0 + (n_y - 1) / 2.0)


def _cut_side(field, scale):
    """Cutout side, input pixels, covering ``field`` arcsec, whose resampled side is even.

    An even side on the 0.04 arcsec grid keeps the grid origin on the cutout
    centre after the central crop to the (even) network side, so the lens
    position lands within half a pixel of the grid origin.
    """
    side = int(math.ceil(field / scale - 1e-6))
    while int(round(side * scale / conventions.PIXEL_SCALE)) % 2:
        side += 1
    return side


def _check_inside(band, col, row, what):
    """Refuse a file pixel outside the band's image, naming ``what`` it is."""
    n_y, n_x = band.data.shape
    if not (-0.5 <= col <= n_x - 0.5 and -0.5 <= row <= n_y - 0.5):
        raise InputError(f"{band.path}: {what} falls outside the image (pixel ({col:.1f}, "
                         f"{row:.1f}); the image is {n_x} x {n_y} pixels)")


def _subpixel_shift(data, shift_col, shift_row):
    """Bilinear shift by (shift_col, shift_row) pixels; pixels touching masks become masked."""
    if abs(shift_col) < 1e-3 and abs(shift_row) < 1e-3:
        return data
    keep = (data != 0).astype(np.float64)
    moved = ndimage.shift(data, (shift_row, shift_col), order=1, mode="constant", cval=0.0)
    moved_keep = ndimage.shift(keep, (shift_row, shift_col), order=1, mode="constant", cval=0.0)
    return np.where(moved_keep > 1.0 - 1e-6, moved, 0.0)


def _resample(data, scales):
    """The cutout on 0.04 arcsec pixels (flux-conserving; unchanged when already there)."""
    if np.allclose(scales, conventions.PIXEL_SCALE, rtol=1e-6, atol=0):
        return data
    out, _ = resample_flux_conserving(data, scales)
    return out


def _align(blue, red, centre_blue):
    """Red file pixel that sees the sky point of blue pixel ``centre_blue``."""
    name = f"{blue.path} and {red.path}"
    if blue.wcs is None or red.wcs is None:
        if blue.data.shape != red.data.shape:
            missing = blue.path if blue.wcs is None else red.path
            raise InputError(f"{name} cannot be aligned: {missing} has no celestial WCS and the "
                             f"shapes differ ({blue.data.shape} vs {red.data.shape}); give both "
                             "on one pixel grid or with WCS headers")
        if not np.allclose(blue.scales, red.scales, rtol=_ALIGN_RTOL):
            raise InputError(f"{name} cannot be aligned: pixel scales {blue.scales} and "
                             f"{red.scales} arcsec differ")
        return centre_blue
    sky = blue.wcs.pixel_to_world(*centre_blue)
    col, row = (float(v) for v in red.wcs.world_to_pixel(sky))
    _check_inside(red, col, row, "the blue cutout's centre")
    jac_b = pixel_to_sky_jacobian(blue.wcs, *centre_blue)
    jac_r = pixel_to_sky_jacobian(red.wcs, col, row)
    diff = np.abs(jac_b - jac_r).max() / np.abs(jac_b).max()
    if diff > _ALIGN_RTOL:
        raise InputError(f"{name} cannot be aligned: their pixel grids differ in scale or "
                         f"orientation by {100 * diff:.1f}% (pixel-to-sky Jacobians "
                         f"{np.round(jac_b, 4).tolist()} vs {np.round(jac_r, 4).tolist()} "
                         "arcsec/pixel); resample one band onto the other's grid first")
    return col, row


def _mask_centres(frame, band, masks):
    """Grid (x, y) arcsec and radii of user masks: pixel pairs, sky pairs, regions."""
    centres, radii = [], []
    for item in masks:
        if item.get("frame") == "sky":
            col, row = sky_to_pixel(band, item["ra_deg"], item["dec_deg"])
            r = item.get("radius_arcsec")
        else:
            col, row = item["col"], item["row"]
            r_pix = item.get("radius_pix")
            r = None if r_pix is None else r_pix * float(np.mean(frame.scales))
        centres.append(frame.to_grid(col, row))
        radii.append(MASK_RADIUS_ARCSEC if r is None else r)
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2), np.asarray(radii)


def _lens_position(blue, position, sky):
    """Blue file pixel ``(col, row)`` of the lens: from ``sky``, ``position`` or the centre."""
    if position is not None and sky is not None:
        raise InputError("give the lens position either as a sky position or as pixels, not both")
    if sky is not None:
        position = sky_to_pixel(blue, *sky)
        _check_inside(blue, *position, f"the sky position (RA {sky[0]}, Dec {sky[1]}) deg")
    elif position is not None:
        position = (float(position[0]), float(position[1]))
        _check_inside(blue, *position, "the lens position")
    else:
        position = ((blue.data.shape[1] - 1) / 2.0, (blue.data.shape[0] - 1) / 2.0)
    return position


def _aligned_cutouts(blue, red, position, npix, name):
    """Both bands cut around one sky point and resampled to 0.04 arcsec pixels.

    Returns ``(blue_res, red_res, centre)`` with ``centre`` the blue file
    pixel of the cutout centre.
    """
    field = (npix + 2 * _MARGIN_PIX) * conventions.PIXEL_SCALE
    size = tuple(_cut_side(field, s) for s in blue.scales)
    blue_cut, centre = _cut(blue, position, size)
    red_centre = _align(blue, red, centre)
    red_size = tuple(_cut_side(field, s) for s in red.scales)
    red_cut, red_cut_centre = _cut(red, red_centre, red_size)
    red_cut = _subpixel_shift(red_cut, red_cut_centre[0] - red_centre[0],
                              red_cut_centre[1] - red_centre[1])
    blue_res, red_res = _resample(blue_cut, blue.scales), _resample(red_cut, red.scales)
    if blue_res.shape != red_res.shape:
        raise InputError(f"{name} cannot be aligned: resampled cutouts of shapes "
                         f"{blue_res.shape} and {red_res.shape}")
    return blue_res, red_res, centre


def cut_two_bands(blue, red, position=None, sky=None, masks=(), psf_fwhm=None,
                  cosmic_rays=None, npix=conventions.NPIX):
    """Cut, align, resample, PSF-match and mask two bands (steps 2-6 of :mod:`ensai_tf.realdata`).

    Args:
        blue, red: :class:`~ensai_tf.realdata.sky.Band` of the bluer and the
            redder filter.
        position: ``(col, row)`` 0-based pixel of the lens in the **blue**
            file; default its centre unless ``sky`` is given.
        sky: ``(ra_deg, dec_deg)`` ICRS lens position (needs the blue WCS).
        masks: iterable of mask dicts as
            :func:`~ensai_tf.realdata.masks.parse_ds9_regions` returns
            (``{"frame": "image", "col", "row"}`` in blue file pixels, or
            ``{"frame": "sky", "ra_deg", "dec_deg"}``), each a 0.2 arcsec disc
            unless it gives its own radius.
        psf_fwhm: ``(fwhm_blue, fwhm_red)`` arcsec for Gaussian PSF matching,
            or None to skip it.
        cosmic_rays: None (off) or a
            :func:`~ensai_tf.realdata.cosmics.detect_cosmic_rays` method name;
            each detected group is masked with a 0.2 arcsec disc.
        npix: output side, pixels.

    Returns:
        :class:`TwoBandCutout`.

    Raises:
        InputError: a position outside an image, bands that cannot be
            aligned, or a sky position without a WCS (each naming the file).
    """
    name = f"{blue.path} + {red.path}"
    position = _lens_position(blue, position, sky)
    blue_res, red_res, centre = _aligned_cutouts(blue, red, position, npix, name)
    keep = (blue_res != 0) & (red_res != 0)
    cosmic = np.zeros(blue_res.shape, dtype=bool)
    if cosmic_rays is not None:
        cosmic = (detect_cosmic_rays(blue_res, ~keep, cosmic_rays)
                  | detect_cosmic_rays(red_res, ~keep, cosmic_rays))
    if psf_fwhm is not None:
        blue_res, red_res = match_psfs(blue_res, red_res, psf_fwhm[0], psf_fwhm[1],
                                       keep=keep & ~cosmic)
    m_y, m_x = blue_res.shape
    blue_grid, (start_x, start_y) = fit_to_grid(blue_res, npix)
    red_grid, _ = fit_to_grid(red_res, npix)
    offset = ((start_x + (npix - 1) / 2.0 - (m_x - 1) / 2.0) * conventions.PIXEL_SCALE,
              (start_y + (npix - 1) / 2.0 - (m_y - 1) / 2.0) * conventions.PIXEL_SCALE)
    frame = Frame(path=blue.path, centre=centre, offset=offset, scales=blue.scales,
                  wcs=blue.wcs)
    cosmic_grid, _ = fit_to_grid(cosmic, npix)
    cosmic_mask = circular_mask(npix, (np.asarray(cosmic_ray_centres(cosmic_grid))
                                       - (npix - 1) / 2.0) * conventions.PIXEL_SCALE)
    centres, radii = _mask_centres(frame, blue, masks)
    user_mask = circular_mask(npix, centres, radii)
    mask = (blue_grid == 0) | (red_grid == 0) | cosmic_mask | user_mask
    return TwoBandCutout(blue=np.where(mask, 0.0, blue_grid), red=np.where(mask, 0.0, red_grid),
                         mask=mask, cosmic_mask=cosmic_mask, frame=frame, name=name)
