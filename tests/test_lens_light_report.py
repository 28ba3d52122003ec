"""The lens-light report (``ensai evaluate --experiment lens-light``, docs/design.md §8.4, §8.5).

The plumbing runs with the constant model of conftest: every path then
predicts the same parameters, so every path's errors equal the ceiling's
exactly, whatever the images. Two or three ring lenses keep it fast.
"""

import json

import numpy as np
import pytest

from ensai_tf import cli, conventions, lens_light_paths, lens_light_report, twoband
from ensai_tf.errors import InputError
from ensai_tf.evaluate import default_out_dir
from ensai_tf.preprocess.images import normalise_peak
from ensai_tf.realdata.psf import match_psfs

S = conventions.PIXEL_SCALE
STANDARD = ["arcs alone", "ICA", "fitted subtraction + ICA", "fitted subtraction",
            "single band, lens light left in", "single band, fitted subtraction",
            "single band, auto"]
NETWORK = ["lens-light network", "lens-light network, truth-scaled"]


def _ring_arcs(count):
    x, y = conventions.pixel_grid(192, S)
    arcs, params = [], []
    for k in range(count):
        theta_e = 1.0 + 0.3 * k
        arc = np.exp(-0.5 * ((np.hypot(x, y) - theta_e) / 0.06) ** 2) * (
            0.5 + 0.5 * np.cos(np.arctan2(y, x) - k))
        arcs.append(arc / arc.max())
        params.append([theta_e, 0.1, -0.05, 0.0, 0.0])
    return np.stack(arcs), np.asarray(params)


def test_brightness_sets_the_red_band_and_not_the_colour_ratio():
    arcs, params = _ring_arcs(2)
    draws = twoband.sample_two_band(np.array([1, 2]), params)
    brightness = np.array([2.0, 7.0])
    low = lens_light_report.make_batch(arcs, params, draws, brightness, 1.5)
    high = lens_light_report.make_batch(arcs, params, draws, brightness, 10.0)
    # the red band is the same image, up to its unit, at every colour ratio
    for i in range(2):
        np.testing.assert_allclose(normalise_peak(low.red[i]), normalise_peak(high.red[i]),
                                   atol=1e-9)
    # in units of the arcs' red peak the red lens light peaks at B before the PSF
    bands = twoband.apply_two_band(arcs, params, dict(
        draws, colour_ratio=np.full(2, 10.0), lens_to_arc=brightness * high.arc_peak_red))
    lens_peak = bands["lens_red"].max(axis=(1, 2)) / high.arc_peak_red
    assert np.all(lens_peak <= brightness) and np.all(lens_peak > 0.5 * brightness)
    np.testing.assert_allclose(bands["red"], high.red)
    assert len(high) == 2 and high.colour_ratio == 10.0


