"""One mixup draw: which samples of a batch mix with which, and by how much. The targets mix by
it (trainable.data.targets), and the model mixes its input or feature map by the same draw
(trainable.model.augment.draw_mixup draws it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensor fields with == is ambiguous
class Mixup:
    """One mixup draw for a batch: out = lam * t + (1 - lam) * t[perm] along dim 0.

    The same draw mixes the input or the backbone feature map and the targets (clip and
    frame), so the labels follow the mixed signal.
    """

    lam: float  # weight of the sample itself
    perm: torch.Tensor  # (B,) long, on the batch's device; sample i is mixed with perm[i]

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """Mix t: (B, ...) -> (B, ...) of the same dtype."""
        if t.shape[0] != self.perm.shape[0]:
            raise ValueError(f"mixup drawn for batch {self.perm.shape[0]}, got a tensor of batch {t.shape[0]}")
        partner = t.index_select(0, self.perm.to(t.device))  # (B, ...)
        return self.lam * t + (1.0 - self.lam) * partner
