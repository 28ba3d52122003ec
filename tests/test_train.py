"""Tests of ensai_tf.train: the smoke run end to end, resume, strategies, model folders.

Training runs use the smoke preset at a reduced image size and a tiny
network (a test-only stand-in for ``build_model``) so that each fit takes
seconds on a 2-core CPU; the pipeline, loss, metrics, callbacks and export
are the real ones.
"""

import dataclasses
import glob
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from ensai_tf import cli, config, train
from ensai_tf.errors import ModelDirError

NPIX = 48



def tiny_model(name, input_shape=(192, 192, 1), **kwargs):
    """A 2-layer stand-in for the paper networks (test only), behind the real BiasRemoval."""
    import keras

    from ensai_tf.preprocess.bias import BiasRemoval

    inputs = keras.Input(input_shape)
    x = BiasRemoval()(inputs)
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(kwargs.get("num_outputs", 5), dtype="float32", name="params")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{name}")


def _cfg(cache, epochs=1, steps=2, **train_changes):
    cfg = config.get_preset("smoke")
    cfg = config.apply_overrides(cfg, [f"image.npix={NPIX}", f"data.cache_dir={cache}"])
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=epochs, steps_per_epoch=steps, image_summaries=2, **train_changes))


@pytest.fixture
def tiny(monkeypatch):
    import ensai_tf.models

    monkeypatch.setattr(ensai_tf.models, "build_model", tiny_model)
    return tiny_model


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One data cache for this file's tests: the smoke validation set is simulated once, not per
    test (the cache key holds the config, seed and data code, so each test still gets its data)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cache):
    """Two tiny smoke runs, ``a`` and ``b`` (other seeds), trained once for the tests that only
    read a finished run. Session scope: ``--dist loadfile`` (setup.cfg) runs this file on one
    pytest-xdist worker, which trains them once."""
    import ensai_tf.models

    root = tmp_path_factory.mktemp("trained")
    cfg = _cfg(cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ensai_tf.models, "build_model", tiny_model)
        for name in ("a", "b"):
            train.train(dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, seed=ord(name))), root / name, verbose=0)
    return root


def _event_tags(folder):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


# ------------------------------------------------------------------ end to end


