"""The optimiser of a fold and its learning-rate schedule (TrainConfig.lr, schedule, t_max,
min_lr): Adam under a cosine, stepped per batch as the reference did or per epoch and clamped.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainable.config import TrainConfig


def adam(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Adam:
    """A fold's optimiser over the model's `parameters`, at TrainConfig.lr."""
    return torch.optim.Adam(parameters, lr=train.lr)


def step_clamped(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, t_max: int) -> None:
    """End an epoch of a cosine schedule that stays at its floor after t_max epochs.

    The reference stepped CosineAnnealingLR past T_max, so its lr climbed back up and
    oscillated for the rest of the 50 epochs ("cosine_per_batch").
    """
    if scheduler.last_epoch < t_max:
        scheduler.step()


def batches_per_epoch(items: int, batch_size: int) -> int:
    """Batches of trainable.training.loader.shuffled_batches over `items` items."""
    return items // batch_size + (items % batch_size > 1)


def cosine(optimizer: torch.optim.Optimizer, train: TrainConfig,
           batches: int) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The cosine of TrainConfig.schedule: T_max = batches x t_max steps per batch (the
    reference's), or t_max per epoch."""
    steps = train.t_max * (batches if train.schedule == "cosine_per_batch" else 1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=train.min_lr)
