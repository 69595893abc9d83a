"""The Ray Tune trainable: the full k-fold training of one configuration as one trial.

The only module of `trainable` that imports Ray. Everything else a trial does lives in
Ray-free modules (kfold, fit, ...), so it can be tested, benchmarked and exported without a
cluster. One `training_iteration` = one epoch on every fold; every iteration reports the
metrics and a checkpoint, so ASHA can stop the trial at any epoch and Ray can resume it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ray
import torch
from ray import tune

from trainable.config import ConfigError
from trainable.recipes import resolve
from trainable.fit import Device, DivergedError
from trainable.kfold import KFoldTraining

METRIC, MODE = "cv_lwlrap", "max"  # what ASHA compares at each epoch
# The trial's score by its recipe's selection (trainable.selection): what Optuna is told of a
# completed trial, what the leaderboard ranks, and the weights export and --init-from use.
SCORE = "score"
DIVERGED_FILE = "diverged.txt"  # in the trial directory: why the trial diverged


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
    """
    trial = resolve(config)
    for key in ("data_dir", "cache_dir", "teacher_file", "init_from"):
        path = getattr(trial, key)
        if path and not os.path.isabs(path):
            raise ConfigError(f"{key} must be an absolute path, got {path!r}: a trial runs in its own"
                              f" working directory, maybe on another node")
    diverged = os.path.join(tune.get_context().get_trial_dir(), DIVERGED_FILE)
    if os.path.exists(diverged):
        # Ray retries failed trials (FailureConfig); a divergence would only repeat itself.
        with open(diverged) as marker:
            raise DivergedError(f"{marker.read()} (an earlier attempt diverged; not retried)")
    training = KFoldTraining(trial, assigned_device())
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            training.load(directory)
    elif trial.init_from:  # a later stage starts from an earlier trial's fold models
        training.initialise_from(trial.init_from)
    while training.epoch < trial.train.epochs:
        try:
            metrics = training.run_epoch()
        except DivergedError as error:
            with open(diverged, "w") as marker:
                marker.write(str(error))
            raise
        with tempfile.TemporaryDirectory(prefix="rfcx-checkpoint-") as directory:
            training.save(directory)
            # Ray copies the directory to the experiment's storage before report returns.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def assigned_device() -> Device:
    """The GPU when Ray assigned this trial one (a fraction counts), else the CPU; torch
    gets one thread per assigned CPU, so packed trials do not oversubscribe the cores."""
    resources = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    if resources.get("GPU", 0) == 0:
        return Device(torch.device("cpu"))
    if not torch.cuda.is_available():
        # Training on the CPU of a GPU node would be ~100x slower without a word.
        raise RuntimeError("Ray assigned this trial a GPU but CUDA is not available here"
                           " (driver or CUDA build of torch missing on this node)")
    torch.backends.cudnn.benchmark = True  # crops and windows have fixed shapes
    return Device(torch.device("cuda"))  # Ray's CUDA_VISIBLE_DEVICES maps it to cuda:0
