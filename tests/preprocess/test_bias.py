"""BiasRemoval (docs/design.md §6.1): closed-form properties and serialisation."""

import keras
import numpy as np
import pytest

from ensai_tf.preprocess.bias import BiasRemoval


def _images(seed=0, batch=3, side=24):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.5, 2.0, size=(batch, side, side, 1)).astype(np.float32)
    images[0, 3:9, 5:12, 0] = 0.0  # a masked block
    images[1, :, 0, 0] = 0.0  # a masked column
    return images


def _box_means(images, window=4):
    """Reference 4x4 VALID box means, float64, and whether each window is unmasked."""
    b, h, w, _ = images.shape
    means = np.zeros((b, h - window + 1, w - window + 1))
    clean = np.zeros_like(means, dtype=bool)
    for i in range(h - window + 1):
        for j in range(w - window + 1):
            patch = images[:, i:i + window, j:j + window, 0].astype(np.float64)
            means[:, i, j] = patch.mean(axis=(1, 2))
            clean[:, i, j] = np.all(patch != 0, axis=(1, 2))
    return means, clean


def test_masked_pixels_stay_exactly_zero():
    images = _images()
    out = np.asarray(BiasRemoval()(images))
    assert np.all(out[images == 0] == 0.0)  # exact: 0 - b * 0
    assert np.count_nonzero(out[images != 0] == 0) <= images.shape[0]  # only the minimum pixel


def test_smallest_unmasked_box_mean_is_zero_afterwards():
    images = _images()
    out = np.asarray(BiasRemoval()(images))
    means, clean = _box_means(out)
    smallest = np.array([means[k][clean[k]].min() for k in range(len(out))])
    # float32 arithmetic on O(1) values: a few ulps of the bias
    np.testing.assert_allclose(smallest, 0.0, atol=1e-6)


def test_matches_closed_form():
    images = _images(seed=1)
    means, clean = _box_means(images)
    bias = np.array([means[k][clean[k]].min() for k in range(len(images))])
    expected = images - bias[:, None, None, None] * (images != 0)
    np.testing.assert_allclose(np.asarray(BiasRemoval()(images)), expected, rtol=1e-6, atol=1e-6)


def test_each_band_loses_its_own_bias():
    """Two bands as channels (docs/design.md §5.10): each is treated as a one-band image."""
    blue, red = _images(seed=2), _images(seed=3) + 5.0
    out = np.asarray(BiasRemoval()(np.concatenate([blue, red], axis=-1)))
    np.testing.assert_array_equal(out[..., :1], np.asarray(BiasRemoval()(blue)))
    np.testing.assert_array_equal(out[..., 1:], np.asarray(BiasRemoval()(red)))


def test_constant_offset_is_removed_exactly():
    images = _images(seed=2)
    base = np.asarray(BiasRemoval()(images))
    shifted = np.where(images != 0, images + 0.75, 0.0).astype(np.float32)
    # both outputs are the same image up to float32 rounding of x + 0.75
    np.testing.assert_allclose(np.asarray(BiasRemoval()(shifted)), base, rtol=1e-6, atol=2e-7)


def test_fully_masked_windows_never_set_the_bias():
    images = np.full((1, 12, 12, 1), 3.0, np.float32)
    images[0, :6, :6, 0] = 0.0
    out = np.asarray(BiasRemoval()(images))
    np.testing.assert_array_equal(out[0, 6:, 6:, 0], 0.0)  # 3 - 3
    np.testing.assert_array_equal(out[0, :6, :6, 0], 0.0)


@pytest.mark.parametrize("shape", [(24, 24, 1, 1), (24, 24), (2, 2, 1)])
def test_rejects_bad_input_shape(shape):
    with pytest.raises(ValueError, match="BiasRemoval"):
        BiasRemoval()(keras.Input(shape))


def test_keras_round_trip(tmp_path):
    inputs = keras.Input((24, 24, 1))
    model = keras.Model(inputs, BiasRemoval(name="bias_removal")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("bias_removal"), BiasRemoval)
    images = _images()
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
    config = BiasRemoval(window=3, masked_offset=50.0).get_config()
    assert (config["window"], config["masked_offset"]) == (3, 50.0)
