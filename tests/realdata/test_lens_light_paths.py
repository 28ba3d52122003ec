"""How ``ensai predict`` takes the lens light out (``ensai_tf.realdata.lens_light``,
docs/design.md §8.4): the two-band paths of ``--bands``/``band2`` (fitted subtraction by
default, ICA, both), single-band ``--subtract-lens-light``, the ``lens_light_path`` column,
and the option combinations that are refused.

The model reads the image's mean (``theta_E = 1.2 + 0.5 * mean``), so a row tells which
image the network saw; the quality flags of the single-band tests use the package's
statistics without the screening network (``model_thresholds(None, screen=False)``), so
whether an image raises ``lens_light`` does not depend on which screening network ships.
"""

import csv
import json
import pathlib
import re

import keras
import numpy as np
import pytest
from realdata_files import lens_fits

from ensai_tf import catalog, cli, conventions, flags, prediction, realdata, tables
from ensai_tf import config as config_lib
from ensai_tf.errors import InputError
from ensai_tf.model_dir import CONFIG_YAML, MODEL_KERAS
from ensai_tf.preprocess import lens_fit
from ensai_tf.preprocess.images import iter_prepared_array

S = conventions.PIXEL_SCALE
BIAS = [1.2, 0.2, 0.0, 0.04, -0.08]


@pytest.fixture
def mean_model(tmp_path):
    """A ``.keras`` model predicting ``BIAS + (0.5 * mean, 0, 0, 0, 0)`` of a 192x192 image."""
    inp = keras.Input((192, 192, 1))
    dense = keras.layers.Dense(5)
    out = dense(keras.layers.GlobalAveragePooling2D()(inp))
    model = keras.Model(inp, out)
    dense.set_weights([np.array([[0.5, 0.0, 0.0, 0.0, 0.0]], np.float32),
                       np.array(BIAS, np.float32)])
    model.save(tmp_path / "mean.keras")
    return str(tmp_path / "mean.keras")


def _theta(image):
    """theta_E of the mean model for a network input."""
    return float(np.float32(BIAS[0]) + np.float32(0.5) * np.mean(image, dtype=np.float32))


def _single_band(lens_light=3.0, seed=0):
    """A 192x192 ring of radius 1 arcsec plus a central Sersic galaxy (peak ``lens_light``
    times the ring's) and noise of 1% of the ring."""
    x, y = lens_fit.image_coordinates((192, 192), S)
    ring = np.exp(-0.5 * ((np.hypot(x, y) - 1.0) / 0.06) ** 2)
    galaxy = lens_fit.sersic_image(x, y, 1.0, 2.0, 0.3, 0.85, 0.4, 0.0, 0.0, core=0.02)
    noise = 0.01 * np.random.default_rng(seed).standard_normal(x.shape)
    return ring + lens_light * galaxy / galaxy.max() + noise


def _run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_choices_are_the_library_names():
    assert cli.LENS_LIGHT_PATHS == realdata.LENS_LIGHT_PATHS
    assert cli.SINGLE_BAND_MODES == realdata.SINGLE_BAND_MODES
    assert tables.output_columns()[-1] == tables.LENS_LIGHT_COLUMN == "lens_light_path"
    assert tables.output_columns("full", 7)[-1] == "lens_light_path"


def test_bands_default_to_the_fitted_subtraction(tmp_path, capsys, mean_model):
    b, r, _, _ = lens_fits(tmp_path)
    out = tmp_path / "p.csv"
    code, _, err = _run(capsys, "predict", mean_model, "--bands", b, r, "--x", 109.5, "--y",
                        109.5, "--psf-fwhm", 0.07, 0.07, "--output", out)
    assert code == 0
    assert "--lens-light subtract: lens light fitted and subtracted" in err
    with open(out) as f:
        header = next(csv.reader(f))
    assert tuple(header) == tables.output_columns()
    (row,) = list(csv.DictReader(open(out)))
    assert row["lens_light_path"] == "subtract"
    # the network read the blue band minus its fitted lens light
    cut = realdata.cut_two_bands(realdata.read_band(b), realdata.read_band(r),
                                 position=(109.5, 109.5), psf_fwhm=(0.07, 0.07))
    arcs = realdata.separate_arcs(cut, "subtract", (0.07, 0.07))
    fitted = realdata.subtract_two_bands(cut.blue, cut.red, 0.07, mask=cut.mask)
    np.testing.assert_array_equal(arcs.image[..., 0], fitted.arc)
    assert float(row["theta_e"]) == pytest.approx(_theta(arcs.image), abs=1e-6)
    # the red fit found the lens at the centre, and the residual lost the lens light
    assert abs(fitted.fit_red["x0"]) < 0.02 and abs(fitted.fit_red["y0"]) < 0.02
    assert abs(fitted.residual_blue[96, 96]) < 0.05 * cut.blue[96, 96]


