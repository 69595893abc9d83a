"""The k-fold training of one configuration, one epoch on every fold at a time.

This is a trial without Ray: `trainable.tune` reports its metrics and stores its
checkpoints. Each fold has its own model, optimiser, scheduler and random generator, and
a checkpoint holds all of them, so a resumed trial goes on exactly where it stopped. A
checkpoint can also be taken between two batches of a fold (trainable.training.preemption: the
process is ending); it then holds the epoch's progress too, and a trial loaded from it
goes on from the next batch, or repeats the validation of the fold it was taken in.

Checkpoint layout:

    trial.json       format, epoch, the selection (trainable.training.selection), the resolved config
    fold_<k>.pt      model, optimiser, scheduler, grad scaler, generator state of fold k (resume)
    best_fold_<k>.pt fold k's weights at its selected epoch (export, --init-from, the teacher)
    best_oof.npz     recording_ids, fold, scores (N, C): the selected weights' out-of-fold
                     predictions; fold_best_scores, common_best_scores: those of both rules
                     (NaN for folds not evaluated yet: a checkpoint within the first epoch)
    epoch.json       only within an epoch: the fold in flight, whether its training pass is
                     done, its batch order and batches done, the results of the folds done
    epoch.npz        their out-of-fold scores; epoch.pt: the pass's loss sums, torch's RNG
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainable import reported
from trainable.config import FOLD_SPLIT_KEYS, MODEL_KEYS, ConfigError, TrainConfig, TrialConfig, to_dict, upgrade_keys
from trainable.data.annotations import Annotations, load_annotations
from trainable.data.cache import DEFAULT_CACHE_NAME, LogMelCache
from trainable.data.clips import ClipSpec, TrainClips, collate_clips, epoch_clips, padded_starts
from trainable.data.crops import (
    REFERENCE_VALID_OVERLAP,
    ClipWindows,
    CropSpec,
    EpochBatches,
    TrainCrops,
    epoch_crops,
    epoch_size,
    shuffled_batches,
    teacher_crops,
)
from trainable.data.folds import Fold, folds_of, fp_only_ids, species_matrix, split_fp_only
from trainable.data.targets import Labels, index_events
from trainable.data.teacher import load_teachers
from trainable.dotted import flatten_dotted
from trainable.metrics import lwlrap, reference_lrap
from trainable.model.inputs import InputPipeline
from trainable.model.losses import SEDLoss, balanced_pos_weight
from trainable.model.sed import SEDModel
from trainable.recipes import DEFAULT_RECIPE, resolve
from trainable.training.fit import (
    LOSS_KEYS,
    Device,
    DivergedError,
    EpochStats,
    PassProgress,
    no_boundary,
    predict_clips,
    train_epoch,
)
from trainable.training.selection import Selection

# 2: recipes, the selection and each fold's selected weights. A format-1 checkpoint (before
# them) has no selected weights and was trained by what is now the "fixed" recipe's code.
CHECKPOINT_FORMAT = 2
TRIAL_FILE = "trial.json"
BEST_OOF_FILE = "best_oof.npz"
EPOCH_FILE, EPOCH_ARRAYS, EPOCH_TENSORS = "epoch.json", "epoch.npz", "epoch.pt"  # a checkpoint within an epoch


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used for what is asked of it; the message is one line."""


def fold_file(index: int) -> str:
    """Fold `index`'s resume state in a checkpoint."""
    return f"fold_{index}.pt"


def best_weights_file(index: int) -> str:
    """Fold `index`'s selected weights in a checkpoint."""
    return f"best_fold_{index}.pt"


