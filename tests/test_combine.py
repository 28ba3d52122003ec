"""Tests of ensai_tf.combine: the combiner of frozen trained networks."""

import json

import keras
import numpy as np
import pytest

from ensai_tf import cli, combine, inference, symmetry
from ensai_tf import config as config_lib
from ensai_tf.errors import ModelDirError
from training_helpers import NPIX, small_config


def _assert_record_alone_rebuilds(model, folder, copy):
    """combiner.json alone (no model.keras), copied to ``copy``, rebuilds the same network from
    the backbone files; they lie outside the copy's folder, so loading them is the user's
    explicit choice."""
    copy.mkdir()
    (copy / "combiner.json").write_bytes((folder / "combiner.json").read_bytes())
    x = np.random.default_rng(2).uniform(0, 1, (2, NPIX, NPIX, 1)).astype(np.float32)
    predict_fn, _ = inference.load_predictor(copy, trust_savedmodel=True)
    np.testing.assert_allclose(predict_fn(x), model.predict_on_batch(x), rtol=0, atol=1e-6)


def test_train_combiner_trains_only_its_weights(tmp_path, cache, trained, capsys):
    """Two tiny trained networks -> combiner (through the console entry point, which calls
    combine.train_combiner), the first averaging two views and the second, named in
    train.single_view_backbones, one: 10 trainable scalars, backbones frozen, folders
    refused and kept."""
    cfg = small_config(cache)
    a, b = trained / "a", trained / "b"
    before = [np.array(w) for w in keras.saving.load_model(a / "model.keras",
                                                           compile=False).get_weights()]
    args = ["combine", "--models", str(a), str(b),
            "--model-dir", str(tmp_path / "c"), "--steps", "2", "--preset", "smoke",
            f"--set=image.npix={NPIX}", f"--set=data.cache_dir={cache}",
            "--set=train.combine_views=2", "--set=train.single_view_backbones=[b]",
            "--set=train.combine_epochs=3", "--set=train.combine_loss=logcosh"]
    assert cli.main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ensai combine: fitted the per_parameter combination of 2 networks "
                           f"to their predictions of {2 * cfg.train.batch_size} fresh lenses "
                           "(3 epochs of logcosh) in ") and last.endswith(
        f"wrote {tmp_path / 'c'} (combiner.json, model.keras, saved_model/, log.csv, config.yaml)")
    for name in ("model.keras", "saved_model/saved_model.pb", "combiner.json", "config.yaml"):
        assert (tmp_path / "c" / name).is_file(), name
    summary = json.loads((tmp_path / "c" / "combiner.json").read_text())
    assert summary["steps"] == 2 and summary["lenses"] == 2 * cfg.train.batch_size
    assert summary["epochs"] == 3 and summary["loss"] == "logcosh"
    with open(tmp_path / "c" / "log.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 3  # one row per epoch
    assert summary["views"] == [[[False, False, False], [True, False, False]],
                                [[False, False, False]]]
    assert set(summary) >= {"plain_average_validation", "trained_validation"}
    model = keras.saving.load_model(tmp_path / "c" / "model.keras", compile=False)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 2 * 5
    _assert_record_alone_rebuilds(model, tmp_path / "c", tmp_path / "shipped")
    after = [np.array(w) for w in keras.saving.load_model(a / "model.keras",
                                                          compile=False).get_weights()]
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    assert cli.main(args) == 2  # an existing combiner folder is refused and kept
    assert (tmp_path / "c" / "saved_model" / "saved_model.pb").is_file()
    with pytest.raises(ModelDirError, match="not empty"):
        combine.train_combiner([a], tmp_path / "c", config=cfg, steps=1)
    with pytest.raises(ModelDirError, match="has no model.keras"):
        combine.train_combiner([tmp_path / "nothing"], tmp_path / "d", config=cfg, steps=1)


def test_an_unknown_single_view_backbone_is_refused_before_anything_is_written(tmp_path, cache,
                                                                              trained):
    cfg = config_lib.apply_overrides(small_config(cache), ["train.single_view_backbones=[b, zz]"])
    with pytest.raises(config_lib.ConfigError,
                       match=r"single_view_backbones: zz is not among the backbones \(a, b\)"):
        combine.train_combiner([trained / "a", trained / "b"], tmp_path / "c", config=cfg)
    assert not (tmp_path / "c").exists()


def test_backbone_names_are_folder_names_and_must_be_distinct_to_be_named(tmp_path):
    assert combine.backbone_name(tmp_path / "alexnet") == "alexnet"
    assert combine.backbone_name(tmp_path / "alexnet" / "net.keras") == "net"
    t = config_lib.apply_overrides(config_lib.get_preset("paper"), [
        "train.combine_views=4", "train.single_view_backbones=[model]"]).train
    with pytest.raises(config_lib.ConfigError, match=r"names \(model, model\) are not distinct"):
        combine.backbone_views(["model", "model"], t)
    assert [len(v) for _, v in combine.backbone_views(["a", "model"], t)] == [4, 1]


def test_split_view_backbones_join_twice_on_the_views_that_keep_and_swap_the_axes():
    """train.split_view_backbones: a member on the image, its two flips and its half-turn, none
    of which swaps e_x and e_y (each maps the ellipticity to +-itself component by component),
    and a twin, appended, on their transposes, each of which swaps them; a name in both lists
    is refused."""
    t = config_lib.apply_overrides(config_lib.get_preset("paper"), [
        "train.combine_views=4", "train.split_view_backbones=[g]",
        "train.single_view_backbones=[s]"]).train
    members = combine.backbone_views(["a", "g", "s"], t)
    assert [(i, len(v)) for i, v in members] == [(0, 4), (1, 4), (2, 1), (1, 4)]
    assert members[1][1] == symmetry.AXIS_VIEWS and members[3][1] == symmetry.SWAPPED_AXIS_VIEWS
    e = np.array([[1.0, 0.3, 0.7, 0.1, 0.2]])
    for element in symmetry.AXIS_VIEWS:
        moved = symmetry.transform_params(e, element)
        np.testing.assert_allclose(np.abs(moved[0, 1:3]), [0.3, 0.7])
    for element in symmetry.SWAPPED_AXIS_VIEWS:
        moved = symmetry.transform_params(e, element)
        np.testing.assert_allclose(np.abs(moved[0, 1:3]), [0.7, 0.3])
    both = config_lib.apply_overrides(config_lib.get_preset("paper"), [
        "train.split_view_backbones=[g]", "train.single_view_backbones=[g]"]).train
    with pytest.raises(config_lib.ConfigError, match="both name g"):
        combine.backbone_views(["a", "g"], both)
    unknown = config_lib.apply_overrides(config_lib.get_preset("paper"), [
        "train.split_view_backbones=[zz]"]).train
    with pytest.raises(config_lib.ConfigError, match="split_view_backbones: zz is not among"):
        combine.backbone_views(["a", "g"], unknown)


def test_a_split_view_backbone_joins_twice_and_its_record_rebuilds_the_same_network(
        tmp_path, cache, trained):
    """Two networks, the second split: three members, the second file named twice in
    combiner.json with the axis views and their transposes, 15 weights; the record alone
    rebuilds the same predictions."""
    cfg = config_lib.apply_overrides(small_config(cache), [
        "train.split_view_backbones=[b]", "train.combine_epochs=2"])
    model, summary = combine.train_combiner([trained / "a", trained / "b"], tmp_path / "c",
                                            config=cfg, steps=1)
    record = json.loads((tmp_path / "c" / "combiner.json").read_text())
    assert [p.rsplit("/", 2)[-2] for p in record["backbones"]] == ["a", "b", "b"]
    as_lists = [[[bool(v) for v in g] for g in views] for views in
                (symmetry.DIHEDRAL_GROUP[:1], symmetry.AXIS_VIEWS, symmetry.SWAPPED_AXIS_VIEWS)]
    assert record["views"] == as_lists
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 3 * 5
    _assert_record_alone_rebuilds(model, tmp_path / "c", tmp_path / "shipped")
