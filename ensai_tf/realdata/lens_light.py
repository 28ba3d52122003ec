"""How ``ensai predict`` takes the lens light out of an image (docs/design.md §8.4).

The networks were trained on arcs alone, so the lens galaxy's light must go
before an image reaches them. **Two bands** (``ensai predict --bands``, or a
catalogue row with ``band2``) have three paths, :data:`LENS_LIGHT_PATHS`
(``--lens-light``):

``"subtract"`` (the default)
    fit a smooth lens-light model (:mod:`ensai_tf.preprocess.lens_fit`, a
    multi-Gaussian expansion with the arcs masked iteratively) to the red band,
    then to the blue band with the red fit's centre and shape, and give the
    network the blue residual (:func:`subtract_two_bands`). The most accurate
    path at every colour ratio measured (docs/design.md §8.4, "Fitted subtraction");
``"ica"``
    FastICA of the two bands (:func:`unmix_cutout`), the paper's path; it needs
    arcs clearly bluer than the lens;
``"subtract+ica"``
    the fitted subtraction, then ICA of the two residuals.

**One band** has no colour to separate, so its lens light is fitted and
subtracted (:func:`subtract_single_band`) when the image raises the
``lens_light`` quality flag (:mod:`ensai_tf.flags`), the default
``--subtract-lens-light auto``; ``always`` subtracts from every image,
``never`` from none (:data:`SINGLE_BAND_MODES`). Every output row names the
path it took in its ``lens_light_path`` column
(:data:`ensai_tf.tables.LENS_LIGHT_COLUMN`): one of :data:`LENS_LIGHT_PATHS`,
or :data:`NO_LENS_LIGHT_PATH` for a single band left as it was.

Units: positions in arcsec in the frame of the 0.04 arcsec network grid
(docs/design.md §0), fluxes in the image's own unit.
"""

import dataclasses

import numpy as np

from ensai_tf import conventions
from ensai_tf.errors import InputError
from ensai_tf.preprocess import ica, lens_fit
from ensai_tf.preprocess.images import normalise_peak

__all__ = [
    "LENS_LIGHT_PATHS",
    "NETWORK_LENS_LIGHT_PATH",
    "DEFAULT_LENS_LIGHT_PATH",
    "NO_LENS_LIGHT_PATH",
    "SINGLE_BAND_MODES",
    "DEFAULT_SINGLE_BAND_MODE",
    "check_lens_light_path",
    "check_single_band_mode",
    "lens_light_request",
    "FittedArcs",
    "TwoBandArcs",
    "unmix_cutout",
    "subtract_two_bands",
    "separate_arcs",
    "stack_bands",
    "describe_arcs",
    "subtract_single_band",
]

LENS_LIGHT_PATHS = ("subtract", "ica", "subtract+ica")
"""The two-band lens-light paths of ``ensai predict --lens-light`` (module docstring)."""

DEFAULT_LENS_LIGHT_PATH = "subtract"
"""The two-band path taken when none is asked for: the best measured (docs/design.md §8.4)."""

NO_LENS_LIGHT_PATH = "none"
"""``lens_light_path`` of a single-band image predicted as it was given."""

NETWORK_LENS_LIGHT_PATH = "network"
"""``lens_light_path`` of an image predicted, lens light and all, by a network trained on
images with their lens light (``simulate.lens_light``, docs/design.md §4)."""

SINGLE_BAND_MODES = ("auto", "always", "never")
"""``--subtract-lens-light``: subtract a single band's fitted lens light when the image raises
the ``lens_light`` flag, always, or never."""

DEFAULT_SINGLE_BAND_MODE = "auto"
"""The single-band mode taken unless another is asked for."""


def check_lens_light_path(path):
    """The two-band path ``path``, or one line saying which exist.

    Raises:
        InputError: ``path`` is not one of :data:`LENS_LIGHT_PATHS`.

    Example:
        >>> check_lens_light_path("ica")
        'ica'
    """
    return _choice(path, LENS_LIGHT_PATHS, "lens-light path")


def check_single_band_mode(mode):
    """The single-band mode ``mode``, or one line saying which exist.

    Raises:
        InputError: ``mode`` is not one of :data:`SINGLE_BAND_MODES`.

    Example:
        >>> check_single_band_mode("auto")
        'auto'
    """
    return _choice(mode, SINGLE_BAND_MODES, "single-band lens-light mode")


