"""The five networks: shapes, sizes, defaults and serialisation (docs/design.md §6.3-§6.5)."""

import keras
import numpy as np
import pytest

from ensai_tf import export, inference
from ensai_tf.losses import ParityMSE
from ensai_tf.models import MODEL_BUILDERS, accepted_sides, build_model, min_input_side
from ensai_tf.preprocess.bias import BiasRemoval

# docs/design.md §6.4 and §6.5.5 trainable parameter counts, millions
SPEC_PARAMS = {"alexnet": 36.8, "overfeat": 41.0, "ensai_net": 77.6, "inception_v4": 41.0,
               "resnet": 9.6}

# docs/design.md §6.4/§6.5 intermediate output shapes at 192^2
SPEC_SHAPES = {
    "alexnet": {"conv1": (46, 46, 64), "pool1": (22, 22, 64), "pool2": (10, 10, 192),
                "pool5": (4, 4, 256), "fc6": (1, 1, 4096), "fc8": (1, 1, 5)},
    "overfeat": {"conv1": (46, 46, 64), "pool1": (23, 23, 64), "conv2": (19, 19, 256),
                 "pool2": (9, 9, 256), "pool5": (4, 4, 1024), "fc6": (3, 3, 3072),
                 "fc8": (3, 3, 5)},
    "ensai_net": {"conv2_1x1": (192, 192, 32), "conv3_1x1": (96, 96, 32),
                  "conv5_1x1": (48, 48, 64), "conv7_1x1": (24, 24, 128),
                  "conv8_1x1": (24, 24, 256), "fc1": (512,)},
    "inception_v4": {"Conv2d_1a_3x3": (95, 95, 32), "Conv2d_2a_3x3": (93, 93, 32),
                     "Mixed_3a": (46, 46, 160), "Mixed_4a": (44, 44, 192),
                     "Mixed_5a": (21, 21, 384), "Mixed_5e": (21, 21, 384),
                     "Mixed_6a": (10, 10, 1024), "Mixed_6h": (10, 10, 1024),
                     "Mixed_7a": (4, 4, 1536), "Mixed_7d": (4, 4, 1536)},
    "resnet": {"coordinates": (192, 192, 3), "stem1": (192, 192, 32), "stem1_blur": (96, 96, 32),
               "stem2_blur": (48, 48, 64), "block1_out": (48, 48, 128),
               "block3_blur": (6, 6, 512), "head_flatten": (4608,), "fc": (1024,)},
}

MIN_SIDES = {"alexnet": 163, "overfeat": 103, "ensai_net": 4, "inception_v4": 75, "resnet": 4}


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _images(batch, side, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (batch, side, side, 1)).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(MODEL_BUILDERS))
def full_model(request):
    """Each network at 192^2, built once per module (building takes seconds)."""
    keras.utils.set_random_seed(0)
    return request.param, build_model(request.param)


def test_trainable_parameter_count_matches_spec(full_model):
    name, model = full_model
    # docs/design.md §6.4 rounds to 0.1 M; 2% leaves room for that rounding only
    assert _count(model.trainable_weights) / 1e6 == pytest.approx(SPEC_PARAMS[name], rel=0.02)


def test_intermediate_shapes_match_spec(full_model):
    name, model = full_model
    for layer, shape in SPEC_SHAPES[name].items():
        assert tuple(model.get_layer(layer).output.shape[1:]) == shape, layer


def test_forward_gives_five_float32_outputs(full_model):
    _, model = full_model
    out = model.predict_on_batch(_images(2, 192))
    assert out.shape == (2, 5) and out.dtype == np.float32 and np.all(np.isfinite(out))


def test_first_layer_is_bias_removal_and_last_is_linear_params(full_model):
    _, model = full_model
    assert isinstance(model.layers[1], BiasRemoval)  # layers[0] is the Input
    assert model.layers[-1].name == "params"
    assert model.layers[-1].dtype_policy.name == "float32"


def test_slim_initialisers(full_model):
    name, model = full_model
    if name in ("alexnet", "overfeat"):
        fc6 = model.get_layer("fc6")
        np.testing.assert_array_equal(fc6.bias.numpy(), np.float32(0.1))  # docs/design.md §6.5.2-3
        # truncated normal 0.005: |w| <= 2 sigma and std ~ 0.88 sigma
        w = fc6.kernel.numpy()
        assert np.abs(w).max() <= 0.01 + 1e-7 and 0.0035 < w.std() < 0.0055
        np.testing.assert_array_equal(model.get_layer("fc8").bias.numpy(), 0.0)
        np.testing.assert_array_equal(model.get_layer("conv1").bias.numpy(), 0.0)
    if name == "ensai_net":
        acts = [model.get_layer(n).activation.__name__ for n in
                ("conv1", "conv1_1x1", "conv2", "conv2_1x1", "conv3")]
        assert acts == ["linear", "linear", "linear", "relu", "relu"]  # docs/design.md §6.5.4 [R]
        kernels = [model.get_layer(f"conv{i}").kernel.shape[0] for i in range(1, 9)]
        assert kernels == [3, 5, 10, 10, 10, 10, 10, 3]
    if name == "inception_v4":
        conv = model.get_layer("Mixed_6a_Branch_0_Conv2d_1a_3x3")
        bn = model.get_layer("Mixed_6a_Branch_0_Conv2d_1a_3x3_bn")
        assert not conv.use_bias
        assert (bn.center, bn.scale, bn.epsilon, bn.momentum) == (True, False, 1e-3, 0.99)


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_min_input_side(name):
    assert min_input_side(name) == MIN_SIDES[name]


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_too_small_input_names_the_minimum(name):
    side = MIN_SIDES[name] - 1
    with pytest.raises(ValueError, match=f"{MIN_SIDES[name]}x{MIN_SIDES[name]}x1"):
        build_model(name, input_shape=(side, side, 1))


