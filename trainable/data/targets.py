"""What a training crop is trained towards, in each stage of the seed recipe.

Every target is a label with a loss weight per entry (weight 0: no label), so the stages
differ in their data only and the loss has one form:

stage 1  clip: the crop's tp species 1, every other species 0, all of weight 1.
         frame: the tp frames, counted on those frames only (an unannotated frame may hold
         an unlabelled call, so it is no evidence of absence).
stage 2  only what is labelled counts: tp frames and species 1, fp frames and species 0
         (a species with both in the crop is a positive), everything else weight 0.
stage 3  stage 2, plus the teacher: an unlabelled species whose teacher probability over the
         crop is >= teacher_threshold becomes a clip positive of weight teacher_weight; with
         teacher_negatives one below teacher_negative_below a negative of that weight; with
         soft negatives the other unlabelled species take the teacher's probability, same
         weight. Teacher windows are seconds wide, so the teacher labels clips, not frames.

Whole clips in windows (the reference's stages 2 and 3) are labelled window by window
(`Labels.windows`), each window as a clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from trainable.config import LossConfig
from trainable.data.mixup import Mixup
from trainable.data.teacher import Teacher


@dataclass(frozen=True)
class Events:
    """Annotated intervals of one recording, in frames; `end` is exclusive."""

    species: np.ndarray  # (E,) int
    start: np.ndarray  # (E,) int, first frame touched by the interval
    end: np.ndarray  # (E,) int, one past the last frame touched


REFERENCE_CLIP_SECONDS = 60  # the reference turned seconds into frames as 3751 frames per 60 s


def event_frames(rows: pd.DataFrame, frames_per_second: float,
                 rule: str = "reference") -> tuple[np.ndarray, np.ndarray]:
    """(E,) start and (E,) exclusive end frames of events (DataConfig.event_frames).

    "reference": [int(start_s * r), int(end_s * r)) with r the frame rate of a 60 s clip
    (60 * fps + 1 frames over 60 s: 3751 / 60 at 62.5 frames/s). "cover": every frame any part
    of which overlaps [start_s, end_s], so even the shortest call covers one frame.
    """
    start_s, end_s = rows.start_s.to_numpy(np.float64), rows.end_s.to_numpy(np.float64)
    if rule == "reference":
        frames = REFERENCE_CLIP_SECONDS * frames_per_second + 1  # 3751: int(3751 * (t / 60)), in its order
        return ((frames * (start_s / REFERENCE_CLIP_SECONDS)).astype(np.int64),
                (frames * (end_s / REFERENCE_CLIP_SECONDS)).astype(np.int64))
    start = np.floor(start_s * frames_per_second).astype(np.int64)
    return start, np.maximum(np.ceil(end_s * frames_per_second).astype(np.int64), start + 1)


def index_events(rows: pd.DataFrame, frames_per_second: float, rule: str = "reference") -> dict[str, Events]:
    """Group events (trainable.data.annotations.EVENT_COLUMNS) by recording and convert their times to
    frames (`event_frames`)."""
    start, end = event_frames(rows, frames_per_second, rule)
    species = rows.species.to_numpy(dtype=np.int64)
    groups = pd.Series(np.arange(len(rows))).groupby(rows.recording.to_numpy()).indices
    return {rid: Events(species[i], start[i], end[i]) for rid, i in groups.items()}


def frame_targets(events: Events | None, start: int, width: int, n_species: int) -> np.ndarray:
    """Frames of a crop covered by the intervals overlapping it.

    Returns:
        (n_species, width) uint8, 1 where a species' annotated interval covers the frame:
        frame labels and weights are 0 or 1, so they travel through the loader in a quarter of
        float32's bytes and become float32 on the device (Targets.to).
    """
    targets = np.zeros((n_species, width), dtype=np.uint8)
    if events is None:
        return targets
    first = np.clip(events.start - start, 0, width)
    last = np.clip(events.end - start, 0, width)
    for species, lo, hi in zip(events.species, first, last):  # E is 1-3 per recording
        targets[species, lo:hi] = 1
    return targets


class Targets(NamedTuple):
    """Labels and their loss weights; a NamedTuple, so DataLoader batches it field by field.

    Shapes are per crop, (B, ...) once batched. On the host the frame fields may be uint8;
    on the device every field is float32.
    """

    clip: torch.Tensor  # (C,) labels in [0, 1]
    clip_weight: torch.Tensor  # (C,) loss weight of each label, 0 = no label
    frame: torch.Tensor  # (C, T)
    frame_weight: torch.Tensor  # (C, T)

    @classmethod
    def from_frames(cls, frame: torch.Tensor) -> Targets:
        """Stage 1's targets of crops with these tp frames (..., C, T): every clip label
        counts, only the positive frames do."""
        clip = frame.amax(dim=-1).float()
        return cls(clip, torch.ones_like(clip), frame, frame)

    def to(self, device: torch.device) -> Targets:
        """On `device`, every field float32."""
        return Targets(*(t.to(device, non_blocking=True).float() for t in self))

    def mixed(self, mix: Mixup) -> Targets:
        """The targets of a mixup batch, such that the loss is exactly the mixture of the two
        samples' losses.

        BCE is linear in its label, so lam*w1*BCE(z, y1) + (1-lam)*w2*BCE(z, y2) equals
        W*BCE(z, Y) with W = mix(w) and Y = mix(w*y) / W: a label known in only one of the
        two samples keeps its share of the weight and is never mixed with a missing label.
        With all weights 1 this is plain mixup of the labels.
        """
        def pair(label: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mixed_weight = mix(weight)
            # Where the weight is 0 so is mix(weight * label): the label is 0 there, and unused.
            mixed_label = (mix(weight * label) / mixed_weight.clamp(min=1e-12)).clamp(0.0, 1.0)
            return mixed_label, mixed_weight

        return Targets(*pair(self.clip, self.clip_weight), *pair(self.frame, self.frame_weight))


@dataclass(frozen=True)
class Labels:
    """Everything the stages label crops from."""

    stage: int
    positives: dict[str, Events]  # tp events, in frames
    negatives: dict[str, Events]  # fp events, in frames (stages 2 and 3)
    loss: LossConfig  # the teacher's thresholds, weight and negatives
    teacher: Teacher | None = None  # stage 3

    def crop(self, split: str, recording_id: str, start: int, width: int, n_species: int,
             negative_item: bool = False) -> Targets:
        """The targets of frames [start, start + width) of a recording, as tensors.

        A `negative_item` (the reference's fp item) knows only the recording's fp events: its
        tp events, if it has any, are not labels of it.
        """
        train = split == "train"
        tp = self.positives.get(recording_id) if train and not negative_item else None
        positive = frame_targets(tp, start, width, n_species)
        if self.stage == 1:
            return Targets.from_frames(torch.from_numpy(positive))
        negative = frame_targets(self.negatives.get(recording_id) if train else None, start, width, n_species)
        frame_weight = np.maximum(positive, negative)  # a frame both tp and fp is a positive
        clip, clip_weight = (frames.max(axis=1).astype(np.float32) for frames in (positive, frame_weight))  # (C,)
        if self.teacher is not None:
            self._add_teacher(clip, clip_weight, split, recording_id, start, width)
        return _tensors(clip, clip_weight, positive, frame_weight)

    def windows(self, split: str, recording_id: str, starts: np.ndarray, width: int, n_species: int,
                negative_item: bool = False) -> Targets:
        """The targets of windows [start, start + width) of a whole clip (DataConfig.train_items
        "clips"), each window labelled as a clip, as the reference's stages 2 and 3 did: a
        window holds an event when it holds any frame of it.

        stage 1  as a crop of stage 1: the tp species positive, every other species negative;
                 a `negative_item` all negative.
        stage 2  (v2_1) a tp item knows its tp events only: positive where it holds one,
                 unlabelled elsewhere; a `negative_item` (the recording's fp item) knows its fp
                 events only: negative where it holds one.
        stage 3  (v4_2) each recording once: tp frames 1, then fp frames -1 over them; a window
                 positive where it holds a 1 and no -1, negative where a -1 and no 1, and where
                 neither (or both) the teacher's label (`_teacher_labels`).

        Returns:
            Targets with clip (W, C) and frame (W, C, width): the positive frames, counted where
            labelled.
        """
        train = split == "train"
        tp = self.positives.get(recording_id) if train and not negative_item else None
        fp = self.negatives.get(recording_id) if train and (negative_item or self.stage == 3) else None
        positive = np.stack([frame_targets(tp, int(start), width, n_species) for start in starts])  # (W, C, T)
        if self.stage == 1:
            return Targets.from_frames(torch.from_numpy(positive))
        negative = np.stack([frame_targets(fp, int(start), width, n_species) for start in starts])  # (W, C, T)
        positive &= 1 - negative  # v4_2 wrote the fp frames over the tp frames (no overlap in stage 2)
        holds_positive, holds_negative = positive.any(axis=-1), negative.any(axis=-1)  # (W, C)
        # any over the last axis of the 3-D stacks: arrays, never scalars
        assert isinstance(holds_positive, np.ndarray) and isinstance(holds_negative, np.ndarray)
        clip = (holds_positive & ~holds_negative).astype(np.float32)
        clip_weight = (holds_positive ^ holds_negative).astype(np.float32)
        if self.teacher is not None:
            for row, start in enumerate(starts):
                self._add_teacher(clip[row], clip_weight[row], split, recording_id, int(start), width)
        return _tensors(clip, clip_weight, positive, np.maximum(positive, negative))

    def _add_teacher(self, clip: np.ndarray, clip_weight: np.ndarray, split: str, recording_id: str,
                     start: int, width: int) -> None:
        """Teacher labels for the species no annotation labels in this crop, in place."""
        assert self.teacher is not None  # both callers (crop, windows) check first
        windows = (self.teacher.train if split == "train" else self.teacher.test).get(recording_id)
        probability = None if windows is None else windows.crop_probabilities(start, width)  # (C,)
        if probability is not None:
            self._teacher_labels(clip, clip_weight, probability)

    def _teacher_labels(self, clip: np.ndarray, clip_weight: np.ndarray, probability: np.ndarray) -> None:
        """(C,) labels in place, where no annotation labels a species: the teacher's probability
        >= teacher_threshold makes a positive of weight teacher_weight (v4_2's 2); with
        teacher_negatives, one below teacher_negative_below a negative of that weight (its -2);
        with teacher_soft_negatives, any other the probability itself as a soft target."""
        loss = self.loss
        unlabelled = clip_weight == 0
        positive = unlabelled & (probability >= loss.teacher_threshold)
        clip[positive], clip_weight[positive] = 1.0, loss.teacher_weight
        if loss.teacher_negatives:
            negative = unlabelled & (probability < loss.teacher_negative_below)
            clip[negative], clip_weight[negative] = 0.0, loss.teacher_weight
        if loss.teacher_soft_negatives:
            soft = clip_weight == 0  # unlabelled still
            clip[soft], clip_weight[soft] = probability[soft], loss.teacher_weight


def _tensors(*arrays: np.ndarray) -> Targets:
    return Targets(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
