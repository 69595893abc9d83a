"""The real leaderboard scores of an experiment's submissions, as recorded by search/lb.py.

Kept in EXPERIMENT/lb_scores.json (trial id -> its scores and memo) rather than in the
leaderboard itself: the search rewrites the leaderboard from its trials when it resumes or
exports, and these scores must survive that. The leaderboard shows them as lb_public,
lb_private and the memo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainable.atomic import atomic_write_text

LB_FILE = "lb_scores.json"
LB_PUBLIC, LB_PRIVATE, LB_MEMO = "lb_public", "lb_private", "lb_memo"  # leaderboard columns


def load_lb(directory: Path) -> dict[str, dict[str, Any]]:
    """Trial id -> {lb_public, lb_private (nan when not known), lb_memo}; {} when none recorded."""
    path = Path(directory) / LB_FILE
    if not path.is_file():
        return {}
    return {trial: {LB_PUBLIC: _score(entry.get(LB_PUBLIC)), LB_PRIVATE: _score(entry.get(LB_PRIVATE)),
                    LB_MEMO: entry.get(LB_MEMO) or ""}
            for trial, entry in json.loads(path.read_text()).items()}


def save_lb(directory: Path, scores: dict[str, dict[str, Any]]) -> None:
    """Replace the recorded scores (atomically: a cut write leaves the old file)."""
    plain = {trial: {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                     for key, value in entry.items()} for trial, entry in sorted(scores.items())}
    atomic_write_text(Path(directory) / LB_FILE, json.dumps(plain, indent=1) + "\n")


def _score(value: Any) -> float:
    return math.nan if value is None else float(value)
