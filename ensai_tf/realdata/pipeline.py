"""Two FITS bands to one prediction: ``ensai predict --bands`` (docs/design.md §8.4).

:func:`predict_two_band` reads both bands, cuts and masks them
(:func:`~ensai_tf.realdata.cutout.cut_two_bands`), takes the lens light out
by the chosen path (:func:`ensai_tf.realdata.lens_light.separate_arcs`:
fitted subtraction by default, ICA, or both), runs the network, and writes
one row with q, the position angle east of north, the lens centre in file
pixels and RA/Dec, and the path taken; :func:`plot_diagnostic` draws the
optional diagnostic figure.
"""

import math
import pathlib
import sys
import time

import numpy as np

from ensai_tf import conventions, plotting
from ensai_tf.errors import InputError
from ensai_tf.inference import (input_bands, load_calibration, load_predictor, predict_images,
                                uncertainty_columns)
from ensai_tf.lensing import caustics
from ensai_tf.preprocess.images import PreparedImage
from ensai_tf.uncertainty import head_layout
from ensai_tf.realdata.cutout import cut_two_bands
from ensai_tf.realdata.lens_light import (DEFAULT_LENS_LIGHT_PATH, NETWORK_LENS_LIGHT_PATH,
                                          TwoBandArcs, check_lens_light_path, describe_arcs,
                                          separate_arcs, stack_bands)
from ensai_tf.realdata.masks import parse_mask_specs
from ensai_tf.realdata.sky import (Band, pixel_to_sky_jacobian, position_angle_east_of_north,
                                   read_band)
from ensai_tf.tables import (LENS_LIGHT_COLUMN, PA_FRAME_IMAGE, PA_FRAME_SKY, check_writable,
                             output_columns, output_format, write_table)

__all__ = ["plot_diagnostic", "prediction_summary", "cutout_row", "band_files",
           "two_band_path", "prepare_two_band", "predict_two_band"]


def prediction_summary(row):
    """One short line of a prediction row for a plot title: values with their 68% intervals.

    Args:
        row: a row dict of ``ensai predict`` (five parameters, ``q``, ``pa_deg``;
            ``<name>_lo68``/``_hi68`` when the model gives intervals).

    Returns:
        str, e.g. ``"θE 1.21 [1.19, 1.24]″ · q 0.86 · PA 31°"``.

    Example:
        >>> prediction_summary({"theta_e": 1.2, "q": 0.9, "pa_deg": 30.0, "x_l": 0.0, "y_l": 0.1})
        'θE 1.20″ · q 0.90 · PA 30°'
    """
    def value(name, fmt):
        text = format(row[name], fmt)
        if row.get(f"{name}_lo68") is not None:
            text += f" [{format(row[f'{name}_lo68'], fmt)}, {format(row[f'{name}_hi68'], fmt)}]"
        return text

    return f"θE {value('theta_e', '.2f')}″ · q {row['q']:.2f} · PA {row['pa_deg']:.0f}°"


def _panels(cutout, arcs):
    """Images and titles of the diagnostic panels before the masks and the curve."""
    panels = [(cutout.blue, "blue band"), (cutout.red, "red band")]
    fitted = getattr(arcs, "fitted", None)
    result = arcs.ica if isinstance(arcs, TwoBandArcs) else arcs
    if fitted is not None:
        # the fitted model is the band minus its residual wherever the band is not masked
        model = np.where(cutout.blue != 0, cutout.blue - fitted.residual_blue, 0.0)
        panels += [(model, "fitted lens light (blue band)"),
                   (fitted.residual_blue, "blue band minus the fitted lens light")]
    if result is not None:
        of = "of the residuals" if fitted is not None else ""
        panels += [(result.arc, f"ICA arc component {of}".strip()),
                   (result.other, f"ICA other component {of}".strip())]
    return panels


