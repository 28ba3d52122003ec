"""``predict_files`` end to end (tables, streaming, Ctrl-C) and the rows of ``inference``."""

import csv
import json

import numpy as np
import pytest

from ensai_tf import conventions, inference, prediction, tables
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.preprocess import images as prep

from astropy.io import fits


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """A .keras model whose outputs are known linear functions of the image.

    Output k = mean(image) * (k + 1): checking it proves the prepared image
    (not some other array) reached the network.
    """
    import keras

    inputs = keras.Input((192, 192, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(5, use_bias=False, kernel_initializer="zeros", name="out")
    outputs = dense(pooled)
    model = keras.Model(inputs, outputs)
    dense.set_weights([np.arange(1, 6, dtype=np.float32)[None, :]])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


# ------------------------------------------------------------------ angles


@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_position_angle_east_of_north(rotation, celestial_wcs):
    """Major axis along +y (phi = 0) on a north-up east-left grid is PA 0
    (north); rotating the WCS by `rotation` rotates the PA by the same."""
    wcs = celestial_wcs(0.04, 192, rotation)
    item = prep.PreparedImage("a", "a", 0, np.zeros((192, 192, 1), np.float32),
                                 (95.5, 95.5), (0.04, 0.04), wcs)
    # e = (0.3, 0): phi = 0, major axis at +90 deg in the image frame (+y)
    (row,) = inference.result_rows([item], np.array([[1.0, 0.3, 0.0, 0.0, 0.0]]))
    assert row["pa_frame"] == "east_of_north"
    expected = np.mod(rotation, 180.0)
    assert min(abs(row["pa_deg"] - expected), 180 - abs(row["pa_deg"] - expected)) < 1e-6
    np.testing.assert_allclose(row["q"], 0.7, rtol=1e-12)
    # e = (0, 0.3): phi = 90 deg, major axis along +x = west on this grid: PA 90 (mod 180)
    (row,) = inference.result_rows([item], np.array([[1.0, 0.0, 0.3, 0.0, 0.0]]))
    expected = np.mod(90.0 + rotation, 180.0)
    assert min(abs(row["pa_deg"] - expected), 180 - abs(row["pa_deg"] - expected)) < 1e-6


def test_position_angle_image_frame_without_wcs():
    item = prep.PreparedImage("a", "a", 0, np.zeros((192, 192, 1), np.float32),
                                 (10.0, 20.0), (0.04, 0.04), None)
    (row,) = inference.result_rows([item], np.array([[1.0, 0.3, 0.0, 0.08, -0.04]]))
    assert row["pa_frame"] == "image_x_towards_y"
    np.testing.assert_allclose(row["pa_deg"], 90.0, atol=1e-9)
    np.testing.assert_allclose((row["x_pix"], row["y_pix"]), (12.0, 19.0), atol=1e-9)
    assert row["ra_deg"] is None


# ------------------------------------------------------------------ end to end


def test_predict_files_npy_and_fits_to_csv_and_json(tmp_path, tiny_model_path, capsys, arc_image,
                                                    celestial_wcs, write_fits):
    """Known model outputs (k+1)*mean(image) reach both CSV and JSON tables."""
    np.save(tmp_path / "a.npy", arc_image())
    fpath = write_fits(tmp_path / "b.fits", arc_image(), celestial_wcs(0.04, 192))
    out_csv = tmp_path / "out.csv"
    rows = prediction.predict_files(tiny_model_path, [str(tmp_path / "a.npy"), fpath],
                                 output=str(out_csv), batch_size=1)
    assert "ms per lens" in capsys.readouterr().err
    with open(out_csv) as f:
        table = list(csv.DictReader(f))
    assert [r["file"] for r in table] == [str(tmp_path / "a.npy"), fpath]
    assert [r["pa_frame"] for r in table] == ["image_x_towards_y", "east_of_north"]
    for item, row in zip(prep.prepare_images(str(tmp_path / "a.npy")) * 2, table):
        mean = float(np.mean(item.image))
        got = [float(row[n]) for n in conventions.PARAM_NAMES]
        # float32 network vs float64 mean
        np.testing.assert_allclose(got, mean * np.arange(1, 6), rtol=1e-5)
    out_json = tmp_path / "out.json"
    prediction.predict_files(tiny_model_path, [fpath], output=str(out_json))
    data = json.loads(out_json.read_text())
    assert data[0]["theta_e"] == pytest.approx(rows[1]["theta_e"], rel=1e-6)
    assert set(data[0]) == set(tables.OUTPUT_COLUMNS)


def test_predict_files_refuses_bad_output_before_writing(tmp_path, tiny_model_path, arc_image):
    np.save(tmp_path / "a.npy", arc_image())
    with pytest.raises(InputError, match=r"unknown format \.txt"):
        prediction.predict_files(tiny_model_path, [str(tmp_path / "a.npy")],
                              output=str(tmp_path / "o.txt"))
    with pytest.raises(InputError, match=r"does not exist"):
        prediction.predict_files(tiny_model_path, [str(tmp_path / "a.npy")],
                              output=str(tmp_path / "no" / "o.csv"))


def test_bad_image_leaves_existing_output_untouched(tmp_path, tiny_model_path, arc_image):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    np.save(tmp_path / "a.npy", arc_image())
    bad = arc_image()
    bad[0, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="bad.npy"):
        prediction.predict_files(tiny_model_path, [str(tmp_path / "a.npy"), str(tmp_path / "bad.npy")],
                              output=str(out))
    assert out.read_text() == "precious\n"


def test_missing_and_corrupt_models(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        inference.load_predictor(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="is not a model"):
        inference.load_predictor(str(tmp_path / "empty"))
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelDirError, match="corrupt"):
        inference.load_predictor(str(tmp_path / "broken.keras"))


# ------------------------------------------------------------------ streaming


def _fake_predictor(monkeypatch, npix=32, on_call=None):
    """load_predictor -> a numpy stand-in recording each batch (no TensorFlow)."""
    calls = []

    def predict_fn(images):
        calls.append(len(images))
        if on_call is not None:
            on_call(len(calls))
        mean = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64)
        return mean[:, None] * np.arange(1, 6)

    monkeypatch.setattr(prediction, "load_predictor",
                        lambda model, raw=False, trust_savedmodel=False, with_spread=True:
                        (predict_fn, npix))
    return calls


def _small_files(folder, n, npix=32):
    x, y = conventions.pixel_grid(npix, 0.04)
    paths = []
    for i in range(n):
        ring = np.exp(-0.5 * ((np.hypot(x, y) - 0.3 - 0.01 * i) / 0.05) ** 2) + 0.01
        paths.append(str(folder / f"im{i:03d}.npy"))
        np.save(paths[-1], ring)
    return paths


def test_predict_files_holds_at_most_one_batch_of_images(tmp_path, monkeypatch):
    """25 files, batch 4: never more than 4 prepared images alive, whatever the file count."""
    import weakref

    alive = [0]  # PreparedImage objects not yet freed (CPython frees them at once)
    real_iter = prep.iter_prepared

    def freed():
        alive[0] -= 1

    def tracked(*args, **kwargs):
        for item in real_iter(*args, **kwargs):
            alive[0] += 1
            weakref.finalize(item, freed)
            yield item

    peak = []
    calls = _fake_predictor(monkeypatch, on_call=lambda k: peak.append(alive[0]))
    monkeypatch.setattr(prediction, "iter_prepared", tracked)
    files = _small_files(tmp_path, 25)
    out = tmp_path / "out.csv"
    n = prediction.predict_files("model", files, output=str(out), batch_size=4, return_rows=False)
    assert n == 25
    assert calls[0] == 1 and calls[1:] == [4] * 6 + [1]  # warm-up, then 6 full batches and 1
    assert max(peak) <= 4
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert [r["file"] for r in table] == files


def test_streamed_json_equals_json_dump(tmp_path, monkeypatch):
    _fake_predictor(monkeypatch)
    files = _small_files(tmp_path, 3)
    rows = prediction.predict_files("model", files, output=str(tmp_path / "o.json"), batch_size=2)
    assert (tmp_path / "o.json").read_text() == json.dumps(rows, indent=1) + "\n"


@pytest.mark.parametrize("output", ["out.csv", "out.json", "-"])
def test_ctrl_c_midway_leaves_no_partial_output(tmp_path, monkeypatch, capsys, output):
    """KeyboardInterrupt in the third batch: the old output stays, no temp file, nothing printed."""
    from ensai_tf import cli

    def interrupt(k):
        if k == 3:
            raise KeyboardInterrupt

    _fake_predictor(monkeypatch, on_call=interrupt)
    files = _small_files(tmp_path, 6)
    target = tmp_path / output if output != "-" else None
    if target is not None:
        target.write_text("precious\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli.main(["predict", "model", *files, "--output", str(target or "-"),
                     "--batch-size", "2", "--overwrite"])
    captured = capsys.readouterr()
    assert code == 130 and "interrupted" in captured.err
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if target is not None:
        assert target.read_text() == "precious\n"


