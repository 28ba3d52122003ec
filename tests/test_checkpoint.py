"""A run's backup is resumed as one unit: weights, Keras metadata and callback state agree."""

import json

import h5py
import keras
import numpy as np
import pytest

from ensai_tf import callbacks, checkpoint
from ensai_tf.errors import ModelDirError
from ensai_tf.model_dir import CALLBACK_STATE_JSON, file_sha256

BKP = checkpoint.PREVIOUS_SUFFIX


def _unit(backup, epoch, suffix="", value=None):
    """Write weights, metadata and a state that agree, for ``epoch`` (``suffix``: '' or .bkp)."""
    weights = backup / (checkpoint.BACKUP_WEIGHTS + suffix)
    with h5py.File(weights, "w") as f:
        f["w"] = np.full(1000, float(epoch if value is None else value))
    (backup / (checkpoint.BACKUP_METADATA_JSON + suffix)).write_text(json.dumps({"epoch": epoch}))
    state = {"plateau": {"wait": epoch}, "weights_sha256": file_sha256(weights), "epoch": epoch}
    (backup / (CALLBACK_STATE_JSON + suffix)).write_text(json.dumps(state))
    return weights.read_bytes()


def _epoch(backup):
    return json.loads((backup / checkpoint.BACKUP_METADATA_JSON).read_text())["epoch"]


def test_a_complete_latest_unit_is_kept(tmp_path):
    _unit(tmp_path, 3)
    _unit(tmp_path, 2, BKP)
    assert checkpoint.settle_backup(tmp_path) == "latest"
    assert _epoch(tmp_path) == 3


def test_truncated_latest_weights_fall_back_to_the_previous_unit(tmp_path):
    latest = _unit(tmp_path, 3)
    previous = _unit(tmp_path, 2, BKP)
    (tmp_path / checkpoint.BACKUP_WEIGHTS).write_bytes(latest[: len(latest) // 2])
    assert checkpoint.settle_backup(tmp_path) == "previous"
    assert (tmp_path / checkpoint.BACKUP_WEIGHTS).read_bytes() == previous
    assert _epoch(tmp_path) == 2
    state = json.loads((tmp_path / CALLBACK_STATE_JSON).read_text())
    assert state["epoch"] == 2 and state["plateau"]["wait"] == 2


def test_a_kill_between_the_weights_and_the_state_uses_the_unit_that_agrees(tmp_path):
    """New weights and metadata of epoch 3 written, the state still that of epoch 2."""
    _unit(tmp_path, 2, BKP)
    _unit(tmp_path, 2)
    with h5py.File(tmp_path / checkpoint.BACKUP_WEIGHTS, "w") as f:
        f["w"] = np.full(1000, 3.0)
    (tmp_path / checkpoint.BACKUP_METADATA_JSON).write_text(json.dumps({"epoch": 3}))
    assert checkpoint.settle_backup(tmp_path) == "previous"
    assert _epoch(tmp_path) == 2
    with h5py.File(tmp_path / checkpoint.BACKUP_WEIGHTS, "r") as f:
        assert f["w"][0] == 2.0


def test_no_complete_unit_says_to_start_over(tmp_path):
    latest = _unit(tmp_path, 1)
    (tmp_path / checkpoint.BACKUP_WEIGHTS).write_bytes(latest[:100])
    with pytest.raises(ModelDirError, match="--overwrite"):
        checkpoint.settle_backup(tmp_path)


def test_an_empty_backup_has_nothing_to_settle(tmp_path):
    assert checkpoint.settle_backup(tmp_path) == "none"


def test_stateful_backup_writes_a_state_tied_to_its_weights(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    model.compile("adam", "mse")
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=5)
    backup = callbacks.StatefulBackup(str(tmp_path), {"plateau": (plateau, ("best", "wait"))})
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 5), np.float32)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[plateau, backup])
    state = json.loads((tmp_path / CALLBACK_STATE_JSON).read_text())
    assert state["weights_sha256"] == file_sha256(tmp_path / checkpoint.BACKUP_WEIGHTS)
    assert state["epoch"] == _epoch(tmp_path) == 2
    previous = json.loads((tmp_path / (CALLBACK_STATE_JSON + BKP)).read_text())
    assert previous["weights_sha256"] == file_sha256(tmp_path / (checkpoint.BACKUP_WEIGHTS + BKP))
    assert checkpoint.settle_backup(tmp_path) == "latest"


def test_a_damaged_callback_state_is_one_clear_error(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    model.compile("adam", "mse")
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss")
    backup = callbacks.StatefulBackup(str(tmp_path), {"plateau": (plateau, ("best", "wait"))})
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 5), np.float32)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[plateau, backup])
    (tmp_path / CALLBACK_STATE_JSON).write_text('{"plateau": {"wait": "x"}}')
    again = callbacks.StatefulBackup(str(tmp_path), {"plateau": (plateau, ("best", "wait"))})
    with pytest.raises(ModelDirError, match="damaged"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[plateau, again])
