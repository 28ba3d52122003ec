"""Measure a coloured-noise amplitude spectrum from a blank-field FITS image.

Usage::

    python tools/measure_noise_spectrum.py blank.fits spectrum.npy [--npix 192]
        [--sigma 3] [--dilate 3] [--fill zero|median] [--dc-offset-rms X]

Steps (docs/design.md §5.4, project decision): read the first image HDU (astropy);
mask sources by sigma clipping (``astropy.stats.sigma_clip``), keeping
groups of at least ``--min-area`` connected pixels, dilated by a few pixels; subtract the clipped median (sky) and fill masked pixels with
0 (``zero``: noise-free zeros) or with the clipped median before the
subtraction (``median``, identical after it); cut the image into
non-overlapping ``npix x npix`` tiles with at most half their pixels
masked; write ``sqrt(mean |FFT2(tile)|^2)`` as an ``(npix, npix)`` float32
``.npy`` in unshifted FFT order (DC at [0, 0]), which
``observe.noise_spectrum`` accepts. The DC amplitude is kept as measured
unless ``--dc-offset-rms`` sets the constant offset of synthesised maps
(in map-rms units; the original's measured spectrum gives about 1.1).

Prints the lag-1/2/3 correlations of the masked tiles and of maps
synthesised from the spectrum with ``ensai_tf.data.noise.coloured_noise``.
"""

import argparse
import sys

import numpy as np

__all__ = ["measure_spectrum", "main"]


def _load_image(path):
    from astropy.io import fits

    from ensai_tf.errors import InputError

    try:
        with fits.open(path) as hdul:
            for hdu in hdul:
                if hdu.data is not None and np.ndim(hdu.data) == 2:
                    return np.array(hdu.data, dtype=np.float64)
    except OSError as err:
        raise InputError(f"{path!r} is not a readable FITS file: {err}") from None
    raise InputError(f"{path!r} has no 2-D image HDU")


def measure_spectrum(image, npix=192, sigma=3.0, dilate=3, fill="zero", dc_offset_rms=None,
                     min_area=5):
    """Fourier amplitude spectrum of the noise in a blank-field image.

    Args:
        image: 2-D array, any units (counts or flux per pixel).
        npix: tile side, pixels (the simulated image side).
        sigma: sigma-clipping threshold for source masking.
        dilate: binary-dilation iterations applied to the source mask, pixels.
        fill: ``"zero"`` or ``"median"`` for masked pixels (the same after the
            sky subtraction).
        dc_offset_rms: if given, reset the DC amplitude so synthesised maps
            carry a constant offset of this rms (map-rms units).
        min_area: smallest 8-connected group of clipped pixels treated as a
            source, pixels (lone noise outliers are not masked, so the mask
            does not dilute the measured correlations).

    Returns:
        ``(amplitude, info)``: float32 ``(npix, npix)`` unshifted amplitudes;
        info dict with ``tiles`` (int), ``masked_fraction``, ``mask`` (bool,
        image shape, True = masked) and ``tiles_data`` (the masked,
        sky-subtracted tiles, ``(T, npix, npix)``).

    Raises:
        InputError: image smaller than a tile, or no tile at least half clean.
    """
    from astropy.stats import sigma_clip
    from scipy import ndimage

    from ensai_tf.errors import InputError

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < npix:
        raise InputError(f"blank-field image of shape {image.shape} is smaller than one "
                         f"{npix}x{npix} tile")
    if fill not in ("zero", "median"):
        raise InputError(f"fill must be 'zero' or 'median', got {fill!r}")
    finite = np.isfinite(image)
    clipped = sigma_clip(np.where(finite, image, np.nan), sigma=sigma, maxiters=10,
                         masked=True)
    mask = np.ma.getmaskarray(clipped) & finite
    # Sources are connected groups of clipped pixels; lone noise outliers are kept.
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = (sizes[labels] >= min_area) | ~finite
    if dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=int(dilate))
    sky = float(np.median(image[~mask]))
    # Both fills give 0 after the sky subtraction: "median" fills with the clipped
    # median (= sky) before it, "zero" with a noise-free zero after it.
    filled = np.where(mask, 0.0, image - sky)
    tiles = []
    for r in range(0, image.shape[0] - npix + 1, npix):
        for c in range(0, image.shape[1] - npix + 1, npix):
            if mask[r:r + npix, c:c + npix].mean() <= 0.5:
                tiles.append(filled[r:r + npix, c:c + npix])
    if not tiles:
        raise InputError("no tile with at least half of its pixels free of sources")
    tiles = np.array(tiles)
    power = np.mean(np.abs(np.fft.fft2(tiles)) ** 2, axis=0)
    if dc_offset_rms is not None:
        power[0, 0] = 0.0
        power[0, 0] = 2.0 * dc_offset_rms ** 2 * power.sum()
    info = {"tiles": len(tiles), "masked_fraction": float(mask.mean()), "mask": mask,
            "tiles_data": tiles}
    return np.sqrt(power).astype(np.float32), info


def main(argv=None):
    """Command-line entry; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fits", help="blank-field FITS image")
    parser.add_argument("output", help="output .npy spectrum")
    parser.add_argument("--npix", type=int, default=192)
    parser.add_argument("--sigma", type=float, default=3.0)
    parser.add_argument("--dilate", type=int, default=3)
    parser.add_argument("--fill", choices=("zero", "median"), default="zero")
    parser.add_argument("--dc-offset-rms", type=float, default=None)
    parser.add_argument("--min-area", type=int, default=5, help="pixels in a source")
    parser.add_argument("--maps", type=int, default=16, help="maps synthesised for the check")
    args = parser.parse_args(argv)

    from ensai_tf.data import noise
    from ensai_tf.errors import InputError

    try:
        amplitude, info = measure_spectrum(_load_image(args.fits), args.npix, args.sigma,
                                           args.dilate, args.fill, args.dc_offset_rms,
                                           args.min_area)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    np.save(args.output, amplitude)
    seeds = np.stack([np.arange(args.maps), np.full(args.maps, 2024)], axis=1)
    maps = noise.coloured_noise(seeds, amplitude).numpy()
    measured = noise.lag_correlations(info["tiles_data"])
    synth = noise.lag_correlations(maps)
    offset = np.sqrt(np.mean(maps.mean(axis=(1, 2)) ** 2))
    print(f"wrote {args.output}: {info['tiles']} tile(s), "
          f"{100 * info['masked_fraction']:.1f}% of pixels masked")
    for name, c in (("image tiles", measured), ("synthesised", synth)):
        print(f"{name:12s} lag 1/2/3 x: " + " ".join(f"{v:.3f}" for v in c["x"])
              + "   y: " + " ".join(f"{v:.3f}" for v in c["y"]))
    print(f"synthesised constant offset rms: {offset:.2f} map-rms ({args.maps} maps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
