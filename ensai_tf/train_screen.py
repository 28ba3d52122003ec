"""Train the screening network and fit its thresholds (docs/design.md §8.7).

The training images are made by the project's own generators, from the
train split's source stamps and seed streams only:

* clean lenses: the train stream of the ``paper`` preset (every label off);
* lens light: the train stream with ``simulate.lens_light`` on (``lens_light``);
* unlensed galaxies (:func:`ensai_tf.trust.unlensed_galaxy_images`), pure
  noise and blank sky (``no_lens``);
* clean lenses whose brightest arc is moved onto the edge
  (:func:`ensai_tf.trust.edge_cut_images`, ``edge_cut``).

Every image is prepared as ``ensai predict`` prepares a user's image
(:func:`ensai_tf.trust.prepare_stack`). Training draws one of the eight
rotations and reflections of the square for every image of every batch
(:class:`DihedralBatches`): none of the labels depends on orientation, so
each image counts eight times for the price of one simulation. The
thresholds are then fitted on clean lenses of the fixed validation split
(:func:`ensai_tf.screen.fit_screen_thresholds`), and the detection rate of each label is measured on validation-split sets of
each kind, none of them seen in training. The trust report
(``ensai evaluate --experiment trust``) measures it again on test-split sets.

Example:
    >>> info = train_screen("runs/screen", n_clean=4000, epochs=6)   # doctest: +SKIP
"""

import json
import os
import pathlib
import time

import keras
import numpy as np

from ensai_tf import atomic, trust
from ensai_tf import config as config_lib
from ensai_tf.data import pipeline
from ensai_tf.errors import InputError
from ensai_tf.evaluate import collect_fixed_split
from ensai_tf.model_dir import MODEL_KERAS
from ensai_tf.models.screen import SCREEN_LABELS, build_screen_model
from ensai_tf.screen import SCREEN_BUDGET, SCREEN_JSON, fit_screen_thresholds, screen_scores

__all__ = [
    "DihedralBatches",
    "SCREEN_SIZES",
    "screen_thresholds_and_rates",
    "screen_training_set",
    "train_screen",
]

SCREEN_SIZES = {"clean": 6000, "lens_light": 5000, "unlensed": 4000, "edge_cut": 2400,
                "noise": 1200}
"""Default number of training images of each kind."""

TRAIN_SEED = 101
"""User seed of the screening network's training streams (offsets per kind)."""

CHECK_N = 1000
"""Validation-split images per kind on which the detection rates are measured."""

THRESHOLD_N = 3000
"""Clean validation lenses the thresholds are fitted on (30 above a 1% budget)."""

EPOCHS = 60
"""Default passes over the training images."""

LEARNING_RATE = 1e-3
"""Adam's starting learning rate (cosine decay to 0 over the epochs)."""

STEM = "conv"
"""Default first halving of the screening network (:data:`ensai_tf.models.screen.STEMS`)."""

CACHE_KEY = "key.json"
"""File of a training-image cache folder naming what it holds (sizes, seed, config)."""


