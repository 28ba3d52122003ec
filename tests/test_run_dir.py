"""Tests of ensai_tf.run_dir: the rules of a training-run folder and its resume bookkeeping."""

import pytest

from ensai_tf import config, run_dir
from ensai_tf.errors import ModelDirError
from training_helpers import leftovers, small_config


def test_model_dir_rules(tmp_path, cache):
    cfg = small_config(cache)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelDirError, match="is a file"):
        run_dir.prepare_model_dir(tmp_path / "f", cfg)
    run = tmp_path / "run"
    run.mkdir()
    config.save_config(cfg, run / "config.yaml")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ModelDirError, match=r"is not empty \(config.yaml, notes.txt\)"):
        run_dir.prepare_model_dir(run, cfg)
    other = config.apply_overrides(cfg, ["train.learning_rate=0.001"])
    with pytest.raises(ModelDirError, match=r"train.learning_rate \(0.0001 -> 0.001\)"):
        run_dir.prepare_model_dir(run, other, resume=True)
    run_dir.prepare_model_dir(run, cfg, resume=True)  # same config: fine
    (run / "model.keras").write_text("x")
    with pytest.raises(ModelDirError, match="already finished"):
        run_dir.prepare_model_dir(run, cfg, resume=True)
    run_dir.prepare_model_dir(run, cfg, overwrite=True)
    # overwrite removes this package's files only
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_completed_epochs_reads_backup_metadata(tmp_path):
    assert run_dir.completed_epochs(tmp_path) == 0
    (tmp_path / "training_metadata.json").write_text('{"epoch": 4, "batch": 0}')
    assert run_dir.completed_epochs(tmp_path) == 4
    (tmp_path / "training_metadata.json").write_text("{broken")
    with pytest.raises(ModelDirError, match="unreadable backup metadata"):
        run_dir.completed_epochs(tmp_path)


def test_resume_trims_log_rows_of_an_epoch_that_was_not_backed_up(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    run_dir.trim_log(log, 2)
    assert log.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"
    assert leftovers(tmp_path) == []
