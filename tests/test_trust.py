"""Trust report: the bad sets, the flag rates on them, and the report files."""

import json

import numpy as np

from ensai_tf import config as config_lib
from ensai_tf import flags, trust
from ensai_tf.inference import load_predictor
from ensai_tf.model_dir import shipped_weights_dir
from ensai_tf.run_dir import run_config

MODEL = shipped_weights_dir() / "alexnet"


def test_noise_and_blank_sky_are_deterministic_and_field_sized():
    a, b = trust.noise_images(3, seed=5), trust.noise_images(3, seed=5)
    assert a.shape == (3, 192, 192) and np.array_equal(a, b)
    assert trust.blank_sky_images(2).shape == (2, 192, 192)


def test_small_cutouts_are_central_crops():
    images = np.arange(2 * 192 * 192, dtype=np.float64).reshape(2, 192, 192)
    crops = trust.small_cutouts(images, 100)
    assert crops.shape == (2, 100, 100)
    assert crops[0, 0, 0] == images[0, 46, 46]


def test_edge_cut_moves_the_brightest_point_onto_the_edge():
    image = np.random.default_rng(0).normal(0.0, 0.01, size=(1, 192, 192))
    image[0, 100:104, 150:154] = 1.0
    cut, shifts = trust.edge_cut_images(image)
    # the brightest 3x3 median lies inside the block, so the block ends on the last column
    assert shifts[0, 1] == 0 and 191 - 153 <= shifts[0, 0] <= 191 - 150
    assert cut[0, 101:103, 191].min() > 0.9


def test_shifted_configs_leave_the_training_prior():
    cfg = config_lib.get_preset("paper")
    shifted = trust.shifted_configs(cfg)
    assert shifted["shear"].lens.shear and shifted["shear"].lens.shear_gamma[1] == 0.1
    assert shifted["wide_psf"].observe.psf_prob == 1.0
    assert shifted["wide_psf"].observe.psf_sigma_pix[0] == 2 * cfg.observe.psf_sigma_pix[1]


def test_noise_and_small_cutouts_are_detected():
    predict_fn, _ = load_predictor(MODEL)
    t = flags.DEFAULT_THRESHOLDS
    assert trust.flag_rates(predict_fn, trust.blank_sky_images(10), t)["no_lens"] >= 0.9
    ring = np.zeros((4, 192, 192))
    y, x = np.mgrid[:192, :192] - 95.5
    ring[:] = np.exp(-0.5 * (np.hypot(x, y) - 25.0) ** 2 / 2.0 ** 2)
    ring += 0.02 * np.random.default_rng(0).normal(size=ring.shape)
    assert trust.flag_rates(predict_fn, trust.small_cutouts(ring, 100), t)["small_field"] == 1.0


def test_unlensed_galaxies_are_single_compact_sources(tmp_path):
    cfg = config_lib.apply_overrides(run_config(MODEL), [f"data.cache_dir={tmp_path}"])
    images = trust.unlensed_galaxy_images(cfg, 3)
    assert images.shape == (3, 192, 192) and np.isfinite(images).all()
    again = trust.unlensed_galaxy_images(cfg, 3)
    assert np.array_equal(images, again)


def test_evaluate_trust_writes_markdown_json_and_png(tmp_path):
    cfg = config_lib.apply_overrides(run_config(MODEL), [f"data.cache_dir={tmp_path / 'cache'}",
                                                         "data.test_size=4"])
    result = trust.evaluate_trust(MODEL, n=3, out_dir=tmp_path / "out", config=cfg)
    out = tmp_path / "out"
    for name in (trust.TRUST_MD, trust.TRUST_JSON, trust.FLAGS_PNG):
        assert (out / name).is_file()
    saved = json.loads((out / trust.TRUST_JSON).read_text())
    assert set(saved["detection"]) == set(trust.BAD_SET_FLAGS)
    assert saved["flags"]["clean_test"]["n"] == 3
    assert result["false_positive_rate"] == saved["false_positive_rate"]
    assert "Quality flags" in (out / trust.TRUST_MD).read_text()
