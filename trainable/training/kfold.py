"""The k-fold training of one configuration, one epoch on every fold at a time.

This is a trial without Ray: `trainable.tune` reports its metrics and stores its
checkpoints. Each fold has its own model, optimiser, scheduler and random generator
(trainable.training.state), and a checkpoint holds all of them (trainable.training.checkpoint:
the format), so a resumed trial goes on exactly where it stopped, within an epoch too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trainable import reported
from trainable.config import TrialConfig
from trainable.data.annotations import Annotations
from trainable.data.cache import LogMelCache, cache_location
from trainable.data.clips import ClipSpec, TrainClips, collate_clips, epoch_clips, padded_starts
from trainable.data.crops import CropSpec, TrainCrops, epoch_crops, epoch_size, teacher_crops
from trainable.data.folds import Fold, folds_of, fp_only_ids, species_matrix, split_fp_only
from trainable.data.layouts import load_annotations
from trainable.data.targets import Labels, index_events
from trainable.data.teacher import load_teachers
from trainable.data.windows import REFERENCE_VALID_OVERLAP, ClipWindows
from trainable.metrics import lwlrap, reference_lrap
from trainable.model.inputs import InputPipeline
from trainable.model.losses import SEDLoss, balanced_pos_weight
from trainable.model.sed import SEDModel
from trainable.training.checkpoint import check_init_source, load_fold_weights, load_trial, save_trial
from trainable.training.fit import LOSS_KEYS, Device, DivergedError, EpochStats, no_boundary, predict_clips, train_epoch
from trainable.training.loader import EpochBatches, loader_workers, shuffled_batches, training_loader
from trainable.training.optim import adam, batches_per_epoch, cosine, step_clamped
from trainable.training.selection import Selection
from trainable.training.state import EpochProgress, FoldResult, FoldRun


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
        self.cache = cache or LogMelCache.open(cache_location(config.data_dir, config.cache_dir))
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
        if self.device.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = adam(model.parameters(), train)
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
                    progress.stats = self.train_fold(run, progress)
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

    def train_fold(self, run: FoldRun, progress: EpochProgress | None = None) -> EpochStats:
        """One training pass of the fold `run`: the pass of the epoch in flight (`progress`, which
        it updates batch by batch; it goes on where a mid-epoch checkpoint left it), or with
        None a pass of its own outside any epoch (what the benchmarks time).

        Raises:
            DivergedError: the pass's loss is not finite.
        """
        progress = progress if progress is not None else EpochProgress(lr=run.optimizer.param_groups[0]["lr"])
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
        clips = self.predict_fold(run, data.window_rule, data.valid_overlap)
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
            clips = self.predict_fold(run, "reference", overlap)
        return reference_lrap(run.truth, clips["att_max_mean"])

    def predict_fold(self, run: FoldRun, rule: str, overlap: int) -> dict[str, np.ndarray]:
        """The out-of-fold clip probabilities of the fold `run` by every window score, in windows
        by `rule` (DataConfig.window_rule) sharing `overlap` frames.

        Raises:
            DivergedError: a probability is not finite.
        """
        return self._predict(run, ClipWindows.validation(self.cache, run.fold, self.annotations.tp,
                                                         self.annotations.n_species, self.config.data, rule=rule,
                                                         overlap=overlap))

    def _predict(self, run: FoldRun, windows: ClipWindows) -> dict[str, np.ndarray]:
        return predict_clips(run.model, windows.batches(self.config.train.eval_recordings, self.device.cuda),
                             self.pipeline, self.device, self.at_boundary)

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint of the current state into `directory` (created if needed;
        trainable.training.checkpoint: the format)."""
        save_trial(directory, self.config, self.epoch, self.runs, self.selection, self.progress, self.device.cuda)

    def load(self, directory: str | Path) -> None:
        """Restore the state saved by `save`.

        Raises:
            ConfigError: the checkpoint was made with another recipe, other folds or by an
                earlier version (format 1).
        """
        self.epoch, self.progress = load_trial(directory, self.config, self.runs, self.selection, self.device.cuda)
