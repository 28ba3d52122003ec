"""Synthetic two-band lenses and the ICA experiment (``ensai_tf.twoband``, docs/design.md §8.4)."""

import json

import numpy as np
import pytest

from ensai_tf import cli, conventions, lens_light_report, twoband
from ensai_tf.preprocess import ica

S = conventions.PIXEL_SCALE


def _ring_arcs(count):
    x, y = conventions.pixel_grid(192, S)
    arcs, params = [], []
    for k in range(count):
        theta_e = 0.9 + 0.4 * k
        arc = np.exp(-0.5 * ((np.hypot(x, y) - theta_e) / 0.06) ** 2) * \
            (0.5 + 0.5 * np.cos(np.arctan2(y, x) - k))
        arcs.append(arc / arc.max())
        params.append([theta_e, 0.1, -0.05, 0.0, 0.0])
    return np.stack(arcs)[..., None], np.asarray(params)


def test_two_band_draws_are_reproducible_and_colours_exact():
    arcs, params = _ring_arcs(2)
    d1 = twoband.sample_two_band(np.array([3, 4]), params)
    d2 = twoband.sample_two_band(np.array([3, 4]), params)
    for k in d1:
        np.testing.assert_array_equal(d1[k], d2[k])
    assert np.all(d1["fwhm_red"] > d1["fwhm_blue"])  # "slightly different PSFs"
    bands = twoband.apply_two_band(arcs, params, d1)
    # flux ratios are exact (the Gaussian PSFs conserve flux): arcs blue/red =
    # kappa f_lb, and the noise-free blue band is arcs + f_lb x lens light
    ratio = bands["arcs_blue"].sum(axis=(1, 2)) / bands["arcs_red"].sum(axis=(1, 2))
    np.testing.assert_allclose(ratio, d1["colour_ratio"] * d1["lens_blue_red"], rtol=1e-9)
    assert bands["blue"].shape == (2, 192, 192)


def test_ica_experiment_on_ring_lenses(tmp_path):
    arcs, params = _ring_arcs(2)
    summary = twoband.ica_experiment(arcs=arcs, params=params, colour_ratios=(3.0, 10.0),
                                     out_dir=tmp_path)
    assert set(summary["colour_ratios"]) == {"3.0", "10.0"}
    assert summary["colour_ratios"]["10.0"]["n"] == 2
    # bright rings at 1-4% noise: well separated, near the noise ceiling
    assert summary["all"]["median"] > 0.8
    assert summary["all"]["median"] <= summary["arcs_alone"]["median"] + 0.02
    assert (tmp_path / "ica.json").is_file()
    assert "| 3.0 |" in lens_light_report.ica_markdown(summary)


def test_cli_evaluate_ica_experiment(tmp_path, constant_model):
    model = constant_model(tmp_path / "m.keras")
    rc = cli.main(["evaluate", model, "--experiment", "ica", "--n", "1", "--preset", "smoke",
                   "--out", str(tmp_path / "ev")])
    assert rc == 0
    summary = json.loads((tmp_path / "ev" / "ica.json").read_text())
    assert set(summary["colour_ratios"]) == {"1.5", "2.0", "3.0", "5.0", "10.0"}
    # a constant model: the same errors on ICA arcs and on arcs alone
    assert summary["errors"]["ica"]["3.0"]["theta_e"] == summary["errors"]["arcs_alone"]["theta_e"]
    assert (tmp_path / "ev" / "ica.md").is_file()


def test_fitted_subtraction_recovers_arcs_that_ica_loses():
    arcs, params = _ring_arcs(1)
    draws = twoband.sample_two_band(np.array([5, 6]), params)
    # a low colour ratio and a lens 8 times the arcs in red: ICA's hard case
    draws = dict(draws, colour_ratio=np.array([1.5]), lens_to_arc=np.array([8.0]))
    bands = twoband.apply_two_band(arcs, params, draws)
    truth = twoband.matched_truth(arcs[..., 0], draws)[0]
    ceiling = ica.arc_correlation(twoband.arcs_alone(truth[None], draws)[0], truth)
    args = (bands["blue"][0], bands["red"][0], draws["fwhm_blue"][0], draws["fwhm_red"][0])
    fitted = twoband.recover_arcs_fitted(*args)
    lost = twoband.recover_arcs(*args).arc
    assert fitted.ica is None and fitted.arc.dtype == np.float32
    # the fitted path sits at the noise ceiling; plain ICA falls far below it
    assert ica.arc_correlation(fitted.arc, truth) > ceiling - 0.02
    assert ica.arc_correlation(lost, truth) < ceiling - 0.2
    # the blue fit keeps the red fit's centre and shape
    assert fitted.fit_blue["x0"] == fitted.fit_red["x0"]
    assert fitted.fit_blue["q"] == pytest.approx(fitted.fit_red["q"], abs=1e-12)
    unmixed = twoband.recover_arcs_fitted(*args, unmix=True)
    assert unmixed.ica is not None and unmixed.arc is unmixed.ica.arc
