"""The combined network (docs/design.md §7.4): alignment, 20 weights, frozen backbones."""

import keras
import numpy as np
import pytest

from ensai_tf import model_dir
from ensai_tf.conventions import ELLIPTICITY_INDICES
from ensai_tf.losses import ParityMSE
from ensai_tf.models import build_model, combiner, stored_combiner
from ensai_tf.preprocess.bias import BiasRemoval

SIDE = 75  # the smallest input Inception-v4 takes: keeps the BN backbone cheap


def tiny_backbone(name, side=SIDE, seed=0, width=5):
    """A small stand-in network with the paper networks' interface (test only).

    ``width`` other than 5: a stand-in shear or Gaussian head (means first).
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((side, side, 1), name="images")
    x = BiasRemoval(name="bias_removal")(inputs)
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(width, name="params")(x)
    return keras.Model(inputs, outputs, name=name)


def parity_twin(model, name):
    """A copy of ``model`` whose ellipticity outputs are exactly negated."""
    twin = tiny_backbone(name)
    twin.set_weights(model.get_weights())
    kernel, bias = twin.get_layer("params").get_weights()
    idx = list(ELLIPTICITY_INDICES)
    kernel[:, idx] *= -1
    bias[idx] *= -1
    twin.get_layer("params").set_weights([kernel, bias])
    return twin


def _images(batch, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (batch, SIDE, SIDE, 1)).astype(np.float32)


def _params(batch, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0.1, 3.0, batch), rng.uniform(-0.6, 0.6, (batch, 2)),
                            rng.uniform(-0.3, 0.3, (batch, 2))]).astype(np.float32)


def test_parity_align_flips_a_network_predicting_minus_e():
    ref = _params(6)
    other = ref.copy()
    other[:, list(ELLIPTICITY_INDICES)] *= -1
    other[:, 0] += 0.5  # theta_e disagreement must not change the decision
    aligned = np.asarray(combiner.ParityAlign(reference=0)([ref, other]))
    np.testing.assert_array_equal(aligned[:, 0], ref)
    np.testing.assert_array_equal(aligned[:, 1, 1:3], ref[:, 1:3])
    np.testing.assert_array_equal(aligned[:, 1, 0], other[:, 0])


def test_parity_align_closed_form_rule():
    ref = np.array([[1.0, 0.3, 0.1, 0.0, 0.0]], np.float32)
    # d- = mean((0.3-0.1)^2, (0.1+0.2)^2) = 0.065 ; d+ = mean(0.4^2, 0.1^2) = 0.085: keep
    keep = np.array([[1.0, 0.1, -0.2, 0.0, 0.0]], np.float32)
    # d- = mean(0.4^2, 0.2^2) = 0.1 ; d+ = mean(0.2^2, 0^2) = 0.02: flip
    flip = np.array([[1.0, -0.1, -0.1, 0.0, 0.0]], np.float32)
    aligned = np.asarray(combiner.ParityAlign(reference=0)([ref, keep, flip]))
    np.testing.assert_array_equal(aligned[0, 1], keep[0])
    np.testing.assert_allclose(aligned[0, 2], [1.0, 0.1, 0.1, 0.0, 0.0])


def test_twenty_trainable_scalars_initialised_to_a_quarter():
    nets = [tiny_backbone(f"net{i}", seed=i) for i in range(4)]
    model = combiner.build_combiner(nets)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 20
    np.testing.assert_array_equal(model.get_layer("params").w.numpy(), 0.25)
    dense = combiner.build_combiner(nets, mode="dense")
    assert sum(int(np.prod(w.shape)) for w in dense.trainable_weights) == 20 * 5 + 5
    x = _images(3)
    # both start at the plain average of the aligned predictions (float32 sums)
    np.testing.assert_allclose(dense.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_average_of_a_network_and_its_parity_twin_is_the_network():
    a = tiny_backbone("a")
    model = combiner.build_combiner([a, parity_twin(a, "b")])
    x = _images(4)
    np.testing.assert_allclose(model.predict_on_batch(x), a.predict_on_batch(x), atol=1e-6)


@pytest.fixture(scope="module")
def inception_combiner():
    """Inception-v4 (proper BN) at its smallest input beside two small stand-ins."""
    keras.utils.set_random_seed(0)
    nets = [tiny_backbone("ref"), build_model("inception_v4", input_shape=(SIDE, SIDE, 1)),
            tiny_backbone("other", seed=1)]
    return nets, combiner.build_combiner(nets, reference=0)


def test_fit_changes_only_the_combination_weights(inception_combiner):
    nets, model = inception_combiner
    backbone_before = [[w.numpy().copy() for w in net.weights] for net in nets]
    bn = nets[1].get_layer("Mixed_7d_Branch_3_Conv2d_0b_1x1_bn")
    stats_before = (bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy())
    w_before = model.get_layer("params").w.numpy().copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=ParityMSE())
    model.fit(_images(4), _params(4), batch_size=2, epochs=1, shuffle=False, verbose=0)
    for net, before in zip(nets, backbone_before):
        for w, b in zip(net.weights, before):
            np.testing.assert_array_equal(w.numpy(), b, err_msg=w.path)  # exact: never touched
    np.testing.assert_array_equal(bn.moving_mean.numpy(), stats_before[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), stats_before[1])
    assert not np.allclose(model.get_layer("params").w.numpy(), w_before)


def test_keras_round_trip_keeps_predictions_and_frozen_backbones(inception_combiner, tmp_path):
    _, model = inception_combiner
    x = _images(2, seed=5)
    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras", compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6,
                               rtol=0)
    assert sum(int(np.prod(w.shape)) for w in loaded.trainable_weights) == 3 * 5
    # the reloaded combiner still runs Inception's BN in inference mode under fit
    bn = [la for la in loaded.layers if la.name == "inception_v4"][0].get_layer(
        "Conv2d_1a_3x3_bn")
    before = bn.moving_mean.numpy().copy()
    loaded.compile(optimizer="adam", loss=ParityMSE())
    loaded.train_on_batch(x, _params(2))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)


def test_load_backbones(tmp_path):
    net = tiny_backbone("saved")
    net.save(tmp_path / "a.keras")
    (loaded,) = combiner.load_backbones([tmp_path / "a.keras"])
    x = _images(2)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), net.predict_on_batch(x))
    with pytest.raises(ValueError, match="missing.keras"):
        combiner.load_backbones([tmp_path / "missing.keras"])
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.keras"):
        combiner.load_backbones([tmp_path / "bad.keras"])
    tiny_backbone("odd", width=6).save(tmp_path / "odd.keras")
    with pytest.raises(ValueError, match="odd.keras.*cannot join the combiner: output width 6"):
        combiner.load_backbones([tmp_path / "odd.keras"])


@pytest.mark.parametrize("width", [7, 10, 14, 20, 35])
def test_point_estimate_backbone_keeps_the_first_five_outputs(width):
    net = tiny_backbone("shear", width=width)
    x = _images(3)
    full = net.predict_on_batch(x)
    wrapped = combiner.point_estimate_backbone(net)
    assert wrapped.name == "shear" and net.name == "shear_full"
    assert wrapped.output_shape == (None, 5)
    np.testing.assert_array_equal(wrapped.predict_on_batch(x), full[:, :5])
    plain = tiny_backbone("plain")
    assert combiner.point_estimate_backbone(plain) is plain
    with pytest.raises(ValueError, match="output width 6"):
        combiner.point_estimate_backbone(tiny_backbone("odd", width=6))


def test_combiner_with_a_gaussian_head_round_trips(tmp_path):
    """A Gaussian/shear network joins through its means and survives .keras save/load."""
    a = tiny_backbone("a")
    net = tiny_backbone("a", width=14, seed=1)  # same name as a: an AlexNet twin
    net.save(tmp_path / "g.keras")
    a.save(tmp_path / "a.keras")
    nets = combiner.load_backbones([tmp_path / "a.keras", tmp_path / "g.keras"])
    assert [n.name for n in nets] == ["a", "a_1"]
    model = combiner.build_combiner(nets)
    x = _images(2, seed=3)
    means = np.stack([a.predict_on_batch(x), net.predict_on_batch(x)[:, :5]], axis=1)
    np.testing.assert_allclose(model.predict_on_batch(x),
                               np.mean(combiner.ParityAlign()(list(means.swapaxes(0, 1))), axis=1),
                               atol=1e-6, rtol=0)
    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras", compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6,
                               rtol=0)
    assert sum(int(np.prod(w.shape)) for w in loaded.trainable_weights) == 2 * 5


def test_build_combiner_rejects_bad_arguments():
    a, b = tiny_backbone("a"), tiny_backbone("b")
    with pytest.raises(ValueError, match="at least one"):
        combiner.build_combiner([])
    with pytest.raises(ValueError, match="reference"):
        combiner.build_combiner([a, b], reference=2)
    with pytest.raises(ValueError, match="distinct"):
        combiner.build_combiner([a, tiny_backbone("a")])
    with pytest.raises(ValueError, match="input shapes"):
        combiner.build_combiner([a, tiny_backbone("c", side=32)])
    with pytest.raises(ValueError, match="mode"):
        combiner.build_combiner([a, b], mode="mlp")


@pytest.mark.parametrize("mode", ["per_parameter", "dense"])
def test_combiner_stored_by_reference_rebuilds_the_same_network(tmp_path, mode):
    """combiner.json (backbone files relative to its folder, their SHA-256, the combination
    weights) rebuilds the combiner exactly; a changed, missing or corrupt part is named."""
    import json

    from ensai_tf import inference
    from ensai_tf.errors import ModelDirError

    nets = tmp_path / "nets"
    nets.mkdir()
    tiny_backbone("a").save(nets / "a.keras")
    tiny_backbone("g", width=14, seed=1).save(nets / "g.keras")
    paths = [nets / "a.keras", nets / "g.keras"]
    model = combiner.build_combiner(combiner.load_backbones(paths), reference=1, mode=mode)
    params = model.get_layer("params")
    rng = np.random.default_rng(4)
    params.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in params.get_weights()])
    folder = tmp_path / "combined"
    folder.mkdir()
    record = stored_combiner.combiner_record(model, paths, folder)
    assert record["backbones"] == ["../nets/a.keras", "../nets/g.keras"]
    assert record["reference"] == 1 and record["mode"] == mode
    (folder / "combiner.json").write_text(json.dumps(record))
    assert model_dir.model_source(folder)[0] == "combined"
    assert model_dir.model_source(nets)[0] is None

    x = _images(3, seed=5)
    rebuilt = stored_combiner.load_combined(folder)
    np.testing.assert_array_equal(rebuilt.predict_on_batch(x), model.predict_on_batch(x))
    predict_fn, npix = inference.load_predictor(folder)
    assert npix == SIDE
    np.testing.assert_allclose(predict_fn(x), model.predict_on_batch(x), rtol=0, atol=1e-6)

    # a retrained backbone must not silently change the combination
    original = (nets / "a.keras").read_bytes()
    tiny_backbone("a", seed=7).save(nets / "a.keras")
    with pytest.raises(ModelDirError, match=r"'\S*/nets/a\.keras'.*SHA-256 differs.*ensai combine"):
        inference.load_predictor(folder)
    (nets / "a.keras").unlink()
    with pytest.raises(ModelDirError, match=r"a\.keras.*does not exist"):
        stored_combiner.load_combined(folder)
    (nets / "a.keras").write_bytes(original)
    (folder / "combiner.json").write_text(json.dumps({**record, "weights": [[1.0, 2.0]]}))
    with pytest.raises(ModelDirError, match="combination weights do not fit"):
        stored_combiner.load_combined(folder)
    (folder / "combiner.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="combiner.json.*not valid JSON"):
        inference.load_predictor(folder)
    (folder / "combiner.json").write_text(json.dumps({"weights": []}))
    with pytest.raises(ModelDirError, match=r"lacks \['backbones'"):
        inference.load_predictor(folder)


@pytest.mark.parametrize("count", [2, 4, 8])
def test_with_views_is_the_numpy_average_over_views(count):
    """A backbone averaging over views equals ensai_tf.symmetry.symmetrize of the plain one."""
    from ensai_tf import symmetry

    net = tiny_backbone("a", seed=3)
    views = symmetry.VIEW_SETS[count]
    averaged = combiner.with_views(net, views)
    x = _images(4, seed=6)
    expected = symmetry.symmetrize(net.predict_on_batch, views)(x)
    assert averaged.name == "a" and len(views) == count
    np.testing.assert_allclose(averaged.predict_on_batch(x), expected, rtol=0, atol=2e-6)
    assert combiner.with_views(net, symmetry.VIEW_SETS[1]) is net


def test_a_view_averaged_combiner_round_trips_and_is_equivariant(tmp_path):
    """combiner.json with views rebuilds the same network; with all eight views its theta_E
    is exactly the same for a turned image, and bad views are refused with the field named."""
    import json

    from ensai_tf import symmetry
    from ensai_tf.errors import ModelDirError

    nets = tmp_path / "nets"
    nets.mkdir()
    paths = [nets / "a.keras", nets / "b.keras"]
    tiny_backbone("a", seed=1).save(paths[0])
    tiny_backbone("b", seed=2).save(paths[1])
    views = symmetry.VIEW_SETS[8]
    backbones = [combiner.with_views(b, views) for b in combiner.load_backbones(paths)]
    model = combiner.build_combiner(backbones)
    folder = tmp_path / "combined"
    folder.mkdir()
    record = stored_combiner.combiner_record(model, paths, folder, views)
    assert record["views"][1] == [False, False, True]
    (folder / "combiner.json").write_text(json.dumps(record))
    x = _images(3, seed=8)
    rebuilt = stored_combiner.load_combined(folder)
    np.testing.assert_allclose(rebuilt.predict_on_batch(x), model.predict_on_batch(x),
                               rtol=0, atol=1e-6)
    turned = symmetry.transform_images(x, (True, True, False))
    np.testing.assert_allclose(rebuilt.predict_on_batch(turned)[:, 0],
                               rebuilt.predict_on_batch(x)[:, 0], rtol=1e-5)
    (folder / "combiner.json").write_text(json.dumps({**record, "views": [[True, 0]]}))
    with pytest.raises(ModelDirError, match="'views' must be a list of distinct"):
        stored_combiner.load_combined(folder)
    del record["views"]  # a record from before views: one view, the image as given
    (folder / "combiner.json").write_text(json.dumps(record))
    single = combiner.build_combiner(combiner.load_backbones(paths))
    np.testing.assert_allclose(stored_combiner.load_combined(folder).predict_on_batch(x),
                               single.predict_on_batch(x), rtol=0, atol=1e-6)


def test_backbones_may_average_different_views(tmp_path):
    """A record with one view set per backbone rebuilds each backbone's own average; a
    record whose per-backbone list does not match the backbones is refused."""
    import json

    from ensai_tf import symmetry
    from ensai_tf.errors import ModelDirError

    nets = tmp_path / "nets"
    nets.mkdir()
    paths = [nets / "a.keras", nets / "b.keras"]
    tiny_backbone("a", seed=1).save(paths[0])
    tiny_backbone("b", seed=2).save(paths[1])
    views = [symmetry.VIEW_SETS[4], symmetry.VIEW_SETS[1]]
    backbones = [combiner.with_views(b, v)
                 for b, v in zip(combiner.load_backbones(paths), views)]
    model = combiner.build_combiner(backbones)
    folder = tmp_path / "combined"
    folder.mkdir()
    record = stored_combiner.combiner_record(model, paths, folder, views)
    assert [len(v) for v in record["views"]] == [4, 1]
    assert stored_combiner.record_views(record) == [list(v) for v in views]
    (folder / "combiner.json").write_text(json.dumps(record))
    x = _images(3, seed=9)
    rebuilt = stored_combiner.load_combined(folder)
    np.testing.assert_allclose(rebuilt.predict_on_batch(x), model.predict_on_batch(x),
                               rtol=0, atol=1e-6)
    # the same views for both backbones are stored as one list, as before; one view set is
    # recognised by its depth, whatever the type of its flags
    same = stored_combiner.combiner_record(model, paths, folder, [views[0], views[0]])
    assert same["views"] == [list(g) for g in views[0]]
    as_ints = stored_combiner.combiner_record(model, paths, folder, [(1, 0, 0), (0, 0, 0)])
    assert as_ints["views"] == [[True, False, False], [False, False, False]]
    (folder / "combiner.json").write_text(json.dumps({**record, "views": record["views"][:1]}))
    with pytest.raises(ModelDirError, match="or 2 such lists, one per backbone"):
        stored_combiner.load_combined(folder)

