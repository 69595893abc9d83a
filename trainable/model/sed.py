"""SEDModel: a timm backbone with the sound-event-detection head of the seed recipe.

The backbone turns an input image (B, in_chans, mels, frames), fed as (time, mel) images in
the reference's orientation, into a feature map; the head averages it over frequency, then
two 1x1 convolutions give per-segment class logits (`cla`, the reference's fc_a) and attention
logits (`att`, its fc_b). Clip logits pool `cla` over time two ways: weighted by the attention
softmax, and by max. Backbones are a constructor argument, not new classes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import timm
import torch
import torch.nn.functional as F
from torch import nn

from trainable.config import ConfigError, ModelConfig

# The fixed keys of the logits dict; losses and evaluation read by key.
CLIP_ATT = "clip_att"  # (B, C) clip logit: sum over time of cla * softmax(att)
CLIP_MAX = "clip_max"  # (B, C) clip logit: max over time of cla
SEGMENT = "segment"  # (B, C, T') per-segment class logits (cla)
FRAME = "frame"  # (B, C, frames) segment logits upsampled to the input frames
ATTENTION = "attention"  # (B, C, T') attention logits (before the softmax over time)
ATTENTION_WEIGHTS = "attention_weights"  # (B, C, T') softmax over time of the attention logits
OUTPUTS = (CLIP_ATT, CLIP_MAX, SEGMENT, FRAME, ATTENTION, ATTENTION_WEIGHTS)

BACKBONES = ("resnet18", "densenet121", "efficientnet_b0", "resnest50d", "mobilenetv2_100", "test_resnet",
             "mobilenetv3_small_050")  # tested; mobilenetv3 has a conv head after its pooling


def create_backbone(config: ModelConfig) -> nn.Module:
    """The timm backbone without classifier or pooling: (B, in_chans, H, W) -> (B, F, H', W').

    A local weights file goes through timm's own loader (`pretrained_cfg_overlay`), which
    also folds the RGB stem into one input channel (crop_unit input) and drops the classifier.

    Raises:
        ConfigError: timm does not know the backbone, the weights file is missing, or the
            weights cannot be fetched (no model hub reachable).
    """
    if not timm.is_model(config.backbone):
        raise ConfigError(f"unknown backbone {config.backbone!r} (timm has no such model;"
                          f" tested: {', '.join(BACKBONES)})")
    overlay: dict[str, Any] = {}
    if config.pretrained_file:
        if not Path(config.pretrained_file).is_file():
            raise ConfigError(f"pretrained_file {config.pretrained_file} does not exist")
        overlay = {"pretrained_cfg_overlay": {"file": config.pretrained_file}}
    try:
        return timm.create_model(config.backbone, pretrained=config.pretrained, in_chans=config.in_chans,
                                 num_classes=0, global_pool="", **overlay)
    except OSError as error:  # huggingface_hub's "cannot find the requested files" is an OSError
        raise ConfigError(f"cannot fetch the ImageNet weights of {config.backbone} (model.pretrained:"
                          f" {str(error).splitlines()[0][:120]}); give a local file with"
                          f" model.pretrained_file=/path/weights.pth, or train from scratch with"
                          f" model.pretrained=false") from None


class SEDModel(nn.Module):
    """Backbone + SED head.

    Args:
        config: backbone name and pretrained weights.
        n_species: number of classes C.
    """

    def __init__(self, config: ModelConfig, n_species: int):
        super().__init__()
        self.config, self.n_species = config, n_species
        self.backbone = create_backbone(config)
        # The width of what the backbone's forward gives: for backbones with a conv head after
        # the pooling (mobilenetv3, lcnet), timm applies it to the unpooled map, so the map has
        # head_hidden_size channels, not num_features.
        # cast: torch types an unknown Module attribute as a Tensor or Module; timm's are ints.
        width = cast(int, getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.cla = nn.Conv1d(width, n_species, kernel_size=1, bias=config.head_bias)
        self.att = nn.Conv1d(width, n_species, kernel_size=1, bias=config.head_bias)

    def forward(self, x: torch.Tensor,
                mix: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Logits of a batch of log-mel crops.

        Args:
            x: (B, in_chans, M, T) input (trainable.model.inputs), mel bins by frames.
            mix: optional manifold mixup applied to the backbone feature map (the same draw
                must then mix the targets).

        Returns:
            A dict with the keys of OUTPUTS (shapes beside their definitions above).
        """
        time_mel = self.config.orientation == "time_mel"
        features = self.backbone(x.transpose(-1, -2) if time_mel else x)  # (B, F, T', M') or (B, F, M', T')
        if features.ndim != 4:
            raise ConfigError(f"backbone gives {features.ndim}-D features, not a (B, F, freq, time) map:"
                              f" the SED head needs a convolutional backbone (e.g. {', '.join(BACKBONES)})")
        if mix is not None:
            features = mix(features)
        features = F.relu(features).mean(dim=3 if time_mel else 2)  # (B, F, T'): mean over frequency
        segment = self.cla(features)  # (B, C, T')
        attention = self.att(features)  # (B, C, T')
        weights = torch.softmax(attention, dim=-1)  # (B, C, T'), sums to 1 over time
        return {
            CLIP_ATT: (segment * weights).sum(dim=-1),  # (B, C)
            CLIP_MAX: segment.amax(dim=-1),  # (B, C)
            SEGMENT: segment,
            FRAME: self._upsample(segment, x.shape[-1]),  # (B, C, T)
            ATTENTION: attention,
            ATTENTION_WEIGHTS: weights,
        }

    def _upsample(self, segment: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, C, T') segment logits -> (B, C, frames)."""
        if self.config.upsample == "linear":
            return F.interpolate(segment, size=frames, mode="linear", align_corners=False)
        # The reference repeated each segment 32 times (resnet18's time stride at 512 frames);
        # a stride that does not divide the frames repeats by the rounded-up ratio, cut to length.
        ratio = -(-frames // segment.shape[-1])
        return segment.repeat_interleave(ratio, dim=-1)[..., :frames]
