"""An experiment written by the code before the move into sub-packages (issue 30: commit 526b823,
with search/optuna_search.py, search/scheduler.py, search/experiment.py, trainable/kfold.py) goes on
with today's: its trials export and blend from the checkpoints and leaderboard the old code wrote,
it resumes (Ray unpickles the searcher, scheduler, callbacks and storage by their old module
paths: search.tuner.legacy), and an old checkpoint trains on. The old code runs from its own
files, extracted from git."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from search import ensemble, export
from search.results.exports import EXPORT_RECORD
from search.results.holdout import TRUTH_FILE
from search.results.leaderboard import load_study
from search.results.trials import EXPORTS, scored_trials, trial_dir
from tests.helpers import ENV, REPO, tiny_search
from trainable.config import TrialConfig, from_dict
from trainable.dotted import merge
from trainable.training.checkpoint import read_trial_file
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BEFORE_THE_MOVE = "526b823"  # the last commit of the flat layout


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    """trainable/, search/ and spaces/ as they were before the move."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_THE_MOVE, "trainable", "search", "spaces"],
                             capture_output=True)
    if archive.returncode != 0:  # a failure, not a skip: CI must run this test
        pytest.fail(f"cannot extract the code before the move (commit {BEFORE_THE_MOVE}) from {REPO}:"
                    f" {archive.stderr.decode().strip()} (a shallow clone lacks it: git fetch --unshallow)")
    out = tmp_path_factory.mktemp("before_the_move")
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(out, filter="data")
    return out


@pytest.fixture(scope="module")
def unscored_data(cached_dir, tmp_path_factory) -> Path:
    """The cached data without the test set's truth: no search scores its best trials on the
    holdout (on 2 cores, a minute of exports that search/export.py is tested with below)."""
    out = tmp_path_factory.mktemp("unscored") / "data"
    shutil.copytree(cached_dir, out, ignore=shutil.ignore_patterns(TRUTH_FILE))
    return out


@dataclass(frozen=True)
class OldExperiment:
    path: Path
    trials: list[str]  # the trials the old code ran


@pytest.fixture(scope="module")
def old_experiment(old_code, unscored_data, tmp_path_factory) -> OldExperiment:
    """A search of 2 trials x 2 epochs run by the old search/run.py, its packages imported from
    the old files (PYTHONPATH comes before the editable install of today's)."""
    env = {**ENV, "PYTHONPATH": str(old_code)}
    where = subprocess.run([sys.executable, "-c", "import importlib.util, search, trainable, spaces;"
                            "print(search.__file__, trainable.__file__, spaces.__file__,"
                            " importlib.util.find_spec('search.optuna_search').origin)"],
                           env=env, cwd=old_code, capture_output=True, text=True, check=True)
    assert all(Path(file).is_relative_to(old_code) for file in where.stdout.split()), where.stdout
    storage = tmp_path_factory.mktemp("storage")
    command = [*tiny_search(unscored_data, storage, "old"), "--num-samples", "2", "--epochs", "2"]
    command[1] = str(old_code / "search" / "run.py")
    done = subprocess.run(command, env=env, cwd=old_code, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = storage / "old"
    assert b"search.optuna_search" in (experiment / "tuner.pkl").read_bytes()  # Ray's state names the old modules
    trials = scored_trials(experiment)
    assert len(trials) == 2
    return OldExperiment(experiment, trials)


def test_an_old_experiment_exports_blends_and_resumes(old_experiment, tmp_path):
    experiment, trials = old_experiment.path, old_experiment.trials
    # As the old code left it: its leaderboard names the trials, their checkpoints hold the models.
    assert export.main(["--experiment", str(experiment), "--trial", "all"]) == 0
    for trial in trials:
        record = json.loads((experiment / EXPORTS / f"trial_{trial}" / EXPORT_RECORD).read_text())
        assert (trial_dir(experiment, trial) / record["checkpoint"]).is_dir()
    assert ensemble.main([str(experiment)]) == 0
    blend = json.loads((experiment / EXPORTS / "ensemble" / "weights.json").read_text())
    assert {candidate["trial"] for candidate in blend["candidates"]} == set(trials)
    assert sum(blend["weights"].values()) == pytest.approx(1)

    # Ray unpickles the old searcher, scheduler, callbacks and storage; the searcher's study goes on.
    resume = [sys.executable, str(REPO / "search/run.py"), "--resume", "--name", experiment.name,
              "--storage", str(experiment.parent), "--num-samples", "3"]
    done = subprocess.run(resume, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = scored_trials(experiment)
    assert len(resumed) == 3 and set(trials) < set(resumed)
    assert len(load_study(experiment).trials) == 3


def test_an_old_checkpoint_trains_one_more_epoch(old_experiment):
    checkpoints = [checkpoint for trial in old_experiment.trials
                   for checkpoint in trial_dir(old_experiment.path, trial).glob("checkpoint_*")]
    checkpoint = max(checkpoints, key=lambda path: read_trial_file(path)["epoch"])
    saved = read_trial_file(checkpoint)
    torch.set_num_threads(1)
    training = KFoldTraining(from_dict(TrialConfig, merge(saved["config"], {"train.epochs": saved["epoch"] + 1})),
                             Device(torch.device("cpu")))
    training.load(checkpoint)
    assert training.epoch == saved["epoch"] == 2
    metrics = training.run_epoch()
    assert training.epoch == 3 and np.isfinite(metrics["cv_lwlrap"])
