"""Scoring a submission against the hidden test labels, as the competition's leaderboard did.

The synthetic data come with test_truth.csv (what RFCx kept hidden). Kaggle scored a public
part of the test set during the competition and a private part at the end; here the split
is fixed by a hash of each recording id, so it never depends on row order or on which other
recordings exist. Comparing trials' CV with these scores shows whether the CV can be trusted.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from search.results.lb_scores import LB_PRIVATE, LB_PUBLIC
from search.results.trials import ENSEMBLE, trial_rows
from trainable import reported
from trainable.metrics import lwlrap
from trainable.reported import SCORE

TRUTH_FILE = "test_truth.csv"
HOLDOUT_FILE = "holdout.json"  # next to a trial's exported submission.csv
PUBLIC, PRIVATE = "holdout_public", "holdout_private"  # leaderboard columns
MIN_RANKED = 3  # a rank correlation over fewer trials says nothing


class HoldoutError(ValueError):
    """test_truth.csv does not match the submission; the message is one line."""


def is_public(recording_id: str) -> bool:
    """The fixed half of the test set that the public leaderboard scores."""
    return hashlib.sha256(recording_id.encode()).digest()[0] % 2 == 0


def load_truth(data_dir: Path) -> pd.DataFrame | None:
    """test_truth.csv (recording_id, s0..sK-1 of 0/1) indexed by recording id, or None."""
    path = Path(data_dir) / TRUTH_FILE
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"recording_id": str}).set_index("recording_id")


def holdout_scores(submission: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """The LWLRAP of a submission (recording_id, s0..) on the public and the private half.

    Raises:
        HoldoutError: the recordings or species columns differ.
    """
    scores = submission.set_index("recording_id")
    if list(scores.columns) != list(truth.columns):
        raise HoldoutError(f"{TRUTH_FILE} has columns {','.join(truth.columns)}, the submission"
                           f" {','.join(scores.columns)}")
    missing = sorted(set(scores.index) ^ set(truth.index))
    if missing:
        raise HoldoutError(f"{TRUTH_FILE} and the submission differ in recording {missing[0]!r}"
                           f" ({len(missing)} in all)")
    public = np.array([is_public(rid) for rid in scores.index])
    labels = truth.loc[scores.index].to_numpy()
    return {name: _lwlrap_or_nan(labels[part], scores.to_numpy()[part])
            for name, part in ((PUBLIC, public), (PRIVATE, ~public))}


def _lwlrap_or_nan(truth: np.ndarray, scores: np.ndarray) -> float:
    return lwlrap(truth, scores) if truth.sum() > 0 else math.nan


def cv_trust(board: pd.DataFrame) -> str | None:
    """How well the trials' CV ranks them as the holdout does: Spearman's rank correlation of
    score with each half's score, beside the mean fold std; None below 3 trials."""
    return _cv_versus(board, "holdout", PUBLIC, PRIVATE)


def cv_versus_lb(board: pd.DataFrame) -> str | None:
    """The same against the leaderboard scores recorded with search/lb.py (lb_public, and
    lb_private where recorded); None below 3 trials with a public score."""
    return _cv_versus(board, "LB", LB_PUBLIC, LB_PRIVATE)


def spearman(board: pd.DataFrame, column: str) -> tuple[float, int]:
    """Spearman's rank correlation of the score with `column` over the trials that have both,
    and their number; nan below MIN_RANKED trials or when either side is all one value."""
    if column not in board:
        return math.nan, 0
    both = board.dropna(subset=[SCORE, column])
    # A side of one value has no ranking: nan, said as "undefined (tied scores)" (rho_text), without
    # the warning scipy would print under every leaderboard rewrite.
    ranked = len(both) >= MIN_RANKED and both[SCORE].nunique() > 1 and both[column].nunique() > 1
    return (both[SCORE].corr(both[column], method="spearman") if ranked else math.nan), len(both)


