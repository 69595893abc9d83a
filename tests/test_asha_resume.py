"""ASHA across a resume (search.tuner.remembering.RememberingASHA), on a real Tuner and local Ray.

Ray does not save a scheduler's state (ray#30838). Three trials of known scores run one after the
other, the third far below the first two; the search is interrupted (Ctrl-C) once the first two
have passed ASHA's rungs, and resumed. An uninterrupted search stops the third trial at the first
rung, and so does the resumed one with RememberingASHA, whose rungs hold the results of the
trials from before the resume; Ray's own ASHA, with empty rungs after the resume, lets it run on
to the end.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from search.tuner.remembering import RememberingASHA
from trainable.reported import ITERATION, METRIC, MODE

pytestmark = pytest.mark.ray

EPOCHS = 3  # ASHA's rungs (grace 1, reduction 2): epochs 1 and 2, and 3 = max_t
# The trials' cv_lwlrap at every epoch, in the order they run: each of the first two passes every
# rung (ASHA keeps the better half), the third is below them.
QUALITIES = [0.8, 0.9, 0.1]


def known_scores(config: dict) -> None:
    for _ in range(EPOCHS):
        tune.report({METRIC: config["quality"]})


class CtrlCAfter(tune.Callback):
    """Sends the driver SIGINT (as Ctrl-C) once `trials` trials have completed; Tune stops the
    search then and saves it, the remaining trials unfinished."""

    def __init__(self, trials: int):
        self.trials = trials
        self.completed = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1
        if self.completed == self.trials:
            os.kill(os.getpid(), signal.SIGINT)


def search(storage, name: str, scheduler: ASHAScheduler, callbacks: tuple = ()) -> tune.Tuner:
    return tune.Tuner(
        known_scores,
        param_space={"quality": tune.grid_search(QUALITIES)},
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=list(callbacks)),
    )


def epochs_run(results: tune.ResultGrid) -> dict[float, int]:
    return {result.config["quality"]: result.metrics.get(ITERATION, 0) for result in results}


def resumed(experiment: Path, scheduler: ASHAScheduler | None = None) -> dict[float, int]:
    """Resume the experiment with its scheduler from tuner.pkl (as pickled before the search
    started: empty rungs), or with `scheduler` in its place, as search.tuner.experiment.restore_tuner
    puts RememberingASHA."""
    tuner = tune.Tuner.restore(str(experiment), known_scores, resume_unfinished=True)
    if scheduler is not None:
        tuner._local_tuner._tune_config.scheduler = scheduler
    return epochs_run(tuner.fit())


def asha(kind: type[ASHAScheduler]) -> ASHAScheduler:
    return kind(time_attr=ITERATION, max_t=EPOCHS, grace_period=1, reduction_factor=2)


def test_a_trial_after_a_resume_is_stopped_as_in_an_uninterrupted_search(local_ray, tmp_path):
    uninterrupted = epochs_run(search(tmp_path, "straight", asha(RememberingASHA)).fit())
    assert uninterrupted == {0.8: EPOCHS, 0.9: EPOCHS, 0.1: 1}

    # Started with Ray's ASHA (as searches were before search.tuner.remembering), interrupted once the
    # first two trials passed every rung, before the third started.
    before = epochs_run(search(tmp_path, "cut", asha(ASHAScheduler), callbacks=(CtrlCAfter(2),)).fit())
    assert before[0.8] == before[0.9] == EPOCHS and before.get(0.1, 0) == 0
    shutil.copytree(tmp_path / "cut", tmp_path / "cut-again")

    assert resumed(tmp_path / "cut", asha(RememberingASHA)) == uninterrupted
    # Ray's own ASHA after the same resume: nothing to compare with, so the weak trial runs on.
    assert resumed(tmp_path / "cut-again")[0.1] == EPOCHS
