"""Tests of ensai_tf.data.pipeline: online stream, resume, frozen caches, stored arcs.

Most tests replace the ray-tracing simulator by a cheap stateless ring
generator (``fake_simulator.py``) so that the pipeline's own properties
(ordering, resume, caching, atomicity) are tested quickly on 2 shared cores;
the observation chain is always the real one. ``test_real_chain_*`` run the
real simulator end to end.
"""

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import keras

from ensai_tf import config as config_lib
from ensai_tf import conventions
from ensai_tf.data import cache, pipeline
from ensai_tf.errors import InputError
from fake_simulator import install as install_fake_simulator  # tests/data/ is on sys.path



@pytest.fixture(scope="module")
def fake_simulator():
    with pytest.MonkeyPatch.context() as mp:
        install_fake_simulator(mp)
        yield


def _small_config(cache_dir):
    """Smoke preset, 6 validation / 5 test examples in batches of 4 (so a tail batch)."""
    smoke = config_lib.get_preset("smoke")
    return dataclasses.replace(smoke, data=dataclasses.replace(
        smoke.data, val_size=6, test_size=5, sim_batch_size=4, cache_dir=str(cache_dir)))


@pytest.fixture
def cfg(tmp_path):
    return _small_config(tmp_path / "cache")


@pytest.fixture(scope="module")
def val_cache(fake_simulator, tmp_path_factory):
    """(config, path) of one validation cache shared by the read-only tests."""
    cfg = _small_config(tmp_path_factory.mktemp("shared") / "cache")
    return cfg, pipeline.materialise_split("validation", cfg)


def _take(ds, n):
    return [tuple(np.asarray(t) for t in item) for item in ds.take(n)]


# ----------------------------------------------------------------- train --

def test_train_stream_is_model_ready_and_resumes_at_start_step(fake_simulator, cfg):
    """Batch k of a stream started at 0 equals batch k - 2 of one started at 2, bit for bit."""
    full = _take(pipeline.make_dataset("train", cfg, batch_size=2), 3)
    resumed = _take(pipeline.make_dataset("train", cfg, batch_size=2, start_step=2), 1)
    x, y = full[0]
    assert x.shape == (2, 192, 192, 1) and x.dtype == np.float32
    assert y.shape == (2, 5) and y.dtype == np.float32
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
    for (x0, y0), (x1, y1) in zip(full[2:], resumed):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    assert not np.array_equal(full[0][1], full[1][1])  # consecutive batches differ


def test_observe_seeds_are_a_separate_stream():
    """fold_in(seed, OBSERVE_STREAM) differs from the seed and from the simulator's
    small fold_in indices (streams 0-3 and candidate attempts 0-63)."""
    seeds = tf.constant([[1, 2], [3, 4]], tf.int64)
    obs = pipeline.observe_seeds(seeds).numpy()
    assert obs.shape == (2, 2)
    for i, s in enumerate(seeds.numpy()):
        others = [s] + [tf.random.fold_in(s, tf.constant(k, tf.int64)).numpy()
                        for k in range(64)]
        assert not any(np.array_equal(obs[i], o) for o in others)


# ------------------------------------------------------------ eval caches --

def _cache_hashes(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return {k: v["sha256"] for k, v in manifest["arrays"].items()}


def test_validation_cache_is_bitwise_identical_across_builds(val_cache, tmp_path):
    cfg, path = val_cache
    _, info = pipeline.make_dataset("validation", cfg, cache_dir=tmp_path / "b", with_info=True)
    other = pathlib.Path(info["cache_path"])
    assert other.parent == tmp_path / "b" and other.name == path.name
    hashes = _cache_hashes(path)
    assert hashes == _cache_hashes(other)
    assert {"image", "params", "clean_params", "seed", "index", "magnification"} <= set(hashes)
    assert any(k.startswith("draws.") for k in hashes)


def test_test_cache_is_bitwise_identical_across_builds_and_differs_from_validation(
        fake_simulator, tmp_path):
    """docs/design.md §3.7 [R]: the test split is the same bits on every build, and not the validation data."""
    paths = [pipeline.materialise_split("test", _small_config(tmp_path / d)) for d in ("a", "b")]
    assert paths[0].name == paths[1].name
    hashes = _cache_hashes(paths[0])
    assert hashes == _cache_hashes(paths[1])
    val = pipeline.materialise_split("validation", _small_config(tmp_path / "a"))
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal,
                             pipeline.load_cache(val)["image"][:5],
                             pipeline.load_cache(paths[0])["image"])


def test_cached_split_reads_back_every_example_in_order(val_cache):
    cfg, path = val_cache
    ds, info = pipeline.make_dataset("validation", cfg, batch_size=4, with_info=True)
    assert pathlib.Path(info["cache_path"]) == path and info["size"] == 6
    batches = _take(ds, 10)
    assert [len(y) for _, y in batches] == [4, 2]
    stored = pipeline.load_cache(path)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), stored["image"])
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), stored["params"])
    np.testing.assert_array_equal(stored["index"], np.arange(6))
    assert np.any(stored["image"] != 0)


