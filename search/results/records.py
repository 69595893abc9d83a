"""The record a blend leaves: EXPERIMENT/exports/ensemble/weights.json. What it holds
(`weights_record`, which search/ensemble.py writes) and its reader (`recorded`, for the
leaderboard's ensemble row and the report page's selection figure), side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.results.holdout import HOLDOUT_FILE
from search.results.trials import ENSEMBLE, EXPORTS

if TYPE_CHECKING:
    from search.results.blend import Blend
    from search.results.ensembles import Ensemble, Library

WEIGHTS = "weights.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def recorded(experiment: Path) -> dict[str, Any] | None:
    """The weights.json of the experiment's ensemble (EXPERIMENT/exports/ensemble), or None."""
    record = read_json(experiment / EXPORTS / ENSEMBLE / WEIGHTS)
    scores = [record.get(key) for key in ("oof_lwlrap", "nested_oof_lwlrap", "nested_single_oof_lwlrap", "wall_s")]
    whole = all(isinstance(v, (int, float)) and math.isfinite(v) for v in scores) and isinstance(
        record.get("weights"), dict) and isinstance(record.get("path"), list)
    return record if whole else None  # a file written by hand or by an older version is not shown


def weights_record(ensemble: Ensemble, library: Library, holdout: dict[str, float], wall_s: float) -> dict[str, Any]:
    """weights.json: what was blended, how it was chosen and what it scored."""
    trials = [candidate.trial for candidate in library.candidates]
    best = library.candidates[ensemble.blend.path[0].model]

    def weights(blend: Blend) -> dict[str, float]:
        return {trials[i]: float(w) for i, w in enumerate(blend.weights) if w}

    return {
        "weights": weights(ensemble.blend),
        "path": [{"step": n, "trial": trials[step.model], "oof_lwlrap": step.score}
                 for n, step in enumerate(ensemble.blend.path)],
        "oof_lwlrap": ensemble.blend.score,
        "nested_oof_lwlrap": ensemble.nested.score,
        "nested_folds": {str(fold): weights(blend) for fold, blend in ensemble.nested.folds.items()},
        "nested_single_oof_lwlrap": ensemble.nested_single.score,
        "best_single": {"trial": best.trial, "oof_lwlrap": ensemble.blend.path[0].score,
                        "holdout": read_json(best.exports / HOLDOUT_FILE)},
        "holdout": holdout,
        "average": ensemble.average,
        "candidates": [{"trial": c.trial, "experiment": str(c.experiment.resolve()), "score": c.score,
                        "oof_lwlrap": single, "checkpoint": c.checkpoint.name}
                       for c, single in zip(library.candidates, ensemble.singles)],
        "recordings": len(library.recording_ids),
        "wall_s": round(wall_s, 1),
    }
