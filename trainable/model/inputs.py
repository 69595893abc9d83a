"""What the backbone sees: log-mel crops turned into its input, with the training augmentation.

Two inputs (ModelConfig.input):

clip_image  the reference's image of the whole clip (its `mono_to_color`): standardised by the
            clip's mean and std, min-max scaled to [0, 255] and truncated to uint8, /255, then
            after augmentation and the crop the ImageNet normalisation of 3 channels.
crop_unit   each crop min-max scaled to [0, 1] on its own, 1 channel.

The reference built the image of the whole 60 s clip per sample and epoch, then cropped it.
Every step it takes is pointwise once the clip's statistics are known, and a mask drawn over
the whole clip only matters where it meets the crop, so here the crop alone is transformed,
on the device, from the clip statistics its item carries (`Placement`): the same numbers at
1/7 of the work, and no host-side copy of the clip.

Two augmentation policies (AugmentConfig.policy): the reference's (brightness/contrast on the
8-bit image, then a random group of gamma 2 and one time and one frequency mask drawn over the
whole clip) and "jitter" (trainable.model.augment: always-on gamma and brightness, SpecAugment per crop).
"""

from __future__ import annotations

import numpy as np
import torch

from trainable.config import AugmentConfig, ModelConfig
from trainable.data.cache import STD_EPS
from trainable.data.placement import Placement
from trainable.model.augment import _per_sample, augment_batch, to_device, unit_scale

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's Normalize of the reference
IMAGENET_STD = (0.229, 0.224, 0.225)


def draw_units(where: Placement, batch: int) -> np.ndarray:
    """(B,) for each crop, which of the batch's random draws it takes: its clip's
    (Placement.clip), or its own."""
    if bool((where.clip < 0).any()):
        return np.arange(batch)
    return where.clip.cpu().numpy()