def test_lens_light_ica_is_the_ica_path(tmp_path, capsys, mean_model):
    """``--lens-light ica`` (and ``--ica``) give, to the bit, the prediction of the ICA
    arc component of the cutout (:func:`ensai_tf.realdata.unmix_cutout`)."""
    b, r, _, _ = lens_fits(tmp_path)
    cut = realdata.cut_two_bands(realdata.read_band(b), realdata.read_band(r),
                                 position=(109.5, 109.5), psf_fwhm=(0.07, 0.07))
    image, result = realdata.unmix_cutout(cut)
    arcs = realdata.separate_arcs(cut, "ica")
    np.testing.assert_array_equal(arcs.image, image)
    assert arcs.fitted is None and arcs.ica.rule == result.rule
    expected = keras.models.load_model(mean_model)(image[None]).numpy()[0]
    for args in (("--bands", b, r, "--lens-light", "ica"), (b, r, "--ica")):
        out = tmp_path / "p.json"
        code, _, err = _run(capsys, "predict", mean_model, *args, "--x", 109.5, "--y", 109.5,
                            "--psf-fwhm", 0.07, 0.07, "--output", out, "--overwrite")
        assert code == 0 and "--lens-light ica: ICA of the bands: arc component chosen" in err
        (row,) = json.loads(out.read_text())
        assert row["lens_light_path"] == "ica"
        assert [row[n] for n in conventions.PARAM_NAMES] == [float(v) for v in expected]


def test_subtract_and_ica_and_the_diagnostic_plots(tmp_path, mean_model):
    b, r, _, _ = lens_fits(tmp_path)
    for path in realdata.LENS_LIGHT_PATHS:
        png = tmp_path / f"{path}.png"
        (row,) = realdata.predict_two_band(mean_model, b, r, output=str(tmp_path / "p.csv"),
                                           x=109.5, y=109.5, psf_fwhm=(0.07, 0.07),
                                           plot=str(png), lens_light=path)
        assert row["lens_light_path"] == path and png.stat().st_size > 10_000
    item, cutout, arcs = realdata.prepare_two_band(b, r, position=(109.5, 109.5),
                                                   psf_fwhm=(0.07, 0.07),
                                                   lens_light="subtract+ica")
    assert arcs.fitted is not None and arcs.ica is arcs.fitted.ica
    np.testing.assert_array_equal(item.image[..., 0], arcs.fitted.ica.arc)
    with pytest.raises(InputError, match="unknown lens-light path 'pca'"):
        realdata.prepare_two_band(b, r, lens_light="pca")


def _prepared(image):
    (item,) = iter_prepared_array(image[None])
    return item


def test_single_band_lens_light_is_subtracted_when_flagged(tmp_path, capsys, mean_model):
    """A ring with a bright central galaxy raises ``lens_light`` (its central peak) and is
    predicted again without it; a clean ring is predicted as it is."""
    np.save(tmp_path / "galaxy.npy", _single_band(3.0))
    np.save(tmp_path / "ring.npy", _single_band(0.0))
    thresholds = flags.model_thresholds(None, screen=False)
    # the first pass, as it decides
    first = prediction.predict_files(mean_model, [str(tmp_path / "galaxy.npy"),
                                                  str(tmp_path / "ring.npy")],
                                     output=str(tmp_path / "never.csv"),
                                     subtract_lens_light="never", thresholds=thresholds)
    assert ["lens_light" in row["flags"] for row in first] == [True, False]
    assert [row["lens_light_path"] for row in first] == ["none", "none"]
    capsys.readouterr()
    rows = prediction.predict_files(mean_model, [str(tmp_path / "galaxy.npy"),
                                                 str(tmp_path / "ring.npy")],
                                    output=str(tmp_path / "auto.json"), thresholds=thresholds)
    err = capsys.readouterr().err
    galaxy, ring = rows
    assert galaxy["lens_light_path"] == "subtract" and ring["lens_light_path"] == "none"
    # the subtracted row is the prediction of the residual, with the residual's flags
    residual, fit = realdata.subtract_single_band(_prepared(_single_band(3.0)).image)
    assert galaxy["theta_e"] == pytest.approx(_theta(residual), abs=1e-6)
    assert galaxy["theta_e"] != pytest.approx(first[0]["theta_e"], abs=1e-3)
    assert "lens_light" not in galaxy["flags"]
    assert abs(fit["x0"]) < 0.02 and abs(fit["y0"]) < 0.02
    assert ring == first[1]
    assert json.loads((tmp_path / "auto.json").read_text())[0]["lens_light_path"] == "subtract"
    assert "lens light fitted and subtracted in 1 of 2 images" in err
    assert "lens_light_path=subtract" in err


