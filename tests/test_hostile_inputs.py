"""Hostile inputs through ``ensai_tf.cli.main``: one clean line, exit 2, nothing lost, no payload run.

A fast subset of the catalogue that ``tools/stress.py`` runs in subprocesses
(``python tools/stress.py`` prints its totals table): numbers out of range or
not finite, config values that would allocate without bound, YAML bombs and
Python tags, combiner records reaching outside their folder, outputs that
would replace the user's files, and a full disk while simulating.
"""

import hashlib
import json
import os
import signal

import numpy as np
import pytest

from ensai_tf import cli, demo
from ensai_tf.config import ConfigError, load_config, quote_value
from ensai_tf.data import writer
from ensai_tf.dirlock import ModelDirLock
from ensai_tf.errors import InputError, ModelDirError
from ensai_tf.models import stored_combiner
from ensai_tf.realdata import masks, psf


def _refused(capsys, argv):
    """cli.main(argv) exits 2 with one 'ensai ...: error: ...' line and no traceback."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ensai ") and ": error: " in last, err
    assert "Traceback" not in err
    return last


def _refused_by_argparse(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("option, value", [
    ("--dec", "200"), ("--dec", "nan"), ("--ra", "400"), ("--ra", "inf"), ("--x", "nan"),
    ("--y=-1e308", None), ("--pixel-scale", "1e308"), ("--pixel-scale", "0"),
    ("--pixel-scale", "1e-308"), ("--batch-size", "0"), ("--batch-size", "1000000000000"),
])
def test_predict_numbers_are_finite_and_in_range(capsys, option, value):
    extra = [option] if value is None else [option, value]
    last = _refused_by_argparse(capsys, ["predict", "m", "a.fits", *extra])
    option = option.split("=")[0]
    assert option in last and ("range" in last or "not" in last), last


@pytest.mark.parametrize("fwhm", [("0.1", "inf"), ("0.1", "1e5"), ("-1", "1"), ("nan", "1")])
def test_psf_fwhm_is_capped(capsys, fwhm):
    last = _refused_by_argparse(capsys, ["predict", "m", "--bands", "a", "b", "--psf-fwhm",
                                         *fwhm])
    assert "--psf-fwhm" in last and "5 arcsec" in last or "not a number" in last, last


def test_psf_matching_refuses_a_kernel_beyond_its_cap():
    image = np.ones((8, 8))
    with pytest.raises(InputError, match="at most 5 arcsec"):
        psf.match_psfs(image, image, 0.1, 1e5)
    with pytest.raises(InputError, match="sigma .* pixels; at most 200"):
        psf.match_psfs(image, image, 0.1, 4.0, pixel_scale=1e-4)


@pytest.mark.parametrize("spec", ["nan,nan", "inf,1", "1e308,1e308"])
def test_mask_positions_are_finite(spec):
    with pytest.raises(InputError, match="out of range"):
        masks.parse_mask_specs([spec])


def test_sky_masks_are_on_the_sky():
    with pytest.raises(InputError, match="0 to 360 degrees"):
        masks.parse_mask_specs(["1000,1000"], pixel=False)


@pytest.mark.parametrize("command", [["simulate", "--out", "x", "-n", "0"],
                                     ["simulate", "--out", "x", "-n", "1000000000000"],
                                     ["demo", "--n", "-1"], ["evaluate", "m", "--n", "0"],
                                     ["combine", "--models", "a", "--model-dir", "b", "--steps",
                                      "0"]])
def test_counts_are_in_range(capsys, command):
    assert "range" in _refused_by_argparse(capsys, command)


@pytest.mark.parametrize("seed", [str(2 ** 80), "-1"])
def test_seeds_fit_the_stateless_streams(capsys, tmp_path, seed):
    """TensorFlow's stateless seeds are int64: a larger seed is one line, not a TypeError."""
    code = cli.main(["simulate", "--out", str(tmp_path / "s"), "-n", "1", "--seed", seed])
    err = capsys.readouterr().err
    assert code == 2 and "seed must be an integer from 0 to 2**63 - 1" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("override", ["train.batch_size=1e23", "train.batch_size=nan",
                                      "image.npix=1e400", "image.npix=100000",
                                      "train.learning_rate=inf", "train.batch_size=" + "9" * 5000,
                                      "x" * 5000 + ".y=1"], ids=lambda o: o[:30])
