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


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


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


MIXUP_TARGETS = ("features", "input")  # where mixup applies: backbone feature map or model input


@dataclass(frozen=True)
class ModelConfig:
    """The SED model: a timm backbone with the SED head."""

    backbone: str = "resnet18"  # any timm model; tested: resnet18, densenet121, efficientnet_b0,
    #                             resnest50d, mobilenetv2_100
    pretrained: bool = False  # ImageNet weights, as the seed used; off by default since no model
    #                           hub may be reachable (our machines reach none)
    pretrained_file: str = ""  # local weights file for `pretrained` on machines without a hub

    def __post_init__(self) -> None:
        _require(bool(self.backbone), "backbone must not be empty")
        _require(not self.pretrained_file or self.pretrained, "pretrained_file needs pretrained: true")


@dataclass(frozen=True)
class LossConfig:
    """The four-term SED loss (seed recipe, stage 1)."""

    w_att: float = 1.0  # clip BCE of the attention-pooled logit
    w_max: float = 0.5  # clip BCE of the max-over-time logit
    w_pseudo: float = 1.0  # attention BCE against the model's own segment pseudo-labels
    w_frame: float = 0.5  # frame BCE on the annotated frames, positive frames only
    pseudo_threshold: float = 0.7  # segment probability that becomes a pseudo-positive
    class_balanced: bool = True  # clip BCE pos_weight = max class count / class count
    # Stage 3 only: the teacher's predictions (TrialConfig.teacher_file) as extra labels.
    teacher_threshold: float = 0.5  # teacher probability that becomes a positive (seed: 0.5)
    teacher_weight: float = 0.5  # clip-loss weight of a teacher positive; a human label weighs 1 (seed)
    teacher_soft_negatives: bool = False  # species below the threshold take the teacher's probability
    #                                       as a soft target; off, as the seed found them harmful

    def __post_init__(self) -> None:
        weights = (self.w_att, self.w_max, self.w_pseudo, self.w_frame)
        _require(all(w >= 0 for w in weights), "loss weights must be >= 0")
        _require(any(w > 0 for w in weights), "at least one loss weight must be > 0")
        _require(0 < self.pseudo_threshold < 1, "pseudo_threshold must be in (0, 1)")
        _require(0 < self.teacher_threshold < 1, "teacher_threshold must be in (0, 1)")
        _require(0 < self.teacher_weight <= 1, "teacher_weight must be in (0, 1]")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; the seed's mask sizes and jitter ranges are not published, ours
    are the usual SpecAugment scale for 8 s crops."""

    mixup_alpha: float = 0.1  # Beta(alpha, alpha) mixing weight; 0 turns mixup off (seed)
    mixup_on: str = "features"  # "features" (manifold mixup on the backbone map, seed) or "input"
    time_masks: int = 2  # SpecAugment time masks per crop
    time_mask_frames: int = 32  # widest time mask, frames (0.5 s)
    freq_masks: int = 2  # SpecAugment frequency masks per crop
    freq_mask_bins: int = 12  # widest frequency mask, mel bins
    gamma: float = 0.2  # x ** g with log(g) uniform in [-gamma, gamma] (x scaled to [0, 1])
    brightness: float = 0.1  # x + b with b uniform in [-brightness, brightness]

    def __post_init__(self) -> None:
        _require(self.mixup_alpha >= 0, "mixup_alpha must be >= 0")
        _require(self.mixup_on in MIXUP_TARGETS,
                 f"mixup_on must be one of {', '.join(MIXUP_TARGETS)}, got {self.mixup_on!r}")
        sizes = (self.time_masks, self.time_mask_frames, self.freq_masks, self.freq_mask_bins)
        _require(all(n >= 0 for n in sizes), "mask counts and sizes must be >= 0")
        _require(self.gamma >= 0 and self.brightness >= 0, "gamma and brightness must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the trial's schedule (seed recipe, stage 1)."""

    epochs: int = 50  # epochs on every fold; one Ray Tune training_iteration each
    batch_size: int = 64  # crops per step
    lr: float = 1e-3  # Adam learning rate
    t_max: int = 10  # CosineAnnealingLR period, epochs; clamped: lr stays at min_lr after it
    min_lr: float = 1e-5  # floor of the cosine; the seed's unclamped schedule restarted instead
    folds: tuple[int, ...] = ()  # folds to train; () = all n_folds
    seed: int = 0  # model init, crops, augmentation; the same seed repeats a trial on CPU
    eval_recordings: int = 8  # recordings per evaluation forward (all their windows at once)
    loader_workers: int = 0  # DataLoader worker processes for training crops (0: main thread)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1")
        _require(self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr")
        _require(self.t_max >= 1, "t_max must be >= 1")
        _require(len(set(self.folds)) == len(self.folds) and all(f >= 0 for f in self.folds),
                 "folds must be distinct fold numbers >= 0")
        _require(self.eval_recordings >= 1 and self.loader_workers >= 0,
                 "need eval_recordings >= 1 and loader_workers >= 0")


STAGES = (1, 2, 3)  # the seed's stages; see TrialConfig.stage


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: where the data is and every recipe parameter.

    Keys may also be given as dotted paths ("loss.w_max": 0.3), the names search spaces use.
    """

    data_dir: str = ""  # the RFCx layout (train_tp.csv, train/, ...); required
    cache_dir: str = ""  # the log-mel cache; "" = DATA_DIR/logmel
    # 1: the recipe (clip labels on every species, frame loss on tp frames); 2: loss only on
    # labelled frames and species (tp positive, fp negative); 3: stage 2 plus teacher positives.
    stage: int = 1
    teacher_file: str = ""  # stage 3: predictions (oof.csv, submission.csv or windows.csv of an export)
    init_from: str = ""  # a checkpoint directory whose fold models start this trial's folds; "" = fresh
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        _require(bool(self.data_dir), "data_dir is required")
        _require(self.stage in STAGES, f"stage must be one of {', '.join(map(str, STAGES))}, got {self.stage}")
        _require((self.stage == 3) == bool(self.teacher_file),
                 "stage 3 needs a teacher_file" if self.stage == 3 else
                 f"a teacher_file is used by stage 3 only (this trial is stage {self.stage})")
        teacher_keys = ("teacher_threshold", "teacher_weight", "teacher_soft_negatives")
        changed = [k for k in teacher_keys if getattr(self.loss, k) != getattr(LossConfig, k)]
        _require(self.stage == 3 or not changed, f"loss.{changed[0] if changed else ''} is used by stage 3 only"
                                                 f" (this trial is stage {self.stage}): it would change nothing")
        _require(all(f < self.data.n_folds for f in self.train.folds),
                 f"train.folds {list(self.train.folds)} must be < data.n_folds ({self.data.n_folds})")

    @property
    def fold_indices(self) -> tuple[int, ...]:
        """The folds this trial trains, in order."""
        return self.train.folds or tuple(range(self.data.n_folds))


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
        raise ConfigError(f"{path.rstrip('.') or cls.__name__}: {error}") from None


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
