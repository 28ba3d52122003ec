"""Shared pytest fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import ensai_tf  # noqa: E402, F401  (starts TensorFlow without its native start-up lines)

pytest_plugins = ("training_helpers",)  # the tiny, cache and trained fixtures of the training tests


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


@pytest.fixture
def arc_image():
    """``arc_image(npix=192, scale=0.04, peak=1.0)``: a ring of radius 1 arcsec plus 0.01, float64."""
    import numpy as np

    from ensai_tf import conventions

    def make(npix=192, scale=0.04, peak=1.0):
        x, y = conventions.pixel_grid(npix, scale)
        r = np.hypot(x, y)
        return (peak * np.exp(-0.5 * ((r - 1.0) / 0.08) ** 2) + 0.01).astype(np.float64)

    return make


@pytest.fixture
def celestial_wcs():
    """``celestial_wcs(scale_arcsec, npix, rotation_deg=0)``: a north-up, east-left TAN WCS."""
    import numpy as np
    from astropy.wcs import WCS

    def make(scale_arcsec, npix, rotation_deg=0.0):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = [(npix + 1) / 2.0, (npix + 1) / 2.0]
        w.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
        c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
        w.wcs.pc = [[c, -s], [s, c]]
        return w

    return make


@pytest.fixture
def write_fits():
    """``write_fits(path, data, wcs=None)``: a float32 primary-HDU FITS file; returns its path."""
    import numpy as np
    from astropy.io import fits

    def write(path, data, wcs=None):
        header = wcs.to_header() if wcs is not None else None
        fits.PrimaryHDU(data=data.astype(np.float32), header=header).writeto(path)
        return str(path)

    return write


@pytest.fixture
def constant_model():
    """``constant_model(path, bands=1)``: a ``.keras`` model predicting (1.2, 0.2, 0, 0.04,
    -0.08) for any 192x192 image of ``bands`` channels; returns its path as a str."""
    import keras

    def make(path, bands=1):
        inp = keras.Input((192, 192, bands))
        out = keras.layers.Dense(5, kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(
                                     [1.2, 0.2, 0.0, 0.04, -0.08]))(
            keras.layers.GlobalAveragePooling2D()(inp))
        keras.Model(inp, out).save(path)
        return str(path)

    return make