def _choice(value, choices, what):
    """``value`` if it is one of ``choices``, else one line naming ``what`` and the choices."""
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def lens_light_request(two_band, lens_light=None, subtract_lens_light=None, ica_flag=False):
    """The lens-light choice of an ``ensai predict`` request, or one line on a bad combination.

    Args:
        two_band: whether the request gives two bands (``--bands`` or ``--ica``).
        lens_light: ``--lens-light`` as given (None when not given).
        subtract_lens_light: ``--subtract-lens-light`` as given (None when not given).
        ica_flag: whether ``--ica`` was given: it asks for ICA by its name.

    Returns:
        ``(path, None)`` for two bands (the default :data:`DEFAULT_LENS_LIGHT_PATH`,
        ``"ica"`` with ``--ica``), ``(None, mode)`` for single-band images
        (default :data:`DEFAULT_SINGLE_BAND_MODE`).

    Raises:
        InputError: ``--subtract-lens-light`` with two bands, ``--lens-light``
            with one, ``--ica`` with another path, or an unknown choice.

    Example:
        >>> lens_light_request(True), lens_light_request(False)
        (('subtract', None), (None, 'auto'))
    """
    if not two_band:
        if lens_light is not None:
            raise InputError("--lens-light chooses how two bands (--bands BLUE RED) lose their "
                             "lens light; for single-band images use --subtract-lens-light "
                             f"{{{','.join(SINGLE_BAND_MODES)}}}")
        return None, check_single_band_mode(subtract_lens_light or DEFAULT_SINGLE_BAND_MODE)
    if subtract_lens_light is not None:
        raise InputError("--subtract-lens-light is for single-band images; two bands choose "
                         f"their path with --lens-light {{{','.join(LENS_LIGHT_PATHS)}}}")
    if ica_flag and lens_light not in (None, "ica"):
        raise InputError(f"--ica unmixes the two files with ICA; for --lens-light {lens_light} "
                         "give them as --bands BLUE RED")
    return check_lens_light_path(lens_light or ("ica" if ica_flag else
                                                DEFAULT_LENS_LIGHT_PATH)), None


@dataclasses.dataclass(frozen=True)
class FittedArcs:
    """The outcome of :func:`subtract_two_bands`.

    Attributes:
        arc: ``(H, W)`` float32 arc map, sky about 0, arc peak (the maximum of
            the 3x3 median-filtered map) about 1, masked pixels exactly 0.
        residual_blue, residual_red: ``(H, W)`` float64 PSF-matched bands
            minus their fitted lens light, input flux units.
        fit_blue, fit_red: the ``params`` dicts of
            :func:`ensai_tf.preprocess.lens_fit.fit_lens_light`.
        ica: the :class:`~ensai_tf.preprocess.ica.IcaResult` of the residuals,
            or None when ICA was skipped.
    """

    arc: np.ndarray
    residual_blue: np.ndarray
    residual_red: np.ndarray
    fit_blue: dict
    fit_red: dict
    ica: object


@dataclasses.dataclass(frozen=True)
class TwoBandArcs:
    """The network input of a two-band cutout and how it was made (:func:`separate_arcs`).

    Attributes:
        image: ``(npix, npix, 1)`` float32 network input, masked pixels exactly 0
            (``(npix, npix, 2)``, blue and red, for a two-band network, :func:`stack_bands`).
        path: the path taken, one of :data:`LENS_LIGHT_PATHS`, or
            :data:`NETWORK_LENS_LIGHT_PATH` for a two-band network.
        ica: the :class:`~ensai_tf.preprocess.ica.IcaResult` (``"ica"``: of the
            bands; ``"subtract+ica"``: of the residuals), or None.
        fitted: the :class:`FittedArcs` of the subtraction paths, or None.
    """

    image: np.ndarray
    path: str
    ica: object = None
    fitted: object = None


def unmix_cutout(cutout, **kwargs):
    """ICA of a :class:`~ensai_tf.realdata.cutout.TwoBandCutout` (docs/design.md §8.4 step 4).

    Args:
        cutout: :class:`~ensai_tf.realdata.cutout.TwoBandCutout`.
        **kwargs: passed to :func:`ensai_tf.preprocess.ica.unmix_two_bands`.

    Returns:
        ``(image, result)``: the ``(npix, npix, 1)`` float32 network input
        and the :class:`~ensai_tf.preprocess.ica.IcaResult`.
    """
    result = ica.unmix_two_bands(cutout.blue, cutout.red, mask=cutout.mask, name=cutout.name,
                                 **kwargs)
    return ica.to_network_input(result.arc, cutout.blue.shape[0]), result


