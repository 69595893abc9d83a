"""Finding an experiment's trials and their checkpoints on disk (export, --init-from).

Light imports only: the CLIs use this before anything heavy starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from trainable.reported import SCORE

if TYPE_CHECKING:
    import pandas as pd

LEADERBOARD_CSV = "leaderboard.csv"
TRIAL_FILE = "trial.json"  # trainable.training.checkpoint.TRIAL_FILE, repeated here to keep torch out of search/lb.py
ENSEMBLE = "ensemble"  # the leaderboard row of search/ensemble.py's blend; Ray's trial ids are hex
EXPORTS = "exports"  # EXPERIMENT/exports/trial_<id>/: what search/export.py writes (and ensemble/)


class TrialNotFound(Exception):
    """No such experiment, trial or checkpoint; the message is one line."""


def scored_trials(experiment: Path) -> list[str]:
    """The ids of the experiment's trials with a score, best first (from its leaderboard)."""
    return list(scored_board(experiment).trial)


def scored_board(experiment: Path) -> pd.DataFrame:
    """The leaderboard's rows of trials with a score, best first (not the ensemble's row).

    Raises:
        TrialNotFound: no experiment, no leaderboard, or no trial with a score.
    """
    import pandas as pd

    if not experiment.is_dir():
        raise TrialNotFound(f"experiment {experiment} does not exist")
    board_path = experiment / LEADERBOARD_CSV
    if not board_path.is_file():
        raise TrialNotFound(f"no {LEADERBOARD_CSV} in {experiment}: name a trial, or finish the search first")
    board = trial_rows(pd.read_csv(board_path, dtype={"trial": str, "seed_group": str}))
    scored = board[board[SCORE].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    if scored.empty:
        raise TrialNotFound(f"no trial of {experiment} has a score yet")
    return scored.reset_index(drop=True)


def trial_rows(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard without the ensemble's row: the trials, each one configuration."""
    return board[board.trial != ENSEMBLE].reset_index(drop=True) if "trial" in board else board


def trial_dir(experiment: Path, trial: str) -> Path:
    """The directory of `trial` ("best": the leaderboard's best scored trial)."""
    if not experiment.is_dir():
        raise TrialNotFound(f"experiment {experiment} does not exist")
    if trial == "best":
        trial = scored_trials(experiment)[0]
    path = experiment / f"trial_{trial.removeprefix('trial_')}"
    if not path.is_dir():
        known = sorted(p.name.removeprefix("trial_") for p in experiment.glob("trial_*"))
        raise TrialNotFound(f"no trial {trial!r} in {experiment} (trials: {', '.join(known) or 'none'})")
    return path


def newest_checkpoint(trial: Path) -> Path:
    """The trial's last complete checkpoint (Ray numbers them in order)."""
    found = sorted((p for p in trial.glob("checkpoint_*") if (p / TRIAL_FILE).is_file()), key=lambda p: p.name)
    if not found:
        raise TrialNotFound(f"{trial} has no checkpoint")
    return found[-1]


def split_trial_ref(reference: str) -> tuple[str, str]:
    """"EXPERIMENT[:TRIAL]" -> (EXPERIMENT, TRIAL or "best"). A colon followed by a path
    (s3://...) is part of the experiment."""
    experiment, colon, trial = reference.rpartition(":")
    if not colon or "/" in trial or not experiment:
        return reference, "best"
    return experiment, trial
