"""Whole clips as training items: the reference's stages 2 and 3 (DataConfig.train_items "clips").

An item is one recording cut into windows of `crop_frames`, neighbours sharing `clip_overlap`
frames, the last one padded past the clip's end: v2_1's 8 windows of a 60 s clip (starts 0,
463, ..., 3241, the last 2 frames short). Every window is labelled as a clip
(trainable.data.targets.Labels.windows). A batch of B recordings is one forward pass of their
windows (v2_1: 32 recordings = 256 windows), and the windows of a recording share its
augmentation draws, as the reference augmented the whole clip and then cut it.

An epoch is every item once, in a new order:

stages 1, 2  (v2_1) the fold's tp training recordings, then every fp recording the fold may use,
             as an item of its own (a recording in both files is two items: its tp item knows
             its tp events, its fp item its fp events);
stage 3      (v4_2) each training recording once, with all its events: the fold's tp training
             recordings, then the fp-only recordings outside the fold's fp-only validation
             (trainable.data.folds.split_fp_only), then, with data.teacher_test_recordings, the test
             recordings the teacher finds a species in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from trainable.config import DataConfig
from trainable.data.cache import LogMelCache
from trainable.data.folds import Fold
from trainable.data.placement import Placement
from trainable.data.targets import Labels, Targets
from trainable.data.windows import concatenated, cut_windows


@dataclass(frozen=True)
class ClipSpec:
    """One whole-clip item."""

    recording_id: str
    split: str = "train"  # "test": a test recording labelled by the teacher alone (stage 3)
    negative_item: bool = False  # v2_1's fp item: labelled by the recording's fp events only


def padded_starts(n_frames: int, width: int, overlap: int) -> np.ndarray:
    """Starts of windows every `width - overlap` frames until the clip is covered, the last one
    running past its end: at 3751 frames, width 512 and overlap 49 the reference's 8 windows 0,
    463, ..., 3241.

    Returns:
        (W,) int64.
    """
    stride = width - overlap
    count = 1 + -(-max(n_frames - width, 0) // stride)  # ceil: the windows after the first
    return stride * np.arange(count, dtype=np.int64)


def epoch_clips(fold: Fold, stage: int, fp_only_train: tuple[str, ...] = (),
                test_ids: tuple[str, ...] = ()) -> list[ClipSpec]:
    """The items of every epoch of `fold` (see the module), in a fixed order.

    Args:
        fp_only_train: stage 3: the fp-only recordings this fold trains on.
        test_ids: stage 3: the test recordings it trains on (data.teacher_test_recordings).
    """
    items = [ClipSpec(rid) for rid in fold.train_ids]
    if stage == 3:
        items += [ClipSpec(rid) for rid in fp_only_train]
    else:
        items += [ClipSpec(rid, negative_item=True) for rid in fold.negative_ids]
    return items + [ClipSpec(rid, split="test") for rid in test_ids]


class TrainClips(Dataset):
    """Whole clips in windows with their targets, read from the memory-mapped cache and keyed
    by ClipSpec (the loader's batches are lists of specs, as for TrainCrops).

    Item `spec` is `(windows, targets, placements)`: (W, 1, n_mels, crop_frames) float16, the
    windows' Targets (clip (W, C), frame (W, C, crop_frames)) and their Placements.
    """

    def __init__(self, cache: LogMelCache, labels: Labels, n_species: int, config: DataConfig):
        self.cache, self.labels, self.n_species = cache, labels, n_species
        self.width, self.overlap = config.crop_frames, config.clip_overlap

    def starts(self, n_frames: int) -> np.ndarray:
        return padded_starts(n_frames, self.width, self.overlap)

    def __getitem__(self, spec: ClipSpec) -> tuple[torch.Tensor, Targets, Placement]:
        spectrogram = self.cache.load(spec.split, spec.recording_id)  # (M, T) memory-mapped
        starts = self.starts(spectrogram.shape[1])
        windows, where = cut_windows(spectrogram, self.cache.statistics(spec.split, spec.recording_id), starts,
                                     self.width)
        targets = self.labels.windows(spec.split, spec.recording_id, starts, self.width, self.n_species,
                                      spec.negative_item)
        return windows, targets, where


def collate_clips(items: list[tuple[torch.Tensor, Targets, Placement]]) -> tuple[torch.Tensor, Targets, Placement]:
    """Several recordings' windows as one batch of windows (sum W, ...), each window's
    Placement.clip the index of its recording in the batch."""
    windows, targets, where = zip(*items)
    clips = torch.cat([torch.full((len(w),), k, dtype=torch.int64) for k, w in enumerate(windows)])
    return torch.cat(windows), Targets(*(torch.cat(parts) for parts in zip(*targets))), concatenated(where, clips)
