"""A checkpoint that cannot be read is named in one line, and the trial goes on from the newest
one that can (trainable.training.fallback, trainable.tune.resume)."""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pyarrow.fs
import pytest
import torch
from ray import tune

from search.tuner.experiment import CHECKPOINTS_KEPT, WholeFiles
from trainable.config import TrialConfig, from_dict
from trainable.dotted import merge
from trainable.reported import METRIC, MODE
from trainable.training.checkpoint import BEST_OOF_FILE, TRIAL_FILE, UnreadableCheckpointError, fold_file
from trainable.training.fallback import checkpoint_epoch, load_newest_readable, ray_checkpoints
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining
from trainable.tune import UNREADABLE_FILE, train_sed

TORN_ZIP = "PytorchStreamReader failed reading zip archive: failed finding central directory"


def cut(path: Path) -> None:
    """Truncate `path` to half its size, as a write cut short leaves it."""
    os.truncate(path, path.stat().st_size // 2)


@pytest.fixture(scope="module")
def trained(tiny_trial, tmp_path_factory) -> Path:
    """A trial's folder as Ray keeps it: checkpoint_000000 (epoch 1), checkpoint_000001 (epoch 2,
    Ray's latest), and checkpoint_000002, a copy Ray never registered (its process ended in it)."""
    trial = tmp_path_factory.mktemp("fallback") / "trial"
    training = KFoldTraining(from_dict(TrialConfig, tiny_trial), Device(torch.device("cpu")))
    for index in range(2):
        training.run_epoch()
        training.save(trial / f"checkpoint_00000{index}")
    shutil.copytree(trial / "checkpoint_000001", trial / "checkpoint_000002")
    return trial


@pytest.fixture
def trial(trained, tmp_path) -> Path:
    """A copy of `trained` the test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "trial"))


def new_training(tiny_trial) -> KFoldTraining:
    return KFoldTraining(from_dict(TrialConfig, tiny_trial), Device(torch.device("cpu")))


def test_a_truncated_fold_file_is_named_with_what_failed(tiny_trial, trial):
    cut(trial / "checkpoint_000001" / fold_file(0))
    with pytest.raises(UnreadableCheckpointError) as raised:
        new_training(tiny_trial).load(trial / "checkpoint_000001")
    assert raised.value.path == str(trial / "checkpoint_000001" / fold_file(0))
    assert raised.value.why == TORN_ZIP
    assert str(raised.value) == f"{trial / 'checkpoint_000001' / fold_file(0)}: cannot be read ({TORN_ZIP})"


def test_ray_checkpoints_are_the_latest_and_the_earlier_ones_newest_first(trial):
    latest = str(trial / "checkpoint_000001")
    assert ray_checkpoints(pyarrow.fs.LocalFileSystem(), latest) == [latest, str(trial / "checkpoint_000000")]
    assert checkpoint_epoch(pyarrow.fs.LocalFileSystem(), latest) == 2


def test_a_truncated_latest_falls_back_to_the_one_before(tiny_trial, trial):
    cut(trial / "checkpoint_000001" / fold_file(0))
    lines: list[str] = []
    latest = str(trial / "checkpoint_000001")
    training, path = load_newest_readable(lambda: new_training(tiny_trial), pyarrow.fs.LocalFileSystem(),
                                          ray_checkpoints(pyarrow.fs.LocalFileSystem(), latest), lines.append)
    assert path == str(trial / "checkpoint_000000") and training.epoch == 1
    assert lines == [f"unreadable checkpoint: {latest}/{fold_file(0)} ({TORN_ZIP})"]
    # Loaded whole into a new training: the same weights as a clean load of the one before.
    clean = new_training(tiny_trial)
    clean.load(trial / "checkpoint_000000")
    for run, want in zip(training.runs, clean.runs):
        for key, value in want.model.state_dict().items():
            assert torch.equal(run.model.state_dict()[key], value), key


def test_through_a_storage_file_system_the_line_names_the_stored_file_and_none_readable_is_none(tiny_trial, trial):
    """Through the file system Ray stores experiments with (WholeFiles: a copy to a local folder
    first) the line names the file in the storage, not the copy; nothing readable: None."""
    (trial / "checkpoint_000001" / BEST_OOF_FILE).write_bytes(b"")
    (trial / "checkpoint_000000" / TRIAL_FILE).write_text('{"format": 2, "epo')
    storage = pyarrow.fs.PyFileSystem(WholeFiles())
    assert checkpoint_epoch(storage, str(trial / "checkpoint_000000")) is None
    lines: list[str] = []
    paths = ray_checkpoints(storage, str(trial / "checkpoint_000001"))
    assert load_newest_readable(lambda: new_training(tiny_trial), storage, paths, lines.append) is None
    assert len(lines) == 2
    assert lines[0].startswith(f"unreadable checkpoint: {trial}/checkpoint_000001/{BEST_OOF_FILE} (")
    assert lines[1].startswith(f"unreadable checkpoint: {trial}/checkpoint_000000/{TRIAL_FILE} (")


class DamageAndKill(tune.Callback):
    """Once a trial's epoch-2 checkpoint is registered (Ray's latest), damages a file of it (the
    first trial there: fold_0.pt, the second: trial.json) and kills the trial's process (it waits
    in its report, so nothing newer exists); records every result."""

    def __init__(self):
        self.damaged: dict[str, Path] = {}  # trial id -> the damaged file
        self.results: list[tuple[str, int, int, int]] = []  # trial id, epoch, iteration, pid
        self.failures: dict[str, int] = {}
        self.trial_dirs: dict[str, Path] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append((trial.trial_id, result["epoch"], result["training_iteration"], result["pid"]))
        self.trial_dirs[trial.trial_id] = Path(trial.storage.trial_working_directory)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if trial.last_result["epoch"] == 2 and trial.trial_id not in self.damaged:
            damaged = Path(checkpoint.path) / (TRIAL_FILE if self.damaged else fold_file(0))
            cut(damaged)
            self.damaged[trial.trial_id] = damaged
            os.kill(trial.last_result["pid"], signal.SIGKILL)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.failures[trial.trial_id] = trial.run_metadata.num_failures


@pytest.mark.ray
def test_a_trial_whose_latest_checkpoint_is_damaged_goes_on_from_the_one_before(local_ray, tiny_trial, tmp_path):
    """Two trials of 3 epochs checkpointing every epoch, each killed once its epoch-2 checkpoint
    is damaged. With max_failures 1 (the kill) both finish: the damaged load costs no retry.
    A damaged fold file: the retry trains epoch 2 again unreported and reports epoch 3 only. A
    damaged trial.json (Ray's iteration unknown): epoch 2 is reported again, as iteration 2."""
    callback = DamageAndKill()
    config = merge(tiny_trial, {"train.epochs": 3, "train.checkpoint_seconds": 0,
                                "train.seed": tune.grid_search([1, 2])})
    tuner = tune.Tuner(
        tune.with_resources(train_sed, {"cpu": 1}), param_space=config,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE),
        run_config=tune.RunConfig(
            name="damaged", storage_path=str(tmp_path), storage_filesystem=pyarrow.fs.PyFileSystem(WholeFiles()),
            verbose=0, callbacks=[callback], checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=tune.FailureConfig(max_failures=1)))
    results = tuner.fit()
    assert len(callback.damaged) == 2
    for result in results:
        assert result.error is None and result.metrics["epoch"] == 3 and result.metrics["training_iteration"] == 3
    assert list(callback.failures.values()) == [1, 1]  # the kill alone
    assert all(epoch == iteration for _, epoch, iteration, _ in callback.results)  # trainable.reported's rule
    logs = Path(local_ray._private.worker._global_node.get_logs_dir_path())
    stderr = "".join(path.read_text(errors="replace") for path in logs.glob("worker-*.err"))
    (fold_trial, fold_damaged), (json_trial, json_damaged) = callback.damaged.items()
    for trial_id, damaged, again, then in (
            (fold_trial, fold_damaged, [], "epoch 2 is trained again without being reported (Ray has its result)"),
            (json_trial, json_damaged, [2], "the epoch of Ray's latest checkpoint is unknown, so epochs 2 on are"
                                            " reported again, each under its own iteration")):
        results = [(epoch, pid) for tid, epoch, _, pid in callback.results if tid == trial_id]
        first_pid = results[0][1]
        assert [epoch for epoch, _ in results] == [1, 2, *again, 3], results
        assert [epoch for epoch, pid in results if pid != first_pid] == [*again, 3], results
        lines = (callback.trial_dirs[trial_id] / UNREADABLE_FILE).read_text().splitlines()
        earlier = damaged.parent.parent / "checkpoint_000000"
        why = TORN_ZIP if damaged.name == fold_file(0) else "not valid JSON: "
        assert re.fullmatch(rf"pid \d+: unreadable checkpoint: {re.escape(f'{damaged} ({why}')}.*\)", lines[0]), lines
        assert len(lines) == 2 and lines[1].endswith(f": went on from {earlier} (epoch 1); {then}"), lines
        assert f"trial {trial_id}: unreadable checkpoint: {damaged} (" in stderr
