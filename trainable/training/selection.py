"""Which epochs define a trial: its score, the epochs it comes from and the weights behind it.

Both rules are tracked every epoch, so both numbers are reported whichever the recipe
chooses (TrainConfig.selection):

fold    each fold at the epoch of its best reference LRAP (the reference saved each fold's
        best_score model); the score is `cv_lwlrap_fold_best`, the pooled LWLRAP of those
        epochs' out-of-fold predictions.
common  every fold at the epoch of the best pooled cv_lwlrap; the score is `best_cv_lwlrap`.

Only the chosen rule's weights are kept (on the CPU, one copy per fold): they are what the
checkpoint stores beside the resume state, and what export, --init-from and the teacher use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainable import reported
from trainable.metrics import lwlrap


def weights_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, copied to the CPU (the model trains on)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


@dataclass
class Best:
    """The best epoch of one fold (rule "fold") or of all folds together (rule "common")."""

    epoch: int = 0  # epochs done at that point; 0 = none yet
    score: float = -math.inf  # what it was selected by: the fold's reference LRAP, or cv_lwlrap
    lrap_reference: float = math.nan  # the mean reference LRAP of the folds at that epoch
    oof: list[np.ndarray] = field(default_factory=list)  # per fold (V_k, C) predictions then


class Selection:
    """The best epochs of a trial by both rules.

    Args:
        rule: "fold" or "common" (TrainConfig.selection): whose weights are kept.
        folds: the trial's fold numbers, in order.
        truth: per fold, (V_k, C) clip labels of its validation recordings.
    """

    def __init__(self, rule: str, folds: tuple[int, ...], truth: list[np.ndarray]):
        self.rule, self.folds, self.truth = rule, folds, truth
        self.per_fold = [Best() for _ in folds]
        self.common = Best()
        self.weights: dict[int, dict[str, torch.Tensor]] = {}  # fold -> the chosen rule's weights

    def fold_epoch(self, position: int, epoch: int, lrap_reference: float, oof: np.ndarray,
                   model: nn.Module) -> None:
        """Fold `self.folds[position]` was evaluated after `epoch` epochs."""
        best = self.per_fold[position]
        if lrap_reference > best.score:  # strictly better, as the reference's `best_score < v_score`
            self.per_fold[position] = Best(epoch, lrap_reference, lrap_reference, [oof])
            if self.rule == "fold":
                self.weights[self.folds[position]] = weights_copy(model)

    def common_epoch(self, epoch: int, cv_lwlrap: float, lrap_reference: float, oof: list[np.ndarray],
                     models: list[nn.Module]) -> None:
        """Every fold was evaluated after `epoch` epochs."""
        if cv_lwlrap > self.common.score:
            self.common = Best(epoch, cv_lwlrap, lrap_reference, list(oof))
            if self.rule == "common":
                self.weights = {fold: weights_copy(model) for fold, model in zip(self.folds, models)}

    @property
    def fold_best_oof(self) -> np.ndarray:
        """(N, C): each fold's predictions at its own best epoch, pooled in fold order."""
        return np.concatenate([best.oof[0] for best in self.per_fold])

    @property
    def cv_lwlrap_fold_best(self) -> float:
        if any(best.epoch == 0 for best in self.per_fold):
            return math.nan
        return lwlrap(np.concatenate(self.truth), self.fold_best_oof)

    @property
    def score(self) -> float:
        """The trial's score by its rule (what Optuna, the leaderboard and export go by)."""
        return self.cv_lwlrap_fold_best if self.rule == "fold" else self.common.score

    @property
    def score_lrap_reference(self) -> float:
        """The mean over the folds of the reference LRAP at the chosen rule's epochs."""
        if self.rule == "fold":
            return float(np.mean([best.lrap_reference for best in self.per_fold]))
        return self.common.lrap_reference

    @property
    def epochs(self) -> list[int]:
        """The epoch each fold's chosen weights come from."""
        if self.rule == "fold":
            return [best.epoch for best in self.per_fold]
        return [self.common.epoch] * len(self.folds)

    @property
    def oof(self) -> np.ndarray:
        """(N, C) out-of-fold predictions of the chosen weights, in fold order."""
        return self.fold_best_oof if self.rule == "fold" else np.concatenate(self.common.oof)

    def metrics(self) -> dict[str, float]:
        """What a trial reports of its selection each epoch."""
        values = {reported.BEST_CV: self.common.score, reported.FOLD_BEST_CV: self.cv_lwlrap_fold_best,
                  reported.SCORE: self.score, reported.SCORE_LRAP_REFERENCE: self.score_lrap_reference}
        values.update({reported.fold_key(fold, reported.FOLD_BEST_EPOCH): float(epoch)
                       for fold, epoch in zip(self.folds, self.epochs)})
        return values

    def state(self) -> dict:
        """The selection without weights or predictions, for trial.json."""
        return {"rule": self.rule, "common": [self.common.epoch, self.common.score, self.common.lrap_reference],
                "per_fold": [[b.epoch, b.score, b.lrap_reference] for b in self.per_fold]}

    def arrays(self) -> dict[str, np.ndarray]:
        """The predictions behind both rules, for best_oof.npz (once every fold was evaluated)."""
        return {"scores": self.oof, "fold_best_scores": self.fold_best_oof,
                "common_best_scores": np.concatenate(self.common.oof)}

    def restore(self, state: dict, arrays: dict[str, np.ndarray], weights: dict[int, dict[str, torch.Tensor]]) -> None:
        """Back to what `state`, `arrays` and the saved weights recorded."""
        bounds = np.cumsum([0, *[len(t) for t in self.truth]])
        split = lambda a: [a[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]  # noqa: E731
        epoch, score, lrap = state["common"]
        self.common = Best(epoch, score, lrap, split(arrays["common_best_scores"]))
        self.per_fold = [Best(e, s, r, [part]) for (e, s, r), part in zip(state["per_fold"],
                                                                          split(arrays["fold_best_scores"]))]
        self.weights = dict(weights)
