"""When a trial checkpoints (TrainConfig.checkpoint_seconds and checkpoint_epochs).

A checkpoint of the reference's 5 resnet18 folds is about 900 MB (each fold's weights, Adam's
two moments and its selected weights), and Ray copies it to the experiment's storage inside
`tune.report`. At CPU speed an epoch takes minutes and a checkpoint per epoch costs little; on
a GPU an epoch takes seconds, and the same rule would spend a third of the trial writing. So a
trial checkpoints by the clock, and always where its state must be on disk:

- at the end of an epoch once `checkpoint_seconds` have passed since its previous checkpoint
  (or since the process started or resumed): the work a killed trial repeats is the epochs
  since then, at most `checkpoint_seconds` of training plus the epoch in flight;
- at `checkpoint_epochs`: a search sets its scheduler's milestones, where it may stop the trial,
  so a stopped trial's last checkpoint is the state of its last result;
- at the last epoch.

A process that is ending (SIGTERM: a draining or reclaimed node) does not lose the epoch in
flight: it checkpoints at the next batch boundary (trainable.training.preemption), outside this cadence.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trainable.config import TrainConfig


class CheckpointCadence:
    """Decides, epoch by epoch, whether this one ends with a checkpoint.

    Args:
        train: the trial's TrainConfig (epochs, checkpoint_seconds, checkpoint_epochs).
        clock: seconds, monotonic (a test passes its own).
    """

    def __init__(self, train: TrainConfig, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.last_epoch = train.checkpoint_seconds, train.epochs
        self.epochs = frozenset(train.checkpoint_epochs)
        self.clock = clock
        self.since = clock()

    def due(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based, just finished) ends with a checkpoint."""
        return (epoch >= self.last_epoch or epoch in self.epochs
                or self.clock() - self.since >= self.seconds)

    def saved(self) -> None:
        """A checkpoint was just written: the clock starts again."""
        self.since = self.clock()
