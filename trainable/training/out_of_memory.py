"""A trial that ran out of GPU memory: the line it ends with and the error it fails with.

Ray-free, so that the leaderboard and the search's summary read these trials without importing
the trainable (trainable.tune raises the error; search.results and search.tuner word it).
"""

from __future__ import annotations

from trainable.config import TrainConfig

OUT_OF_MEMORY = "out of GPU memory"  # how that line starts, and the trial's status on the leaderboard
OUT_OF_MEMORY_ADVICE = ("give each trial more of a GPU (--gpus-per-trial) or lower train.batch_size"
                        " or train.eval_recordings")


class OutOfGPUMemoryError(RuntimeError):
    """The trial's batches do not fit in its share of the GPU; the message says what to change."""


def out_of_memory_message(gpu_share: float, train: TrainConfig) -> str:
    """The one line a trial that ran out of GPU memory ends with: its share and its batch sizes."""
    return (f"{OUT_OF_MEMORY} at {gpu_share:g} GPU per trial with train.batch_size {train.batch_size}"
            f" (train.eval_recordings {train.eval_recordings}): {OUT_OF_MEMORY_ADVICE}")
