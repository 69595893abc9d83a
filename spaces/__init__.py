"""Named Optuna search spaces: pure functions of an optuna.Trial, and their registry.

    SPACES["loss_weights"](trial) -> {"loss.w_att": 1.0, "loss.w_max": 0.31, ...}
    combine(["mixup", "crop"])    -> one define-by-run function over both spaces
    recipe_point(["mixup"], 50)   -> {"augment.mixup_alpha": 0.1, "augment.mixup_on": "features"}

A space's dict has TrialConfig dotted paths as keys; lay it over a base config with
`trainable.config.merge` and build it with `from_dict`. `recipe_point` gives the Optuna
parameters that reproduce the recipe, so a search can evaluate the recipe first.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

from spaces.definitions import EPOCHS_ATTR, TEACHER_ATTR, crop, loss_weights, mixup, pseudo, scheduler

Space = Callable[[optuna.Trial], dict[str, Any]]

# The spaces that suggest parameters themselves; "all" and combine() are built from them.
_BASE: dict[str, Space] = {
    "mixup": mixup,
    "loss_weights": loss_weights,
    "crop": crop,
    "pseudo": pseudo,
    "scheduler": scheduler,
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

    Returns:
        A function (trial) -> flat dotted-path config dict, the union of the spaces' dicts.

    Raises:
        ValueError: no name given, or a name that is not registered (the message lists the
            known ones).
    """
    if not names:
        raise ValueError(f"no space given (known: {', '.join(SPACES)})")
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

# Optuna parameter values that reproduce the recipe's defaults (trainable.config).
RECIPE_POINT: dict[str, Any] = {
    "augment.mixup_alpha": 0.1,
    "augment.mixup_on": "features",
    "loss.w_max": 0.5,
    "loss.w_pseudo": 1.0,
    "loss.w_frame": 0.5,
    "data.crop_frames": 512,
    "data.crop_offsets": "1/16,1/8,1/4,1/2",  # 32, 64, 128, 256 frames of 512
    "loss.pseudo_threshold": 0.7,
    "loss.teacher_threshold": 0.5,
    "loss.teacher_weight": 0.5,
    "train.t_max": 10,
}


def set_context(trial: optuna.Trial, epochs: int, teacher: bool) -> optuna.Trial:
    """Tell the spaces about the search: its epoch budget, and whether trials have a teacher."""
    trial.set_user_attr(EPOCHS_ATTR, epochs)
    trial.set_user_attr(TEACHER_ATTR, teacher)
    return trial


def recipe_point(names: list[str], epochs: int, teacher: bool = False) -> dict[str, Any]:
    """The recipe's parameter values for the spaces `names`, as OptunaSearch's points_to_evaluate.

    Args:
        names: space names, as for `combine`.
        epochs: the search's epoch budget; the recipe's T_max is clipped to it.
        teacher: whether the trials have a teacher (stage 3).

    Returns:
        Optuna parameter name -> value, exactly the parameters those spaces suggest.
    """
    point = {**RECIPE_POINT, "train.t_max": min(RECIPE_POINT["train.t_max"], epochs)}
    trial = set_context(optuna.trial.FixedTrial(point), epochs, teacher)
    combine(names)(trial)
    return dict(trial.params)
