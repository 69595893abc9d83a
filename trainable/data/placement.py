"""Where an item lies in its clip, and that clip's statistics: what the device-side input
pipeline (trainable.model.inputs) needs to treat a crop as the reference treated the whole clip.
The data builds them (crops, windows, clips); the model's inputs read them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Placement(NamedTuple):
    """Where a crop lies in its clip, and that clip's statistics; batched field by field."""

    stats: torch.Tensor  # (4,) float64: the clip's mean, std, and min and max of its standardised values
    start: torch.Tensor  # () int64: the crop's first frame in the clip
    frames: torch.Tensor  # () int64: the clip's frames
    # () int64: which clip of its batch the crop is cut from, where several crops share one
    # clip's augmentation draws (whole clips in windows: the reference augmented the clip, then
    # cut it); -1: every crop draws its own. (A default tensor is never written to.)
    clip: torch.Tensor = torch.tensor(-1)
    # start, frames and clip stay on the CPU (the draws need them there); stats go to the device.


def placement(spectrogram: np.ndarray, stats: np.ndarray, start: int) -> Placement:
    """The Placement of a crop starting at `start` of this clip, with draws of its own."""
    return Placement(torch.from_numpy(stats), torch.tensor(start, dtype=torch.int64),
                     torch.tensor(spectrogram.shape[1], dtype=torch.int64))
