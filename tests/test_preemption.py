"""A trial whose process gets SIGTERM mid-epoch checkpoints at the next batch boundary, and its
retry goes on from there (trainable.training.preemption)."""

from __future__ import annotations

import math
import os
import re
import signal
import threading
from pathlib import Path

import pytest
import torch
from ray import tune

from trainable.config import TrialConfig, from_dict
from trainable.dotted import merge
from trainable.reported import METRIC, MODE
from trainable.training.checkpoint import EPOCH_FILE
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining
from trainable.training.preemption import FOLDER
from trainable.tune import PREEMPTIONS_FILE, train_sed

pytestmark = pytest.mark.ray


class Stop(Exception):
    """Raised at a chosen batch boundary: where a checkpoint is taken."""


def training_of(config: dict) -> KFoldTraining:
    # Batches of 8: several per fold's pass, so a checkpoint can fall between two of them.
    return KFoldTraining(from_dict(TrialConfig, merge(config, {"train.batch_size": 8})), Device(torch.device("cpu")))


def comparable(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key != "samples_per_s"}


def stop_at(training: KFoldTraining, boundary: int) -> None:
    calls = [0]

    def count() -> None:
        calls[0] += 1
        if calls[0] == boundary:
            raise Stop

    training.at_boundary = count


def test_checkpoints_between_two_batches_resume_to_what_an_uninterrupted_trial_computes(tiny_trial, tmp_path):
    training = training_of(tiny_trial)
    calls = [0]
    training.at_boundary = lambda: calls.__setitem__(0, calls[0] + 1)
    want = comparable(training.run_epoch())
    last = calls[0]  # the epoch's last boundary: in fold 1's validation
    # Stopped after fold 0's second batch, then again in fold 1's validation, resumed each time.
    training = training_of(tiny_trial)
    for boundary, saved in ((2, tmp_path / "training"), (last - 2, tmp_path / "validation")):
        stop_at(training, boundary)
        with pytest.raises(Stop):
            training.run_epoch()
        training.save(saved)
        assert (saved / EPOCH_FILE).exists()
        training = training_of(tiny_trial)
        training.load(saved)
        assert training.epoch == 0
        progress = training.progress
        if saved.name == "training":
            assert (progress.position, progress.passed.batches, progress.stats) == (0, 2, None)
        else:
            assert progress.position == 1 and progress.stats is not None  # trained; validation to repeat
    training.at_boundary = lambda: None
    got = training.run_epoch()
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-9) or (
            math.isnan(got[key]) and math.isnan(value)), key


class TerminateInEpoch(tune.Callback):
    """Sends SIGTERM to the trial's process a `share` of the first epoch's time after the driver
    got its first result (the next epoch is in flight), as Ray does to the processes of a draining
    node; records every result (epoch, pid), where the trial's process writes its preemptions log,
    its failures. A share, not a fixed delay: on a fast machine a whole epoch takes under a second."""

    def __init__(self, share: float):
        self.share, self.terminated = share, False
        self.reports: list[tuple[int, int]] = []
        self.log: Path | None = None
        self.failures: int | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.reports.append((result["epoch"], result["pid"]))
        self.log = Path(trial.storage.trial_working_directory) / PREEMPTIONS_FILE
        if not self.terminated:
            self.terminated = True
            delay = self.share * result["time_this_iter_s"]
            threading.Timer(delay, os.kill, (result["pid"], signal.SIGTERM)).start()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.failures = trial.run_metadata.num_failures


def test_a_trial_terminated_mid_epoch_resumes_from_the_next_batch_in_its_retry(local_ray, tiny_trial, tmp_path):
    terminate = TerminateInEpoch(share=0.3)
    tuner = tune.Tuner(
        tune.with_resources(train_sed, {"cpu": 1}), param_space=tiny_trial,  # 2 epochs; a checkpoint at the end only
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE),
        run_config=tune.RunConfig(name="sigterm", storage_path=str(tmp_path), verbose=0, callbacks=[terminate],
                                  failure_config=tune.FailureConfig(max_failures=1)))
    [result] = tuner.fit()
    assert result.error is None and result.metrics["epoch"] == 2 and result.metrics["training_iteration"] == 2
    # The retry, another process, reported epoch 1 again from the mid-epoch checkpoint (Ray had none
    # of it), then ended epoch 2 from where the first process stopped.
    (first, pid), (again, retry), (second, last) = terminate.reports
    assert (first, again, second) == (1, 1, 2) and pid != retry == last
    lines = terminate.log.read_text().splitlines()
    assert len(lines) == 2, lines
    stopped = re.fullmatch(rf"pid {pid}: exiting: checkpointed at (epoch 2, fold \d.*)", lines[0])
    assert stopped and lines[1] == f"pid {retry}: resumed at {stopped.group(1)}"
    assert re.search(r"after batch [1-9]\d* of|trained, its validation to do", stopped.group(1))
    assert not list(tmp_path.glob(f"sigterm/*/{FOLDER}"))  # the final checkpoint superseded it
    assert terminate.failures == 1  # Ray 2.60 counts the exit against max_failures (see docs/trainable.md)