def clip_image(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """The reference's 8-bit image of crops, from their clips' statistics, /255.

    Args:
        x: (B, 1, M, W) log-mel crops.
        stats: (B, 4) float64 from `clip_statistics` of each crop's clip.

    Returns:
        (B, 1, M, W) float32: uint8 values / 255 (0 everywhere for a clip of one value).
    """
    s = stats.to(x.device, torch.float64, non_blocking=True).view(-1, 4, 1, 1, 1)
    mean, std, lo, hi = s[:, 0], s[:, 1], s[:, 2], s[:, 3]  # (B, 1, 1, 1) each
    z = (x.to(torch.float64) - mean) / (std + STD_EPS)  # the standardised values
    span = hi - lo
    scaled = 255 * (z - lo) / torch.where(span > STD_EPS, span, torch.ones_like(span))
    image = torch.where(span > STD_EPS, scaled.floor(), torch.zeros_like(scaled))  # astype(uint8) truncates
    return image.to(torch.float32) / 255  # ToTensor: uint8 -> float32 / 255


def brightness_contrast(v: torch.Tensor, config: AugmentConfig, rng: np.random.Generator,
                        units: np.ndarray | None = None) -> torch.Tensor:
    """albumentations' RandomBrightnessContrast on 8-bit values: with probability
    brightness_contrast_p, u -> truncate(clip(u * alpha + beta * 255, 0, 255)) with
    alpha = 1 + U(-contrast_limit, contrast_limit) and beta = U(-brightness_limit, brightness_limit),
    in float32 as its lookup table computes it.

    Args:
        v: (B, C, M, W) float32 in [0, 1]; 8-bit values / 255 for the clip image (other input
            is rounded to 8 bits where the transform applies).
        units: (B,) which draw each crop takes (`draw_units`); None: one each.

    Returns:
        (B, C, M, W) float32 in [0, 1].
    """
    units = np.arange(v.shape[0]) if units is None else units
    draws = int(units.max()) + 1
    apply = (rng.random(draws) < config.brightness_contrast_p)[units]  # (B,)
    alpha = (1.0 + rng.uniform(-config.contrast_limit, config.contrast_limit, size=draws))[units]
    beta = rng.uniform(-config.brightness_limit, config.brightness_limit, size=draws)[units]
    if not apply.any():
        return v
    u = (v * 255).round()
    lut = (u * _per_sample(alpha.astype(np.float32), v, torch.float32)
           + _per_sample((beta * 255).astype(np.float32), v, torch.float32))
    adjusted = lut.clamp(0, 255).floor() / 255
    return torch.where(_per_sample(apply, v, torch.bool), adjusted, v)


def _reference_bands(count: int, widest: int, size: np.ndarray | int, batch: int,
                     rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """The reference's TimeMask / FreqMask draws: width w = randrange(0, widest), start
    s = randrange(0, size - w), end = randrange(s, s + w) (none when w == 0); `count` of them.

    Returns:
        [(start (B,), end (B,))] per mask, in the coordinates of the whole clip.
    """
    size = np.broadcast_to(np.asarray(size, dtype=np.int64), (batch,))
    bands = []
    for _ in range(count):
        width = rng.integers(0, max(widest, 1), size=batch)
        start = rng.integers(0, np.maximum(size - width, 1))
        end = rng.integers(start, start + np.maximum(width, 1))  # == start (empty) when width == 0
        bands.append((start, end))
    return bands


def reference_group(v: torch.Tensor, where: Placement, config: AugmentConfig,
                    rng: np.random.Generator, units: np.ndarray | None = None) -> torch.Tensor:
    """The reference's RandomApply(p=group_p) of [gamma group_gamma, time masks, frequency
    masks], drawn over each whole clip and applied to its crop; masked cells become 0.

    Args:
        v: (B, C, M, W) float32 in [0, 1].
        where: the crops' placements (their starts and clip lengths place the time masks).
        units: (B,) which draw each crop takes (`draw_units`); None: one each.
    """
    batch, bins, width = v.shape[0], v.shape[-2], v.shape[-1]
    units = np.arange(batch) if units is None else units
    draws = int(units.max()) + 1
    first = np.unique(units, return_index=True)[1]  # a crop of each draw: its clip's length
    apply = (rng.random(draws) < config.group_p)[units]  # (B,)
    frames = where.frames.cpu().numpy()[first]
    time = [(lo[units], hi[units]) for lo, hi in _reference_bands(config.time_masks, config.time_mask_frames,
                                                                  frames, draws, rng)]
    freq = [(lo[units], hi[units]) for lo, hi in _reference_bands(config.freq_masks, config.freq_mask_bins,
                                                                  bins, draws, rng)]
    if not apply.any():
        return v
    out = v
    if config.group_gamma > 0:
        out = (out ** config.group_gamma).clamp(0, 1)  # adjust_gamma(gamma, gain=1)
    start = where.start.cpu().numpy()
    masked = torch.zeros(batch, bins, width, dtype=torch.bool, device=v.device)  # (B, M, W)
    frame = torch.arange(width, device=v.device)
    mel = torch.arange(bins, device=v.device)
    for lo, hi in time:  # clip coordinates -> the crop's
        lo_t, hi_t = (to_device(a - start, v.device).view(-1, 1) for a in (lo, hi))
        masked |= ((frame >= lo_t) & (frame < hi_t)).view(batch, 1, width)
    for lo, hi in freq:
        lo_t, hi_t = (to_device(a, v.device).view(-1, 1) for a in (lo, hi))
        masked |= ((mel >= lo_t) & (mel < hi_t)).view(batch, bins, 1)
    out = out.masked_fill(masked.unsqueeze(1), 0.0)
    return torch.where(_per_sample(apply, v, torch.bool), out, v)


def imagenet_normalise(v: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 1, M, W) in [0, 1] -> (B, 3, M, W): the gray image as RGB, ImageNet-normalised with
    `mean` and `std` (IMAGENET_MEAN, IMAGENET_STD as (1, 3, 1, 1) tensors on v's device)."""
    return (v.expand(-1, 3, -1, -1) - mean) / std


class InputPipeline:
    """Crops -> backbone input, for training (augmented) and evaluation.

    Args:
        model: which input (ModelConfig.input).
        augment: the training policy and its parameters.
        zero_past_end: training frames past a clip's end become 0 (whole clips in windows: the
            reference padded its last window of a clip with zeros after the normalisation).
    """

    def __init__(self, model: ModelConfig, augment: AugmentConfig, zero_past_end: bool = False):
        self.input, self.augment, self.zero_past_end = model.input, augment, zero_past_end
        self._imagenet: dict[torch.device, tuple[torch.Tensor, ...]] = {}  # (mean, std), made once per device

    def unit(self, x: torch.Tensor, where: Placement) -> torch.Tensor:
        """(B, 1, M, W) crops -> [0, 1] (the clip image / 255, or each crop min-max scaled)."""
        if self.input == "clip_image":
            return clip_image(x, where.stats)
        return unit_scale(x.float())

    def finish(self, v: torch.Tensor) -> torch.Tensor:
        if self.input != "clip_image":
            return v
        if v.device not in self._imagenet:  # a copy to the GPU would make the host wait: once only
            self._imagenet[v.device] = tuple(torch.tensor(values, dtype=torch.float32, device=v.device).view(1, 3, 1, 1)
                                             for values in (IMAGENET_MEAN, IMAGENET_STD))
        return imagenet_normalise(v, *self._imagenet[v.device])

    def evaluation(self, x: torch.Tensor, where: Placement) -> torch.Tensor:
        """(B, 1, M, W) -> (B, in_chans, M, W), no augmentation."""
        return self.finish(self.unit(x, where))

    def training(self, x: torch.Tensor, where: Placement, rng: np.random.Generator) -> torch.Tensor:
        """(B, 1, M, W) -> (B, in_chans, M, W), augmented with draws from `rng`."""
        v = self.unit(x, where)
        if self.augment.policy == "reference":
            units = draw_units(where, len(v))
            v = reference_group(brightness_contrast(v, self.augment, rng, units), where, self.augment, rng, units)
        else:
            v = augment_batch(v, self.augment, rng)
        v = self.finish(v)
        return past_end_zeroed(v, where) if self.zero_past_end else v


def past_end_zeroed(v: torch.Tensor, where: Placement) -> torch.Tensor:
    """(B, C, M, W) with the frames past each crop's clip end set to 0."""
    past = where.start.view(-1, 1) + torch.arange(v.shape[-1]) >= where.frames.view(-1, 1)  # (B, W) on the CPU
    if not past.any():
        return v
    return v.masked_fill(past.to(v.device, non_blocking=True).view(len(v), 1, 1, -1), 0.0)
