"""Evaluation efficiency: windows/s of the trainable's whole-clip evaluation (windows cut from
the cache, batched over recordings, max over time and windows) over windows/s of a bare
forward pass on the same windows in the same batches.

    python -m bench.eval_efficiency [--backbone resnet18] [--repeats 5]

Target: >= 0.90.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.common import efficiency_parser, header, interleaved, timed, trial, verdict
from trainable.data.windows import ClipWindows, collate_windows
from trainable.model.sed import SEGMENT

TARGET = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return efficiency_parser("bench.eval_efficiency", __doc__, "evaluations").parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    training = trial({"model.backbone": args.backbone, "data.n_folds": 2, "train.folds": [0]})
    run, data = training.runs[0], training.config.data
    per_batch = training.config.train.eval_recordings
    header(f"evaluation efficiency: {args.backbone}, windows of 128 x {data.crop_frames} (overlap"
           f" {data.valid_overlap}), {per_batch} recordings per forward, {args.threads} threads")
    ids = run.fold.valid_ids
    windows = ClipWindows(training.cache, "train", ids, data.crop_frames, data.valid_overlap,
                          n_species=training.annotations.n_species, rule=data.window_rule)
    n_windows = sum(len(windows.starts(training.cache.load("train", rid).shape[1])) for rid in ids)
    # The bare side gets the very same batches, already on the device and scaled.
    batches = []
    for start in range(0, len(ids), per_batch):
        items = [windows[i] for i in range(start, min(start + per_batch, len(ids)))]
        x, _, _, where = collate_windows(items)
        batches.append(training.device.layout(training.pipeline.evaluation(training.device.batch(x), where)))
    model = run.model.eval()

    @torch.no_grad()
    def bare() -> int:
        for batch in batches:
            model(batch)[SEGMENT].amax(dim=-1)
        return n_windows

    def trainable() -> int:
        scores = training.predict_fold(run, data.window_rule, data.valid_overlap)[data.window_score]
        assert np.isfinite(scores).all()
        return n_windows

    ours, theirs, ratio = interleaved(lambda: timed(trainable), lambda: timed(bare), args.repeats)
    print(f"trainable evaluation: {ours:.1f} windows/s ({n_windows} windows of {len(ids)} recordings)")
    print(f"bare forward:         {theirs:.1f} windows/s")
    print(f"evaluation efficiency: {ratio:.3f} (median of {args.repeats} paired runs; target >= {TARGET:.2f}:"
          f" {verdict(ratio, TARGET)})")


if __name__ == "__main__":
    main()
