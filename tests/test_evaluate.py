"""Tests of ensai_tf.evaluate on synthetic prediction sets with known errors."""

import json

import numpy as np
import pytest

from ensai_tf import calibration, config, conventions, evaluate, metrics
from ensai_tf.errors import InputError
from ensai_tf.model_dir import CALIBRATION_JSON, METRICS_JSON, MODEL_KERAS


def test_shear_bins_rms_closed_form():
    """Errors of e_x, e_y equal to c_b in bin b give rms c_b in that bin."""
    gamma = np.array([0.005, 0.002, 0.03, 0.07, 0.12, 0.2, 0.3])
    c = np.array([0.11, 0.11, 0.15, 0.18, 0.2, 0.23, 0.23])
    true = np.tile([1.0, 0.6, 0.0, 0.0, 0.0], (len(gamma), 1))
    pred = true.copy()
    pred[:, 1] += c
    pred[:, 2] -= c
    rows = evaluate.shear_bins(pred, true, gamma)
    assert [r["n"] for r in rows] == [2, 1, 1, 1, 2]  # 0.3 is in the last (closed) bin
    expected = [0.11, 0.15, 0.18, 0.2, 0.23]
    for row, e in zip(rows, expected):
        np.testing.assert_allclose(row["rms_ellipticity"], e, rtol=1e-12)
        np.testing.assert_allclose(row["rms"]["e_x"], e, rtol=1e-12)
        assert row["rms"]["theta_e"] == 0.0
    empty = evaluate.shear_bins(pred, true, np.full(len(gamma), 0.2), edges=(0.0, 0.1, 0.3))
    assert empty[0]["n"] == 0 and np.isnan(empty[0]["rms_ellipticity"])


# ------------------------------------------------------------------ end to end

E2E_NPIX = 48


