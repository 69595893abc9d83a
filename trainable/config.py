"""Typed, frozen configuration with the seed recipe's defaults.

Every default carries a comment with its unit or its source. `from_dict` turns a plain
dict (a Ray Tune config, a YAML file, a manifest) into a config and fails loudly on an
unknown key or a value of the wrong type, so a typo never becomes a silent default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config dict that does not match its dataclass (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel feature parameters; they identify a cache (see trainable.prepare)."""

    sample_rate: int = 32000  # Hz; every input is resampled to it, so frame rate is fixed
    n_fft: int = 2048  # samples per STFT window (64 ms at 32 kHz)
    hop_length: int = 512  # samples between frames: 32000 / 512 = 62.5 frames/s, 3751 per 60 s
    n_mels: int = 128  # mel bands (seed recipe)
    fmin: float = 50.0  # Hz; below the lowest RFCx call (94 Hz)
    fmax: float = 16000.0  # Hz; Nyquist at 32 kHz, above the highest RFCx call (13.7 kHz)

    def __post_init__(self) -> None:
        _require(self.sample_rate > 0 and self.n_fft > 0 and self.hop_length > 0, "sizes must be > 0")
        _require(self.n_mels > 0, "n_mels must be > 0")
        _require(0 <= self.fmin < self.fmax <= self.sample_rate / 2,
                 f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, fmax={self.fmax}")

    @property
    def frames_per_second(self) -> float:
        """Frame rate of the log-mel arrays (62.5 with the defaults)."""
        return self.sample_rate / self.hop_length


@dataclass(frozen=True)
class DataConfig:
    """Crops, negatives, evaluation windows and folds (seed recipe, stage 1)."""

    crop_frames: int = 512  # frames per training crop (8.2 s at 62.5 frames/s)
    crop_offsets: tuple[int, ...] = (32, 64, 128, 256)  # frames from crop start to event centre
    fp_per_epoch: int = 30  # train_fp recordings drawn anew each epoch as all-negative crops
    valid_overlap: int = 49  # frames shared by neighbouring validation windows (seed recipe)
    test_overlap: int = 256  # frames shared by neighbouring test windows (seed recipe)
    n_folds: int = 5  # MultilabelStratifiedKFold splits over the train_tp recordings
    fold_seed: int = 42  # seed of the fold split; the same seed gives the same folds

    def __post_init__(self) -> None:
        _require(self.crop_frames > 0, "crop_frames must be > 0")
        _require(len(self.crop_offsets) > 0, "crop_offsets must not be empty")
        _require(all(0 <= o < self.crop_frames for o in self.crop_offsets),
                 f"every crop offset must be in [0, crop_frames={self.crop_frames})")
        _require(self.fp_per_epoch >= 0, "fp_per_epoch must be >= 0")
        for name in ("valid_overlap", "test_overlap"):
            _require(0 <= getattr(self, name) < self.crop_frames,
                     f"{name} ({getattr(self, name)}) must be in [0, crop_frames={self.crop_frames})")
        _require(self.n_folds >= 2, "n_folds must be >= 2")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def from_dict(cls: type[T], values: dict[str, Any], path: str = "") -> T:
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
        raise ConfigError(f"{path or cls.__name__}: {error}") from None


def _convert(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against the type `hint`, converting only lossless cases (int->float, list->tuple)."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path=f"{key}.")
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


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config (tuples as lists), the inverse of `from_dict`."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value
    return plain(dataclasses.asdict(config))
