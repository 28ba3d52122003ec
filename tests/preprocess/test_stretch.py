"""The asinh input stretch (docs/design.md §6.1.1)."""

import keras
import numpy as np
import pytest

from ensai_tf import export, inference
from ensai_tf.models import MODEL_BUILDERS, build_model
from ensai_tf.preprocess.stretch import AsinhStretch


def test_matches_the_closed_form_and_keeps_zero_and_one():
    x = np.array([[0.0, 1e-4, 0.02, 0.1, 1.0, 10.0, -0.05]], np.float32)
    for s in (0.02, 0.3):
        got = np.asarray(AsinhStretch(s)(x))
        want = np.arcsinh(x.astype(np.float64) / s) / np.arcsinh(1.0 / s)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert got[0, 0] == 0.0 and got[0, 4] == pytest.approx(1.0, abs=1e-6)


def test_lifts_faint_arcs_towards_a_bright_core():
    """An arc at a tenth of the peak reaches half of it at s = 0.02: asinh(5)/asinh(50) = 0.502."""
    got = np.asarray(AsinhStretch(0.02)(np.array([[0.1]], np.float32)))[0, 0]
    assert got == pytest.approx(np.arcsinh(5.0) / np.arcsinh(50.0), rel=1e-6)
    assert 0.50 < got < 0.51


@pytest.mark.parametrize("softening", [0.0, -0.1])
def test_rejects_a_softening_that_is_not_positive(softening):
    with pytest.raises(ValueError, match="softening must be > 0"):
        AsinhStretch(softening)


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_every_network_puts_it_after_the_bias_removal(name):
    plain = build_model(name, width=0.0625)
    stretched = build_model(name, width=0.0625, input_stretch=0.02)
    names = [layer.name for layer in stretched.layers]
    assert names[1:3] == ["bias_removal", "stretch"]
    assert "stretch" not in [layer.name for layer in plain.layers]
    assert stretched.count_params() == plain.count_params()  # no weights of its own


def test_a_stretched_network_round_trips_through_keras_and_savedmodel(tmp_path):
    model = build_model("alexnet", width=0.0625, input_stretch=0.02)
    images = np.random.default_rng(0).uniform(0, 1, (2, 192, 192, 1)).astype(np.float32)
    images[:, :5, :5] = 0.0
    want = model.predict_on_batch(images)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.get_layer("stretch").softening == 0.02
    np.testing.assert_allclose(loaded.predict_on_batch(images), want, atol=1e-6, rtol=0)
    export.export_saved_model(model, tmp_path / "sm")
    np.testing.assert_allclose(inference.load_for_inference(tmp_path / "sm")(images), want,
                               atol=1e-6, rtol=0)
