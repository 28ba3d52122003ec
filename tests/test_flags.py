"""Quality flags: each fires on the images it is meant for and not on a clean lens."""

import json

import numpy as np
import pytest

from ensai_tf import flag_messages, flags
from ensai_tf.calibrate import write_calibration
from ensai_tf.data.render import render_sie_sersic
from ensai_tf.inference import load_calibration
from ensai_tf.model_dir import CALIBRATION_JSON, shipped_weights_dir
from ensai_tf.prediction import predict_files
from ensai_tf.screen import SCREEN_BUDGET

PARAMS = np.array([[1.2, 0.1, -0.05, 0.04, -0.02]])
SOURCE = {"amplitude": [1.0], "n": [1.0], "r_eff": [0.08], "q": [0.8], "angle": [0.3],
          "x0": [0.05], "y0": [0.03]}


def _clean_lens(noise=0.02, seed=0):
    """A ring of theta_E = 1.2 arcsec with white noise of ``noise`` times its peak."""
    arcs = np.asarray(render_sie_sersic(PARAMS, SOURCE))[0].astype(np.float64)
    arcs /= arcs.max()
    return arcs + noise * np.random.default_rng(seed).normal(size=arcs.shape)


def _flags(image, params=PARAMS, footprint=None):
    stats = flags.image_statistics(image[None], params, [footprint])
    return flags.quality_flags(stats)[0]


def test_clean_lens_raises_no_flag():
    assert _flags(_clean_lens()) == []


def test_pure_noise_is_no_lens():
    noise = np.random.default_rng(1).normal(size=(192, 192))
    assert "no_lens" in _flags(noise)


def test_blank_sky_with_hot_pixels_is_no_lens():
    rng = np.random.default_rng(2)
    sky = rng.poisson(500.0, size=(192, 192)).astype(np.float64)
    sky[rng.integers(0, 192, 30), rng.integers(0, 192, 30)] += 1000.0
    assert "no_lens" in _flags(sky)


def test_100_pixel_cutout_is_small_field():
    image = _clean_lens()
    padded = np.zeros_like(image)
    padded[46:146, 46:146] = image[46:146, 46:146]
    assert "small_field" in _flags(padded, footprint=(46, 146, 46, 146))


def test_footprint_fraction_is_the_covered_side():
    stats = flags.image_statistics(_clean_lens()[None], PARAMS, [(46, 146, 0, 192)])
    assert stats["footprint_fraction"][0] == pytest.approx(100 / 192)


def test_arc_on_the_edge_is_small_field():
    image = _clean_lens()
    row, col = np.unravel_index(np.argmax(image), image.shape)
    shifted = np.roll(image, 191 - col if col > 95 else -col, axis=1)
    assert "small_field" in _flags(shifted)


def test_bright_central_light_is_lens_light():
    image = _clean_lens()
    y, x = np.mgrid[:192, :192] - 95.5
    image = image + 2.0 * np.exp(-0.5 * (x ** 2 + y ** 2) / 6.0 ** 2)
    assert "lens_light" in _flags(image / image.max())


def test_wrong_lens_is_out_of_distribution_and_scores_high():
    wrong = np.array([[2.8, 0.5, 0.3, -0.25, 0.25]])
    stats_right = flags.image_statistics(_clean_lens()[None], PARAMS)
    stats_wrong = flags.image_statistics(_clean_lens()[None], wrong)
    assert stats_wrong["focus_ratio"][0] > 3 * stats_right["focus_ratio"][0]
    pct = flags.ood_percentile(stats_wrong, flags.DEFAULT_THRESHOLDS)[0]
    assert pct > flags.ood_percentile(stats_right, flags.DEFAULT_THRESHOLDS)[0]


def test_thresholds_round_trip_through_calibration_json(tmp_path):
    images = np.stack([_clean_lens(seed=s) for s in range(20)])
    stats = flags.image_statistics(images, np.repeat(PARAMS, 20, axis=0))
    fitted = flags.fit_flag_thresholds(stats)
    assert np.mean(stats["significance"] < fitted["significance"]) <= 0.05
    write_calibration(tmp_path / CALIBRATION_JSON, {"flags": fitted})
    loaded = flags.model_thresholds(load_calibration(tmp_path), screen=False)
    assert loaded.pop("screen") is None
    assert loaded == json.loads(json.dumps(fitted))
    assert flags.model_thresholds(None)["significance"] == flags.DEFAULT_THRESHOLDS["significance"]


def test_flags_column_in_csv_and_json(tmp_path):
    noise = np.random.default_rng(3).normal(size=(2, 100, 100)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    model = shipped_weights_dir() / "alexnet"
    predict_files(model, [str(tmp_path / "noise.npy")], output=str(tmp_path / "t.csv"))
    header, first = (tmp_path / "t.csv").read_text().splitlines()[:2]
    cells = dict(zip(header.split(","), first.split(",")))
    assert set(cells["flags"].split(";")) >= {"no_lens", "small_field"}
    predict_files(model, [str(tmp_path / "noise.npy")], output=str(tmp_path / "t.json"))
    rows = json.loads((tmp_path / "t.json").read_text())
    assert isinstance(rows[0]["flags"], list) and "no_lens" in rows[0]["flags"]
    assert 0.0 <= rows[0]["ood_percentile"] <= 100.0


def test_warning_line_names_file_reason_and_advice():
    (line,) = flag_messages.warning_lines({"a.fits": {"lens_light": 1}})
    assert "a.fits" in line and "lens_light" in line and "--bands" in line


def test_the_flag_budgets_sum_to_at_most_two_percent():
    # every threshold leaves its budget of clean validation lenses flagged; at most 2% of clean
    # lenses may raise any flag (docs/design.md §8.7), so the budgets may not add up to more
    total = sum(flags.QUANTILE_BUDGET.values()) + sum(SCREEN_BUDGET.values())
    assert total <= 0.02 + 1e-12
    assert all(v >= 0 for v in list(flags.QUANTILE_BUDGET.values()) + list(SCREEN_BUDGET.values()))
