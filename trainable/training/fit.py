"""Train one epoch of one fold; predict whole clips for evaluation.

The hot path keeps to batched tensor work on the device: the losses of every step are
summed on the device and read back once per epoch, and the per-step random draws travel
from pinned memory, so the host does not wait for the GPU within an epoch (with bfloat16;
float16's GradScaler reads its scale back once per step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch as _torch  # Device's annotations: its field `torch` hides the module in the class body
from torch import nn
from torch.utils.data import DataLoader

from trainable.config import AugmentConfig
from trainable.data.mixup import Mixup
from trainable.data.targets import Targets
from trainable.model.augment import draw_mixup
from trainable.model.inputs import InputPipeline
from trainable.model.losses import TERMS, SEDLoss
from trainable.model.sed import CLIP_ATT, CLIP_MAX, SEGMENT

LOSS_KEYS = ("total", *TERMS)


def _segment_max(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    # The max over time on logits (sigmoid is monotone), the sigmoid later in float64, so
    # confident classes do not all round to a tied 1.0.
    return logits[SEGMENT].float().amax(dim=-1).double().sigmoid()


def _att_max_mean(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    return (logits[CLIP_ATT].double().sigmoid() + logits[CLIP_MAX].double().sigmoid()) / 2


# DataConfig.window_score -> a window's (W, C) float64 probabilities from the model's logits.
WINDOW_SCORES = {"att_max_mean": _att_max_mean, "segment_max": _segment_max}


class DivergedError(RuntimeError):
    """The loss or the predictions became NaN or infinite; training cannot go on from these weights."""


@dataclass(frozen=True)
class Device:
    """Where a trial computes, and the CUDA-only speed-ups that go with it.

    `force_amp` and `force_channels_last` override the device's own choice, for what has no GPU
    of its kind at hand: tests run the CUDA paths on the CPU, where torch has bfloat16 and float16
    autocast and a GradScaler too (tests/test_device_branches.py), and a GPU check can force
    float16 with its GradScaler on a GPU that has bfloat16 (a T4's path). No trial config sets
    them: a trial's device is Ray's assignment (trainable.tune.assigned_device).
    """

    torch: torch.device
    cpus: int = 1  # the CPUs Ray assigned the trial (trainable.training.loader.loader_workers)
    force_amp: _torch.dtype | None = None  # autocast's dtype, torch.float32 for none; None: the device's own
    force_channels_last: bool | None = None  # None: the device's own (CUDA only)

    @property
    def cuda(self) -> bool:
        return self.torch.type == "cuda"

    @property
    def amp_dtype(self) -> _torch.dtype:
        """Autocast's dtype: bfloat16 where the GPU has it (no loss scaling needed), else float16;
        float32 (no autocast) on the CPU."""
        if self.force_amp is not None:
            return self.force_amp
        if not self.cuda:
            return torch.float32
        # Native bfloat16 only (compute capability 8.0 on): torch's default also says yes for a GPU that
        # merely emulates it (a T4, 7.5), which then trains slower than in float16 with loss scaling.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16

    @property
    def channels_last(self) -> bool:
        """The model and its input in NHWC: cuDNN picks its faster convolution kernels under
        autocast with it (on CUDA)."""
        return self.cuda if self.force_channels_last is None else self.force_channels_last

    def autocast(self) -> _torch.autocast:
        """Mixed precision in `amp_dtype`; none in float32."""
        return torch.autocast(self.torch.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    def grad_scaler(self) -> _torch.amp.GradScaler:
        """Loss scaling for float16 only: its step reads the scale back on the host."""
        return torch.amp.GradScaler(self.torch.type, enabled=self.amp_dtype == torch.float16)

    def batch(self, x: _torch.Tensor) -> _torch.Tensor:
        """Move a (B, 1, M, T) log-mel batch to the device."""
        return x.to(self.torch, non_blocking=True)

    def layout(self, x: _torch.Tensor) -> _torch.Tensor:
        """The backbone input in the device's best memory layout (`channels_last`)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass(frozen=True)
class EpochStats:
    """What one fold's training epoch did."""

    losses: dict[str, float]  # mean per sample, keys LOSS_KEYS
    samples: int
    seconds: float


def no_boundary() -> None:
    """The default `at_boundary`: nothing to do between batches."""


@dataclass
class PassProgress:
    """A fold's training pass so far: what a checkpoint taken between two of its batches holds."""

    batches: int = 0  # batches done
    sums: torch.Tensor | None = None  # (K,) their losses summed over samples, on the device; None: none yet
    samples: int = 0
    seconds: float = 0.0  # of training before this process (a resumed pass)
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds of the pass, those before a resume included."""
        return self.seconds + time.perf_counter() - self.started


def train_epoch(model: nn.Module, loader: DataLoader, loss_fn: SEDLoss, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, pipeline: InputPipeline, augment: AugmentConfig,
                rng: np.random.Generator, device: Device,
                batch_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                progress: PassProgress | None = None,
                at_boundary: Callable[[], None] = no_boundary) -> EpochStats:
    """One pass over `loader` (items: x (B, 1, M, T), the batch's Targets and Placements).

    Augmentation and mixup draw from `rng`, the fold's generator, so a resumed fold
    repeats exactly what an uninterrupted one would do. A `batch_scheduler` is stepped after
    every batch (the reference's cosine).

    Args:
        progress: the pass so far, updated after every batch: a pass resumed from a mid-epoch
            checkpoint passes the saved one, and `loader` yields the batches it had left.
        at_boundary: called after every batch, once `progress` says where the pass is
            (trainable.training.preemption: a process that must exit checkpoints there).

    Raises:
        DivergedError: the mean loss of the epoch is NaN or infinite.
    """
    model.train()
    progress = progress if progress is not None else PassProgress()
    if progress.sums is None:
        progress.sums = torch.zeros(len(LOSS_KEYS), device=device.torch)  # (K,) summed over samples
    progress.sums = progress.sums.to(device.torch)
    for x, targets, where in loader:
        x = device.layout(pipeline.training(device.batch(x), where, rng))  # (B, in_chans, M, T)
        targets = targets.to(device.torch)  # clip (B, C), frame (B, C, T) and their weights
        x, targets, feature_mix = mixed_batch(x, targets, augment, rng, device)
        with device.autocast():
            logits = model(x, mix=feature_mix)
        terms = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        if batch_scheduler is not None:
            batch_scheduler.step()
        progress.sums += torch.stack([terms[key].detach() for key in LOSS_KEYS]) * len(x)
        progress.samples += len(x)
        progress.batches += 1
        at_boundary()
    means = (progress.sums / max(progress.samples, 1)).tolist()  # the epoch's one host sync
    losses = dict(zip(LOSS_KEYS, means))
    if not all(math.isfinite(value) for value in means):
        raise DivergedError("the loss is not finite (" + ", ".join(
            f"{key} {value:.4g}" for key, value in losses.items()) + "); lower train.lr or check the data")
    return EpochStats(losses, progress.samples, progress.elapsed())


def mixed_batch(x: torch.Tensor, targets: Targets, augment: AugmentConfig, rng: np.random.Generator,
                device: Device) -> tuple[torch.Tensor, Targets, Mixup | None]:
    """The batch under one mixup draw (AugmentConfig.mixup_alpha): its targets mixed, and its
    input mixed here or its feature map by the model (AugmentConfig.mixup_on: the draw to hand the
    model, else None). Unchanged without mixup."""
    mix = draw_mixup(len(x), augment.mixup_alpha, rng, device.torch)
    if mix is None:
        return x, targets, None
    if augment.mixup_on == "input":
        x = mix(x)
    return x, targets.mixed(mix), mix if augment.mixup_on == "features" else None


@torch.no_grad()
def predict_windows(model: nn.Module, loader: Iterable, pipeline: InputPipeline, device: Device,
                    at_boundary: Callable[[], None] = no_boundary) -> tuple[dict[str, np.ndarray], list[int]]:
    """Window probabilities of whole recordings cut into windows, by every window score
    (WINDOW_SCORES: the reference's mean of the attention and max clip probabilities, and the
    max over time of the segment probability), from one forward pass.

    Args:
        loader: batches from `trainable.data.windows.collate_windows`: windows (sum W, 1, M, T), window
            counts per recording, truth (unused here), placements.
        at_boundary: called after every batch (trainable.training.preemption; a checkpoint taken there
            repeats the whole prediction).

    Returns:
        {score name: (sum W, C) float64 probabilities in the loader's order}, and each
        recording's window count.

    Raises:
        DivergedError: a probability is NaN.
    """
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in WINDOW_SCORES}
    counts = []
    for windows, batch_counts, _, where in loader:
        with device.autocast():
            logits = model(device.layout(pipeline.evaluation(device.batch(windows), where)))
        for name, score in WINDOW_SCORES.items():
            parts[name].append(score(logits))  # (sum W, C)
        counts.extend(batch_counts)
        at_boundary()
    if not counts:
        return {name: np.zeros((0, 0)) for name in WINDOW_SCORES}, counts
    probabilities = {name: torch.cat(p).cpu().numpy() for name, p in parts.items()}
    if not all(np.isfinite(p).all() for p in probabilities.values()):
        raise DivergedError("the predictions are not finite (the weights diverged); lower train.lr")
    return probabilities, counts


def clips_of_windows(windows: np.ndarray, counts: list[int]) -> np.ndarray:
    """(N, C): per recording, the max over its windows of (sum W, C) window probabilities."""
    if not counts:
        return np.zeros((0, windows.shape[1] if windows.ndim == 2 else 0))
    return np.maximum.reduceat(windows, np.cumsum([0, *counts[:-1]]), axis=0)


def predict_clips(model: nn.Module, loader: DataLoader, pipeline: InputPipeline, device: Device,
                  at_boundary: Callable[[], None] = no_boundary) -> dict[str, np.ndarray]:
    """Clip probabilities of whole recordings by every window score: the max over each
    recording's windows of `predict_windows` (the reference's evaluation).

    Returns:
        {score name: (N, C) float64 probabilities in the loader's recording order}.

    Raises:
        DivergedError: a probability is NaN.
    """
    windows, counts = predict_windows(model, loader, pipeline, device, at_boundary)
    return {name: clips_of_windows(p, counts) for name, p in windows.items()}