@pytest.fixture
def tiny_keras_model(tmp_path):
    """A .keras model on 48x48 inputs: outputs (k + 1) * mean(image)."""
    import keras

    inputs = keras.Input((E2E_NPIX, E2E_NPIX, 1))
    dense = keras.layers.Dense(5, use_bias=False)
    outputs = dense(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    dense.set_weights([np.arange(1, 6, dtype=np.float32)[None, :]])
    path = tmp_path / "tiny.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One data cache for this file: the smoke test split (16 lenses) is simulated once per
    experiment, not per test (the cache key holds the config, seed and data code)."""
    return tmp_path_factory.mktemp("cache")


def _smoke_cfg(cache):
    # A 48-pixel (1.92") field only contains lenses with small Einstein radii.
    return config.apply_overrides(config.get_preset("smoke"),
                                  [f"image.npix={E2E_NPIX}", "lens.theta_e=[0.1, 0.5]",
                                   f"data.cache_dir={cache}"])


def test_evaluate_end_to_end_matches_direct_metrics(tmp_path, tiny_keras_model, cache):
    """evaluate() on the smoke test set = metrics.error_table of the same predictions."""
    cfg = _smoke_cfg(cache)
    result = evaluate.evaluate(tiny_keras_model, n=8, out_dir=tmp_path / "ev", config=cfg)
    images, true, _ = evaluate.collect_test_set(cfg, 8)
    assert images.shape == (8, E2E_NPIX, E2E_NPIX, 1)
    pred = np.mean(images, axis=(1, 2, 3))[:, None] * np.arange(1, 6)[None, :]
    expected = metrics.error_table(true, pred)
    for name in conventions.PARAM_NAMES:
        # float32 network vs float64 numpy mean
        np.testing.assert_allclose(result["metrics"][name]["rms"], expected[name]["rms"],
                                   rtol=1e-4)
    for name in ("metrics.json", "table1.md", "figure1.png", "residuals.png"):
        assert (tmp_path / "ev" / name).is_file()


def test_evaluate_symmetrize_averages_over_d4_closed_form(tmp_path, tiny_keras_model, cache,
                                                          monkeypatch):
    """The tiny model's output is a constant vector per image (mean(image) is D4-invariant):
    averaged over D4, theta_E is kept and the lens centre goes to exactly 0."""
    import shutil

    cfg = _smoke_cfg(cache)
    model = tmp_path / "m" / "tiny.keras"
    model.parent.mkdir()
    shutil.copy(tiny_keras_model, model)
    monkeypatch.chdir(tmp_path)
    result = evaluate.evaluate(str(model), n=8, config=cfg, symmetrize=True)
    assert result["symmetrize"] == "d4"
    # the default output folder is ./ensai_eval/<model name>, never inside the model folder
    assert (tmp_path / "ensai_eval" / "m-tiny-d4" / METRICS_JSON).is_file()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["tiny.keras"]
    images, true, _ = evaluate.collect_test_set(cfg, 8)
    pred = np.zeros_like(true)
    pred[:, 0] = np.mean(images, axis=(1, 2, 3))
    expected = metrics.error_table(true, pred)
    for name in ("theta_e", "x_l", "y_l"):
        np.testing.assert_allclose(result["metrics"][name]["rms"], expected[name]["rms"],
                                   rtol=1e-4)


def test_evaluate_symmetrize_refuses_a_gaussian_head(tmp_path, cache):
    path = _gaussian_tiny(tmp_path / "g", 10)
    with pytest.raises(InputError, match="point estimates"):
        evaluate.evaluate(path, n=2, out_dir=tmp_path / "ev", config=_smoke_cfg(cache),
                          symmetrize=True)


def test_evaluate_shear_experiment_bins_every_lens(tmp_path, tiny_keras_model, cache):
    result = evaluate.evaluate(tiny_keras_model, n=8, experiment="shear",
                               out_dir=tmp_path / "ev", config=_smoke_cfg(cache))
    assert sum(b["n"] for b in result["shear_bins"]) == 8
    assert "bins of external shear" in (tmp_path / "ev" / "table1.md").read_text()


def test_default_out_dir_names_the_model():
    assert str(evaluate.default_out_dir("trained_weights/alexnet")) == "ensai_eval/alexnet"
    assert str(evaluate.default_out_dir("runs/a/model.keras", "psf", True)) == \
        "ensai_eval/a-psf-d4"
    assert str(evaluate.default_out_dir("runs/a/best.keras")) == "ensai_eval/a-best"
    assert str(evaluate.default_out_dir("runs/a/saved_model")) == "ensai_eval/a"


def test_evaluate_twice_refuses_without_overwrite(tmp_path, tiny_keras_model, cache, capsys):
    """Like train and simulate: an existing report is replaced only with --overwrite, and the
    model's own folder (its shipped metrics.json) is never an output folder."""
    from ensai_tf import cli

    out = tmp_path / "ev"
    args = ["evaluate", tiny_keras_model, "--n", "4", "--out", str(out), "--preset", "smoke",
            "--set", f"image.npix={E2E_NPIX}", "--set", "lens.theta_e=[0.1, 0.5]",
            "--set", f"data.cache_dir={cache}"]
    assert cli.main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ensai evaluate: scored ") and "on 4 test lenses in " in last
    assert last.endswith(f"wrote {out} (table1.md, metrics.json, figure1.png, residuals.png)")
    assert cli.main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0
    with pytest.raises(InputError, match="model's own folder"):
        evaluate.evaluate(tiny_keras_model, n=4, out_dir=tmp_path, config=_smoke_cfg(cache),
                          overwrite=True)


def test_evaluate_warns_when_the_model_was_trained_on_other_images(tmp_path, tiny_keras_model,
                                                                    cache, capsys):
    """A network trained with lens light and peak normalisation, scored on the default test
    lenses (no lens light), is scored with one warning line naming both settings and the --set
    options that match its training; one trained like the test lenses gets no warning; one that
    reads two bands is refused before any lens is simulated; one without a config.yaml is not
    compared."""
    import shutil

    cfg = _smoke_cfg(cache)
    folder = tmp_path / "m"
    folder.mkdir()
    model = folder / MODEL_KERAS
    shutil.copy(tiny_keras_model, model)
    trained = config.apply_overrides(cfg, ["simulate.lens_light=true",
                                           "observe.peak_normalise=true"])
    config.save_config(trained, folder / "config.yaml")
    evaluate.evaluate(str(folder), n=4, out_dir=tmp_path / "ev", config=cfg)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "ensai evaluate: warning: m was trained with simulate.lens_light=true, "
        "observe.peak_normalise=true but these test lenses have simulate.lens_light=false, "
        "observe.peak_normalise=false; add --set simulate.lens_light=true --set "
        "observe.peak_normalise=true to score it on lenses like its training"]
    config.save_config(cfg, folder / "config.yaml")
    evaluate.evaluate(str(folder), n=4, out_dir=tmp_path / "ev", config=cfg, overwrite=True)
    assert "warning" not in capsys.readouterr().err
    config.save_config(config.apply_overrides(cfg, ["bands.count=2"]), folder / "config.yaml")
    with pytest.raises(config.ConfigError, match=r"reads 2-band images .* --set bands.count=2"):
        evaluate.evaluate(str(folder), n=4, out_dir=tmp_path / "ev2", config=cfg)
    assert not (tmp_path / "ev2").exists()
    # without a config.yaml the training images are unknown: nothing is compared
    (folder / "config.yaml").unlink()
    evaluate.evaluate(str(folder), n=4, out_dir=tmp_path / "ev", config=cfg, overwrite=True)
    assert "warning" not in capsys.readouterr().err


