"""The training data loader of a trial: the batches of an epoch's items (crops or whole clips)
and the one loader, with its worker processes, that serves them to every fold and epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from trainable.config import TrainConfig
from trainable.data.clips import ClipSpec, TrainClips
from trainable.data.crops import CropSpec, TrainCrops
from trainable.training.fit import Device

PREFETCH_BATCHES = 2  # per loader worker: batches ready while the device trains on this one


def loader_workers(train: TrainConfig, device: Device) -> int:
    """TrainConfig.loader_workers, or for -1 the assigned CPUs beyond the one that drives the
    device on CUDA; on the CPU the model's compute needs every core and the data path is a few
    per cent of a step, so none there."""
    if train.loader_workers >= 0:
        return train.loader_workers
    return max(device.cpus - 1, 0) if device.cuda else 0


def training_loader(dataset: TrainCrops | TrainClips, batches: EpochBatches, workers: int, pin_memory: bool,
                    collate: Callable | None = None) -> DataLoader:
    """One loader for every fold and epoch of a trial: its batches are set before each pass,
    and its workers persist, so no epoch pays for starting processes. `collate`: how items make
    a batch (None: torch's default, field by field)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory, collate_fn=collate,
                      persistent_workers=workers > 0, prefetch_factor=PREFETCH_BATCHES if workers else None)


def shuffled_batches(crops: Sequence[CropSpec | ClipSpec], batch_size: int,
                     generator: torch.Generator) -> list[list[CropSpec | ClipSpec]]:
    """An epoch's crops in random order, in batches, never a last batch of one sample.

    The order is the one a shuffling DataLoader drew from `generator` before trials kept one
    loader (its iterator takes a base seed first, then RandomSampler a permutation), so trials
    and their checkpoints go on with the numbers they had. A batch of one breaks BatchNorm in
    training mode (resnest's split attention pools to 1x1), so only such a lone sample is
    dropped; a dataset smaller than a batch still trains.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader iterator's base seed
    order = torch.randperm(len(crops), generator=generator).tolist()
    batches = [[crops[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]
    return batches[:-1] if batches and len(batches[-1]) == 1 else batches


class EpochBatches(Sampler):
    """The batches of the loader's next pass, set before each pass (see training_loader)."""

    def __init__(self):
        self.batches: list[list[CropSpec | ClipSpec]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
