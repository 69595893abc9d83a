"""Trial processes reused between trials (`TuneConfig(reuse_actors=True)`, as searches run): a
search resumed after its driver was killed keeps its trials and its config, and its new trials
run in reused processes. (A trial in a reused process training as in a fresh one, and keeping
its own trial folder, is tested in test_tune.py, on its local Ray.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.run import make_plan, parse_args
from search.tuner.experiment import build_tuner, can_resume, fit, restore_tuner
from tests.helpers import ENV, REPO, tiny_search

pytestmark = pytest.mark.ray


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
from search.tuner.experiment import experiment_filesystem
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


def checkpoints(experiment: Path) -> dict[str, int]:
    """Trial directory -> its newest checkpoint number."""
    found: dict[str, int] = {}
    for path in experiment.glob("trial_*/checkpoint_*"):
        found[path.parent.name] = max(found.get(path.parent.name, -1), int(path.name.split("_")[-1]))
    return found


def test_a_killed_driver_resumes_its_search_whole_in_reused_processes_even_after_torn_state_copies(
        cached_dir, tmp_path):
    """The driver is killed (with the local Ray it started) once a trial recorded epoch 2, so its
    epoch-1 checkpoint (ASHA's rung) is in the saved state; then the torn copies of Ray's state
    files that such a kill can leave are replayed. The same command resumes the search: no
    trial, checkpoint or config lost, trials trained on from their checkpoints, and the trials
    started after the restore in reused processes."""
    experiment = tmp_path / "killed"
    command = tiny_search(cached_dir, tmp_path, "killed")
    driver = subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 300
    while max(map(len, results_by_trial(experiment).values()), default=0) < 2 and time.time() < deadline \
            and driver.poll() is None:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a lost terminal
    driver.wait()
    recorded = {trial: len(results) for trial, results in results_by_trial(experiment).items() if results}
    on_disk = checkpoints(experiment)
    assert recorded and on_disk, "no trial recorded an epoch and a checkpoint before the kill"
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
    assert len(board) == 4 and set(recorded) <= {f"trial_{trial}" for trial in board.trial}
    assert board.status.str.match(r"completed|stopped by ASHA at epoch \d").all(), list(board.status)
    for trial in board.trial:
        assert json.loads((experiment / f"trial_{trial}" / "params.json").read_text())["data_dir"] == str(cached_dir)
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{experiment / 'study.db'}")
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(study.trials) == 4 and all(trial.state in finished for trial in study.trials)
    after, results = checkpoints(experiment), results_by_trial(experiment)
    for trial, newest_checkpoint in on_disk.items():
        assert after[trial] >= newest_checkpoint  # nothing checkpointed before the kill was lost
        last = results[trial][-1]
        assert last["epoch"] == last["training_iteration"]  # the trainable's epochs count on, none twice
        if last["training_iteration"] > recorded.get(trial, 0):  # it trained after the kill...
            # ...from its last checkpoint in the saved state, not from zero: the one of epoch 1
            # (ASHA's rung) once it recorded epoch 2. The state is saved at the end of the
            # driver's step that recorded a result, so the kill may fall in between.
            restored_at = last["training_iteration"] - last["iterations_since_restore"]
            assert restored_at >= min(recorded.get(trial, 0) - 1, 1)
    # Trials that started after the restore ran in processes that finished trials left.
    pids = {trial: {result["pid"] for result in results[trial]} for trial in results}
    started_after = set(pids) - set(recorded)
    assert started_after and any(pids[trial] & set().union(*(pids[other] for other in pids if other != trial))
                                 for trial in started_after)