def test_config_values_are_finite_and_bounded(override):
    with pytest.raises(ConfigError) as info:
        load_config(preset="smoke", overrides=[override])
    message = str(info.value)
    # the value is quoted in at most MAX_QUOTED characters (a key list may follow)
    assert "\n" not in message and "x" * 100 not in message and "9" * 100 not in message


def test_yaml_alias_bomb_and_python_tag_are_refused_quickly(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{'abcdefghi'[i]}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ntrain:\n  batch_size: *i\n")
    with pytest.raises(ConfigError) as info:
        load_config(bomb, preset="smoke")
    assert len(str(info.value)) < 400
    marker = tmp_path / "ran"
    tag = tmp_path / "tag.yaml"
    tag.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(tag, preset="smoke")
    assert not marker.exists()
    big = tmp_path / "int.yaml"
    big.write_text("image:\n  npix: 1e400\n")
    with pytest.raises(ConfigError, match="image.npix"):
        load_config(big, preset="smoke")


def test_quoted_values_are_short():
    assert len(quote_value("x" * 10**6)) <= 80
    nested = [[[[1] * 100] * 100] * 100]
    assert len(quote_value(nested)) <= 80


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_predict_refuses_to_replace_an_existing_output(capsys, tmp_path):
    have = tmp_path / "have.csv"
    have.write_text("user data\n")
    before = _digest(have)
    last = _refused(capsys, ["predict", "m", "a.npy", "--output", str(have)])
    assert "--overwrite" in last and _digest(have) == before
    plot = tmp_path / "p.png"
    plot.write_text("user data\n")
    last = _refused(capsys, ["predict", "m", "--bands", "a", "b", "--plot", str(plot)])
    assert "--overwrite" in last and plot.read_text() == "user data\n"


def test_simulate_overwrite_keeps_files_it_did_not_write(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.keras").write_text("a training run")
    with pytest.raises(InputError, match="did not write.*model.keras"):
        writer.write_observed_dataset(out, 1, overwrite=True, progress=False)
    assert (out / "model.keras").read_text() == "a training run"


def test_simulate_refuses_a_folder_held_by_another_command(tmp_path):
    out = tmp_path / "busy"
    with ModelDirLock(out, "ensai train"):
        with pytest.raises(ModelDirError, match="in use"):
            writer.write_observed_dataset(out, 1, overwrite=True, progress=False)


def test_simulate_refuses_more_lenses_than_the_disk_holds(tmp_path, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(writer.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(InputError, match="MB are free"):
        writer.write_observed_dataset(tmp_path / "out", 10, progress=False)
    assert not any(tmp_path.iterdir())


def _record(folder, backbone):
    """The shipped combiner.json in ``folder`` with every backbone path set to ``backbone``."""
    shipped = json.loads((stored_combiner.trusted_roots(folder)[1] / "combined"
                          / "combiner.json").read_text())
    folder.mkdir(parents=True)
    backbones = [backbone] * len(shipped["backbones"])
    (folder / "combiner.json").write_text(json.dumps({**shipped, "backbones": backbones}))
    return folder


@pytest.mark.parametrize("backbone", ["/etc/passwd", "../../../../../../etc/x.keras"])
def test_combiner_backbones_outside_its_folder_are_refused_before_reading(tmp_path, backbone):
    folder = _record(tmp_path / "deep" / "comb", backbone)
    with pytest.raises(ModelDirError, match="outside the folder.*--trust-savedmodel"):
        stored_combiner.load_combined(folder)


def test_combiner_record_of_hostile_shapes_is_refused(tmp_path):
    folder = _record(tmp_path / "comb", "b.keras")
    record = json.loads((folder / "combiner.json").read_text())
    for bad in ({"backbones": "b.keras"}, {"backbone_sha256": [1, 2, 3, 4, 5]},
                {"reference": 99}, {"mode": "exec"}, {"backbones": ["b.keras"] * 10**5}):
        (folder / "combiner.json").write_text(json.dumps({**record, **bad}))
        with pytest.raises(ModelDirError, match="combiner.json"):
            stored_combiner.load_combined(folder)
    (folder / "combiner.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ModelDirError, match="nested too deeply|not a combiner"):
        stored_combiner.load_combined(folder)


def test_os_errors_become_one_line_naming_the_path(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    last = _refused(capsys, ["simulate", "--out", str(blocker / "sub"), "-n", "1", "--quiet",
                             "--preset", "smoke"])
    assert str(blocker) in last


def test_sigterm_is_handled_like_sigint(capsys, monkeypatch):
    def terminated(**kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(demo, "run_demo", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["demo", "--n", "1"]) == 143
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before
