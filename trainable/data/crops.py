"""Training crops over the log-mel cache (evaluation windows: trainable.data.windows).

Times become frames by DataConfig.event_frames. A training crop is `crop_frames` wide and
placed so that its event's centre lands `offset` frames after the crop start (offset drawn
from `crop_offsets`). DataConfig.crop_rule decides the items and the edges:

recording  the reference's: one item per tp recording of the fold, around the middle of a
           random one of its events, offsets only those with centre - offset > 0 (none: the
           crop starts at 0), a crop past frame n - 1 moved to [n - 1 - width, n - 1); fp
           items labelled by their fp events only (all-negative in stage 1).
event      one item per tp event, any offset, clipped to the clip; an fp item of a recording
           in both files still carries its true positives.

Every item carries its Placement (trainable.data.placement): where it lies in its clip, and the
clip's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from trainable.config import DataConfig
from trainable.data.cache import LogMelCache
from trainable.data.folds import Fold
from trainable.data.placement import Placement, placement
from trainable.data.targets import Labels, Targets, event_frames
from trainable.data.teacher import Teacher


def centre_frames(rows: pd.DataFrame, frames_per_second: float) -> np.ndarray:
    """(N,) int: the frame at the middle of each event's [start_s, end_s]."""
    return np.round((rows.start_s.to_numpy() + rows.end_s.to_numpy()) / 2 * frames_per_second).astype(np.int64)


def crop_start(centre: int, offset: int, n_frames: int, width: int, rule: str = "recording") -> int:
    """First frame of a crop with `centre` at `offset` (DataConfig.crop_rule).

    "recording": the reference's end clamp, a crop ending past frame n - 1 becomes
    [n - 1 - width, n - 1) (its offsets were chosen with centre - offset > 0 already);
    "event": clipped so the crop stays inside the clip.
    """
    if rule == "recording":
        start = centre - offset
        last = n_frames - 1  # the reference's MAX_SEQ = 3751 - 1
        # Never before frame 0: the reference's offsets keep its own crops inside, a teacher's
        # crop (stage 3) centred early in a clip would not be.
        return int(max(last - width, 0) if start + width > last else max(start, 0))
    return int(np.clip(centre - offset, 0, max(n_frames - width, 0)))


def feasible_offset(centre: int, offsets: np.ndarray, rng: np.random.Generator) -> int:
    """The reference's offset: a random one of those with centre - offset > 0, or `centre`
    itself (the crop starts at 0) when there is none."""
    feasible = offsets[centre - offsets > 0]
    return int(rng.choice(feasible)) if len(feasible) else int(centre)


def crop(spectrogram: np.ndarray, start: int, width: int) -> np.ndarray:
    """Frames [start, start + width) of a (n_mels, frames) array, padded past the clip end.

    Padding uses the clip's minimum (its quietest value), not zero: 0 dB would be loud.

    Returns:
        (n_mels, width) in the cache's dtype (float16), a copy. Crops travel as float16 and
        become float32 on the device: half the bytes to collate and copy, and numpy's float16
        conversion would cost more than everything else an item does.
    """
    window = np.array(spectrogram[:, start:start + width])  # (M, <=W)
    if window.shape[1] == width:
        return window
    floor = np.min(spectrogram) if spectrogram.size else 0
    return np.pad(window, ((0, 0), (0, width - window.shape[1])), constant_values=floor)


@dataclass(frozen=True)
class CropSpec:
    """Where one training crop comes from: its event centre and the drawn offset."""

    recording_id: str
    centre: int  # frame of the event centre
    offset: int  # frames from the crop start to the centre
    split: str = "train"  # "test": a pseudo-labelled test recording (stage 3)
    negative_item: bool = False  # the reference's fp item: labelled by its fp events only


