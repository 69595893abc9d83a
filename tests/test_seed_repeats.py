"""Seed repeats and the confirmation round on a real Tuner and local Ray (search.tuner.repeats), with
a trainable of hand-made scores in place of the k-fold training: the plan, the searcher, the
schedulers and the reports are the search's own.

The hand-made scores: a proposal's first seed scores w/2 (w = loss.w_max, searched in [0, 2]), its
other seeds 1 - w/2, so the proposal first on one seed is last on its seed mean among the top
ones; the recipe point (w = 0.5) scores 0.30, 0.31, 0.32 under its three seeds.
"""

from __future__ import annotations

import os
import signal
import statistics
import time

import pandas as pd
import pytest
import yaml
from ray import tune

from search import run
from search.plan import param_names, recipe_config, report_dir, save_plan, scheduler_of
from search.results.leaderboard import BEST_CONFIG, LEADERBOARD_CSV, load_study, trial_results, write_reports
from search.tuner import experiment
from search.tuner.experiment import build_tuner, fit, restore_tuner
from search.tuner.searcher import STUDY_EXPORT_ENV
from tests.helpers import NO_HUB
from trainable import reported
from trainable.config import SEED_GROUP
from trainable.reported import METRIC, SCORE

pytestmark = pytest.mark.ray

RECIPE_W, FIRST_SEED = 0.5, 416  # the reference's loss.w_max and train.seed


def hand_made_scores(config: dict) -> None:
    w, seed = config["loss.w_max"], config.get("train.seed", FIRST_SEED)
    score = (0.30 + 0.01 * (seed - FIRST_SEED) if w == RECIPE_W
             else w / 2 if seed == FIRST_SEED else 1 - w / 2)
    for epoch in range(1, 3):
        time.sleep(0.2)
        tune.report({METRIC: score, SCORE: score, reported.EPOCH: epoch, reported.FOLD_STD: 0.0})


class CtrlCInConfirmation(tune.Callback):
    """SIGINT to the driver (as Ctrl-C) once the first trial of the confirmation round has ended."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.config.get(SEED_GROUP) and trial.config["loss.w_max"] != RECIPE_W:
            os.kill(os.getpid(), signal.SIGINT)


def plan_of(cached_dir, storage, name: str, confirm: int):
    arguments = ["--space", "loss_weights", "--data-dir", str(cached_dir), "--storage", str(storage), "--name",
                 name, "--num-samples", "5", "--epochs", "2", "--repeats", "3", "--confirm", str(confirm),
                 "--scheduler", "fifo", "--sampler", "random", *NO_HUB]
    return run.make_plan(run.parse_args(arguments))


def search(plan, monkeypatch, callbacks: tuple = ()) -> tune.ResultGrid:
    monkeypatch.setattr(experiment, "train_sed", hand_made_scores)
    monkeypatch.setenv(STUDY_EXPORT_ENV, str(report_dir(plan) / "study.db"))
    save_plan(plan)
    tuner = build_tuner(plan)
    tuner._local_tuner.get_run_config().callbacks += list(callbacks)
    return fit(tuner)


def reports(plan, results: tune.ResultGrid) -> pd.DataFrame:
    write_reports(report_dir(plan), results, load_study(report_dir(plan)), plan.epochs,
                  param_names(plan.spaces, plan.epochs), "test",
                  recipe=recipe_config(plan.spaces, plan.epochs, config=plan.baseline), scheduler=scheduler_of(plan))
    return pd.read_csv(report_dir(plan) / LEADERBOARD_CSV, dtype={"trial": str, "seed_group": str})


def seeds_run(results: tune.ResultGrid) -> list[tuple[float, int]]:
    """(loss.w_max, train.seed) of every trial."""
    return sorted((r.config["loss.w_max"], r.config.get("train.seed", FIRST_SEED)) for r in trial_results(results))


def best_w(plan) -> float:
    return yaml.safe_load((report_dir(plan) / BEST_CONFIG).read_text())["loss"]["w_max"]


def test_the_recipe_point_under_seeds_and_a_confirmation_round_that_reorders_the_best(
        local_ray, cached_dir, tmp_path, monkeypatch):
    plan = plan_of(cached_dir, tmp_path, "confirmed", confirm=2)
    results = search(plan, monkeypatch)
    proposals = sorted({w for w, seed in seeds_run(results) if seed == FIRST_SEED} - {RECIPE_W})
    assert len(proposals) == 4
    top, second = proposals[-1], proposals[-2]
    # 5 proposals, the recipe point's 2 more seeds, and the top 2 under the same 2 more seeds.
    assert seeds_run(results) == sorted([(w, FIRST_SEED) for w in [RECIPE_W, *proposals]]
                                        + [(w, seed) for w in (RECIPE_W, top, second) for seed in (417, 418)])
    # Optuna was told each configuration once.
    assert len(load_study(report_dir(plan)).trials) == 5

    board = reports(plan, results)
    scores = {r.metrics["trial_id"]: r.metrics[SCORE] for r in trial_results(results)}
    recipe = board[board.recipe_point]
    assert len(recipe) == 3 and recipe.seed_group.nunique() == 1 and set(recipe.seeds) == {3}
    recipe_scores = [scores[trial] for trial in recipe.trial]  # the trials' own results
    assert recipe.seed_mean.iloc[0] == pytest.approx(statistics.fmean(recipe_scores))
    assert recipe.seed_std.iloc[0] == pytest.approx(statistics.stdev(recipe_scores))
    # On one seed `top` led; on three, `second` does (its mean (2 - w/2) / 3 is the higher), and
    # best_config.yaml holds it.
    first = board.iloc[0]
    assert first.seeds == 3 and first.seed == FIRST_SEED and best_w(plan) == pytest.approx(second)
    assert first.margin_sd == pytest.approx((first.seed_mean - recipe.seed_mean.iloc[0]) / recipe.seed_std.iloc[0])

    unconfirmed = plan_of(cached_dir, tmp_path, "unconfirmed", confirm=0)
    reports(unconfirmed, search(unconfirmed, monkeypatch))
    assert best_w(unconfirmed) == pytest.approx(top)  # the same proposals: without the round, the lucky one


def test_a_confirmation_round_interrupted_goes_on_where_it_was(local_ray, cached_dir, tmp_path, monkeypatch):
    # The driver saves the experiment after every step, as search.tuner.session has it do. Ray then
    # restores a trial that ended before the Ctrl-C without the `done` of its last result: the
    # leaderboard knows it completed by the epochs it reported.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    plan = plan_of(cached_dir, tmp_path, "cut", confirm=2)
    interrupted = search(plan, monkeypatch, callbacks=(CtrlCInConfirmation(),))
    done = [r for r in trial_results(interrupted) if (r.metrics or {}).get("done")]
    assert 8 <= len(done) < 11
    results = fit(restore_tuner(plan))
    runs = seeds_run(results)
    assert len(runs) == 11 and len(set(runs)) == 11  # every seed of the round once, none twice
    assert all(r.error is None for r in trial_results(results))
    board = reports(plan, results)
    assert list(board.status) == ["completed"] * 11 and list(board.seeds[:9]) == [3] * 9
    proposals = sorted({w for w, seed in runs if seed == FIRST_SEED} - {RECIPE_W})
    assert best_w(plan) == pytest.approx(proposals[-2])
