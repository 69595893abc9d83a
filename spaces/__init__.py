"""Named Optuna search spaces: pure functions of an optuna.Trial, and their registry.

    SPACES["loss_weights"](trial) -> {"loss.w_att": 1.0, "loss.w_max": 0.31, ...}
    combine(["mixup", "crop"])    -> one define-by-run function over both spaces
    recipe_point(["mixup"], 50)   -> {"augment.mixup_alpha": 0.1, "augment.mixup_on": "features"}

A space's dict has TrialConfig dotted paths as keys; lay it over a base config with
`trainable.dotted.merge` and build it with `trainable.config.resolve`. `recipe_point` gives
the Optuna parameters that reproduce a recipe's config, so a search can evaluate it first.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any, cast

import optuna

from spaces.definitions import (
    EPOCHS_ATTR,
    REFERENCE_WINDOWS,
    TEACHER_ATTR,
    WINDOWS_ATTR,
    crop,
    loss_weights,
    mixup,
    pseudo,
    scheduler,
    variants,
)
from trainable.config import ConfigError, TrialConfig, to_dict
from trainable.dotted import flatten_dotted

Space = Callable[[optuna.Trial], dict[str, Any]]

# The spaces that suggest parameters themselves; "all" and combine() are built from them.
_BASE: dict[str, Space] = {
    "mixup": mixup,
    "loss_weights": loss_weights,
    "crop": crop,
    "pseudo": pseudo,
    "scheduler": scheduler,
    "variants": variants,
}


def _expand(names: list[str]) -> list[str]:
    """Base space names for `names`, "all" expanded, each once, in first-seen order."""
    known = ", ".join(SPACES)
    expanded: list[str] = []
    for name in names:
        if name not in SPACES:
            raise ValueError(f"unknown space {name!r} (known: {known})")
        for base in (_BASE if name == "all" else [name]):
            if base not in expanded:
                expanded.append(base)
    return expanded


def combine(names: list[str]) -> Space:
    """One define-by-run space over several named spaces, each applied once.

    Args:
        names: registered space names; "all" stands for every space, repeats are ignored.
            None: a search of one fixed configuration (the function suggests nothing).

    Returns:
        A function (trial) -> flat dotted-path config dict, the union of the spaces' dicts.

    Raises:
        ValueError: a name that is not registered (the message lists the known ones).
    """
    chosen = [_BASE[name] for name in _expand(list(names))]

    def combined(trial: optuna.Trial) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for space in chosen:
            values = space(trial)
            # Two spaces setting one key would silently let the later one win.
            clash = sorted(set(config) & set(values))
            if clash:
                raise ValueError(f"spaces set the same config keys: {', '.join(clash)}")
            config.update(values)
        return config

    return combined


def _all(trial: optuna.Trial) -> dict[str, Any]:
    """Every space at once."""
    return combine(list(_BASE))(trial)


SPACES: dict[str, Space] = {**_BASE, "all": _all}

def set_context(trial: optuna.Trial, epochs: int, teacher: bool,
                windows: tuple[int, int, int] = REFERENCE_WINDOWS) -> optuna.Trial:
    """Tell the spaces about the search: its epoch budget, whether trials have a teacher, and
    the baseline's crop width and window overlaps."""
    trial.set_user_attr(EPOCHS_ATTR, epochs)
    trial.set_user_attr(TEACHER_ATTR, teacher)
    trial.set_user_attr(WINDOWS_ATTR, list(windows))
    return trial


def windows_of(config: dict[str, Any]) -> tuple[int, int, int]:
    """A dotted config's crop width and window overlaps, for `set_context`."""
    return config["data.crop_frames"], config["data.valid_overlap"], config["data.test_overlap"]


def recipe_point(names: list[str], epochs: int, teacher: bool = False,
                 config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config's parameter values for the spaces `names`, as OptunaSearch's points_to_evaluate.

    Args:
        names: space names, as for `combine`.
        epochs: the search's epoch budget; the config's T_max is clipped to it.
        teacher: whether the trials have a teacher (stage 3).
        config: the resolved config as dotted keys (default: the reference's defaults).

    Returns:
        Optuna parameter name -> value, exactly the parameters those spaces suggest.

    Raises:
        ConfigError: a value of the config that a space's distribution cannot hold.
    """
    flat = config or flatten_dotted(to_dict(TrialConfig(data_dir="-")))
    offsets = ",".join(str(Fraction(o, flat["data.crop_frames"])) for o in flat["data.crop_offsets"])
    point = {**flat, "data.crop_offsets": offsets, "train.t_max": min(flat["train.t_max"], epochs)}
    # cast: a FixedTrial stands in for a Trial (Optuna's own use of it), a BaseTrial but no subclass.
    trial = set_context(cast(optuna.Trial, optuna.trial.FixedTrial(point)), epochs, teacher, windows_of(flat))
    for name in _expand(list(names)):
        try:
            _BASE[name](trial)
        except ValueError as error:  # Optuna refuses a value its distribution cannot hold
            raise ConfigError(f"the search's baseline is outside --space {name}: {error} (e.g. mixup is off in the"
                              f" recipes of stages 2 and 3); choose the value with --set") from None
    return dict(trial.params)