def load_fold_weights(model: SEDModel, checkpoint: str | Path, fold: int, device: Device) -> None:
    """Load fold `fold`'s selected weights of `checkpoint` (the epoch the trial's selection
    chose) into `model`, without unpickling code (weights_only).

    Raises:
        CheckpointError: no such file or not a fold checkpoint, objects other than weights
            in it, or weights of another model (backbone or species count).
    """
    read_trial_file(checkpoint)  # refuses a checkpoint of another format at once
    path = Path(checkpoint) / best_weights_file(fold)
    try:
        state = torch.load(path, map_location=device.torch, weights_only=True)
    except (pickle.UnpicklingError, OSError, RuntimeError, KeyError, TypeError) as error:
        if "Unsupported global" in str(error):  # weights_only refused to build an object
            raise CheckpointError(f"{path} holds objects other than weights: not loaded (it could run code)") from None
        raise CheckpointError(f"{path}: not a fold checkpoint ({str(error).splitlines()[0]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError:  # missing, unexpected or misshapen weights
        raise CheckpointError(f"{path} holds another model than model.backbone={model.config.backbone}"
                              f" with {model.n_species} species") from None


def read_trial_file(checkpoint: str | Path) -> dict:
    """The checkpoint's trial.json.

    Raises:
        CheckpointError: there is none, or not of this format.
    """
    path = Path(checkpoint) / TRIAL_FILE
    try:
        trial = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{checkpoint} is not a trial checkpoint (no readable {TRIAL_FILE}: {error})") from None
    if trial.get("format") == 1:
        raise CheckpointError(f"checkpoint {checkpoint} was made before recipes (format 1): it has no selected"
                              f" weights and its config names no recipe; train it again (the fixed recipe,"
                              f" --recipe fixed, is what made it)")
    if trial.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {checkpoint} has format {trial.get('format')}, expected {CHECKPOINT_FORMAT}")
    return trial


def check_init_source(checkpoint: str | Path, config: TrialConfig) -> None:
    """Refuse to start `config`'s folds from `checkpoint` (init_from) when they cannot be.

    Fold k starts from the earlier trial's fold-k model, so both must split the recordings
    the same way: otherwise that model has trained on this fold's validation recordings and
    the CV would be inflated.

    Raises:
        CheckpointError: not a checkpoint, another model (MODEL_KEYS), another fold split, or
            folds missing.
    """
    saved = read_trial_file(checkpoint)
    earlier, current = flatten_dotted(saved["config"]), flatten_dotted(to_dict(config))
    if earlier["model.backbone"] != config.model.backbone:
        raise CheckpointError(f"init_from {checkpoint}: a {earlier['model.backbone']} checkpoint, this trial"
                              f" trains {config.model.backbone}")
    for key in MODEL_KEYS[1:]:
        if earlier[key] != current[key]:
            raise CheckpointError(f"init_from {checkpoint}: made with {key} = {earlier[key]}, this trial has"
                                  f" {current[key]} (the weights belong to another model)")
    for key in FOLD_SPLIT_KEYS:
        if earlier[key] != current[key]:
            raise CheckpointError(f"init_from {checkpoint}: made with {key} = {earlier[key]}, this trial has"
                                  f" {current[key]} (another fold split would leak validation recordings"
                                  f" into training)")
    missing = sorted(set(config.fold_indices) - set(saved["folds"]))
    if missing:
        raise CheckpointError(f"init_from {checkpoint}: holds folds {saved['folds']},"
                              f" this trial trains fold {missing[0]}")


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


PREFETCH_BATCHES = 2  # per loader worker: batches ready while the device trains on this one


def loader_workers(train: TrainConfig, device: Device) -> int:
    """TrainConfig.loader_workers, or for -1 the assigned CPUs beyond the one that drives the
    device on CUDA; on the CPU the model's compute needs every core and the data path is a few
    per cent of a step, so none there."""
    if train.loader_workers >= 0:
        return train.loader_workers
    return max(device.cpus - 1, 0) if device.cuda else 0


def training_loader(dataset: TrainCrops | TrainClips, batches: EpochBatches, workers: int, pin_memory: bool,
                    collate: Callable | None = None) -> DataLoader:
    """One loader for every fold and epoch of a trial: its batches are set before each pass,
    and its workers persist, so no epoch pays for starting processes. `collate`: how items make
    a batch (None: torch's default, field by field)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory, collate_fn=collate,
                      persistent_workers=workers > 0, prefetch_factor=PREFETCH_BATCHES if workers else None)


def step_clamped(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, t_max: int) -> None:
    """End an epoch of a cosine schedule that stays at its floor after t_max epochs.

    The reference stepped CosineAnnealingLR past T_max, so its lr climbed back up and
    oscillated for the rest of the 50 epochs ("cosine_per_batch").
    """
    if scheduler.last_epoch < t_max:
        scheduler.step()


def batches_per_epoch(items: int, batch_size: int) -> int:
    """Batches of `shuffled_batches` over `items` crops."""
    return items // batch_size + (items % batch_size > 1)


def cosine(optimizer: torch.optim.Optimizer, train: TrainConfig,
           batches: int) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The cosine of TrainConfig.schedule: T_max = batches x t_max steps per batch (the
    reference's), or t_max per epoch."""
    steps = train.t_max * (batches if train.schedule == "cosine_per_batch" else 1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=train.min_lr)


class KFoldTraining:
    """All selected folds of one trial.

    Args:
        config: the trial's config.
        device: where to compute.
        annotations, cache: the data; opened from the config when not given.
    """

    def __init__(self, config: TrialConfig, device: Device, annotations: Annotations | None = None,
                 cache: LogMelCache | None = None):
        self.config, self.device = config, device
        self.annotations = annotations or load_annotations(Path(config.data_dir), config.data.dataset)
        # Opened once per trial: the manifest only; arrays are memory-mapped when read.
        self.cache = cache or LogMelCache.open(Path(config.cache_dir or Path(config.data_dir) / DEFAULT_CACHE_NAME))
        self.frames_per_second = self.cache.features.frames_per_second
        self.labels = self._labels()
        teacher, data = self.labels.teacher, config.data
        # Stage 3 with data.teacher_test_recordings: the test recordings the teacher finds a
        # species in are trained on too.
        self.test_frames = {} if teacher is None or not data.teacher_test_recordings else {
            rid: self.cache.load("test", rid).shape[1]
            for rid in teacher.positive_test_ids(config.loss.teacher_threshold)}
        self.clips = data.train_items == "clips"
        n_species = self.annotations.n_species
        # Stage 3 of whole clips (v4_2): the fp-only recordings are split into folds too, and
        # the CV is also taken against the relabelled truth.
        self.relabels = self.clips and teacher is not None
        self.fp_only = fp_only_ids(self.annotations) if self.relabels else []
        self.fp_only_valid = split_fp_only(self.fp_only, self.annotations.fp, n_species, data.n_folds, data.fold_seed)
        self.pipeline = InputPipeline(config.model, config.augment, zero_past_end=self.clips)
        self.class_counts = np.bincount(self.annotations.tp.species, minlength=n_species)
        folds = folds_of(self.annotations, data)
        self.runs = [self._fold_run(folds[index]) for index in config.fold_indices]
        self.batches = EpochBatches()
        items = TrainClips if self.clips else TrainCrops
        self.loader = training_loader(items(self.cache, self.labels, n_species, data), self.batches,
                                      loader_workers(config.train, device), device.cuda,
                                      collate_clips if self.clips else None)
        self.epoch = 0  # epochs done on every fold
        self.progress: EpochProgress | None = None  # the epoch in flight, once begun
        self.at_boundary: Callable[[], None] = no_boundary  # called between batches (trainable.training.preemption)
        self.selection = Selection(config.train.selection, config.fold_indices, [run.truth for run in self.runs])

    def _labels(self) -> Labels:
        """What the crops are labelled from in this trial's stage.

        Raises:
            TeacherError: a bad teacher file (stage 3).
        """
        config, fps = self.config, self.frames_per_second
        teacher = (load_teachers([Path(path) for path in config.teacher_files], self.annotations, fps)
                   if config.teacher_files else None)
        rule = config.data.event_frames
        return Labels(config.stage, index_events(self.annotations.tp, fps, rule),
                      index_events(self.annotations.fp, fps, rule), config.loss, teacher)

    def _relabelled_truth(self, recording_ids: list[str]) -> np.ndarray:
        """(N, C) clip labels of train recordings as stage 3 relabels them: a species is present
        where a window of the training cut is labelled positive, by an annotation or the teacher
        (v4_2's clip truth: a window label >= 1)."""
        data, n_species = self.config.data, self.annotations.n_species
        truth = np.zeros((len(recording_ids), n_species), dtype=np.float32)
        for row, rid in enumerate(recording_ids):
            starts = padded_starts(self.cache.load("train", rid).shape[1], data.crop_frames, data.clip_overlap)
            targets = self.labels.windows("train", rid, starts, data.crop_frames, n_species)
            truth[row] = ((targets.clip == 1) & (targets.clip_weight > 0)).any(dim=0).numpy()
        return truth

    def initialise_from(self, checkpoint: str | Path) -> None:
        """Start every fold's model from the same fold's model of an earlier trial (the
        previous stage). Only the weights: the optimiser, the schedule and the epochs start
        afresh.

        Raises:
            CheckpointError: see check_init_source and load_fold_weights.
        """
        check_init_source(checkpoint, self.config)
        for run in self.runs:
            load_fold_weights(run.model, checkpoint, run.fold.index, self.device)

    def _fold_run(self, fold: Fold) -> FoldRun:
        n_species, train = self.annotations.n_species, self.config.train
        torch.manual_seed(self.config.train.seed * 1000 + fold.index)  # model init
        model = SEDModel(self.config.model, n_species).to(self.device.torch)
        if self.device.cuda:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
        fp_only_valid = self.fp_only_valid[fold.index]
        held_out = set(fp_only_valid)
        fp_only_train = tuple(rid for rid in self.fp_only if rid not in held_out)
        if self.clips:
            items = len(epoch_clips(fold, self.config.stage, fp_only_train, tuple(self.test_frames)))
        else:
            items = epoch_size(fold, self.annotations.tp, self.config.data) + len(self.test_frames)
        scheduler = cosine(optimizer, train, batches_per_epoch(items, train.batch_size))
        tp = self.annotations.tp
        counts = self.class_counts if self.config.loss.class_counts == "all" else np.bincount(
            tp[tp.recording.isin(set(fold.train_ids))].species, minlength=n_species)
        loss_fn = SEDLoss(self.config.loss, balanced_pos_weight(counts)).to(self.device.torch)
        truth = species_matrix(tp, fold.valid_ids, n_species).astype(np.float32)
        relabelled = self._relabelled_truth([*fold.valid_ids, *fp_only_valid]) if self.relabels else None
        return FoldRun(fold, model, optimizer, scheduler, self.device.grad_scaler(), loss_fn,
                       np.random.default_rng([train.seed, fold.index]), truth, fp_only_train, fp_only_valid, relabelled)

    @property
    def oof_ids(self) -> list[str]:
        return [rid for run in self.runs for rid in run.fold.valid_ids]

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch on every fold, evaluate each, and return the epoch's metrics; or go
        on with the epoch a mid-epoch checkpoint was taken in.

        Raises:
            DivergedError: naming the fold and the epoch.
        """
        if self.progress is None:
            self.progress = EpochProgress(lr=self.runs[0].optimizer.param_groups[0]["lr"])
        progress = self.progress
        while progress.position < len(self.runs):
            position = progress.position
            run = self.runs[position]
            try:
                if progress.stats is None:
                    progress.stats = self._train_fold(run, progress)
                scores, fp_only_scores = self._evaluate_fold(run)
            except DivergedError as error:
                raise DivergedError(f"fold {run.fold.index}, epoch {self.epoch + 1}: {error}") from None
            lrap = self._reference_score(run, scores, fp_only_scores)
            fold_oof = scores[self.config.data.window_score]  # (V, C) by the config's window score
            self.selection.fold_epoch(position, self.epoch + 1, lrap, fold_oof, run.model)
            progress.fold_done(FoldResult(lrap, fold_oof, progress.stats, fp_only_scores))
        done, losses = progress.done, [r.stats for r in progress.done]
        self.progress = None
        self.epoch += 1
        truth = [run.truth for run in self.runs]
        oof, lraps = [r.scores for r in done], [r.lrap for r in done]
        self.selection.common_epoch(self.epoch, reported.pooled_lwlrap(truth, oof), float(np.mean(lraps)), oof,
                                    [run.model for run in self.runs])
        # Weighted by samples per fold: the mean per training sample of the epoch.
        weights = [stats.samples for stats in losses]
        outcome = reported.Outcome(
            epoch=self.epoch, folds=[run.fold.index for run in self.runs], truth=truth, oof=oof, lrap_reference=lraps,
            lr=progress.lr, samples=sum(weights), seconds=sum(stats.seconds for stats in losses),
            losses={key: float(np.average([stats.losses[key] for stats in losses], weights=weights))
                    for key in LOSS_KEYS},
            selection=self.selection.metrics())
        if self.relabels:  # stage 3 of whole clips: the CV against the relabelled truth too
            relabelled_truth = [run.relabelled for run in self.runs if run.relabelled is not None]
            assert len(relabelled_truth) == len(self.runs)  # every fold has one when self.relabels (_fold_run)
            outcome = dataclasses.replace(outcome, relabelled_truth=relabelled_truth,
                                          relabelled_scores=[np.concatenate([r.scores, r.fp_only_scores])
                                                             for r in done])
        return reported.epoch_metrics(outcome)

    def _train_fold(self, run: FoldRun, progress: EpochProgress) -> EpochStats:
        if progress.batches is None:  # the fold's pass begins (else it goes on from a mid-epoch checkpoint)
            items = self._epoch_items(run)
            shuffle = torch.Generator().manual_seed(int(run.rng.integers(2**62)))
            torch.manual_seed(int(run.rng.integers(2**62)))  # layers that draw from torch's RNG (dropout)
            progress.batches = shuffled_batches(items, self.config.train.batch_size, shuffle)
        self.batches.batches = progress.batches[progress.passed.batches:]
        per_batch = self.config.train.schedule == "cosine_per_batch"
        stats = train_epoch(run.model, self.loader, run.loss_fn, run.optimizer, run.scaler, self.pipeline,
                            self.config.augment, run.rng, self.device, run.scheduler if per_batch else None,
                            progress.passed, self.at_boundary)
        if not per_batch:
            step_clamped(run.scheduler, self.config.train.t_max)
        return stats

    def _epoch_items(self, run: FoldRun) -> list[CropSpec] | list[ClipSpec]:
        """The items of the fold's next training pass (trainable.data.crops, trainable.data.clips)."""
        if self.clips:
            return epoch_clips(run.fold, self.config.stage, run.fp_only_train, tuple(self.test_frames))
        crops = epoch_crops(run.fold, self.annotations.tp, self.annotations.fp, self.config.data,
                            self.frames_per_second, run.rng)
        if self.test_frames:
            assert self.labels.teacher is not None  # test_frames is empty without a teacher (__init__)
            crops += teacher_crops(self.labels.teacher, self.test_frames, self.config.data,
                                   self.config.loss.teacher_threshold, run.rng)
        return crops

    def _evaluate_fold(self, run: FoldRun) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The fold's out-of-fold clip probabilities by every window score (the config's
        windows), and in stage 3 of whole clips those of its fp-only validation recordings by
        the config's score."""
        data = self.config.data
        clips = self._predict_fold(run, data.window_rule, data.valid_overlap)
        if run.relabelled is None:
            return clips, None
        if not run.fp_only_valid:  # fewer fp-only recordings than folds
            return clips, np.zeros((0, self.annotations.n_species))
        fp_only = ClipWindows(self.cache, "train", run.fp_only_valid, data.crop_frames, data.valid_overlap,
                              n_species=self.annotations.n_species, rule=data.window_rule)
        return clips, self._predict(run, fp_only)[data.window_score]

    def _reference_score(self, run: FoldRun, clips: dict[str, np.ndarray], fp_only: np.ndarray | None) -> float:
        """The reference's own validation score of the fold, what its model is selected by:
        v1_7's LRAP (the reference's windows and score: a second pass only when the config's
        windows are others), or in stage 3 of whole clips v4_2's LWLRAP of all its validation
        recordings against the relabelled truth."""
        data = self.config.data
        if run.relabelled is not None:
            return lwlrap(run.relabelled, np.concatenate([clips[data.window_score], fp_only]))
        overlap = min(REFERENCE_VALID_OVERLAP, data.crop_frames - 1)  # the reference's windows, at this width
        if (data.window_rule, data.valid_overlap) != ("reference", overlap):
            clips = self._predict_fold(run, "reference", overlap)
        return reference_lrap(run.truth, clips["att_max_mean"])

    def _predict_fold(self, run: FoldRun, rule: str, overlap: int) -> dict[str, np.ndarray]:
        return self._predict(run, ClipWindows.validation(self.cache, run.fold, self.annotations.tp,
                                                         self.annotations.n_species, self.config.data, rule=rule,
                                                         overlap=overlap))

    def _predict(self, run: FoldRun, windows: ClipWindows) -> dict[str, np.ndarray]:
        return predict_clips(run.model, windows.batches(self.config.train.eval_recordings, self.device.cuda),
                             self.pipeline, self.device, self.at_boundary)

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint of the current state into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for run in self.runs:
            torch.save(run.state_dict(), directory / fold_file(run.fold.index))
            if run.fold.index in self.selection.weights:  # not before the fold's first evaluation
                torch.save(self.selection.weights[run.fold.index], directory / best_weights_file(run.fold.index))
        # The ignore below: mypy lets a **dict fill savez's allow_pickle: bool too; no key is that.
        np.savez(directory / BEST_OOF_FILE, recording_ids=np.asarray(self.oof_ids),
                 fold=np.concatenate([[run.fold.index] * len(run.fold.valid_ids) for run in self.runs]),
                 **self._selection_arrays())  # type: ignore[arg-type]
        if self.progress is not None:
            self._save_progress(directory)
        trial = {"format": CHECKPOINT_FORMAT, "epoch": self.epoch, "score": self.selection.score,
                 "best_epochs": self.selection.epochs, "selection": self.selection.state(),
                 "folds": list(self.config.fold_indices), "config": to_dict(self.config)}
        (directory / TRIAL_FILE).write_text(json.dumps(trial, indent=2))

    def load(self, directory: Path) -> None:
        """Restore the state saved by `save`.

        Raises:
            ConfigError: the checkpoint was made with another recipe, other folds or by an
                earlier version (format 1).
        """
        directory = Path(directory)
        trial = read_trial_file(directory)
        _check_same_recipe(trial["config"], to_dict(self.config), directory)
        if trial["folds"] != list(self.config.fold_indices):
            raise ConfigError(f"checkpoint {directory} holds folds {trial['folds']},"
                              f" this trial trains {list(self.config.fold_indices)}")
        load = lambda name: torch.load(directory / name, map_location="cpu", weights_only=True)  # noqa: E731
        for run in self.runs:
            run.load_state_dict(load(fold_file(run.fold.index)))
        self.epoch = trial["epoch"]
        self.selection.restore(trial["selection"], dict(np.load(directory / BEST_OOF_FILE)),
                               {run.fold.index: load(best_weights_file(run.fold.index)) for run in self.runs
                                if (directory / best_weights_file(run.fold.index)).exists()})
        self.progress = self._load_progress(directory) if (directory / EPOCH_FILE).exists() else None

    def _selection_arrays(self) -> dict[str, np.ndarray]:
        """Selection.arrays, with NaN for the folds not evaluated yet (only within the first epoch)."""
        selection = self.selection
        if all(best.oof for best in selection.per_fold) and selection.common.oof:
            return selection.arrays()
        blank = [np.full(truth.shape, np.nan) for truth in selection.truth]
        fold_best = np.concatenate([best.oof[0] if best.oof else empty
                                    for best, empty in zip(selection.per_fold, blank)])
        common = np.concatenate(selection.common.oof or blank)
        return {"scores": fold_best if selection.rule == "fold" else common, "fold_best_scores": fold_best,
                "common_best_scores": common}

    def _save_progress(self, directory: Path) -> None:
        """The epoch in flight (a checkpoint between two batches), with torch's RNG as it is there."""
        progress = self.progress
        assert progress is not None  # save calls this only with an epoch in flight
        (directory / EPOCH_FILE).write_text(json.dumps(progress.to_json()))
        fp_only = {f"fp_only_{i}": result.fp_only_scores for i, result in enumerate(progress.done)
                   if result.fp_only_scores is not None}
        np.savez(directory / EPOCH_ARRAYS, *[result.scores for result in progress.done],
                 **fp_only)  # type: ignore[arg-type]  # as in save: no key is allow_pickle
        rng = {"cpu": torch.get_rng_state()}
        if self.device.cuda:
            rng["cuda"] = torch.cuda.get_rng_state()
        sums = progress.passed.sums
        torch.save({"rng": rng, "sums": None if sums is None else sums.detach().cpu()}, directory / EPOCH_TENSORS)

    def _load_progress(self, directory: Path) -> EpochProgress:
        saved = json.loads((directory / EPOCH_FILE).read_text())
        with np.load(directory / EPOCH_ARRAYS) as arrays:
            scores = [arrays[f"arr_{i}"] for i in range(len(saved["done"]))]
            fp_only = [arrays[f"fp_only_{i}"] if f"fp_only_{i}" in arrays else None for i in range(len(saved["done"]))]
        tensors = torch.load(directory / EPOCH_TENSORS, map_location="cpu", weights_only=True)
        torch.set_rng_state(tensors["rng"]["cpu"])  # dropout goes on drawing where it was
        if "cuda" in tensors["rng"] and self.device.cuda:
            torch.cuda.set_rng_state(tensors["rng"]["cuda"])
        return EpochProgress.from_json(saved, scores, fp_only, tensors["sums"], ClipSpec if self.clips else CropSpec)


def _check_same_recipe(saved: dict, current: dict, directory: Path) -> None:
    """Refuse to resume with another recipe. Free to differ: what does not change the numbers
    or belongs to the machine (paths, workers, evaluation batching), and the epoch budget (a
    longer one goes on from a shorter one). The folds are compared as fold numbers. init_from
    only matters before the first checkpoint. A key the checkpoint lacks (it was made before the
    key existed) had its default."""
    free = {"data_dir", "cache_dir", "teacher_file", "teacher_files", "init_from", "model.pretrained_file",
            "train.epochs", "train.folds", "train.loader_workers", "train.eval_recordings",
            "train.checkpoint_seconds", "train.checkpoint_epochs"}
    recipe = {"data_dir": current["data_dir"], "recipe": saved.get("recipe", DEFAULT_RECIPE)}
    defaults = flatten_dotted(to_dict(resolve(recipe)))
    saved, current = {**defaults, **flatten_dotted(upgrade_keys(saved))}, flatten_dotted(current)
    for key in sorted((set(saved) | set(current)) - free):
        if saved.get(key) != current.get(key):
            raise ConfigError(f"checkpoint {directory} was made with {key} = {saved.get(key)!r},"
                              f" this trial has {current.get(key)!r}")