def test_alexnet_range_is_bounded_by_its_4x4_fc6():
    sides = accepted_sides("alexnet")
    assert (sides[0], sides[-1]) == (163, 194)
    with pytest.raises(ValueError, match="163 to 194"):
        build_model("alexnet", input_shape=(256, 256, 1))


def test_bad_name_channels_and_bn_mode():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16")
    with pytest.raises(ValueError, match=r"\(H, W, 1\), or \(H, W, 2\) for two bands"):
        build_model("ensai_net", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="bn_mode"):
        build_model("inception_v4", input_shape=(75, 75, 1), bn_mode="off")


def test_two_band_input_builds_and_runs():
    """Two filters as channels (docs/design.md §5.10): only the first layer's kernel grows."""
    one = build_model("ensai_net", input_shape=(32, 32, 1))
    two = build_model("ensai_net", input_shape=(32, 32, 2))
    assert two.predict_on_batch(np.zeros((1, 32, 32, 2), np.float32)).shape == (1, 5)
    grown = [(a.shape, b.shape) for a, b in zip(one.weights, two.weights) if a.shape != b.shape]
    assert len(grown) == 1 and grown[0][1][-2] == 2 and grown[0][0][-2] == 1


def test_smallest_accepted_inputs_build_and_run():
    for name in ("overfeat", "inception_v4"):
        side = MIN_SIDES[name]
        model = build_model(name, input_shape=(side, side, 1))
        assert model.predict_on_batch(_images(1, side)).shape == (1, 5)


def test_inception_frozen_mode_has_biased_convs_and_no_bn():
    model = build_model("inception_v4", input_shape=(75, 75, 1), bn_mode="frozen")
    layers = model.layers
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in layers)
    convs = [la for la in layers if isinstance(la, keras.layers.Conv2D)]
    assert convs and all(c.use_bias and c.activation.__name__ == "relu" for c in convs)
    assert model.non_trainable_weights == []


def test_inception_train_mode_updates_moving_statistics():
    model = build_model("inception_v4", input_shape=(75, 75, 1))
    bn = model.get_layer("Conv2d_1a_3x3_bn")
    before = bn.moving_mean.numpy().copy()
    model(_images(2, 75), training=True)
    assert not np.allclose(bn.moving_mean.numpy(), before)


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name,side", [("ensai_net", 32), ("alexnet", 192), ("overfeat", 103)])
def test_mixed_precision_keeps_bias_layer_and_output_float32(mixed_bfloat16, name, side):
    model = build_model(name, input_shape=(side, side, 1))
    assert model.get_layer("bias_removal").dtype_policy.name == "float32"
    if name != "ensai_net":
        # a bfloat16 fc8 (5-filter 1x1 conv) crashed oneDNN's backward pass at batch 32
        assert model.get_layer("fc8").dtype_policy.name == "float32"
    assert model.get_layer("conv2").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    model.compile(optimizer="adam", loss=ParityMSE())
    params = np.tile(np.array([[1.0, 0.1, -0.1, 0.0, 0.0]], np.float32), (2, 1))
    loss = model.train_on_batch(_images(2, side), params)
    assert np.isfinite(loss)


def test_full_size_keras_round_trip(full_model, tmp_path):
    name, model = full_model
    images = _images(2, 192, seed=1)
    model.save(tmp_path / f"{name}.keras")
    loaded = keras.saving.load_model(tmp_path / f"{name}.keras")
    # same float32 graph on the same device: identical up to atol 1e-6
    np.testing.assert_allclose(loaded.predict_on_batch(images), model.predict_on_batch(images),
                               atol=1e-6, rtol=0)


def test_full_size_saved_model_round_trip(full_model, tmp_path):
    name, model = full_model
    if name == "inception_v4":
        pytest.skip("tracing Inception-v4 for export takes ~30 s: see the slow test below")
    images = _images(2, 192, seed=2)
    export.export_saved_model(model, tmp_path / "sm")
    predict = inference.load_for_inference(tmp_path / "sm")
    np.testing.assert_allclose(predict(images), model.predict_on_batch(images), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_inception_saved_model_round_trip_full_size(tmp_path):
    model = build_model("inception_v4")
    images = _images(2, 192, seed=3)
    export.export_saved_model(model, tmp_path / "sm")
    predict = inference.load_for_inference(tmp_path / "sm")
    np.testing.assert_allclose(predict(images), model.predict_on_batch(images), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_width_multiplier_scales_every_hidden_layer(name):
    """width w: each hidden conv/dense has round(w * paper) units; outputs stay 5 float32."""
    full = {layer.name: layer for layer in build_model(name).layers}
    narrow = build_model(name, width=0.25)
    checked = 0
    for layer in narrow.layers:
        units = getattr(layer, "filters", None) or getattr(layer, "units", None)
        if units is None:
            continue
        paper = getattr(full[layer.name], "filters", None) or full[layer.name].units
        expected = paper if layer.name in ("fc8", "params") else max(1, round(0.25 * paper))
        assert units == expected, layer.name
        checked += 1
    assert checked >= 8
    # parameters fall roughly as w^2 (first layer and outputs scale as w or not at all)
    assert narrow.count_params() < 0.1 * SPEC_PARAMS[name] * 1e6
    out = narrow(_images(2, 192))
    assert tuple(out.shape) == (2, 5) and out.dtype == "float32"


def test_width_outside_zero_one_is_a_config_error():
    from ensai_tf import config

    with pytest.raises(config.ConfigError, match="model.width"):
        config.apply_overrides(config.get_preset("paper"), ["model.width=0"])
    assert config.get_preset("cpu").model.width == 0.25
    assert config.get_preset("paper").model.width == 1.0
