"""Training configurations: YAML presets shipped in ``dzsr/configs`` plus ``key=value`` overrides.

A config is a nested dict (see ``dzsr/configs/nikon_x4.yaml`` for every key; the schema, defaults
and what may change on ``--resume`` are in ``dzsr.config_schema``). ``load_config(path or preset
name, overrides)`` reads it, applies overrides and validates the result once: the dict it returns
is complete (every optional key filled with its default) and normalised (numbers written as YAML
strings, such as ``lr: 5e-4``, are numbers), or one ``ConfigError`` lists every problem, each naming
its dotted key, what was expected and what was given, prefixed by where it came from (the file or
the override). Overrides use dotted keys and YAML values, e.g. ``train.lr=2e-4
data.root=/data/DRealSR log.out_dir=runs/x``; an override must name a key of the schema (typos are
errors, with the closest valid key), present in the file or not.
"""

from __future__ import annotations

import copy
import os
from importlib import resources

import yaml

from .config_schema import ConfigError, check_config, schema_entry, validate_config

PRESETS = ("nikon_x4", "nikon_x4_losw", "camerafusion_x2", "sample_x4")

__all__ = [
    "PRESETS",
    "ConfigError",
    "apply_overrides",
    "load_config",
    "preset_path",
    "validate_config",
]


def preset_path(name: str) -> str:
    """Path of a shipped preset (``PRESETS``)."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give a YAML file"
        )
    return str(resources.files("dzsr.configs").joinpath(f"{name}.yaml"))


def _parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.subkey=value")
    key, value = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        return keys, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: cannot parse the value ({err})") from None


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """A copy of ``config`` with each ``a.b.c=value`` override applied (value parsed as YAML;
    checked later, with the whole config). The key must be in the schema (so typos are errors)."""
    config = copy.deepcopy(config)
    for item in overrides:
        keys, value = _parse_override(item)
        try:
            schema_entry(keys)
        except ConfigError as err:
            raise ConfigError(f"override {item!r}: {err}") from None
        node = config
        for k in keys[:-1]:
            if node.get(k) is None:  # a missing or null section
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):  # validation reports the section that is not one
                break
        else:
            node[keys[-1]] = value
    return config


def _origin(key: str, overridden: dict[str, str], source: str) -> str:
    """Where the value of dotted ``key`` came from: the last override of it or of a section above
    it, else the file."""
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        item = overridden.get(".".join(parts[:depth]))
        if item is not None:
            return f"override {item!r}"
    return f"config {source}"


def load_config(source: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML config file (or a preset name), apply ``overrides`` and validate the result
    (``dzsr.config_schema``): the complete, normalised config, or one ``ConfigError``."""
    path = os.fspath(source)
    if not os.path.exists(path) and not path.endswith((".yaml", ".yml")):
        path = preset_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse config {path}: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    overrides = list(overrides or [])
    raw = apply_overrides(raw, overrides)
    config, problems = check_config(raw)
    if problems:
        overridden = {".".join(_parse_override(item)[0]): item for item in overrides}
        raise ConfigError(
            "; ".join(f"{_origin(key, overridden, path)}: {message}" for key, message in problems)
        )
    return config
