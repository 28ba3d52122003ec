"""What ``ensai train`` tells its user and leaves on disk: the smoke preset's size, the
announcement of a new or resumed run, the estimated time left, the closing line, and
continuing a finished run with more epochs.

Training runs use the tiny stand-in network of ``training_helpers`` at a reduced image size,
except the slow test that runs the real smoke preset.
"""

import dataclasses
import re

import keras
import pytest

import ensai_tf.models
from ensai_tf import callbacks, cli, config, run_dir, train
from ensai_tf.conventions import NETWORK_NAMES
from ensai_tf.errors import ModelDirError
from training_helpers import small_config

SMOKE_LIMIT_BYTES = 50e6
"""A smoke run folder must stay below this (it checks an install, it is not a network)."""


def _folder_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_smoke_preset_networks_are_tiny(name):
    """Every network at the smoke preset's width, stored as a run keeps it (best.keras,
    model.keras, the SavedModel and a backup with Adam's two moments: 6 float32 copies),
    fits well under 50 MB."""
    cfg = config.get_preset("smoke")
    model = ensai_tf.models.build_model(name, input_shape=(cfg.image.npix, cfg.image.npix, 1),
                                        width=cfg.model.width, num_outputs=5)
    assert 6 * 4 * model.count_params() < SMOKE_LIMIT_BYTES / 2


@pytest.mark.slow
def test_smoke_run_folder_stays_under_50_mb(tmp_path, cache):
    """`ensai train --preset smoke` with the real default network at 192 x 192 pixels."""
    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "smoke", "--model-dir", str(run),
                     "--set", f"data.cache_dir={cache}"]) == 0
    assert (run / "model.keras").is_file()
    assert _folder_bytes(run) < SMOKE_LIMIT_BYTES


def test_format_duration():
    assert callbacks.format_duration(0.4) == "0 s"
    assert callbacks.format_duration(59.6) == "1 min"
    assert callbacks.format_duration(3 * 3600 + 60) == "3 h 1 min"


def test_run_progress_estimates_the_rest_of_the_run_and_the_budget(monkeypatch):
    clock = iter([0.0, 100.0, 200.0])
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: next(clock))
    lines = []
    progress = callbacks.RunProgress(epochs=10, print_fn=lambda text, **_: lines.append(text))
    progress.on_train_begin()
    progress.on_epoch_end(0)
    progress.on_epoch_begin(1)
    assert lines == ["ensai train: epoch 1/10 done, 1 min 40 s per epoch; about 15 min left"]
    clock = iter([0.0, 100.0])
    budget = callbacks.RunProgress(epochs=10, budget_minutes=5,
                                   print_fn=lambda text, **_: lines.append(text))
    budget.on_train_begin()
    budget.on_epoch_end(0)  # 100 s per epoch, 200 s of the budget left: two more epochs
    budget.on_epoch_begin(1)
    assert lines[-1] == ("ensai train: epoch 1/10 done, 1 min 40 s per epoch; about 3 min 20 s "
                         "left, time budget 5 min (3 min 20 s left)")


def test_log_summary_and_resume_point(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,learning_rate,loss,val_loss\n"
                                      "0,0.001,1.0,0.5\n1,0.0001,0.8,0.25\n2,0.0001,0.7,0.3\n")
    assert run_dir.log_summary(tmp_path / "log.csv") == {
        "epochs": 3, "best_val_loss": 0.25, "best_epoch": 2, "learning_rate": 0.0001}
    (tmp_path / "model.keras").write_text("x")
    point = run_dir.resume_point(tmp_path, steps_per_epoch=5)
    assert point == {"finished": True, "epoch": 3, "step": 15, "best_val_loss": 0.25,
                     "learning_rate": 0.0001}
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / run_dir.BACKUP_METADATA_JSON).write_text('{"epoch": 2}')
    (backup / "callback_state.json").write_text('{"checkpoint": {"best": 0.125}}')
    point = run_dir.resume_point(tmp_path, steps_per_epoch=5)
    assert (point["finished"], point["epoch"], point["step"], point["best_val_loss"]) == \
        (False, 2, 10, 0.125)


def test_a_finished_run_continues_only_with_more_epochs_or_a_new_budget(tmp_path):
    cfg = config.get_preset("smoke")
    run = tmp_path / "run"
    run.mkdir()
    config.save_config(cfg, run / "config.yaml")
    (run / "model.keras").write_text("x")
    (run / "log.csv").write_text("epoch,val_loss\n0,0.5\n")
    with pytest.raises(ModelDirError, match=r"already finished .*1 epoch logged.*"
                                            r"--set train.epochs=N, N > 1"):
        run_dir.prepare_model_dir(run, cfg, resume=True)
    run_dir.prepare_model_dir(run, config.apply_overrides(cfg, ["train.epochs=3"]), resume=True)
    run_dir.prepare_model_dir(run, config.apply_overrides(
        cfg, ["train.epochs=3", "train.time_budget_minutes=5"]), resume=True)
    with pytest.raises(ModelDirError, match=r"only with a new train.epochs .*learning_rate"):
        run_dir.prepare_model_dir(run, config.apply_overrides(
            cfg, ["train.epochs=3", "train.learning_rate=0.001"]), resume=True)


def test_train_announces_resumes_and_continues_a_finished_run(tmp_path, tiny, cache, capsys):
    """New run: what it trains and where; closing line: epochs, time, best loss, folder.
    A finished run resumed with more epochs continues from its model.keras after its last
    epoch, with the optimiser state saved there (the step count goes on)."""
    run = tmp_path / "run"
    cfg = small_config(cache, epochs=1, steps=2)
    train.train(cfg, run, verbose=0)
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"ensai train: training ensai_net \(width 0\.0625, [\d,]+ parameters\), "
                    r"up to 1 epoch of 2 steps, batch 4 into .*run$", out[0]), out[0]
    assert re.match(r"ensai train: trained ensai_net for 1 epoch \(2 steps; 1 in all\) in "
                    r"(\d+ s|\d+ min( \d+ s)?); best validation loss [\d.e+-]+ \(epoch 1\); "
                    r"wrote .*run "
                    r"\(model.keras, saved_model/, best.keras, log.csv, config.yaml\)$",
                    out[-1]), out[-1]
    best = run_dir.log_summary(run / "log.csv")["best_val_loss"]

    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    model = train.train(more, run, resume=True, verbose=0)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ensai train: continuing the finished run {run} from its "
                             f"model.keras after epoch 1 (step 2, best validation loss "
                             f"{best:.4g}): ensai_net"), out[0]
    assert "trained ensai_net for 1 epoch (2 steps; 2 in all)" in out[-1]
    assert int(model.optimizer.iterations.numpy()) == 4
    logged = run_dir.log_summary(run / "log.csv")
    assert logged["epochs"] == 2 and logged["best_val_loss"] <= best
    assert not (run / "backup").exists()


def test_resume_of_an_interrupted_run_says_where_it_continues(tmp_path, tiny, cache, capsys):
    run = tmp_path / "run"
    cfg = small_config(cache, epochs=2, steps=2)

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 3:  # mid-epoch 2
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, run, callbacks=[Kill()], verbose=0)
    capsys.readouterr()
    train.train(cfg, run, resume=True, verbose=0)
    out = capsys.readouterr().out.splitlines()
    assert re.match(rf"ensai train: resuming {re.escape(str(run))} after epoch 1 \(step 2, "
                    r"best validation loss [\d.e+-]+\): ensai_net", out[0]), out[0]
