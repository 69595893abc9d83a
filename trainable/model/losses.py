"""The four-term SED loss of the seed recipe.

    total = w_att * L_att + w_max * L_max + w_pseudo * L_pseudo + w_frame * L_frame

L_att, L_max: BCE of the attention-pooled and max-pooled clip logits against the clip labels,
    with a class-balanced pos_weight (rare species count more).
L_pseudo: the model's own detached segment probabilities >= pseudo_threshold become
    pseudo-labels for the attention (LossConfig.pseudo_on: the reference fed the softmax
    weights to a BCE-with-logits, class-weighted; or the attention logits, unweighted).
L_frame: BCE of the frame logits against the frame labels (LossConfig.frame_reduction: the
    reference's class-weighted mean over (crop, species) of the mean over frames of
    label * BCE, or the mean over the positive frames).

The clip terms are means weighted by the targets' weights (trainable.data.targets): in stage 1
every clip label weighs 1 (the plain mean over B x C of the reference); in stages 2 and 3
only the labelled entries count. LossConfig.clip_reduction "sum" sums them instead, as the
reference's stages 2 and 3 did (over windows x species: with the attention term alone, the
loss is sum(w * BCE(clip_att, y)), a pseudo-positive of v4_2 weighing 0.5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainable.config import LossConfig
from trainable.data.targets import Targets
from trainable.model.sed import ATTENTION, ATTENTION_WEIGHTS, CLIP_ATT, CLIP_MAX, FRAME, SEGMENT

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

    pos_weight: torch.Tensor | None  # a buffer (register_buffer), None for plain BCE

    def __init__(self, config: LossConfig, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: dict[str, torch.Tensor], targets: Targets) -> dict[str, torch.Tensor]:
        """Loss of one batch.

        Args:
            logits: SEDModel outputs.
            targets: clip (B, C) and frame (B, C, T) labels in [0, 1] with their weights
                (mixed when mixup is on); T = the frame logits' length.

        Returns:
            {"total": scalar, "att": ..., "max": ..., "pseudo": ..., "frame": ...}. A term
            whose weight is 0 is not computed at all (0, and no gradient), so it cannot leak
            a NaN into the total.
        """
        c = self.config
        weights = {"att": c.w_att, "max": c.w_max, "pseudo": c.w_pseudo, "frame": c.w_frame}
        compute = {"att": lambda: self._clip(logits[CLIP_ATT], targets),
                   "max": lambda: self._clip(logits[CLIP_MAX], targets),
                   "pseudo": lambda: self._pseudo(logits),
                   "frame": lambda: self._frame(logits[FRAME], targets)}
        zero = targets.clip.new_zeros(())
        terms = {name: compute[name]() if weights[name] > 0 else zero for name in TERMS}
        total = sum(weights[name] * terms[name] for name in TERMS if weights[name] > 0)
        assert isinstance(total, torch.Tensor)  # LossConfig requires a weight > 0: never the empty sum's 0
        terms["total"] = total
        return terms

    def _clip(self, logit: torch.Tensor, targets: Targets) -> torch.Tensor:
        pos_weight = self.pos_weight if self.config.class_balanced else None
        loss = F.binary_cross_entropy_with_logits(logit.float(), targets.clip, pos_weight=pos_weight,
                                                  reduction="none")  # (B, C)
        if self.config.clip_reduction == "sum":  # v2_1 and v4_2: summed over windows x species
            return (targets.clip_weight * loss).sum()
        return weighted_mean(loss, targets.clip_weight)

    def _class_weights(self, like: torch.Tensor) -> torch.Tensor:
        """(C, 1) weights of the per-class means of the reference's pseudo and frame terms."""
        if self.config.class_balanced and self.pos_weight is not None:
            return self.pos_weight.view(-1, 1)
        return like.new_ones(like.shape[1], 1)

    def _pseudo(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        # A pseudo-label carries no gradient (the comparison has none; detached to say so).
        labels = (torch.sigmoid(logits[SEGMENT].detach().float()) >= self.config.pseudo_threshold).float()  # (B, C, T')
        if self.config.pseudo_on == "logits":
            return F.binary_cross_entropy_with_logits(logits[ATTENTION].float(), labels)
        # The reference: the softmax weights (in [0, 1], summing to 1 over time) taken as logits.
        loss = F.binary_cross_entropy_with_logits(logits[ATTENTION_WEIGHTS].float(), labels, reduction="none")
        return (loss.mean(dim=-1) * self._class_weights(loss).view(1, -1)).mean()  # mean over (B, C)

    def _frame(self, frame: torch.Tensor, targets: Targets) -> torch.Tensor:
        if self.config.frame_reduction == "class_mean":
            # The reference: label * BCE(z, label) with the plainly mixed label, which is the
            # weight times the weighted label here (in stage 1 the weight is the label itself).
            label = targets.frame_weight * targets.frame  # (B, C, T)
            loss = targets.frame_weight * F.binary_cross_entropy_with_logits(frame.float(), label, reduction="none")
            return (loss.mean(dim=-1) * self._class_weights(loss).view(1, -1)).mean()
        # In stage 1 the weight is the positive frames' label itself, which makes a mixed
        # batch's loss exactly the mixture of its two halves' losses: a frame positive only in
        # the mixup partner is not pushed towards negative (it may hold an unlabelled call).
        loss = F.binary_cross_entropy_with_logits(frame.float(), targets.frame, reduction="none")  # (B, C, T)
        return weighted_mean(loss, targets.frame_weight)


def weighted_mean(loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(weight * loss) / sum(weight), and 0 for a batch without any weight (all-fp crops
    in stage 1). Dividing by the clamped weight mass needs no host sync."""
    return (weight * loss).sum() / weight.sum().clamp(min=1.0)
