"""The screening network's scores, thresholds and loading, and how its labels become flags."""

import json

import keras
import numpy as np
import pytest

from ensai_tf import flags
from ensai_tf.errors import ModelDirError
from ensai_tf.model_dir import MODEL_KERAS
from ensai_tf.models.screen import SCREEN_LABELS, STEMS, build_screen_model
from ensai_tf.screen import (SCREEN_BUDGET, SCREEN_JSON, Screen, fit_screen_thresholds,
                             load_screen, screen_scores)
from ensai_tf.train_screen import DihedralBatches, screen_training_set
from ensai_tf import config as config_lib

PARAMS = np.array([[1.2, 0.1, -0.05, 0.04, -0.02]])


def _fixed_logits(logits):
    """A model whose logits are ``logits`` for every image, whatever its pixels."""
    inputs = keras.Input((192, 192, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(len(SCREEN_LABELS))
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.zeros((1, len(SCREEN_LABELS))), np.asarray(logits, dtype=np.float32)])
    return model


def _ring():
    """A noisy Gaussian ring of radius 30 pixels, peak 1."""
    y, x = np.mgrid[:192, :192] - 95.5
    ring = np.exp(-0.5 * ((np.hypot(x, y) - 30.0) / 2.0) ** 2)
    return ring + 0.02 * np.random.default_rng(0).normal(size=ring.shape)


def test_scores_are_the_sigmoid_of_the_logits():
    logits = [2.0, -1.0, 0.0]
    scores = screen_scores(_fixed_logits(logits), np.zeros((3, 192, 192)))
    assert scores.shape == (3, 3)
    np.testing.assert_allclose(scores, np.broadcast_to(1 / (1 + np.exp(-np.array(logits))),
                                                       (3, 3)), rtol=1e-6)


def test_thresholds_leave_each_budget_above_them():
    scores = np.random.default_rng(1).uniform(size=(10000, 3))
    thresholds = fit_screen_thresholds(scores)
    for j, label in enumerate(SCREEN_LABELS):
        assert thresholds[label] == pytest.approx(np.quantile(scores[:, j], 1 - SCREEN_BUDGET[label]))
        assert np.mean(scores[:, j] > thresholds[label]) <= SCREEN_BUDGET[label] + 1e-4


@pytest.mark.parametrize("logits, flag", [([6.0, -6.0, -6.0], "no_lens"),
                                          ([-6.0, 6.0, -6.0], "lens_light"),
                                          ([-6.0, -6.0, 6.0], "small_field")])
def test_each_label_raises_its_flag(logits, flag):
    screen = Screen(model=_fixed_logits(logits), thresholds=dict.fromkeys(SCREEN_LABELS, 0.5),
                    fitted_on="test")
    thresholds = flags.model_thresholds(None, screen=screen)
    stats = flags.image_statistics(_ring()[None], PARAMS, screen=screen)
    assert flags.quality_flags(stats, thresholds) == [[flag]]
    quiet = Screen(model=_fixed_logits([-6.0] * 3), thresholds=screen.thresholds, fitted_on="")
    stats = flags.image_statistics(_ring()[None], PARAMS, screen=quiet)
    assert flags.quality_flags(stats, flags.model_thresholds(None, screen=quiet)) == [[]]


def _write_screen(folder, model, thresholds):
    folder.mkdir()
    model.save(folder / MODEL_KERAS)
    (folder / SCREEN_JSON).write_text(json.dumps({"thresholds": thresholds, "fitted_on": "x"}))


@pytest.mark.parametrize("stem", STEMS)
def test_load_screen_round_trips(tmp_path, stem):
    model = build_screen_model(stem=stem)
    _write_screen(tmp_path / "s", model, dict.fromkeys(SCREEN_LABELS, 0.9))
    screen = load_screen(tmp_path / "s")
    images = np.random.default_rng(2).normal(size=(2, 192, 192, 1)).astype(np.float32)
    np.testing.assert_allclose(screen_scores(screen, images), screen_scores(model, images),
                               rtol=1e-5, atol=1e-7)
    assert screen.thresholds == dict.fromkeys(SCREEN_LABELS, 0.9)


def test_unknown_stem_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown stem 'pool'"):
        build_screen_model(stem="pool")


def test_load_screen_names_a_bad_folder(tmp_path):
    with pytest.raises(ModelDirError, match=SCREEN_JSON):
        load_screen(tmp_path)
    _write_screen(tmp_path / "s", build_screen_model(), {"no_lens": 0.5})
    with pytest.raises(ModelDirError, match="threshold per label"):
        load_screen(tmp_path / "s")
    (tmp_path / "s" / SCREEN_JSON).write_text(json.dumps(
        {"thresholds": dict.fromkeys(SCREEN_LABELS, 0.5)}))
    (tmp_path / "s" / MODEL_KERAS).write_bytes(b"not a zip")
    with pytest.raises(ModelDirError, match="not a loadable screening network"):
        load_screen(tmp_path / "s")


def test_training_set_labels_each_kind():
    sizes = {"clean": 2, "lens_light": 2, "unlensed": 2, "edge_cut": 2, "noise": 2}
    images, labels = screen_training_set(config_lib.get_preset("smoke"), sizes)
    assert images.shape[1:] == (192, 192, 1) and images.dtype == np.float32
    expected = np.array([[0, 0, 0]] * 2 + [[0, 1, 0]] * 2 + [[1, 0, 0]] * 2 + [[0, 0, 1]] * 2
                        + [[1, 0, 0]] * 2, dtype=np.float32)
    np.testing.assert_array_equal(labels, expected)
    assert np.isfinite(images).all()


def test_dihedral_batches_give_every_image_once_per_epoch_in_one_of_its_eight_orientations():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(10, 6, 6, 1)).astype(np.float32)
    labels = np.arange(30, dtype=np.float32).reshape(10, 3)
    batches = DihedralBatches(images, labels, batch_size=4, seed=1)
    assert len(batches) == 3
    seen_turns = set()
    for _ in range(2):
        rows = []
        for i in range(len(batches)):
            x, y = batches[i]
            for image, label in zip(x, y):
                row = int(label[0]) // 3
                rows.append(row)
                turns = [np.rot90(images[row], k, axes=(0, 1)) for k in range(4)]
                turns += [t[:, ::-1] for t in turns]
                matches = [k for k, t in enumerate(turns) if np.array_equal(t, image)]
                assert matches, "not a rotation or reflection of its own image"
                seen_turns.add(matches[0])
        assert sorted(rows) == list(range(10))
        batches.on_epoch_end()
    assert len(seen_turns) >= 5  # 20 draws of 8 orientations: the draw is not stuck
    again = DihedralBatches(images, labels, batch_size=4, seed=1)
    np.testing.assert_array_equal(again[0][0], DihedralBatches(images, labels, 4, seed=1)[0][0])
