"""ml_collections configs from Python files, with `--config.x=y` overrides.

A config file defines `get_config(arg: str | None = None) -> ml_collections.ConfigDict`
(big_vision style); `path.py:arg` passes `arg`. Overrides are parsed against the type of the
existing field, so a typo or a wrong type is an error that names the key, never a silent new field.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import ml_collections


class ConfigError(ValueError):
    pass


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: file not found: {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"m4_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: {path!r} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
    for item in overrides:
        item = item[len("--config."):] if item.startswith("--config.") else item
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"config override {item!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = config
        for i, name in enumerate(parents):
            if name not in node:
                raise ConfigError(f"config override {key!r}: no field {'.'.join(parents[:i + 1])!r}")
            node = node[name]
        if leaf not in node:
            known = ", ".join(sorted(node.keys()))
            raise ConfigError(f"config override {key!r}: no field {leaf!r} (known: {known})")
        node[leaf] = _parse_like(node[leaf], raw, key)


def _parse_like(current, raw: str, key: str):
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if current is None:
            return raw
        raise ConfigError(f"config override {key!r}: cannot parse {raw!r} as {type(current).__name__}")
    if current is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config override {key!r}: expected bool, got {raw!r}")
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if not isinstance(value, type(current)):
        raise ConfigError(
            f"config override {key!r}: expected {type(current).__name__}, got {raw!r} "
            f"({type(value).__name__})")
    return value


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.x=y` overrides from the other arguments of a command."""
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    return rest, overrides
