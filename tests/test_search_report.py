"""Leaderboard markdown, parameter importances and the sqlite study export."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import optuna

from search.results.leaderboard import Row, export_study, frame, importances, leaderboard, markdown, refresh_leaderboard


def study_with(trials: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("loss.w_max", 0, 2) - 0.1 * t.suggest_float("loss.w_frame", 0, 2),
                   n_trials=trials)
    return study


def test_importances_wait_for_enough_completed_trials():
    assert importances(study_with(3)) is None
    found = importances(study_with(12))
    assert set(found) == {"loss.w_max", "loss.w_frame"}
    assert found["loss.w_max"] > found["loss.w_frame"]  # the objective depends on it 20x more


def test_markdown_is_the_users_table_with_lb_and_memo_to_fill():
    cvs = {"cv_lwlrap": 0.6, "cv_lwlrap_fold_best": 0.61, "cv_lrap_reference": 0.7}
    rows = [Row("a1", "completed", 0.61, 0.02, 4, {"loss.w_max": 0.5}, 12.0, cvs=cvs, best_epochs="3,4"),
            Row("b2", "errored: DivergedError: fold 0, epoch 1: ...", math.nan, math.nan, 0, {"loss.w_max": 1.9}, 1.0)]
    text = markdown(rows, "demo", {"loss.w_max": 1.0})
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    assert header.startswith("| rank | trial | status | score | cv_lwlrap | cv_lwlrap_fold_best | cv_lrap_reference"
                             " | best_epochs | fold_std |")
    assert header.split(" | ")[-2:] == ["LB", "memo |"]
    # The seed columns (seed, seeds, seed_mean, seed_std, margin_sd): a trial of no known seed has none.
    assert ("| 1 | a1 | completed | 0.6100 | 0.6000 | 0.6100 | 0.7000 | 3,4 | 0.0200 | - | 0 | - | - | - | 4 | 0.5 |"
            in text)
    assert "| 2 | b2 | errored: DivergedError" in text and "| - | - |" in text
    assert "Parameter importance" in text


def test_study_export_is_a_sqlite_study_optuna_can_load(tmp_path):
    study = study_with(5)
    export_study(study, tmp_path / "study.db")
    export_study(study, tmp_path / "study.db")  # replacing an older export works
    loaded = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.params for t in loaded.trials] == [t.params for t in study.trials]
    assert not list(tmp_path.glob("*.partial"))


def test_an_empty_search_still_gets_a_leaderboard():
    assert "No trial has run yet" in markdown([], "empty", None)
    assert {"score", "cv_lwlrap", "cv_lwlrap_fold_best", "cv_lrap_reference"} <= set(frame([]).columns)


def result_of(trial: str, score: float, config: dict) -> SimpleNamespace:
    """What leaderboard() reads of a ray.tune.Result."""
    return SimpleNamespace(metrics={"trial_id": trial, "score": score, "epoch": 4, "done": True}, config=config,
                           error=None, path=f"/x/trial_{trial}", metrics_dataframe=None)


def test_the_trial_with_the_recipe_values_is_marked_and_its_memo_says_so(tmp_path):
    recipe = {"loss.w_max": 0.5, "data.crop_offsets": [16, 32]}
    results = [result_of("a", 0.7, {"loss": {"w_max": 0.9}, "data.crop_offsets": [16, 32]}),
               result_of("r", 0.6, {"loss.w_max": 0.5 + 1e-15, "data": {"crop_offsets": [16, 32]}}),
               result_of("c", 0.5, {"loss.w_max": 0.5, "data.crop_offsets": [16, 64]})]
    rows = leaderboard(results, 4, ["loss.w_max"], recipe)
    assert [(row.trial, row.recipe_point) for row in rows] == [("a", False), ("r", True), ("c", False)]
    assert not any(row.recipe_point for row in leaderboard(results, 4, ["loss.w_max"], None))
    assert all(row.recipe_point for row in leaderboard(results, 4, ["loss.w_max"], {}))  # one configuration

    held = [replace(row, holdout={"holdout_public": 0.8 - i / 10, "holdout_private": 0.7 - i / 20})
            for i, row in enumerate(rows)]
    text = markdown(held, "demo", None)
    assert "| 2 | r | completed | 0.6000 |" in text and text.count("recipe point |") == 1
    assert "holdout: the best trial a beats the recipe point r: +0.0750" in text
    assert "CV vs holdout over 3 trials" in text

    (tmp_path / "leaderboard.csv").write_text(frame(held).to_csv(index=False))
    assert [row.recipe_point for row in refresh_leaderboard(tmp_path)] == [False, True, False]  # kept in the csv
