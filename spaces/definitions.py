"""The search spaces themselves: one pure function of an `optuna.Trial` per space.

Each function suggests its parameters and returns a flat dict keyed by TrialConfig dotted
paths ("loss.w_max"), ready for `trainable.dotted.merge` and `from_dict`. Optuna parameter
names are the same config paths, so the sampler's history reads like the config.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import optuna

from trainable.config import (
    AUGMENT_POLICIES,
    CLASS_COUNTS,
    CROP_RULES,
    EVENT_FRAMES,
    FRAME_REDUCTIONS,
    INPUTS,
    MIXUP_TARGETS,
    ORIENTATIONS,
    PSEUDO_ON,
    SCHEDULES,
    UPSAMPLING,
    DataConfig,
    scaled_overlap,
)

DEFAULT_EPOCHS = 50  # the recipe's epoch budget, used when the search did not say its own
# Trial user attributes the search sets before it calls a space: the epoch budget, whether the
# trials have a teacher (stage 3), which adds the teacher's parameters to `pseudo`, and the
# baseline's evaluation windows [crop_frames, valid_overlap, test_overlap], which `crop` scales.
EPOCHS_ATTR, TEACHER_ATTR, WINDOWS_ATTR = "epochs", "teacher", "windows"
REFERENCE_WINDOWS = (DataConfig.crop_frames, DataConfig.valid_overlap, DataConfig.test_overlap)  # 512, 51, 51

CROP_WIDTHS = (256, 384, 512, 768)  # frames (4.1, 6.1, 8.2, 12.3 s); 512 is the recipe's
# Offsets as fractions of the crop width: the recipe's {32, 64, 128, 256} of 512 is the first.
# Strings, because an Optuna categorical needs one fixed set of choices for every trial, while
# frame offsets would depend on the width sampled in the same trial; fractions keep the choice
# meaningful across widths (and every one of them gives whole frames for every width above).
CROP_OFFSET_SETS = ("1/16,1/8,1/4,1/2", "1/8,1/4,1/2", "1/4,1/2", "1/16,1/8")


def mixup(trial: optuna.Trial) -> dict[str, Any]:
    """Mixup strength (log scale: its effect is multiplicative near 0) and where it applies."""
    return {
        "augment.mixup_alpha": trial.suggest_float("augment.mixup_alpha", 0.01, 2.0, log=True),
        "augment.mixup_on": trial.suggest_categorical("augment.mixup_on", list(MIXUP_TARGETS)),
    }


def loss_weights(trial: optuna.Trial) -> dict[str, Any]:
    """Weights of the max, pseudo-label and frame terms relative to the attention term."""
    # loss.w_att stays at 1: scaling all four weights together only rescales the total loss,
    # which the learning rate already does (and Adam is nearly invariant to it), so fixing one
    # weight removes a degree of freedom that would only add noise to the search.
    return {
        "loss.w_att": 1.0,
        "loss.w_max": trial.suggest_float("loss.w_max", 0.0, 2.0),
        "loss.w_pseudo": trial.suggest_float("loss.w_pseudo", 0.0, 2.0),
        "loss.w_frame": trial.suggest_float("loss.w_frame", 0.0, 2.0),
    }


def offsets_in_frames(fractions: str, crop_frames: int) -> list[int]:
    """An offset set string in whole frames: "1/16,1/8" at 512 frames -> [32, 64]."""
    return [round(Fraction(part) * crop_frames) for part in fractions.split(",")]


def crop(trial: optuna.Trial) -> dict[str, Any]:
    """Training crop width and where the event centre lands in it.

    The evaluation window overlaps are derived, not searched: DataConfig needs both below the
    crop width, and keeping the baseline's ratios (`trial.user_attrs["windows"]`, the
    reference's 51 of 512 when absent) keeps the evaluation comparable across widths instead of
    adding two parameters unrelated to training.
    """
    crop_frames = trial.suggest_categorical("data.crop_frames", list(CROP_WIDTHS))
    fractions = trial.suggest_categorical("data.crop_offsets", list(CROP_OFFSET_SETS))
    width, valid, test = trial.user_attrs.get(WINDOWS_ATTR, REFERENCE_WINDOWS)
    return {
        "data.crop_frames": crop_frames,
        "data.crop_offsets": offsets_in_frames(fractions, crop_frames),
        "data.valid_overlap": scaled_overlap(valid, width, crop_frames),
        "data.test_overlap": scaled_overlap(test, width, crop_frames),
    }


def pseudo(trial: optuna.Trial) -> dict[str, Any]:
    """Pseudo-labels: the model's own segment threshold, or with a teacher (stage 3) the teacher's."""
    # Each stage searches the thresholds that act in it: in stage 3 the teacher's labels (the
    # reference's stage 3 has no in-model pseudo term), elsewhere the in-model one; a parameter
    # that changes nothing only adds noise to the sampler.
    if not trial.user_attrs.get(TEACHER_ATTR, False):
        return {"loss.pseudo_threshold": trial.suggest_float("loss.pseudo_threshold", 0.3, 0.95)}
    # The difficult negatives' threshold acts only where they are in the loss; it is suggested in
    # every trial all the same, so that every trial's config holds it (the leaderboard's column,
    # and a --set of it refused as searched).
    return {"loss.teacher_threshold": trial.suggest_float("loss.teacher_threshold", 0.2, 0.9),
            "loss.teacher_weight": trial.suggest_float("loss.teacher_weight", 0.1, 1.0),
            "loss.teacher_negatives": trial.suggest_categorical("loss.teacher_negatives", [False, True]),
            "loss.teacher_negative_below": trial.suggest_float("loss.teacher_negative_below", 0.001, 0.1, log=True)}


def scheduler(trial: optuna.Trial) -> dict[str, Any]:
    """The cosine's kind (the reference's per-batch one, or clamped per epoch) and its T_max.

    T_max is in epochs, up to the search's epoch budget.

    The budget is read from `trial.user_attrs["epochs"]` (EPOCHS_ATTR), which the search sets before it
    calls the space (a period past the last epoch would never finish its cosine); when it is
    absent the recipe's 50 epochs apply.
    """
    epochs = int(trial.user_attrs.get(EPOCHS_ATTR, DEFAULT_EPOCHS))
    if epochs < 1:
        raise ValueError(f"the trial's 'epochs' user attr must be >= 1, got {epochs}")
    return {"train.schedule": trial.suggest_categorical("train.schedule", list(SCHEDULES)),
            "train.t_max": trial.suggest_int("train.t_max", 1, epochs)}


# The switches of the reference's deviations that change what a model learns (trainable.config),
# each with the reference's value first. Not here: what decides the evaluation (windows, window
# score, selection) or the folds, which would make trials' scores incomparable.
VARIANTS: dict[str, tuple[str | bool, ...]] = {
    "model.input": INPUTS,
    "model.orientation": ORIENTATIONS,
    "model.head_bias": (False, True),
    "model.upsample": UPSAMPLING,
    "loss.class_counts": CLASS_COUNTS,
    "loss.pseudo_on": PSEUDO_ON,
    "loss.frame_reduction": FRAME_REDUCTIONS,
    "augment.policy": AUGMENT_POLICIES,
    "data.crop_rule": CROP_RULES,
    "data.event_frames": EVENT_FRAMES,
}  # the schedule's kind is the scheduler space's


def variants(trial: optuna.Trial) -> dict[str, Any]:
    """Every switch between the reference's behaviour and a documented fix of it, as hypotheses."""
    return {key: trial.suggest_categorical(key, list(choices)) for key, choices in VARIANTS.items()}
