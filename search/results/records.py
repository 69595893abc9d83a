"""The record a blend leaves: EXPERIMENT/exports/ensemble/weights.json. What it holds
(`weights_record`, which search/ensemble.py writes) and its readers (`recorded`, for the
leaderboard's ensemble row and the report page's selection figure; `seed_verdict`, the row's
words on the seed noise), side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.results.holdout import HOLDOUT_FILE
from search.results.seeds import Margin
from search.results.trials import ENSEMBLE, EXPORTS

if TYPE_CHECKING:
    from search.results.blend import Blend
    from search.results.ensembles import Ensemble, Library, SeedVerdict

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


def weights_record(ensemble: Ensemble, library: Library, holdout: dict[str, float], verdict: SeedVerdict,
                   wall_s: float) -> dict[str, Any]:
    """weights.json: what was blended, how it was chosen and what it scored, and how that
    compares with the seeds (seed_record)."""
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
        **seed_record(verdict),
        "wall_s": round(wall_s, 1),
    }


def seed_record(verdict: SeedVerdict) -> dict[str, Any]:
    """weights.json's seed_ensemble (null: the best configuration has fewer than two seeds) and
    seed_noise (null: the recipe point has no seed std): what `seed_verdict` reads back."""
    seeds, gain = verdict.seeds, verdict.gain
    return {
        "seed_ensemble": None if seeds is None else {
            "group": seeds.group, "trials": seeds.trials, "oof_lwlrap": seeds.oof_lwlrap,
            "seed_oof_lwlrap": seeds.seed_scores, "holdout": seeds.holdout},
        "seed_noise": None if verdict.noise is None or not math.isfinite(gain.threshold) else {
            "recipe_seeds": verdict.noise.n, "recipe_std": verdict.noise.std, "nested_gain": gain.value,
            "nested_gain_sd": gain.sd, "threshold": gain.threshold, "beyond_noise": gain.beyond_noise},
    }


def seed_verdict(record: dict[str, Any]) -> str:
    """The ensemble row's memo on the seeds, from its weights.json: "nested gain +0.0066 = +0.2
    sd, within the noise (2 SE = 0.1188); 3 seeds of a1b2c averaged 0.8950"; "" when neither was
    recorded (a record of an older version, or no seeds)."""
    parts = []
    noise, seeds = record.get("seed_noise"), record.get("seed_ensemble")
    try:
        if isinstance(noise, dict):
            gain = Margin(noise["nested_gain"], noise["nested_gain_sd"], noise["threshold"])
            parts.append(f"nested gain {gain.text()}")
        if isinstance(seeds, dict):
            parts.append(f"{len(seeds['trials'])} seeds of {seeds['group']} averaged {seeds['oof_lwlrap']:.4f}")
    except (KeyError, TypeError, ValueError):  # edited by hand: the row goes without it, as recorded() does
        return ""
    return "; ".join(parts)
