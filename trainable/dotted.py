"""Dotted config keys ("loss.w_max") and nested config dicts, and laying one over another."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config dict that does not match its dataclass (unknown key, wrong type, bad value)."""


def nest_dotted(values: dict[str, Any]) -> dict[str, Any]:
    """{"loss.w_max": 0.3, "train": {"lr": 1e-3}} -> {"loss": {"w_max": 0.3}, "train": {"lr": 1e-3}}.

    Raises:
        ConfigError: a key given both as a value and as a section ("loss": 1, "loss.w_max": 2).
    """
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = nested
        for depth, section in enumerate(sections):
            child = node.setdefault(section, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key {'.'.join(sections[:depth + 1])} is both a value and a section")
            node = child
        if isinstance(value, dict):
            value = nest_dotted(value)
            if isinstance(node.get(leaf), dict):
                value = {**node[leaf], **value}
        elif leaf in node:
            raise ConfigError(f"config key {key} is given twice")
        node[leaf] = value
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, section by section (either may use dotted keys).

    merge({"train": {"lr": 1e-3, "epochs": 50}}, {"train.epochs": 2})
        == {"train": {"lr": 1e-3, "epochs": 2}}
    """
    merged = nest_dotted(base)
    for key, value in nest_dotted(overrides).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge(merged[key], value)
        merged[key] = value
    return merged


def flatten_dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of `nest_dotted`: {"loss": {"w_max": 0.3}} -> {"loss.w_max": 0.3}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
