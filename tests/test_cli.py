"""The ``ensai`` command: every bad input gets its message and a non-zero exit.

NaN/Inf image (names the file), wrong shape (says the
expected one), all-masked image, missing or corrupt model folder, existing
model folder without --resume/--overwrite, unknown --set key (lists the
valid ones), unwritable output path; and nothing existing is overwritten.
"""

import re

import numpy as np
import pytest

from ensai_tf import cli
from ensai_tf.flag_messages import FLAG_ADVICE


def _run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def tiny_model(tmp_path):
    """A .keras model mapping (192, 192, 1) images to 5 numbers."""
    import keras

    inputs = keras.Input((192, 192, 1))
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    return str(path)


def _arc(npix=192):
    y, x = np.indices((npix, npix))
    r = np.hypot(x - 95.5, y - 95.5) * 0.04
    return np.exp(-0.5 * ((r - 1.0) / 0.08) ** 2) + 0.01


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("simulate", "train", "combine", "evaluate", "predict", "demo"):
        assert name in out


def test_unknown_set_key_lists_valid_keys(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--model-dir", str(tmp_path / "m"), "--preset", "smoke",
                        "--set", "train.learnig_rate=1e-3")
    assert code == 2
    assert "unknown config key 'train.learnig_rate'" in err and "train.learning_rate" in err
    assert not (tmp_path / "m").exists()


def test_unknown_preset(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--model-dir", str(tmp_path / "m"), "--preset", "gpu")
    assert code == 2 and "unknown preset 'gpu'" in err and "cpu" in err


def test_existing_model_dir_is_refused_and_untouched(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("precious: 1\n")
    code, _, err = _run(capsys, "train", "--model-dir", str(run), "--preset", "smoke")
    assert code == 2
    assert "is not empty" in err and "--resume" in err and "--overwrite" in err
    assert (run / "config.yaml").read_text() == "precious: 1\n"


def test_resume_and_overwrite_together_are_refused(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--model-dir", str(tmp_path), "--preset", "smoke",
                        "--resume", "--overwrite")
    assert code == 2 and "contradict" in err


def test_resume_with_nothing_to_resume(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--model-dir", str(tmp_path / "new"), "--preset", "smoke",
                        "--resume")
    assert code == 2 and "nothing to resume" in err


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_missing_model_dir(capsys, tmp_path, command):
    np.save(tmp_path / "a.npy", _arc())
    extra = [str(tmp_path / "a.npy")] if command == "predict" else ["--preset", "smoke"]
    code, _, err = _run(capsys, command, str(tmp_path / "nope"), *extra)
    assert code == 2 and "nope' does not exist" in err


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_corrupt_model_dir(capsys, tmp_path, command):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.keras").write_bytes(b"\x00garbage")
    np.save(tmp_path / "a.npy", _arc())
    extra = [str(tmp_path / "a.npy")] if command == "predict" else ["--preset", "smoke"]
    code, _, err = _run(capsys, command, str(bad), *extra)
    assert code == 2 and "corrupt" in err and "bad" in err


def test_model_dir_without_a_model(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "a.npy", _arc())
    code, _, err = _run(capsys, "predict", str(tmp_path / "empty"), str(tmp_path / "a.npy"))
    assert code == 2 and "is not a model" in err


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a), "contains NaN"),
        (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.inf, a), "contains Inf"),
        (lambda a: a[:, :, None, None].repeat(2, axis=2), "wrong shape"),
        (lambda a: np.zeros_like(a), "every pixel is masked"),
    ],
    ids=["nan", "inf", "shape", "masked"],
)
def test_bad_images(capsys, tmp_path, tiny_model, make, pattern):
    path = tmp_path / "lens.npy"
    np.save(path, make(_arc()))
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    # even with --overwrite, a bad image leaves the existing table as it was
    code, stdout, err = _run(capsys, "predict", tiny_model, str(path), "--output", str(out),
                             "--overwrite")
    assert code == 2
    assert "lens.npy" in err and pattern in err
    if pattern == "wrong shape":
        assert "(192, 192, 1)" in err
    assert out.read_text() == "old\n" and stdout == ""


@pytest.mark.parametrize("output, pattern", [("missing/out.csv", "does not exist"),
                                             ("taken.csv", "is a folder"),
                                             ("out.txt", "unknown format")])
def test_unwritable_output(capsys, tmp_path, tiny_model, output, pattern, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.csv").mkdir()
    np.save(tmp_path / "a.npy", _arc())
    code, _, err = _run(capsys, "predict", tiny_model, str(tmp_path / "a.npy"), "--output", output)
    assert code == 2 and pattern in err


def test_predict_to_stdout(capsys, tmp_path, tiny_model):
    np.save(tmp_path / "a.npy", _arc())
    code, out, err = _run(capsys, "predict", tiny_model, str(tmp_path / "a.npy"))
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.startswith("file,index,theta_e,e_x,e_y,x_l,y_l,q,pa_deg,pa_frame")
    assert row.startswith(str(tmp_path / "a.npy"))
    assert "ms per lens" in err


def test_demo_without_weights_says_so(capsys, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "README.md").write_text("none yet")
    code, _, err = _run(capsys, "demo", "--weights", str(tmp_path / "w"), "--out",
                        str(tmp_path / "o"))
    assert code == 2 and "no trained weights are installed" in err and "ensai train" in err
    assert not (tmp_path / "o").exists()


def test_demo_default_weights_folder_without_weights(capsys, tmp_path):
    from ensai_tf import model_dir

    if any(model_dir.is_model(p) for p in model_dir.shipped_weights_dir().glob("*")):
        pytest.skip("weights are installed")
    code, _, err = _run(capsys, "demo", "--out", str(tmp_path / "o"))
    assert code == 2 and "no trained weights are installed" in err


def test_every_option_the_flag_advice_names_is_an_option_of_ensai_predict(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["predict", "--help"])
    predict_help = capsys.readouterr().out
    named = {o for advice in FLAG_ADVICE.values() for o in re.findall(r"--[a-z][a-z-]*", advice)}
    assert named, "the advice names no option"
    for option in named:
        assert re.search(re.escape(option) + r"\b", predict_help), option
