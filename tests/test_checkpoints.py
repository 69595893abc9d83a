"""When a trial checkpoints: by the clock, at the given epochs (ASHA's rungs) and at the end."""

from __future__ import annotations

from trainable.config import TrainConfig
from trainable.training.cadence import CheckpointCadence


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


def test_a_search_checkpoints_its_trials_at_every_rung_where_asha_may_stop_them(tmp_path):
    from search.plan import SearchPlan
    from search.stopping import SCHEDULERS
    from search.tuner.experiment import trial_space

    def rungs_of(epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
        return SCHEDULERS["asha"].milestones(dict(grace_period=grace_period, reduction_factor=reduction_factor), epochs)

    assert rungs_of(50, 4, 3) == [4, 12, 36] and rungs_of(8, 4, 3) == [4] and rungs_of(8, 8, 3) == []
    assert rungs_of(50, 1, 2) == [1, 2, 4, 8, 16, 32]  # Ray's milestones below max_t
    fixed = {"recipe": "v1_7", "train.epochs": 50, "data_dir": str(tmp_path), "train.checkpoint_epochs": [20]}
    plan = SearchPlan(spaces=("loss_weights",), fixed=fixed, num_samples=2, max_concurrent=None, cpus_per_trial=1,
                      gpus_per_trial=0, storage=str(tmp_path), name="x", seed=0, max_failures=0, scheduler="asha",
                      scheduler_settings={"grace_period": 4, "reduction_factor": 3})
    space = trial_space(plan)
    assert space["train.checkpoint_epochs"] == [4, 12, 20, 36]  # the user's epochs kept beside the rungs
    assert {key: value for key, value in space.items() if key != "train.checkpoint_epochs"} == {
        key: value for key, value in fixed.items() if key != "train.checkpoint_epochs"}
