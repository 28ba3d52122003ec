"""The stages of the canonical example dict (docs/design.md §11 rule 1).

One dict flows through every stage; its keys are :data:`EXAMPLE_KEYS`. Each
stage takes the dict of a batch and returns it with keys added or replaced;
only the last step, :func:`to_supervised`, turns it into ``(images, params)``
for ``model.fit``::

    seed_stage -> simulate_stage -> observe_stage -> to_supervised
    (index, seed)  (arcs, params,    (image, params   (image, params)
                    magnification..)  shifted, mask,
                                      draws)

Observation effects use ``fold_in(seed_i, OBSERVE_STREAM)``, a stream
disjoint from the simulator's (docs/design.md §11 rule 4).
"""

import tensorflow as tf

from ensai_tf.conventions import NUM_PARAMS, SHEAR_NAMES
from ensai_tf.data import observe as observe_lib
from ensai_tf.data import simulate as simulate_lib
from ensai_tf.data import sources, two_bands

__all__ = [
    "EXAMPLE_KEYS",
    "OBSERVE_STREAM",
    "observe_seeds",
    "seed_stage",
    "simulate_stage",
    "observe_stage",
    "clean_stage",
    "to_supervised",
    "load_stamps",
    "parallel_map",
]


EXAMPLE_KEYS = {
    "index": "(B,) int64: position of the example in its split's seed stream",
    "seed": "(B, 2) int64: per-example seed, simulate.example_seeds(seed, split, index, 1)",
    "arcs": "(B, n, n, 1) float32: noise-free arcs, peak 1 (docs/design.md §3.5)",
    "params": "(B, 5) float32: labels in PARAM_NAMES order; shifted after observe_stage",
    "clean_params": "(B, 5) float32: the simulator's labels before the shift (docs/design.md §5.2)",
    "magnification": "(B,) float32: total magnification (docs/design.md §3.5)",
    "source_family": "(B,) int: index into sources.SOURCE_FAMILIES",
    "source_index": "(B,) int: stamp index for the stamp family",
    "source_position": "(B, 2) float32: source centre (x_s, y_s), arcsec",
    "attempts": "(B,) int: candidates drawn before acceptance (docs/design.md §3.5)",
    "placement_rule": "(B,) int: source placement rule, 0 = A, 1 = B (docs/design.md §3.3)",
    "lens_light": "(B, n, n, 1) float32: optional lens light (docs/design.md §4 [R])",
    "image": "(B, n, n, C) float32: observed image, masked pixels exactly 0; C = bands.count "
             "(two bands: blue, red, docs/design.md §5.10)",
    "mask": "(B, n, n, C) float32: 1 = kept, 0 = masked",
    "draws": "dict of (B, ...) tensors: the observation draws (docs/design.md §11 rule 3)",
}
"""Keys of the canonical example dict (docs/design.md §11 rule 1), with shapes and units.

Simulator outputs other than those listed are carried under their own names.
"""

OBSERVE_STREAM = 0x4F425356
"""Folded into an example seed for its observation effects ("OBSV")."""


def observe_seeds(seeds):
    """Per-example seeds of the observation effects, ``fold_in(seed_i, OBSERVE_STREAM)``.

    Args:
        seeds: ``(B, 2)`` int per-example seeds (the simulator's).

    Returns:
        ``(B, 2)`` int64 seeds, independent of every stream the simulator
        derives from the same example seed.
    """
    seeds = tf.cast(seeds, tf.int64)
    # docs/design.md §11 rule 4: observe folds small effect indices into its seeds, as the
    # simulator does into the example seed; a distinct stream keeps them independent.
    return tf.map_fn(
        lambda s: tf.random.fold_in(s, tf.constant(OBSERVE_STREAM, tf.int64)), seeds,
        fn_output_signature=tf.TensorSpec([2], tf.int64))


def seed_stage(start, count, seed, split):
    """Start a batch: ``{"index", "seed"}`` for examples ``start ... start + count - 1``.

    Args:
        start: int64 scalar (Python int or tensor), first example index.
        count: number of examples (Python int, or an int scalar tensor for a
            dynamic batch size).
        seed: user seed (Python int).
        split: split name; selects the seed stream.

    Returns:
        dict with ``"index"`` ``(count,)`` int64 and ``"seed"`` ``(count, 2)``
        int64.
    """
    start = tf.cast(start, tf.int64)
    seeds = simulate_lib.example_seeds(seed, split, start, count)
    return {"index": start + tf.range(tf.cast(count, tf.int64), dtype=tf.int64),
            "seed": tf.cast(seeds, tf.int64)}


