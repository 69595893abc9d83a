"""When a trial checkpoints: by the clock, at the given epochs (ASHA's rungs) and at the end."""

from __future__ import annotations

from trainable.checkpoints import CheckpointCadence
from trainable.config import TrainConfig


def checkpointed_epochs(train: TrainConfig, epoch_s: float, start: int = 1) -> list[int]:
    now = [0.0]
    cadence = CheckpointCadence(train, clock=lambda: now[0])
    saved = []
    for epoch in range(start, train.epochs + 1):
        now[0] += epoch_s
        if cadence.due(epoch):
            cadence.saved()
            saved.append(epoch)
    return saved


def test_fast_epochs_checkpoint_once_per_period_at_the_rungs_and_at_the_end():
    train = TrainConfig(epochs=50, checkpoint_seconds=60, checkpoint_epochs=(4, 12, 36))
    # 2 s epochs: the rungs, the clock 60 s after the rung at 12 (epoch 42 is only 12 s after 36), the end.
    assert checkpointed_epochs(train, 2.0) == [4, 12, 36, 50]
    assert checkpointed_epochs(TrainConfig(epochs=100, checkpoint_seconds=60), 2.0) == [30, 60, 90, 100]


def test_slow_epochs_and_a_zero_period_checkpoint_every_epoch():
    assert checkpointed_epochs(TrainConfig(epochs=5, checkpoint_seconds=60), 61.0) == [1, 2, 3, 4, 5]
    assert checkpointed_epochs(TrainConfig(epochs=5, checkpoint_seconds=0), 0.5) == [1, 2, 3, 4, 5]


def test_a_resumed_trial_counts_the_period_from_its_restart():
    # Resumed after epoch 20: the clock starts again, so no checkpoint until 30 epochs of 2 s later.
    assert checkpointed_epochs(TrainConfig(epochs=60, checkpoint_seconds=60), 2.0, start=21) == [50, 60]
