"""Training crops and evaluation windows over the log-mel cache.

Times become frames at the cache's frame rate (62.5 frames/s by default). A training
crop is `crop_frames` wide and placed so that its event's centre lands `offset` frames
after the crop start (offset drawn from `crop_offsets`), clipped at the clip edges.
What a crop is trained towards depends on the stage (trainable.targets): in stage 1 a crop
of a pure train_fp recording is all-negative, and a crop of a recording in both files
still carries its true positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from trainable.cache import LogMelCache
from trainable.config import DataConfig
from trainable.folds import Fold, species_matrix
from trainable.targets import Labels, Targets
from trainable.teacher import Teacher


def centre_frames(rows: pd.DataFrame, frames_per_second: float) -> np.ndarray:
    """(N,) int: the frame at the middle of each row's [t_min, t_max]."""
    return np.round((rows.t_min.to_numpy() + rows.t_max.to_numpy()) / 2 * frames_per_second).astype(np.int64)


def crop_start(centre: int, offset: int, n_frames: int, width: int) -> int:
    """First frame of a crop with `centre` at `offset`, clipped so the crop stays inside the clip."""
    return int(np.clip(centre - offset, 0, max(n_frames - width, 0)))


def crop(spectrogram: np.ndarray, start: int, width: int) -> np.ndarray:
    """Frames [start, start + width) of a (n_mels, frames) array, padded past the clip end.

    Padding uses the clip's minimum (its quietest value), not zero: 0 dB would be loud.

    Returns:
        (n_mels, width) float32.
    """
    window = np.asarray(spectrogram[:, start:start + width], dtype=np.float32)  # (M, <=W)
    if window.shape[1] == width:
        return window
    floor = float(np.min(spectrogram)) if spectrogram.size else 0.0
    return np.pad(window, ((0, 0), (0, width - window.shape[1])), constant_values=floor)


def window_starts(n_frames: int, width: int, overlap: int) -> np.ndarray:
    """Starts of windows that cover a whole clip, neighbours sharing `overlap` frames.

    The last window is aligned to the clip end, so no frame is left out; a clip shorter
    than one window gets a single (padded) window.

    Returns:
        (W,) int64, increasing.
    """
    if n_frames <= width:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_frames - width + 1, width - overlap, dtype=np.int64)
    if starts[-1] + width < n_frames:
        starts = np.append(starts, n_frames - width)
    return starts


@dataclass(frozen=True)
class CropSpec:
    """Where one training crop comes from: its event centre and the drawn offset."""

    recording_id: str
    centre: int  # frame of the event centre
    offset: int  # frames from the crop start to the centre
    split: str = "train"  # "test": a pseudo-labelled test recording (stage 3)


def epoch_crops(fold: Fold, tp: pd.DataFrame, fp: pd.DataFrame, config: DataConfig,
                frames_per_second: float, rng: np.random.Generator) -> list[CropSpec]:
    """The crops of one training epoch of `fold`.

    One crop per tp event of the fold's training recordings, plus `config.fp_per_epoch`
    train_fp recordings drawn anew (without replacement) from the fold's negatives, one
    crop around a random fp event of each. Offsets are drawn from `config.crop_offsets`.
    """
    positives = tp[tp.recording_id.isin(set(fold.train_ids))]
    n_negative = min(config.fp_per_epoch, len(fold.negative_ids))
    drawn = rng.choice(np.asarray(fold.negative_ids, dtype=object), size=n_negative, replace=False)
    pool = fp[fp.recording_id.isin(set(drawn))]
    rows_of = pool.groupby("recording_id").indices  # recording -> positions in `pool`
    picks = [rows_of[rid][rng.integers(len(rows_of[rid]))] for rid in drawn]
    rows = pd.concat([positives, pool.iloc[picks]], ignore_index=True)
    offsets = rng.choice(np.asarray(config.crop_offsets), size=len(rows))
    centres = centre_frames(rows, frames_per_second)
    return [CropSpec(str(rid), int(c), int(o)) for rid, c, o in zip(rows.recording_id, centres, offsets)]


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
    """Training crops with their targets, read from the memory-mapped cache.

    Item i is `(x, targets)`:
        x: (1, n_mels, crop_frames) float32 log-mel.
        targets: the crop's Targets in its stage (clip (C,), frame (C, crop_frames), and
            their weights).
    """

    def __init__(self, cache: LogMelCache, crops: list[CropSpec], labels: Labels, n_species: int,
                 crop_frames: int):
        self.cache, self.crops, self.labels = cache, crops, labels
        self.n_species, self.crop_frames = n_species, crop_frames

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Targets]:
        spec = self.crops[i]
        spectrogram = self.cache.load(spec.split, spec.recording_id)  # (M, T) memory-mapped
        start = crop_start(spec.centre, spec.offset, spectrogram.shape[1], self.crop_frames)
        x = crop(spectrogram, start, self.crop_frames)[None]  # (1, M, W)
        targets = self.labels.crop(spec.split, spec.recording_id, start, self.crop_frames, self.n_species)
        return torch.from_numpy(x), targets


class ClipWindows(Dataset):
    """Whole clips cut into overlapping windows, for validation and test.

    Item i is `(windows, truth)`:
        windows: (W, 1, n_mels, crop_frames) float32, covering recording i entirely.
        truth: (n_species,) float32 clip labels (all zero when no labels are given).
    """

    def __init__(self, cache: LogMelCache, split: str, recording_ids: list[str] | tuple[str, ...],
                 crop_frames: int, overlap: int, truth: np.ndarray | None = None, n_species: int = 0):
        self.cache, self.split, self.recording_ids = cache, split, list(recording_ids)
        self.crop_frames, self.overlap = crop_frames, overlap
        self.truth = truth if truth is not None else np.zeros((len(self.recording_ids), n_species), np.float32)

    @classmethod
    def validation(cls, cache: LogMelCache, fold: Fold, tp: pd.DataFrame, n_species: int,
                   config: DataConfig) -> ClipWindows:
        """The out-of-fold recordings of `fold` with their clip labels from train_tp."""
        truth = species_matrix(tp, fold.valid_ids, n_species).astype(np.float32)
        return cls(cache, "train", fold.valid_ids, config.crop_frames, config.valid_overlap, truth)

    def __len__(self) -> int:
        return len(self.recording_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        spectrogram = self.cache.load(self.split, self.recording_ids[i])  # (M, T)
        starts = window_starts(spectrogram.shape[1], self.crop_frames, self.overlap)
        windows = np.stack([crop(spectrogram, s, self.crop_frames) for s in starts])[:, None]  # (W, 1, M, C)
        return torch.from_numpy(windows), torch.from_numpy(self.truth[i].astype(np.float32))


def collate_windows(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Batch several recordings' windows into one forward pass.

    Clips may differ in length, so windows are concatenated rather than stacked.

    Returns:
        windows (sum W_i, 1, M, crop), the window count of each recording, truth (B, C).
    """
    windows, truth = zip(*items)
    return torch.cat(windows), [len(w) for w in windows], torch.stack(truth)
