"""Seed noise on the leaderboard (search.results.seeds, search.results.leaderboard.ranked): the seed
columns, the ranking by seed mean, and the line that judges the best configuration against the
recipe point's noise, on hand-made rows."""

from __future__ import annotations

import math
import statistics

import pytest

from search.results.leaderboard import Row, frame, notes_below, ranked
from search.results.seeds import Margin, Seeds, margin, noise_line


def row(trial: str, score: float, group: str = "", seed: int = 416, recipe: bool = False,
        status: str = "completed") -> Row:
    return Row(trial, status, score, 0.01, 8, {}, 1.0, recipe_point=recipe, seed=seed, seed_group=group)


def test_seeds_and_margins_are_the_textbook_ones():
    seeds = Seeds((0.80, 0.84, 0.88))
    assert seeds.mean == pytest.approx(0.84) and seeds.std == pytest.approx(0.04)
    assert math.isnan(Seeds((0.8,)).std)
    found = margin(Seeds((0.94,)), seeds)
    assert found.value == pytest.approx(0.10) and found.sd == pytest.approx(2.5)
    # Two standard errors of the difference of a 1-seed and a 3-seed mean, both spreads 0.04.
    assert found.threshold == pytest.approx(2 * 0.04 * math.sqrt(1 + 1 / 3))
    assert found.beyond_noise and "beyond the noise" in found.text()
    assert not margin(Seeds((0.88,)), seeds).beyond_noise
    assert "no seed std" in Margin(0.1, math.nan, math.nan).text()


RECIPE = [row("r", 0.88, "r", recipe=True), row("r1", 0.80, "r", 417, recipe=True), row("r2", 0.84, "r", 418,
                                                                                          recipe=True)]


def test_without_a_confirmation_round_a_configuration_ranks_by_its_seed_mean():
    rows = ranked([*RECIPE, row("a", 0.86), row("b", 0.83), row("x", math.nan, status="errored: boom")])
    # The recipe point ranks by its mean (0.84), not by its first seed's 0.88; its trials together.
    assert [r.trial for r in rows] == ["a", "r", "r1", "r2", "b", "x"]
    recipe_mean, recipe_std = statistics.fmean([0.88, 0.80, 0.84]), statistics.stdev([0.88, 0.80, 0.84])
    by_trial = {r.trial: r for r in rows}
    assert by_trial["r2"].seeds == 3 and by_trial["r2"].seed_mean == pytest.approx(recipe_mean)
    assert by_trial["r"].seed_std == pytest.approx(recipe_std) and by_trial["r"].margin_sd == pytest.approx(0)
    assert by_trial["a"].seeds == 1 and math.isnan(by_trial["a"].seed_std)
    assert by_trial["a"].margin_sd == pytest.approx((0.86 - recipe_mean) / recipe_std)


def test_a_confirmation_round_reorders_the_configurations_by_their_seed_means():
    # a was first on one seed, b second; under three seeds b is better, and both rank above c,
    # whose one seed is higher than either mean.
    rows = ranked([*RECIPE, row("a", 0.90), row("a1", 0.78, "a", 417), row("a2", 0.79, "a", 418),
                   row("b", 0.89), row("b1", 0.87, "b", 417), row("b2", 0.88, "b", 418), row("c", 0.885)])
    assert [r.trial for r in rows] == ["b", "b1", "b2", "r", "r1", "r2", "a", "a1", "a2", "c"]
    table = frame(rows)
    assert list(table.seed_group[:3]) == ["b", "b", "b"] and list(table.seed[:3]) == [416, 417, 418]


def test_the_noise_line_judges_the_best_configuration_against_the_recipe_points_seeds():
    board = frame(ranked([*RECIPE, row("a", 0.96), row("a1", 0.95, "a", 417), row("a2", 0.97, "a", 418)]))
    line = noise_line(board)
    assert line is not None
    assert line.startswith("seed noise: the recipe point under 3 seeds 0.8400 +- 0.0400")
    assert "the best configuration a (3 seeds) 0.9600: +0.1200 = +3.0 sd, beyond the noise" in line
    assert notes_below(board)[0] == line
    within = noise_line(frame(ranked([*RECIPE, row("a", 0.87)])))
    assert within is not None and "(1 seed) 0.8700: +0.0300 = +0.8 sd, within the noise" in within
    assert noise_line(frame(ranked([row("r", 0.88, recipe=True), row("a", 0.9)]))) is None  # one seed: no noise


def test_the_noise_line_judges_the_holdout_too_when_the_seeds_have_scores_there():
    rows = ranked([*RECIPE, row("a", 0.95)])
    holdout = {"r": 0.90, "r1": 0.86, "r2": 0.88, "a": 0.89}
    board = frame([Row(**{**r.__dict__, "holdout": {"holdout_public": holdout[r.trial],
                                                    "holdout_private": holdout[r.trial]}}) for r in rows])
    line = noise_line(board)
    assert line is not None and "; holdout 0.8900 against 0.8800 +- 0.0200: +0.0100 = +0.5 sd, within the noise" in line


def test_ties_rank_the_same_whatever_order_the_trials_come_in():
    def tied(trial: str, cv: float) -> Row:
        return Row(trial, "completed", 0.85, 0.01, 8, {}, 1.0, cvs={"cv_lwlrap": cv}, seed=416)

    rows = [tied("c", 0.86), tied("a", 0.85), tied("b", 0.86), row("d", 0.90)]
    orders = {tuple(r.trial for r in ranked(list(permuted))) for permuted in (rows, rows[::-1], rows[1:] + rows[:1])}
    # The higher best CV first, then the trial id: one order, whatever Ray's.
    assert orders == {("d", "b", "c", "a")}
