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

from trainable.metrics import lwlrap

TRUTH_FILE = "test_truth.csv"
HOLDOUT_FILE = "holdout.json"  # next to a trial's exported submission.csv
PUBLIC, PRIVATE = "holdout_public", "holdout_private"  # leaderboard columns


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
    if PUBLIC not in board:
        return None
    scored = board.dropna(subset=["score", PUBLIC, PRIVATE])
    if len(scored) < 3:
        return None
    public = scored.score.corr(scored[PUBLIC], method="spearman")
    private = scored.score.corr(scored[PRIVATE], method="spearman")
    return (f"CV vs holdout over {len(scored)} trials: Spearman {public:+.2f} (public), {private:+.2f} (private);"
            f" mean fold std {scored.fold_std.mean():.4f}")


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
        return f"holdout: the best trial {best} is the recipe point ({halves})"
    margin = ((ours[PUBLIC] - theirs[PUBLIC]) + (ours[PRIVATE] - theirs[PRIVATE])) / 2
    verdict = "beats" if margin > 0 else "does not beat"
    return (f"holdout: the best trial {best} {verdict} the recipe point {recipe.iloc[0]}: {margin:+.4f} on the mean"
            f" of the halves ({halves}; the recipe point public {theirs[PUBLIC]:.4f}, private {theirs[PRIVATE]:.4f})")
