"""A trial that runs out of GPU memory: one line naming its share and batch size, no retry,
FAIL in Optuna, "out of GPU memory" on the leaderboard, and the other trials go on."""

from __future__ import annotations

import math
import subprocess

import optuna
import pandas as pd
import pytest

from search.results.leaderboard import trial_status
from spaces import recipe_point
from tests import oom_injection
from tests.helpers import ENV, tiny_search
from trainable.config import resolve
from trainable.training.out_of_memory import out_of_memory_message

pytestmark = pytest.mark.ray

ADVICE = "give each trial more of a GPU (--gpus-per-trial) or lower train.batch_size or train.eval_recordings"


def test_the_out_of_memory_line_names_the_share_and_the_batch_sizes():
    train = resolve({"data_dir": "/data", "train.batch_size": 64, "train.eval_recordings": 4}).train
    assert out_of_memory_message(0.25, train) == (
        f"out of GPU memory at 0.25 GPU per trial with train.batch_size 64 (train.eval_recordings 4): {ADVICE}")
    assert out_of_memory_message(1.0, train).startswith("out of GPU memory at 1 GPU per trial")


def test_the_status_is_the_out_of_memory_line_without_its_advice_and_other_errors_stay_errors():
    status = "out of GPU memory at 0.5 GPU per trial with train.batch_size 32 (train.eval_recordings 8)"
    assert trial_status(0, 3, finished=True, error=f"trainable.tune.OutOfGPUMemoryError: {status}: {ADVICE}") == status
    assert trial_status(1, 3, finished=True, error="RuntimeError: CUDA error: out of GPU memory") == \
        "errored: RuntimeError: CUDA error: out of GPU memory"


def test_a_trial_out_of_gpu_memory_ends_with_one_line_once_and_the_others_go_on(cached_dir, tmp_path):
    """Two trials at 0.25 of a (declared) GPU; the recipe point's trial, the first, runs out of
    memory in its first epoch (tests/oom_injection.py). Ray may retry it once."""
    w_max = recipe_point(["loss_weights"], 1)["loss.w_max"]
    calls = tmp_path / "run_epoch_calls.log"
    command = tiny_search(cached_dir, tmp_path, "oom")
    command[command.index("--num-samples") + 1] = "2"
    command[command.index("--epochs") + 1] = "1"
    done = subprocess.run([*command, "--gpus-per-trial", "0.25", "--max-failures", "1"], capture_output=True,
                          text=True, env={**ENV, **oom_injection.environment("loss.w_max", w_max, calls)},
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    status = "out of GPU memory at 0.25 GPU per trial with train.batch_size 16 (train.eval_recordings 8)"
    line = f"{status}: {ADVICE}"  # what the trial ends with

    experiment = tmp_path / "oom"
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    out_of_memory = board["loss.w_max"].map(lambda v: math.isclose(v, w_max))
    assert list(board.status[out_of_memory]) == [status]
    assert list(board.status[~out_of_memory]) == ["completed"] and board.score[~out_of_memory].notna().all()
    [trial] = board.trial[out_of_memory]
    assert f"| {trial} | {status} |" in (experiment / "leaderboard.md").read_text()
    assert f"{status} (trial {trial}): {ADVICE}" in done.stdout  # the summary names it, though it ranks last

    # Trained once: Ray's retry failed at once, with the same line, before an epoch.
    logged = [float(value) for value in calls.read_text().split()]
    assert sum(math.isclose(value, w_max) for value in logged) == 1 and len(logged) == 1 + 1
    errors = (experiment / f"trial_{trial}" / "error.txt").read_text()
    assert "Failure # 2" in errors and errors.count(line) == 2
    assert "Tried to allocate" not in errors  # CUDA's allocator report does not bury the line

    storage = optuna.storages.RDBStorage(f"sqlite:///{experiment / 'study.db'}")
    [study] = storage.get_all_studies()
    states = {math.isclose(t.params["loss.w_max"], w_max): t.state for t in storage.get_all_trials(study._study_id)}
    assert states == {True: optuna.trial.TrialState.FAIL, False: optuna.trial.TrialState.COMPLETE}
