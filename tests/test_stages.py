"""Stages 2 and 3 of the k-fold training, and starting them from an earlier trial's models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from trainable.config import ConfigError, TrialConfig, from_dict
from trainable.data.layouts import load_annotations
from trainable.dotted import merge
from trainable.training.checkpoint import CheckpointError, best_weights_file
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining

pytestmark = pytest.mark.slow

CPU = Device(torch.device("cpu"))


def training(tiny_trial, **overrides) -> KFoldTraining:
    return KFoldTraining(from_dict(TrialConfig, merge(tiny_trial, {"train.epochs": 1, **overrides})), CPU)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, cached_dir):
    """A recording-level teacher over every tp and test recording; half the test recordings
    have a species at 0.9."""
    annotations = load_annotations(cached_dir)
    ids = sorted(set(annotations.tp.recording)) + list(annotations.test_ids)
    probabilities = np.full((len(ids), annotations.n_species), 0.1)
    pseudo = annotations.test_ids[::2]
    for row, rid in enumerate(ids):
        if rid in pseudo:
            probabilities[row, row % annotations.n_species] = 0.9
    path = tmp_path_factory.mktemp("teacher") / "oof_and_submission.csv"
    pd.DataFrame(probabilities, columns=[f"s{i}" for i in range(annotations.n_species)]).assign(
        recording_id=ids).to_csv(path, index=False)
    return path, sorted(pseudo)


def test_stage_2_trains_on_labelled_frames(tiny_trial):
    stage2 = training(tiny_trial, stage=2)
    metrics = stage2.run_epoch()
    assert np.isfinite(metrics["cv_lwlrap"]) and metrics["loss/total"] > 0
    assert stage2.labels.stage == 2 and stage2.labels.negatives and not stage2.test_frames


def test_stage_3_trains_on_the_teachers_test_recordings_when_asked(tiny_trial, teacher_file):
    path, pseudo = teacher_file
    stage3 = training(tiny_trial, stage=3, teacher_files=[str(path)],
                      **{"train.batch_size": 64, "data.teacher_test_recordings": True})
    assert sorted(stage3.test_frames) == pseudo  # the test recordings with a teacher positive
    stage2 = training(tiny_trial, stage=2, **{"train.batch_size": 64})
    run2, run3 = stage2.runs[0], stage3.runs[0]
    samples = [stage.train_fold(run).samples for stage, run in ((stage2, run2), (stage3, run3))]
    assert samples[1] == samples[0] + len(pseudo)
    assert np.isfinite(stage3.run_epoch()["cv_lwlrap"])
    # The reference's stage 3 did not; neither does a stage 3 that does not ask.
    assert not training(tiny_trial, stage=3, teacher_files=[str(path)]).test_frames


def test_a_stage_starts_from_the_same_folds_of_an_earlier_trial(tiny_trial, trained_experiment):
    checkpoint = trained_experiment / "trial_abc" / "checkpoint_000000"
    stage2 = training(tiny_trial, stage=2, init_from=str(checkpoint))
    stage2.initialise_from(checkpoint)
    for run in stage2.runs:
        saved = torch.load(checkpoint / best_weights_file(run.fold.index), weights_only=True)  # the selected epoch's
        for name, value in run.model.state_dict().items():
            torch.testing.assert_close(value, saved[name])
        assert not run.optimizer.state  # only the weights: the optimiser starts afresh
    assert stage2.epoch == 0
    assert not torch.equal(stage2.runs[0].model.cla.weight, stage2.runs[1].model.cla.weight)  # fold by fold


@pytest.mark.parametrize("overrides, message", [
    ({"model.backbone": "resnet18"}, "a test_resnet checkpoint, this trial trains resnet18"),
    ({"data.fold_seed": 3}, "made with data.fold_seed = 0, this trial has 3 (another fold split would leak"),
    ({"data.fold_labels": "multi_hot"}, "made with data.fold_labels = single, this trial has multi_hot"),
    ({"model.input": "crop_unit"}, "made with model.input = clip_image, this trial has crop_unit (the weights"),
    ({"model.head_bias": True}, "made with model.head_bias = False, this trial has True"),
    ({"data.n_folds": 3}, "made with data.n_folds = 2, this trial has 3"),
])
def test_an_init_checkpoint_of_another_model_or_split_is_refused(tiny_trial, trained_experiment, overrides, message):
    checkpoint = trained_experiment / "trial_abc" / "checkpoint_000000"
    with pytest.raises(CheckpointError) as error:
        training(tiny_trial, stage=2, **overrides).initialise_from(checkpoint)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_init_checkpoint_without_a_trial_file_or_a_fold_is_refused(tiny_trial, trained_experiment, tmp_path):
    with pytest.raises(CheckpointError, match="is not a trial checkpoint"):
        training(tiny_trial, stage=2).initialise_from(tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(trained_experiment / "trial_abc" / "checkpoint_000000", partial)
    trial = json.loads((partial / "trial.json").read_text())
    (partial / "trial.json").write_text(json.dumps({**trial, "folds": [0]}))  # trained with train.folds [0]
    with pytest.raises(CheckpointError, match=r"holds folds \[0\], this trial trains fold 1"):
        training(tiny_trial, stage=2).initialise_from(partial)
    (partial / "trial.json").write_text(json.dumps(trial))
    (partial / best_weights_file(1)).unlink()
    with pytest.raises(CheckpointError, match="best_fold_1.pt: not a fold checkpoint"):
        training(tiny_trial, stage=2).initialise_from(partial)


def test_stage_config_is_checked():
    base = {"data_dir": "/data"}
    with pytest.raises(ConfigError, match="stage 3 needs teacher_files"):
        from_dict(TrialConfig, {**base, "stage": 3})
    with pytest.raises(ConfigError, match="used by stage 3 only"):
        from_dict(TrialConfig, {**base, "stage": 2, "teacher_files": ["/t.csv"]})
    for key, value in (("loss.teacher_weight", 0.3), ("loss.teacher_negatives", True),
                       ("loss.teacher_negative_below", 0.05), ("data.teacher_test_recordings", True)):
        with pytest.raises(ConfigError, match=f"{key} is used by stage 3 only"):
            from_dict(TrialConfig, merge(base, {key: value}))
    with pytest.raises(ConfigError, match="teacher_negative_below < teacher_threshold"):
        from_dict(TrialConfig, merge(base, {"stage": 3, "teacher_files": ["/t"], "loss.teacher_negative_below": 0.6}))
    # A config of before several teachers: its one teacher, and the test recordings it trained on.
    old = from_dict(TrialConfig, {**base, "stage": 3, "teacher_file": "/t.csv"})
    assert old.teacher_files == ("/t.csv",) and old.data.teacher_test_recordings
    assert from_dict(TrialConfig, {**base, "teacher_file": ""}).teacher_files == ()
    with pytest.raises(ConfigError, match="stage must be one of 1, 2, 3"):
        from_dict(TrialConfig, {**base, "stage": 4})
