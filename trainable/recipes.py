"""Named recipes: whole sets of defaults, selected by the config key `recipe`.

The dataclass defaults of trainable.config are the reference stage 1 (trtd56/RFCX's v1_7, the
notebook of exp0073), so `v1_7` changes nothing. Every other recipe is the dotted keys it
changes, laid under what a trial config gives itself:

    trainable.config.resolve({"data_dir": "/d", "recipe": "exp0109", "train.lr": 3e-4})
        == v1_7's defaults, then exp0109's keys, then train.lr = 3e-4

Only data here: trainable.config resolves a config over its recipe (`from_dict(TrialConfig, ...)`
does it for every config, so a config named after a recipe always has its values; a resolved
config holds every key, so resolving it again changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_RECIPE = "v1_7"


@dataclass(frozen=True)
class Recipe:
    """A named set of defaults."""

    summary: str  # one line, for --list-recipes
    values: dict[str, Any]  # dotted config keys -> values, over the reference's defaults


# What the reference's stages 2 and 3 share (v2_1's loop as exp0127 ran it, and v4_2): whole
# clips in 8 windows, the summed clip loss on the attention logit only, no class weights, no
# mixup, the random group of masks without gamma or brightness/contrast, batches of 32
# recordings, Adam 3e-4 for 5 epochs under one per-batch cosine (T_max = 5 epochs of batches).
WHOLE_CLIPS: dict[str, Any] = {
    "data.train_items": "clips", "data.clip_overlap": 49,
    "loss.w_max": 0.0, "loss.w_pseudo": 0.0, "loss.w_frame": 0.0, "loss.class_balanced": False,
    "loss.clip_reduction": "sum",
    "augment.mixup_alpha": 0.0, "augment.brightness_contrast_p": 0.0, "augment.group_gamma": 0.0,
    "train.batch_size": 32, "train.lr": 3e-4, "train.epochs": 5, "train.t_max": 5}
# The recipe `--stage N` means when no recipe is named.
STAGE_RECIPES = {1: DEFAULT_RECIPE, 2: "stage2-v2_1", 3: "stage3-v4_2"}

RECIPES: dict[str, Recipe] = {
    "v1_7": Recipe(
        "the reference stage 1 (exp0073): ImageNet resnet18, the clip image, 4-term loss, per-batch cosine", {}),
    "exp0109": Recipe(
        "v1_7 with the attention term only and no gamma or brightness/contrast (the seed's 3-stage table)",
        {"loss.w_max": 0.0, "loss.w_pseudo": 0.0, "loss.w_frame": 0.0,
         # "not_bright_and_gamma": no RandomBrightnessContrast, and the random group keeps its masks.
         "augment.brightness_contrast_p": 0.0, "augment.group_gamma": 0.0}),
    "fixed": Recipe(
        "the variants this project chose before recipes existed (per-crop input, clamped cosine, ...)",
        {"model.backbone": "resnet18", "model.pretrained": False, "model.input": "crop_unit",
         "model.orientation": "mel_time", "model.head_bias": True, "model.upsample": "linear",
         "loss.class_counts": "fold", "loss.pseudo_on": "logits", "loss.frame_reduction": "positive_mean",
         "augment.policy": "jitter", "augment.time_masks": 2, "augment.time_mask_frames": 32,
         "augment.freq_masks": 2, "augment.freq_mask_bins": 12,
         "data.crop_rule": "event", "data.event_frames": "cover", "data.window_rule": "cover",
         "data.window_score": "segment_max",
         "data.valid_overlap": 49, "data.test_overlap": 256, "data.fold_seed": 42, "data.fold_labels": "multi_hot",
         "train.schedule": "cosine_clamped", "train.min_lr": 1e-5, "train.selection": "common", "train.seed": 0}),
    # The reference's stages 2 and 3; each fold starts from stage 1's (--init-from).
    "stage2-v2_1": Recipe(
        "the reference stage 2 (exp0127, v2_1's loop): every tp and fp recording, 8 windows each, tp/fp labels only",
        {"stage": 2, **WHOLE_CLIPS}),
    "stage3-v4_2": Recipe(
        "the reference stage 3 (exp0210, v4_2): stage 2 plus the teachers' mean, fp-only recordings in the folds",
        {"stage": 3, **WHOLE_CLIPS}),
}