def test_a_network_trained_with_lens_light_predicts_the_image_as_given(tmp_path, capsys,
                                                                       mean_model):
    """A model folder whose config.yaml says simulate.lens_light: no subtraction in auto mode,
    no lens_light flag, lens_light_path=network; asking for a subtraction still subtracts."""
    folder = tmp_path / "ll_net"
    folder.mkdir()
    (folder / MODEL_KERAS).write_bytes(pathlib.Path(mean_model).read_bytes())
    cfg = config_lib.apply_overrides(config_lib.get_preset("paper"), ["simulate.lens_light=true"])
    config_lib.save_config(cfg, folder / CONFIG_YAML)
    np.save(tmp_path / "galaxy.npy", _single_band(3.0))
    thresholds = flags.model_thresholds(None, screen=False)
    plain = prediction.predict_files(mean_model, [str(tmp_path / "galaxy.npy")],
                                     output=str(tmp_path / "plain.csv"),
                                     subtract_lens_light="never", thresholds=thresholds)
    assert "lens_light" in plain[0]["flags"]  # the image does show lens light
    capsys.readouterr()
    (row,) = prediction.predict_files(str(folder), [str(tmp_path / "galaxy.npy")],
                                      output=str(tmp_path / "net.csv"), thresholds=thresholds)
    err = capsys.readouterr().err
    assert row["lens_light_path"] == "network" and "lens_light" not in row["flags"]
    assert row["theta_e"] == pytest.approx(plain[0]["theta_e"], abs=1e-6)  # as given
    assert "trained on images with their lens light" in err
    (row,) = prediction.predict_files(str(folder), [str(tmp_path / "galaxy.npy")],
                                      output=str(tmp_path / "always.csv"), thresholds=thresholds,
                                      subtract_lens_light="always")
    assert row["lens_light_path"] == "subtract"


def test_single_band_always_and_never_on_the_command_line(tmp_path, capsys, mean_model):
    np.save(tmp_path / "ring.npy", _single_band(0.0))
    np.save(tmp_path / "galaxy.npy", _single_band(3.0))
    out = tmp_path / "o.csv"
    code, _, err = _run(capsys, "predict", mean_model, tmp_path / "ring.npy",
                        "--subtract-lens-light", "always", "--output", out)
    assert code == 0 and "(--subtract-lens-light always)" in err
    (row,) = list(csv.DictReader(open(out)))
    assert row["lens_light_path"] == "subtract"
    code, _, err = _run(capsys, "predict", mean_model, tmp_path / "galaxy.npy",
                        "--subtract-lens-light", "never", "--output", out, "--overwrite")
    (row,) = list(csv.DictReader(open(out)))
    assert code == 0 and row["lens_light_path"] == "none" and "subtracted" not in err
    assert float(row["theta_e"]) == pytest.approx(
        _theta(_prepared(_single_band(3.0)).image), abs=1e-6)
    # ensai_tf.predict takes the same choice and names the path
    out = prediction.predict(_single_band(3.0), model=mean_model, subtract_lens_light="always")
    assert out["lens_light_path"].tolist() == ["subtract"]


def test_single_band_position_cuts_the_field_around_the_lens(tmp_path, mean_model):
    """``--x/--y`` of one image: the field is cut around the lens, whose light is then
    fitted at the field centre."""
    tile = np.zeros((260, 300)) + 1e-3
    tile[30:222, 80:272] += _single_band(3.0)
    np.save(tmp_path / "tile.npy", tile)
    (row,) = prediction.predict_files(mean_model, [str(tmp_path / "tile.npy")],
                                      output=str(tmp_path / "o.csv"), position=(175.5, 125.5),
                                      subtract_lens_light="always")
    assert row["lens_light_path"] == "subtract"
    assert row["x_pix"] == pytest.approx(175.5 + BIAS[3] / S)


