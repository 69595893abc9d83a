"""Strict frozen dataclasses from plain dicts (a Ray Tune config, a YAML file, a manifest): an
unknown key, a value of the wrong type or one the dataclass refuses fails loudly, naming the key,
so a typo never becomes a silent default. trainable.config builds its configs with it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, TypeVar

from trainable.dotted import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # build makes dataclasses only


def require(condition: bool, message: str) -> None:
    """Refuse a value in a dataclass's __post_init__: ConfigError(message) unless `condition`."""
    if not condition:
        raise ConfigError(message)


def choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a named switch's value outside `choices`."""
    require(value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}")


def build(cls: type[T], values: dict[str, Any], path: str = "") -> T:
    """Build the dataclass `cls` from `values`, strictly.

    Args:
        cls: a (frozen) dataclass type; nested dataclass fields take nested dicts.
        values: field name -> value. Missing fields keep their defaults.
        path: dotted prefix used in error messages for nested configs.

    Raises:
        ConfigError: on an unknown key, a value of the wrong type, or a value the
            dataclass itself rejects; the message names the key.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config key {path}{unknown[0]!s} (known: {', '.join(sorted(fields))})")
    kwargs = {name: _convert(hints[name], value, f"{path}{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{path.rstrip('.') or cls.__name__}: {error}") from None


def _convert(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against the type `hint`, converting only lossless cases (int->float, list->tuple)."""
    if dataclasses.is_dataclass(hint):
        assert isinstance(hint, type)  # a field's type hint: a dataclass type, never an instance
        return build(hint, value, path=f"{key}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int: `True` for an int field is a mistake, not a 1.
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"config key {key}: expected {hint.__name__}, got {value!r}")
    return value