def test_cli_train_smoke_leaves_all_artefacts(tmp_path, tiny, cache):
    """`ensai train --preset smoke` writes config, TensorBoard, checkpoint, SavedModel."""
    import keras

    run = tmp_path / "run"
    code = cli.main(["train", "--preset", "smoke", "--model", "alexnet", "--model-dir", str(run),
                     "--set", f"image.npix={NPIX}", "--set", "train.image_summaries=2",
                     "--set", "train.mixed_precision=true",
                     "--set", f"data.cache_dir={cache}"])
    assert code == 0
    saved = config.load_config(run / "config.yaml")
    assert saved.model.name == "alexnet" and saved.image.npix == NPIX
    assert saved.train.mixed_precision is True
    for name in ("best.keras", "model.keras", "log.csv", "saved_model/saved_model.pb"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # removed once training finishes
    tags = _event_tags(run / "tb")
    assert {"epoch_loss", "epoch_learning_rate", "validation/images",
            "validation/parameters"} <= tags
    assert any("theta_e" in t for t in tags), tags  # per-parameter metrics reach TensorBoard
    # the mixed policy was only set for the run
    assert keras.config.dtype_policy().name == "float32"


def test_train_then_predict_with_the_saved_model(trained):
    import keras

    from ensai_tf import predict

    model = keras.saving.load_model(trained / "a" / "model.keras", compile=False)
    fn, npix = predict.load_predictor(trained / "a")
    assert npix == NPIX
    x = np.random.default_rng(0).uniform(0, 1, (3, NPIX, NPIX, 1)).astype(np.float32)
    # SavedModel vs the Keras file of the same run, both float32 on CPU
    np.testing.assert_allclose(fn(x), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny, cache):
    """Same step count, same weights, same logged losses, and the plateau state kept
    (docs/design.md §7.3, docs/design.md §11 rule 4)."""
    import keras

    cfg = _cfg(cache, epochs=3, steps=2)

    class Record(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.weights = [np.array(w) for w in self.model.get_weights()]
            self.steps = int(self.model.optimizer.iterations.numpy())

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 3:  # mid-epoch 2
                raise KeyboardInterrupt

    straight = Record()
    train.train(cfg, tmp_path / "a", callbacks=[straight], verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, tmp_path / "b", callbacks=[Interrupt()], verbose=0)
    assert json.loads((tmp_path / "b/backup/training_metadata.json").read_text())["epoch"] == 1
    # the learning rate and plateau counters survive the interruption too
    state = json.loads((tmp_path / "b/backup/callback_state.json").read_text())
    assert state["plateau"]["wait"] == 0 and np.isfinite(state["checkpoint"]["best"])
    resumed = Record()
    train.train(cfg, tmp_path / "b", resume=True, callbacks=[resumed], verbose=0)
    assert straight.steps == resumed.steps == 6
    for a, b in zip(straight.weights, resumed.weights):
        # identical data and ops on one CPU: the only tolerance is float32 round-off
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    log_a = np.genfromtxt(tmp_path / "a/log.csv", delimiter=",", names=True)
    log_b = np.genfromtxt(tmp_path / "b/log.csv", delimiter=",", names=True)
    assert list(log_a["epoch"]) == list(log_b["epoch"]) == [0, 1, 2]
    np.testing.assert_allclose(log_a["loss"], log_b["loss"], rtol=1e-6)
    np.testing.assert_allclose(log_a["val_loss"], log_b["val_loss"], rtol=1e-6)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    """`distribute="mirrored"` trains on two logical CPU devices (subprocess)."""
    script = textwrap.dedent(f'''
        import sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        import ensai_tf.models
        from test_train import tiny_model
        ensai_tf.models.build_model = tiny_model
        from ensai_tf import config, train
        cfg = config.apply_overrides(config.get_preset("smoke"),
                                     ["image.npix={NPIX}", "data.cache_dir=" + sys.argv[2]])
        model = train.train(cfg, sys.argv[1], distribute="mirrored", verbose=0)
        print("replicas", model.distribute_strategy.num_replicas_in_sync)
    ''')
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m"), str(tmp_path / "c")],
                         capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "replicas 2" in out.stdout
    assert (tmp_path / "m" / "saved_model" / "saved_model.pb").is_file()


# ------------------------------------------------------------------ model folders


def test_model_dir_rules(tmp_path, cache):
    cfg = _cfg(cache)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelDirError, match="is a file"):
        train.prepare_model_dir(tmp_path / "f", cfg)
    run = tmp_path / "run"
    run.mkdir()
    config.save_config(cfg, run / "config.yaml")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ModelDirError, match=r"is not empty \(config.yaml, notes.txt\)"):
        train.prepare_model_dir(run, cfg)
    other = config.apply_overrides(cfg, ["train.learning_rate=0.001"])
    with pytest.raises(ModelDirError, match=r"train.learning_rate \(0.0001 -> 0.001\)"):
        train.prepare_model_dir(run, other, resume=True)
    train.prepare_model_dir(run, cfg, resume=True)  # same config: fine
    (run / "model.keras").write_text("x")
    with pytest.raises(ModelDirError, match="already finished"):
        train.prepare_model_dir(run, cfg, resume=True)
    train.prepare_model_dir(run, cfg, overwrite=True)
    # overwrite removes this package's files only
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_completed_epochs_reads_backup_metadata(tmp_path):
    assert train.completed_epochs(tmp_path) == 0
    (tmp_path / "training_metadata.json").write_text('{"epoch": 4, "batch": 0}')
    assert train.completed_epochs(tmp_path) == 4
    (tmp_path / "training_metadata.json").write_text("{broken")
    with pytest.raises(ModelDirError, match="unreadable backup metadata"):
        train.completed_epochs(tmp_path)


