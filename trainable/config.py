"""Typed, frozen configuration of a trial: the reference recipe's values as the defaults, each
former deviation from it a named switch (trainable.recipes names whole sets of values).

Every default carries a comment with its unit or its source. `from_dict` turns a plain
dict (a Ray Tune config, a YAML file, a manifest) into a config strictly (trainable.strict):
an unknown key or a value of the wrong type fails loudly, so a typo never becomes a silent
default. `resolve` (or from_dict of a TrialConfig) lays a config over its recipe's defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainable.dotted import ConfigError, merge
from trainable.recipes import DEFAULT_RECIPE, RECIPES
from trainable.strict import T, build, choice, require

# The named switches: each deviation from the reference is one, the reference's value first.
CROP_RULES = ("recording", "event")  # see DataConfig.crop_rule
EVENT_FRAMES = ("reference", "cover")  # see DataConfig.event_frames
WINDOW_RULES = ("reference", "cover")  # see DataConfig.window_rule
FOLD_LABELS = ("single", "multi_hot")  # see DataConfig.fold_labels
WINDOW_SCORES = ("att_max_mean", "segment_max")  # see DataConfig.window_score
FOLD_SPLIT_KEYS = ("data.n_folds", "data.fold_seed", "data.fold_labels")  # what decides the folds
TRAIN_ITEMS = ("crops", "clips")  # see DataConfig.train_items
# Not a setting: the search's mark on the trials of one configuration trained under several seeds
# (search.tuner.repeats): the id of the configuration's first trial. The trial trains the same
# with or without it; resolve() drops it.
SEED_GROUP = "seed_group"


@dataclass(frozen=True)
class DataConfig:
    """Crops, negatives, evaluation windows and folds (the reference v1_7, stage 1)."""

    # The data layout of data_dir: a name of trainable.data.layouts.DATASETS, checked where the
    # layout is looked up (trainable.data.layouts.dataset), so this schema knows no layout.
    dataset: str = "rfcx"
    crop_frames: int = 512  # frames per training crop (8.2 s at 62.5 frames/s)
    crop_offsets: tuple[int, ...] = (32, 64, 128, 256)  # frames from crop start to event centre
    fp_per_epoch: int = 30  # train_fp recordings drawn anew each epoch as negative items (v1_7)
    # "recording": the reference's items, one per tp recording around a random one of its events
    # (only offsets with centre - offset > 0; at the clip end [n - 1 - crop, n - 1)), fp items
    # all-negative; "event": one crop per tp event, any offset, clipped to the clip, fp items
    # keeping the recording's true positives.
    crop_rule: str = "recording"
    # "reference": an event covers frames [int(start_s * r), int(end_s * r)) with r = the
    # frames per second of a 60 s clip (3751 / 60); "cover": every frame the event touches at
    # the cache's 62.5 frames/s.
    event_frames: str = "reference"
    # Windows of a whole clip: "reference": starts 0, then each previous end - overlap, while
    # the window fits (8 windows at 0, 461, ..., 3227 for 60 s, overlap 51); "cover": the last
    # window aligned to the clip end, so no frame is left out.
    window_rule: str = "reference"
    # A window's probability: "att_max_mean": (sigmoid(clip_att) + sigmoid(clip_max)) / 2 (v1_7);
    # "segment_max": the max over time of the segment probability. A clip's is the max over
    # its windows.
    window_score: str = "att_max_mean"
    valid_overlap: int = 51  # frames shared by neighbouring validation windows (v1_7)
    test_overlap: int = 51  # frames shared by neighbouring test windows (v1_7 predicted the test
    #                         with its validation windows)
    n_folds: int = 5  # MultilabelStratifiedKFold splits over the train_tp recordings
    fold_seed: int = 0  # random_state of the split (v1_7); the same seed gives the same folds
    # A recording's label for stratification: "single": 1 for a species with exactly one tp
    # row in it (the reference's sum of one-hot rows == 1); "multi_hot": every species in it.
    fold_labels: str = "single"
    # What a training item is: "crops": one crop_frames crop per recording or event (v1_7,
    # above); "clips": a whole clip cut into windows of crop_frames, neighbours sharing
    # clip_overlap frames, the last one padded past the clip end (stages 2 and 3 of the
    # reference, v2_1 and v4_2: 8 windows per 60 s clip). With "clips" an epoch is every tp
    # recording of the fold's training side and every fp recording it may use, once.
    train_items: str = "crops"
    clip_overlap: int = 49  # frames shared by neighbouring training windows of a clip (v2_1: starts 0, 463, ...)
    # Stage 3: the test recordings with a teacher positive are trained on too (classic
    # pseudo-labelling; the reference did not: v4_2 trained on train recordings only).
    teacher_test_recordings: bool = False

    def __post_init__(self) -> None:
        choice("crop_rule", self.crop_rule, CROP_RULES)
        choice("train_items", self.train_items, TRAIN_ITEMS)
        choice("event_frames", self.event_frames, EVENT_FRAMES)
        choice("window_rule", self.window_rule, WINDOW_RULES)
        choice("window_score", self.window_score, WINDOW_SCORES)
        choice("fold_labels", self.fold_labels, FOLD_LABELS)
        require(self.crop_frames > 0, "crop_frames must be > 0")
        require(len(self.crop_offsets) > 0, "crop_offsets must not be empty")
        outside = [offset for offset in self.crop_offsets if not 0 <= offset < self.crop_frames]
        # Both keys named: a smaller crop_frames alone leaves the recipe's offsets behind it.
        require(not outside, f"data.crop_offsets {list(self.crop_offsets)} must lie in [0, data.crop_frames) ="
                             f" [0, {self.crop_frames}): {', '.join(map(str, outside))}"
                             f" {'is' if len(outside) == 1 else 'are'} not; set data.crop_offsets along with"
                             f" data.crop_frames")
        require(self.fp_per_epoch >= 0, "fp_per_epoch must be >= 0")
        for name in ("valid_overlap", "test_overlap", "clip_overlap"):
            require(0 <= getattr(self, name) < self.crop_frames,
                    f"{name} ({getattr(self, name)}) must be in [0, crop_frames={self.crop_frames})")
        require(self.n_folds >= 2, "n_folds must be >= 2")


def scaled_overlap(overlap: int, width: int, new_width: int) -> int:
    """A window overlap at another window width: the same share of the width, in whole frames,
    and less than the new width (26 of 256 for the reference's 51 of 512)."""
    return min(round(new_width * overlap / width), new_width - 1)


# What decides which weights a model has and what they mean: a checkpoint that starts a trial's
# folds (init_from) must agree on every one.
MODEL_KEYS = ("model.backbone", "model.input", "model.head_bias", "model.orientation")
MIXUP_TARGETS = ("features", "input")  # where mixup applies: backbone feature map or model input
INPUTS = ("clip_image", "crop_unit")  # see ModelConfig.input
ORIENTATIONS = ("time_mel", "mel_time")  # see ModelConfig.orientation
UPSAMPLING = ("repeat", "linear")  # see ModelConfig.upsample


@dataclass(frozen=True)
class ModelConfig:
    """The SED model: a timm backbone with the SED head, and the input it sees."""

    backbone: str = "resnet18.tv_in1k"  # any timm model; resnet18.tv_in1k = torchvision's resnet18
    #                                     (v1_7); tested: resnet18, densenet121, efficientnet_b0,
    #                                     resnest50d, mobilenetv2_100
    pretrained: bool = True  # ImageNet weights through timm, as v1_7 (torchvision's weights)
    pretrained_file: str = ""  # local weights file for `pretrained` on machines without a hub
    # "clip_image": the reference's image: the whole clip standardised and min-max scaled to
    # uint8 [0, 255], 3 channels, /255, ImageNet mean and std; "crop_unit": each crop min-max
    # scaled to [0, 1] on its own, 1 channel.
    input: str = "clip_image"
    # "time_mel": the backbone sees (time, mel) images, as v1_7 transposed them; "mel_time":
    # (mel, time).
    orientation: str = "time_mel"
    head_bias: bool = False  # bias of the two 1x1 convolutions of the head (v1_7: none)
    # Segment logits to frames: "repeat" each one (32 times for resnet18, v1_7) or "linear".
    upsample: str = "repeat"

    def __post_init__(self) -> None:
        require(bool(self.backbone), "backbone must not be empty")
        require(not self.pretrained_file or self.pretrained, "pretrained_file needs pretrained: true")
        choice("input", self.input, INPUTS)
        choice("orientation", self.orientation, ORIENTATIONS)
        choice("upsample", self.upsample, UPSAMPLING)

    @property
    def in_chans(self) -> int:
        """Input channels: the reference's image has 3 (equal before the ImageNet normalisation)."""
        return 3 if self.input == "clip_image" else 1


PSEUDO_ON = ("softmax", "logits")  # see LossConfig.pseudo_on
FRAME_REDUCTIONS = ("class_mean", "positive_mean")  # see LossConfig.frame_reduction
CLASS_COUNTS = ("all", "fold")  # see LossConfig.class_counts
CLIP_REDUCTIONS = ("mean", "sum")  # see LossConfig.clip_reduction


@dataclass(frozen=True)
class LossConfig:
    """The four-term SED loss (the reference v1_7, stage 1)."""

    w_att: float = 1.0  # clip BCE of the attention-pooled logit
    w_max: float = 0.5  # clip BCE of the max-over-time logit
    w_pseudo: float = 1.0  # attention BCE against the model's own segment pseudo-labels
    w_frame: float = 0.5  # frame BCE on the annotated frames, positive frames only
    pseudo_threshold: float = 0.7  # segment probability that becomes a pseudo-positive
    class_balanced: bool = True  # clip BCE pos_weight = max class count / class count
    # Where the class counts come from: "all" train_tp rows (v1_7) or the fold's training rows.
    class_counts: str = "all"
    # The pseudo term's input: "softmax": the attention's softmax weights into a BCE-with-logits,
    # class-weighted, as v1_7 did; "logits": the attention logits, no class weights.
    pseudo_on: str = "softmax"
    # "class_mean": mean over (crop, species) of pos_weight * the mean over frames of
    # label * BCE (v1_7); "positive_mean": the BCE's mean over the positive frames.
    frame_reduction: str = "class_mean"
    # The clip terms over (item, species): "mean", weighted by the labels' weights (v1_7's mean
    # over B x C); "sum": the weighted sum (v2_1 and v4_2 summed over windows x species).
    clip_reduction: str = "mean"
    # Stage 3 only: the mean of the teachers' predictions (TrialConfig.teacher_files) labels
    # what no annotation labels.
    teacher_threshold: float = 0.5  # teacher probability that becomes a positive (v4_2: >= 0.5)
    teacher_weight: float = 0.5  # clip-loss weight of a teacher label; a human label weighs 1 (v4_2)
    teacher_negative_below: float = 0.01  # teacher probability under which a species is a "difficult
    #                                       negative" (v4_2: < 0.01), used by teacher_negatives
    teacher_negatives: bool = False  # difficult negatives become negatives of weight teacher_weight
    #                                  (v4_2 marked them and left them out of the loss)
    teacher_soft_negatives: bool = False  # unlabelled species below the threshold take the teacher's
    #                                       probability as a soft target; off, as the seed found them harmful

    def __post_init__(self) -> None:
        weights = (self.w_att, self.w_max, self.w_pseudo, self.w_frame)
        require(all(w >= 0 for w in weights), "loss weights must be >= 0")
        require(any(w > 0 for w in weights), "at least one loss weight must be > 0")
        require(0 < self.pseudo_threshold < 1, "pseudo_threshold must be in (0, 1)")
        require(0 < self.teacher_threshold < 1, "teacher_threshold must be in (0, 1)")
        require(0 < self.teacher_weight <= 1, "teacher_weight must be in (0, 1]")
        require(0 < self.teacher_negative_below < self.teacher_threshold,
                "need 0 < teacher_negative_below < teacher_threshold")
        choice("clip_reduction", self.clip_reduction, CLIP_REDUCTIONS)
        choice("class_counts", self.class_counts, CLASS_COUNTS)
        choice("pseudo_on", self.pseudo_on, PSEUDO_ON)
        choice("frame_reduction", self.frame_reduction, FRAME_REDUCTIONS)


AUGMENT_POLICIES = ("reference", "jitter")  # see AugmentConfig.policy


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (the reference v1_7 by default)."""

    mixup_alpha: float = 0.1  # Beta(alpha, alpha) mixing weight; 0 turns mixup off (v1_7)
    mixup_on: str = "features"  # "features" (manifold mixup on the backbone map, v1_7) or "input"
    # "reference": v1_7's, on the whole clip's image before the crop: brightness/contrast with
    # probability brightness_contrast_p, then with probability group_p the group [gamma
    # group_gamma, time_masks time masks, freq_masks frequency masks]; "jitter": per crop,
    # always-on gamma and brightness jitter then SpecAugment masks.
    policy: str = "reference"
    brightness_contrast_p: float = 0.5  # reference: albumentations RandomBrightnessContrast(p=0.5)
    brightness_limit: float = 0.2  # reference: brightness shift U(-l, l) x 255 (albumentations' default)
    contrast_limit: float = 0.2  # reference: contrast factor 1 + U(-l, l) (albumentations' default)
    group_p: float = 0.5  # reference: RandomApply(p=0.5) of gamma and masks
    group_gamma: float = 2.0  # reference: adjust_gamma(gamma=2); 0 leaves gamma out of the group
    time_masks: int = 1  # time masks per sample (v1_7: one, in the group)
    time_mask_frames: int = 40  # reference: width randrange(0, 40) -> end drawn below start + width
    freq_masks: int = 1  # frequency masks per sample (v1_7: one, in the group)
    freq_mask_bins: int = 30  # reference: width randrange(0, 30), likewise
    gamma: float = 0.2  # jitter: x ** g with log(g) uniform in [-gamma, gamma] (x scaled to [0, 1])
    brightness: float = 0.1  # jitter: x + b with b uniform in [-brightness, brightness]

    def __post_init__(self) -> None:
        require(self.mixup_alpha >= 0, "mixup_alpha must be >= 0")
        choice("mixup_on", self.mixup_on, MIXUP_TARGETS)
        choice("policy", self.policy, AUGMENT_POLICIES)
        sizes = (self.time_masks, self.time_mask_frames, self.freq_masks, self.freq_mask_bins)
        require(all(n >= 0 for n in sizes), "mask counts and sizes must be >= 0")
        require(self.gamma >= 0 and self.brightness >= 0 and self.group_gamma >= 0,
                "gamma, group_gamma and brightness must be >= 0")
        probabilities = (self.brightness_contrast_p, self.group_p)
        require(all(0 <= p <= 1 for p in probabilities), "brightness_contrast_p and group_p must be in [0, 1]")
        require(0 <= self.brightness_limit < 1 and 0 <= self.contrast_limit < 1,
                "brightness_limit and contrast_limit must be in [0, 1)")


SCHEDULES = ("cosine_per_batch", "cosine_clamped")  # see TrainConfig.schedule
SELECTIONS = ("fold", "common")  # see TrainConfig.selection


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, the schedule and model selection (the reference v1_7, stage 1)."""

    epochs: int = 50  # epochs on every fold; one Ray Tune training_iteration each
    batch_size: int = 64  # crops per step
    lr: float = 1e-3  # Adam learning rate
    # "cosine_per_batch": CosineAnnealingLR(T_max = batches per epoch x t_max) stepped after every
    # batch and never clamped, so lr reaches min_lr at t_max, 3 t_max, ... and lr at 2 t_max, ...
    # (v1_7); "cosine_clamped": stepped per epoch, staying at min_lr after t_max epochs.
    schedule: str = "cosine_per_batch"
    t_max: int = 10  # the cosine's half period, epochs (v1_7)
    min_lr: float = 0.0  # the cosine's floor (v1_7: eta_min 0)
    # Which weights define a trial: "fold": each fold at the epoch of its best reference LRAP
    # (v1_7 kept each fold's best_score model); "common": every fold at the epoch of the best
    # pooled cv_lwlrap.
    selection: str = "fold"
    folds: tuple[int, ...] = ()  # folds to train; () = all n_folds
    seed: int = 416  # model init, crops, augmentation (v1_7's seed); the same seed repeats a trial on CPU
    eval_recordings: int = 8  # recordings per evaluation forward (all their windows at once)
    # DataLoader worker processes for training crops; -1: on CUDA the assigned CPUs but one, on
    # the CPU none (trainable.training.loader.loader_workers); 0: in the trial's process.
    loader_workers: int = -1
    # When a trial checkpoints (trainable.training.cadence): at the end of an epoch once this many
    # seconds have passed since its previous checkpoint (0: every epoch), at checkpoint_epochs
    # (a search sets its scheduler's milestones) and at the last epoch.
    checkpoint_seconds: float = 60.0
    checkpoint_epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        require(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1")
        require(self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr")
        require(self.t_max >= 1, "t_max must be >= 1")
        choice("schedule", self.schedule, SCHEDULES)
        choice("selection", self.selection, SELECTIONS)
        require(len(set(self.folds)) == len(self.folds) and all(f >= 0 for f in self.folds),
                "folds must be distinct fold numbers >= 0")
        require(self.eval_recordings >= 1 and self.loader_workers >= -1,
                "need eval_recordings >= 1 and loader_workers >= -1")
        require(self.checkpoint_seconds >= 0 and all(e >= 1 for e in self.checkpoint_epochs),
                "need checkpoint_seconds >= 0 and checkpoint_epochs >= 1")


STAGES = (1, 2, 3)  # the seed's stages; see TrialConfig.stage
# The keys that only stage 3 reads, with their defaults: another value in another stage is a mistake.
STAGE_3_KEYS = {f"loss.{name}": getattr(LossConfig, name) for name in (
    "teacher_threshold", "teacher_weight", "teacher_negative_below", "teacher_negatives", "teacher_soft_negatives")}
STAGE_3_KEYS["data.teacher_test_recordings"] = DataConfig.teacher_test_recordings


def _dotted_value(config: Any, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: where the data is and every recipe parameter.

    Keys may also be given as dotted paths ("loss.w_max": 0.3), the names search spaces use.
    """

    data_dir: str = ""  # the data, in the layout data.dataset names (RFCx: train_tp.csv, train/, ...); required
    recipe: str = DEFAULT_RECIPE  # the named set of defaults this config was built on (trainable.recipes)
    cache_dir: str = ""  # the log-mel cache; "" = DATA_DIR/logmel
    # 1: the recipe (clip labels on every species, frame loss on tp frames); 2: loss only on
    # labelled frames and species (tp positive, fp negative); 3: stage 2 plus the teachers' labels
    # (trainable.data.targets says what each stage labels; the recipes stage2-v2_1 and stage3-v4_2 are
    # the reference's).
    stage: int = 1
    # stage 3: one or more predictions (an export's windows.csv, oof.csv or submission.csv),
    # averaged window by window (trainable.data.teacher.load_teachers)
    teacher_files: tuple[str, ...] = ()
    init_from: str = ""  # a checkpoint directory whose fold models start this trial's folds; "" = fresh
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        require(bool(self.data_dir), "data_dir is required")
        require(self.recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        require(self.stage in STAGES, f"stage must be one of {', '.join(map(str, STAGES))}, got {self.stage}")
        require((self.stage == 3) == bool(self.teacher_files),
                "stage 3 needs teacher_files" if self.stage == 3 else
                f"teacher_files are used by stage 3 only (this trial is stage {self.stage})")
        changed = [key for key, value in STAGE_3_KEYS.items() if _dotted_value(self, key) != value]
        require(self.stage == 3 or not changed, f"{changed[0] if changed else ''} is used by stage 3 only"
                                                f" (this trial is stage {self.stage}): it would change nothing")
        require(all(f < self.data.n_folds for f in self.train.folds),
                f"train.folds {list(self.train.folds)} must be < data.n_folds ({self.data.n_folds})")

    @property
    def fold_indices(self) -> tuple[int, ...]:
        """The folds this trial trains, in order."""
        return self.train.folds or tuple(range(self.data.n_folds))


def from_dict(cls: type[T], values: dict[str, Any], path: str = "") -> T:
    """Build the config dataclass `cls` from `values`, strictly (trainable.strict.build); a
    TrialConfig over its recipe's defaults (`resolve`).

    Raises:
        ConfigError: an unknown recipe or key, a value of the wrong type, or a value the
            dataclass itself rejects; the message names the key.
    """
    return build(cls, over_recipe(values) if cls is TrialConfig and isinstance(values, dict) else values, path)


def resolve(values: dict[str, Any]) -> TrialConfig:
    """The TrialConfig of a (nested or dotted) dict: its recipe's defaults, then its own keys
    (`from_dict(TrialConfig, ...)` lays every config over its recipe; build configs with one of
    the two, not with TrialConfig(...), which would take the reference's values under any name).

    Raises:
        ConfigError: an unknown recipe, key or value (the message names it).
    """
    return from_dict(TrialConfig, {key: value for key, value in values.items() if key != SEED_GROUP})


def over_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """A TrialConfig dict laid over its recipe's defaults (trainable.recipes) and the key
    `recipe` itself, so a config named after a recipe always has that recipe's values where it
    does not say its own.

    Raises:
        ConfigError: no such recipe (the message lists the known ones).
    """
    name = values.get("recipe", DEFAULT_RECIPE)
    if not isinstance(name, str):
        raise ConfigError(f"config key recipe: expected a recipe name, got {name!r}")
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return merge({**RECIPES[name].values, "recipe": name}, upgrade_keys(values))


def upgrade_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A config written before `teacher_file` became `teacher_files` (every earlier trial.json
    and search_plan.json has it), in today's keys; its stage 3 trained on the teacher's test
    recordings, as it then always did."""
    if "teacher_file" not in values:
        return values
    values = dict(values)
    old = values.pop("teacher_file")
    if "teacher_files" in values:
        raise ConfigError("config keys teacher_file and teacher_files: give teacher_files only")
    values["teacher_files"] = [old] if old else []
    return merge({"data.teacher_test_recordings": True}, values) if old else values


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config (tuples as lists), the inverse of `from_dict`."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value
    return plain(dataclasses.asdict(config))
