"""Fault tests of model folders: half-written, corrupt, foreign or incompatible.

Each fault must give a ``ModelDirError`` (an ``EnsaiError``) naming the path,
and through ``cli.main`` exit status 2 with one line and no traceback.
"""

import json

import numpy as np
import pytest

from ensai_tf import cli, inference, run_dir
from ensai_tf.config import load_config
from ensai_tf.errors import EnsaiError, ModelDirError

NPIX = 32


def _cli_refuses(argv, name, capsys):
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    assert name in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, preset="smoke")


# ------------------------------------------------------------------ training folders

def test_resume_with_corrupt_config_yaml(tmp_path, cfg):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text("train: [1\n")
    with pytest.raises(ModelDirError, match="config.yaml"):
        run_dir.prepare_model_dir(d, cfg, resume=True)


@pytest.mark.parametrize("content", [
    b"- a\n- b\n", b"42\n", b"",
    b"\xff\xfe\x00garbage\x80",
])
def test_resume_with_foreign_config_yaml(tmp_path, cfg, content):
    """A config.yaml that is a list, a scalar, binary or empty is refused by name."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_bytes(content)
    with pytest.raises(EnsaiError, match="config.yaml"):
        run_dir.prepare_model_dir(d, cfg, resume=True)


def test_resume_with_corrupt_backup_metadata(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text('{"epoch": ')
    with pytest.raises(ModelDirError, match="training_metadata.json"):
        run_dir.completed_epochs(backup)


@pytest.mark.parametrize("meta", [{"epoch": "x"}, {"no_epoch": 1}, [1, 2]])
def test_backup_metadata_of_wrong_shape(tmp_path, meta):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="training_metadata.json"):
        run_dir.completed_epochs(backup)


def test_model_dir_that_is_a_file_or_foreign_folder(tmp_path, cfg):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ModelDirError, match="afile"):
        run_dir.prepare_model_dir(f, cfg)
    other = tmp_path / "other_program"
    other.mkdir()
    (other / "weights.pt").write_bytes(b"\x80")
    with pytest.raises(ModelDirError, match="other_program"):
        run_dir.prepare_model_dir(other, cfg)
    with pytest.raises(ModelDirError, match="other_program"):
        run_dir.prepare_model_dir(other, cfg, resume=True)


def test_overwrite_leaves_foreign_files(tmp_path, cfg):
    """--overwrite deletes only this package's artefacts, never a user's file."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    (d / "config.yaml").write_text("old")
    run_dir.prepare_model_dir(d, cfg, overwrite=True)
    assert (d / "notes.txt").read_text() == "mine"
    assert not (d / "config.yaml").exists()


def test_cli_train_resume_of_empty_folder(tmp_path, capsys):
    d = tmp_path / "emptyrun"
    d.mkdir()
    _cli_refuses(["train", "--preset", "smoke", "--model-dir", str(d), "--resume"],
                 "emptyrun", capsys)


# ------------------------------------------------------------------ incompatible models

@pytest.fixture(scope="module")
def wrong_models(tmp_path_factory):
    """.keras models that load but do not fit: 3 outputs; 3 input channels."""
    import keras

    root = tmp_path_factory.mktemp("wrong")
    inputs = keras.Input((NPIX, NPIX, 1))
    three = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    three.save(root / "three_outputs.keras")
    rgb_in = keras.Input((NPIX, NPIX, 3))
    rgb = keras.Model(rgb_in, keras.layers.Dense(5)(keras.layers.Flatten()(rgb_in)))
    rgb.save(root / "rgb_input.keras")
    image = np.exp(-np.linspace(-2, 2, NPIX)[:, None] ** 2 - np.linspace(-2, 2, NPIX) ** 2)
    np.save(root / "img.npy", image + 0.01)
    return root


@pytest.mark.parametrize("name", ["three_outputs.keras", "rgb_input.keras"])
def test_incompatible_model_is_refused_by_predict(wrong_models, name, capsys):
    _cli_refuses(["predict", str(wrong_models / name), str(wrong_models / "img.npy"),
                  "--pixel-scale", "0.04"], name, capsys)


# ------------------------------------------------------------------ damaged SavedModels

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A valid exported SavedModel folder of a tiny (NPIX, NPIX, 1) -> 5 model."""
    import keras

    from ensai_tf import export

    inputs = keras.Input((NPIX, NPIX, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(5)(pooled))
    path = tmp_path_factory.mktemp("sm") / "exported"
    export.export_saved_model(model, path)
    return path


def _damage(root, how):
    """Apply one damage to a copy of the SavedModel at `root`; returns the copy's path."""
    import shutil

    copy = root.parent / f"damaged_{how}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    pb = copy / "saved_model.pb"
    if how == "no_variables":
        shutil.rmtree(copy / "variables")
    elif how == "variables_data_truncated":
        for f in (copy / "variables").glob("variables.data*"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "variables_index_garbage":
        (copy / "variables" / "variables.index").write_bytes(b"\x00garbage" * 10)
    elif how == "pb_truncated":
        pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 3])
    elif how == "pb_empty":
        pb.write_bytes(b"")
    return copy


@pytest.mark.parametrize("how", ["no_variables", "variables_data_truncated",
                                 "variables_index_garbage", "pb_truncated", "pb_empty"])
def test_damaged_saved_model_is_refused(saved_model, how, capsys):
    path = _damage(saved_model, how)
    with pytest.raises(ModelDirError) as info:
        inference.load_for_inference(str(path))(np.zeros((1, NPIX, NPIX, 1), np.float32))
    assert path.name in str(info.value)
    img = path.parent / "img.npy"
    image = np.exp(-np.linspace(-2, 2, NPIX)[:, None] ** 2 - np.linspace(-2, 2, NPIX) ** 2)
    np.save(img, image + 0.01)
    _cli_refuses(["predict", str(path), str(img), "--pixel-scale", "0.04"], path.name, capsys)


def test_undamaged_saved_model_predicts(saved_model):
    """Control: the fixture itself loads (so the damage, not the fixture, is refused)."""
    out = inference.load_for_inference(str(saved_model))(np.zeros((2, NPIX, NPIX, 1), np.float32))
    assert np.asarray(out).shape == (2, 5)
