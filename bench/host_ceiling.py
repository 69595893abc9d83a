"""Host ceiling: what the host side of a trial delivers when the model costs nothing, at the
recipe's shapes, so it can be compared with what a GPU consumes.

    python -m bench.host_ceiling [--epochs 2] [--workers 0 1]

The trainable's own epoch (KFoldTraining.run_epoch: all 5 folds, the crop plan, the loader over
the memory-mapped cache, targets, the clip image, augmentation and mixup, the loss and its
bookkeeping, the validation windows and both scores) runs with timm's backbone replaced by a
near-free stub of resnet18's output shape, on a dataset of the real competition's size
(bench.real_sized: 60 s clips, 1,100 tp recordings and their fp recordings). Then:

- the training data path alone (the loader over one fold's epoch plan: crops, targets,
  statistics, collation) and the evaluation path alone (the validation windows of one fold),
  per core: the loader's workers and the trial's process each count as one;
- the checkpoint of the recipe's real state (resnet18's weights, Adam's moments and the
  selected weights of 5 folds): bytes, the seconds to write it, and the seconds of the copy
  Ray makes to the experiment's storage inside `tune.report`;
- the share of an epoch each part takes, and the share checkpoints take of a whole trial at
  GPU speed under the checkpoint policy (trainable.training.cadence), projected for epochs of
  GPU_EPOCH_S seconds: an assumption until a GPU epoch has been measured.

Targets per core: training data path >= 2,500 samples/s, evaluation path >= 5,000 windows/s,
checkpoints <= 5% of a trial's wall time at GPU speed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.fs
import timm
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import cores, header, timed, verdict
from bench.real_sized import real_sized_data
from search.stopping import SCHEDULERS
from trainable.config import ModelConfig, TrainConfig, TrialConfig, from_dict
from trainable.data.crops import TrainCrops, epoch_crops, epoch_size
from trainable.data.windows import ClipWindows, window_starts
from trainable.model.sed import SEDModel
from trainable.training.cadence import CheckpointCadence
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining
from trainable.training.loader import EpochBatches, shuffled_batches, training_loader
from trainable.training.selection import weights_copy

TRAIN_TARGET, EVAL_TARGET, CHECKPOINT_TARGET = 2500.0, 5000.0, 0.05
GPU_EPOCH_S = 2.0  # assumed: an H100-class GPU's share of a 5-fold resnet18 epoch (not yet measured)
STUB = "host_ceiling_stub"


class StubBackbone(nn.Module):
    """resnet18's output shape, (B, 512, H/32, W/32), for almost no compute."""

    num_features = 512

    def __init__(self, in_chans: int = 3, **_: object):
        super().__init__()
        self.project = nn.Conv2d(in_chans, self.num_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(F.avg_pool2d(x, 32))


@timm.models.register_model
def host_ceiling_stub(pretrained: bool = False, **kwargs: Any) -> StubBackbone:
    return StubBackbone(**kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.host_ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs of the stub trial; the last is measured, the first warms the maps (default: 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({0, cores() - 1}),
                        help="loader workers to measure the training data path with (default: 0 and cores - 1)")
    return parser.parse_args(argv)


def stub_trial(data: Path) -> KFoldTraining:
    """The recipe's trial (v1_7: 5 folds, batch 64, 128 x 512 crops) with the stub backbone."""
    config = from_dict(TrialConfig, {"data_dir": str(data), "model": {"backbone": STUB, "pretrained": False}})
    return KFoldTraining(config, Device(torch.device("cpu")))


def elapsed(work: Callable[[], object]) -> float:
    """Seconds `work` takes."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def training_data_rate(training: KFoldTraining, workers: int) -> tuple[int, float]:
    """Samples/s per core of the training loader over fold 0's epoch plan, no model."""
    run, config = training.runs[0], training.config
    crops = epoch_crops(run.fold, training.annotations.tp, training.annotations.fp, config.data,
                        training.frames_per_second, run.rng)
    batches = EpochBatches()
    loader = training_loader(TrainCrops(training.cache, training.labels, training.annotations.n_species, config.data),
                             batches, workers, pin_memory=False)

    def one_pass() -> int:
        batches.batches = shuffled_batches(crops, config.train.batch_size, torch.Generator().manual_seed(0))
        return sum(len(x) for x, _, _ in loader)

    samples = one_pass()  # workers started, maps opened, clip statistics known: as from epoch 2 on
    return samples, timed(one_pass) / max(workers, 1)


def evaluation_rate(training: KFoldTraining) -> tuple[int, float]:
    """Windows/s per core of fold 0's validation windows, no model (in the trial's process)."""
    run, config = training.runs[0], training.config
    windows = ClipWindows.validation(training.cache, run.fold, training.annotations.tp, training.annotations.n_species,
                                     config.data)
    loader = windows.batches(config.train.eval_recordings)

    def one_pass() -> int:
        return sum(len(x) for x, _, _, _ in loader)

    return one_pass(), timed(one_pass)


def with_recipe_state(training: KFoldTraining, backbone: str = "resnet18") -> None:
    """Give the stub trial the recipe model's state (weights, Adam's moments, selected weights),
    so its checkpoint has the real size."""
    for run in training.runs:
        run.model = SEDModel(ModelConfig(backbone=backbone, pretrained=False), training.annotations.n_species)
        run.optimizer = torch.optim.Adam(run.model.parameters(), lr=training.config.train.lr)
        for parameter in run.model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        run.optimizer.step()  # Adam's moments exist from the first step on
        run.scheduler.optimizer = run.optimizer
        training.selection.weights[run.fold.index] = weights_copy(run.model)


def checkpoint_cost(training: KFoldTraining) -> tuple[int, float, float]:
    """Bytes, seconds to write, seconds of Ray's copy to storage (pyarrow.fs.copy_files with the
    chunk size Ray uses), of one checkpoint; the median of 3.

    Each starts from a synced disk, as in a trial, whose checkpoints are epochs apart: the
    kernel has written the previous one out by then. Back to back, the later ones would wait for
    the disk to take the earlier ones' dirty pages.
    """
    local = pyarrow.fs.LocalFileSystem()
    runs = []
    for _ in range(3):
        os.sync()
        with tempfile.TemporaryDirectory(prefix="rfcx-bench-ckpt-") as scratch:
            source, storage = Path(scratch) / "checkpoint", Path(scratch) / "storage"
            write = elapsed(partial(training.save, source))
            size = sum(path.stat().st_size for path in source.iterdir())
            storage.mkdir()
            copy = elapsed(partial(pyarrow.fs.copy_files, str(source), str(storage), source_filesystem=local,
                                   destination_filesystem=local, chunk_size=64 * 1024 * 1024))
            runs.append((size, write, copy))
    return sorted(runs, key=lambda run: run[1] + run[2])[1]


def checkpoints_in_a_trial(train: TrainConfig, epoch_s: float, checkpoint_s: float) -> int:
    """How many checkpoints the policy writes over `train.epochs` epochs of `epoch_s` seconds."""
    now = [0.0]
    cadence = CheckpointCadence(train, clock=lambda: now[0])
    count = 0
    for epoch in range(1, train.epochs + 1):
        now[0] += epoch_s
        if cadence.due(epoch):
            now[0] += checkpoint_s
            cadence.saved()
            count += 1
    return count


def epoch_items(training: KFoldTraining) -> tuple[int, int]:
    """Training crops and validation windows of one epoch over all folds."""
    data, tp = training.config.data, training.annotations.tp
    crops = sum(epoch_size(run.fold, tp, data) for run in training.runs)
    windows = sum(len(window_starts(training.cache.load("train", rid).shape[1], data.crop_frames, data.valid_overlap,
                                    data.window_rule)) for run in training.runs for rid in run.fold.valid_ids)
    return crops, windows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = real_sized_data()
    training = stub_trial(data)
    folds, train = len(training.runs), training.config.train
    tp_recordings = training.annotations.tp.recording.nunique()
    header(f"host ceiling: the recipe's trial ({folds} folds, batch {train.batch_size}, 128 x"
           f" {training.config.data.crop_frames}) with a stub backbone, {tp_recordings} tp recordings of 60 s,"
           f" 1 torch thread")
    for _ in range(args.epochs):
        epoch_s = elapsed(training.run_epoch)
    crops, windows = epoch_items(training)
    rates = {workers: training_data_rate(training, workers) for workers in args.workers}
    fold_windows, eval_rate = evaluation_rate(training)
    with_recipe_state(training)
    size, write_s, copy_s = checkpoint_cost(training)

    print("training data path (crops, targets, statistics, collation; per core: the workers, or the trial's process):")
    for workers, (samples, rate) in rates.items():
        where = f"{workers} loader worker{'s' if workers > 1 else ''}" if workers else "in the trial's process"
        print(f"  {where}: {rate:,.0f} samples/s per core ({samples} crops of fold 0)"
              f" (target >= {TRAIN_TARGET:,.0f}: {verdict(rate, TRAIN_TARGET)})")
    print(f"evaluation path (validation windows of fold 0, in the trial's process): {eval_rate:,.0f} windows/s per"
          f" core ({fold_windows} windows) (target >= {EVAL_TARGET:,.0f}: {verdict(eval_rate, EVAL_TARGET)})")
    print(f"checkpoint of the recipe's state (resnet18, {folds} folds): {size / 1e6:,.0f} MB, write {write_s:.2f} s,"
          f" Ray's copy to local storage {copy_s:.2f} s (from a synced disk)")

    per_checkpoint = write_s + copy_s
    data_s, eval_s = crops / rates[min(rates)][1], windows / eval_rate
    print(f"\nthe stub epoch: {crops} crops and {windows} windows in {epoch_s:.1f} s on this CPU, where the CPU"
          f" also does the device's work; its parts:")
    parts = {"training data path": data_s, "evaluation path": eval_s,
             "device work here (clip image, augmentation, mixup, stub, loss, Adam, scores)": epoch_s - data_s - eval_s,
             "a checkpoint every epoch (write + copy)": per_checkpoint}
    for name, seconds in parts.items():
        print(f"  {name}: {seconds:.2f} s, {seconds / (epoch_s + per_checkpoint):.0%}")
    print(f"at GPU speed ({GPU_EPOCH_S:g} s of GPU work per epoch, assumed), the host's parts in one core:"
          f" {data_s + eval_s:.2f} s of data per epoch, {(data_s + eval_s) / GPU_EPOCH_S:.0%} of the GPU's time")

    print_checkpoint_policy(train, per_checkpoint)


def print_checkpoint_policy(train: TrainConfig, per_checkpoint: float) -> None:
    """The share of a trial's wall time its checkpoints take at GPU speed: under the checkpoint
    policy (by the clock, at ASHA's rungs, at the end), and checkpointing every epoch."""
    asha = SCHEDULERS["asha"]  # the default search's scheduler at its default settings
    rungs = asha.milestones(asha.resolve({}, train.epochs), train.epochs)
    policy = TrainConfig(epochs=train.epochs, checkpoint_epochs=tuple(rungs))
    every = TrainConfig(epochs=train.epochs, checkpoint_seconds=0)
    for name, config in ((f"the policy (every {policy.checkpoint_seconds:.0f} s, ASHA's rungs {list(rungs)}, the end)",
                          policy), ("every epoch (before the policy)", every)):
        count = checkpoints_in_a_trial(config, GPU_EPOCH_S, per_checkpoint)
        share = count * per_checkpoint / (train.epochs * GPU_EPOCH_S + count * per_checkpoint)
        print(f"checkpoints of a {train.epochs}-epoch trial at GPU speed ({GPU_EPOCH_S:g} s per epoch, assumed),"
              f" {name}: {count}, {share:.1%} of its wall time (target <= {CHECKPOINT_TARGET:.0%}:"
              f" {verdict(share, CHECKPOINT_TARGET, higher_is_better=False)})")


if __name__ == "__main__":
    main()