def subtract_two_bands(blue, red, psf_fwhm=None, centre=(0.0, 0.0), unmix=False, mask=None,
                       model="mge", pixel_scale=conventions.PIXEL_SCALE,
                       name="lens-subtracted two-band lens"):
    """Subtract a fitted lens light from two PSF-matched bands, then optionally unmix.

    The red band (where the lens is brightest against the arcs) is fitted
    first, centre and shape free (:func:`ensai_tf.preprocess.lens_fit.fit_lens_light`);
    the blue band is fitted with that centre and shape held and the red
    fit's arc marks as its starting marks, since at large colour ratios the
    blue lens light is too faint to place (docs/design.md §8.4, "Fitted subtraction").

    Args:
        blue, red: ``(n, n)`` bands on one grid and one PSF, exact zeros masked.
        psf_fwhm: FWHM of their common Gaussian PSF, arcsec (None: the fits
            assume no PSF; the expansion's narrowest Gaussians absorb one).
        centre: ``(x, y)`` guess of the lens centre, arcsec, grid frame.
        unmix: run ICA (:func:`ensai_tf.preprocess.ica.unmix_two_bands`) on
            the two residuals and return its arc component; False (default,
            the better of the two in the lens-light experiment, docs/design.md
            §8.4): the arc map is the blue residual, peak-normalised.
        mask: optional ``(n, n)`` bool, True where masked (cosmic rays, user
            masks), left out of the fits and of ICA.
        model: the lens-light model, ``"mge"`` or ``"sersic"``.
        pixel_scale: pixel side, arcsec.
        name: what to call the residuals in messages.

    Returns:
        :class:`FittedArcs`.

    Raises:
        InputError: a fit or ICA that cannot run (too few unmasked pixels near
            the lens, no positive residual), naming ``name``.
    """
    blue = np.asarray(blue, np.float64)
    red = np.asarray(red, np.float64)
    model_red, fit_red = lens_fit.fit_lens_light(red, pixel_scale, centre_guess=centre,
                                                 psf_fwhm=psf_fwhm, model=model, mask=mask)
    model_blue, fit_blue = lens_fit.fit_lens_light(blue, pixel_scale, psf_fwhm=psf_fwhm,
                                                   model=model, mask=mask, shape=fit_red,
                                                   arc_mask=fit_red["arc_mask"])
    keep = np.ones(blue.shape, bool) if mask is None else ~np.asarray(mask, bool)
    res_blue = np.where((blue != 0) & keep, blue - model_blue, 0.0)
    res_red = np.where((red != 0) & keep, red - model_red, 0.0)
    result = None
    if unmix:
        centre_pix = (fit_red["x0"] / pixel_scale + (blue.shape[1] - 1) / 2.0,
                      fit_red["y0"] / pixel_scale + (blue.shape[0] - 1) / 2.0)
        result = ica.unmix_two_bands(res_blue, res_red, mask=mask, centre_pix=centre_pix,
                                     name=name)
        arc = result.arc
    else:
        arc = normalise_peak(res_blue, f"{name}: blue residual").astype(np.float32)
    return FittedArcs(arc=arc, residual_blue=res_blue, residual_red=res_red, fit_blue=fit_blue,
                      fit_red=fit_red, ica=result)


def separate_arcs(cutout, path=DEFAULT_LENS_LIGHT_PATH, psf_fwhm=None):
    """The network input of a two-band cutout by one of :data:`LENS_LIGHT_PATHS`.

    Args:
        cutout: :class:`~ensai_tf.realdata.cutout.TwoBandCutout` (PSF-matched
            when PSF widths were given; the lens within half a pixel of the
            grid origin).
        path: ``"subtract"``, ``"ica"`` or ``"subtract+ica"``.
        psf_fwhm: ``(blue, red)`` PSF FWHMs the cutout was matched with,
            arcsec, or None; the fits assume the broader one.

    Returns:
        :class:`TwoBandArcs`.

    Raises:
        InputError: an unknown path, or a fit or ICA that cannot run (naming
            the files; a failed fit suggests ``--lens-light ica``).
    """
    check_lens_light_path(path)
    npix = cutout.blue.shape[0]
    if path == "ica":
        image, result = unmix_cutout(cutout)
        return TwoBandArcs(image=image, path=path, ica=result)
    fwhm = None if psf_fwhm is None else float(max(psf_fwhm))
    try:
        fitted = subtract_two_bands(cutout.blue, cutout.red, fwhm, mask=cutout.mask,
                                    unmix=path == "subtract+ica", name=cutout.name)
    except InputError as err:
        text = str(err) if str(err).startswith(cutout.name) else f"{cutout.name}: {err}"
        raise InputError(f"{text}; --lens-light ica does without the lens-light fit") from None
    return TwoBandArcs(image=ica.to_network_input(fitted.arc, npix), path=path, ica=fitted.ica,
                       fitted=fitted)


