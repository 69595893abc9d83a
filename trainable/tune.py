"""The Ray Tune trainable: the full k-fold training of one configuration as one trial.

The only module of `trainable` that imports Ray. Everything else a trial does lives in
Ray-free modules (trainable.training.kfold, trainable.training.fit, ...), so it can be tested,
benchmarked and exported without a cluster. One `training_iteration` = one epoch on every fold
(trainable.reported: what a trial reports); every iteration reports the metrics, and a
checkpoint when `trainable.training.cadence` says so (by the clock, at the scheduler's
milestones and at the end), so the scheduler can stop the trial there and Ray can resume it. A
process that exits mid-epoch (SIGTERM: a draining or reclaimed node) checkpoints at the next
batch boundary into the trial's storage folder (`trainable.training.preemption`), and the retry
goes on from there. A checkpoint that cannot be read is named in one line, and the trial goes
on from the newest one that can (`trainable.training.fallback`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainable.atomic import DiskFullError, is_disk_full
from trainable.config import ConfigError, TrainConfig, TrialConfig, resolve
from trainable.reported import EPOCH, ITERATION
from trainable.training import fallback, preemption
from trainable.training.cadence import CheckpointCadence
from trainable.training.checkpoint import why_unreadable
from trainable.training.fit import Device, DivergedError
from trainable.training.kfold import KFoldTraining
from trainable.training.out_of_memory import OutOfGPUMemoryError, out_of_memory_message

DIVERGED_FILE = "diverged.txt"  # in the trial directory: why the trial diverged
OUT_OF_MEMORY_FILE = "out_of_gpu_memory.txt"  # in the trial directory: the line the trial ended with
PREEMPTIONS_FILE = "preemptions.txt"  # in the trial directory: where each exit checkpointed, where each retry resumed
UNREADABLE_FILE = "unreadable_checkpoints.txt"  # in the trial directory: unreadable checkpoints, where it went on


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
    # Taken here: the exit function runs in the main thread, outside the trial's session.
    storage = tune.get_context().get_storage()
    training, since = resume(trial, assigned_device(), tune.get_checkpoint(), storage, trial_dir)
    cadence = CheckpointCadence(trial.train)
    with preemption.ExitCheckpoint(lambda: save_preempted(training, since, storage, trial_dir)) as on_exit:
        training.at_boundary = on_exit.at_boundary
        while training.epoch < trial.train.epochs:
            metrics = run_epoch(training, trial.train, diverged, out_of_memory)
            if since.reported_already(training.epoch):  # trained again after a fallback to an earlier checkpoint
                continue
            with on_exit.idle():  # reporting changes nothing a checkpoint holds
                if cadence.due(training.epoch):
                    report_with_checkpoint(training, since.as_reported(metrics))
                    cadence.saved()
                    since.checkpointed(training.epoch)
                else:
                    tune.report(since.as_reported(metrics))
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
    """What a mid-epoch checkpoint must add to Ray's latest: the results reported since then.
    Ray's count of the trial's reports (its iteration) is `base_epoch` + len(`reports`)."""

    storage: Any  # the trial's ray.train._internal.storage.StorageContext
    base_epoch: int  # the epoch of Ray's latest checkpoint (0: none)
    reports: list[dict[str, Any]] = field(default_factory=list)
    stored: bool = False  # a mid-epoch checkpoint of this trial is in the storage
    # Ray's latest checkpoint could not be read at all, so its epoch (Ray's iteration count) is
    # unknown: every report of this process names its iteration (the epoch) itself.
    unknown_base: bool = False

    def reported_already(self, epoch: int) -> bool:
        """Whether Ray has a result of `epoch`: one trained again from an earlier checkpoint than
        Ray's latest (trainable.training.fallback) is not reported again, so that Ray's
        iteration count stays the epoch (trainable.reported)."""
        return not self.unknown_base and epoch <= self.base_epoch + len(self.reports)

    def as_reported(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """`metrics` as they are reported: with the iteration named (the epoch) where Ray's count is unknown.
        Ray's Trainable fills in its own count only where a result names none (setdefault), and a
        checkpoint's result carries it to the next restore."""
        return {**metrics, ITERATION: metrics[EPOCH]} if self.unknown_base else metrics

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


