"""What a crop is trained towards in each stage: tp/fp frames, teacher positives, and mixup
of labels that carry weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from trainable.config import DataConfig, LossConfig
from trainable.data.cache import LogMelCache
from trainable.data.crops import TrainCrops, crop_start, teacher_crops
from trainable.data.layouts import load_annotations
from trainable.data.mixup import Mixup
from trainable.data.targets import Events, Labels, Targets
from trainable.data.teacher import WHOLE_CLIP, Teacher, TeacherWindows, load_teacher
from trainable.model.losses import SEDLoss
from trainable.model.sed import FRAME

C, WIDTH = 4, 100
# Recording "a": species 0 annotated in tp at frames 10..29 and in fp at 50..54 (another call
# the detector mistook); species 1 only in fp, at 40..59; species 2 and 3 not annotated.
TP = {"a": Events(np.array([0]), np.array([10]), np.array([30]))}
FP = {"a": Events(np.array([1, 0]), np.array([40, 50]), np.array([60, 55]))}
TEACHER = Teacher(train={"a": TeacherWindows(np.array([0]), np.array([WHOLE_CLIP]),
                                             np.array([[0.9, 0.8, 0.7, 0.2]], np.float32))}, test={})


def labels(stage: int, teacher: Teacher | None = None, **loss) -> Labels:
    return Labels(stage, TP, FP, LossConfig(**loss), teacher)


def test_stage_1_counts_every_clip_label_and_the_tp_frames_only():
    targets = labels(1).crop("train", "a", 0, WIDTH, C)
    assert targets.clip.tolist() == [1, 0, 0, 0] and targets.clip_weight.tolist() == [1, 1, 1, 1]
    assert targets.frame[0].nonzero().flatten().tolist() == list(range(10, 30))
    assert torch.equal(targets.frame_weight, targets.frame)  # fp frames are not counted in stage 1


def test_stage_2_counts_only_labelled_frames_and_species():
    targets = labels(2).crop("train", "a", 0, WIDTH, C)
    assert targets.clip.tolist() == [1, 0, 0, 0]
    assert targets.clip_weight.tolist() == [1, 1, 0, 0]  # species 2 and 3 carry no label
    assert targets.frame_weight[0].nonzero().flatten().tolist() == [*range(10, 30), *range(50, 55)]
    assert targets.frame_weight[1].nonzero().flatten().tolist() == list(range(40, 60))
    assert targets.frame[0].nonzero().flatten().tolist() == list(range(10, 30))  # fp frames: negatives
    assert not targets.frame[1].any() and not targets.frame_weight[2:].any()
    outside = labels(2).crop("train", "a", 60, 30, C)  # past every annotation: nothing is labelled
    assert not outside.clip_weight.any() and not outside.frame_weight.any()


def test_stage_3_adds_teacher_positives_to_unlabelled_species_only():
    targets = labels(3, TEACHER).crop("train", "a", 0, WIDTH, C)
    # Species 1's fp label wins over the teacher's 0.8; species 2 (0.7 >= 0.5) becomes a positive
    # of the teacher's weight; species 3 (0.2) stays unlabelled.
    assert targets.clip.tolist() == [1, 0, 1, 0]
    assert targets.clip_weight.tolist() == [1, 1, 0.5, 0]
    assert torch.equal(targets.frame_weight, labels(2).crop("train", "a", 0, WIDTH, C).frame_weight)  # clips only
    stricter = labels(3, TEACHER, teacher_threshold=0.75, teacher_weight=0.3).crop("train", "a", 0, WIDTH, C)
    assert stricter.clip.tolist() == [1, 0, 0, 0] and stricter.clip_weight.tolist() == [1, 1, 0, 0]
    soft = labels(3, TEACHER, teacher_soft_negatives=True).crop("train", "a", 0, WIDTH, C)
    assert soft.clip.tolist() == pytest.approx([1, 0, 1, 0.2]) and soft.clip_weight.tolist() == [1, 1, 0.5, 0.5]
    # A recording the teacher did not predict keeps its stage-2 labels.
    assert torch.equal(labels(3, TEACHER).crop("train", "b", 0, WIDTH, C).clip_weight, torch.zeros(C))


def test_unlabelled_entries_do_not_move_the_loss():
    crop = labels(2).crop("train", "a", 0, WIDTH, C)
    targets = Targets(*(t[None] for t in crop)).to(torch.device("cpu"))  # a batch of one, as the device gets it
    g = torch.Generator().manual_seed(0)
    logits = {key: torch.randn(1, C, generator=g) for key in ("clip_att", "clip_max")}
    logits.update(segment=torch.randn(1, C, 5, generator=g), attention=torch.randn(1, C, 5, generator=g),
                  frame=torch.randn(1, C, WIDTH, generator=g))
    loss = SEDLoss(LossConfig(w_pseudo=0))
    before = loss(logits, targets)
    moved = {key: value.clone() for key, value in logits.items()}
    moved["clip_att"][0, 2:] += 50.0  # species 2 and 3: no label
    moved[FRAME][0, 0, 60:] -= 50.0  # species 0 past its labelled frames
    after = loss(moved, targets)
    for term in ("att", "frame", "total"):
        torch.testing.assert_close(after[term], before[term])
    moved["clip_att"][0, 1] += 50.0  # species 1 is a labelled negative: confidently wrong now
    assert loss(moved, targets)["att"] > before["att"] + 1.0


def test_mixup_of_weighted_labels_is_the_mixture_of_the_two_losses():
    g = torch.Generator().manual_seed(1)
    targets = Targets(clip=(torch.rand(6, C, generator=g) > 0.5).float(),
                      clip_weight=torch.tensor([0.0, 0.5, 1.0]).repeat(6, 2)[:, :C],
                      frame=(torch.rand(6, C, 8, generator=g) > 0.5).float(),
                      frame_weight=(torch.rand(6, C, 8, generator=g) > 0.3).float())
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    mixed = targets.mixed(Mixup(lam=0.7, perm=perm))
    logits = torch.randn(6, C, generator=g)

    def weighted_sum(t: Targets) -> torch.Tensor:
        return (t.clip_weight * F.binary_cross_entropy_with_logits(logits, t.clip, reduction="none")).sum()

    partner = Targets(*(t[perm] for t in targets))
    torch.testing.assert_close(weighted_sum(mixed), 0.7 * weighted_sum(targets) + 0.3 * weighted_sum(partner))
    # A label missing on one side takes the other side's label with that side's share of the weight.
    only_partner = (targets.clip_weight == 0) & (partner.clip_weight == 1)
    torch.testing.assert_close(mixed.clip[only_partner], partner.clip[only_partner])
    torch.testing.assert_close(mixed.clip_weight[only_partner], torch.full_like(mixed.clip[only_partner], 0.3))
    assert ((mixed.clip >= 0) & (mixed.clip <= 1)).all()


@pytest.fixture(scope="module")
def data(cached_dir):
    return load_annotations(cached_dir), LogMelCache.open(cached_dir / "logmel")


def test_teacher_crops_cover_a_positive_window_of_each_pseudo_labelled_test_recording(data, tmp_path):
    annotations, cache = data
    fps = cache.features.frames_per_second
    positive, negative, whole = annotations.test_ids[:3]
    columns = [f"s{i}" for i in range(annotations.n_species)]
    rows = [[positive, 0.0, 2.048, *[0.1] * len(columns)],
            [positive, 4.096, 6.144, 0.1, 0.1, 0.1, 0.95, 0.1, 0.1],  # frames 256..384: species 3
            [negative, 0.0, 12.0, *[0.2] * len(columns)],
            [whole, 0.0, 12.0, 0.1, 0.6, 0.1, 0.1, 0.1, 0.1]]  # a clip-long window: species 1
    table = pd.DataFrame(rows, columns=["recording_id", "t_min", "t_max", *columns])
    table.to_csv(tmp_path / "windows.csv", index=False)
    teacher = load_teacher(tmp_path / "windows.csv", annotations, fps)
    assert teacher.positive_test_ids(0.5) == sorted([positive, whole])
    frames = {rid: cache.load("test", rid).shape[1] for rid in teacher.positive_test_ids(0.5)}
    config = DataConfig(crop_frames=128, crop_offsets=(16, 32), test_overlap=64, valid_overlap=32)
    stage3 = Labels(3, {}, {}, LossConfig(), teacher)
    rng = np.random.default_rng(0)
    for _ in range(20):
        specs = teacher_crops(teacher, frames, config, 0.5, rng)
        assert [s.recording_id for s in specs] == sorted(frames) and {s.split for s in specs} == {"test"}
        dataset = TrainCrops(cache, stage3, annotations.n_species, config)
        for spec, (x, targets, _) in zip(specs, map(dataset.__getitem__, specs)):
            assert x.shape == (1, 128, 128)
            species = 3 if spec.recording_id == positive else 1
            start = crop_start(spec.centre, spec.offset, frames[spec.recording_id], 128, config.crop_rule)
            if spec.recording_id == positive:
                assert 256 - 64 <= start <= 256 + 64  # covers at least half of the positive window
            assert targets.clip.tolist() == [float(s == species) for s in range(annotations.n_species)]
            assert targets.clip_weight[species] == 0.5 and targets.clip_weight.sum() == 0.5
            assert not targets.frame_weight.any()  # nothing is annotated in a test recording
