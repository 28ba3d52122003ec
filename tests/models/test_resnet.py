"""The project's residual network: coordinate channels, blur pooling, zero-started blocks (§6.5.5)."""

import doctest

import keras
import numpy as np
import pytest

from ensai_tf.conventions import pixel_coordinates
from ensai_tf.losses import ParityMSE
from ensai_tf.models import build_model, resnet

BINOMIAL = np.array([1.0, 2.0, 1.0]) / 4.0


def _images(batch, side, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (batch, side, side, channels)).astype(np.float32)


def test_docstring_examples_run():
    assert doctest.testmod(resnet).failed == 0


def test_coordinate_channels_are_pixel_centres_over_the_half_field():
    """x follows the column, y the row, both the pixel-centre grid of docs/design.md §0 / (n/2)."""
    images = _images(2, 6, channels=1)
    out = np.asarray(resnet.CoordinateChannels()(images))
    centres = pixel_coordinates(6, pixel_scale=1.0) / 3.0
    assert out.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(out[..., 0], images[..., 0])
    np.testing.assert_allclose(out[1, :, :, 1], np.tile(centres, (6, 1)), atol=1e-7)
    np.testing.assert_allclose(out[1, :, :, 2], np.tile(centres[:, None], (1, 6)), atol=1e-7)


def test_blur_pool_is_the_binomial_kernel_with_stride_two():
    """Inside the image, output (i, j) = sum k_a k_b x[2i + a, 2j + b] with k = [1, 2, 1] / 4."""
    x = _images(1, 12, channels=3, seed=1)
    out = np.asarray(resnet.BlurPool()(x))
    assert out.shape == (1, 6, 6, 3)
    kernel = np.outer(BINOMIAL, BINOMIAL)
    for i in range(5):  # the last row and column touch the padding
        for j in range(5):
            patch = x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            np.testing.assert_allclose(out[0, i, j], np.einsum("ab,abc->c", kernel, patch),
                                       rtol=1e-5)


def test_blur_pool_keeps_a_constant_image_constant_up_to_the_edges():
    out = np.asarray(resnet.BlurPool()(np.full((1, 7, 7, 2), 3.0, np.float32)))
    assert out.shape == (1, 4, 4, 2)
    np.testing.assert_allclose(out, 3.0, rtol=1e-6)


def test_blocks_start_as_their_shortcut():
    """The second convolution of each block starts at zero: the block is ReLU(shortcut)."""
    model = build_model("resnet", input_shape=(32, 32, 1), width=0.125)
    probe = keras.Model(model.input, [model.get_layer("block1_proj").output,
                                      model.get_layer("block1_out").output])
    shortcut, out = probe.predict_on_batch(_images(2, 32, seed=2))
    np.testing.assert_allclose(out, np.maximum(shortcut, 0.0), atol=1e-6)
    assert not np.any(model.get_layer("block2_b").kernel.numpy())


def test_head_keeps_position():
    """The head flattens a spatial map: moving the arcs moves the features, no global pool."""
    model = build_model("resnet", input_shape=(64, 64, 1), width=0.125)
    assert not any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in model.layers)
    assert tuple(model.get_layer("head_flatten").output.shape[1:]) == (2 * 2 * 16,)


def test_two_bands_and_any_side_from_the_bias_window():
    model = build_model("resnet", input_shape=(40, 40, 2), width=0.125)
    assert model.predict_on_batch(_images(1, 40, channels=2)).shape == (1, 5)
    assert build_model("resnet", input_shape=(4, 4, 1), width=0.125).output_shape == (None, 5)


def test_mixed_bfloat16_trains_with_float32_bias_removal_and_output():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("resnet", input_shape=(32, 32, 1), width=0.125)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("bias_removal").dtype_policy.name == "float32"
    assert model.get_layer("block1_a").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    model.compile(optimizer="adam", loss=ParityMSE())
    params = np.tile(np.array([[1.0, 0.1, -0.1, 0.0, 0.0]], np.float32), (2, 1))
    assert np.isfinite(model.train_on_batch(_images(2, 32), params))


@pytest.mark.parametrize("layer", [resnet.CoordinateChannels, resnet.BlurPool])
def test_layers_round_trip_through_their_config(layer):
    original = layer(name="probe")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    x = _images(1, 8, seed=4)
    assert type(clone) is layer and clone.name == "probe"
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(original(x)))
