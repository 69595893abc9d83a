"""Training efficiency: samples/s of the trainable's epoch loop (crops from the cache, the
input image and augmentation, mixup, the four-term loss, the optimiser and per-batch schedule
steps, loss logging) over samples/s of
a bare loop (forward, BCE, backward, Adam step) on the same model, batch and input size.

    python -m bench.train_efficiency [--backbone resnet18] [--batch-size 16] [--repeats 5]

Target: >= 0.90 on CPU at the recipe's input size (128 mels x 512 frames) with a small backbone.
The GPU check (bench.gpu_check) measures the same pair on a GPU, under each autocast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import efficiency_parser, header, interleaved, timed, trial, verdict
from trainable.data.crops import epoch_size
from trainable.model.sed import CLIP_ATT, SEDModel
from trainable.training.fit import Device

TARGET = 0.90


@dataclass(frozen=True)
class Paired:
    """Medians of the paired epochs: the trainable's and the bare loop's samples/s and their ratio."""

    ours: float
    bare: float
    ratio: float
    steps: int  # per epoch, of `batch` crops each
    batch: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = efficiency_parser("bench.train_efficiency", __doc__, "epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="crops per step (default: 16)")
    parser.add_argument("--crop-frames", type=int, default=512, help="crop width (default: the recipe's 512)")
    return parser.parse_args(argv)


def paired_rates(backbone: str, batch: int, width: int, repeats: int, device: Device | None = None,
                 data: Path | None = None, n_folds: int = 2) -> Paired:
    """The trainable's fold pass against the bare loop, in turns, on `device` (default: the CPU)
    with its autocast, GradScaler and memory layout on both sides, over `data` (default: the
    synthetic data), fold 0 of `n_folds`."""
    device = device or Device(torch.device("cpu"))
    offsets = [o for o in (32, 64, 128, 256) if o < width] or [width // 2]
    base = {"model.backbone": backbone, "train.batch_size": batch, "data.n_folds": n_folds, "train.folds": [0],
            "data.crop_frames": width, "data.crop_offsets": offsets, "data.valid_overlap": width // 10,
            "data.test_overlap": width // 2}
    probe = trial(base, data=data)
    fold = probe.runs[0].fold
    n_tp = epoch_size(fold, probe.annotations.tp, probe.config.data) - min(probe.config.data.fp_per_epoch,
                                                                          len(fold.negative_ids))
    # Whole batches only: a partial last batch would lower the trainable's figure for a reason
    # that is not overhead.
    total = (n_tp + len(fold.negative_ids)) // batch * batch
    training = trial({**base, "data.fp_per_epoch": max(total - n_tp, 0)}, device, data)
    run = training.runs[0]
    steps = total // batch

    model = SEDModel(training.config.model, training.annotations.n_species).to(device.torch)
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = device.grad_scaler()
    generator = torch.Generator().manual_seed(0)
    x = device.layout(torch.rand(batch, model.config.in_chans, training.cache.features.n_mels, width,
                                 generator=generator).to(device.torch))  # (B, in_chans, M, T)
    y = (torch.rand(batch, training.annotations.n_species, generator=generator) > 0.9).float().to(device.torch)

    def bare_epoch() -> int:
        model.train()
        for _ in range(steps):
            with device.autocast():
                logits = model(x)[CLIP_ATT]
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.cuda:  # the trainable's pass ends in a host sync (its losses); the bare one must wait too
            torch.cuda.synchronize()
        return steps * batch

    def trainable_epoch() -> int:
        return training.train_fold(run).samples  # a pass of its own each

    ours, bare, ratio = interleaved(lambda: timed(trainable_epoch), lambda: timed(bare_epoch), repeats)
    return Paired(ours, bare, ratio, steps, batch)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    header(f"training efficiency: {args.backbone}, batch {args.batch_size}, 128 x {args.crop_frames}, "
           f"{args.threads} threads")
    paired = paired_rates(args.backbone, args.batch_size, args.crop_frames, args.repeats)
    print(f"trainable epoch loop: {paired.ours:.1f} samples/s ({paired.steps} steps of {paired.batch} per epoch)")
    print(f"bare timm loop:       {paired.bare:.1f} samples/s")
    print(f"training efficiency:  {paired.ratio:.3f} (median of {args.repeats} paired epochs; target >="
          f" {TARGET:.2f}: {verdict(paired.ratio, TARGET)})")


if __name__ == "__main__":
    main()
