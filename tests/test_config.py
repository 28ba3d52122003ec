"""Tests of ensai_tf.config: presets, YAML round trip, overrides and validation."""

import dataclasses

import pytest

from ensai_tf import config, conventions


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_every_preset_builds_and_validates(name):
    cfg = config.get_preset(name)
    assert isinstance(cfg, config.ExperimentConfig)
    assert config.validate_config(cfg) is cfg


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_yaml_round_trip_is_exact(tmp_path, name):
    cfg = config.get_preset(name)
    path = config.save_config(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    assert config.load_config(path, preset="paper") == cfg


def test_overrides_are_typed():
    cfg = config.load_config(preset="smoke", overrides=[
        "train.learning_rate=3e-4", "lens.theta_e=[0.5, 2]", "simulate.lens_light=true",
        "model.name=alexnet"])
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.lens.theta_e == (0.5, 2.0)
    assert cfg.simulate.lens_light is True
    assert cfg.model.name == "alexnet"


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(config.ConfigError, match=r"unknown config key 'train\.lr'.*train\.learning_rate"):
        config.apply_overrides(config.get_preset("paper"), ["train.lr=1"])


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lens:\n  theta_E: [0.1, 3.0]\n")
    with pytest.raises(config.ConfigError, match=r"bad\.yaml.*lens\.theta_E"):
        config.load_config(path)


def test_yaml_syntax_error_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lens: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load_config(path)


@pytest.mark.parametrize("override, message", [
    ("lens.theta_e=[3.0, 0.1]", r"lens\.theta_e: min 3\.0 > max 0\.1"),
    ("lens.epsilon=[0.0, 1.0]", r"lens\.epsilon: bound 1\.0 .* must be < 1\.0"),
    ("image.pixel_scale=0", r"image\.pixel_scale: value 0\.0 .* must be > 0\.0"),
    ("image.pixel_scale=-0.04", r"image\.pixel_scale"),
    ("observe.psf_prob=1.5", r"observe\.psf_prob: value 1\.5 .* <= 1\.0"),
    ("model.name=vgg16", r"model\.name: 'vgg16' is not one of"),
    ("source.stamp_dirs=[/no/such/folder]", r"stamp directory '/no/such/folder' does not exist"),
    ("train.batch_size=2.5", r"train\.batch_size: 2\.5 is not a valid int"),
    ("lens.shear=maybe", r"lens\.shear: 'maybe' is not a valid bool"),
])
def test_invalid_values_name_key_value_and_rule(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.apply_overrides(config.get_preset("paper"), [override])


def test_configs_are_frozen():
    cfg = config.get_preset("paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.batch_size = 3


def test_paper_defaults_follow_the_spec():
    cfg = config.get_preset("paper")
    assert cfg.lens.theta_e == (0.1, 3.0)          # docs/design.md §3.1
    assert cfg.lens.epsilon == (0.0, 0.9)
    assert cfg.observe.psf_sigma_pix == (0.1, 2.5)  # docs/design.md §9 #1
    assert cfg.observe.poisson_counts == (100.0, 1000.0)
    assert cfg.observe.norm_jitter_rms == 0.05
    assert cfg.train.batch_size == 50               # docs/design.md §0
    assert cfg.data.test_size == 10000              # docs/design.md §8.3


def test_model_names_are_the_network_names():
    for name in conventions.NETWORK_NAMES:
        assert config.apply_overrides(config.get_preset("paper"), [f"model.name={name}"]
                                      ).model.name == name


@pytest.mark.parametrize("experiment, check", [
    ("shear", lambda c: c.lens.shear is True),
    ("psf", lambda c: c.observe.psf == "airy"),
    ("lens-light", lambda c: c.simulate.lens_light is True),
])
def test_experiment_config_changes_only_its_section(experiment, check):
    base = config.get_preset("smoke")
    changed = config.experiment_config(base, experiment)
    assert check(changed)
    assert experiment in config.EXPERIMENTS
    same = [f.name for f in dataclasses.fields(base)
            if getattr(base, f.name) == getattr(changed, f.name)]
    assert len(same) == len(dataclasses.fields(base)) - 1
    assert config.experiment_config(base) is base


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(config.ConfigError, match="unknown experiment 'fog'.*shear, psf, lens-light"):
        config.experiment_config(config.get_preset("paper"), "fog")


def test_unknown_key_suggests_the_closest_valid_keys():
    with pytest.raises(config.ConfigError, match=r"did you mean train\.learning_rate"):
        config.apply_overrides(config.get_preset("smoke"), ["train.learing_rate=1e-3"])
    with pytest.raises(config.ConfigError, match=r"did you mean train\?"):
        config.apply_overrides(config.get_preset("smoke"), ["trian.epochs=3"])


def test_a_bad_range_shows_the_bracket_syntax():
    with pytest.raises(config.ConfigError, match=r"write it as 'lens\.theta_e=\[0\.1,3\.0\]'"):
        config.apply_overrides(config.get_preset("paper"), ["lens.theta_e=0.5,2.5"])


def test_a_list_setting_without_brackets_shows_the_list_syntax():
    with pytest.raises(config.ConfigError, match=r"'ensai_net' is not a list; write it as "
                                                 r"'train\.single_view_backbones=\[A,B\]'"):
        config.apply_overrides(config.get_preset("paper"), ["train.single_view_backbones=ensai_net"])
    cfg = config.apply_overrides(config.get_preset("paper"),
                                 ["train.single_view_backbones=[ensai_net, inception_v4]"])
    assert cfg.train.single_view_backbones == ("ensai_net", "inception_v4")
    # the resolved config saved beside a model reads back the same
    assert config.config_from_dict(config.config_to_dict(cfg)) == cfg
