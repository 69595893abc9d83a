"""report.html's seed band: the recipe point's scores under several seeds, mean +- std, drawn
on the history and the CV-vs-holdout figures (issue 31), from a hand-written leaderboard.csv."""

from __future__ import annotations

import base64
import html
import io
import re
import statistics
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from search.results import figures
from search.results.leaderboard import export_study
from search.results.page import REPORT_HTML, write_report_page
from search.results.seeds import MARGIN_SD, SEED, SEED_GROUP_COLUMN, SEED_MEAN, SEED_STD, SEEDS
from tests.helpers import screenshot

RECIPE = "rp_00000"
# trial, status, score, cv_lwlrap (the best pooled CV: the history's axis), holdout mean, seed, seed group.
# The recipe point under seeds 0, 1, 2 (one configuration, group RECIPE) among three proposals; its
# last repeat was stopped, so it is no seed: a stopped trial did not train the configuration's budget.
TRIALS = [
    ("ab_00001", "completed", 0.86, 0.87, 0.89, 0, "ab_00001"),
    (RECIPE, "completed", 0.80, 0.81, 0.86, 0, RECIPE),
    ("r1_00004", "completed", 0.84, 0.85, 0.88, 1, RECIPE),
    ("r2_00005", "completed", 0.88, 0.89, 0.90, 2, RECIPE),
    ("cd_00002", "completed", 0.83, 0.84, 0.85, 0, "cd_00002"),
    ("ef_00003", "stopped by ASHA at epoch 1", 0.70, 0.71, np.nan, 0, "ef_00003"),
    ("r3_00006", "stopped by ASHA at epoch 1", 0.60, 0.61, np.nan, 3, RECIPE),
]
RECIPE_ROWS = [t for t in TRIALS if t[6] == RECIPE and t[1] == "completed"]
# What the band must be, recomputed here from the rows: score, best CV and holdout, mean and std.
ON_SCORE, ON_CV, ON_HOLDOUT = ((statistics.fmean(v), statistics.stdev(v))
                               for v in zip(*[(t[2], t[3], t[4]) for t in RECIPE_ROWS]))
# The band's colour on the page: figures.BAND at figures.BAND_ALPHA over white (PNG, no blending left).
BAND_RGB = 255 + figures.BAND_ALPHA * (np.array(to_rgb(figures.BAND)) * 255 - 255)


def board(seeds: bool = True) -> pd.DataFrame:
    """leaderboard.csv as the search writes it: one row per trial, the seed columns after the
    holdout's and before `epochs` (each group's values on all its rows), the parameters between
    `epochs` and `wall_s`."""
    groups = {g: [t[2] for t in TRIALS if t[6] == g and t[1] == "completed"] for g in {t[6] for t in TRIALS}}
    rows = []
    for rank, (trial, status, score, cv, held, seed, group) in enumerate(TRIALS, 1):
        done = groups[group]
        mean = statistics.fmean(done) if done else np.nan  # a configuration stopped under its only seed: none
        std = statistics.stdev(done) if len(done) > 1 else np.nan
        row = {"rank": rank, "trial": trial, "status": status, "score": score, "cv_lwlrap": cv,
               "cv_lwlrap_fold_best": score, "cv_lrap_reference": score, "best_epochs": "3,3", "fold_std": 0.02,
               "holdout_public": held + 0.01, "holdout_private": held - 0.01}
        if seeds:
            row |= {SEED: seed, SEED_GROUP_COLUMN: group, SEEDS: len(done), SEED_MEAN: mean, SEED_STD: std,
                    MARGIN_SD: (mean - ON_SCORE[0]) / ON_SCORE[1]}
        row |= {"epochs": 3 if status == "completed" else 1, "loss.w_max": 0.1 * rank, "wall_s": 10.0,
                "recipe_point": trial == RECIPE, "fold_scores": f"{score + 0.01:.4f},{score - 0.01:.4f}"}
        rows.append(row)
    return pd.DataFrame(rows)


def experiment(directory: Path, seeds: bool = True) -> Path:
    """An experiment directory with the hand-written leaderboard and a study of the same trials
    (whose best intermediate values are the leaderboard's cv_lwlrap), report.html written."""
    directory.mkdir(parents=True, exist_ok=True)
    board(seeds).to_csv(directory / "leaderboard.csv", index=False)
    study = optuna.create_study(study_name="exp", direction="maximize")
    distribution = {"loss.w_max": optuna.distributions.FloatDistribution(0, 1)}
    for rank, (_, status, score, cv, *_) in enumerate(TRIALS, 1):
        completed = status == "completed"
        study.add_trial(optuna.trial.create_trial(
            params={"loss.w_max": 0.1 * rank}, distributions=distribution,
            state=optuna.trial.TrialState.COMPLETE if completed else optuna.trial.TrialState.PRUNED,
            value=score if completed else None, intermediate_values={1: cv - 0.05, 2: cv, 3: cv - 0.01}))
    export_study(study, directory / "study.db")
    write_report_page(directory, "exp")
    return directory


