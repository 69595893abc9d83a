"""Trial processes reused between trials (`TuneConfig(reuse_actors=True)`, as searches run): a
trial in the process of a finished one trains as in a fresh process and keeps its own trial
folder, and a search resumed after its driver was killed keeps its trials and its config."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
from ray import tune

from search.experiment import build_tuner, can_resume, fit, restore_tuner
from search.run import make_plan, parse_args
from tests.helpers import ENV, REPO, tiny_search
from trainable.tune import METRIC, MODE, train_sed


def fit_in_turn(param_space: dict, storage: Path, name: str, reuse: bool, max_failures: int = 0) -> tune.ResultGrid:
    """The trials one at a time, each in the process of the one before when `reuse`."""
    tuner = tune.Tuner(
        tune.with_resources(train_sed, {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, max_concurrent_trials=1, reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit()


def by_seed(results: tune.ResultGrid) -> dict[int, tune.Result]:
    return {result.config["train"]["seed"]: result for result in results}


def scores(metrics: dict) -> dict:
    """What the trial computed, without timings and Ray's bookkeeping."""
    return {key: value for key, value in metrics.items()
            if key in ("epoch", "cv_lwlrap", "cv_lrap_reference", "score", "lr") or key.startswith(("fold/", "loss/"))}


def test_a_trial_in_a_reused_process_trains_as_in_a_fresh_one(local_ray, tiny_trial, tmp_path):
    first = {**tiny_trial["train"], "seed": 1, "lr": 3e-3}  # leaves other weights and RNG states behind
    second = {**tiny_trial["train"], "seed": 2}
    reused = by_seed(fit_in_turn({**tiny_trial, "train": tune.grid_search([first, second])}, tmp_path, "reused",
                                 reuse=True))
    [fresh] = fit_in_turn({**tiny_trial, "train": second}, tmp_path, "fresh", reuse=False)
    assert reused[2].metrics["pid"] == reused[1].metrics["pid"] != fresh.metrics["pid"]
    assert reused[2].error is None and scores(reused[2].metrics) == scores(fresh.metrics)


def failure_pids(error_file: Path) -> list[int]:
    """The process of each failed attempt, in order, from Ray's error.txt of a trial."""
    return [int(pid) for pid in re.findall(r"Failure # \d+.*?\(pid=(\d+)", error_file.read_text(), re.DOTALL)]


def test_a_trial_that_diverged_in_a_reused_process_is_not_trained_again_in_a_fresh_one(local_ray, tiny_trial,
                                                                                       tmp_path):
    """The divergence marker must be where every attempt of the trial looks: Ray's
    get_trial_dir() names another folder in a reused process than in a fresh one, and the retry
    of a failed trial runs in a fresh process."""
    good = {**tiny_trial["train"], "seed": 1, "epochs": 1}
    diverging = {**tiny_trial["train"], "seed": 2, "epochs": 1, "lr": 1e30, "min_lr": 0.0}
    results = by_seed(fit_in_turn({**tiny_trial, "train": tune.grid_search([good, diverging])}, tmp_path,
                                  "diverged", reuse=True, max_failures=1))
    first_attempt, retry = failure_pids(Path(results[2].path) / "error.txt")
    assert first_attempt == results[1].metrics["pid"] != retry  # diverged in the good trial's process
    assert "an earlier attempt diverged; not retried" in str(results[2].error)


def test_a_search_killed_before_ray_saved_it_starts_over_with_its_config(local_ray, cached_dir, tmp_path):
    """Ray saves a search's state after its first step; a resume that finds none starts the
    experiment over, and its trials must still get the search's fixed config (data_dir...)."""
    arguments = tiny_search(cached_dir, tmp_path, "early")[2:]
    arguments[arguments.index("--num-samples") + 1], arguments[arguments.index("--epochs") + 1] = "1", "1"
    plan = make_plan(parse_args(arguments))
    build_tuner(plan)  # the experiment exists on disk; its driver was killed before Ray saved a step
    assert can_resume(plan)
    [result] = fit(restore_tuner(plan))
    assert result.error is None and result.metrics["training_iteration"] == 1
    assert result.config["data_dir"] == str(cached_dir)


# The two ways in which Ray's background copy of a search's state into the experiment
# directory left a part of a file there, replayed through the experiment's file system as
# Ray's copy (pyarrow.fs.copy_files) writes: a copy of experiment_state that read the file
# while Ray rewrote it (the copy ends, with the part it read), then copies of every state
# file cut halfway by the kill of the driver.
INTERRUPTED_STATE_COPIES = """
import os, signal, sys
from ray.train._internal.storage import get_fs_and_path
from search.experiment import experiment_filesystem
from search.plan import load_plan

plan = load_plan(sys.argv[1], sys.argv[2])
filesystem, _ = get_fs_and_path(plan.storage, experiment_filesystem(plan))
experiment_state, *others = sys.argv[3:]
with filesystem.open_output_stream(experiment_state) as copy:
    copy.write(open(experiment_state, "rb").read()[:-1000])
for path in [experiment_state, *others]:
    data = open(path, "rb").read()
    copy = filesystem.open_output_stream(path)
    copy.write(data[: len(data) // 2])
    copy.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""
# Ray's state files, experiment_state first as the replay takes them.
STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def results_by_trial(experiment: Path) -> dict[str, list[dict]]:
    """Trial directory -> the results the driver has recorded."""
    return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
            for path in experiment.glob("trial_*/result.json")}


def test_a_driver_killed_while_ray_saved_the_search_resumes_it_whole_in_reused_processes(cached_dir, tmp_path):
    experiment = tmp_path / "killed"
    command = tiny_search(cached_dir, tmp_path, "killed")
    driver = subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 300
    while not any(results_by_trial(experiment).values()) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a lost terminal
    driver.wait()
    before = {trial for trial, results in results_by_trial(experiment).items() if results}
    assert before, "no trial recorded an epoch before the kill"
    newest = [str(max(experiment.glob(pattern))) for pattern in STATE_FILES]
    replay = subprocess.run([sys.executable, "-c", INTERRUPTED_STATE_COPIES, str(tmp_path), "killed", *newest],
                            env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert replay.returncode == -signal.SIGKILL, replay.stderr[-3000:]

    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming experiment" in done.stdout
    # Resumed, not started over: the trials of the first run are on the leaderboard, and
    # every trial ran the search's config to an end.
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    assert len(board) == 4 and before <= {f"trial_{trial}" for trial in board.trial}
    assert board.status.str.match(r"completed|stopped by ASHA at epoch \d").all(), list(board.status)
    for trial in board.trial:
        assert json.loads((experiment / f"trial_{trial}" / "params.json").read_text())["data_dir"] == str(cached_dir)
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{experiment / 'study.db'}")
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(study.trials) == 4 and all(trial.state in finished for trial in study.trials)
    # Trials that started after the restore ran in processes that finished trials left.
    results = results_by_trial(experiment)
    pids = {trial: {result["pid"] for result in results[trial]} for trial in results}
    started_after = set(pids) - before
    assert started_after and any(pids[trial] & set().union(*(pids[other] for other in pids if other != trial))
                                 for trial in started_after)
