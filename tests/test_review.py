"""Reviewing an experiment without running one: report.html from an experiment's files, the
LB scores that search/lb.py records, and the TensorBoard tags the review logger writes."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search import lb
from search.plan import SearchPlan, save_plan
from search.results.lb_scores import LB_FILE
from search.results.leaderboard import Row, export_study, frame
from search.results.refresh import refresh_reports
from search.stopping import SCHEDULERS
from search.tuner.review_logger import tag
from tests.helpers import colours, screenshot

pytestmark = pytest.mark.slow

TRIALS = ["aa_00000", "bb_00001", "cc_00002", "dd_00003", "ee_00004"]
SCORES = [0.71, 0.69, 0.64, 0.60, 0.52]
STOPPED_AT = {"dd_00003": 1, "ee_00004": 1}  # ASHA stopped these at the grace period
EPOCHS = 3


@pytest.fixture
def experiment(tmp_path) -> Path:
    """An experiment directory as a 5-trial search of 3 epochs leaves it: plan, study, leaderboard."""
    return make_experiment(tmp_path)


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    """The same with an LB score recorded; tests must not change it."""
    experiment = make_experiment(tmp_path_factory.mktemp("scored"))
    assert lb.main([str(experiment), "aa_00000", "--public", "0.9"]) == 0
    return experiment


def make_experiment(tmp_path: Path) -> Path:
    fixed = {"recipe": "v1_7", "train.epochs": EPOCHS, "data_dir": str(tmp_path)}
    plan = SearchPlan(spaces=("loss_weights",), fixed=fixed, num_samples=5,
                      max_concurrent=None, scheduler_settings={"grace_period": 1, "reduction_factor": 3},
                      cpus_per_trial=1, gpus_per_trial=0,
                      storage=str(tmp_path), name="exp", seed=0, max_failures=0)
    save_plan(plan)
    study = optuna.create_study(study_name="exp", direction="maximize")
    distributions = {"loss.w_max": optuna.distributions.FloatDistribution(0, 2),
                     "loss.w_frame": optuna.distributions.FloatDistribution(0, 2)}
    for k, (trial, score) in enumerate(zip(TRIALS, SCORES)):
        epochs = STOPPED_AT.get(trial, EPOCHS)
        state = optuna.trial.TrialState.PRUNED if trial in STOPPED_AT else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params={"loss.w_max": 0.4 * k, "loss.w_frame": 1.5 - 0.3 * k}, distributions=distributions,
            state=state, value=None if trial in STOPPED_AT else score,
            intermediate_values={e: score - 0.05 * (epochs - e) for e in range(1, epochs + 1)}))
    export_study(study, tmp_path / "exp" / "study.db")
    rows = [Row(trial, SCHEDULERS["asha"].stopped(STOPPED_AT[trial]) if trial in STOPPED_AT else "completed",
                score, 0.01 * (k + 1), STOPPED_AT.get(trial, EPOCHS),
                {"loss.w_max": 0.4 * k, "loss.w_frame": 1.5 - 0.3 * k},
                10.0, fold_scores=f"{score + 0.01:.4f},{score - 0.01:.4f}", recipe_point=k == 1)
            for k, (trial, score) in enumerate(zip(TRIALS, SCORES))]
    (tmp_path / "exp" / "leaderboard.csv").write_text(frame(rows).to_csv(index=False))
    (tmp_path / "exp" / "leaderboard.md").write_text("# exp: recipe v1_7, loss_weights\n")
    refresh_reports(tmp_path / "exp")  # writes report.html too
    return tmp_path / "exp"


def images(page: str) -> set[str]:
    return set(re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page))


def test_the_report_draws_every_figure_it_has_data_for_and_says_what_is_missing(experiment, tmp_path):
    page = (experiment / "report.html").read_text()
    assert images(page) == {"Optimisation history", "Learning curves", "Parallel coordinates",
                            "Parameter importance", "Per-fold spread of the top trials"}
    text = html.unescape(page)
    assert "5 trials: each one's best cv_lwlrap" in text and "2 stopped by ASHA (crosses)" in text
    assert "ASHA's rungs at epoch 1 (dotted)" in text  # grace 1, reduction 3, 3 epochs: one rung below the budget
    assert "all 5 trials reached at ASHA's first rung (epoch 1)" in text
    assert "The completed trials alone (3) are too few" in text  # fANOVA on 3 survivors: not drawn
    assert "no holdout score yet" in text and "no LB score yet" in text
    assert "Leaderboard (5 trials)" in text and "aa_00000" in text
    shot = screenshot(f"file://{experiment / 'report.html'}", tmp_path / "report.png", height=2000)
    assert colours(shot) > 50


def test_recording_lb_scores_fills_the_leaderboard_and_the_cv_vs_lb_figure(experiment, capsys):
    assert lb.main([str(experiment), "aa_00000", "--public", "0.90", "--private", "0.88", "--memo", "first try"]) == 0
    out = capsys.readouterr().out
    assert "trial aa_00000: LB 0.9000 public, 0.8800 private" in out
    assert "CV vs LB: 1 trials with an LB score; the Spearman needs 3" in out
    markdown = (experiment / "leaderboard.md").read_text()
    assert "| 0.9000 / 0.8800 | first try |" in markdown
    assert "| bb_00001 |" in markdown and "| recipe point |" in markdown  # the other memos stay

    assert lb.main([str(experiment), "trial_bb_00001", "--public", "0.91"]) == 0  # Ray's directory name works too
    assert lb.main([str(experiment), "best", "--public", "0.89"]) == 0  # a new score, the memo kept
    out = capsys.readouterr().out
    assert "CV vs LB over 2 trials" not in out
    assert lb.main([str(experiment), "cc_00002", "--public", "0.70"]) == 0
    out = capsys.readouterr().out
    # CV 0.71, 0.69, 0.64 against LB 0.89, 0.91, 0.70: ranks (3, 2, 1) vs (2, 3, 1): Spearman +0.50.
    assert "CV vs LB over 3 trials: Spearman +0.50 (public)" in out
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str}).set_index("trial")
    assert board.loc["aa_00000", "lb_public"] == 0.89 and board.loc["aa_00000", "lb_memo"] == "first try"
    assert math.isnan(board.loc["bb_00001", "lb_private"]) and math.isnan(board.loc["dd_00003", "lb_public"])
    page = html.unescape((experiment / "report.html").read_text())
    assert "CV vs LB" in images(page) and "3 trials with a LB score" in page and "public +0.50" in page

    refresh_reports(experiment)  # what an export does: the scores stay
    assert pd.read_csv(experiment / "leaderboard.csv").lb_public.notna().sum() == 3


def test_a_kaggle_submissions_list_is_matched_to_trials_by_name(experiment, tmp_path, capsys):
    submissions = tmp_path / "submissions.csv"
    submissions.write_text("\n".join([
        "fileName,date,description,status,publicScore,privateScore",
        "submission.csv,2026-12-03 09:00:00,rfcx-tune exp bb_00001,error,None,nan",  # a client's missing scores
        "submission.csv,2026-12-02 09:00:00,rfcx-tune exp bb_00001,pending,,",  # newest, not scored yet
        "submission.csv,2026-12-01 12:00:00,rfcx-tune exp bb_00001,complete,0.812,0.801",
        "submission.csv,2026-12-01 11:00:00,rfcx-tune exp bb_00001,complete,0.700,0.690",  # older: ignored
        "submission_aa_00000.csv,2026-12-01 10:00:00,blend,complete,0.830,None",
        "submission.csv,2026-12-01 09:00:00,from a notebook,complete,0.600,0.590",  # names no trial
    ]) + "\n")
    assert lb.main([str(experiment), "--submissions", str(submissions)]) == 0
    out = capsys.readouterr().out
    assert "trial bb_00001: LB 0.8120 public, 0.8010 private" in out and "trial aa_00000: LB 0.8300 public\n" in out
    assert "1 scored submissions name no trial" in out
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str}).set_index("trial")
    assert board.loc["bb_00001", "lb_public"] == 0.812 and math.isnan(board.loc["aa_00000", "lb_private"])


@pytest.mark.parametrize("args, message", [
    (["nope", "--public", "0.9"], "no trial 'nope' on the leaderboard (trials: aa_00000, "),
    (["aa_00000", "--public", "1.5"], "--public must be a score in [0, 1], got 1.5"),
    (["aa_00000", "--public", "0.9", "--private", "-0.1"], "--private must be a score in [0, 1], got -0.1"),
    (["aa_00000", "--public", "nan"], "--public must be a score in [0, 1], got nan"),
    (["aa_00000"], "--public is needed (or --submissions FILE)"),
    ([], "name a TRIAL"),
    (["--submissions", "MISSING"], "/MISSING: No such file or directory"),
    (["--submissions", "HEADER"], "is not a Kaggle submissions CSV: no column privateScore"),
    (["--submissions", "FIELDS"], "line 2: 6 fields expected"),
    (["--submissions", "SCORE"], "line 2: publicScore 'high' is not a score in [0, 1]"),
    (["aa_00000", "--submissions", "SCORE"], "--submissions takes no TRIAL"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(scored, tmp_path, capsys, args, message):
    experiment = scored
    files = {"HEADER": "fileName,date,description,status,publicScore\nx.csv,d,aa_00000,complete,0.5\n",
             "FIELDS": "fileName,date,description,status,publicScore,privateScore\nx.csv,d,aa_00000,0.5\n",
             "SCORE": "fileName,date,description,status,publicScore,privateScore\nx.csv,d,aa_00000,complete,high,\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / arg) if arg in (*files, "MISSING") else arg for arg in args]
    before = {path.name: path.read_bytes() for path in experiment.iterdir() if path.is_file()}
    capsys.readouterr()
    assert lb.main([str(experiment), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert {path.name: path.read_bytes() for path in experiment.iterdir() if path.is_file()} == before
    assert LB_FILE in before


def test_an_experiment_without_a_leaderboard_is_refused(tmp_path, capsys):
    assert lb.main([str(tmp_path / "none"), "x", "--public", "0.5"]) == 2
    assert "experiment" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert lb.main([str(tmp_path), "x", "--public", "0.5"]) == 2
    assert "no leaderboard.csv in" in capsys.readouterr().err


def test_tensorboard_tags_are_grouped_and_ray_bookkeeping_is_left_out():
    assert [tag(key) for key in ("cv_lwlrap", "best_cv_lwlrap", "score", "fold/2/lwlrap", "fold/2/best_epoch",
                                 "loss/att", "lr", "samples_per_s", "time_this_iter_s")] == [
        "cv/lwlrap", "cv/best", "cv/score", "fold/2", "fold/2/best_epoch", "loss/att", "lr", "throughput",
        "time/epoch_s"]
    assert {tag(key) for key in ("done", "iterations_since_restore", "time_total_s", "timestamp", "pid",
                                 "training_iteration", "epoch", "trial_id")} == {None}


def test_a_failing_figure_costs_the_report_page_only(experiment, monkeypatch, capsys):
    import search.results.refresh

    def broken(directory, title):
        raise ValueError("no fonts")

    monkeypatch.setattr(search.results.refresh, "write_report_page", broken)
    (experiment / "leaderboard.md").write_text("# exp: recipe v1_7, loss_weights\n")
    refresh_reports(experiment)
    assert "warning: report.html not written: ValueError: no fonts" in capsys.readouterr().err
    assert "| aa_00000 |" in (experiment / "leaderboard.md").read_text()
