"""The state of a trial in flight, beyond its selection: each fold's run (model, optimiser,
schedule, generator) and how far the epoch in flight has got. trainable.training.kfold changes
it; trainable.training.checkpoint writes and reads it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from trainable.data.clips import ClipSpec
from trainable.data.crops import CropSpec
from trainable.data.folds import Fold
from trainable.model.losses import SEDLoss
from trainable.model.sed import SEDModel
from trainable.training.fit import EpochStats, PassProgress


@dataclass
class FoldRun:
    """Everything that trains one fold and changes from epoch to epoch."""

    fold: Fold
    model: SEDModel
    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR  # stepped per batch or per epoch (TrainConfig.schedule)
    scaler: torch.amp.GradScaler
    loss_fn: SEDLoss
    rng: np.random.Generator  # crops, fp draws, augmentation, mixup, shuffling
    truth: np.ndarray  # (V, C) clip labels of the validation recordings
    # Stage 3 of whole clips (v4_2): the fp-only recordings the fold trains and validates on,
    # and the relabelled clip labels of all its validation recordings, tp ones first (V + V_fp, C).
    fp_only_train: tuple[str, ...] = ()
    fp_only_valid: tuple[str, ...] = ()
    relabelled: np.ndarray | None = None

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": json.dumps(self.rng.bit_generator.state)}  # JSON: its ints exceed 64 bits

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without loss scaling (CPU, bfloat16)
            self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = json.loads(state["rng"])


@dataclass
class FoldResult:
    """One fold's evaluation in the epoch in flight."""

    lrap: float  # the reference's own validation score (its LRAP; v4_2's relabelled LWLRAP)
    scores: np.ndarray  # (V, C) its out-of-fold clip scores
    stats: EpochStats
    fp_only_scores: np.ndarray | None = None  # (V_fp, C) stage 3 of whole clips: its fp-only recordings'


@dataclass
class EpochProgress:
    """How far the epoch in flight has got, beyond what the folds' states hold."""

    lr: float  # fold 0's learning rate at the epoch's start (what the epoch reports)
    position: int = 0  # the fold in flight, as an index into KFoldTraining.runs
    batches: list[list[CropSpec | ClipSpec]] | None = None  # its batch order; None: not drawn yet
    passed: PassProgress = field(default_factory=PassProgress)  # its training pass so far
    stats: EpochStats | None = None  # its training pass once done (its validation pending)
    done: list[FoldResult] = field(default_factory=list)  # the folds before it

    def fold_done(self, result: FoldResult) -> None:
        self.done.append(result)
        self.position, self.batches, self.passed, self.stats = self.position + 1, None, PassProgress(), None

    def to_json(self) -> dict:
        stats = dataclasses.asdict(self.stats) if self.stats else None
        return {"lr": self.lr, "position": self.position, "stats": stats,
                "batches": None if self.batches is None else [[dataclasses.asdict(c) for c in b] for b in self.batches],
                "passed": {"batches": self.passed.batches, "samples": self.passed.samples,
                           "seconds": self.passed.elapsed()},
                "done": [{"lrap": r.lrap, "stats": dataclasses.asdict(r.stats)} for r in self.done]}

    @classmethod
    def from_json(cls, saved: dict, scores: list[np.ndarray], fp_only_scores: list[np.ndarray | None],
                  sums: torch.Tensor | None, item: type = CropSpec) -> EpochProgress:
        """The progress `to_json` saved; `item`: the class of the trial's items (CropSpec, ClipSpec)."""
        batches = saved["batches"]
        return cls(saved["lr"], saved["position"],
                   None if batches is None else [[item(**c) for c in b] for b in batches],
                   PassProgress(sums=sums, **saved["passed"]),
                   EpochStats(**saved["stats"]) if saved["stats"] else None,
                   [FoldResult(r["lrap"], s, EpochStats(**r["stats"]), extra)
                    for r, s, extra in zip(saved["done"], scores, fp_only_scores)])