def test_time_budget_stops_at_the_first_epoch_end_and_still_exports(tmp_path, tiny, cache):
    """A budget already spent after epoch 1 of 3: one epoch in the log, model exported."""
    cfg = _cfg(cache, epochs=3, time_budget_minutes=1e-6)
    train.train(cfg, tmp_path / "run", verbose=0)
    with open(tmp_path / "run" / "log.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 1  # header + one epoch
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").is_file()


def test_init_weights_starts_from_a_trained_file(tmp_path, tiny, cache, trained):
    """train.init_weights: the second run's first forward pass uses the first run's weights."""
    import keras

    cfg = _cfg(cache)
    first = trained / "a" / "model.keras"
    source = keras.saving.load_model(first, compile=False)
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["weights"] = [np.array(w) for w in self.model.get_weights()]

    warm = config.apply_overrides(cfg, [f"train.init_weights={first}", "train.seed=5"])
    train.train(warm, tmp_path / "b", verbose=0, callbacks=[Capture()])
    for x, y in zip(source.get_weights(), seen["weights"]):
        np.testing.assert_array_equal(x, y)
    bad = config.apply_overrides(cfg, [f"train.init_weights={tmp_path / 'missing.keras'}"])
    with pytest.raises(ModelDirError, match="init_weights"):
        train.train(bad, tmp_path / "c", verbose=0)


def tiny_bn_model(name, input_shape=(192, 192, 1), **kwargs):
    """``tiny_model`` with a batch-norm layer after its convolution (test only)."""
    import keras

    from ensai_tf.preprocess.bias import BiasRemoval

    inputs = keras.Input(input_shape)
    x = BiasRemoval()(inputs)
    x = keras.layers.Conv2D(4, 5, strides=4, use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(kwargs.get("num_outputs", 5), dtype="float32", name="params")(x)
    return keras.Model(inputs, outputs, name=f"tiny_bn_{name}")


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_batch_norm_keeps_the_initial_statistics(tmp_path, cache, monkeypatch, frozen):
    """train.freeze_batch_norm: the batch-norm moving statistics and offset of init_weights
    survive fine-tuning exactly while the convolution learns; unfrozen, the statistics move."""
    import keras

    import ensai_tf.models

    monkeypatch.setattr(ensai_tf.models, "build_model", tiny_bn_model)
    cfg = _cfg(cache, steps=3)
    train.train(cfg, tmp_path / "first", verbose=0)
    first = keras.saving.load_model(tmp_path / "first" / "model.keras", compile=False)
    tuned_cfg = config.apply_overrides(cfg, [
        f"train.init_weights={tmp_path / 'first' / 'model.keras'}",
        f"train.freeze_batch_norm={str(frozen).lower()}"])
    train.train(tuned_cfg, tmp_path / "tuned", verbose=0)
    tuned = keras.saving.load_model(tmp_path / "tuned" / "model.keras", compile=False)
    before, after = first.get_layer("conv1_bn"), tuned.get_layer("conv1_bn")
    stats = ("moving_mean", "moving_variance", "beta")
    same = [np.array_equal(getattr(before, s), getattr(after, s)) for s in stats]
    assert same == [frozen] * 3
    assert not np.array_equal(first.get_layer("conv1").kernel, tuned.get_layer("conv1").kernel)
    # the shipped file is an ordinary, trainable network again
    assert after.trainable


def test_cpu_preset_is_mixed_precision_and_validates():
    cfg = config.get_preset("cpu")
    assert cfg.train.mixed_precision and cfg.simulate.oversample == 1
    assert cfg.train.min_learning_rate <= cfg.train.learning_rate
    assert yaml.safe_load(yaml.safe_dump(config.config_to_dict(cfg)))["train"]["batch_size"] == 32


# ------------------------------------------------------------------ combiner


def test_train_combiner_trains_only_its_weights(tmp_path, cache, trained):
    """Two tiny trained networks -> combiner (through the console entry point, which calls
    train.train_combiner): 10 trainable scalars, backbones frozen, folders refused and kept."""
    import keras

    from ensai_tf import predict

    cfg = _cfg(cache)
    a, b = trained / "a", trained / "b"
    before = [np.array(w) for w in keras.saving.load_model(a / "model.keras",
                                                           compile=False).get_weights()]
    args = ["combine", "--models", str(a), str(b),
            "--model-dir", str(tmp_path / "c"), "--steps", "2", "--preset", "smoke",
            f"--set=image.npix={NPIX}", f"--set=data.cache_dir={cache}"]
    assert cli.main(args) == 0
    for name in ("model.keras", "saved_model/saved_model.pb", "combiner.json", "config.yaml"):
        assert (tmp_path / "c" / name).is_file(), name
    summary = json.loads((tmp_path / "c" / "combiner.json").read_text())
    assert summary["steps"] == 2
    assert set(summary) >= {"plain_average_validation", "trained_validation"}
    predict.register_custom_objects()
    model = keras.saving.load_model(tmp_path / "c" / "model.keras", compile=False)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 2 * 5
    # combiner.json alone (no model.keras) rebuilds the same network from the backbone files
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "combiner.json").write_bytes((tmp_path / "c" / "combiner.json").read_bytes())
    x = np.random.default_rng(2).uniform(0, 1, (2, NPIX, NPIX, 1)).astype(np.float32)
    predict_fn, _ = predict.load_predictor(shipped)
    np.testing.assert_allclose(predict_fn(x), model.predict_on_batch(x), rtol=0, atol=1e-6)
    after = [np.array(w) for w in keras.saving.load_model(a / "model.keras",
                                                          compile=False).get_weights()]
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    assert cli.main(args) == 2  # an existing combiner folder is refused and kept
    assert (tmp_path / "c" / "saved_model" / "saved_model.pb").is_file()
    with pytest.raises(ModelDirError, match="not empty"):
        train.train_combiner([a], tmp_path / "c", config=cfg, steps=1)
    with pytest.raises(ModelDirError, match="has no model.keras"):
        train.train_combiner([tmp_path / "nothing"], tmp_path / "d", config=cfg, steps=1)


# ------------------------------------------------------------------ faults


def _leftovers(folder):
    """Temporary or lock files left in a model folder."""
    from ensai_tf.dirlock import LOCK_NAME

    return sorted(p.name for p in pathlib.Path(folder).iterdir()
                  if p.name.startswith(train.TMP_PREFIX) or p.name.startswith(LOCK_NAME))


def _fit_in_memory(cfg, run, extra=(), model=None, epochs=3):
    """model.fit on 8 numpy images (2 batches) with the real callbacks: no pipeline, seconds."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 16, 16, 1)).astype(np.float32)
    y = rng.normal(0, 0.5, (8, 5)).astype(np.float32)
    model = model or tiny_model("m", input_shape=(16, 16, 1))
    train.compile_model(model, 1e-3)
    run.mkdir(exist_ok=True)
    callbacks = train.build_callbacks(cfg, run, extra=extra)
    model.fit(x, y, batch_size=4, epochs=epochs, validation_data=(x, y), callbacks=callbacks,
              shuffle=False, verbose=0)
    return model


def test_nan_loss_stops_before_saving_bad_weights(tmp_path, cache):
    """Weights turn NaN mid-epoch 2: the run stops there, best.keras and the backup keep epoch 1."""
    import keras

    from ensai_tf.errors import NonFiniteLossError

    cfg = _cfg(cache, epochs=3)
    run = tmp_path / "run"

    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 3:
                layer = self.model.get_layer("params")
                layer.kernel.assign(np.full(layer.kernel.shape, np.nan, np.float32))

    with pytest.raises(NonFiniteLossError,
                       match=r"training loss became nan at epoch 2, batch 2.*best.keras"):
        _fit_in_memory(cfg, run, extra=[Poison()])
    best = keras.saving.load_model(run / "best.keras", compile=False)
    assert all(np.all(np.isfinite(w)) for w in best.get_weights())
    assert train.completed_epochs(run / "backup") == 1
    assert not (run / "model.keras").exists() and not (run / "saved_model").exists()
    assert _leftovers(run) == []


def test_inf_validation_loss_also_stops(tmp_path, cache):
    import keras

    from ensai_tf.errors import NonFiniteLossError

    cfg = _cfg(cache, epochs=2)

    class InfOnValidation(keras.layers.Layer):
        def call(self, x, training=None):
            return x if training else x * np.float32(np.inf)

    base = tiny_model("m", input_shape=(16, 16, 1))
    model = keras.Model(base.inputs, InfOnValidation()(base.outputs[0]))
    with pytest.raises(NonFiniteLossError, match="validation loss became inf at the end of epoch 1"):
        _fit_in_memory(cfg, tmp_path / "run", model=model)
    assert not (tmp_path / "run" / "best.keras").exists()
    assert train.completed_epochs(tmp_path / "run" / "backup") == 0


def test_cli_turns_a_nan_loss_into_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    from ensai_tf.errors import NonFiniteLossError

    def diverge(*args, **kwargs):
        raise NonFiniteLossError("model folder 'run': the training loss became nan at epoch 1")

    monkeypatch.setattr(train, "train", diverge)
    assert cli.main(["train", "--preset", "smoke", "--model-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ensai train: error: model folder") and len(err.splitlines()) == 1


def test_atomic_keras_and_saved_model_writes_keep_the_old_on_failure(tmp_path, monkeypatch):
    """A failure mid-write leaves the previous model.keras / saved_model intact and no temp files."""
    import keras

    from ensai_tf import export

    model = tiny_model("m", input_shape=(16, 16, 1))
    train.save_keras_atomic(model, tmp_path / "model.keras")
    train.export_saved_model_atomic(model, tmp_path / "saved_model")
    train.export_saved_model_atomic(model, tmp_path / "saved_model")  # replaces the old export
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "saved_model"]
    old_keras = (tmp_path / "model.keras").read_bytes()
    old_pb = (tmp_path / "saved_model" / "saved_model.pb").read_bytes()

    def half_export(model, path, verbose=False):
        pathlib.Path(path).mkdir()
        (pathlib.Path(path) / "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    def half_save(self, path, *args, **kwargs):
        pathlib.Path(path).write_bytes(b"PK\x03\x04half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_saved_model", half_export)
    with pytest.raises(OSError, match="disk full"):
        train.export_saved_model_atomic(model, tmp_path / "saved_model")
    monkeypatch.setattr(keras.Model, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        train.save_keras_atomic(model, tmp_path / "model.keras")
    assert (tmp_path / "model.keras").read_bytes() == old_keras
    assert (tmp_path / "saved_model" / "saved_model.pb").read_bytes() == old_pb
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "saved_model"]


def test_resume_trims_log_rows_of_an_epoch_that_was_not_backed_up(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    train._trim_log(log, 2)
    assert log.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_killed_between_fit_and_export_resumes_to_a_complete_folder(tmp_path, tiny, monkeypatch,
                                                                    cache):
    """An interruption after the last epoch but before the exports: --resume finishes the run."""
    cfg = _cfg(cache, epochs=2, steps=1)
    run = tmp_path / "run"
    real_export = train.export_saved_model_atomic

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "export_saved_model_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, run, verbose=0)
    assert train.completed_epochs(run / "backup") == 2 and not (run / "model.keras").exists()
    monkeypatch.setattr(train, "export_saved_model_atomic", real_export)
    train.train(cfg, run, resume=True, verbose=0)
    for name in ("model.keras", "saved_model/saved_model.pb", "best.keras"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists() and _leftovers(run) == []
    epochs = np.genfromtxt(run / "log.csv", delimiter=",", names=True)["epoch"]
    assert list(np.atleast_1d(epochs)) == [0, 1]


@pytest.mark.slow
def test_cli_train_with_a_nan_model_exits_2_and_exports_nothing(tmp_path, monkeypatch, capsys,
                                                                cache):
    import keras

    import ensai_tf.models

    def nan_model(name, input_shape=(192, 192, 1), **kwargs):
        base = tiny_model(name, input_shape)
        return keras.Model(base.inputs, keras.layers.Lambda(lambda t: t * np.nan)(
            base.outputs[0]))

    monkeypatch.setattr(ensai_tf.models, "build_model", nan_model)
    run = tmp_path / "run"
    code = cli.main(["train", "--preset", "smoke", "--model", "alexnet", "--model-dir", str(run),
                     "--set", f"image.npix={NPIX}", "--set", "train.image_summaries=0",
                     "--set", f"data.cache_dir={cache}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "became nan" in err, err
    assert not (run / "model.keras").exists() and not (run / "saved_model").exists()
    assert _leftovers(run) == []


def test_gaussian_shear_head_trains_warm_from_a_point_network_and_calibrates(tmp_path, tiny, cache):
    """model.head=diagonal + shear outputs: 14 outputs trained with the Gaussian NLL, warm-started
    from a 5-output run (every layer but the new output layer copied), a validation-fitted
    calibration.json, and a SavedModel that names gamma_1/gamma_2."""
    import keras
    import tensorflow as tf

    from ensai_tf import uncertainty

    cfg = _cfg(cache)
    (tmp_path / "a").mkdir()
    tiny_model("alexnet", input_shape=(NPIX, NPIX, 1)).save(tmp_path / "a" / "model.keras")
    point = keras.saving.load_model(tmp_path / "a" / "model.keras", compile=False)
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["conv1"] = [np.array(w) for w in self.model.get_layer("conv1").get_weights()]

    shear = config.apply_overrides(cfg, [
        "lens.shear=true", "model.shear_outputs=true", "model.head=diagonal",
        f"train.init_weights={tmp_path / 'a' / 'model.keras'}"])
    model = train.train(shear, tmp_path / "b", verbose=0, callbacks=[Capture()])
    assert model.output_shape == (None, 14)
    for x, y in zip(point.get_layer("conv1").get_weights(), seen["conv1"]):
        np.testing.assert_array_equal(x, y)
    assert isinstance(model.loss, uncertainty.GaussianNLL)
    cal = json.loads((tmp_path / "b" / train.CALIBRATION_NAME).read_text())
    assert cal["names"][-2:] == ["gamma_1", "gamma_2"] and cal["n"] == cfg.data.val_size
    assert np.shape(cal["multipliers"]) == (len(cal["levels"]), 7)
    assert np.all(np.diff(np.asarray(cal["multipliers"]), axis=0) >= 0)
    with open(tmp_path / "b" / "log.csv") as f:
        assert "val_gamma_2_rms" in f.readline()
    loaded = tf.saved_model.load(str(tmp_path / "b" / "saved_model"))
    out = loaded.serve(tf.zeros((1, NPIX, NPIX, 1)))
    assert {"gamma_1", "gamma_2", "gamma_1_std", "covariance"} <= set(out)


def test_init_weights_refuses_a_network_whose_hidden_layers_differ(tmp_path, tiny, cache):
    import keras

    inputs = keras.Input((NPIX, NPIX, 1))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inputs)  # tiny_model's conv1 has 4 filters
    other = keras.Model(inputs, keras.layers.Dense(5, name="params")(
        keras.layers.GlobalAveragePooling2D()(x)))
    other.save(tmp_path / "other.keras")
    cfg = config.apply_overrides(_cfg(cache),
                                 [f"train.init_weights={tmp_path / 'other.keras'}"])
    with pytest.raises(ModelDirError, match="layer 'conv1' has other weight shapes"):
        train.train(cfg, tmp_path / "run", verbose=0)


def test_shear_outputs_need_shear_in_the_simulation():
    with pytest.raises(config.ConfigError, match="model.shear_outputs: true needs lens.shear"):
        config.apply_overrides(config.get_preset("cpu"), ["model.shear_outputs=true"])


def test_calibrate_refits_on_more_validation_lenses_and_keeps_the_old_file(tmp_path, tiny, cache):
    import keras

    cfg = config.apply_overrides(_cfg(cache), ["model.head=diagonal"])
    run = tmp_path / "run"
    run.mkdir()
    tiny_model("x", input_shape=(NPIX, NPIX, 1), num_outputs=10).save(run / "model.keras")
    config.save_config(cfg, run / "config.yaml")
    first = {"n": cfg.data.val_size, "note": "the user's earlier calibration"}
    (run / train.CALIBRATION_NAME).write_text(json.dumps(first))
    assert cli.main(["calibrate", str(run), "--n", "12"]) == 0
    new = json.loads((tmp_path / "run" / train.CALIBRATION_NAME).read_text())
    assert first["n"] == cfg.data.val_size and new["n"] == 12
    assert json.loads((tmp_path / "run" / "calibration-previous.json").read_text()) == first
    point = tmp_path / "point"
    point.mkdir()
    tiny_model("x", input_shape=(NPIX, NPIX, 1)).save(point / "model.keras")
    with pytest.raises(ModelDirError, match="point-estimate network"):
        train.calibrate(point, config=cfg)
    assert keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)


def test_cpu_has_native_bf16_reads_the_cpu_flags(tmp_path):
    from ensai_tf import train

    (tmp_path / "avx2").write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    (tmp_path / "zen4").write_text("processor : 0\nflags : avx2 avx512f avx512_bf16\n")
    (tmp_path / "spr").write_text("flags\t\t: avx2 amx_bf16 amx_tile\n")
    assert train.cpu_has_native_bf16(tmp_path / "avx2") is False
    assert train.cpu_has_native_bf16(tmp_path / "zen4") is True
    assert train.cpu_has_native_bf16(tmp_path / "spr") is True
    assert train.cpu_has_native_bf16(tmp_path / "missing") is None