@pytest.mark.parametrize("batch_size", (3, 4))
def test_cached_split_states_its_batch_count_so_keras_does_not_warn(val_cache, batch_size):
    """6 examples: 2 batches of 3, or a batch of 4 and a tail of 2; Keras's evaluate() then
    knows the count and gives no "ran out of data" warning."""
    import warnings

    cfg, _ = val_cache
    ds = pipeline.make_dataset("validation", cfg, batch_size=batch_size)
    assert int(ds.cardinality()) == 2 == len(list(ds))
    model = keras.Sequential([keras.Input((conventions.NPIX, conventions.NPIX, 1)),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    model.compile(loss="mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.evaluate(ds, verbose=0)
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_labels_change_only_by_the_recorded_shift(val_cache):
    """docs/design.md §5.2: params = clean params + 0.04 * (m, n) on x_L, y_L; nothing else moves."""
    stored = pipeline.load_cache(val_cache[1])
    expected = stored["clean_params"].astype(np.float64)
    expected[:, conventions.Param.X_L] += 0.04 * stored["draws.shift_x_pix"]
    expected[:, conventions.Param.Y_L] += 0.04 * stored["draws.shift_y_pix"]
    np.testing.assert_allclose(stored["params"], expected, atol=1e-6)  # float32 rounding


def test_stored_seeds_recreate_examples_in_any_batching(val_cache):
    """docs/design.md §11 rules 3-4: examples 5 and 1, re-made one per batch (the cache used
    batches of 4 and 2), have the same seeds, draws and labels, and the same image
    up to float32 rounding of batched maths."""
    cfg, path = val_cache
    stored = pipeline.load_cache(path)
    again = pipeline.recreate_examples("validation", [5, 1], cfg)
    np.testing.assert_array_equal(again["index"], [5, 1])
    for key in ("seed", "params", "clean_params"):
        np.testing.assert_array_equal(again[key], stored[key][[5, 1]])
    for key, value in again["draws"].items():
        np.testing.assert_array_equal(value, stored[f"draws.{key}"][[5, 1]])
    np.testing.assert_allclose(again["image"], stored["image"][[5, 1]], atol=1e-5)


def test_corrupt_or_partial_caches_are_never_read(val_cache, tmp_path):
    cfg, path = val_cache
    copy = tmp_path / "cache" / path.name
    shutil.copytree(path, copy)
    assert pipeline.verify_cache(copy) is not None
    image = copy / "image.npy"
    original = image.read_bytes()
    image.write_bytes(original[:1000])  # a truncated (partial) array
    assert pipeline.verify_cache(copy) is None
    image.write_bytes(original)
    (copy / "manifest.json").rename(copy / "manifest.moved")  # an unfinished write
    assert pipeline.verify_cache(copy) is None
    with pytest.raises(pipeline.CacheError, match="not a complete"):
        pipeline.load_cache(copy)


def test_corrupt_cache_is_rebuilt_identically(val_cache, tmp_path):
    cfg, path = val_cache
    local = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                              cache_dir=str(tmp_path / "c")))
    copy = tmp_path / "c" / path.name
    shutil.copytree(path, copy)
    raw = bytearray((copy / "image.npy").read_bytes())
    raw[-7] ^= 0xFF  # one flipped byte
    (copy / "image.npy").write_bytes(bytes(raw))
    assert pipeline.verify_cache(copy) is None
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        rebuilt = pipeline.materialise_split("validation", local)
    assert rebuilt == copy
    assert _cache_hashes(copy) == _cache_hashes(path)
    assert pipeline.verify_cache(copy) is not None
    assert not [p.name for p in copy.parent.iterdir() if ".tmp-" in p.name]


def test_cache_key_tracks_data_settings(cfg):
    base = pipeline.cache_key("test", cfg, 0, 5)
    other = dataclasses.replace(cfg, observe=dataclasses.replace(cfg.observe, psf_prob=0.5))
    assert pipeline.cache_key("test", other, 0, 5) != base
    assert pipeline.cache_key("test", cfg, 1, 5) != base
    assert pipeline.cache_key("test", cfg, 0, 6) != base
    assert pipeline.cache_key("validation", cfg, 0, 5) != base
    assert pipeline.cache_key("test", cfg, 0, 5, stamps=np.ones((1, 4, 4))) != base
    unrelated = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate=1e-3))
    assert pipeline.cache_key("test", unrelated, 0, 5) == base


def _is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name inside a module, not a submodule
        return False