def plot_diagnostic(cutout, result, params, path, dpi=100, summary=None):
    """Diagnostic PNG: both bands, what took the lens light out, the masks, and the
    predicted critical curve on the network input.

    Args:
        cutout: :class:`~ensai_tf.realdata.cutout.TwoBandCutout`.
        result: the :class:`~ensai_tf.realdata.lens_light.TwoBandArcs` of the
            path taken (the fitted lens light and the residual for the
            subtraction paths, the two ICA components for the ICA paths), or
            an :class:`~ensai_tf.preprocess.ica.IcaResult`.
        params: ``(5,)`` predicted parameters (arcsec, -, -, arcsec,
            arcsec), or None for no curve.
        path: output PNG path.
        dpi: resolution, dots per inch.
        summary: text of the predicted values for the last panel's title
            (:func:`prediction_summary`), or None.

    Returns:
        The path written, as a str.
    """
    panels = _panels(cutout, result)
    arc = result.image[..., 0] if isinstance(result, TwoBandArcs) else result.arc
    panels += [(cutout.mask.astype(float), "masks (red: cosmic rays + user)"),
               (arc, "network input, predicted critical curve"
                + (f"\n{summary}" if summary else ""))]
    curves = [None] * len(panels)
    if params is not None:
        curves[-1] = {"critical": _critical_curve(params)}
    masks = [np.zeros_like(cutout.mask)] * (len(panels) - 2) + [cutout.mask, cutout.mask]
    return plotting.contact_sheet(np.stack([p for p, _ in panels]), path,
                                  titles=[t for _, t in panels], curves=curves, ncols=3,
                                  masks=np.stack(masks), panel_inches=3.0, dpi=dpi)


def _critical_curve(params):
    """(K, 2) arcsec tangential critical curve of predicted parameters."""
    p = np.asarray(params, dtype=np.float32).reshape(-1)
    curve = caustics.tangential_critical_curve(p[0:1], p[1:2], p[2:3], p[3:4], p[4:5], num=200)
    return np.asarray(curve)[0]


def cutout_row(cutout, params, label, lens_light_path=DEFAULT_LENS_LIGHT_PATH):
    """One output row (:data:`ensai_tf.tables.OUTPUT_COLUMNS`) with q and PA east of north.

    Args:
        cutout: the :class:`~ensai_tf.realdata.cutout.TwoBandCutout` predicted.
        params: ``(5,)`` predicted parameters (arcsec, -, -, arcsec, arcsec).
        label: the row's ``file``.
        lens_light_path: the path that took the lens light out
            (:data:`ensai_tf.realdata.lens_light.LENS_LIGHT_PATHS`).

    Returns:
        dict: ``file``, ``index`` (0), the five parameters, ``q``, ``pa_deg``
        (degrees east of north with a WCS, else image frame; ``pa_frame``
        says which), the lens centre ``x_pix``/``y_pix`` in blue-file pixels,
        ``ra_deg``/``dec_deg`` (degrees, None without a WCS) and
        ``lens_light_path``.
    """
    P = conventions.Param
    p = np.asarray(params, dtype=np.float64)
    q, _ = conventions.q_phi_from_ellipticity(p[P.E_X], p[P.E_Y])
    frame = cutout.frame
    col, row = frame.to_file_pixel(p[P.X_L], p[P.Y_L])
    row_out = {"file": label, "index": 0}
    row_out.update({n: float(v) for n, v in zip(conventions.PARAM_NAMES, p)})
    if frame.wcs is None:
        pa = float(conventions.mass_major_axis_angle(p[P.E_X], p[P.E_Y]))
        pa_frame, ra, dec = PA_FRAME_IMAGE, None, None
    else:
        jac = pixel_to_sky_jacobian(frame.wcs, float(col), float(row))
        pa = float(position_angle_east_of_north(p[P.E_X], p[P.E_Y], jac, frame.scales))
        pa_frame = PA_FRAME_SKY
        sky = frame.wcs.pixel_to_world(float(col), float(row))
        ra, dec = float(sky.icrs.ra.deg), float(sky.icrs.dec.deg)
    row_out.update({"q": float(q), "pa_deg": pa, "pa_frame": pa_frame, "x_pix": float(col),
                    "y_pix": float(row), "ra_deg": ra, "dec_deg": dec,
                    LENS_LIGHT_COLUMN: lens_light_path})
    return row_out


def band_files(bands=None, files=(), ica_flag=False):
    """The (blue, red) pair of ``ensai predict --bands BLUE RED`` or ``--ica FILES``.

    Args:
        bands: ``[blue, red]`` from ``--bands``, or None.
        files: the positional image files.
        ica_flag: whether ``--ica`` was given (the positional files are then
            the two bands, bluer first).

    Returns:
        ``(blue, red)`` paths, or None when neither option asks for ICA.

    Raises:
        InputError: ``--ica`` without exactly two files, or ``--bands`` with
            positional files as well.

    Example:
        >>> band_files(files=["g.fits", "i.fits"], ica_flag=True)
        ('g.fits', 'i.fits')
    """
    files = list(files or ())
    if bands:
        if files:
            raise InputError(f"--bands takes the two band files itself; also got {files}")
        return str(bands[0]), str(bands[1])
    if not ica_flag:
        return None
    if len(files) != 2:
        raise InputError(f"--ica needs two bands (BLUE.fits RED.fits, bluer first); got "
                         f"{len(files)} file{'s' if len(files) != 1 else ''}: "
                         f"{', '.join(files) or 'none'}")
    return files[0], files[1]


