"""Tests of ensai_tf.train: the smoke run end to end, resume, strategies, precision.

Training runs use the smoke preset at a reduced image size and a tiny
network (``training_helpers.tiny_model``) so that each fit takes seconds on a
2-core CPU; the pipeline, loss, metrics, callbacks and export are the real ones.
"""

import glob
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import ensai_tf.models
from ensai_tf import cli, config, export, inference, run_dir, train, uncertainty
from ensai_tf.errors import ModelDirError, NonFiniteLossError
from ensai_tf.model_dir import CALIBRATION_JSON
from training_helpers import (NPIX, leftovers, small_config, tiny_bn_model, tiny_model,
                              tiny_two_output_layers_model)


def _event_tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


# ------------------------------------------------------------------ end to end


def test_cli_train_smoke_leaves_all_artefacts(tmp_path, tiny, cache):
    """`ensai train --preset smoke` writes config, TensorBoard, checkpoint, SavedModel."""
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
    model = keras.saving.load_model(trained / "a" / "model.keras", compile=False)
    fn, npix = inference.load_predictor(trained / "a")
    assert npix == NPIX
    x = np.random.default_rng(0).uniform(0, 1, (3, NPIX, NPIX, 1)).astype(np.float32)
    # SavedModel vs the Keras file of the same run, both float32 on CPU
    np.testing.assert_allclose(fn(x), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny, cache):
    """Same step count, same weights, same logged losses, and the plateau state kept
    (docs/design.md §7.3, docs/design.md §11 rule 4)."""
    cfg = small_config(cache, epochs=3, steps=2)

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
        from training_helpers import tiny_model
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


# ------------------------------------------------------------------ options