def test_bad_file_late_in_the_stream_leaves_no_output(tmp_path, monkeypatch):
    _fake_predictor(monkeypatch)
    files = _small_files(tmp_path, 5)
    np.save(tmp_path / "bad.npy", np.zeros((32, 32)))
    with pytest.raises(InputError, match=r"bad.npy: every pixel is masked"):
        prediction.predict_files("model", files + [str(tmp_path / "bad.npy")],
                              output=str(tmp_path / "o.csv"), batch_size=2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".o.csv", "o.csv"))]
    with pytest.raises(InputError, match="batch size 0"):
        prediction.predict_files("model", files, output=str(tmp_path / "o.csv"), batch_size=0)


def test_predict_files_gives_intervals_and_shear_for_a_gaussian_shear_head(tmp_path, arc_image):
    """A 14-output (diagonal, with shear) head: CSV has gamma and 68% interval columns,
    lo68 = mean - m std, hi68 = mean + m std with m = Phi^-1(0.84) (raw Gaussian) or the
    stored calibration's."""
    import keras
    import scipy.special

    from ensai_tf import uncertainty

    inputs = keras.Input((192, 192, 1))
    dense = keras.layers.Dense(14)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    kernel = np.zeros((1, 14), np.float32)
    kernel[0, :7] = np.arange(1, 8)
    bias = np.zeros(14, np.float32)
    bias[7:] = np.log(np.arange(1, 8) * 0.01) * 2  # std_k = 0.01 (k + 1)
    dense.set_weights([kernel, bias])
    (tmp_path / "m").mkdir()
    model.save(tmp_path / "m" / "model.keras")
    np.save(tmp_path / "a.npy", arc_image())
    rows = prediction.predict_files(str(tmp_path / "m"), [str(tmp_path / "a.npy")],
                                 output=str(tmp_path / "out.csv"))
    with open(tmp_path / "out.csv") as f:
        header = next(csv.reader(f))
    assert tuple(header) == tables.output_columns("diagonal", 7)
    row = rows[0]
    for k, name in enumerate(conventions.target_names(7)):
        assert row[f"{name}_std"] == pytest.approx(0.01 * (k + 1), rel=1e-5)
        assert row[f"{name}_hi68"] - row[name] == pytest.approx(
            scipy.special.ndtri(0.84) * row[f"{name}_std"], rel=1e-5)
    assert row["gamma_2"] == pytest.approx(7 / 1 * row["theta_e"], rel=1e-5)
    assert np.allclose(np.diag(row["covariance"]), [(0.01 * (k + 1)) ** 2 for k in range(7)])
    cal = {"levels": [0.5, 0.68, 0.9], "multipliers": [[0.5] * 7, [2.0] * 7, [3.0] * 7]}
    (tmp_path / "m" / "calibration.json").write_text(json.dumps(cal))
    row = prediction.predict_files(str(tmp_path / "m"), [str(tmp_path / "a.npy")],
                                output=str(tmp_path / "out2.json"))[0]
    assert row["x_l"] - row["x_l_lo68"] == pytest.approx(2.0 * row["x_l_std"], rel=1e-5)
    assert uncertainty.head_layout(14) == ("diagonal", 7)


