"""What a search's exit code and last line say, on a real Tuner and local Ray: 130 and
"interrupted: continue with ..." only when Ctrl-C (or SIGTERM) stopped it; a trial that errored is
"errored" on the leaderboard, never "interrupted", and the search exits 0 when another scored.
The trainable reports hand-made scores in place of the k-fold training (as tests/test_seed_repeats.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from ray import tune

from search import run
from search.plan import report_dir, save_plan
from search.tuner import experiment, session
from search.tuner.experiment import build_tuner, fit
from search.tuner.searcher import STUDY_EXPORT_ENV
from search.tuner.signals import fit_noting_a_stop
from tests.helpers import NO_HUB
from trainable import reported
from trainable.reported import METRIC, SCORE

pytestmark = pytest.mark.ray

RECIPE_W = 0.5  # the reference's loss.w_max: the recipe point, the search's first trial


def scores_or_fails(config: dict) -> None:
    """The recipe point scores; every other configuration fails in its second epoch."""
    for epoch in range(1, 3):
        if epoch == 2 and config["loss.w_max"] != RECIPE_W:
            raise RuntimeError("a bug in this configuration's training")
        time.sleep(0.2)
        tune.report({METRIC: 0.5, SCORE: 0.5, reported.EPOCH: epoch, reported.FOLD_STD: 0.0})


class CtrlCAfterTheFirstResult(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        os.kill(os.getpid(), signal.SIGINT)


def search(cached_dir, tmp_path, monkeypatch, name: str, callbacks: tuple = ()):
    arguments = ["--space", "loss_weights", "--data-dir", str(cached_dir), "--storage", str(tmp_path), "--name",
                 name, "--num-samples", "3", "--epochs", "2", "--repeats", "1", "--scheduler", "fifo",
                 "--sampler", "random", "--max-failures", "0", *NO_HUB]
    plan = run.make_plan(run.parse_args(arguments))
    monkeypatch.setattr(experiment, "train_sed", scores_or_fails)
    monkeypatch.setattr(session, "score_on_holdout", lambda plan, rows: False)  # no checkpoints to score
    monkeypatch.setenv(STUDY_EXPORT_ENV, str(report_dir(plan) / "study.db"))
    save_plan(plan)
    tuner = build_tuner(plan)
    tuner._local_tuner.get_run_config().callbacks += list(callbacks)
    results, stopped = fit_noting_a_stop(lambda: fit(tuner))
    return plan, results, stopped


def test_errored_trials_are_no_interruption(local_ray, cached_dir, tmp_path, monkeypatch, capsys):
    plan, results, stopped = search(cached_dir, tmp_path, monkeypatch, "errors")
    assert not stopped
    assert session.report(plan, results, stopped) == 0  # the recipe point scored
    out = capsys.readouterr().out
    assert "interrupted" not in out
    board = (report_dir(plan) / "leaderboard.md").read_text()
    assert board.count("errored: RuntimeError: a bug in this configuration's training") == 2
    assert "interrupted" not in board


def test_ctrl_c_is_an_interruption(local_ray, cached_dir, tmp_path, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)
    plan, results, stopped = search(cached_dir, tmp_path, monkeypatch, "ctrl-c", (CtrlCAfterTheFirstResult(),))
    assert stopped
    assert signal.getsignal(signal.SIGINT) is before  # Tune's handler is gone: Ctrl-C in the reports stops them
    assert session.report(plan, results, stopped) == 130
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("interrupted: continue with ")
