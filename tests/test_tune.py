"""The trainable under a real `tune.Tuner` on local Ray: metrics, failures, checkpoint and resume."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from ray import tune

from trainable.config import ConfigError
from trainable.reported import METRIC, MODE
from trainable.training.checkpoint import TRIAL_FILE, best_weights_file, fold_file
from trainable.tune import train_sed

pytestmark = pytest.mark.ray

LOSS_TERMS = ("total", "att", "max", "pseudo", "frame")


def fit(param_space: dict, storage, name: str, num_samples: int = 1, max_failures: int = 0,
        callbacks: tuple = ()) -> tune.ResultGrid:
    tuner = tune.Tuner(
        tune.with_resources(train_sed, {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=num_samples),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=list(callbacks),
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit()


def by_train_config(results: tune.ResultGrid) -> dict[str, tune.Result]:
    return {json.dumps(result.config["train"], sort_keys=True): result for result in results}


def test_trials_report_every_metric_and_bad_trials_fail_alone(local_ray, tiny_trial, tmp_path):
    good = tiny_trial["train"]
    diverging = {**good, "lr": 1e30, "min_lr": 0.0}
    misspelt = {**good, "lrr": 0.1}
    space = {**tiny_trial, "train": tune.grid_search([good, diverging, misspelt])}
    results = by_train_config(fit(space, tmp_path, "report", max_failures=1))

    result = results[json.dumps(good, sort_keys=True)]
    assert result.error is None
    rows = result.metrics_dataframe
    assert list(rows.training_iteration) == [1, 2] and list(rows.epoch) == [1, 2]
    assert rows.cv_lwlrap.between(0, 1).all() and (rows.cv_lwlrap > 0).all()
    assert list(rows.best_cv_lwlrap) == list(rows.cv_lwlrap.cummax())
    assert rows.cv_lrap_reference.between(0, 1).all() and rows.cv_lwlrap_fold_best.between(0, 1).all()
    assert list(rows.score) == list(rows.cv_lwlrap_fold_best)  # v1_7 selects each fold at its own best epoch
    folds = rows[["fold/0/lwlrap", "fold/1/lwlrap"]].to_numpy()
    np.testing.assert_allclose(rows.fold_lwlrap_std, folds.std(axis=1))
    for term in LOSS_TERMS:
        assert (rows[f"loss/{term}"] > 0).all() and np.isfinite(rows[f"loss/{term}"]).all()
    assert rows.lr.iloc[0] == pytest.approx(1e-3) and rows.lr.iloc[1] < rows.lr.iloc[0]
    assert (rows.samples_per_s > 0).all()
    with result.checkpoint.as_directory() as directory:
        saved = json.loads(open(os.path.join(directory, TRIAL_FILE)).read())
        assert saved["epoch"] == 2 and saved["score"] == rows.score.iloc[-1]
        assert all(os.path.isfile(os.path.join(directory, name(k))) for k in (0, 1)
                   for name in (fold_file, best_weights_file))

    error = str(results[json.dumps(diverging, sort_keys=True)].error)
    assert "fold 0, epoch 1" in error and "not finite" in error
    assert "an earlier attempt diverged; not retried" in error  # Ray's retry did not train again
    assert "unknown config key train.lrr" in str(results[json.dumps(misspelt, sort_keys=True)].error)


class KillAfterEpoch(tune.Callback):
    """Kills one trial's worker process (as a lost node would) once the driver has its result
    of `epoch`, and records every result the driver receives: (trial id, epoch, process id)."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.killed: str | None = None
        self.reports: list[tuple[str, int, int]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.reports.append((trial.trial_id, result["epoch"], result["pid"]))
        if self.killed is None and result["epoch"] == self.epoch:
            self.killed = trial.trial_id
            os.kill(result["pid"], signal.SIGKILL)


def test_a_killed_trial_repeats_only_the_epochs_since_its_checkpoint_and_ends_like_an_uninterrupted_one(
        local_ray, tiny_trial, tmp_path):
    """Two identical trials of 3 epochs that checkpoint at epoch 1 and at the end only (the
    clock never triggers); one is killed once it reported epoch 2, and Ray retries it from its
    epoch-1 checkpoint. The guide's bound: a killed trial repeats the epochs since its last
    checkpoint, here epoch 2 (reported) and 3 (in flight)."""
    trial = {**tiny_trial, "train": {**tiny_trial["train"], "epochs": 3, "checkpoint_seconds": 1e9,
                                      "checkpoint_epochs": [1]}}
    killer = KillAfterEpoch(2)
    results = fit(trial, tmp_path, "resume", num_samples=2, max_failures=1, callbacks=(killer,))
    assert killer.killed is not None
    interrupted = next(r for r in results if r.metrics["trial_id"] == killer.killed)
    straight = next(r for r in results if r.metrics["trial_id"] != killer.killed)
    assert interrupted.error is None and straight.error is None

    reports = [(epoch, pid) for trial_id, epoch, pid in killer.reports if trial_id == killer.killed]
    # A new process went on from the epoch-1 checkpoint: epoch 2 again, then 3; not from zero.
    assert [epoch for epoch, _ in reports] == [1, 2, 2, 3]
    assert len({pid for _, pid in reports[:2]}) == 1 and reports[2][1] != reports[0][1]
    assert {"cv_lwlrap", "loss/total", "fold/0/lwlrap", "fold/1/lwlrap"} <= set(ours(straight.metrics))
    assert ours(interrupted.metrics) == ours(straight.metrics)
    assert interrupted.metrics["training_iteration"] == 3
    checkpointed = list((tmp_path / "resume").glob("*/checkpoint_*"))
    assert len(checkpointed) == 4  # per trial: epoch 1 and the end, and no other epoch


def ours(metrics: dict) -> dict:
    """The trainable's own numbers, without timings and Ray's bookkeeping."""
    return {k: v for k, v in metrics.items()
            if k in ("epoch", "cv_lwlrap", "best_cv_lwlrap", "cv_lrap_reference", "cv_lwlrap_fold_best", "score",
                     "score_lrap_reference", "fold_lwlrap_std", "lr") or k.startswith(("fold/", "loss/"))}


def test_relative_data_paths_are_refused_before_any_work():
    """Trials run in their own working directory (maybe on another node): a relative path
    would point nowhere, so it fails at once with the reason."""
    with pytest.raises(ConfigError, match="data_dir must be an absolute path, got 'data/synthetic'"):
        train_sed({"data_dir": "data/synthetic"})
    with pytest.raises(ConfigError, match="cache_dir must be an absolute path"):
        train_sed({"data_dir": "/data", "cache_dir": "logmel"})


# Trial processes reused between trials (TuneConfig(reuse_actors=True), as searches run).
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
    first = {**tiny_trial["train"], "seed": 1, "lr": 3e-3, "epochs": 1}  # leaves other weights and RNG states
    second = {**tiny_trial["train"], "seed": 2, "epochs": 1}
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
