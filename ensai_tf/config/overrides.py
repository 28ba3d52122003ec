"""Building configs from dicts, YAML files and ``section.key=value`` overrides.

YAML files and ``--set`` overrides are applied on top of a preset with
:func:`dataclasses.replace`. Unknown keys and invalid values raise
:class:`~ensai_tf.config.ConfigError`, whose message names the key, the
value and what is allowed.
"""

import dataclasses
import difflib
import pathlib

import yaml

from ensai_tf import atomic
from ensai_tf.config.presets import get_preset
from ensai_tf.config.schema import MAX_QUOTED, ConfigError, ExperimentConfig, quote_value
from ensai_tf.config.validation import validate_config
from ensai_tf.model_dir import CONFIG_YAML

__all__ = [
    "MAX_CONFIG_BYTES",
    "config_to_dict",
    "valid_keys",
    "unknown_key_message",
    "config_from_dict",
    "apply_overrides",
    "load_config",
    "save_config",
]


MAX_CONFIG_BYTES = 1 << 20
"""Largest YAML config file read, bytes (a config of every key is about 3 kB)."""


def config_to_dict(cfg):
    """Nested plain dict of a config (tuples become lists, ready for YAML).

    Args:
        cfg: an :class:`ExperimentConfig`, or one of its section dataclasses.

    Returns:
        dict: ``{section: {key: value}}`` (one level for a section).
    """
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def valid_keys(cfg=None):
    """All ``section.key`` names of a config, sorted.

    Args:
        cfg: an :class:`ExperimentConfig`; ``None`` uses the defaults.

    Returns:
        list[str]: names such as ``"train.learning_rate"``.
    """
    cfg = cfg if cfg is not None else ExperimentConfig()
    return sorted(f"{s.name}.{f.name}" for s in dataclasses.fields(cfg)
                  for f in dataclasses.fields(getattr(cfg, s.name)))


def unknown_key_message(key, valid):
    """One line for an unknown key: the closest valid keys ("did you mean"), else the section's.

    Args:
        key: the unknown ``section.key`` as given.
        valid: the valid ``section.key`` names.

    Returns:
        str, naming the key and at most three suggestions, or the section's keys.

    Example:
        >>> unknown_key_message("train.learing_rate", ["train.learning_rate", "train.epochs"])
        "unknown config key 'train.learing_rate'; did you mean train.learning_rate?"
    """
    section, _, name = str(key).partition(".")
    names = {v.partition(".")[2]: v for v in valid if v.partition(".")[0] == section}
    sections = sorted({v.partition(".")[0] for v in valid})
    if not names:
        close = difflib.get_close_matches(section, sections, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"sections: {', '.join(sections)}"
        return f"unknown config section in {quote_value(key)}; {hint}"
    close = [names[n] for n in difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)]
    if close:
        return f"unknown config key {quote_value(key)}; did you mean {' or '.join(close)}?"
    return (f"unknown config key {quote_value(key)}; valid keys in {section!r}: "
            f"{', '.join(sorted(names.values()))}")