def simulate_stage(example, config, stamps):
    """Add the noise-free simulation of every example (docs/design.md §3).

    Args:
        example: dict with ``"seed"`` ``(B, 2)``.
        config: :class:`ensai_tf.config.ExperimentConfig`.
        stamps: ``(N, S, S)`` float32 source stamps of the split.

    Returns:
        the dict with the simulator's outputs added (``"arcs"``,
        ``"params"``, ``"magnification"``, ...).
    """
    out = dict(example)
    out.update(simulate_lib.simulate_batch(example["seed"], config, stamps))
    return out


def observe_stage(example, config, training):
    """Add the observed image, shifted labels, mask and draws (docs/design.md §5).

    The simulator's labels are kept as ``"clean_params"``; ``"params"`` is
    replaced by the shifted labels (the only label change, docs/design.md §11
    rule 2, made inside :func:`ensai_tf.data.observe.observe`).

    Args:
        example: dict with ``"arcs"``, ``"params"``, ``"seed"`` and
            optionally ``"lens_light"``.
        config: :class:`ensai_tf.config.ExperimentConfig`.
        training: True for training-time effects (mask f_min 0.75), False
            for validation/test (f_min 0.98, docs/design.md §5.6).

    Returns:
        the dict with ``"image"``, ``"params"``, ``"clean_params"``,
        ``"mask"`` and ``"draws"``.
    """
    args = (example["arcs"], example["params"], observe_seeds(example["seed"]), config.observe)
    if config.bands.count == 2:
        obs = two_bands.observe_two_bands(*args, config.bands, training=training,
                                          lens_light=example.get("lens_light"))
    else:
        obs = observe_lib.observe(*args, training=training, lens_light=example.get("lens_light"))
    out = dict(example)
    out["clean_params"] = example["params"]
    out.update(image=obs["image"], params=tf.cast(obs["params"], tf.float32),
               mask=obs["mask"], draws=obs["draws"])
    return out


def clean_stage(example):
    """The noise-free variant: ``image`` = arcs, nothing masked, no draws.

    Args:
        example: dict with ``"arcs"`` ``(B, n, n, 1)`` and ``"params"`` ``(B, 5)``
            (from :func:`simulate_stage`).

    Returns:
        the dict with ``"image"`` (the arcs), ``"clean_params"`` (the labels),
        ``"mask"`` (all ones, shape of the arcs) and ``"draws"`` (empty) added.
    """
    out = dict(example)
    out["clean_params"] = example["params"]
    out.update(image=example["arcs"], mask=tf.ones_like(example["arcs"]), draws={})
    return out


def to_supervised(example, n_targets=NUM_PARAMS):
    """The final step: ``(images (B, n, n, 1) float32, params (B, 5) float32)``.

    With ``n_targets = 7`` the shear ``(gamma_1, gamma_2)`` is appended to
    ``params`` (an integer shift leaves the shear unchanged).

    Args:
        example: dict with ``"image"``, ``"params"`` (arcsec for ``theta_E``,
            ``x_L``, ``y_L``; ``e_x``, ``e_y`` dimensionless) and, for 7
            targets, ``"gamma_1"``, ``"gamma_2"`` ``(B,)`` (dimensionless).
        n_targets: 5, or 7 to append the shear.

    Returns:
        tuple ``(images, params)``: ``(B, n, n, 1)`` and ``(B, n_targets)`` float32.
    """
    params = tf.cast(example["params"], tf.float32)
    if n_targets > NUM_PARAMS:
        shear = tf.stack([example[k] for k in SHEAR_NAMES], axis=-1)
        params = tf.concat([params, tf.cast(shear, tf.float32)], axis=-1)
    return (tf.cast(example["image"], tf.float32), params)


def load_stamps(split, config):
    """The split's source stamps (disjoint pools, docs/design.md §3.7 [R]), as numpy.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        config: :class:`ensai_tf.config.ExperimentConfig`; its
            ``source.stamp_dirs`` and ``source.taper_radius`` are used.

    Returns:
        float32 ``(N, S, S)`` array of stamps, peak 1.

    Raises:
        InputError: see :func:`ensai_tf.data.sources.load_stamp_library`.
    """
    return sources.load_stamp_library(split, config.source.stamp_dirs,
                                      taper_radius=config.source.taper_radius)


def parallel_map(ds, fn):
    """``ds.map(fn)`` in parallel, in order, with autograph off.

    The simulator and the observation effects have no Python control flow on
    tensor values (every loop is an explicit ``tf.while_loop``/``tf.map_fn``,
    every branch a ``tf.where``), so autograph's source conversion
    only costs time: without it a pipeline traces about 2.5x faster and its
    examples are bit-identical (``ensai train`` and ``ensai evaluate`` start
    sooner; most of the test suite's time was this tracing).
    """
    return ds.map(tf.autograph.experimental.do_not_convert(fn),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
