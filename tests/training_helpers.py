"""Shared pieces of the training tests: a tiny network, a small config, a data cache.

Training runs use the smoke preset at a reduced image size and a tiny
network (a test-only stand-in for ``build_model``) so that each fit takes
seconds on a 2-core CPU; the pipeline, loss, metrics, callbacks and export
are the real ones. ``tests/conftest.py`` loads this module as a pytest plugin,
so its fixtures (``tiny``, ``cache``, ``trained``) reach every test module.
"""

import dataclasses
import pathlib

import keras
import pytest

import ensai_tf.models
from ensai_tf import config, train
from ensai_tf.dirlock import LOCK_NAME
from ensai_tf.preprocess.bias import BiasRemoval
from ensai_tf.run_dir import TMP_PREFIX

NPIX = 48


def tiny_model(name, input_shape=(192, 192, 1), **kwargs):
    """A 2-layer stand-in for the paper networks (test only), behind the real BiasRemoval."""
    inputs = keras.Input(input_shape)
    x = BiasRemoval()(inputs)
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(kwargs.get("num_outputs", 5), dtype="float32", name="params")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{name}")


def tiny_two_output_layers_model(name, input_shape=(192, 192, 1), **kwargs):
    """``tiny_model`` ending as Overfeat does, in two layers sized by the outputs (``fc8``, then
    the ``params`` Dense; test only)."""
    inputs = keras.Input(input_shape)
    x = BiasRemoval()(inputs)
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(kwargs.get("num_outputs", 5), name="fc8")(x)
    outputs = keras.layers.Dense(kwargs.get("num_outputs", 5), dtype="float32", name="params")(x)
    return keras.Model(inputs, outputs, name=f"tiny_two_{name}")


def tiny_bn_model(name, input_shape=(192, 192, 1), **kwargs):
    """``tiny_model`` with a batch-norm layer after its convolution (test only)."""
    inputs = keras.Input(input_shape)
    x = BiasRemoval()(inputs)
    x = keras.layers.Conv2D(4, 5, strides=4, use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(kwargs.get("num_outputs", 5), dtype="float32", name="params")(x)
    return keras.Model(inputs, outputs, name=f"tiny_bn_{name}")


def small_config(cache, epochs=1, steps=2, **train_changes):
    """The smoke preset at NPIX pixels, reading and writing its data in ``cache``."""
    cfg = config.get_preset("smoke")
    cfg = config.apply_overrides(cfg, [f"image.npix={NPIX}", f"data.cache_dir={cache}"])
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=epochs, steps_per_epoch=steps, image_summaries=2, **train_changes))


@pytest.fixture
def tiny(monkeypatch):
    """``ensai_tf.models.build_model`` replaced by :func:`tiny_model` for one test."""
    monkeypatch.setattr(ensai_tf.models, "build_model", tiny_model)
    return tiny_model


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One data cache per test file: the smoke validation set is simulated once, not per
    test (the cache key holds the config, seed and data code, so each test still gets its data)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cache):
    """Two tiny smoke runs, ``a`` and ``b`` (other seeds), trained once for the tests that only
    read a finished run; session scope trains them once per pytest(-xdist) worker."""
    root = tmp_path_factory.mktemp("trained")
    cfg = small_config(cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ensai_tf.models, "build_model", tiny_model)
        for name in ("a", "b"):
            train.train(dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, seed=ord(name))), root / name, verbose=0)
    return root


def leftovers(folder):
    """Temporary or lock files left in a model folder."""
    return sorted(p.name for p in pathlib.Path(folder).iterdir()
                  if p.name.startswith(TMP_PREFIX) or p.name.startswith(LOCK_NAME))