def test_report_plumbing_with_a_constant_model(tmp_path, constant_model):
    model = constant_model(tmp_path / "m.keras")
    arcs, params = _ring_arcs(3)
    seen = []

    def two_band_network(batch):
        seen.append((batch.colour_ratio, batch.blue.shape, batch.red.shape))
        # the constant model's float32 outputs, so that the errors match exactly
        return np.tile(np.float32([1.2, 0.2, 0.0, 0.04, -0.08]), (len(batch), 1))

    summary = lens_light_report.lens_light_experiment(
        model, arcs=arcs, params=params, colour_ratios=(2.0, 5.0), lens_light_model=model,
        paths={"two-band network": two_band_network})
    assert summary["paths"] == STANDARD + NETWORK + ["two-band network"]
    assert seen == [(2.0, (3, 192, 192), (3, 192, 192)), (5.0, (3, 192, 192), (3, 192, 192))]
    assert summary["colour_ratios"] == ["2.0", "5.0"]
    assert summary["bins"] == ["all", "1-3", "3-10"]
    assert sum(summary["counts"][b] for b in ("1-3", "3-10")) == summary["counts"]["all"] == 3
    ceiling = summary["errors"]["arcs alone"]["2.0"]["all"]
    for path in summary["paths"]:
        for kappa in ("2.0", "5.0"):
            table = summary["errors"][path][kappa]["all"]
            assert table["n"] == 3
            assert table["theta_e"] == ceiling["theta_e"]
        assert summary["pooled"][path]["all"]["n"] == 6
    # theta_E 1.2 predicted for lenses of 1.0, 1.3, 1.6: |errors| 0.2, 0.1, 0.4
    assert ceiling["theta_e"]["error68"] == pytest.approx(np.percentile([0.2, 0.1, 0.4], 68))
    assert summary["fit_seconds"]["n"] == 6
    text = lens_light_report.lens_light_markdown(summary)
    assert "| fitted subtraction | 5.0 |" in text and "| two-band network |" in text
    lens_light_report.plot_lens_light(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_two_band_network_reads_matched_bands_scaled_to_their_peaks(tmp_path, constant_model):
    """The two-band path feeds a (blue, red) network the PSF-matched bands, each of peak 1."""
    model = constant_model(tmp_path / "two.keras", bands=2)
    arcs, params = _ring_arcs(2)
    draws = twoband.sample_two_band(np.array([0, 84], np.int64), params)
    batch = lens_light_report.make_batch(arcs, params, draws, np.array([2.0, 7.0]), 3.0)
    seen = []

    def predict_fn(images):
        seen.append(np.array(images))
        return np.tile([1.2, 0.2, 0.0, 0.04, -0.08], (len(images), 1))

    out = lens_light_paths.stacked_bands_path(predict_fn)(batch)
    assert out.shape == (2, 5) and seen[0].shape == (2, 192, 192, 2)
    for i in range(2):
        blue, red = match_psfs(batch.blue[i], batch.red[i], batch.fwhm_blue[i], batch.fwhm_red[i])
        np.testing.assert_allclose(seen[0][i, ..., 0], normalise_peak(blue), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(seen[0][i, ..., 1], normalise_peak(red), rtol=1e-6, atol=1e-7)
    summary = lens_light_report.lens_light_experiment(
        constant_model(tmp_path / "m.keras"), arcs=arcs, params=params, colour_ratios=(2.0,),
        two_band_model=model, single_band=False)
    assert summary["paths"][-1] == "two-band network"
    assert summary["two_band_model"] == model


def test_cli_evaluate_lens_light(tmp_path, constant_model):
    model = constant_model(tmp_path / "m.keras")
    out = tmp_path / "ev"
    rc = cli.main(["evaluate", model, "--experiment", "lens-light", "--n", "2", "--preset",
                   "smoke", "--out", str(out), "--lens-light-model", model])
    assert rc == 0
    summary = json.loads((out / lens_light_report.LENS_LIGHT_JSON).read_text())
    assert summary["paths"] == STANDARD + NETWORK
    assert summary["colour_ratios"] == ["1.5", "2.0", "3.0", "5.0", "10.0"]
    assert summary["n"] == 2
    assert (out / lens_light_report.LENS_LIGHT_MD).read_text().startswith("# Lens light: 2 ")
    assert (out / lens_light_report.LENS_LIGHT_PNG).is_file()
    # an existing report is not overwritten without --overwrite
    assert cli.main(["evaluate", model, "--experiment", "lens-light", "--n", "2", "--preset",
                     "smoke", "--out", str(out)]) != 0


def test_lens_light_model_needs_the_lens_light_experiment(tmp_path, constant_model, capsys):
    model = constant_model(tmp_path / "m.keras")
    for flag in ("--lens-light-model", "--two-band-model"):
        assert cli.main(["evaluate", model, flag, model, "--n", "2"]) != 0
        assert "go with --experiment lens-light" in capsys.readouterr().err


def test_default_folder_and_bad_n(tmp_path, constant_model):
    model = constant_model(tmp_path / "m.keras")
    assert str(default_out_dir("trained_weights/combined", lens_light_report.EXPERIMENT)) == \
        "ensai_eval/combined-lens-light"
    with pytest.raises(InputError, match="n must be >= 1"):
        lens_light_report.evaluate_lens_light(model, n=0, out_dir=tmp_path / "o")