def test_evaluate_refuses_n_beyond_the_test_set(tmp_path, tiny_keras_model, cache):
    with pytest.raises(config.ConfigError, match="exceeds the fixed test set"):
        evaluate.evaluate(tiny_keras_model, n=10_000, out_dir=tmp_path / "ev",
                          config=_smoke_cfg(cache))
    assert not (tmp_path / "ev").exists()


def test_collect_fixed_split_reads_the_validation_set_not_the_test_set(cache):
    """The validation lenses tools/compare_on_validation.py chooses checkpoints on are the
    pipeline's fixed validation split (the first n of it), and none of them is a test lens."""
    from ensai_tf.data import pipeline

    cfg = _smoke_cfg(cache)
    images, true, _ = evaluate.collect_fixed_split(cfg, 4, "validation")
    assert images.shape == (4, E2E_NPIX, E2E_NPIX, 1) and true.shape == (4, 5)
    x, y = next(iter(pipeline.make_dataset("validation", cfg, batch_size=4,
                                           cache_dir=str(cache))))
    np.testing.assert_array_equal(images, x.numpy())
    np.testing.assert_array_equal(true, y.numpy().astype(np.float64))
    test_images, test_true, _ = evaluate.collect_test_set(cfg, 4)
    assert not np.any(np.all(np.isclose(true[:, None, :], test_true[None, :, :]), axis=-1))
    assert not np.array_equal(images, test_images)
    with pytest.raises(config.ConfigError, match="exceeds the fixed validation set"):
        evaluate.collect_fixed_split(cfg, cfg.data.val_size + 1, "validation")
    with pytest.raises(config.ConfigError, match="'train' is not a fixed split"):
        evaluate.collect_fixed_split(cfg, 2, "train")


def test_collect_fixed_split_reads_the_first_lenses_of_a_bigger_cache(tmp_path):
    """A verified cache of the whole split serves any first n lenses: nothing new is
    simulated, and they are bit for bit the lenses a cache of just n holds (stateless seeds),
    the last two of which it made in a batch of 2 instead of 4; the smallest cache that
    verifies is read, a corrupt one never."""
    from ensai_tf.data import pipeline

    folder = tmp_path / "cache"
    cfg = _smoke_cfg(folder)
    assert cfg.data.sim_batch_size == 4 and cfg.data.test_size == 16
    small, small_true, _ = evaluate.collect_fixed_split(cfg, 6, "test")
    (six,) = folder.iterdir()
    full = pipeline.materialise_split("test", cfg, cache_dir=str(folder))
    seed = cfg.data.seed
    assert pipeline.find_split_cache("test", cfg, seed, 5, folder) == six
    assert pipeline.find_split_cache("test", cfg, seed, 7, folder) == full
    assert pipeline.find_split_cache("test", cfg, seed, 17, folder) is None
    assert pipeline.find_split_cache("validation", cfg, seed, 1, folder) is None
    images, true, extras = evaluate.collect_fixed_split(cfg, 7, "test")
    assert sorted(folder.iterdir()) == sorted([six, full])
    assert images.shape[0] == true.shape[0] == 7 and all(len(v) == 7 for v in extras.values())
    np.testing.assert_array_equal(images[:6], small)
    np.testing.assert_array_equal(true[:6], small_true)
    data = bytearray((full / "image.npy").read_bytes())
    data[-1] ^= 1
    (full / "image.npy").write_bytes(bytes(data))
    assert pipeline.find_split_cache("test", cfg, seed, 7, folder) is None
    with pytest.raises(InputError, match="never cached"):
        pipeline.find_split_cache("train", cfg, seed, 1, folder)


