"""Tests of ensai_tf.data.draws: seed folding and mapping uniforms onto ranges."""

import numpy as np
import tensorflow as tf

from ensai_tf.data import draws


def test_fold_seeds_is_fold_in_per_row_for_scalar_and_per_example_data():
    seeds = tf.constant([[1, 2], [3, 4], [5, 6]], tf.int64)
    scalar = draws.fold_seeds(seeds, 7).numpy()
    per_row = draws.fold_seeds(seeds, tf.constant([7, 8, 9])).numpy()
    for i, s in enumerate(seeds):
        np.testing.assert_array_equal(scalar[i], tf.random.fold_in(s, tf.constant(7, tf.int64)))
        np.testing.assert_array_equal(per_row[i],
                                      tf.random.fold_in(s, tf.constant(7 + i, tf.int64)))
        np.testing.assert_array_equal(draws.fold_seed(s, 7 + i), per_row[i])
    assert scalar.dtype == np.int64


def test_uniforms_depend_only_on_each_row_seed():
    seeds = draws.fold_seeds(tf.constant([[0, 1], [2, 3]], tf.int64), 0)
    both = draws.uniforms(seeds, 5).numpy()
    alone = draws.uniforms(seeds[1:], 5).numpy()
    np.testing.assert_array_equal(both[1:], alone)
    assert both.shape == (2, 5) and np.all((both >= 0) & (both < 1))


def test_lerp_maps_the_unit_interval_onto_the_bounds():
    u = tf.constant([0.0, 0.25, 0.5], tf.float32)
    np.testing.assert_allclose(draws.lerp(u, (2, 4)).numpy(), [2.0, 2.5, 3.0], rtol=0)
    np.testing.assert_allclose(draws.lerp(u, (-1.0, 1.0)).numpy(), [-1.0, -0.5, 0.0], rtol=0)


def test_randint_covers_the_inclusive_range_and_never_exceeds_it():
    u = tf.constant([0.0, 0.2, 0.4, 0.6, 0.8, np.nextafter(np.float32(1), np.float32(0))])
    out = draws.randint(u, (1, 5)).numpy()
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 5, 5])
    assert out.dtype == np.int32
