"""search/run.py end to end on local Ray: the real CLI in a subprocess, its reports, the
Optuna study's truth about stopped trials, TensorBoard files, and resuming a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from search.optuna_search import TruthfulOptunaSearch
from spaces import recipe_point
from tests.helpers import ENV, tiny_search
from trainable.config import TrialConfig, from_dict

SEARCHED = ["loss.w_max", "loss.w_pseudo", "loss.w_frame"]




def test_a_stopped_trial_is_pruned_in_optuna_with_its_intermediate_values():
    searcher = TruthfulOptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)}, metric="score",
                                    mode="max", max_iterations=5)
    searcher.suggest("stopped"), searcher.suggest("finished")
    for step in (1, 2):
        searcher.on_trial_result("stopped", {"score": 0.1 * step, "training_iteration": step})
    searcher.on_trial_complete("stopped", {"score": 0.3, "training_iteration": 3})  # ASHA stopped it at 3
    searcher.on_trial_complete("finished", {"score": 0.9, "training_iteration": 5})
    stopped, finished = searcher.study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})
    assert finished.state == optuna.trial.TrialState.COMPLETE and finished.value == 0.9


def test_a_search_leaves_a_leaderboard_a_study_a_config_and_tensorboard_files(cached_dir, tmp_path):
    done = subprocess.run(tiny_search(cached_dir, tmp_path, "e2e"), capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = tmp_path / "e2e"
    assert f"tensorboard --logdir {experiment}" in done.stdout

    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    assert len(board) == 4 and list(board["rank"]) == [1, 2, 3, 4]
    assert list(board.score) == sorted(board.score, reverse=True)
    assert {"cv_lwlrap", "cv_lwlrap_fold_best", "cv_lrap_reference", "best_epochs"} <= set(board.columns)
    assert (board.score == board.cv_lwlrap_fold_best).all()  # v1_7: each fold at its own best epoch
    assert set(SEARCHED) <= set(board.columns)
    assert (experiment / "leaderboard.md").read_text().count("\n| ") >= 5

    # Optuna is told the truth: a trial ASHA stopped is PRUNED with one value per epoch it ran.
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{experiment / 'study.db'}")
    assert study.trials[0].params == recipe_point(["loss_weights"], 3)  # the recipe runs first
    by_params = {tuple(round(t.params[k], 6) for k in SEARCHED): t for t in study.trials}
    for row in board.itertuples():
        trial = by_params[tuple(round(board.loc[row.Index, k], 6) for k in SEARCHED)]
        if row.status == "completed":
            assert trial.state == optuna.trial.TrialState.COMPLETE and row.epochs == 3
            assert trial.value == pytest.approx(row.score)  # Optuna is told the leaderboard's score
        else:
            assert row.status == f"stopped by ASHA at epoch {row.epochs}" and row.epochs < 3
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert sorted(trial.intermediate_values) == list(range(1, row.epochs + 1))

    best = from_dict(TrialConfig, yaml.safe_load((experiment / "best_config.yaml").read_text()))
    assert best.loss.w_max == pytest.approx(board.loc[0, "loss.w_max"])

    trial_dirs = sorted(experiment.glob("trial_*"))
    assert len(trial_dirs) == 4
    events = EventAccumulator(str(trial_dirs[0]), size_guidance={"scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"ray/tune/cv_lwlrap", "ray/tune/best_cv_lwlrap", "ray/tune/cv_lrap_reference", "ray/tune/score",
            "ray/tune/fold/0/lwlrap", "ray/tune/loss/att", "ray/tune/loss/frame", "ray/tune/lr"} <= scalars
    hparams = {}
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            hparams = dict(data.session_start_info.hparams)
    assert set(SEARCHED) <= set(hparams)

    # The search scores its top trials and the recipe point on the holdout itself (the data have
    # test_truth.csv), with the predictions beside: the summary says whether the best trial beats
    # the recipe point there, and whether the CV ranks trials as the holdout does.
    assert board[["holdout_public", "holdout_private"]].notna().all().all()  # 4 trials: all among the top 5
    assert board.recipe_point.sum() == 1
    recipe = board.trial[board.recipe_point].iloc[0]
    assert dict(board.loc[board.recipe_point, SEARCHED].iloc[0]) == pytest.approx(recipe_point(["loss_weights"], 3))
    for trial in board.trial:
        assert (experiment / "exports" / f"trial_{trial}" / "submission.csv").is_file()
    summary = done.stdout[done.stdout.index(" rank "):]
    assert summary.index("holdout_public") < summary.index("holdout: the best trial") < summary.index("CV vs holdout")
    best = board.trial[0]
    assert (f"holdout: the best trial {best} is the recipe point" if best == recipe
            else f"holdout: the best trial {best} ") in summary
    assert "CV vs holdout over 4 trials: Spearman" in summary
    text = (experiment / "leaderboard.md").read_text()
    assert "CV vs holdout" in text and text.count("| recipe point |") == 1

    # Stage 3: the best trial's window predictions teach a new search, whose folds start from
    # the best trial's fold models; the pseudo space now also searches the teacher.
    windows = experiment / "exports" / f"trial_{board.trial[0]}" / "windows.csv"
    stage3 = subprocess.run([*tiny_search(cached_dir, tmp_path, "stage3"), "--space", "pseudo", "--num-samples", "2",
                             "--epochs", "2", "--teacher", str(windows), "--init-from", "e2e"],
                            capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert stage3.returncode == 0, stage3.stderr[-3000:]
    taught = pd.read_csv(tmp_path / "stage3" / "leaderboard.csv")
    assert len(taught) == 2 and taught.score.notna().all()
    assert {"loss.teacher_threshold", "loss.teacher_weight"} <= set(taught.columns)
    config = from_dict(TrialConfig, yaml.safe_load((tmp_path / "stage3" / "best_config.yaml").read_text()))
    assert config.stage == 3 and config.teacher_file == str(windows)
    assert Path(config.init_from).parent == experiment / f"trial_{board.trial[0]}"


def test_without_a_space_a_recipe_trains_once_and_reports_the_three_cvs(cached_dir, tmp_path):
    command = tiny_search(cached_dir, tmp_path, "exp0109")
    command = [part for part in command if part not in ("--space", "loss_weights")]
    command[command.index("--num-samples") + 1] = "1"
    done = subprocess.run([*command, "--recipe", "exp0109", "--epochs", "2"], capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recipe exp0109, no space (the recipe's own configuration); 1 trials of 2 epochs" in done.stdout
    board = pd.read_csv(tmp_path / "exp0109" / "leaderboard.csv", dtype={"best_epochs": str})
    assert len(board) == 1 and board.status[0] == "completed"
    for column in ("score", "cv_lwlrap", "cv_lwlrap_fold_best", "cv_lrap_reference"):
        assert 0 < board[column][0] <= 1
    assert len(board.best_epochs[0].split(",")) == 2 and set(board.best_epochs[0].split(",")) <= {"1", "2"}
    best = from_dict(TrialConfig, yaml.safe_load((tmp_path / "exp0109" / "best_config.yaml").read_text()))
    assert best.recipe == "exp0109" and best.loss.w_max == best.loss.w_pseudo == best.loss.w_frame == 0
    assert best.augment.brightness_contrast_p == 0 and best.augment.group_gamma == 0


def results_recorded(experiment: Path) -> dict[str, int]:
    """Trial directory -> the results the driver has recorded (each with its checkpoint)."""
    return {path.parent.name: len(path.read_text().splitlines()) for path in experiment.glob("trial_*/result.json")}


def checkpoints(experiment: Path) -> dict[str, int]:
    """Trial directory -> its newest checkpoint number."""
    found: dict[str, int] = {}
    for path in experiment.glob("trial_*/checkpoint_*"):
        found[path.parent.name] = max(found.get(path.parent.name, -1), int(path.name.split("_")[-1]))
    return found


def test_a_killed_driver_resumes_without_losing_trials_or_checkpoints(cached_dir, tmp_path):
    experiment = tmp_path / "killed"
    driver = subprocess.Popen(tiny_search(cached_dir, tmp_path, "killed"), env=ENV, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # Kill once a trial has recorded epoch 2: its epoch-1 checkpoint is in the saved state by then.
    while max(results_recorded(experiment).values(), default=0) < 2 and time.time() < deadline \
            and driver.poll() is None:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a lost terminal
    driver.wait()
    recorded, on_disk = results_recorded(experiment), checkpoints(experiment)
    assert on_disk, "no checkpoint appeared before the kill"

    done = subprocess.run(tiny_search(cached_dir, tmp_path, "killed"), capture_output=True,  # the same command
                          text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming experiment" in done.stdout
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    assert len(board) == 4 and board.status.str.match(r"completed|stopped by ASHA at epoch \d").all()
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{experiment / 'study.db'}")
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(study.trials) == 4 and all(trial.state in finished for trial in study.trials)
    after = checkpoints(experiment)
    for trial, newest in on_disk.items():
        assert after[trial] >= newest  # nothing checkpointed before the kill was lost
        last = json.loads((experiment / trial / "result.json").read_text().strip().splitlines()[-1])
        assert last["epoch"] == last["training_iteration"]  # the trainable's epochs count on, none twice
        if last["training_iteration"] > recorded.get(trial, 0):  # it trained after the kill...
            # ...from its last checkpoint in the saved state, not from zero. The state is saved at
            # the end of the driver's step that recorded a result: the kill may fall in between,
            # so the last recorded epoch may be trained again, beside the one in flight.
            assert last["training_iteration"] - last["iterations_since_restore"] >= recorded[trial] - 1
