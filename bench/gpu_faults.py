"""The GPU check's failure paths, each a real trial (trainable.tune.train_sed) under a local Ray
with the GPU: running out of GPU memory (one line, the retry refused at once) and SIGTERM mid-epoch
(a checkpoint at the next batch boundary, the retry resuming there with the CUDA random
generator's state). As tests/test_out_of_memory.py and tests/test_preemption.py check them on
the CPU; the words of each row come from functions of what was observed, tested on the CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from bench.common import cores
from bench.gpu_check import CheckFailed, Row, attempt
from bench.gpu_parts import data

IMPOSSIBLE_BATCH = 100_000  # more crops than an epoch has: one batch of all of them
LEFT_FREE = 8 * 2**30  # bytes of the GPU left to the trial: a batch of every crop needs several times more
TERM_SHARE = 0.15  # SIGTERM this share of epoch 1's time after its result: early in epoch 2 (1 has the warm-up)


def local_ray() -> None:
    import ray

    ray.init(address="local", num_cpus=cores(), num_gpus=1, include_dashboard=False, configure_logging=False,
             log_to_driver=False)


def tuner(config: dict, storage: str, name: str, callbacks: list | None = None):
    from ray import tune

    from trainable.reported import METRIC, MODE
    from trainable.tune import train_sed

    return tune.Tuner(tune.with_resources(train_sed, {"cpu": cores(), "gpu": 1}), param_space=config,
                      tune_config=tune.TuneConfig(metric=METRIC, mode=MODE),
                      run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=callbacks or [],
                                                failure_config=tune.FailureConfig(max_failures=1)))


def oom_rows(args: argparse.Namespace) -> list[Row]:
    """A trial of the recipe at train.batch_size IMPOSSIBLE_BATCH with LEFT_FREE of the GPU left to it."""
    from trainable.config import resolve
    from trainable.training.out_of_memory import out_of_memory_message

    config = {"data_dir": str(data(args)), "model": {"pretrained": False},
              "train": {"epochs": 1, "batch_size": IMPOSSIBLE_BATCH}}
    expected = out_of_memory_message(1.0, resolve(config).train)
    free, _ = torch.cuda.mem_get_info()
    ballast = torch.empty(max(free - LEFT_FREE, 0), dtype=torch.uint8, device="cuda")  # held to the end
    local_ray()
    with tempfile.TemporaryDirectory(prefix="rfcx-gpu-check-oom-") as storage:
        [result] = tuner(config, storage, "oom").fit()
        error_file = Path(result.path) / "error.txt"
        errors = error_file.read_text() if error_file.exists() else ""
    del ballast
    check = (f"out of GPU memory: train.batch_size {IMPOSSIBLE_BATCH:,} (every crop of a fold's epoch in one batch),"
             f" {LEFT_FREE // 2**30} GB of the GPU left to the trial")
    return [attempt(check, lambda: oom_words(expected, errors))]


def oom_words(expected: str, errors: str) -> str:
    """What Ray's error.txt of the trial shows: the trial ran out of memory in its epoch and ended
    with `expected`, one line without CUDA's allocator report; its one retry failed with the same
    line before training (trainable.tune.refuse_a_failed_trial)."""
    failures = re.split(r"^Failure # \d+ .*$", errors, flags=re.MULTILINE)[1:]
    if not failures:
        raise CheckFailed("no failure: the batch fit (the trial trained its epoch)")
    if len(failures) != 2:
        raise CheckFailed(f"{len(failures)} failures in the trial's error.txt (want 2: the trial and its one retry)")
    first, retry = failures
    for name, failure in (("the trial", first), ("its retry", retry)):
        if not failure.strip().splitlines()[-1].endswith(f"OutOfGPUMemoryError: {expected}"):
            raise CheckFailed(f"{name} did not end with the out-of-memory line: {failure.strip().splitlines()[-1]}")
    if "Tried to allocate" in errors:
        raise CheckFailed("CUDA's allocator report is in the trial's error")
    if "in run_epoch" not in first or "in refuse_a_failed_trial" not in retry or "in run_epoch" in retry:
        raise CheckFailed("the trial did not fail in run_epoch and its retry in refuse_a_failed_trial")
    return (f"one line: `{expected.split(': ')[0]}` (and the advice); no allocator report; the retry failed at"
            f" once with it, before training (refuse_a_failed_trial)")


def terminate_in_epoch() -> Any:
    """A Ray Tune callback: SIGTERM to the trial's process TERM_SHARE of epoch 1's time after its
    result, as Ray does to the processes of a draining node (a share: the first epoch's time is
    known only then). It records every result (epoch, pid) and, at the retry's first result, the
    random generators' states in the mid-epoch checkpoint the retry resumed from (`saved_rng`;
    the retry deletes the checkpoint once it has one of Ray's, at the end of epoch 2)."""
    from ray import tune

    from trainable.training.checkpoint import EPOCH_TENSORS
    from trainable.training.preemption import FOLDER

    class Terminate(tune.Callback):
        def __init__(self) -> None:
            self.reports: list[tuple[int, int]] = []
            self.trial_dir: Path | None = None
            self.saved_rng: dict[str, torch.Tensor] | None = None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.reports.append((result["epoch"], result["pid"]))
            self.trial_dir = Path(trial.storage.trial_working_directory)
            if len(self.reports) == 1:
                delay = TERM_SHARE * result["time_this_iter_s"]
                threading.Timer(delay, os.kill, (result["pid"], signal.SIGTERM)).start()
            elif self.saved_rng is None and result["pid"] != self.reports[0][1]:
                tensors = Path(trial.storage.trial_fs_path) / FOLDER / EPOCH_TENSORS
                if tensors.exists():
                    self.saved_rng = torch.load(tensors, weights_only=True)["rng"]

    return Terminate()