def band_pixels(image: np.ndarray) -> int:
    """How many pixels of `image` (RGB(A), 0-1 floats as imread gives) have the band's colour."""
    rgb = np.round(image[..., :3] * 255)
    return int((np.abs(rgb - BAND_RGB).max(axis=-1) <= 2).sum())


def pictures(page: str) -> dict[str, np.ndarray]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    return {name: imread(io.BytesIO(base64.b64decode(data)), format="png") for name, data in found}


def spans(figure) -> list[tuple[float, float, float, float]]:
    """The band spans of a figure's axes as (x0, x1, y0, y1) in their own coordinates."""
    axes = figure.axes[0]
    found = []
    for patch in axes.patches:
        if patch.get_facecolor()[:3] == pytest.approx(to_rgb(figures.BAND)):
            x, y = patch.get_x(), patch.get_y()
            found.append((x, x + patch.get_width(), y, y + patch.get_height()))
    return found


def test_the_history_draws_the_band_at_the_seeds_mean_plus_minus_std():
    band = figures.Band(0.85, 0.04, "recipe point, 3 seeds")
    figure = figures.history([0, 1, 2], [0.80, 0.95, 0.70], [False, False, True], "cv_lwlrap", "stopped", band)
    assert figure is not None
    (x0, x1, y0, y1), = spans(figure)
    assert (x0, x1) == (0, 1)  # across the whole plot (axes coordinates)
    assert (y0, y1) == pytest.approx((0.81, 0.89))
    axes = figure.axes[0]
    assert any(list(line.get_ydata()) == [0.85, 0.85] for line in axes.lines)  # the line at the mean
    low, high = axes.get_ylim()
    assert low < 0.70 and high > 0.95  # the dots stay in view
    assert "recipe point, 3 seeds" in [text.get_text() for text in axes.get_legend().get_texts()]

    plain = figures.history([0, 1, 2], [0.80, 0.95, 0.70], [False, False, True], "cv_lwlrap", "stopped")
    assert plain is not None and spans(plain) == []


def test_cv_versus_holdout_draws_a_vertical_cv_band_and_a_horizontal_holdout_band_in_view():
    score, public, private = pd.Series([0.80, 0.82]), pd.Series([0.81, 0.83]), pd.Series([0.79, 0.80])
    figure = figures.cv_versus(score, public, private, "holdout", figures.Band(0.70, 0.02, "CV"),
                               figures.Band(0.88, 0.01, "holdout"))
    assert figure is not None
    vertical, horizontal = spans(figure)
    assert vertical[:2] == pytest.approx((0.68, 0.72)) and vertical[2:] == (0, 1)
    assert horizontal[:2] == (0, 1) and horizontal[2:] == pytest.approx((0.87, 0.89))
    low, high = figure.axes[0].get_xlim()
    assert low < 0.68 and high > 0.89  # the limits are set by hand: both bands fit in them

    plain = figures.cv_versus(score, public, private, "holdout")
    assert plain is not None and spans(plain) == []


@pytest.mark.slow
def test_the_page_draws_the_recipe_points_seed_band_from_the_leaderboard(tmp_path):
    page = (experiment(tmp_path / "exp") / REPORT_HTML).read_text()
    text = html.unescape(page)
    # Each band recomputed from the completed repeats (the stopped one is no seed): the history in
    # its axis's unit (the best pooled CV), the CV-vs-holdout in the score and the holdout's mean.
    assert f"the recipe point's best cv_lwlrap under its 3 seeds, {ON_CV[0]:.4f} ± {ON_CV[1]:.4f}" in text
    assert (f"the recipe point's CV score (vertical band) under its 3 seeds, {ON_SCORE[0]:.4f} ±"
            f" {ON_SCORE[1]:.4f}") in text
    assert (f"the recipe point's holdout score, the mean of its halves (horizontal band) under its 3 seeds,"
            f" {ON_HOLDOUT[0]:.4f} ± {ON_HOLDOUT[1]:.4f}") in text
    assert "seed noise: the recipe point under 3 seeds 0.8400 +- 0.0400" in text  # seeds.noise_line, under the board
    drawn = {name: band_pixels(image) > 0 for name, image in pictures(page).items()}
    assert drawn == {"Optimisation history": True, "Learning curves": False, "Parallel coordinates": False,
                     "Per-fold spread of the top trials": False, "CV vs holdout": True}


@pytest.mark.slow
def test_without_seeds_the_page_is_as_before(tmp_path):
    page = (experiment(tmp_path / "exp", seeds=False) / REPORT_HTML).read_text()
    assert "Green:" not in page and "seed noise" not in page
    images = pictures(page)
    assert set(images) >= {"Optimisation history", "CV vs holdout"}
    assert all(band_pixels(image) == 0 for image in images.values())


@pytest.mark.slow
def test_the_band_shows_in_a_real_browser(tmp_path):
    report = experiment(tmp_path / "exp") / REPORT_HTML
    shot = screenshot(report.as_uri(), tmp_path / "report.png", height=3600)
    # Two figures' bands as the browser paints them: the history's is the plot's width by 2 std
    # (hundreds of pixels wide, tens high), the CV-vs-holdout's two cross; a missing band is 0.
    assert band_pixels(shot) > 10_000
