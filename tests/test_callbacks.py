"""Tests of ensai_tf.callbacks: a NaN or Inf loss stops training before anything bad is saved.

``model.fit`` runs on 8 numpy images with the real callbacks of
:func:`ensai_tf.callbacks.build_callbacks`: no pipeline, seconds.
"""

import keras
import numpy as np
import pytest

from ensai_tf import train
from ensai_tf.callbacks import build_callbacks
from ensai_tf.errors import NonFiniteLossError
from ensai_tf.run_dir import completed_epochs
from training_helpers import leftovers, small_config, tiny_model


def _fit_in_memory(cfg, run, extra=(), model=None, epochs=3):
    """model.fit on 8 numpy images (2 batches) with the real callbacks: no pipeline, seconds."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 16, 16, 1)).astype(np.float32)
    y = rng.normal(0, 0.5, (8, 5)).astype(np.float32)
    model = model or tiny_model("m", input_shape=(16, 16, 1))
    train.compile_model(model, 1e-3)
    run.mkdir(exist_ok=True)
    callbacks = build_callbacks(cfg, run, extra=extra)
    model.fit(x, y, batch_size=4, epochs=epochs, validation_data=(x, y), callbacks=callbacks,
              shuffle=False, verbose=0)
    return model


def test_nan_loss_stops_before_saving_bad_weights(tmp_path, cache):
    """Weights turn NaN mid-epoch 2: the run stops there, best.keras and the backup keep epoch 1."""
    cfg = small_config(cache, epochs=3)
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
    assert completed_epochs(run / "backup") == 1
    assert not (run / "model.keras").exists() and not (run / "saved_model").exists()
    assert leftovers(run) == []


def test_inf_validation_loss_also_stops(tmp_path, cache):
    cfg = small_config(cache, epochs=2)

    class InfOnValidation(keras.layers.Layer):
        def call(self, x, training=None):
            return x if training else x * np.float32(np.inf)

    base = tiny_model("m", input_shape=(16, 16, 1))
    model = keras.Model(base.inputs, InfOnValidation()(base.outputs[0]))
    with pytest.raises(NonFiniteLossError, match="validation loss became inf at the end of epoch 1"):
        _fit_in_memory(cfg, tmp_path / "run", model=model)
    assert not (tmp_path / "run" / "best.keras").exists()
    assert completed_epochs(tmp_path / "run" / "backup") == 0