def test_predict_files_symmetrize_closed_form_and_refuses_gaussian_heads(tmp_path,
                                                                       tiny_model_path, arc_image):
    """The tiny model's output is D4-invariant per image, so averaged over the 8 flips and
    rotations theta_E stays mean(image) and the lens centre becomes exactly 0."""
    np.save(tmp_path / "a.npy", arc_image())
    rows = prediction.predict_files(tiny_model_path, [str(tmp_path / "a.npy")],
                                 output=str(tmp_path / "out.csv"), symmetrize=True)
    mean = float(np.mean(prep.prepare_images(str(tmp_path / "a.npy"))[0].image))
    assert rows[0]["theta_e"] == pytest.approx(mean, rel=1e-5)
    assert rows[0]["x_l"] == pytest.approx(0.0, abs=1e-12)
    assert rows[0]["y_l"] == pytest.approx(0.0, abs=1e-12)
    import keras

    inputs = keras.Input((192, 192, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(inputs)))
    (tmp_path / "g").mkdir()
    model.save(tmp_path / "g" / "model.keras")
    with pytest.raises(InputError, match="point estimates only"):
        prediction.predict_files(str(tmp_path / "g"), [str(tmp_path / "a.npy")],
                              output=str(tmp_path / "g.csv"), symmetrize=True)
    assert not (tmp_path / "g.csv").exists()