def _check_request(ra, dec, x, y, output, plot):
    """Refuse a half-given or doubly-given lens position and unwritable outputs, before any work."""
    if (ra is None) != (dec is None) or (x is None) != (y is None):
        raise InputError("give both --ra and --dec, or both --x and --y")
    if ra is not None and x is not None:
        raise InputError("give the lens position as --ra/--dec or as --x/--y, not both")
    for name, value, lo, hi, unit in (("--ra", ra, 0.0, 360.0, "degrees"),
                                      ("--dec", dec, -90.0, 90.0, "degrees"),
                                      ("--x", x, -1e6, 1e6, "pixels"),
                                      ("--y", y, -1e6, 1e6, "pixels")):
        if value is not None and not (math.isfinite(value) and lo <= value <= hi):
            raise InputError(f"{name} {value:.6g} is out of range; give a finite value from "
                             f"{lo:g} to {hi:g} {unit}")
    check_writable(output)
    output_format(output)
    if plot is not None and not pathlib.Path(plot).parent.is_dir():
        raise InputError(f"plot {str(plot)!r}: folder {str(pathlib.Path(plot).parent)!r} "
                         "does not exist")


def two_band_path(lens_light, bands):
    """The lens-light path of a two-band request for a model that reads ``bands`` bands.

    A network trained on both bands (docs/design.md §5.10) reads them itself
    (:data:`~ensai_tf.realdata.lens_light.NETWORK_LENS_LIGHT_PATH`); a one-band
    network gets ``lens_light``, by default
    :data:`~ensai_tf.realdata.lens_light.DEFAULT_LENS_LIGHT_PATH`.

    Raises:
        InputError: a path asked of a two-band network, or an unknown path.

    Example:
        >>> two_band_path(None, 2), two_band_path(None, 1), two_band_path("ica", 1)
        ('network', 'subtract', 'ica')
    """
    if bands == 2:
        if lens_light not in (None, NETWORK_LENS_LIGHT_PATH):
            raise InputError(f"this model reads both bands itself (it was trained on two bands); "
                             f"--lens-light {lens_light} is for one-band models")
        return NETWORK_LENS_LIGHT_PATH
    return check_lens_light_path(lens_light or DEFAULT_LENS_LIGHT_PATH)


def prepare_two_band(blue, red, label=None, position=None, sky=None, masks=(), psf_fwhm=None,
                     cosmic_rays=None, npix=conventions.NPIX, hdu=None, pixel_scale=None,
                     lens_light=DEFAULT_LENS_LIGHT_PATH):
    """The network input of two bands by one lens-light path (``--bands``, catalogue ``band2``).

    Args:
        blue, red: FITS files (or :class:`~ensai_tf.realdata.sky.Band`) of the
            bluer and the redder filter.
        label: the item's ``name`` and ``file`` (default ``"BLUE + RED"``).
        position, sky, masks, psf_fwhm, cosmic_rays, npix: as
            :func:`~ensai_tf.realdata.cutout.cut_two_bands` (``masks`` parsed).
        hdu, pixel_scale: as :func:`~ensai_tf.realdata.sky.read_band`.
        lens_light: ``"subtract"``, ``"ica"`` or ``"subtract+ica"``
            (:func:`~ensai_tf.realdata.lens_light.separate_arcs`), or ``"network"``
            for a two-band network (:func:`~ensai_tf.realdata.lens_light.stack_bands`).

    Returns:
        ``(item, cutout, arcs)``: the :class:`~ensai_tf.preprocess.images.PreparedImage`
        (``centre_pix`` the blue-file pixel of the grid centre), the
        :class:`~ensai_tf.realdata.cutout.TwoBandCutout` and the
        :class:`~ensai_tf.realdata.lens_light.TwoBandArcs`.

    Raises:
        InputError: unreadable or unalignable files, a bad position or path,
            or a lens-light fit or ICA that cannot run (naming the files).
    """
    network = lens_light == NETWORK_LENS_LIGHT_PATH
    if not network:
        check_lens_light_path(lens_light)
    bands = [b if isinstance(b, Band) else read_band(b, hdu, pixel_scale) for b in (blue, red)]
    cutout = cut_two_bands(bands[0], bands[1], position=position, sky=sky, masks=masks,
                           psf_fwhm=psf_fwhm, cosmic_rays=cosmic_rays, npix=npix)
    arcs = stack_bands(cutout) if network else separate_arcs(cutout, lens_light, psf_fwhm)
    label = cutout.name if label is None else str(label)
    item = PreparedImage(name=label, file=label, index=0, image=arcs.image,
                         centre_pix=cutout.frame.centre,
                         scale_arcsec=(conventions.PIXEL_SCALE,) * 2)
    return item, cutout, arcs