def _coerce(key, value, default):
    """Convert a parsed override to the type of the field's default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if default and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               for v in default):
                kind = int if all(isinstance(v, int) for v in default) else float
                return tuple(_coerce(key, v, kind()) for v in value)
            return tuple(value)
    except (TypeError, ValueError, OverflowError, RecursionError, yaml.YAMLError):
        pass
    if default == ():
        raise ConfigError(f"{key}: {quote_value(value)} is not a list; write it as "
                          f"'{key}=[A,B]' (quoted for the shell; default [])")
    if isinstance(default, tuple):
        example = ",".join(str(v) for v in default)
        raise ConfigError(f"{key}: {quote_value(value)} is not a valid range; write it as "
                          f"'{key}=[{example}]' (quoted for the shell; default {list(default)})")
    raise ConfigError(f"{key}: {quote_value(value)} is not a valid {type(default).__name__} "
                      f"(default {default!r})")


def config_from_dict(data, base=None):
    """Build a config from a nested dict, starting from ``base``.

    Args:
        data: ``{section: {key: value}}`` mapping (as loaded from YAML), giving
            only the fields to change; ``None`` returns ``base`` unchanged.
        base: the starting :class:`ExperimentConfig`; ``None`` uses the defaults.

    Returns:
        A new, validated :class:`ExperimentConfig`.

    Raises:
        ConfigError: for an unknown section or key, naming it and listing the
            valid ones, or for a value of the wrong type or out of range.
    """
    cfg = base if base is not None else ExperimentConfig()
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    sections = {f.name for f in dataclasses.fields(cfg)}
    updates = {}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"unknown config section {quote_value(section)}; valid sections: "
                              f"{', '.join(sorted(sections))}")
        sub = getattr(cfg, section)
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got "
                              f"{quote_value(values)}")
        fields = {f.name: f for f in dataclasses.fields(sub)}
        changes = {}
        for key, value in values.items():
            if key not in fields:
                # quote_value escapes a key holding a newline: the message stays one line
                raise ConfigError(unknown_key_message(
                    f"{section}.{quote_value(str(key))[1:-1]}",
                    [f"{section}.{name}" for name in sorted(fields)]))
            changes[key] = _coerce(f"{section}.{key}", value, getattr(sub, key))
        updates[section] = dataclasses.replace(sub, **changes)
    cfg = dataclasses.replace(cfg, **updates)
    validate_config(cfg)
    return cfg


def apply_overrides(cfg, overrides):
    """Apply ``section.key=value`` strings (values parsed as YAML).

    Args:
        cfg: the starting :class:`ExperimentConfig`.
        overrides: iterable of strings such as ``"train.learning_rate=3e-4"``
            or ``"lens.theta_e=[0.5, 2.0]"``.

    Raises:
        ConfigError: for a malformed override, an unknown key (the message
            lists the valid keys) or an invalid value.
    """
    nested = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {quote_value(item)} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key.count(".") != 1:
            raise ConfigError(f"override key {quote_value(key)} must be section.key, e.g. "
                              "train.learning_rate=3e-4")
        section, name = key.split(".")
        if f"{section}.{name}" not in valid_keys(cfg):
            raise ConfigError(unknown_key_message(key, valid_keys(cfg)))
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError, ValueError) as err:
            detail = " ".join(str(err).split())[:MAX_QUOTED] if not isinstance(
                err, RecursionError) else "nested too deeply"
            raise ConfigError(f"{key}: cannot parse value {quote_value(raw)}: {detail}") from None
        nested.setdefault(section, {})[name] = value
    return config_from_dict(nested, base=cfg)


def load_config(path=None, preset="paper", overrides=()):
    """Resolve a config: preset, then a YAML file, then ``--set`` overrides.

    Args:
        path: optional YAML file (a nested mapping of sections).
        preset: name of the starting preset.
        overrides: ``section.key=value`` strings, applied last.

    Raises:
        ConfigError: for a missing or unparsable file, an unknown key or an
            invalid value.
    """
    cfg = get_preset(preset)
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {str(path)!r} is {path.stat().st_size} bytes; a "
                              f"config holds at most {MAX_CONFIG_BYTES} bytes")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: "
                              f"{' '.join(str(err).split())[:4 * MAX_QUOTED]}") from None
        except RecursionError:
            raise ConfigError(f"config file {str(path)!r} is nested too deeply") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(path)!r} is not a text file") from None
        except ValueError as err:  # e.g. an integer of more than 4300 digits
            raise ConfigError(f"config file {str(path)!r}: {' '.join(str(err).split())[:200]}"
                              ) from None
        try:
            cfg = config_from_dict(data, base=cfg)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    cfg = apply_overrides(cfg, overrides)
    return validate_config(cfg)


def save_config(cfg, path):
    """Write ``cfg`` as YAML to ``path`` (a file, or a folder -> ``config.yaml``).

    The file is written under a temporary name and renamed, so a reader never
    sees half a file. Returns the path written.

    Args:
        cfg: the :class:`ExperimentConfig` to write.
        path: destination file, or an existing folder to write ``config.yaml`` into.

    Returns:
        ``pathlib.Path`` of the file written.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CONFIG_YAML
    return atomic.write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