class DihedralBatches(keras.utils.PyDataset):
    """Shuffled batches of images, each in one of its eight dihedral orientations.

    The order and the orientations of epoch ``e`` come from
    ``numpy.random.default_rng((seed, e))``, so a run is reproducible.

    Args:
        images: ``(N, H, H, C)`` float32 (square images).
        labels: ``(N, L)`` float32.
        batch_size: images per batch.
        seed: int seed of the order and orientations.

    Example:
        >>> batches = DihedralBatches(np.zeros((10, 8, 8, 1)), np.zeros((10, 3)), 4, seed=0)
        >>> len(batches), batches[0][0].shape
        (3, (4, 8, 8, 1))
    """

    def __init__(self, images, labels, batch_size, seed):
        super().__init__()
        self.images, self.labels = images, labels
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.epoch = 0
        self._draw()

    def _draw(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        self.order = rng.permutation(len(self.images))
        self.turns = rng.integers(0, 8, len(self.images))

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        turns = self.turns[index * self.batch_size:(index + 1) * self.batch_size]
        batch = [np.rot90(self.images[i], t % 4, axes=(0, 1)) for i, t in zip(rows, turns)]
        batch = [b[:, ::-1] if t >= 4 else b for b, t in zip(batch, turns)]
        return np.ascontiguousarray(np.stack(batch)), self.labels[rows]

    def on_epoch_end(self):
        self.epoch += 1
        self._draw()


def _stream(cfg, n, seed, batch=50):
    """The first ``n`` images of the train stream of ``cfg`` with user seed ``seed``, ``(n, H, W)``."""
    ds = pipeline.make_dataset("train", cfg, seed=seed, batch_size=batch)
    out = [x.numpy()[..., 0] for x, _ in ds.take(-(-n // batch))]
    return np.concatenate(out)[:n]


def _noise(n, seed):
    """``n`` images of pure noise and blank sky, half each."""
    return np.concatenate([trust.noise_images(n - n // 2, seed=seed),
                           trust.blank_sky_images(n // 2, seed=seed + 1)])


def screen_training_set(cfg, sizes=None, seed=TRAIN_SEED):
    """Prepared training images of every kind and their labels.

    Args:
        cfg: :class:`~ensai_tf.config.ExperimentConfig` of the data (the ``paper`` preset).
        sizes: dict kind -> count (keys of :data:`SCREEN_SIZES`).
        seed: user seed; each kind uses ``seed + k``.

    Returns:
        ``(images (N, 192, 192, 1) float32, labels (N, 3) float32)``, labels in
        :data:`ensai_tf.models.screen.SCREEN_LABELS` order.
    """
    sizes = dict(SCREEN_SIZES, **(sizes or {}))
    lens_light = config_lib.experiment_config(cfg, "lens-light")
    kinds = {
        "clean": (lambda n: _stream(cfg, n, seed), ()),
        "lens_light": (lambda n: _stream(lens_light, n, seed + 1), ("lens_light",)),
        "unlensed": (lambda n: trust.unlensed_galaxy_images(cfg, n, seed=seed + 2, split="train"),
                     ("no_lens",)),
        "edge_cut": (lambda n: trust.edge_cut_images(_stream(cfg, n, seed + 3), seed=seed)[0],
                     ("edge_cut",)),
        "noise": (lambda n: _noise(n, seed + 4), ("no_lens",)),
    }
    images, labels = [], []
    for kind, (make, on) in kinds.items():
        n = int(sizes[kind])
        if n <= 0:
            continue
        images.append(trust.prepare_stack(make(n))[0])
        row = np.array([label in on for label in SCREEN_LABELS], dtype=np.float32)
        labels.append(np.broadcast_to(row, (n, len(SCREEN_LABELS))))
    return np.concatenate(images), np.concatenate(labels)


def _check_sets(cfg, n):
    """Validation-split images of each bad kind: lens light, unlensed, edge-cut (the clean
    lenses that fix the thresholds come from :func:`screen_thresholds_and_rates`)."""
    clean, _, _ = collect_fixed_split(cfg, n, "validation")
    lens_light, _, _ = collect_fixed_split(config_lib.experiment_config(cfg, "lens-light"), n,
                                           "validation")
    return {
        "lens_light": trust.prepare_stack(lens_light)[0],
        "unlensed": trust.prepare_stack(
            trust.unlensed_galaxy_images(cfg, n, seed=TRAIN_SEED, split="validation"))[0],
        "edge_cut": trust.prepare_stack(trust.edge_cut_images(clean, seed=TRAIN_SEED)[0])[0],
    }


def _cached_sets(cfg, sizes, check_n, cache):
    """The training set and the validation check sets, from ``cache`` when it holds them."""
    key = {"sizes": sizes, "seed": TRAIN_SEED, "check_n": int(check_n),
           "config": config_lib.config_to_dict(cfg)}
    folder = pathlib.Path(cache) if cache else None
    if folder is not None and (folder / CACHE_KEY).is_file() \
            and json.loads((folder / CACHE_KEY).read_text()) == json.loads(json.dumps(key)):
        checks = np.load(folder / "checks.npz")
        return (np.load(folder / "images.npy"), np.load(folder / "labels.npy"),
                {k: checks[k] for k in checks.files})
    images, labels = screen_training_set(cfg, sizes)
    checks = _check_sets(cfg, check_n)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", images)
        np.save(folder / "labels.npy", labels)
        np.savez(folder / "checks.npz", **checks)
        atomic.write_text(folder / CACHE_KEY, json.dumps(key, indent=1) + "\n")
    return images, labels, checks


def screen_thresholds_and_rates(model, cfg, check_images, threshold_n=THRESHOLD_N):
    """Fit a screening network's thresholds and measure its detection rates.

    Args:
        model: the trained screening network.
        cfg: config of the data (the ``paper`` preset).
        check_images: dict of prepared validation-split images
            (``lens_light``, ``unlensed``, ``edge_cut``), as :func:`train_screen` makes.
        threshold_n: clean validation lenses the thresholds are fitted on.

    Returns:
        dict: ``labels``, ``thresholds`` (:func:`ensai_tf.screen.fit_screen_thresholds`
        with :data:`ensai_tf.screen.SCREEN_BUDGET`), ``budget``, ``fitted_on``,
        ``clean_flag_rate`` (share of those clean lenses raising any label) and
        ``detection_validation`` (share of each set raising its label).
    """
    wide = config_lib.apply_overrides(cfg, [f"data.val_size={max(threshold_n, cfg.data.val_size)}"])
    clean, _, _ = collect_fixed_split(wide, threshold_n, "validation")
    clean_scores = screen_scores(model, trust.prepare_stack(clean)[0])
    thresholds = fit_screen_thresholds(clean_scores)
    cut = np.array([thresholds[label] for label in SCREEN_LABELS])
    expected = {"lens_light": "lens_light", "unlensed": "no_lens", "edge_cut": "edge_cut"}
    return {
        "labels": list(SCREEN_LABELS),
        "thresholds": thresholds,
        "budget": dict(SCREEN_BUDGET),
        "fitted_on": f"validation split, {threshold_n} clean lenses",
        "clean_flag_rate": float((clean_scores > cut).any(axis=1).mean()),
        "detection_validation": {
            k: float((screen_scores(model, check_images[k])[:, SCREEN_LABELS.index(label)]
                      > thresholds[label]).mean()) for k, label in expected.items()},
    }


def train_screen(out_dir, config=None, sizes=None, epochs=EPOCHS, batch_size=64, check_n=CHECK_N,
                 overwrite=False, cache=None, stem=STEM, threshold_n=None, verbose=2):
    """Train the screening network, fit its thresholds, and write its folder.

    Args:
        out_dir: folder to write ``model.keras`` and ``screen.json`` into.
        config: config of the data (default: the ``paper`` preset).
        sizes: training images per kind (default :data:`SCREEN_SIZES`).
        epochs: passes over the training images; the learning rate falls
            from ``LEARNING_RATE`` to 0 on a cosine over them.
        batch_size: images per step.
        check_n: images per validation set for the detection rates.
        overwrite: replace an existing screening network in ``out_dir``.
        cache: optional folder keeping the generated images (several GB), so
            that another recipe can be trained on the same images; used only
            when sizes, seed, ``check_n`` and config all match.
        stem: the network's first halving (:data:`ensai_tf.models.screen.STEMS`).
        threshold_n: clean validation lenses for the thresholds (default
            :data:`THRESHOLD_N`, at least ``check_n``).
        verbose: Keras ``fit`` verbosity.

    Returns:
        the dict written to ``screen.json``: thresholds, budget, detection
        rate of each label on its validation set, clean flag rate, sizes,
        epochs and the training time in seconds.

    Raises:
        InputError: ``out_dir`` already holds a screening network and not ``overwrite``.
    """
    out_dir = pathlib.Path(out_dir)
    if (out_dir / MODEL_KERAS).exists() and not overwrite:
        raise InputError(f"{str(out_dir)!r} already holds a screening network; pass "
                         f"overwrite=True to replace it")
    cfg = config if config is not None else config_lib.get_preset("paper")
    sizes = {k: int(v) for k, v in dict(SCREEN_SIZES, **(sizes or {})).items()}
    threshold_n = max(int(threshold_n or THRESHOLD_N), int(check_n))
    start = time.time()
    images, labels, check_images = _cached_sets(cfg, sizes, check_n, cache)
    keras.utils.set_random_seed(TRAIN_SEED)
    batches = DihedralBatches(images, labels, batch_size, seed=TRAIN_SEED)
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, epochs * len(batches))
    model = build_screen_model(npix=images.shape[1], stem=stem)
    model.compile(keras.optimizers.Adam(schedule),
                  keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(batches, epochs=epochs, verbose=verbose)
    info = screen_thresholds_and_rates(model, cfg, check_images, threshold_n)
    info.update({
        "sizes": sizes,
        "epochs": int(epochs),
        "stem": stem,
        "augmentation": "dihedral (8 orientations), drawn per image and epoch",
        "train_seconds": round(time.time() - start, 1),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_path(out_dir / MODEL_KERAS, ".keras")
    model.save(tmp)
    os.replace(tmp, out_dir / MODEL_KERAS)
    atomic.write_text(out_dir / SCREEN_JSON, json.dumps(info, indent=1) + "\n")
    return info
