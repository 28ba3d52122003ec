"""Tests of ensai_tf.data.writer.write_observed_dataset (``ensai simulate``).

The ray-tracing simulator is replaced by the cheap stateless ring generator
of fake_simulator.py (the observation chain, plotting and file handling are
real); ``test_curves_*`` needs the real caustics module.
"""

import csv
import dataclasses

import numpy as np
import pytest
import yaml

from ensai_tf import cli
from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf.data import pipeline
from ensai_tf.data import writer
from ensai_tf.errors import InputError
from fake_simulator import install as install_fake_simulator  # tests/data/ is on sys.path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fake_simulator():
    with pytest.MonkeyPatch.context() as mp:
        install_fake_simulator(mp)
        yield


@pytest.fixture(scope="module")
def cfg():
    smoke = config_lib.get_preset("smoke")
    return dataclasses.replace(smoke, data=dataclasses.replace(smoke.data, sim_batch_size=4))


@pytest.fixture(scope="module")
def written(fake_simulator, cfg, tmp_path_factory):
    """One 5-lens test-split folder (batches of 4 and 1) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("sim") / "lenses"
    return writer.write_observed_dataset(out, 5, seed=3, config=cfg, split="test",
                                         progress=False)


def test_writes_every_file(written):
    assert sorted(p.name for p in written.iterdir()) == [
        "config.yaml", "contact_sheet.png", "draws.npz", "images.npy", "params.csv"]
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")]
    images = np.load(written / "images.npy")
    assert images.shape == (5, 192, 192, 1) and images.dtype == np.float32
    assert np.all(np.isfinite(images)) and np.any(images != 0)
    assert (written / "contact_sheet.png").read_bytes()[:8] == PNG_MAGIC


def test_params_csv_matches_the_draws(written):
    with open(written / "params.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == writer.CSV_COLUMNS
    assert rows[0][:5] == list(conventions.PARAM_NAMES)
    table = np.array([[float(v) for v in r[:8]] for r in rows[1:]])
    assert table.shape == (5, 8)
    draws = np.load(written / "draws.npz")
    np.testing.assert_allclose(table[:, :5], draws["params"], rtol=1e-6)  # 7 significant digits
    np.testing.assert_array_equal(draws["index"], np.arange(5))
    q = 1.0 - np.hypot(draws["params"][:, 1], draws["params"][:, 2])
    np.testing.assert_allclose(table[:, 5], q, rtol=1e-6, atol=1e-7)
    pa = conventions.mass_major_axis_angle(draws["params"][:, 1], draws["params"][:, 2])
    np.testing.assert_allclose(table[:, 6], pa, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(table[:, 7], draws["magnification"], rtol=1e-6)
    assert {r[8] for r in rows[1:]} == {"clumpy"}  # the fake simulator's family 0
    assert {"seed", "clean_params", "draws.shift_x_pix", "draws.noise_rms"} <= set(draws.files)


def test_lenses_equal_the_pipelines_test_stream(written, cfg):
    """Example i of the folder is example i of the split's seed stream."""
    draws = np.load(written / "draws.npz")
    again = pipeline.recreate_examples("test", [4], cfg, seed=3)
    np.testing.assert_array_equal(draws["seed"][4], again["seed"][0])
    np.testing.assert_array_equal(draws["params"][4], again["params"][0])
    np.testing.assert_allclose(np.load(written / "images.npy")[4], again["image"][0],
                               atol=1e-5)  # batch of 1 vs 1-tail batch: float32 rounding


def test_config_yaml_round_trips(written, cfg):
    data = yaml.safe_load((written / "config.yaml").read_text())
    assert config_lib.config_from_dict(data, base=config_lib.get_preset("paper")) == cfg


def test_refuses_a_non_empty_folder_unless_overwrite(fake_simulator, cfg, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        writer.write_observed_dataset(out, 2, config=cfg, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"
    # --overwrite replaces only an earlier simulate output, never the user's own files
    with pytest.raises(InputError, match="did not write.*notes.txt"):
        writer.write_observed_dataset(out, 2, config=cfg, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"
    (out / "notes.txt").unlink()
    writer.write_observed_dataset(out, 2, config=cfg, progress=False)
    writer.write_observed_dataset(out, 2, config=cfg, progress=False, overwrite=True,
                                  clean=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(writer.SIMULATE_FILES)
    arcs = np.load(out / "images.npy")
    np.testing.assert_array_equal(arcs.max(axis=(1, 2, 3)), 1.0)  # clean arcs: peak exactly 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        writer.write_observed_dataset(tmp_path / "file", 2, config=cfg, progress=False)
    with pytest.raises(InputError, match="positive integer"):
        writer.write_observed_dataset(tmp_path / "new", 0, config=cfg, progress=False)


def test_interrupted_run_leaves_nothing(fake_simulator, cfg, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_contact_sheet", fail)
    with pytest.raises(KeyboardInterrupt):
        writer.write_observed_dataset(tmp_path / "out", 2, config=cfg, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_curves_enclose_pi_theta_e_squared(fake_simulator, cfg, tmp_path):
    """docs/design.md §0: the tangential critical curve encloses pi theta_E^2 (200-gon: rtol 1e-3)."""
    pytest.importorskip("ensai_tf.lensing.caustics")
    params = np.array([[1.2, 0.3, -0.2, 0.1, -0.05], [0.7, 0.0, 0.05, 0.0, 0.0]])
    curves = writer.lens_curves(params)
    for p, c in zip(params, curves):
        np.testing.assert_array_equal(c["critical"][0], c["critical"][-1])  # closed
        x, y = c["critical"][:-1, 0], c["critical"][:-1, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        np.testing.assert_allclose(area, np.pi * p[0] ** 2, rtol=1e-3)
        assert c["caustic"].shape[1] == 2
    out = writer.write_observed_dataset(tmp_path / "c", 2, config=cfg, curves=True,
                                        progress=False)
    assert (out / "contact_sheet.png").read_bytes()[:8] == PNG_MAGIC


def test_ctrl_c_during_ensai_simulate_keeps_the_old_folder(fake_simulator, tmp_path, monkeypatch,
                                                         capsys):
    """KeyboardInterrupt after the first batch: exit 130, old contents intact, no temp folder."""
    out = tmp_path / "lenses"
    out.mkdir()
    (out / "params.csv").write_text("old run")  # an earlier simulate output
    real_rows = writer.csv_rows
    calls = []

    def interrupt_second_batch(batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_rows(batch)

    monkeypatch.setattr(writer, "csv_rows", interrupt_second_batch)
    code = cli.main(["simulate", "--out", str(out), "-n", "6", "--overwrite", "--quiet",
                     "--preset", "smoke", "--set", "data.sim_batch_size=2"])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenses"]
    assert sorted(p.name for p in out.iterdir()) == ["params.csv"]
    assert (out / "params.csv").read_text() == "old run"
