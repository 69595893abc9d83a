"""Training-time augmentation of log-mel batches: unit scaling, gamma/brightness jitter,
SpecAugment masks, and the mixup draws (trainable.data.mixup: what a draw does).

Everything works on whole batches with tensor ops on the batch's device. All randomness comes
from the `np.random.Generator` passed in (one per fold, checkpointed by the training loop), so
a run is reproducible and resumable: the small per-sample parameters are drawn with numpy,
moved to the device, and the heavy work is done in torch.
"""

from __future__ import annotations

import numpy as np
import torch

from trainable.config import AugmentConfig
from trainable.data.mixup import Mixup


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision input (pow and division lose too much in 10 mantissa bits)."""
    return torch.promote_types(x.dtype, torch.float32)


def to_device(values: np.ndarray, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small numpy array on `device`, without making the host wait for the GPU.

    A copy from pageable memory synchronises the CUDA stream first; from pinned memory it
    is queued like a kernel.
    """
    tensor = torch.as_tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _per_sample(values: np.ndarray, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,) numpy values as a tensor that broadcasts over the sample dims of x: (B, 1, ..., 1)."""
    return to_device(values, x.device, dtype).view(-1, *([1] * (x.ndim - 1)))


def unit_scale(x: torch.Tensor) -> torch.Tensor:
    """Scale each sample to [0, 1] by its own min and max; a constant sample becomes 0.

    Used for training and evaluation input alike (log-mel in dB has no fixed range), and gamma
    jitter needs [0, 1].

    Args:
        x: (B, ...) batch, any float dtype.

    Returns:
        (B, ...) tensor of x's dtype, per-sample min 0 and max 1.
    """
    work = x.to(_work_dtype(x))
    flat = work.flatten(1)  # (B, N)
    lo = flat.amin(dim=1).view(-1, *([1] * (x.ndim - 1)))  # (B, 1, ..., 1)
    span = flat.amax(dim=1).view_as(lo) - lo
    # A constant sample has x - lo == 0 everywhere; dividing by 1 keeps it 0 instead of NaN.
    span = torch.where(span > 0, span, torch.ones_like(span))
    return ((work - lo) / span).to(x.dtype)


def jitter(x: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """Gamma and brightness jitter, one draw per sample.

    x ** g with log(g) ~ U(-config.gamma, config.gamma), then + b with
    b ~ U(-config.brightness, config.brightness), clamped to [0, 1].

    Args:
        x: (B, 1, M, T) batch scaled to [0, 1] (see `unit_scale`).
        config: gamma and brightness ranges.
        rng: source of all randomness.

    Returns:
        (B, 1, M, T) tensor of x's dtype in [0, 1]; x itself when gamma and brightness are 0.
    """
    batch = x.shape[0]
    # Both are always drawn, so switching one knob off does not shift the other's draws.
    log_gamma = rng.uniform(-config.gamma, config.gamma, size=batch)  # (B,)
    shift = rng.uniform(-config.brightness, config.brightness, size=batch)  # (B,)
    if config.gamma == 0 and config.brightness == 0:
        return x
    dtype = _work_dtype(x)
    out = x.to(dtype).clamp(0.0, 1.0)  # pow of a slightly negative value would be NaN
    if config.gamma > 0:
        out = out.pow(_per_sample(np.exp(log_gamma), x, dtype))  # (B, 1, M, T)
    if config.brightness > 0:
        out = out + _per_sample(shift, x, dtype)
    return out.clamp_(0.0, 1.0).to(x.dtype)


def _band_masks(count: int, widest: int, size: int, batch: int, rng: np.random.Generator,
                device: torch.device) -> torch.Tensor:
    """`count` bands per sample of width U{0..widest} (capped at size) at a uniform start.

    Returns:
        (B, size) bool, True where any band covers the position.
    """
    widths = np.minimum(rng.integers(0, widest + 1, size=(batch, count)), size)  # (B, K)
    starts = rng.integers(0, size - widths + 1)  # (B, K); band fits inside [0, size)
    widths_t = to_device(widths, device).unsqueeze(-1)  # (B, K, 1)
    starts_t = to_device(starts, device).unsqueeze(-1)  # (B, K, 1)
    pos = torch.arange(size, device=device)  # (size,)
    inside = (pos >= starts_t) & (pos < starts_t + widths_t)  # (B, K, size)
    return inside.any(dim=1)  # (B, size)


def spec_augment(x: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment time and frequency masks, drawn per sample.

    Each sample gets config.time_masks time masks of width U{0..time_mask_frames} and
    config.freq_masks frequency masks of width U{0..freq_mask_bins}, each at a uniform start
    and never past the input's edges. Masked cells become 0, the quietest value after
    `unit_scale`.

    Args:
        x: (B, 1, M, T) batch, M mel bins and T frames.
        config: mask counts and widths.
        rng: source of all randomness.

    Returns:
        A new (B, 1, M, T) tensor (x is not modified).
    """
    if config.time_masks == 0 and config.freq_masks == 0:
        return x.clone()
    batch, (bins, frames) = x.shape[0], x.shape[-2:]
    time = _band_masks(config.time_masks, config.time_mask_frames, frames, batch, rng, x.device)  # (B, T)
    freq = _band_masks(config.freq_masks, config.freq_mask_bins, bins, batch, rng, x.device)  # (B, M)
    lead = [1] * (x.ndim - 3)  # channel dims between batch and (M, T)
    masked = time.view(batch, *lead, 1, frames) | freq.view(batch, *lead, bins, 1)  # (B, 1, M, T)
    return x.masked_fill(masked, 0)


def augment_batch(x: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """Training-time input augmentation, `jitter` then `spec_augment`: (B, 1, M, T) in [0, 1] -> same."""
    return spec_augment(jitter(x, config, rng), config, rng)


def draw_mixup(batch_size: int, alpha: float, rng: np.random.Generator,
               device: torch.device | str = "cpu") -> Mixup | None:
    """One mixup draw: lam ~ Beta(alpha, alpha), one per batch as in the original mixup paper,
    and perm a uniform random permutation of the batch, on `device`.

    Returns:
        The draw, or None when alpha <= 0 or batch_size < 2 (nothing to mix).
    """
    if alpha <= 0 or batch_size < 2:
        return None
    lam = float(rng.beta(alpha, alpha))
    perm = to_device(rng.permutation(batch_size), device, torch.long)  # (B,)
    return Mixup(lam=lam, perm=perm)
