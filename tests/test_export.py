"""SavedModel export and the inference loader."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from ensai_tf import export, inference, symmetry
from ensai_tf.conventions import PARAM_NAMES
from ensai_tf.models import build_model, combiner, loading
from ensai_tf.preprocess.bias import BiasRemoval

SIDE = 32


def tiny_backbone(name, seed=0, width=5):
    """A small stand-in network with the paper networks' interface (test only).

    ``width=14``: a stand-in Gaussian head with the shear (means first).
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 1), name="images")
    x = BiasRemoval(name="bias_removal")(inputs)
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(width, name="params")(x), name=name)


def _images(batch=2, seed=0):
    images = np.random.default_rng(seed).uniform(0, 1, (batch, SIDE, SIDE, 1)).astype(np.float32)
    images[:, :4, :4] = 0.0  # a mask, as the pipeline delivers
    return images


@pytest.fixture(scope="module")
def ensai_net_small():
    keras.utils.set_random_seed(0)
    return build_model("ensai_net", input_shape=(SIDE, SIDE, 1))


@pytest.fixture(scope="module")
def exported(ensai_net_small, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "saved_model"
    export.export_saved_model(ensai_net_small, path)
    return path


def test_saved_model_reload_gives_identical_predictions(ensai_net_small, exported):
    x = _images()
    predict = inference.load_for_inference(exported)
    assert predict.kind == "saved_model" and predict.input_shape == (SIDE, SIDE, 1)
    # same float32 graph and device: identical up to atol 1e-6
    np.testing.assert_allclose(predict(x), ensai_net_small.predict_on_batch(x), atol=1e-6, rtol=0)
    # the raw endpoint, as ensai_tf.predict uses it: the five named (N,) parameters
    named = predict.serve(x)
    np.testing.assert_array_equal(np.stack([named[n] for n in PARAM_NAMES], -1), predict(x))


def test_serving_signature_has_images_in_and_five_named_outputs(exported):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported))
    signature = loaded.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.name == "images" and spec.shape.as_list() == [None, SIDE, SIDE, 1]
    assert spec.dtype == tf.float32
    outputs = signature.structured_outputs
    assert sorted(outputs) == sorted(PARAM_NAMES)
    assert all(o.shape.as_list() == [None] for o in outputs.values())
    out = loaded.serve(tf.constant(_images(3)))
    assert all(out[name].shape == (3,) for name in PARAM_NAMES)


def test_keras_file_through_the_same_loader(ensai_net_small, tmp_path):
    x = _images()
    ensai_net_small.save(tmp_path / "m.keras")
    predict = inference.load_for_inference(tmp_path / "m.keras")
    assert predict.kind == "keras" and not hasattr(predict, "serve")
    np.testing.assert_allclose(predict(x), ensai_net_small.predict_on_batch(x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="32x32"):
        predict(np.zeros((1, 16, 16, 1), np.float32))


@pytest.mark.parametrize("gaussian, views", [(False, 1), (True, 1), (True, 2)])
def test_combiner_exports_and_reloads(tmp_path, gaussian, views):
    """Also with each backbone averaging two views (the image and its transpose)."""
    nets = [tiny_backbone(f"net{i}", seed=i) for i in range(4)]
    if gaussian:  # a Gaussian-head network joins through PointEstimate
        nets.append(combiner.point_estimate_backbone(tiny_backbone("shear", seed=4, width=14)))
    nets = [combiner.with_views(net, symmetry.VIEW_SETS[views]) for net in nets]
    model = combiner.build_combiner(nets)
    x = _images(seed=1)
    export.export_saved_model(model, tmp_path / "sm")
    model.save(tmp_path / "c.keras")
    expected = model.predict_on_batch(x)
    for path in (tmp_path / "sm", tmp_path / "c.keras"):
        np.testing.assert_allclose(inference.load_for_inference(path)(x), expected, atol=1e-6, rtol=0)


def test_saved_model_loads_in_a_process_without_ensai_tf(ensai_net_small, exported):
    x = _images(2, seed=3)
    np.save(exported.parent / "x.npy", x)
    script = f"""
import json, sys
sys.modules["ensai_tf"] = None  # any import of ensai_tf now fails
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(exported)!r})
out = loaded.serve(tf.constant(np.load({str(exported.parent / "x.npy")!r})))
print(json.dumps({{k: np.asarray(v).tolist() for k, v in out.items()}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    got = np.stack([out[name] for name in PARAM_NAMES], axis=-1)
    np.testing.assert_allclose(got, ensai_net_small.predict_on_batch(x), atol=1e-6, rtol=0)


def test_clear_errors_for_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        inference.load_for_inference(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        inference.load_for_inference(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no saved_model.pb"):
        inference.load_for_inference(tmp_path / "other")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        inference.load_for_inference(tmp_path / "corrupt")
    (tmp_path / "bad.keras").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.keras"):
        inference.load_for_inference(tmp_path / "bad.keras")
    (tmp_path / "zero.keras").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        inference.load_for_inference(tmp_path / "zero.keras")


def test_export_rejects_a_model_without_five_outputs(tmp_path):
    inputs = keras.Input((SIDE, SIDE, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        export.export_saved_model(model, tmp_path / "sm")


@pytest.mark.parametrize("head,width", [("point", 7), ("diagonal", 14), ("full", 35)])
def test_shear_and_gaussian_heads_export_and_reload(tmp_path, head, width):
    """Shear outputs come back named gamma_1/gamma_2; a Gaussian head's serve also
    gives per-target std and the covariance L L^T, equal to the Keras model's up to 1e-6."""
    from ensai_tf import uncertainty
    from ensai_tf.conventions import target_names

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIDE, SIDE, 1), name="images")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 5, strides=4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(width, name="params")(x))
    export.export_saved_model(model, tmp_path / "sm")
    x = _images(3)
    raw = np.asarray(model.predict_on_batch(x), np.float64)
    loaded = inference.load_for_inference(tmp_path / "sm")  # keep it: it owns the variables
    out = loaded.serve(x)
    names = target_names(7)
    assert set(names) <= set(out)
    fn, _ = inference.load_predictor(tmp_path / "sm", raw=True)
    np.testing.assert_allclose(fn(x), raw, atol=1e-6)
    if head == "point":
        np.testing.assert_allclose(np.stack([out[n] for n in names], -1), raw, atol=1e-6)
        return
    summary = uncertainty.gaussian_summary(raw)
    np.testing.assert_allclose(np.stack([out[n] for n in names], -1), summary["mean"], atol=1e-6)
    np.testing.assert_allclose(np.stack([out[f"{n}_std"] for n in names], -1), summary["std"],
                               rtol=1e-5)
    np.testing.assert_allclose(out["covariance"], summary["covariance"], rtol=1e-5, atol=1e-7)