def _package_imports(module):
    """Modules of ensai_tf.data and ensai_tf.lensing that ``module`` imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(pathlib.Path(importlib.import_module(name).__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ensai_tf"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                todo += [n for n in [node.module] + names if _is_module(n)]
    return {n for n in seen if n.startswith(("ensai_tf.data.", "ensai_tf.lensing."))
            and not importlib.import_module(n).__file__.endswith("__init__.py")}


def test_arc_stores_hash_the_simulator_code_and_observed_data_also_the_effects(cfg):
    # every module the simulator (or the observation chain) runs is in its hash list
    assert _package_imports("ensai_tf.data.simulate") <= set(cache.SIM_CODE_MODULES)
    assert _package_imports("ensai_tf.data.observe") <= set(cache.CODE_MODULES)
    arcs = pipeline.data_fingerprint(cfg, cache.SIM_SECTIONS)
    observed = pipeline.data_fingerprint(cfg)
    digest = hashlib.sha256()
    for name in cache.SIM_CODE_MODULES:
        digest.update(pathlib.Path(importlib.import_module(name).__file__).read_bytes())
    assert arcs["code_sha256"] == digest.hexdigest()
    assert observed["code_sha256"] != arcs["code_sha256"]
    assert "observe" not in arcs["config"] and "observe" in observed["config"]


# ----------------------------------------------------------- stored arcs --

def test_pregenerated_arcs_feed_the_train_stream(fake_simulator, cfg, tmp_path):
    arcs_dir = pipeline.pregenerate_arcs(tmp_path / "arcs", 5, config=cfg, progress=False)
    stored = pipeline.load_cache(arcs_dir)
    assert stored["arcs"].shape == (5, 192, 192, 1)
    # the arcs are stored once: no observed-image or mask copy of the same size
    assert [k for k, v in stored.items() if v.shape == stored["arcs"].shape] == ["arcs"]
    arcs_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, arcs_dir=str(arcs_dir)))
    it = iter(pipeline.stored_arcs_dataset(arcs_dir, arcs_cfg, 0, 5, 0))
    epochs = [next(it) for _ in range(2)]
    orders = []
    for ex in epochs:  # every epoch is a permutation of the 5 stored arcs
        order = [int(np.argmin(np.abs(stored["params"][:, 0] - p[0])))
                 for p in ex["params"].numpy()]
        assert sorted(order) == list(range(5))
        np.testing.assert_array_equal(ex["arcs"].numpy(), stored["arcs"][order])
        orders.append(order)
    np.testing.assert_array_equal(epochs[1]["index"], np.arange(5, 10))
    resumed = next(iter(pipeline.stored_arcs_dataset(arcs_dir, arcs_cfg, 0, 5, 1)))
    np.testing.assert_array_equal(resumed["arcs"], epochs[1]["arcs"])
    np.testing.assert_array_equal(resumed["seed"], epochs[1]["seed"])
    (x, y), = _take(pipeline.make_dataset("train", arcs_cfg, batch_size=2), 1)
    assert x.shape == (2, 192, 192, 1) and y.shape == (2, 5)


def test_arcs_dir_made_with_other_settings_is_refused(fake_simulator, cfg, tmp_path):
    arcs_dir = pipeline.pregenerate_arcs(tmp_path / "arcs", 2, config=cfg, progress=False)
    other = dataclasses.replace(cfg, lens=dataclasses.replace(cfg.lens, theta_e=(0.5, 1.0)),
                                data=dataclasses.replace(cfg.data, arcs_dir=str(arcs_dir)))
    with pytest.raises(pipeline.CacheError, match="other simulation settings"):
        pipeline.make_dataset("train", other)
    with pytest.raises(InputError, match="not empty"):
        pipeline.pregenerate_arcs(arcs_dir, 2, config=cfg, progress=False)
    missing = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, arcs_dir=str(tmp_path / "nothing")))
    with pytest.raises(pipeline.CacheError, match="pregenerate_arcs"):
        pipeline.make_dataset("train", missing)


# ------------------------------------------------------------ bad input --

@pytest.mark.parametrize("kwargs, match", [
    ({"split": "training"}, "unknown split 'training'"),
    ({"split": "train", "batch_size": 0}, "batch_size must be a positive integer"),
    ({"split": "train", "start_step": -1}, "start_step must be a non-negative"),
    ({"split": "test", "start_step": 3}, "train stream only"),
    ({"split": "train", "seed": -2}, "seed must be an integer from 0"),
])
def test_bad_arguments_raise_clear_errors(cfg, kwargs, match):
    split = kwargs.pop("split")
    with pytest.raises(InputError, match=match):
        pipeline.make_dataset(split, cfg, **kwargs)


def test_config_must_be_an_experiment_config():
    with pytest.raises(InputError, match="ExperimentConfig"):
        pipeline.make_dataset("train", {"data": {}})


# ------------------------------------------------------------ real chain --

def test_real_chain_drives_two_fit_steps(cfg):
    """The real simulator + observe feed two model.fit steps of a tiny inline model."""
    ds = pipeline.make_dataset("train", cfg, batch_size=2)
    model = keras.Sequential([
        keras.Input((192, 192, 1)),
        keras.layers.Conv2D(2, 5, strides=4, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(conventions.NUM_PARAMS),
    ])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(ds, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])


@pytest.mark.slow
def test_real_chain_validation_cache_is_reproducible(cfg, tmp_path):
    small = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_size=3))
    a = pipeline.materialise_split("validation", small, cache_dir=tmp_path / "a")
    b = pipeline.materialise_split("validation", small, cache_dir=tmp_path / "b")
    assert _cache_hashes(a) == _cache_hashes(b)
    params = pipeline.load_cache(a)["clean_params"]
    lo, hi = small.lens.theta_e
    assert np.all((params[:, 0] >= lo) & (params[:, 0] <= hi))