def test_time_budget_stops_at_the_first_epoch_end_and_still_exports(tmp_path, tiny, cache):
    """A budget already spent after epoch 1 of 3: one epoch in the log, model exported."""
    cfg = small_config(cache, epochs=3, time_budget_minutes=1e-6)
    train.train(cfg, tmp_path / "run", verbose=0)
    with open(tmp_path / "run" / "log.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 1  # header + one epoch
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").is_file()


def test_init_weights_starts_from_a_trained_file(tmp_path, tiny, cache, trained):
    """train.init_weights: the second run's first forward pass uses the first run's weights."""
    cfg = small_config(cache)
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


def test_two_band_run_starts_from_a_one_band_file(tmp_path, tiny, cache, trained):
    """bands.count=2 (docs/design.md §5.10): the network reads (blue, red) channels, and a
    one-band init_weights file starts it with its first kernel halved in each band."""
    first = trained / "a" / "model.keras"
    source = keras.saving.load_model(first, compile=False)
    cfg = config.apply_overrides(small_config(cache), [
        "bands.count=2", "simulate.lens_light=true", f"train.init_weights={first}"])
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["weights"] = [np.array(w) for w in self.model.get_weights()]

    train.train(cfg, tmp_path / "two", verbose=0, callbacks=[Capture()])
    kernel, trained_kernel = seen["weights"][0], source.get_weights()[0]
    assert kernel.shape[-2] == 2 and trained_kernel.shape[-2] == 1
    np.testing.assert_array_equal(kernel, np.repeat(trained_kernel, 2, axis=-2) / 2)
    for x, y in zip(source.get_weights()[1:], seen["weights"][1:]):
        np.testing.assert_array_equal(x, y)
    fn, _ = inference.load_predictor(tmp_path / "two")
    assert fn(np.zeros((2, NPIX, NPIX, 2), np.float32)).shape == (2, 5)


def test_two_band_resnet_keeps_its_coordinate_weights(tmp_path, cache):
    """resnet's first convolution reads the band(s) and two coordinate channels: from a
    one-band file the band's kernel is halved into blue and red, the coordinates' kept."""
    cfg = config.apply_overrides(small_config(cache), ["model.name=resnet"])
    one = ensai_tf.models.build_model("resnet", input_shape=(NPIX, NPIX, 1),
                                      width=cfg.model.width)
    one.save(tmp_path / "one.keras")
    cfg = config.apply_overrides(cfg, ["bands.count=2", "simulate.lens_light=true",
                                       f"train.init_weights={tmp_path / 'one.keras'}"])
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["stem"] = self.model.get_layer("stem1").get_weights()[0]

    train.train(cfg, tmp_path / "two", verbose=0, callbacks=[Capture()])
    source = one.get_layer("stem1").get_weights()[0]  # (3, 3, band + x + y, filters)
    assert source.shape[-2] == 3 and seen["stem"].shape[-2] == 4
    np.testing.assert_array_equal(seen["stem"][..., :2, :], np.repeat(source[..., :1, :], 2, -2) / 2)
    np.testing.assert_array_equal(seen["stem"][..., 2:, :], source[..., 1:, :])


@pytest.fixture(scope="module")
def bn_first(tmp_path_factory, cache):
    """A tiny batch-norm network trained once, the start of both fine-tuning tests below."""
    path = tmp_path_factory.mktemp("bn") / "first"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ensai_tf.models, "build_model", tiny_bn_model)
        train.train(small_config(cache, steps=3), path, verbose=0)
    return path


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_batch_norm_keeps_the_initial_statistics(tmp_path, cache, monkeypatch, frozen,
                                                        bn_first):
    """train.freeze_batch_norm: the batch-norm moving statistics and offset of init_weights
    survive fine-tuning exactly while the convolution learns; unfrozen, the statistics move."""
    monkeypatch.setattr(ensai_tf.models, "build_model", tiny_bn_model)
    cfg = small_config(cache, steps=3)
    first = keras.saving.load_model(bn_first / "model.keras", compile=False)
    tuned_cfg = config.apply_overrides(cfg, [
        f"train.init_weights={bn_first / 'model.keras'}",
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


# ------------------------------------------------------------------ faults


def test_cli_turns_a_nan_loss_into_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    def diverge(*args, **kwargs):
        raise NonFiniteLossError("model folder 'run': the training loss became nan at epoch 1")

    monkeypatch.setattr(train, "train", diverge)
    assert cli.main(["train", "--preset", "smoke", "--model-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ensai train: error: model folder") and len(err.splitlines()) == 1


def test_atomic_keras_and_saved_model_writes_keep_the_old_on_failure(tmp_path, monkeypatch):
    """A failure mid-write leaves the previous model.keras / saved_model intact and no temp files."""
    model = tiny_model("m", input_shape=(16, 16, 1))
    run_dir.save_keras_atomic(model, tmp_path / "model.keras")
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
        run_dir.save_keras_atomic(model, tmp_path / "model.keras")
    assert (tmp_path / "model.keras").read_bytes() == old_keras
    assert (tmp_path / "saved_model" / "saved_model.pb").read_bytes() == old_pb
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "saved_model"]


@pytest.mark.slow
def test_killed_between_fit_and_export_resumes_to_a_complete_folder(tmp_path, tiny, monkeypatch,
                                                                    cache):
    """An interruption after the last epoch but before the exports: --resume finishes the run."""
    cfg = small_config(cache, epochs=2, steps=1)
    run = tmp_path / "run"
    real_export = train.export_saved_model_atomic

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "export_saved_model_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, run, verbose=0)
    assert run_dir.completed_epochs(run / "backup") == 2 and not (run / "model.keras").exists()
    monkeypatch.setattr(train, "export_saved_model_atomic", real_export)
    train.train(cfg, run, resume=True, verbose=0)
    for name in ("model.keras", "saved_model/saved_model.pb", "best.keras"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists() and leftovers(run) == []
    epochs = np.genfromtxt(run / "log.csv", delimiter=",", names=True)["epoch"]
    assert list(np.atleast_1d(epochs)) == [0, 1]


@pytest.mark.slow
def test_cli_train_with_a_nan_model_exits_2_and_exports_nothing(tmp_path, monkeypatch, capsys,
                                                                cache):
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
    assert leftovers(run) == []


def test_gaussian_shear_head_trains_warm_from_a_point_network_and_calibrates(tmp_path, tiny, cache):
    """model.head=diagonal + shear outputs: 14 outputs trained with the Gaussian NLL, warm-started
    from a 5-output run (every layer but the new output layer copied), a validation-fitted
    calibration.json, and a SavedModel that names gamma_1/gamma_2."""
    cfg = small_config(cache)
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
    cal = json.loads((tmp_path / "b" / CALIBRATION_JSON).read_text())
    assert cal["names"][-2:] == ["gamma_1", "gamma_2"] and cal["n"] == cfg.data.val_size
    assert np.shape(cal["multipliers"]) == (len(cal["levels"]), 7)
    assert np.all(np.diff(np.asarray(cal["multipliers"]), axis=0) >= 0)
    with open(tmp_path / "b" / "log.csv") as f:
        assert "val_gamma_2_rms" in f.readline()
    loaded = tf.saved_model.load(str(tmp_path / "b" / "saved_model"))
    out = loaded.serve(tf.zeros((1, NPIX, NPIX, 1)))
    assert {"gamma_1", "gamma_2", "gamma_1_std", "covariance"} <= set(out)


def test_a_new_head_of_two_output_sized_layers_starts_fresh(tmp_path, cache, monkeypatch,
                                                            capsys):
    """Overfeat ends in fc8 and a params Dense, both sized by the outputs: a Gaussian head
    (10 outputs) warm-started from a 5-output file copies every other layer and names both."""
    monkeypatch.setattr(ensai_tf.models, "build_model", tiny_two_output_layers_model)
    tiny_two_output_layers_model("overfeat", input_shape=(NPIX, NPIX, 1)).save(
        tmp_path / "point.keras")
    point = keras.saving.load_model(tmp_path / "point.keras", compile=False)
    cfg = config.apply_overrides(small_config(cache), [
        "model.head=diagonal", f"train.init_weights={tmp_path / 'point.keras'}"])
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["conv1"] = [np.array(w) for w in self.model.get_layer("conv1").get_weights()]

    model = train.train(cfg, tmp_path / "run", verbose=0, callbacks=[Capture()])
    assert model.output_shape == (None, 10)
    for x, y in zip(point.get_layer("conv1").get_weights(), seen["conv1"]):
        np.testing.assert_array_equal(x, y)
    assert "output layers 'fc8', 'params' have another shape" in capsys.readouterr().out


def test_init_weights_refuses_a_network_whose_hidden_layers_differ(tmp_path, tiny, cache):
    inputs = keras.Input((NPIX, NPIX, 1))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inputs)  # tiny_model's conv1 has 4 filters
    other = keras.Model(inputs, keras.layers.Dense(5, name="params")(
        keras.layers.GlobalAveragePooling2D()(x)))
    other.save(tmp_path / "other.keras")
    cfg = config.apply_overrides(small_config(cache),
                                 [f"train.init_weights={tmp_path / 'other.keras'}"])
    with pytest.raises(ModelDirError, match="layer 'conv1' has other weight shapes"):
        train.train(cfg, tmp_path / "run", verbose=0)


def test_shear_outputs_need_shear_in_the_simulation():
    with pytest.raises(config.ConfigError, match="model.shear_outputs: true needs lens.shear"):
        config.apply_overrides(config.get_preset("cpu"), ["model.shear_outputs=true"])


def test_cpu_has_native_bf16_reads_the_cpu_flags(tmp_path):
    (tmp_path / "avx2").write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    (tmp_path / "zen4").write_text("processor : 0\nflags : avx2 avx512f avx512_bf16\n")
    (tmp_path / "spr").write_text("flags\t\t: avx2 amx_bf16 amx_tile\n")
    assert train.cpu_has_native_bf16(tmp_path / "avx2") is False
    assert train.cpu_has_native_bf16(tmp_path / "zen4") is True
    assert train.cpu_has_native_bf16(tmp_path / "spr") is True
    assert train.cpu_has_native_bf16(tmp_path / "missing") is None


def test_dtype_policy_is_set_for_the_block_only():
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with train.dtype_policy("mixed_bfloat16"):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError("the policy is restored after an error too")
    assert keras.config.dtype_policy().name == "float32"
