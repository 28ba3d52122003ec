"""Tests of ensai_tf.reports: metrics.json, Table 1, Figure 1 and the coverage report."""

import json

import numpy as np

from closed_forms import N, odd_even_errors
from ensai_tf import calibration, conventions, evaluate, metrics, reports


def test_write_report_files_and_paper_numbers(tmp_path):
    pred, true = odd_even_errors()
    result = {"model": "m", "experiment": "shear", "n": N,
              "metrics": metrics.error_table(true, pred),
              "shear_bins": evaluate.shear_bins(pred, true, np.linspace(0, 0.3, N)),
              "time_per_lens_s": 1e-3, "batch_size": 100}
    reports.write_report(result, pred, true, tmp_path, label="alexnet", bins=5)
    for name in ("metrics.json", "table1.md", "figure1.png", "residuals.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["paper_table1_error68"]["Combined"]["theta_e"] == 0.02
    assert data["paper_shear_rms_ellipticity"] == {"gamma < 0.01": 0.11, "gamma > 0.15": 0.23}
    np.testing.assert_allclose(data["metrics"]["theta_e"]["error68"], 69e-3, rtol=1e-9)
    table = (tmp_path / "table1.md").read_text()
    assert "| **alexnet** | 68% error | 0.069 |" in table
    assert "| paper: Network 2 (AlexNet) | 68% error | 0.03 | 0.04 | 0.04 | 0.05 | 0.06 |" in table
    assert "bins of external shear" in table
    assert (tmp_path / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table1_markdown_sections_follow_the_result():
    pred, true = odd_even_errors()
    plain = reports.table1_markdown({"metrics": metrics.error_table(true, pred)}, label="x")
    assert plain.startswith(f"# Table 1: errors on {N} test lenses\n")
    assert "| **x** | rms |" in plain and "bins of external shear" not in plain
    assert plain.count("| paper: ") == len(reports.PAPER_TABLE1)
    mean, std = true + 0.01, np.full_like(true, 0.01)
    result = {"metrics": metrics.error_table(true, pred), "experiment": "psf",
              "coverage": reports.coverage_report(true, mean, std)}
    text = reports.table1_markdown(result)
    assert "(psf experiment)" in text and "## Interval coverage" in text
    assert "| raw | 68% |" in text and "| calibrated |" not in text


def test_coverage_report_is_calibration_coverage_by_name():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(200, 5))
    mean, std = true + rng.normal(size=(200, 5)) * 0.1, np.full((200, 5), 0.1)
    cal = calibration.fit_interval_calibration(true, mean, std, levels=(0.5, 0.68, 0.95, 0.99))
    got = reports.coverage_report(true, mean, std, cal)
    assert got["levels"] == [0.68, 0.95]
    for kind, fitted in (("raw", None), ("calibrated", cal)):
        want = calibration.coverage(true, mean, std, calibration=fitted)
        for level in (0.68, 0.95):
            assert got[kind][str(level)] == dict(zip(conventions.PARAM_NAMES,
                                                     want[level].tolist()))


def test_shear_comparison_markdown_rows(tmp_path):
    pred, true = odd_even_errors()
    result = {"n": N, "metrics": metrics.error_table(true, pred),
              "shear_bins": evaluate.shear_bins(pred, true, np.linspace(0, 0.3, N))}
    text = reports.shear_comparison_markdown(["1-a", "2-b"], [result, result])
    assert "| gamma | n | 1-a | 2-b |" in text
    assert "| 1-a | 0.069 |" in text and text.endswith("n/a | n/a |\n")
    path = reports.plot_calibration(true, true + 0.01, np.full_like(true, 0.01),
                                    tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