def resume(trial: TrialConfig, device: Device, checkpoint: tune.Checkpoint | None, storage: Any,
           trial_dir: str) -> tuple[KFoldTraining, SinceCheckpoint]:
    """The trial's training as its newest readable checkpoint left it, and what Ray was told since
    Ray's latest checkpoint (`checkpoint`; None: none).

    Newest first: the mid-epoch checkpoint made on Ray's latest (trainable.training.preemption),
    Ray's latest, Ray's earlier one. Each that cannot be read is said in one line
    (trainable.training.fallback), and with none readable the trial starts over from epoch 0.
    None of that fails the trial, so it costs none of Ray's retries (FailureConfig): every retry
    would meet the same file.
    """
    say = unreadable_log(trial_dir)
    new = lambda: KFoldTraining(trial, device)  # noqa: E731
    ray_epoch = 0 if checkpoint is None else fallback.checkpoint_epoch(checkpoint.filesystem, checkpoint.path)
    since = SinceCheckpoint(storage, ray_epoch or 0, unknown_base=ray_epoch is None)
    training = resume_preempted(new, since, trial_dir, say)
    if training is not None:
        return training, since
    paths = [] if checkpoint is None else fallback.ray_checkpoints(checkpoint.filesystem, checkpoint.path)
    loaded = None if checkpoint is None else fallback.load_newest_readable(new, checkpoint.filesystem, paths, say)
    if loaded is not None:
        training, path = loaded
        if path == paths[0] and since.unknown_base:  # its trial.json did not read at first, then did
            since.base_epoch, since.unknown_base = training.epoch, False
        if path != paths[0] or since.stored:  # an earlier one, or after an unreadable mid-epoch checkpoint
            say(f"went on from {path} (epoch {training.epoch}){after_fallback(training.epoch, since)}")
        return training, since
    training = new()
    if trial.init_from:  # a later stage starts from an earlier trial's fold models
        training.initialise_from(trial.init_from)
    if paths or since.stored:
        say(f"no readable checkpoint: the trial starts over from epoch 0{after_fallback(0, since)}")
    return training, since


def after_fallback(epoch: int, since: SinceCheckpoint) -> str:
    """What the trial does about the epochs Ray has results of, after going back to `epoch`."""
    if since.unknown_base:
        return (f"; the epoch of Ray's latest checkpoint is unknown, so epochs {epoch + 1} on are reported"
                f" again, each under its own iteration")
    if since.base_epoch <= epoch:
        return ""
    last = since.base_epoch
    if last == epoch + 1:
        return f"; epoch {last} is trained again without being reported (Ray has its result)"
    return f"; epochs {epoch + 1}-{last} are trained again without being reported (Ray has their results)"


def unreadable_log(trial_dir: str) -> Callable[[str], None]:
    """Says a line of a checkpoint fallback on the trial's stderr (the driver's console shows it)
    and appends it to the trial directory's UNREADABLE_FILE."""
    trial_id = tune.get_context().get_trial_id()

    def say(line: str) -> None:
        print(f"trial {trial_id}: {line}", file=sys.stderr, flush=True)
        with open(os.path.join(trial_dir, UNREADABLE_FILE), "a") as log:
            log.write(f"pid {os.getpid()}: {line}\n")

    return say


def resume_preempted(new: Callable[[], KFoldTraining], since: SinceCheckpoint, trial_dir: str,
                     say: Callable[[str], None]) -> KFoldTraining | None:
    """Go on from the trial's mid-epoch checkpoint when it was made on Ray's latest (a new
    training, `new()`, loaded from it), reporting again the results it saw since Ray's, so that
    Ray's iteration count is the epoch again; None: none, an older one, or one that cannot be
    read. `since`: what is still to be reported since Ray's checkpoint."""
    storage = since.storage
    folder = f"{storage.trial_fs_path.rstrip('/')}/{preemption.FOLDER}"
    with preemption.local_folder() as local:
        try:
            saved = preemption.download(storage.storage_filesystem, storage.trial_fs_path, Path(local))
        except (OSError, ValueError) as error:  # the copy, or its reports.json
            since.stored = True  # deleted at Ray's next checkpoint
            say(f"unreadable checkpoint: {folder} ({why_unreadable(error)})")
            return None
        if saved is None:
            return None
        since.stored = True
        if not since.unknown_base and saved["base_epoch"] != since.base_epoch:
            since.checkpointed(since.base_epoch)  # Ray holds a newer checkpoint (or lost the one it was made on)
            return None
        training = fallback.load_local(new, Path(local), folder, say)
        if training is None:
            return None
    log_preemption(trial_dir, f"resumed at {where(training)}")
    for metrics in saved["reports"]:
        tune.report(since.as_reported(dict(metrics)))  # a copy: what Ray adds to a result is not ours to store
    since.reports = list(saved["reports"])
    return training


def report_with_checkpoint(training: KFoldTraining, metrics: dict[str, float]) -> None:
    """Report the epoch's metrics with a checkpoint of the trial's state.

    Raises:
        DiskFullError: the storage had no room for the checkpoint; the line names it, its folder
            and its size (the driver stops the search on it: search.tuner.full_disk).
    """
    with tempfile.TemporaryDirectory(prefix="rfcx-checkpoint-") as directory:
        training.save(directory)
        try:  # Ray copies the directory to the experiment's storage before report returns
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        except OSError as error:
            if not is_disk_full(error):
                raise
            size = sum(file.stat().st_size for file in Path(directory).iterdir())
            raise DiskFullError(tune.get_context().get_storage().checkpoint_fs_path, needed=size) from None


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
