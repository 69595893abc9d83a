"""OptunaSearch that tells Optuna the truth about trials a scheduler stopped early (ASHA, HyperBand).

Ray's OptunaSearch records a trial that the scheduler stopped early as COMPLETE with its
partial score, so TPE learns from a 2-epoch score as if it were a 50-epoch one and favours
configurations that start fast. Here such a trial is recorded as PRUNED, with the
intermediate values it reported each epoch, which is what Optuna's samplers expect. A trial that
a scheduler stops while it is paused (HyperBand) ends without a result from Ray: its last one is
used.

A completed trial is told its score (trainable.reported.SCORE: the trial's selected epochs, as the
leaderboard ranks it), not its last epoch's cv_lwlrap.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, cast

import optuna
from ray.tune.search.optuna import OptunaSearch

from search.results.leaderboard import export_study
from trainable.reported import ITERATION, SCORE

# The sqlite file that receives a copy of the study after every finished trial, named by the
# driver in its environment rather than held by the searcher: Ray pickles the searcher with the
# experiment, so a search resumed elsewhere (another machine, or another folder for an s3://
# experiment) would go on exporting to the first driver's path.
STUDY_EXPORT_ENV = "RFCX_TUNE_STUDY_DB"
logger = logging.getLogger(__name__)


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch that records early-stopped trials as PRUNED.

    Args:
        max_iterations: the epoch budget; a trial that ends without error before it was
            stopped early.
        **kwargs: as OptunaSearch.

    The study is exported to the file named by $RFCX_TUNE_STUDY_DB, when set.
    """

    def __init__(self, *args: Any, max_iterations: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_iterations = max_iterations

    @property
    def study(self) -> optuna.Study:
        """The Optuna study behind the search (Ray keeps it in memory)."""
        # Ray's type for it is None: OptunaSearch.__init__ assigns None, _setup_study the study.
        return cast(optuna.Study, self._ot_study)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        self._last_results()[trial_id] = result

    def _last_results(self) -> dict[str, dict]:
        # Set here, not in __init__: a searcher pickled before this attribute existed is restored.
        return self.__dict__.setdefault("_last", {})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        last = self._last_results().pop(trial_id, None)
        self._record(trial_id, result if result or error else last, error)
        export_path = os.environ.get(STUDY_EXPORT_ENV)
        if export_path:
            try:
                export_study(self.study, Path(export_path))
            except Exception as failure:  # runs in Tune's controller: a full disk must not end the search
                logger.warning("could not export the study to %s: %s", export_path, failure)

    def _record(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id in self._completed_trials:
            return
        if not error and result and self.metric in result and ITERATION in result:
            # Ray does not pass a trial's last result on to on_trial_result; report it here
            # (Optuna ignores a step it already has).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._ot_trials[trial_id].report(result[self.metric], result[ITERATION])
        stopped_early = (not error and result is not None
                         and result.get(ITERATION, self.max_iterations) < self.max_iterations)
        if not stopped_early:
            told = {**result, self.metric: result[SCORE]} if result and SCORE in result else result
            super().on_trial_complete(trial_id, told, error)
            return
        ot_trial = self._ot_trials[trial_id]
        # PRUNED keeps the intermediate values (Optuna takes the last as its value).
        self.study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)
