"""The four-term SED loss: weights, positive-only frames, pseudo-labels, gradients, mixed targets.

LossConfig() is the reference's loss (its formulas are restated in tests/test_reference.py);
FIXED is the fixed recipe's variant of the pseudo and frame terms."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from trainable.config import LossConfig
from trainable.data.mixup import Mixup
from trainable.data.targets import Targets
from trainable.model.losses import TERMS, SEDLoss, balanced_pos_weight
from trainable.model.sed import ATTENTION, ATTENTION_WEIGHTS, CLIP_ATT, CLIP_MAX, FRAME, SEGMENT

B, C, SEGMENTS, FRAMES = 4, 3, 5, 20
FIXED = LossConfig(pseudo_on="logits", frame_reduction="positive_mean")


def make_logits(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {CLIP_ATT: (B, C), CLIP_MAX: (B, C), SEGMENT: (B, C, SEGMENTS),
              ATTENTION: (B, C, SEGMENTS), FRAME: (B, C, FRAMES)}
    logits = {key: torch.randn(shape, generator=g) for key, shape in shapes.items()}
    logits[ATTENTION_WEIGHTS] = logits[ATTENTION].softmax(dim=-1)  # a leaf here, so its gradient can be read
    return {key: value.requires_grad_() for key, value in logits.items()}


def make_targets(seed: int = 1) -> Targets:
    g = torch.Generator().manual_seed(seed)
    frame = (torch.rand(B, C, FRAMES, generator=g) > 0.7).float()  # (B, C, T)
    return Targets.from_frames(frame)


def test_balanced_pos_weight_is_max_count_over_class_count():
    weight = balanced_pos_weight(np.array([10, 5, 0, 2]))
    torch.testing.assert_close(weight, torch.tensor([1.0, 2.0, 1.0, 5.0]))


def test_total_is_the_weighted_sum_of_the_terms():
    config = LossConfig(w_att=1.0, w_max=0.5, w_pseudo=0.25, w_frame=2.0)
    terms = SEDLoss(config)(make_logits(), make_targets())
    expected = terms["att"] + 0.5 * terms["max"] + 0.25 * terms["pseudo"] + 2.0 * terms["frame"]
    torch.testing.assert_close(terms["total"], expected)
    assert all(terms[name] > 0 for name in TERMS)


@pytest.mark.parametrize("term, weight, logit", [("att", "w_att", CLIP_ATT), ("max", "w_max", CLIP_MAX),
                                                 ("pseudo", "w_pseudo", ATTENTION_WEIGHTS),
                                                 ("frame", "w_frame", FRAME)])
def test_a_zero_weight_removes_its_term_exactly(term, weight, logit):
    full = SEDLoss(LossConfig())(make_logits(), make_targets())
    logits = make_logits()
    with torch.no_grad():
        logits[logit].fill_(math.nan)  # would poison the total if the term were computed
    without = SEDLoss(replace(LossConfig(), **{weight: 0.0}))(logits, make_targets())
    weights = {"att": 1.0, "max": 0.5, "pseudo": 1.0, "frame": 0.5}
    expected = sum(weights[name] * full[name] for name in TERMS if name != term)
    assert without[term].item() == 0.0
    torch.testing.assert_close(without["total"], expected)
    without["total"].backward()
    assert logits[logit].grad is None


def test_gradients_are_finite_and_pseudo_labels_carry_none():
    logits = make_logits()
    SEDLoss(LossConfig(), balanced_pos_weight(np.array([3, 1, 2])))(logits, make_targets())["total"].backward()
    for key in (CLIP_ATT, CLIP_MAX, ATTENTION_WEIGHTS, FRAME):
        assert torch.isfinite(logits[key].grad).all() and logits[key].grad.abs().sum() > 0
    assert logits[SEGMENT].grad is None  # segments only make (detached) pseudo-labels
    assert logits[ATTENTION].grad is None  # the reference's pseudo term meets the softmax weights
    fixed = make_logits()
    SEDLoss(FIXED)(fixed, make_targets())["total"].backward()
    assert fixed[ATTENTION].grad.abs().sum() > 0 and fixed[ATTENTION_WEIGHTS].grad is None


@pytest.mark.parametrize("config", [LossConfig(), FIXED], ids=["class_mean", "positive_mean"])
def test_frame_term_counts_positive_frames_only(config):
    logits, targets = make_logits(), make_targets()
    loss = SEDLoss(config)
    before = loss(logits, targets)["frame"]
    with torch.no_grad():
        logits[FRAME][targets.frame == 0] += 100.0  # confidently wrong, but only on unlabelled frames
    torch.testing.assert_close(loss(logits, targets)["frame"], before)


def test_frame_term_by_hand_and_without_positives():
    logits = {key: value.detach() for key, value in make_logits().items()}
    logits[FRAME] = torch.zeros(B, C, FRAMES)
    frame = torch.zeros(B, C, FRAMES)
    frame[0, 1, 3] = frame[2, 0, 7] = 1.0
    # The positive frames' mean: log 2 at each. The reference's: per (crop, species) the mean over
    # all frames, weighted by pos_weight, then the mean over crops x species.
    pos_weight = torch.tensor([1.0, 3.0, 2.0])
    torch.testing.assert_close(SEDLoss(FIXED)(logits, Targets.from_frames(frame))["frame"],
                               torch.tensor(math.log(2.0)))
    expected = (3.0 + 1.0) * math.log(2.0) / FRAMES / (B * C)  # species 1 (weight 3) and 0 (weight 1)
    torch.testing.assert_close(SEDLoss(LossConfig(), pos_weight)(logits, Targets.from_frames(frame))["frame"],
                               torch.tensor(expected))
    for config in (LossConfig(), FIXED):
        assert SEDLoss(config)(logits, Targets.from_frames(torch.zeros(B, C, FRAMES)))["frame"].item() == 0.0


def test_pseudo_term_asks_the_attention_to_agree_with_confident_segments():
    threshold = 0.7
    segment = torch.full((B, C, SEGMENTS), -3.0)
    segment[:, :, 2] = 3.0  # sigmoid(3) = 0.95 >= 0.7: pseudo-positive; sigmoid(-3) = 0.05: negative
    logits = {key: value.detach() for key, value in make_logits().items()}
    logits[SEGMENT] = segment
    loss = SEDLoss(replace(FIXED, pseudo_threshold=threshold))
    logits[ATTENTION] = 20.0 * torch.sign(segment)  # agrees
    agree = loss(logits, make_targets())["pseudo"]
    logits[ATTENTION] = -20.0 * torch.sign(segment)  # disagrees
    disagree = loss(logits, make_targets())["pseudo"]
    assert agree.item() < 1e-6 and disagree.item() > 10.0


def test_class_balance_weighs_the_clip_terms():
    logits, targets = make_logits(), make_targets()
    pos_weight = torch.tensor([1.0, 4.0, 2.0])
    balanced = SEDLoss(LossConfig(), pos_weight)(logits, targets)
    plain = SEDLoss(LossConfig(class_balanced=False), pos_weight)(logits, targets)
    unweighted = SEDLoss(LossConfig())(logits, targets)
    torch.testing.assert_close(plain["att"], unweighted["att"])
    assert balanced["att"] > plain["att"]  # positives weigh more
    # The reference weighs its pseudo and frame terms' classes too; the fixed variants do not.
    assert balanced["frame"] > plain["frame"] and balanced["pseudo"] > plain["pseudo"]
    fixed = SEDLoss(FIXED, pos_weight)(logits, targets)
    fixed_plain = SEDLoss(replace(FIXED, class_balanced=False), pos_weight)(logits, targets)
    torch.testing.assert_close(fixed["frame"], fixed_plain["frame"])
    torch.testing.assert_close(fixed["pseudo"], fixed_plain["pseudo"])


def test_mixed_clip_targets_give_the_mixture_of_the_clip_losses():
    """BCE is linear in its target, so a mixup draw mixes the clip losses the same way."""
    logits, targets = make_logits(), make_targets()
    perm = [2, 0, 3, 1]
    mix = Mixup(lam=0.3, perm=torch.tensor(perm))
    mixed = targets.mixed(mix)
    torch.testing.assert_close(mixed.clip, 0.3 * targets.clip + 0.7 * targets.clip[perm])
    loss = SEDLoss(LossConfig(), torch.tensor([1.0, 3.0, 2.0]))
    partner = Targets(*(t[perm] for t in targets))
    torch.testing.assert_close(loss(logits, mixed)["att"],
                               0.3 * loss(logits, targets)["att"] + 0.7 * loss(logits, partner)["att"])


def test_pseudo_labels_threshold_the_segment_probability_not_the_logit():
    threshold = 0.7  # logit(0.7) = 0.847
    segment = torch.tensor([0.80, 0.86, -2.0, 5.0]).repeat(B, C, 1)  # sigmoid: 0.690, 0.703, 0.12, 0.99
    attention = torch.randn(B, C, 4, generator=torch.Generator().manual_seed(3))
    logits = {key: value.detach() for key, value in make_logits().items()}
    logits[SEGMENT], logits[ATTENTION] = segment, attention
    pseudo = SEDLoss(replace(FIXED, pseudo_threshold=threshold))(logits, make_targets())["pseudo"]
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0]).repeat(B, C, 1)
    torch.testing.assert_close(pseudo, torch.nn.functional.binary_cross_entropy_with_logits(attention, labels))


def test_mixed_frame_targets_give_the_mixture_of_the_frame_losses():
    """A frame positive only in the mixup partner keeps the partner's share of the loss and
    is never pushed towards negative."""
    logits, targets = make_logits(), make_targets()
    perm = [2, 0, 3, 1]
    mix = Mixup(lam=0.8, perm=torch.tensor(perm))
    loss = SEDLoss(FIXED)
    mixed = loss(logits, targets.mixed(mix))["frame"]
    own, partner = loss(logits, targets)["frame"], loss(logits, Targets(*(t[perm] for t in targets)))["frame"]
    torch.testing.assert_close(mixed, 0.8 * own + 0.2 * partner)
    assert (targets.mixed(mix).frame[targets.mixed(mix).frame_weight > 0] == 1).all()
