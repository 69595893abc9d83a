"""Seed noise: a configuration's scores under several seeds, and margins in units of that noise.

A search trains the recipe point under `--repeats k` seeds, and its top configurations again
under the same seeds in a confirmation round (search.tuner.repeats). The trials of one
configuration share a seed group (trainable.config.SEED_GROUP in their configs: the id of the
configuration's first trial); the leaderboard gives every trial its group's columns:

    seed        the trial's train.seed
    seeds       how many trials of its configuration completed (each a seed)
    seed_mean   their mean score; seed_std their standard deviation (ddof 1; - below 2 seeds)
    margin_sd   (the configuration's mean score - the recipe point's seed mean) / its seed std

Whether one configuration beats the recipe point "by more than its noise" is a two-sample
question: the difference of the two means against twice its standard error, both spreads taken
as the recipe point's seed std (the only one measured on every search; a confirmed
configuration's own std from 3 seeds is too rough to rely on). Written by hand: the few lines of
a t-like interval need no statistics library.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from search.results.holdout import PRIVATE, PUBLIC, one_configuration
from search.results.trials import ENSEMBLE
from trainable.reported import SCORE

SEED, SEEDS, SEED_MEAN, SEED_STD, MARGIN_SD = "seed", "seeds", "seed_mean", "seed_std", "margin_sd"
SEED_GROUP_COLUMN = "seed_group"
COMPLETED = "completed"  # the status of a trial that trained its whole budget: only those count as seeds
STANDARD_ERRORS = 2.0  # a margin beyond twice its standard error is "beyond the noise" (about 95%)


@dataclass(frozen=True)
class Seeds:
    """The scores of one configuration under its seeds."""

    scores: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if self.n >= 2 else math.nan


@dataclass(frozen=True)
class Margin:
    """How far a configuration is above the recipe point, against the noise of that difference."""

    value: float  # the difference of the means
    sd: float  # value in units of the recipe point's seed std
    threshold: float  # STANDARD_ERRORS standard errors of the difference

    @property
    def beyond_noise(self) -> bool:
        return math.isfinite(self.threshold) and abs(self.value) > self.threshold

    def text(self) -> str:
        """"+0.0551 = +1.3 sd, within the noise (2 SE = 0.0970)"."""
        if not math.isfinite(self.threshold):
            return f"{self.value:+.4f} (no seed std to judge it by)"
        verdict = ("beyond the noise" if self.beyond_noise else "within the noise")
        return f"{self.value:+.4f} = {self.sd:+.1f} sd, {verdict} ({STANDARD_ERRORS:g} SE = {self.threshold:.4f})"


def margin(ours: Seeds, recipe: Seeds) -> Margin:
    """`ours` against the recipe point's seeds (see the module's docstring)."""
    value = ours.mean - recipe.mean
    std = recipe.std
    return Margin(value, value / std if std > 0 else math.nan,
                  STANDARD_ERRORS * std * math.sqrt(1 / ours.n + 1 / recipe.n) if std > 0 else math.nan)


def margin_sd(value: float, recipe: Seeds | None) -> float:
    """`value` above the recipe point's seed mean, in units of its seed std (nan without one)."""
    if recipe is None or not recipe.std > 0:
        return math.nan
    return (value - recipe.mean) / recipe.std


def seed_groups(groups: Sequence[str], statuses: Sequence[str], values: Sequence[float]) -> dict[str, Seeds]:
    """Each seed group's completed values (trials aligned by position)."""
    found: dict[str, list[float]] = {}
    for group, status, value in zip(groups, statuses, values):
        if status == COMPLETED and isinstance(value, (int, float)) and math.isfinite(value):
            found.setdefault(group, []).append(float(value))
    return {group: Seeds(tuple(scores)) for group, scores in found.items()}


def board_seeds(board: pd.DataFrame, value: pd.Series | None = None) -> dict[str, Seeds]:
    """The seed groups of a leaderboard table (leaderboard.csv), by SCORE or by `value`."""
    trials = board[board.trial != ENSEMBLE]
    if SEED_GROUP_COLUMN not in trials:
        return {}
    values = trials[SCORE] if value is None else value.loc[trials.index]
    return seed_groups(list(trials[SEED_GROUP_COLUMN].astype(str)), list(trials.status), list(values))


def recipe_group(board: pd.DataFrame) -> str | None:
    """The seed group of the recipe point's trials, or None."""
    if "recipe_point" not in board or SEED_GROUP_COLUMN not in board:
        return None
    recipe = board[board.recipe_point.astype(bool) & (board.trial != ENSEMBLE)]
    return None if recipe.empty else str(recipe[SEED_GROUP_COLUMN].iloc[0])


def recipe_seeds(board: pd.DataFrame, value: pd.Series | None = None) -> Seeds | None:
    """The recipe point's completed seeds on a leaderboard table (by SCORE or by `value`), or None
    when it has no seed group there."""
    group = recipe_group(board)
    return None if group is None else board_seeds(board, value).get(group)


def holdout_means(board: pd.DataFrame) -> pd.Series | None:
    """Each trial's holdout score, the mean of the two halves; None without a holdout."""
    if PUBLIC not in board or PRIVATE not in board:
        return None
    return (board[PUBLIC] + board[PRIVATE]) / 2


def noise_line(board: pd.DataFrame) -> str | None:
    """One line: the recipe point's seed noise, and whether the best configuration (the board's
    first trial) beats it by more than that noise, on the CV and on the holdout when both have
    scores there; None until the recipe point has two completed seeds."""
    recipe, trials = recipe_seeds(board), board[board.trial != ENSEMBLE]
    if recipe is None or recipe.n < 2 or trials.empty:
        return None
    group = recipe_group(board)
    best = str(trials[SEED_GROUP_COLUMN].iloc[0])
    fold_std = trials[trials[SEED_GROUP_COLUMN].astype(str) == group].fold_std.mean()
    alone = one_configuration(board)  # a search without a space: its configuration, not the recipe's point
    line = (f"seed noise: {'the configuration' if alone else 'the recipe point'} under {recipe.n} seeds"
            f" {recipe.mean:.4f} +- {recipe.std:.4f} (mean +- std; its folds' std {fold_std:.4f})")
    ours = board_seeds(board).get(best)
    if best == group or ours is None:
        return line if alone else line + "; the best configuration is the recipe point"
    line += f"; the best configuration {best} ({_seeds(ours)}) {ours.mean:.4f}: {margin(ours, recipe).text()}"
    held = holdout_means(board)
    if held is not None:
        theirs, ours = recipe_seeds(board, held), board_seeds(board, held).get(best)
        if theirs is not None and ours is not None and theirs.n >= 2:
            line += (f"; holdout {ours.mean:.4f} against {theirs.mean:.4f} +- {theirs.std:.4f}:"
                     f" {margin(ours, theirs).text()}")
    return line


def _seeds(seeds: Seeds) -> str:
    return f"{seeds.n} seed{'s' if seeds.n > 1 else ''}"
