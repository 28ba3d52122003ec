"""Two FITS bands to one prediction (``ensai_tf.realdata.pipeline``, docs/design.md §8.4):
ICA of a cutout, ``predict_two_band``, and ``ensai predict --bands`` / ``--ica``.
"""

import csv
import json
import pathlib

import numpy as np
import pytest
from realdata_files import lens_fits, make_wcs, write_fits

from ensai_tf import cli, realdata
from ensai_tf.errors import InputError
from ensai_tf.preprocess import ica
from ensai_tf.preprocess.images import fit_to_grid, normalise_peak


def test_two_band_cutout_unmixes_to_the_arcs(tmp_path):
    b, r, arcs, _ = lens_fits(tmp_path)
    cut = realdata.cut_two_bands(realdata.read_band(b), realdata.read_band(r),
                                 position=(109.5, 109.5), psf_fwhm=(0.07, 0.07))
    image, res = realdata.unmix_cutout(cut)
    truth, _ = fit_to_grid(arcs[:, :], 192)
    assert image.shape == (192, 192, 1) and image.dtype == np.float32
    # the file (220 px) is larger than the grid: nothing masked, arcs recovered
    # to the acceptance level of the two-band ICA test (0.95)
    assert ica.arc_correlation(res.arc, truth) >= 0.95


def test_predict_two_band_writes_sky_pa_and_diagnostic(tmp_path, constant_model):
    b, r, _, wcs = lens_fits(tmp_path, theta=25.0)
    model = constant_model(tmp_path / "m.keras")
    out = tmp_path / "p.csv"
    png = tmp_path / "diag.png"
    sky = wcs.pixel_to_world(109.5, 109.5)
    reg = tmp_path / "m.reg"
    reg.write_text("image; circle(111,111,3)\n")
    rows = realdata.predict_two_band(model, b, r, output=str(out), ra=sky.ra.deg,
                                     dec=sky.dec.deg, masks=[str(reg), "40,50"],
                                     psf_fwhm=(0.07, 0.07), cosmic_rays="laplacian",
                                     plot=str(png))
    row = rows[0]
    # the model outputs e = (0.2, 0) -> phi = 0, major axis along +y (grid angle
    # 90 deg) -> PA = theta + 90 - 90 = 25 deg east of north (CD convention above)
    assert row["pa_frame"] == "east_of_north"
    assert row["pa_deg"] == pytest.approx(25.0, abs=1e-4)
    assert row["q"] == pytest.approx(0.8, abs=1e-6)
    # the lens centre maps back to the file: (0.04, -0.08) arcsec = (+1, -2) pixels
    # from the cutout centre, which is within half a pixel of (109.5, 109.5)
    assert abs(row["x_pix"] - 110.5) <= 0.5 + 1e-6 and abs(row["y_pix"] - 107.5) <= 0.5 + 1e-6
    with open(out) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 1 and float(table[0]["pa_deg"]) == pytest.approx(25.0, abs=1e-4)
    assert png.stat().st_size > 10_000


def test_masks_covering_the_whole_cutout(tmp_path):
    shape = (240, 240)
    b = realdata.read_band(write_fits(tmp_path / "b.fits", np.ones(shape), make_wcs(shape)))
    cut = realdata.cut_two_bands(b, b, masks=[{"frame": "sky",
                                               "ra_deg": 150.0, "dec_deg": 2.0,
                                               "radius_arcsec": 30.0}])
    with pytest.raises(InputError, match="every pixel is masked") as err:
        realdata.unmix_cutout(cut)
    assert "b.fits" in str(err.value)


def test_cli_predict_bands(tmp_path, capsys, constant_model):
    b, r, _, _ = lens_fits(tmp_path)
    model = constant_model(tmp_path / "m.keras")
    out, png = tmp_path / "p.json", tmp_path / "d.png"
    rc = cli.main(["predict", model, "--bands", b, r, "--x", "109.5", "--y", "109.5",
                   "--mask", "30,40", "--psf-fwhm", "0.07", "0.07", "--output", str(out),
                   "--plot", str(png)])
    assert rc == 0 and png.is_file()
    rows = json.loads(out.read_text())
    assert rows[0]["pa_frame"] == "east_of_north" and rows[0]["q"] == pytest.approx(0.8)
    # --ica with the positional files is the same path
    rc = cli.main(["predict", model, b, r, "--ica", "--output", str(tmp_path / "q.csv")])
    assert rc == 0


def test_a_two_band_network_reads_both_bands(tmp_path, capsys, constant_model):
    """A model trained on two bands (docs/design.md §5.10) gets the PSF-matched bands, each of
    peak 1, as channels; it refuses a lens-light path and single-band images."""
    b, r, _, _ = lens_fits(tmp_path)
    model = constant_model(tmp_path / "two.keras", bands=2)
    out = tmp_path / "p.json"
    rc = cli.main(["predict", model, "--bands", b, r, "--psf-fwhm", "0.07", "0.09",
                   "--output", str(out), "--plot", str(tmp_path / "d.png")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())[0]["lens_light_path"] == "network"
    assert "two-band network reads both" in capsys.readouterr().err
    _, cutout, arcs = realdata.prepare_two_band(b, r, psf_fwhm=(0.07, 0.09), lens_light="network")
    assert arcs.image.shape == (192, 192, 2)
    for k, band in enumerate((cutout.blue, cutout.red)):
        np.testing.assert_allclose(arcs.image[..., k], normalise_peak(band), rtol=1e-6)
    assert cli.main(["predict", model, "--bands", b, r, "--lens-light", "ica",
                     "--output", str(tmp_path / "q.json")]) != 0
    assert "reads both bands itself" in capsys.readouterr().err
    assert cli.main(["predict", model, b, "--output", str(tmp_path / "s.json")]) != 0
    assert "reads two bands" in capsys.readouterr().err


def test_cli_bad_two_band_input(tmp_path, capsys, constant_model):
    b, r, _, _ = lens_fits(tmp_path)
    model = constant_model(tmp_path / "m.keras")
    assert cli.main(["predict", model, b, "--ica"]) == 2
    assert "--ica needs two bands" in capsys.readouterr().err
    raw = pathlib.Path(r).read_bytes()
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(raw[:len(raw) // 2])
    assert cli.main(["predict", model, "--bands", b, str(trunc)]) == 2
    err = capsys.readouterr().err
    assert "trunc.fits" in err and "truncated" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # argparse: --bands takes two files
        cli.main(["predict", model, "--bands", b])
    assert exc.value.code == 2
    assert cli.main(["predict", model, "--bands", b, r, "--ra", "150.0"]) == 2
    assert "both --ra and --dec" in capsys.readouterr().err