# ----------------------------------------------- Gaussian heads and shear


def _gaussian_tiny(folder, width, log_var=-4.0):
    """A .keras Gaussian head on 48x48 inputs: means (k + 1) * mean(image), log var constant."""
    import keras

    inputs = keras.Input((E2E_NPIX, E2E_NPIX, 1))
    n = width // 2
    dense = keras.layers.Dense(width)
    outputs = dense(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((1, width), np.float32)
    kernel[0, :n] = np.arange(1, n + 1)
    bias = np.zeros(width, np.float32)
    bias[n:] = log_var
    dense.set_weights([kernel, bias])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_KERAS)
    return folder


def test_evaluate_reports_coverage_raw_and_with_the_stored_calibration(tmp_path, cache):
    """Coverage in metrics.json = calibration.coverage of the same means and stds; a
    calibration fitted on these very lenses gives nominal coverage within 1/n + 1e-9."""
    cfg = _smoke_cfg(cache)
    model = _gaussian_tiny(tmp_path / "g", 10)
    images, true, _ = evaluate.collect_test_set(cfg, 16)
    mean = np.mean(images, axis=(1, 2, 3), dtype=np.float64)[:, None] * np.arange(1, 6)[None, :]
    std = np.full_like(mean, np.exp(-2.0))
    result = evaluate.evaluate(str(model), n=16, out_dir=tmp_path / "ev", config=cfg)
    assert result["head"] == "diagonal" and result["coverage"]["calibrated"] is None
    want = calibration.coverage(true, mean, std)
    for k, name in enumerate(conventions.PARAM_NAMES):
        assert result["coverage"]["raw"]["0.68"][name] == pytest.approx(want[0.68][k], abs=1 / 16)
    cal = calibration.fit_interval_calibration(true, mean, std, levels=(0.5, 0.68, 0.95, 0.99))
    (model / CALIBRATION_JSON).write_text(json.dumps(cal))
    result = evaluate.evaluate(str(model), n=16, out_dir=tmp_path / "ev2", config=cfg)
    for level in ("0.68", "0.95"):
        for name in conventions.PARAM_NAMES:
            assert abs(result["coverage"]["calibrated"][level][name] - float(level)) <= 1 / 16 + 1e-9
    assert (tmp_path / "ev2" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Interval coverage" in (tmp_path / "ev2" / "table1.md").read_text()


def test_compare_shear_tables_a_point_and_a_shear_network(tmp_path, tiny_keras_model, cache):
    """Two networks on the same shear lenses; the 7-output one also gets gamma errors that
    equal the error table of its gamma columns."""
    cfg = _smoke_cfg(cache)
    shear_model = _gaussian_tiny(tmp_path / "s", 14)
    results = evaluate.compare_shear([tiny_keras_model, str(shear_model)], tmp_path / "cmp", n=8,
                                     config=cfg)
    text = (tmp_path / "cmp" / "shear_comparison.md").read_text()
    assert "| 1-tiny.keras | 2-s |" in text and "gamma < 0.01: 0.11" in text
    assert "shear_metrics" not in results[0] and set(results[1]["shear_metrics"]) == {
        "gamma_1", "gamma_2"}
    images, true, extras = evaluate.collect_test_set(config.experiment_config(cfg, "shear"), 8)
    gamma = np.stack([extras["gamma_1"], extras["gamma_2"]], -1)
    pred = np.mean(images, axis=(1, 2, 3), dtype=np.float64)[:, None] * np.arange(1, 8)[None, :]
    want = metrics.error_table(np.concatenate([true, gamma], 1), pred)
    assert results[1]["shear_metrics"]["gamma_2"]["rms"] == pytest.approx(
        want["gamma_2"]["rms"], rel=1e-4)
    assert sum(b["n"] for b in results[1]["shear_bins"]) == 8
