"""Training efficiency: samples/s of the trainable's epoch loop (crops from the cache, the
input image and augmentation, mixup, the four-term loss, the optimiser and per-batch schedule
steps, loss logging) over samples/s of
a bare loop (forward, BCE, backward, Adam step) on the same model, batch and input size.

    python -m bench.train_efficiency [--backbone resnet18] [--batch-size 16] [--repeats 5]

Target: >= 0.90 on CPU at the recipe's input size (128 mels x 512 frames) with a small backbone.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import efficiency_parser, header, interleaved, timed, trial, verdict
from trainable.data.crops import epoch_size
from trainable.model.sed import CLIP_ATT, SEDModel

TARGET = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = efficiency_parser("bench.train_efficiency", __doc__, "epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="crops per step (default: 16)")
    parser.add_argument("--crop-frames", type=int, default=512, help="crop width (default: the recipe's 512)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    header(f"training efficiency: {args.backbone}, batch {args.batch_size}, 128 x {args.crop_frames}, "
           f"{args.threads} threads")
    batch, width = args.batch_size, args.crop_frames
    offsets = [o for o in (32, 64, 128, 256) if o < width] or [width // 2]
    base = {"model.backbone": args.backbone, "train.batch_size": batch, "data.n_folds": 2, "train.folds": [0],
            "data.crop_frames": width, "data.crop_offsets": offsets, "data.valid_overlap": width // 10,
            "data.test_overlap": width // 2}
    probe = trial(base)
    fold = probe.runs[0].fold
    n_tp = epoch_size(fold, probe.annotations.tp, probe.config.data) - min(probe.config.data.fp_per_epoch,
                                                                          len(fold.negative_ids))
    # Whole batches only: a partial last batch would lower the trainable's figure for a reason
    # that is not overhead.
    total = (n_tp + len(fold.negative_ids)) // batch * batch
    training = trial({**base, "data.fp_per_epoch": max(total - n_tp, 0)})
    run = training.runs[0]
    steps = total // batch

    model = SEDModel(training.config.model, training.annotations.n_species)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, model.config.in_chans, training.cache.features.n_mels, width,
                   generator=generator)  # (B, in_chans, M, T)
    y = (torch.rand(batch, training.annotations.n_species, generator=generator) > 0.9).float()  # (B, C)

    def bare_epoch() -> int:
        model.train()
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(model(x)[CLIP_ATT], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return steps * batch

    def trainable_epoch() -> int:
        return training.train_fold(run).samples  # a pass of its own each

    ours, bare, ratio = interleaved(lambda: timed(trainable_epoch), lambda: timed(bare_epoch), args.repeats)
    print(f"trainable epoch loop: {ours:.1f} samples/s ({steps} steps of {batch} per epoch)")
    print(f"bare timm loop:       {bare:.1f} samples/s")
    print(f"training efficiency:  {ratio:.3f} (median of {args.repeats} paired epochs; target >= {TARGET:.2f}:"
          f" {verdict(ratio, TARGET)})")


if __name__ == "__main__":
    main()