def _policies(model):
    """Every layer's dtype policy name, nested models included."""
    return {layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)}


@pytest.fixture(scope="module")
def ensai_net_bf16():
    """The same network and initial weights as ``ensai_net_small``, built as training
    builds it with ``train.mixed_precision`` on."""
    from ensai_tf.train import dtype_policy

    with dtype_policy("mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        return build_model("ensai_net", input_shape=(SIDE, SIDE, 1))


def test_float32_model_computes_a_mixed_precision_network_in_float32(ensai_net_small,
                                                                     ensai_net_bf16):
    assert "mixed_bfloat16" in _policies(ensai_net_bf16)
    model = loading.float32_model(ensai_net_bf16)
    assert _policies(model) == {"float32"}
    assert [layer.name for layer in model.layers] == [layer.name for layer in ensai_net_bf16.layers]
    for got, want in zip(model.get_weights(), ensai_net_bf16.get_weights()):
        np.testing.assert_array_equal(got, want)
    x = _images(4, seed=5)
    # the same float32 weights computed in float32: equal to a float32-built network
    # up to float rounding (1e-5 of outputs of order 1)
    np.testing.assert_allclose(model.predict_on_batch(x), ensai_net_small.predict_on_batch(x),
                               atol=1e-5, rtol=0)
    assert model.predict_on_batch(x).dtype == np.float32


def test_float32_model_returns_a_float32_network_unchanged(ensai_net_small):
    assert loading.float32_model(ensai_net_small) is ensai_net_small


def test_mixed_precision_files_load_and_export_in_float32(ensai_net_small, ensai_net_bf16,
                                                          tmp_path):
    """A .keras file trained in mixed_bfloat16 predicts in float32 through every loader,
    and its SavedModel export serves float32 computation."""
    x = _images(3, seed=6)
    want = ensai_net_small.predict_on_batch(x)
    ensai_net_bf16.save(tmp_path / "bf16.keras")
    assert _policies(loading.load_keras_model(tmp_path / "bf16.keras")) == {"float32"}
    export.export_saved_model(ensai_net_bf16, tmp_path / "sm")
    for path in (tmp_path / "bf16.keras", tmp_path / "sm"):
        np.testing.assert_allclose(inference.load_for_inference(path)(x), want, atol=1e-5, rtol=0)


def test_combiner_on_mixed_precision_backbones_runs_in_float32(tmp_path):
    from ensai_tf.train import dtype_policy

    with dtype_policy("mixed_bfloat16"):
        nets = [tiny_backbone(f"net{i}", seed=i) for i in range(4)]
    for i, net in enumerate(nets):
        net.save(tmp_path / f"net{i}.keras")
    backbones = combiner.load_backbones([tmp_path / f"net{i}.keras" for i in range(4)])
    assert all(_policies(b) == {"float32"} for b in backbones)
    model = combiner.build_combiner(backbones)
    model.save(tmp_path / "c.keras")
    assert _policies(loading.load_keras_model(tmp_path / "c.keras")) == {"float32"}
