"""The screening network's architecture and its round trips through .keras and SavedModel."""

import keras
import numpy as np
import tensorflow as tf

from ensai_tf.models.screen import SCREEN_LABELS, build_screen_model


def test_shape_and_determinism():
    a, b = build_screen_model(seed=3), build_screen_model(seed=3)
    assert a.output_shape == (None, len(SCREEN_LABELS))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_round_trips_through_keras_and_saved_model(tmp_path):
    model = build_screen_model()
    images = np.random.default_rng(0).normal(size=(2, 192, 192, 1)).astype(np.float32)
    expected = np.asarray(model(images))
    model.save(tmp_path / "s.keras")
    loaded = keras.saving.load_model(tmp_path / "s.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(images)), expected, rtol=1e-5, atol=1e-6)
    model.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(np.asarray(served.serve(images)), expected, rtol=1e-5, atol=1e-6)
