"""Write a synthetic two-band HST-like lens as FITS files, for the README's real-data example.

Usage::

    python tools/make_two_band_example.py --out example_lens [--seed 3]

It simulates one noise-free lens of the test split (``ensai_tf.simulate``),
renders a blue and a red band with a red Sersic lens galaxy, slightly
different Gaussian PSFs and noise (``ensai_tf.twoband``, docs/design.md §8.4 project
note), pads them to a 240x240 field and writes ``blue.fits`` and ``red.fits``
with a TAN WCS (0.04 arcsec pixels, image +y at 25 deg east of north), plus
``truth.json`` with the true parameters, the lens pixel and the PSF FWHMs.
It prints the ``ensai predict --bands`` command that analyses the files.
``tests/test_readme_example.py`` runs this and that command.
"""

import argparse
import json
import math
import pathlib

import numpy as np

SIDE = 240
"""Field side, pixels: larger than the network's 192 so that the cutout is real."""

PA_DEG = 25.0
"""Position angle of the image +y (row) axis, degrees east of north."""


def _wcs(side, scale_arcsec, theta_deg, ra=150.0, dec=2.0):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [side / 2.0 + 0.5, side / 2.0 + 0.5]  # 1-based: the field centre
    t = math.radians(theta_deg)
    w.wcs.cd = (scale_arcsec / 3600.0) * np.array([[-math.cos(t), math.sin(t)],
                                                   [math.sin(t), math.cos(t)]])
    return w


def make_example(out_dir, seed=3):
    """Write ``blue.fits``, ``red.fits`` and ``truth.json`` into ``out_dir``.

    Args:
        out_dir: destination folder (created; existing files are refused).
        seed: user seed of the simulated lens and its two-band draws.

    Returns:
        dict of ``truth.json``: ``params`` (theta_E arcsec, e_x, e_y, x_L
        arcsec, y_L arcsec), ``lens_pixel`` (0-based column, row of the lens
        centre in the FITS files), ``psf_fwhm_arcsec`` (blue, red),
        ``colour_ratio``, ``files``.
    """
    from astropy.io import fits

    import ensai_tf
    from ensai_tf import conventions, twoband

    out = pathlib.Path(out_dir)
    names = ("blue.fits", "red.fits", "truth.json")
    if any((out / f).exists() for f in names):
        raise SystemExit(f"{out} already holds example files; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    lens = ensai_tf.simulate(1, seed=seed, split="test")
    arcs = lens["arcs"][0, :, :, 0].astype(np.float64)
    params = np.asarray(lens["params"], np.float64)
    pad = (SIDE - arcs.shape[0]) // 2
    field = np.pad(arcs, pad)[None]
    draws = twoband.sample_two_band(np.array([seed, 11], np.int64), params)
    bands = twoband.apply_two_band(field, params, draws)
    wcs = _wcs(SIDE, conventions.PIXEL_SCALE, PA_DEG)
    header = wcs.to_header()
    for band in ("blue", "red"):
        fits.PrimaryHDU(data=bands[band][0].astype(np.float32), header=header).writeto(
            out / f"{band}.fits")
    centre = (SIDE - 1) / 2.0
    P = conventions.Param
    truth = {
        "params": dict(zip(conventions.PARAM_NAMES, map(float, params[0]))),
        "lens_pixel": [centre + params[0, P.X_L] / conventions.PIXEL_SCALE,
                       centre + params[0, P.Y_L] / conventions.PIXEL_SCALE],
        "psf_fwhm_arcsec": [float(draws["fwhm_blue"][0]), float(draws["fwhm_red"][0])],
        "colour_ratio": float(draws["colour_ratio"][0]),
        "files": [str(out / "blue.fits"), str(out / "red.fits")],
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def predict_command(truth, model="trained_weights/combined", output="params.json",
                    plot="diagnostic.png"):
    """The ``ensai predict --bands`` command line (a list of words) for ``truth``."""
    blue, red = truth["files"]
    x, y = (f"{v:.2f}" for v in truth["lens_pixel"])
    fb, fr = (f"{v:.3f}" for v in truth["psf_fwhm_arcsec"])
    # docs/design.md §8.4: a 0.2 arcsec mask on the brightest region of the lens galaxy
    return ["predict", model, "--bands", blue, red, "--x", x, "--y", y, "--mask", f"{x},{y}",
            "--psf-fwhm", fb, fr, "--output", output, "--plot", plot]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example_lens", help="output folder")
    parser.add_argument("--seed", type=int, default=3, help="user seed (default: 3)")
    args = parser.parse_args()
    truth = make_example(args.out, args.seed)
    print("true parameters:", json.dumps(truth["params"]))
    print("analyse with:\n  ensai " + " ".join(predict_command(
        truth, output=f"{args.out}/params.json", plot=f"{args.out}/diagnostic.png")))


if __name__ == "__main__":
    main()
