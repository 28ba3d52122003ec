"""Validation of a configuration against its field metadata and cross-field rules."""

import dataclasses
import math
import os

from ensai_tf.config.schema import MAX_COUNT, ConfigError, quote_value

__all__ = [
    "validate_config",
]


def _check_bound(key, value, meta, what="value"):
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {what} {value!r} must be finite")
    if isinstance(value, int) and hi is None and abs(value) > MAX_COUNT:
        raise ConfigError(f"{key}: {what} {quote_value(value)} is not allowed; its size must "
                          f"be <= 2**62")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        op = ">" if meta.get("lo_open") else ">="
        raise ConfigError(f"{key}: {what} {quote_value(value)} is not allowed; it must be "
                          f"{op} {lo}")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        op = "<" if meta.get("hi_open") else "<="
        raise ConfigError(f"{key}: {what} {quote_value(value)} is not allowed; it must be "
                          f"{op} {hi}")


def validate_config(cfg):
    """Check every field against its metadata; return ``cfg`` unchanged.

    Besides the per-field bounds and choices it checks cross-field rules
    (learning-rate floor, shear outputs, PSF and noise-spectrum files exist).

    Args:
        cfg: the :class:`ExperimentConfig` to check.

    Returns:
        ``cfg`` itself.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            _check_field(f"{section.name}.{f.name}", f, getattr(sub, f.name))
    if cfg.train.min_learning_rate > cfg.train.learning_rate:
        raise ConfigError(f"train.min_learning_rate: {cfg.train.min_learning_rate!r} exceeds "
                          f"train.learning_rate {cfg.train.learning_rate!r}")
    if cfg.model.shear_outputs and not cfg.lens.shear:
        raise ConfigError("model.shear_outputs: true needs lens.shear: true (a network cannot "
                          "learn the shear from lenses simulated without it)")
    if cfg.observe.psf == "file" and not cfg.observe.psf_file:
        raise ConfigError("observe.psf_file: '' is not allowed when observe.psf = 'file'; "
                          "give a .fits or .npy PSF image")
    for key, path in (("observe.psf_file", cfg.observe.psf_file),
                      ("observe.noise_spectrum", cfg.observe.noise_spectrum)):
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise ConfigError(f"{key}: file {quote_value(path)} does not exist")
    return cfg


def _check_field(key, f, value):
    """Check one field's value against its metadata (bounds, choices, folders)."""
    meta = f.metadata
    kind = meta.get("kind")
    if kind == "range":
        if f.name == "family_weights":
            if len(value) != 3 or sum(value) <= 0:
                raise ConfigError(f"{key}: {quote_value(value)} must be three non-negative weights "
                                  "(clumpy, stamp, sersic) with a positive sum")
        elif len(value) != 2:
            raise ConfigError(f"{key}: {quote_value(value)} must be a (min, max) pair")
        elif value[0] > value[1]:
            raise ConfigError(f"{key}: min {value[0]!r} > max {value[1]!r}; "
                              "a range must have min <= max")
        for v in value:
            _check_bound(key, v, meta, what="bound")
            if meta.get("integer") and int(v) != v:
                raise ConfigError(f"{key}: {quote_value(value)} must hold integers")
    elif kind == "value":
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: {quote_value(value)} is not one of {', '.join(choices)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_bound(key, value, meta)
    elif kind == "names":
        if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
            raise ConfigError(f"{key}: {quote_value(value)} must be a list of distinct names, "
                              f"e.g. '{key}=[ensai_net,inception_v4]'")
    elif kind == "dirs":
        for d in value:
            if not os.path.isdir(os.path.expanduser(str(d))):
                raise ConfigError(f"{key}: stamp directory {quote_value(d)} does not exist; "
                                  "give existing folders of FITS/PNG/JPEG stamps")
