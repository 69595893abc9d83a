"""The four-term SED loss of the seed recipe.

    total = w_att * L_att + w_max * L_max + w_pseudo * L_pseudo + w_frame * L_frame

L_att, L_max: BCE of the attention-pooled and max-pooled clip logits against the clip labels,
    with a class-balanced pos_weight (rare species count more).
L_pseudo: the model's own detached segment probabilities >= pseudo_threshold become
    pseudo-labels that the attention logits must agree with.
L_frame: BCE of the frame logits against the annotated frames, on positive frames only
    (an unannotated frame may still hold an unlabelled call, so it is no evidence of absence).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainable.config import LossConfig
from trainable.model import ATTENTION, CLIP_ATT, CLIP_MAX, FRAME, SEGMENT

TERMS = ("att", "max", "pseudo", "frame")  # reported as loss/<term>, beside loss/total


def balanced_pos_weight(counts: np.ndarray) -> torch.Tensor:
    """Class-balanced BCE pos_weight: max count / class count.

    Args:
        counts: (C,) positive examples per class in the training set.

    Returns:
        (C,) float32; a class without examples gets 1 (it has no positives to weigh).
    """
    counts = np.asarray(counts, dtype=np.float64)
    weight = np.divide(counts.max(initial=1.0), counts, out=np.ones_like(counts), where=counts > 0)
    return torch.as_tensor(weight, dtype=torch.float32)


class SEDLoss(nn.Module):
    """The weighted sum of the four terms; each term is also returned for logging.

    Args:
        config: the weights, the pseudo-label threshold.
        pos_weight: (C,) class weights of the clip terms, or None for plain BCE.
    """

    def __init__(self, config: LossConfig, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: dict[str, torch.Tensor], clip_target: torch.Tensor,
                frame_target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss of one batch.

        Args:
            logits: SEDModel outputs.
            clip_target: (B, C) clip labels in [0, 1] (mixed when mixup is on).
            frame_target: (B, C, T) frame labels in [0, 1], T = the frame logits' length.

        Returns:
            {"total": scalar, "att": ..., "max": ..., "pseudo": ..., "frame": ...}. A term
            whose weight is 0 is not computed at all (0, and no gradient), so it cannot leak
            a NaN into the total.
        """
        c = self.config
        weights = {"att": c.w_att, "max": c.w_max, "pseudo": c.w_pseudo, "frame": c.w_frame}
        compute = {"att": lambda: self._clip(logits[CLIP_ATT], clip_target),
                   "max": lambda: self._clip(logits[CLIP_MAX], clip_target),
                   "pseudo": lambda: self._pseudo(logits[SEGMENT], logits[ATTENTION]),
                   "frame": lambda: self._frame(logits[FRAME], frame_target)}
        zero = clip_target.new_zeros(())
        terms = {name: compute[name]() if weights[name] > 0 else zero for name in TERMS}
        terms["total"] = sum(weights[name] * terms[name] for name in TERMS if weights[name] > 0)
        return terms

    def _clip(self, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pos_weight = self.pos_weight if self.config.class_balanced else None
        return F.binary_cross_entropy_with_logits(logit.float(), target, pos_weight=pos_weight)

    def _pseudo(self, segment: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        # Pseudo-labels must not carry gradient: the model would learn to agree with itself.
        labels = (torch.sigmoid(segment.detach().float()) >= self.config.pseudo_threshold).float()  # (B, C, T')
        # The attention *logits* meet the BCE-with-logits; the reference fed it softmax
        # weights (already in [0, 1], summing to 1 over time), which is a different loss.
        return F.binary_cross_entropy_with_logits(attention.float(), labels)

    @staticmethod
    def _frame(frame: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # BCE on positive frames is -log sigmoid(z) = softplus(-z) there. Weighting each frame
        # by its label instead of masking on label > 0 makes a mixed batch's loss exactly the
        # mixture of its two halves' losses: a frame positive only in the mixup partner is
        # not pushed towards negative (it may hold an unlabelled call).
        positive_loss = F.softplus(-frame.float())  # (B, C, T)
        # Dividing by the label mass needs no host sync; a batch without any positive frame
        # (all-fp crops) gives 0.
        return (target * positive_loss).sum() / target.sum().clamp(min=1.0)
