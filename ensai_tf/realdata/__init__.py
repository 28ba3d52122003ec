"""Real two-band images: cutouts, masks, PSF matching, lens-light removal (docs/design.md §8.4).

The path from two FITS files of a lens candidate to one network input:

1. :func:`~ensai_tf.realdata.sky.read_band` reads each file's image
   HDU (the first with 2-D data, or the one named), its celestial WCS and its
   pixel scale, with :func:`ensai_tf.preprocess.reading.read_fits`;
2. :func:`~ensai_tf.realdata.cutout.cut_two_bands` cuts both bands
   around one sky position or blue pixel with ``astropy.nddata.Cutout2D``
   (``mode="partial"``: the part outside the image is filled with 0, i.e.
   masked). The red cutout is centred on the **same sky point** as the blue
   one (sub-pixel residuals are removed with a bilinear shift), and the two
   grids must agree in scale and orientation (their pixel-to-sky Jacobians
   within 1%), because the unmixing compares the bands pixel by pixel;
3. both are resampled flux-conservingly to 0.04 arcsec pixels
   (:func:`ensai_tf.preprocess.images.resample_flux_conserving`);
4. optional cosmic-ray detection
   (:func:`~ensai_tf.realdata.cosmics.detect_cosmic_rays`): L.A.Cosmic from
   ``astroscrappy`` when it is installed, else a simple Laplacian sigma-clip
   detector (documented there); each detection becomes a 0.2 arcsec disc, like the paper's manual
   masks (docs/design.md §8.4 step 2);
5. the sharper band is convolved with the Gaussian that brings its PSF to
   the broader one's (:func:`~ensai_tf.realdata.psf.match_psfs`),
   ignoring masked pixels;
6. the central ``192 x 192`` pixels are kept and user masks (0.2 arcsec discs
   at listed positions, docs/design.md §8.4 step 2, or circles from a DS9
   region file, :mod:`ensai_tf.realdata.masks`) are added;
7. the lens light goes by one of three paths
   (:func:`~ensai_tf.realdata.lens_light.separate_arcs`, ``--lens-light``):
   a fitted smooth model subtracted from each band, the network reading the
   blue residual (``subtract``, the default); FastICA of the two bands
   (``ica``, :func:`~ensai_tf.realdata.lens_light.unmix_cutout`); or both
   (``subtract+ica``), giving the ``(192, 192, 1)`` "masked = 0" network
   input.

The output grid has x along the blue file's columns and y along its rows
(docs/design.md §0, no flips); :class:`~ensai_tf.realdata.sky.Frame` maps it
back to the file's pixels and, through the WCS Jacobian, turns the predicted
ellipticity angle into a position angle **east of north** (rotation and
flipped axes included). :func:`~ensai_tf.realdata.pipeline.predict_two_band`
is the whole path (``ensai predict --bands``).

This package re-exports the public names of its modules, so that
``realdata.read_band`` etc. work after ``from ensai_tf import realdata``.
"""

from ensai_tf.realdata.cosmics import cosmic_ray_centres, detect_cosmic_rays
from ensai_tf.realdata.cutout import TwoBandCutout, cut_two_bands
from ensai_tf.realdata.masks import (MASK_RADIUS_ARCSEC, circular_mask, parse_ds9_regions,
                                     parse_mask_specs)
from ensai_tf.realdata.lens_light import (LENS_LIGHT_PATHS, SINGLE_BAND_MODES, TwoBandArcs,
                                          lens_light_request, separate_arcs,
                                          subtract_single_band, subtract_two_bands, unmix_cutout)
from ensai_tf.realdata.pipeline import (band_files, plot_diagnostic, predict_two_band,
                                        prepare_two_band)
from ensai_tf.realdata.psf import (FWHM_PER_SIGMA, gaussian_sigma_pix, masked_gaussian_blur,
                                   match_psfs)
from ensai_tf.realdata.sky import (Band, Frame, ellipticity_from_sky, pixel_to_sky_jacobian,
                                   position_angle_east_of_north, read_band, sky_to_pixel)

__all__ = [
    "MASK_RADIUS_ARCSEC",
    "FWHM_PER_SIGMA",
    "Band",
    "Frame",
    "TwoBandCutout",
    "read_band",
    "pixel_to_sky_jacobian",
    "position_angle_east_of_north",
    "ellipticity_from_sky",
    "sky_to_pixel",
    "circular_mask",
    "parse_ds9_regions",
    "parse_mask_specs",
    "detect_cosmic_rays",
    "cosmic_ray_centres",
    "gaussian_sigma_pix",
    "masked_gaussian_blur",
    "match_psfs",
    "cut_two_bands",
    "unmix_cutout",
    "LENS_LIGHT_PATHS",
    "SINGLE_BAND_MODES",
    "TwoBandArcs",
    "lens_light_request",
    "separate_arcs",
    "subtract_two_bands",
    "subtract_single_band",
    "plot_diagnostic",
    "band_files",
    "prepare_two_band",
    "predict_two_band",
]
