"""The Ray Tune trainable: the full k-fold training of one configuration as one trial.

The only module of `trainable` that imports Ray. Everything else a trial does lives in
Ray-free modules (trainable.training.kfold, trainable.training.fit, ...), so it can be tested,
benchmarked and exported without a cluster. One `training_iteration` = one epoch on every fold
(trainable.reported: what a trial reports); every iteration reports the metrics, and a
checkpoint when `trainable.training.cadence` says so (by the clock, at the scheduler's
milestones and at the end), so the scheduler can stop the trial there and Ray can resume it. A
process that exits mid-epoch (SIGTERM: a draining or reclaimed node) checkpoints at the next
batch boundary into the trial's storage folder (`trainable.training.preemption`), and the retry
goes on from there.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainable.config import ConfigError, TrainConfig, TrialConfig, resolve
from trainable.training import preemption
from trainable.training.cadence import CheckpointCadence
from trainable.training.fit import Device, DivergedError
from trainable.training.kfold import KFoldTraining
from trainable.training.out_of_memory import OutOfGPUMemoryError, out_of_memory_message

DIVERGED_FILE = "diverged.txt"  # in the trial directory: why the trial diverged
OUT_OF_MEMORY_FILE = "out_of_gpu_memory.txt"  # in the trial directory: the line the trial ended with
PREEMPTIONS_FILE = "preemptions.txt"  # in the trial directory: where each exit checkpointed, where each retry resumed


def train_sed(config: dict[str, Any]) -> None:
    """Ray Tune function trainable.

    Args:
        config: a TrialConfig as a (nested or dotted-key) dict, with absolute data paths, over
            the defaults of its `recipe` (trainable.recipes). An unknown key or a wrong type
            fails the trial with a ConfigError that names the key.

    Raises:
        ConfigError: a bad config, a checkpoint made with another recipe, or an init_from
            checkpoint of another model or fold split; TeacherError: a bad teacher file.
        DivergedError: the loss or the predictions became NaN or infinite (the trial
            ends; the others go on).
        OutOfGPUMemoryError: training or evaluation ran out of GPU memory at the trial's
            share (the trial ends; the others go on).
    """
    trial = resolve(config)
    check_absolute_paths(trial)
    # The trial's working directory: the same for every attempt of the trial. Ray's get_trial_dir()
    # names another folder in a process reused from a finished trial than in a fresh one.
    trial_dir = tune.get_context().get_storage().trial_working_directory
    diverged, out_of_memory = os.path.join(trial_dir, DIVERGED_FILE), os.path.join(trial_dir, OUT_OF_MEMORY_FILE)
    refuse_a_failed_trial(diverged, out_of_memory)
    training = KFoldTraining(trial, assigned_device())
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            training.load(directory)
    elif trial.init_from:  # a later stage starts from an earlier trial's fold models
        training.initialise_from(trial.init_from)
    # Taken here: the exit function runs in the main thread, outside the trial's session.
    storage = tune.get_context().get_storage()
    since = resume_preempted(training, storage, trial_dir)
    cadence = CheckpointCadence(trial.train)
    with preemption.ExitCheckpoint(lambda: save_preempted(training, since, storage, trial_dir)) as on_exit:
        training.at_boundary = on_exit.at_boundary
        while training.epoch < trial.train.epochs:
            metrics = run_epoch(training, trial.train, diverged, out_of_memory)
            with on_exit.idle():  # reporting changes nothing a checkpoint holds
                if cadence.due(training.epoch):
                    report_with_checkpoint(training, metrics)
                    cadence.saved()
                    since.checkpointed(training.epoch)
                else:
                    tune.report(metrics)
                    since.reports.append(dict(metrics))


def check_absolute_paths(trial: TrialConfig) -> None:
    """Refuse a relative data, cache, init_from or teacher path: a trial runs in its own working
    directory, maybe on another node.

    Raises:
        ConfigError: naming the key.
    """
    paths = [(key, getattr(trial, key)) for key in ("data_dir", "cache_dir", "init_from")]
    for key, path in [*paths, *(("teacher_files", path) for path in trial.teacher_files)]:
        if path and not os.path.isabs(path):
            raise ConfigError(f"{key} must be an absolute path, got {path!r}: a trial runs in its own"
                              f" working directory, maybe on another node")


def refuse_a_failed_trial(diverged: str, out_of_memory: str) -> None:
    """Fail a retry at once, with the first attempt's line, when that attempt left the marker
    of a failure that would only repeat itself (`run_epoch` writes them).

    Ray retries failed trials (FailureConfig), and Ray 2.60 offers no cleaner way: FailureConfig
    retries every trial error alike (Trial.should_recover only counts them), and a trial that
    returned instead of raising would be a success to Ray's results, ASHA, Optuna and
    TensorBoard. So each retry fails here, in seconds and without training.

    Raises:
        DivergedError: an earlier attempt diverged.
        OutOfGPUMemoryError: an earlier attempt ran out of GPU memory (the same share and batch
            size would again).
    """
    if os.path.exists(diverged):
        with open(diverged) as marker:
            raise DivergedError(f"{marker.read()} (an earlier attempt diverged; not retried)")
    if os.path.exists(out_of_memory):
        with open(out_of_memory) as marker:
            raise OutOfGPUMemoryError(marker.read())


def run_epoch(training: KFoldTraining, train: TrainConfig, diverged: str, out_of_memory: str) -> dict[str, float]:
    """One epoch of `training`, its metrics; a divergence or running out of GPU memory leaves
    its marker in the trial directory, so the retries fail at once."""
    try:
        return training.run_epoch()
    except DivergedError as error:
        with open(diverged, "w") as marker:
            marker.write(str(error))
        raise
    except torch.OutOfMemoryError:  # torch.cuda.OutOfMemoryError is the same class
        message = out_of_memory_message(gpu_share(), train)
        with open(out_of_memory, "w") as marker:
            marker.write(message)
        # One line that says what to change; CUDA's allocator report would only bury it.
        raise OutOfGPUMemoryError(message) from None


@dataclass
class SinceCheckpoint:
    """What a mid-epoch checkpoint must add to Ray's latest: the results reported since then."""

    storage: Any  # the trial's ray.train._internal.storage.StorageContext
    base_epoch: int  # the epoch of Ray's latest checkpoint (0: none)
    reports: list[dict[str, Any]] = field(default_factory=list)
    stored: bool = False  # a mid-epoch checkpoint of this trial is in the storage

    def checkpointed(self, epoch: int) -> None:
        """Ray holds a checkpoint of `epoch` now: a stored mid-epoch checkpoint is older."""
        self.base_epoch, self.reports = epoch, []
        if self.stored:
            preemption.discard(self.storage.storage_filesystem, self.storage.trial_fs_path)
            self.stored = False