def test_catalogue_rows_carry_their_path_and_resume(tmp_path, mean_model, write_fits,
                                                    celestial_wcs):
    b, r, _, _ = lens_fits(tmp_path)
    np.save(tmp_path / "ring.npy", _single_band(0.0))
    (tmp_path / "cat.csv").write_text("path,band2,x,y\nblue.fits,red.fits,109.5,109.5\n"
                                      "ring.npy,,,\n")
    out = tmp_path / "out.csv"
    summary = catalog.predict_catalog(mean_model, tmp_path / "cat.csv", out,
                                      psf_fwhm=(0.07, 0.07), subtract_lens_light="always")
    rows = list(csv.DictReader(open(out)))
    assert summary.written == 2
    assert [row["lens_light_path"] for row in rows] == ["subtract", "subtract"]
    with open(out) as f:
        assert next(csv.reader(f))[-1] == "lens_light_path"
    # the band2 row is the row of ensai predict --bands
    (expected,) = realdata.predict_two_band(mean_model, b, r, output=str(tmp_path / "b.json"),
                                            x=109.5, y=109.5, psf_fwhm=(0.07, 0.07))
    assert float(rows[0]["theta_e"]) == pytest.approx(expected["theta_e"], abs=1e-6)
    # ICA for band2 rows, single-band rows left as they are; JSON lines
    jsonl = tmp_path / "out.jsonl"
    catalog.predict_catalog(mean_model, tmp_path / "cat.csv", jsonl, psf_fwhm=(0.07, 0.07),
                            lens_light="ica", subtract_lens_light="never")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["lens_light_path"] for line in lines] == ["ica", "none"]
    # a killed run resumes: the rows there are kept, the missing one is predicted
    text = out.read_text().splitlines()
    out.write_text("\n".join(text[:2]) + "\n")
    summary = catalog.predict_catalog(mean_model, tmp_path / "cat.csv", out,
                                      psf_fwhm=(0.07, 0.07), subtract_lens_light="always",
                                      resume=True)
    assert (summary.written, summary.skipped) == (1, 1)
    assert [row["lens_light_path"] for row in csv.DictReader(open(out))] == ["subtract"] * 2


@pytest.mark.parametrize("args, message", [
    (("a.npy", "--lens-light", "ica"), r"--lens-light chooses how two bands"),
    (("--bands", "b.fits", "r.fits", "--subtract-lens-light", "always"),
     r"--subtract-lens-light is for single-band images"),
    (("b.fits", "r.fits", "--ica", "--lens-light", "subtract"),
     r"--ica unmixes the two files with ICA; for --lens-light subtract give them as --bands"),
    (("a.npy", "--x", "3"), r"give both --ra and --dec, or both --x and --y"),
    (("a.npy", "a.npy", "--x", "3", "--y", "4"), r"places the lens in one image; got 2 files"),
])
def test_bad_combinations_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    """Refused before the model loads (the model here does not exist)."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "a.npy", np.ones((8, 8)))
    code, out, err = _run(capsys, "predict", tmp_path / "no_model", *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("ensai predict: error: ")
    assert re.search(message, err), err


def test_library_refuses_unknown_modes(tmp_path):
    with pytest.raises(InputError, match="unknown single-band lens-light mode 'sometimes'"):
        prediction.predict_files("m", [str(tmp_path / "a.npy")], subtract_lens_light="sometimes")
    with pytest.raises(InputError, match="unknown lens-light path 'both'"):
        catalog.predict_catalog("m", tmp_path / "c.csv", tmp_path / "o.csv", lens_light="both")
    assert realdata.lens_light_request(True, ica_flag=True) == ("ica", None)
    assert realdata.lens_light_request(False, None, "never") == (None, "never")


def test_a_failed_fit_keeps_the_image_or_names_the_way_out(tmp_path, capsys, mean_model):
    """A single band whose lens region is all masked is predicted as it is, with a warning;
    two bands whose lens region is masked are refused in one line that names ``ica``."""
    x, y = lens_fit.image_coordinates((192, 192), S)
    r = np.hypot(x, y)
    ring = np.where(r > 3.0, np.exp(-0.5 * ((r - 3.3) / 0.06) ** 2) + 0.01, 0.0)
    np.save(tmp_path / "far.npy", ring)
    (row,) = prediction.predict_files(mean_model, [str(tmp_path / "far.npy")],
                                      output=str(tmp_path / "o.csv"),
                                      subtract_lens_light="always")
    err = capsys.readouterr().err
    assert row["lens_light_path"] == "none"
    assert row["theta_e"] == pytest.approx(_theta(_prepared(ring).image), abs=1e-6)
    assert re.search(rf"warning: {re.escape(str(tmp_path / 'far.npy'))}: lens-light fit: only "
                     r"\d+ unmasked pixels", err), err
    assert "too few to fit; predicted with its lens light (lens_light_path=none)" in err
    b, r_file, _, _ = lens_fits(tmp_path)
    cut = realdata.cut_two_bands(realdata.read_band(b), realdata.read_band(r_file),
                                 position=(109.5, 109.5),
                                 masks=[{"frame": "image", "col": 109.5, "row": 109.5,
                                         "radius_pix": 131.25}])
    with pytest.raises(InputError, match=r"^.*blue.fits \+ .*red.fits: lens-light fit: only 21 "
                                         r"unmasked pixels .*; --lens-light ica does without"):
        realdata.separate_arcs(cut, "subtract")
    assert realdata.separate_arcs(cut, "ica").path == "ica"