def predict_two_band(model, blue, red, output="-", ra=None, dec=None, x=None, y=None,
                     masks=(), sky_masks=(), psf_fwhm=None, cosmic_rays=None, hdu=None,
                     pixel_scale=None, plot=None, lens_light=None):
    """Lens parameters from two FITS bands (``ensai predict --bands``).

    Args:
        model: model folder, SavedModel folder or ``.keras`` file.
        blue, red: FITS files of the bluer and the redder filter.
        output: ``.csv``/``.json`` path or ``'-'`` (see
            :func:`ensai_tf.tables.write_table`).
        ra, dec: ICRS lens position, degrees (needs the blue WCS); or
        x, y: 0-based pixel of the lens in the blue file; default the centre.
        masks: ``"X,Y"`` blue-file pixels or DS9 ``.reg`` files; each point
            is a 0.2 arcsec disc (docs/design.md §8.4 step 2).
        sky_masks: ``"RA,DEC"`` degrees, 0.2 arcsec discs.
        psf_fwhm: ``(blue, red)`` PSF FWHM, arcsec, or None (no matching).
        cosmic_rays: None or a
            :func:`~ensai_tf.realdata.cosmics.detect_cosmic_rays` method.
        hdu: HDU index or EXTNAME used in both files; None = first image.
        pixel_scale: arcsec per pixel for files without a WCS.
        plot: optional path of the diagnostic PNG (:func:`plot_diagnostic`).
        lens_light: how the lens light goes for a one-band model
            (:data:`ensai_tf.realdata.lens_light.LENS_LIGHT_PATHS`):
            ``"subtract"`` (default, the most accurate measured,
            docs/design.md §8.4), ``"ica"`` or ``"subtract+ica"``; a model
            trained on two bands reads them itself (:func:`two_band_path`).

    Returns:
        list with one row dict (:data:`ensai_tf.tables.OUTPUT_COLUMNS`): the
        five parameters, ``q = 1 - |e|``, ``pa_deg`` east of north when the
        blue file has a WCS (``pa_frame`` says which), the lens centre in
        blue-file pixels and RA/Dec, and ``lens_light_path``.

    Raises:
        InputError: bad files, positions, masks, path or output (naming them).
        ModelDirError: a missing or corrupt model.
    """
    if lens_light not in (None, NETWORK_LENS_LIGHT_PATH):
        check_lens_light_path(lens_light)
    _check_request(ra, dec, x, y, output, plot)
    bands = [read_band(p, hdu, pixel_scale) for p in (blue, red)]
    mask_items = parse_mask_specs(masks, pixel=True) + parse_mask_specs(sky_masks, pixel=False)
    predict_fn, npix = load_predictor(model, raw=True)
    lens_light = two_band_path(lens_light, input_bands(predict_fn))
    _, cutout, arcs = prepare_two_band(bands[0], bands[1], position=None if x is None else (x, y),
                                       sky=None if ra is None else (ra, dec), masks=mask_items,
                                       psf_fwhm=psf_fwhm, cosmic_rays=cosmic_rays, npix=npix,
                                       lens_light=lens_light)
    start = time.perf_counter()
    raw = predict_images(predict_fn, arcs.image[None])
    elapsed = time.perf_counter() - start
    params = raw[0, :conventions.NUM_PARAMS]
    rows = [cutout_row(cutout, params, cutout.name, lens_light)]
    head, n_targets = head_layout(raw.shape[1])
    if raw.shape[1] > conventions.NUM_PARAMS:
        calibration = load_calibration(model) if head != "point" else None
        rows[0].update(uncertainty_columns(raw, calibration)[0])
    write_table(rows, output, columns=output_columns(head, n_targets))
    if plot is not None:
        plot_diagnostic(cutout, arcs, params, plot, summary=prediction_summary(rows[0]))
    print(f"ensai predict --bands: --lens-light {lens_light}: {describe_arcs(arcs)}; "
          f"{int(cutout.mask.sum())} pixels masked; network {1e3 * elapsed:.1f} ms",
          file=sys.stderr)
    return rows
