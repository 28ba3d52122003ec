"""A cheap stateless stand-in for the ray-tracing simulator, shared by the data tests.

The pipeline's stages call ``ensai_tf.data.simulate.example_seeds`` and
``ensai_tf.data.simulate.simulate_batch`` through the module, so
:func:`install` replaces both for the duration of a ``MonkeyPatch``: the
pipeline's own properties (ordering, resume, caching, atomicity) are then
tested in seconds, with the real observation chain. Tests are not a package:
load this file with :func:`importlib.util.spec_from_file_location`.
"""

import tensorflow as tf

from ensai_tf import conventions
from ensai_tf.data import simulate

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def fake_example_seeds(seed, split, start, count):
    """Per-example seeds ``fold_in([seed, split id], index)`` like the real ones."""
    base = tf.constant([int(seed), SPLIT_IDS[split]], tf.int64)
    index = tf.cast(start, tf.int64) + tf.range(count, dtype=tf.int64)
    return tf.map_fn(lambda i: tf.random.fold_in(base, i), index,
                     fn_output_signature=tf.TensorSpec([2], tf.int64))


def fake_simulate_batch(seeds, config, stamps):
    """Peak-1 Gaussian rings of radius theta_E around (x_L, y_L); per-example stateless."""
    npix = config.image.npix
    u = tf.map_fn(lambda s: tf.random.stateless_uniform([6], s), tf.cast(seeds, tf.int64),
                  fn_output_signature=tf.TensorSpec([6], tf.float32))
    theta = 0.5 + 1.5 * u[:, 0]
    e_x, e_y = 0.4 * (u[:, 1] - 0.5), 0.4 * (u[:, 2] - 0.5)
    x_l, y_l = 0.1 * (u[:, 3] - 0.5), 0.1 * (u[:, 4] - 0.5)
    x, y = (tf.constant(g, tf.float32)[None] for g in
            conventions.pixel_grid(npix, config.image.pixel_scale))
    r = tf.sqrt((x - x_l[:, None, None]) ** 2 + (y - y_l[:, None, None]) ** 2)
    arcs = tf.exp(-0.5 * ((r - theta[:, None, None]) / 0.08) ** 2)
    arcs = arcs / tf.reduce_max(arcs, axis=[1, 2], keepdims=True)
    b = tf.shape(seeds)[0]
    return {"arcs": arcs[..., None], "params": tf.stack([theta, e_x, e_y, x_l, y_l], axis=1),
            "magnification": 2.0 + 10.0 * u[:, 5], "source_family": tf.zeros([b], tf.int32),
            "source_index": tf.zeros([b], tf.int32), "source_position": tf.zeros([b, 2]),
            "attempts": tf.ones([b], tf.int32), "placement_rule": tf.zeros([b], tf.int32)}


def install(monkeypatch):
    """Replace the simulator's seeds and batch function through ``monkeypatch``."""
    monkeypatch.setattr(simulate, "example_seeds", fake_example_seeds)
    monkeypatch.setattr(simulate, "simulate_batch", fake_simulate_batch)
