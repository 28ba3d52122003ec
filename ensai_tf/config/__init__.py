"""Experiment configuration: frozen dataclasses, named presets, YAML and overrides.

A config is a tree of frozen dataclasses gathered in :class:`ExperimentConfig`
(:mod:`~ensai_tf.config.schema`); presets are functions returning one
(:mod:`~ensai_tf.config.presets`); YAML files and ``section.key=value``
overrides are applied with :func:`dataclasses.replace`
(:mod:`~ensai_tf.config.overrides`) and checked by :func:`validate_config`
(:mod:`~ensai_tf.config.validation`); robustness experiments change the
test data (:mod:`~ensai_tf.config.experiments`). Unknown keys and invalid
values raise :class:`ConfigError`, whose message names the key, the value
and what is allowed. Every public name is importable from here.

Example:
    >>> from ensai_tf import config
    >>> cfg = config.load_config(preset="smoke", overrides=["train.learning_rate=3e-4"])
    >>> cfg.train.learning_rate
    0.0003
"""

from ensai_tf.config.experiments import EXPERIMENTS, experiment_config
from ensai_tf.config.overrides import (apply_overrides, config_from_dict, config_to_dict,
                                       load_config, save_config, valid_keys)
from ensai_tf.config.presets import PRESETS, get_preset
from ensai_tf.config.schema import (MAX_QUOTED, BandsConfig, ConfigError, DataConfig, EvalConfig, ExperimentConfig,
                                    ImageConfig, LensPrior, ModelConfig, ObserveConfig,
                                    SimulateConfig, SourceConfig, TrainConfig, quote_value,
                                    target_count)
from ensai_tf.config.validation import validate_config

__all__ = [
    "ConfigError",
    "MAX_QUOTED",
    "quote_value",
    "ImageConfig",
    "LensPrior",
    "SourceConfig",
    "SimulateConfig",
    "ObserveConfig",
    "BandsConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "ExperimentConfig",
    "PRESETS",
    "get_preset",
    "load_config",
    "save_config",
    "config_to_dict",
    "config_from_dict",
    "apply_overrides",
    "validate_config",
    "valid_keys",
    "target_count",
    "EXPERIMENTS",
    "experiment_config",
]
