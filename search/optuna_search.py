"""OptunaSearch that tells Optuna the truth about trials ASHA stopped.

Ray's OptunaSearch records a trial that the scheduler stopped early as COMPLETE with its
partial score, so TPE learns from a 2-epoch score as if it were a 50-epoch one and favours
configurations that start fast. Here such a trial is recorded as PRUNED, with the
intermediate values it reported each epoch, which is what Optuna's samplers expect.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch

from search.report import export_study

TRAINING_ITERATION = "training_iteration"
logger = logging.getLogger(__name__)


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch that records early-stopped trials as PRUNED.

    Args:
        max_iterations: the epoch budget; a trial that ends without error before it was
            stopped early.
        export_path: a sqlite file that receives a copy of the study after every finished
            trial (None: keep it in memory only).
        **kwargs: as OptunaSearch.
    """

    def __init__(self, *args: Any, max_iterations: int, export_path: Path | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_iterations = max_iterations
        self.export_path = export_path

    @property
    def study(self) -> optuna.Study:
        """The Optuna study behind the search (Ray keeps it in memory)."""
        return self._ot_study

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._record(trial_id, result, error)
        if self.export_path is not None:
            try:
                export_study(self._ot_study, self.export_path)
            except Exception as failure:  # runs in Tune's controller: a full disk must not end the search
                logger.warning("could not export the study to %s: %s", self.export_path, failure)

    def _record(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id in self._completed_trials:
            return
        if not error and result and self.metric in result and TRAINING_ITERATION in result:
            # Ray does not pass a trial's last result on to on_trial_result; report it here
            # (Optuna ignores a step it already has).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._ot_trials[trial_id].report(result[self.metric], result[TRAINING_ITERATION])
        stopped_early = (not error and result is not None
                         and result.get(TRAINING_ITERATION, self.max_iterations) < self.max_iterations)
        if not stopped_early:
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial = self._ot_trials[trial_id]
        # PRUNED keeps the intermediate values (Optuna takes the last as its value).
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)