def where(training: KFoldTraining) -> str:
    """Where a mid-epoch checkpoint of `training` stands, in words (for PREEMPTIONS_FILE)."""
    progress, epoch = training.progress, training.epoch + 1
    if progress is None:
        return f"epoch {epoch} not begun"
    fold = training.runs[min(progress.position, len(training.runs) - 1)].fold.index
    if progress.stats is not None:
        return f"epoch {epoch}, fold {fold} trained, its validation to do"
    total = "?" if progress.batches is None else len(progress.batches)
    return f"epoch {epoch}, fold {fold}, after batch {progress.passed.batches} of {total}"


def log_preemption(trial_dir: str, line: str) -> None:
    with open(os.path.join(trial_dir, PREEMPTIONS_FILE), "a") as log:
        log.write(f"pid {os.getpid()}: {line}\n")


def save_preempted(training: KFoldTraining, since: SinceCheckpoint, storage: Any, trial_dir: str) -> None:
    """The process is exiting mid-training: store the state between two batches (see
    trainable.training.preemption), with the results reported since Ray's latest checkpoint."""
    with preemption.local_folder() as local:
        training.save(Path(local))
        since.stored = True
        preemption.upload(Path(local), storage.storage_filesystem, storage.trial_fs_path, since.base_epoch,
                          since.reports)
    log_preemption(trial_dir, f"exiting: checkpointed at {where(training)}")


def resume_preempted(training: KFoldTraining, storage: Any, trial_dir: str) -> SinceCheckpoint:
    """Go on from the trial's mid-epoch checkpoint when it is newer than Ray's (loaded into
    `training`), reporting again the results it saw since Ray's, so that Ray's iteration
    count is the epoch again. What is still to be reported since Ray's checkpoint."""
    since = SinceCheckpoint(storage, training.epoch)
    with preemption.local_folder() as local:
        saved = preemption.download(storage.storage_filesystem, storage.trial_fs_path, Path(local))
        if saved is None:
            return since
        since.stored = True
        if saved["base_epoch"] != training.epoch:  # Ray holds a newer checkpoint (or lost the one it was made on)
            since.checkpointed(training.epoch)
            return since
        training.load(Path(local))
    log_preemption(trial_dir, f"resumed at {where(training)}")
    for metrics in saved["reports"]:
        tune.report(dict(metrics))  # a copy: what Ray adds to a result is not ours to store
    since.reports = list(saved["reports"])
    return since


def report_with_checkpoint(training: KFoldTraining, metrics: dict[str, float]) -> None:
    """Report the epoch's metrics with a checkpoint of the trial's state."""
    with tempfile.TemporaryDirectory(prefix="rfcx-checkpoint-") as directory:
        training.save(directory)
        # Ray copies the directory to the experiment's storage before report returns.
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def gpu_share() -> float:
    """The fraction of a GPU (or the GPUs) Ray assigned this trial: --gpus-per-trial."""
    return ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)


def assigned_device() -> Device:
    """The GPU when Ray assigned this trial one (a fraction counts), else the CPU; torch
    gets one thread per assigned CPU, so packed trials do not oversubscribe the cores."""
    resources = ray.get_runtime_context().get_assigned_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    torch.set_num_threads(cpus)
    if resources.get("GPU", 0) == 0:
        return Device(torch.device("cpu"), cpus)
    if not torch.cuda.is_available():
        # Training on the CPU of a GPU node would be ~100x slower without a word.
        raise RuntimeError("Ray assigned this trial a GPU but CUDA is not available here"
                           " (driver or CUDA build of torch missing on this node)")
    torch.backends.cudnn.benchmark = True  # crops and windows have fixed shapes
    return Device(torch.device("cuda"), cpus)  # Ray's CUDA_VISIBLE_DEVICES maps it to cuda:0