def stack_bands(cutout):
    """The input of a network that reads both bands (docs/design.md §5.10).

    The PSF-matched cutout's blue and red bands as channels, each divided by
    its own peak (:func:`~ensai_tf.preprocess.images.normalise_peak`, as the
    network's training images were, docs/design.md §5.7); nothing is fitted or unmixed.

    Args:
        cutout: :class:`~ensai_tf.realdata.cutout.TwoBandCutout`.

    Returns:
        :class:`TwoBandArcs` with a ``(npix, npix, 2)`` float32 image (blue, red)
        and path :data:`NETWORK_LENS_LIGHT_PATH`.

    Raises:
        InputError: a band that is all masked, constant or without signal.
    """
    bands = [normalise_peak(band, f"{cutout.name} ({colour} band)")
             for band, colour in ((cutout.blue, "blue"), (cutout.red, "red"))]
    return TwoBandArcs(image=np.stack(bands, axis=-1).astype(np.float32),
                       path=NETWORK_LENS_LIGHT_PATH)


def describe_arcs(arcs):
    """One line on how a :class:`TwoBandArcs` was made, for ``ensai predict``'s stderr.

    Example:
        >>> fit = {"x0": 0.01, "y0": -0.02, "q": 0.8, "arc_mask": np.zeros((2, 2), bool)}
        >>> fitted = FittedArcs(None, None, None, {}, fit, None)
        >>> describe_arcs(TwoBandArcs(image=None, path="subtract", fitted=fitted))[:62]
        'lens light fitted and subtracted (red-band fit: centre (0.01, '
    """
    if arcs.path == NETWORK_LENS_LIGHT_PATH:
        return "the two-band network reads both PSF-matched bands, each scaled to its own peak"
    parts = []
    if arcs.fitted is not None:
        fit = arcs.fitted.fit_red
        parts.append(f"lens light fitted and subtracted (red-band fit: centre ({fit['x0']:.2f}, "
                     f"{fit['y0']:.2f}) arcsec, q {fit['q']:.2f}, "
                     f"{int(np.sum(fit['arc_mask']))} arc pixels left out)")
    if arcs.ica is not None:
        of = "the residuals" if arcs.fitted is not None else "the bands"
        parts.append(f"ICA of {of}: arc component chosen by {arcs.ica.rule} (blue/red weights "
                     f"{np.round(arcs.ica.colour, 3).tolist()})")
    else:
        parts.append("the network reads the blue residual")
    return "; ".join(parts)


def subtract_single_band(image, centre_guess=(0.0, 0.0), pixel_scale=conventions.PIXEL_SCALE,
                         name="image", **kwargs):
    """One band minus its fitted lens light, prepared again as a network input.

    The lens light is fitted as in the two-band path
    (:func:`ensai_tf.preprocess.lens_fit.fit_lens_light`: a multi-Gaussian
    expansion, the arcs masked iteratively, no PSF assumed) and subtracted;
    the residual is normalised to an arc peak of 1 like any image
    (:func:`ensai_tf.preprocess.images.normalise_peak`).

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` prepared image (0.04 arcsec
            pixels, masked pixels exactly 0, any flux unit).
        centre_guess: ``(x, y)`` of the lens, arcsec from the image centre:
            the fit starts at the brightest smoothed pixel within 0.3 arcsec
            of it. ``ensai predict`` cuts the field around the lens position
            when one is given, so the guess is the field centre.
        pixel_scale: pixel side, arcsec.
        name: what to call the image in messages.
        **kwargs: more arguments of :func:`ensai_tf.preprocess.lens_fit.fit_lens_light`.

    Returns:
        ``(residual, params)``: the ``(H, W, 1)`` float32 network input
        (masked pixels still exactly 0) and the fit's ``params`` dict.

    Raises:
        InputError: the fit cannot run (too few unmasked pixels near the
            lens) or leaves no positive residual, naming ``name``.

    Example:
        >>> x, y = lens_fit.image_coordinates((96, 96), 0.04)
        >>> ring = np.exp(-0.5 * ((np.hypot(x, y) - 1.0) / 0.05) ** 2)
        >>> galaxy = lens_fit.sersic_image(x, y, 1.0, 2.0, 0.3, 0.9, 0.0, 0.0, 0.0, core=0.02)
        >>> residual, params = subtract_single_band(ring + 3 * galaxy)
        >>> bool(abs(residual[48, 48, 0]) < 0.1), residual.shape
        (True, (96, 96, 1))
    """
    data = np.asarray(image, np.float64)
    data = data[..., 0] if data.ndim == 3 else data
    try:
        model_image, params = lens_fit.fit_lens_light(data, pixel_scale,
                                                      centre_guess=centre_guess, **kwargs)
        residual = normalise_peak(np.where(data != 0, data - model_image, 0.0),
                                  f"{name} minus its fitted lens light")
    except InputError as err:
        raise InputError(str(err) if str(err).startswith(name) else f"{name}: {err}") from None
    return residual.astype(np.float32)[..., None], params