def _random_rows(rows: pd.DataFrame, recording_ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """One random annotation row of each recording, in the order of `recording_ids`."""
    pool = rows[rows.recording.isin(set(recording_ids))]
    rows_of = pool.groupby("recording").indices  # recording -> positions in `pool`
    return pool.iloc[[rows_of[rid][rng.integers(len(rows_of[rid]))] for rid in recording_ids]]


def epoch_crops(fold: Fold, tp: pd.DataFrame, fp: pd.DataFrame, config: DataConfig,
                frames_per_second: float, rng: np.random.Generator) -> list[CropSpec]:
    """The crops of one training epoch of `fold` (DataConfig.crop_rule, see the module).

    The tp items, then `config.fp_per_epoch` train_fp recordings drawn anew (without
    replacement) from the fold's negatives, one crop around a random fp event of each.
    """
    n_negative = min(config.fp_per_epoch, len(fold.negative_ids))
    drawn = rng.choice(np.asarray(fold.negative_ids, dtype=object), size=n_negative, replace=False)
    negatives = _random_rows(fp, drawn, rng)
    if config.crop_rule == "event":
        rows = pd.concat([tp[tp.recording.isin(set(fold.train_ids))], negatives], ignore_index=True)
        offsets = rng.choice(np.asarray(config.crop_offsets), size=len(rows))
        centres = centre_frames(rows, frames_per_second)
        return [CropSpec(str(rid), int(c), int(o)) for rid, c, o in zip(rows.recording, centres, offsets)]
    positives = _random_rows(tp, np.asarray(fold.train_ids, dtype=object), rng)
    specs = []
    for rows, negative in ((positives, False), (negatives, True)):
        start, end = event_frames(rows, frames_per_second, config.event_frames)
        for rid, centre in zip(rows.recording, (start + end) // 2):  # the reference's m = (h + t) // 2
            offset = feasible_offset(int(centre), np.asarray(config.crop_offsets), rng)
            specs.append(CropSpec(str(rid), int(centre), offset, negative_item=negative))
    return specs


def epoch_size(fold: Fold, tp: pd.DataFrame, config: DataConfig) -> int:
    """Items of every epoch of `fold` by `epoch_crops` (the same number each epoch)."""
    train_ids = set(fold.train_ids)
    positives = len(train_ids) if config.crop_rule == "recording" else int(tp.recording.isin(train_ids).sum())
    return positives + min(config.fp_per_epoch, len(fold.negative_ids))


def teacher_crops(teacher: Teacher, clip_frames: dict[str, int], config: DataConfig, threshold: float,
                  rng: np.random.Generator) -> list[CropSpec]:
    """Stage 3's crops of pseudo-labelled test recordings: one per recording and epoch.

    Each is centred in the middle half of one of the recording's teacher-positive windows,
    drawn anew each epoch, so the crop covers most of that window and the teacher's label
    holds for it (a recording-level row is one window over the whole clip).

    Args:
        clip_frames: the test recordings to crop (those with a teacher positive) -> frames.
    """
    specs = []
    for rid, frames in sorted(clip_frames.items()):
        windows = teacher.test[rid]
        positive = np.flatnonzero((windows.probabilities >= threshold).any(axis=1))
        k = positive[rng.integers(len(positive))]
        lo, hi = int(windows.start[k]), int(min(windows.end[k], frames))
        quarter = max(hi - lo, 0) // 4
        centre = int(rng.integers(lo + quarter, max(hi - quarter, lo + quarter + 1)))
        specs.append(CropSpec(rid, centre, config.crop_frames // 2, split="test"))
    return specs


class TrainCrops(Dataset):
    """Training crops with their targets, read from the memory-mapped cache, keyed by their
    CropSpec: the loader's batches are lists of specs (`shuffled_batches`), so one loader and
    its worker processes serve every fold and epoch of a trial.

    Item `spec` is `(x, targets, placement)`:
        x: (1, n_mels, crop_frames) float16 log-mel.
        targets: the crop's Targets in its stage (clip (C,), frame (C, crop_frames), and
            their weights).
        placement: where the crop lies in its clip, and the clip's statistics.
    """

    def __init__(self, cache: LogMelCache, labels: Labels, n_species: int, config: DataConfig):
        self.cache, self.labels = cache, labels
        self.n_species, self.crop_frames, self.crop_rule = n_species, config.crop_frames, config.crop_rule

    def __getitem__(self, spec: CropSpec) -> tuple[torch.Tensor, Targets, Placement]:
        spectrogram = self.cache.load(spec.split, spec.recording_id)  # (M, T) memory-mapped
        start = crop_start(spec.centre, spec.offset, spectrogram.shape[1], self.crop_frames, self.crop_rule)
        x = crop(spectrogram, start, self.crop_frames)[None]  # (1, M, W)
        targets = self.labels.crop(spec.split, spec.recording_id, start, self.crop_frames, self.n_species,
                                   negative_item=spec.negative_item)
        where = placement(spectrogram, self.cache.statistics(spec.split, spec.recording_id), start)
        return torch.from_numpy(x), targets, where
