"""search/results/holdout.py: the public/private split of the test set, the holdout scores, and how
well the CV ranks trials as the holdout does."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from search.results.holdout import PRIVATE, PUBLIC, HoldoutError, cv_trust, holdout_scores, is_public, versus_recipe
from trainable.metrics import lwlrap


def test_the_split_is_fixed_per_recording_and_about_half():
    ids = [f"{i:09x}" for i in range(2000)]
    public = [is_public(rid) for rid in ids]
    assert public == [is_public(rid) for rid in reversed(ids)][::-1]  # independent of order
    assert 0.45 < np.mean(public) < 0.55


def test_each_half_is_scored_with_lwlrap_on_its_own_recordings():
    rng = np.random.default_rng(0)
    ids = [f"r{i}" for i in range(40)]
    truth = pd.DataFrame(rng.random((40, 5)) < 0.3, index=pd.Index(ids, name="recording_id"),
                         columns=[f"s{i}" for i in range(5)]).astype(int)
    truth.iloc[:, 0] = 1  # every recording has a positive
    scores = rng.random((40, 5))
    submission = pd.DataFrame(scores, columns=truth.columns).assign(recording_id=ids)[["recording_id", *truth.columns]]
    shuffled = submission.sample(frac=1, random_state=1)  # row order does not matter
    found = holdout_scores(shuffled, truth)
    public = np.array([is_public(rid) for rid in ids])
    assert found[PUBLIC] == pytest.approx(lwlrap(truth.to_numpy()[public], scores[public]))
    assert found[PRIVATE] == pytest.approx(lwlrap(truth.to_numpy()[~public], scores[~public]))

    with pytest.raises(HoldoutError, match="differ in recording 'r0'"):
        holdout_scores(submission.iloc[1:], truth)
    with pytest.raises(HoldoutError, match="columns"):
        holdout_scores(submission.rename(columns={"s4": "s9"}), truth)


def test_cv_trust_is_the_rank_correlation_of_cv_and_holdout():
    board = pd.DataFrame({"score": [0.9, 0.8, 0.7, 0.6, math.nan], "fold_std": [0.01, 0.02, 0.03, 0.02, 0.1],
                          PUBLIC: [0.5, 0.4, 0.3, 0.2, 0.9], PRIVATE: [0.2, 0.3, 0.4, 0.5, 0.9]})
    assert cv_trust(board) == ("CV vs holdout over 4 trials: Spearman +1.00 (public), -1.00 (private);"
                               " mean fold std 0.0200")
    assert cv_trust(board.iloc[:2]) is None  # too few trials to rank


def board_of(trials: list[str], recipe: str, public: list[float], private: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"trial": trials, "score": np.linspace(0.9, 0.6, len(trials)),
                         "recipe_point": [trial == recipe for trial in trials], PUBLIC: public, PRIVATE: private})


def test_the_best_trial_is_measured_against_the_recipe_point_on_the_holdout():
    board = board_of(["best", "mid", "recipe"], "recipe", [0.80, 0.70, 0.75], [0.70, 0.60, 0.61])
    assert versus_recipe(board) == ("holdout: the best trial best beats the recipe point recipe: +0.0700 on the mean"
                                    " of the halves (public 0.8000, private 0.7000; the recipe point public 0.7500,"
                                    " private 0.6100)")
    worse = board_of(["best", "recipe"], "recipe", [0.70, 0.75], [0.60, 0.61])
    assert versus_recipe(worse).startswith("holdout: the best trial best does not beat the recipe point recipe:"
                                           " -0.0300")
    tied = board_of(["best", "recipe"], "recipe", [0.75, 0.75], [0.625, 0.625])
    assert versus_recipe(tied).startswith("holdout: the best trial best ties with the recipe point recipe: +0.0000")
    same = board_of(["recipe", "other"], "recipe", [0.70, 0.75], [0.60, 0.61])
    assert versus_recipe(same) == "holdout: the best trial recipe is the recipe point (public 0.7000, private 0.6000)"


def test_no_comparison_without_both_holdout_scores():
    unscored_recipe = board_of(["best", "recipe"], "recipe", [0.8, math.nan], [0.7, math.nan])
    assert versus_recipe(unscored_recipe) is None
    assert versus_recipe(board_of(["best", "other"], "nobody", [0.8, 0.7], [0.7, 0.6])) is None  # no recipe trial
    no_holdout = board_of(["best", "recipe"], "recipe", [0.8, 0.7], [0.7, 0.6]).drop(columns=[PUBLIC, PRIVATE])
    assert versus_recipe(no_holdout) is None and cv_trust(no_holdout) is None


def test_a_ranking_of_tied_scores_is_undefined_and_warns_nothing():
    board = board_of(["a", "b", "c"], "a", [0.7, 0.7, 0.7], [0.6, 0.5, 0.4]).assign(fold_std=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning would fail here
        line = cv_trust(board)
    assert line is not None and "Spearman undefined (tied scores) (public), +1.00 (private)" in line
