"""Training configurations: YAML presets shipped in ``dzsr/configs`` plus ``key=value`` overrides.

A config is a nested dict (see ``dzsr/configs/nikon_x4.yaml`` for every key). ``load_config(path
or preset name, overrides)`` reads it; overrides use dotted keys and YAML values, e.g.
``train.lr=2e-4 data.root=/data/DRealSR log.out_dir=runs/x``. An override must name an existing
key (typos are errors).
"""
from __future__ import annotations

import copy
import os
from importlib import resources

import yaml

PRESETS = ("nikon_x4", "camerafusion_x2", "sample_x4")


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


def preset_path(name: str) -> str:
    """Path of a shipped preset (``nikon_x4``, ``camerafusion_x2``, ``sample_x4``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give a YAML file")
    return str(resources.files("dzsr.configs").joinpath(f"{name}.yaml"))


def _parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.subkey=value")
    key, value = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: cannot parse the value ({err})") from None
    if isinstance(parsed, str):  # YAML 1.1 reads "3e-4" as a string; numbers are meant
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return keys, parsed


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """A copy of ``config`` with each ``a.b.c=value`` override applied (value parsed as YAML).
    Every key of the path must already exist (so typos are errors)."""
    config = copy.deepcopy(config)
    for item in overrides:
        keys, value = _parse_override(item)
        node = config
        for depth, k in enumerate(keys):
            if not isinstance(node, dict) or k not in node:
                known = ", ".join(node) if isinstance(node, dict) else "none: not a section"
                raise ConfigError(f"override {item!r}: unknown key {'.'.join(keys[:depth + 1])} (known: {known})")
            if depth < len(keys) - 1:
                node = node[k]
        node[keys[-1]] = value
    return config


def load_config(source: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML config file (or a preset name) and apply ``overrides``."""
    path = os.fspath(source)
    if not os.path.exists(path) and not path.endswith((".yaml", ".yml")):
        path = preset_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse config {path}: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(config).__name__}")
    return apply_overrides(config, overrides or [])