def sigterm_rows(args: argparse.Namespace) -> list[Row]:
    """The recipe's trial for 2 epochs (no checkpoint before the end), SIGTERM in epoch 2; then,
    in this process, a mid-epoch checkpoint on the GPU saved and loaded."""
    from trainable.tune import PREEMPTIONS_FILE

    where = data(args)
    config = {"data_dir": str(where), "model": {"pretrained": False}, "train": {"epochs": 2}}
    local_ray()
    terminate = terminate_in_epoch()
    with tempfile.TemporaryDirectory(prefix="rfcx-gpu-check-sigterm-") as storage:
        [result] = tuner(config, storage, "sigterm", [terminate]).fit()
        log = terminate.trial_dir / PREEMPTIONS_FILE if terminate.trial_dir else None
        lines = log.read_text().splitlines() if log and log.exists() else []
    check = "SIGTERM mid-epoch (the recipe's trial, 2 epochs, under Ray), the retry"

    def preempted() -> str:
        if result.error is not None:
            raise CheckFailed(f"the trial failed: {str(result.error).strip().splitlines()[-1]}")
        return preemption_words(terminate.reports, lines) + "; " + saved_state_words(terminate.saved_rng)

    return [attempt(check, preempted),
            attempt("the CUDA generator's state across a mid-epoch checkpoint (in this process)",
                    lambda: restored_state_words(where))]


def saved_state_words(saved: dict[str, torch.Tensor] | None) -> str:
    """What the checkpoint the retry resumed from held of torch's generators."""
    if saved is None:
        raise CheckFailed("the mid-epoch checkpoint was gone at the retry's first result")
    if "cuda" not in saved:
        raise CheckFailed("the mid-epoch checkpoint holds no CUDA generator state")
    return f"the checkpoint held the CUDA generator's state ({saved['cuda'].numel()} bytes)"


def preemption_words(reports: list[tuple[int, int]], lines: list[str]) -> str:
    """The trial's results and its preemptions log show: the first process reported epoch 1, got
    SIGTERM in epoch 2 and checkpointed between two batches; another process reported epoch 1
    again from that checkpoint, resumed where it was taken and finished epoch 2."""
    if [epoch for epoch, _ in reports] != [1, 1, 2] or reports[0][1] == reports[1][1] or \
            reports[1][1] != reports[2][1]:
        raise CheckFailed(f"results (epoch, pid) {reports}: want epoch 1, then epochs 1 and 2 from a retry's process")
    pid, retry = reports[0][1], reports[1][1]
    stopped = re.fullmatch(rf"pid {pid}: exiting: checkpointed at (epoch 2, .*)", lines[0]) if lines else None
    if len(lines) != 2 or not stopped or lines[1] != f"pid {retry}: resumed at {stopped.group(1)}":
        raise CheckFailed(f"the preemptions log has {lines}: want the exit's checkpoint and the retry resuming there")
    return f"checkpointed at {stopped.group(1)}; the retry (another process) resumed there and finished epoch 2"


class Stop(Exception):
    """Raised at a chosen batch boundary: where the checkpoint is taken."""


def restored_state_words(where: Path) -> str:
    """Fold 0 of the recipe's trial stopped after its second batch on the GPU and saved; a new
    trial loads the checkpoint after the CUDA generator moved on: its state is the saved one again
    (trainable.training.checkpoint._load_progress), as the retry's is."""
    from bench.common import trial
    from bench.gpu_parts import recipe_device
    from trainable.training.checkpoint import EPOCH_TENSORS

    overrides = {"model.backbone": "resnet18", "train.folds": [0]}
    training, boundaries = trial(overrides, recipe_device(), where), [0]

    def stop_at_the_second() -> None:
        boundaries[0] += 1
        if boundaries[0] == 2:
            raise Stop

    training.at_boundary = stop_at_the_second
    try:
        training.run_epoch()
    except Stop:
        pass
    with tempfile.TemporaryDirectory(prefix="rfcx-gpu-check-rng-") as folder:
        training.save(folder)
        saved = torch.load(Path(folder) / EPOCH_TENSORS, weights_only=True)["rng"]
        if "cuda" not in saved:
            raise CheckFailed("a mid-epoch checkpoint on the GPU holds no CUDA generator state")
        fresh = trial(overrides, recipe_device(), where)
        torch.rand(1000, device="cuda")  # the generator moves on
        moved = not torch.equal(torch.cuda.get_rng_state(), saved["cuda"])
        fresh.load(folder)
    if not moved or not torch.equal(torch.cuda.get_rng_state(), saved["cuda"]):
        raise CheckFailed("loading the mid-epoch checkpoint did not set the CUDA generator's state back")
    return "saved after fold 0's second batch, set back on loading after the generator had moved on"
