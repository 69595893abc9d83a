"""Evaluation windows: whole clips cut into overlapping windows of `crop_frames`, for
validation, test and export (DataConfig.window_rule), and batches of several recordings'
windows for one forward pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from trainable.config import DataConfig
from trainable.data.cache import LogMelCache
from trainable.data.crops import crop
from trainable.data.folds import Fold, species_matrix
from trainable.data.placement import Placement

REFERENCE_VALID_OVERLAP = DataConfig.valid_overlap  # the reference's: each next start = previous end - 51


def window_starts(n_frames: int, width: int, overlap: int, rule: str = "reference") -> np.ndarray:
    """Starts of windows over a whole clip, neighbours sharing `overlap` frames
    (DataConfig.window_rule).

    "reference": 0, then each previous end - overlap, while the window fits in the clip (at
    3751 frames, width 512, overlap 51: the reference's 8 windows 0, 461, ..., 3227); "cover":
    the same, with a last window aligned to the clip end so no frame is left out. A clip
    shorter than one window gets a single (padded) window.

    Returns:
        (W,) int64, increasing.
    """
    if n_frames <= width:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_frames - width + 1, width - overlap, dtype=np.int64)
    if rule == "cover" and starts[-1] + width < n_frames:
        starts = np.append(starts, n_frames - width)
    return starts


class ClipWindows(Dataset):
    """Whole clips cut into overlapping windows, for validation and test.

    Item i is `(windows, truth, placements)`:
        windows: (W, 1, n_mels, crop_frames) float16, covering recording i.
        truth: (n_species,) float32 clip labels (all zero when no labels are given).
        placements: each window's Placement, batched: stats (W, 4), start (W,), frames (W,).
    """

    def __init__(self, cache: LogMelCache, split: str, recording_ids: list[str] | tuple[str, ...],
                 crop_frames: int, overlap: int, truth: np.ndarray | None = None, n_species: int = 0,
                 rule: str = "reference"):
        self.cache, self.split, self.recording_ids = cache, split, list(recording_ids)
        self.crop_frames, self.overlap, self.rule = crop_frames, overlap, rule
        self.truth = truth if truth is not None else np.zeros((len(self.recording_ids), n_species), np.float32)

    @classmethod
    def validation(cls, cache: LogMelCache, fold: Fold, tp: pd.DataFrame, n_species: int, config: DataConfig,
                   rule: str | None = None, overlap: int | None = None) -> ClipWindows:
        """The out-of-fold recordings of `fold` with their clip labels from train_tp, in the
        config's windows unless `rule` and `overlap` say others."""
        truth = species_matrix(tp, fold.valid_ids, n_species).astype(np.float32)
        return cls(cache, "train", fold.valid_ids, config.crop_frames,
                   config.valid_overlap if overlap is None else overlap, truth,
                   rule=config.window_rule if rule is None else rule)

    def __len__(self) -> int:
        return len(self.recording_ids)

    def starts(self, n_frames: int) -> np.ndarray:
        return window_starts(n_frames, self.crop_frames, self.overlap, self.rule)

    def batches(self, recordings: int, pin_memory: bool = False) -> DataLoader:
        """The windows of `recordings` recordings at a time (`collate_windows`), cut in this
        process: over 10,000 windows per second per core (docs/benchmarks.md, section 9) keep up
        with a GPU, and loader workers would start anew for every pass."""
        return DataLoader(self, batch_size=recordings, collate_fn=collate_windows, pin_memory=pin_memory)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, Placement]:
        rid = self.recording_ids[i]
        spectrogram = self.cache.load(self.split, rid)  # (M, T)
        windows, where = cut_windows(spectrogram, self.cache.statistics(self.split, rid),
                                     self.starts(spectrogram.shape[1]), self.crop_frames)
        return windows, torch.from_numpy(self.truth[i].astype(np.float32)), where


def cut_windows(spectrogram: np.ndarray, stats: np.ndarray, starts: np.ndarray,
                width: int) -> tuple[torch.Tensor, Placement]:
    """A clip's windows [start, start + width), padded past its end (`crop`).

    Returns:
        (W, 1, n_mels, width) float16 windows, and their placements: stats (W, 4), start (W,),
        frames (W,) (the clip field is the batch's to set: trainable.data.clips.collate_clips).
    """
    windows = np.stack([crop(spectrogram, start, width) for start in starts])[:, None]  # (W, 1, M, width)
    count = len(starts)
    where = Placement(torch.from_numpy(stats).expand(count, 4), torch.from_numpy(starts),
                      torch.full((count,), spectrogram.shape[1]))
    return torch.from_numpy(windows), where


def collate_windows(items: list[tuple[torch.Tensor, torch.Tensor, Placement]]
                    ) -> tuple[torch.Tensor, list[int], torch.Tensor, Placement]:
    """Batch several recordings' windows into one forward pass.

    Clips may differ in length, so windows are concatenated rather than stacked.

    Returns:
        windows (sum W_i, 1, M, crop), the window count of each recording, truth (B, C), and
        the windows' placements (sum W_i, ...).
    """
    windows, truth, where = zip(*items)
    return torch.cat(windows), [len(w) for w in windows], torch.stack(truth), concatenated(where)


def concatenated(placements: tuple[Placement, ...], clip: torch.Tensor | None = None) -> Placement:
    """Several items' window placements as one batch's: stats, start and frames concatenated,
    `clip` (each window's clip in the batch, trainable.data.clips) or the default (draws of their own)."""
    parts = [torch.cat(field) for field in zip(*(where[:3] for where in placements))]
    return Placement(*parts) if clip is None else Placement(*parts)._replace(clip=clip)
