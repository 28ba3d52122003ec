"""Shared pytest fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def pytest_configure(config):
    import tensorflow as tf

    # Keras' own conftest does the same on GPUs: full float32 for correctness tests.
    tf.config.experimental.enable_tensor_float_32_execution(False)


def pytest_collection_modifyitems(config, items):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    skip_gpu = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_keras():
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture
def smoke_config():
    """The `smoke` preset: tiny batches and datasets."""
    from ensai_tf import config

    return config.get_preset("smoke")