def _cv_versus(board: pd.DataFrame, what: str, public: str, private: str) -> str | None:
    public_rho, count = spearman(board, public)
    if count < MIN_RANKED:
        return None
    private_rho, private_count = spearman(board, private)
    halves = f"Spearman {rho_text(public_rho)} (public)"
    if private_count >= MIN_RANKED:
        other = "" if private_count == count else f", {private_count} trials"
        halves += f", {rho_text(private_rho)} (private{other})"
    std = board.dropna(subset=[SCORE, public]).fold_std.mean()
    return f"CV vs {what} over {count} trials: {halves}; mean fold std {std:.4f}"


def rho_text(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "undefined (tied scores)"


def notes(board: pd.DataFrame) -> list[str]:
    """The lines that go below a leaderboard: the best trial against the recipe point on the
    holdout, the ensemble against the best trial, and how well the CV ranks trials as the
    holdout and the LB do (each when known)."""
    trials = trial_rows(board)
    return [line for line in (versus_recipe(trials), versus_ensemble(board), cv_trust(trials), cv_versus_lb(trials))
            if line]


def versus_ensemble(board: pd.DataFrame) -> str | None:
    """The ensemble's two CVs against the best trial's, and on the holdout when both have a
    score there; None without an ensemble."""
    ensemble, trials = board[board.trial == ENSEMBLE], trial_rows(board)
    if ensemble.empty or trials.empty:
        return None
    ours, best = ensemble.iloc[0], trials.iloc[0]
    in_sample = ours[reported.leaderboard_columns()[reported.BEST_CV]]  # the ensemble's row: its in-sample OOF score
    line = (f"ensemble: {ours.status}, nested CV {ours[SCORE]:.4f} (in-sample {in_sample:.4f}), the best trial"
            f" {best.trial} {best[SCORE]:.4f}")
    if PUBLIC in board and not pd.isna([ours[PUBLIC], ours[PRIVATE], best[PUBLIC], best[PRIVATE]]).any():
        margin = ((ours[PUBLIC] - best[PUBLIC]) + (ours[PRIVATE] - best[PRIVATE])) / 2
        line += (f"; holdout public {ours[PUBLIC]:.4f}, private {ours[PRIVATE]:.4f}: {margin:+.4f} on the mean of the"
                 f" halves over the best trial")
    return line


def one_configuration(board: pd.DataFrame) -> bool:
    """Whether every trial on a leaderboard table is the recipe point's configuration, as in a
    search without a space: its one configuration is the recipe with whatever values the search
    fixed (--set, --config, the flags), with nothing beside it to be compared with, so the lines
    below the leaderboard do not call it the recipe point."""
    trials = trial_rows(board)
    return "recipe_point" in trials and not trials.empty and bool(trials.recipe_point.astype(bool).all())


def versus_recipe(board: pd.DataFrame) -> str | None:
    """Whether the best trial (the board's first) beats the recipe point on the holdout, and
    by how much: the mean of the two halves' differences, then each half; None when either
    trial has no holdout score."""
    if PUBLIC not in board or "recipe_point" not in board:
        return None
    scored = board.dropna(subset=[PUBLIC, PRIVATE]).set_index("trial")
    recipe = board.trial[board.recipe_point.astype(bool)]
    best = board.trial.iloc[0] if len(board) else None
    if recipe.empty or best not in scored.index or recipe.iloc[0] not in scored.index:
        return None
    ours, theirs = scored.loc[best], scored.loc[recipe.iloc[0]]
    halves = f"public {ours[PUBLIC]:.4f}, private {ours[PRIVATE]:.4f}"
    if best == recipe.iloc[0]:
        if one_configuration(board):
            return f"holdout: the best trial {best}: {halves}"
        return f"holdout: the best trial {best} is the recipe point ({halves})"
    margin = ((ours[PUBLIC] - theirs[PUBLIC]) + (ours[PRIVATE] - theirs[PRIVATE])) / 2
    verdict = "beats" if margin > 0 else "ties with" if margin == 0 else "does not beat"
    return (f"holdout: the best trial {best} {verdict} the recipe point {recipe.iloc[0]}: {margin:+.4f} on the mean"
            f" of the halves ({halves}; the recipe point public {theirs[PUBLIC]:.4f}, private {theirs[PRIVATE]:.4f})")
