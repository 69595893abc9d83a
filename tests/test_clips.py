"""The reference's stages 2 and 3 on whole clips (trainable.data.clips): their windows, items,
labels, loss, optimiser and schedule, the fp-only folds and both CVs of stage 3."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from trainable.config import TrialConfig, from_dict
from trainable.data.clips import ClipSpec, collate_clips, padded_starts
from trainable.data.folds import fp_only_ids, split_fp_only
from trainable.data.layouts import load_annotations
from trainable.data.targets import Targets
from trainable.dotted import merge
from trainable.metrics import lwlrap
from trainable.model.inputs import InputPipeline, draw_units, reference_group
from trainable.model.losses import SEDLoss
from trainable.model.sed import CLIP_ATT
from trainable.recipes import RECIPES
from trainable.training.fit import Device, EpochStats
from trainable.training.kfold import KFoldTraining
from trainable.training.optim import batches_per_epoch
from trainable.training.state import EpochProgress, FoldResult

pytestmark = pytest.mark.slow

CPU = Device(torch.device("cpu"))
WIDTH, OVERLAP = 128, 32  # 8 windows of a 751-frame clip (12 s), as the reference's 8 of 3751 at 512 and 49


def training(tiny_trial, recipe: str, **overrides) -> KFoldTraining:
    values = merge(tiny_trial, {"recipe": recipe, "data.clip_overlap": OVERLAP, "train.batch_size": 4, **overrides})
    return KFoldTraining(from_dict(TrialConfig, values), CPU)


def test_a_clip_is_cut_as_the_reference_cut_it():
    assert padded_starts(3751, 512, 49).tolist() == [0, 463, 926, 1389, 1852, 2315, 2778, 3241]  # v2_1's
    assert padded_starts(751, WIDTH, OVERLAP).tolist() == [96 * k for k in range(8)]
    assert padded_starts(100, WIDTH, OVERLAP).tolist() == [0]  # shorter than a window: one, padded


def test_the_recipes_are_the_references_stages():
    stage2 = from_dict(TrialConfig, {"data_dir": "/d", "recipe": "stage2-v2_1"})
    assert (stage2.stage, stage2.data.train_items, stage2.data.clip_overlap) == (2, "clips", 49)
    loss, train, augment = stage2.loss, stage2.train, stage2.augment
    assert (loss.w_att, loss.w_max, loss.w_pseudo, loss.w_frame) == (1.0, 0.0, 0.0, 0.0)
    assert not loss.class_balanced and loss.clip_reduction == "sum"
    assert augment.mixup_alpha == 0 and augment.brightness_contrast_p == 0 and augment.group_gamma == 0
    assert (augment.group_p, augment.time_masks, augment.freq_masks) == (0.5, 1, 1)  # the masks, p=0.5
    assert (train.batch_size, train.lr, train.epochs, train.t_max, train.schedule, train.min_lr) == (
        32, 3e-4, 5, 5, "cosine_per_batch", 0.0)
    stage3 = from_dict(TrialConfig, {"data_dir": "/d", "recipe": "stage3-v4_2", "teacher_files": ["/t.csv"]})
    assert stage3.stage == 3 and not stage3.data.teacher_test_recordings  # v4_2 trained on no test recording
    assert (stage3.loss.teacher_threshold, stage3.loss.teacher_weight, stage3.loss.teacher_negative_below,
            stage3.loss.teacher_negatives) == (0.5, 0.5, 0.01, False)
    assert {k: v for k, v in RECIPES["stage3-v4_2"].values.items() if k != "stage"} == {
        k: v for k, v in RECIPES["stage2-v2_1"].values.items() if k != "stage"}


def event_windows(rows: pd.DataFrame, starts: np.ndarray, n_species: int) -> np.ndarray:
    """(W, C): which windows [s, s + WIDTH) hold a frame of the rows' events, restated from
    v2_1: frames [int(3751 * t_min / 60), int(3751 * t_max / 60)) of a 3751-frame minute, here
    the cache's 62.5 frames/s (60 * 62.5 + 1 = 3751 per minute)."""
    held = np.zeros((len(starts), n_species), dtype=bool)
    for row in rows.itertuples():
        first, end = int(3751 * (row.start_s / 60)), int(3751 * (row.end_s / 60))
        for w, start in enumerate(starts):
            held[w, row.species] |= first < end and first < start + WIDTH and end > start
    return held


def test_stage_2_batches_are_every_tp_and_fp_recording_of_the_fold_in_8_windows(tiny_trial, cached_dir):
    stage2 = training(tiny_trial, "stage2-v2_1")
    annotations = load_annotations(cached_dir)
    run = stage2.runs[0]
    items = stage2._epoch_items(run)
    assert sorted(i.recording_id for i in items if not i.negative_item) == sorted(run.fold.train_ids)
    assert sorted(i.recording_id for i in items if i.negative_item) == sorted(run.fold.negative_ids)
    assert not set(run.fold.valid_ids) & {i.recording_id for i in items if not i.negative_item}
    both = set(annotations.tp.recording) & set(annotations.fp.recording) & set(run.fold.train_ids)
    assert both  # a recording in both files is two items, as in v2_1
    # One epoch's batches: each item once, 4 recordings = 32 windows a batch.
    stage2.progress = EpochProgress(lr=0.0)
    progress = stage2.progress
    stage2.train_fold(run, progress)
    drawn = [item for batch in progress.batches for item in batch]
    assert sorted(map(str, drawn)) == sorted(map(str, items)) and {len(b) for b in progress.batches[:-1]} == {4}
    assert progress.passed.batches == len(progress.batches) == batches_per_epoch(len(items), 4)
    # The loader's batch: 8 windows per recording, each window's placement naming its recording.
    x, targets, where = collate_clips([stage2.loader.dataset[item] for item in progress.batches[0]])
    assert x.shape == (32, 1, 128, WIDTH) and targets.clip.shape == (32, annotations.n_species)
    assert where.clip.tolist() == [k for k in range(4) for _ in range(8)]
    assert where.start.tolist() == [96 * k for k in range(8)] * 4


def test_stage_2_labels_a_tp_item_by_its_tp_events_and_an_fp_item_by_its_fp_events(tiny_trial, cached_dir):
    stage2 = training(tiny_trial, "stage2-v2_1")
    annotations = load_annotations(cached_dir)
    rid = sorted(set(annotations.tp.recording) & set(annotations.fp.recording))[0]
    starts, n_species = padded_starts(751, WIDTH, OVERLAP), annotations.n_species
    tp = stage2.loader.dataset[ClipSpec(rid)][1]
    held = event_windows(annotations.tp[annotations.tp.recording == rid], starts, n_species)
    np.testing.assert_array_equal(tp.clip.numpy(), held)  # positive where a window holds a tp frame
    np.testing.assert_array_equal(tp.clip_weight.numpy(), held)  # and nothing else labelled
    fp = stage2.loader.dataset[ClipSpec(rid, negative_item=True)][1]
    held = event_windows(annotations.fp[annotations.fp.recording == rid], starts, n_species)
    assert held.any() and not fp.clip.any()
    np.testing.assert_array_equal(fp.clip_weight.numpy(), held)  # negative where it holds an fp frame


def bce(logit: np.ndarray, label: float) -> np.ndarray:
    """BCE with logits, restated: -(y log s(z) + (1 - y) log(1 - s(z))), in float64."""
    sigmoid = 1 / (1 + np.exp(-logit))
    return -(label * np.log(sigmoid) + (1 - label) * np.log(1 - sigmoid))


def test_the_loss_of_stages_2_and_3_is_the_references(tiny_trial):
    """v2_1 (as exp0127) and v4_2: sum BCE(att, 1) on 1 + sum BCE(att, 0) on -1 + 0.5 sum BCE(att, 1)
    on 2, over windows x species, nothing on 0 and -2."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(256, 24))
    labels = rng.choice([1, -1, 0, 2, -2], size=(256, 24))
    reference = (bce(logits, 1)[labels == 1].sum() + bce(logits, 0)[labels == -1].sum()
                 + 0.5 * bce(logits, 1)[labels == 2].sum())
    loss = from_dict(TrialConfig, {"data_dir": "/d", "recipe": "stage3-v4_2", "teacher_files": ["/t"]}).loss
    clip = np.isin(labels, (1, 2)).astype(np.float32)
    weight = np.select([np.isin(labels, (1, -1)), labels == 2], [1.0, loss.teacher_weight], 0.0).astype(np.float32)
    empty = torch.zeros(256, 24, 0)
    targets = Targets(torch.from_numpy(clip), torch.from_numpy(weight), empty, empty)
    total = SEDLoss(loss)({CLIP_ATT: torch.from_numpy(logits).float()}, targets)["total"]
    assert total.item() == pytest.approx(reference, rel=1e-6)


def test_stage_2_optimiser_and_schedule_are_the_references(tiny_trial):
    stage2 = training(tiny_trial, "stage2-v2_1", **{"train.folds": [0]})
    run = stage2.runs[0]
    batches = batches_per_epoch(len(stage2._epoch_items(run)), 4)
    assert isinstance(run.optimizer, torch.optim.Adam) and run.optimizer.param_groups[0]["lr"] == 3e-4
    assert (run.scheduler.T_max, run.scheduler.eta_min) == (5 * batches, 0.0)  # one cosine over the 5 epochs
    stage2.progress = EpochProgress(lr=0.0)
    stage2.train_fold(run, stage2.progress)
    assert run.scheduler.last_epoch == batches  # stepped after every batch
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * (1 + math.cos(math.pi / 5)) / 2)


def teacher_table(annotations, values: dict[tuple[str, int], dict[int, float]], fps: float) -> pd.DataFrame:
    """A window-level teacher on the training windows of every train recording: 0.3 everywhere,
    but values[(recording, window)][species]."""
    rows = []
    for rid in sorted(set(annotations.tp.recording) | set(annotations.fp.recording)):
        for w, start in enumerate(padded_starts(751, WIDTH, OVERLAP)):
            probabilities = np.full(annotations.n_species, 0.3)
            for species, value in values.get((rid, w), {}).items():
                probabilities[species] = value
            rows.append([rid, start / fps, (start + WIDTH) / fps, *probabilities])
    return pd.DataFrame(rows, columns=["recording_id", "t_min", "t_max",
                                       *[f"s{i}" for i in range(annotations.n_species)]])


def test_stage_3_labels_windows_from_the_teachers_mean_where_no_annotation_does(tiny_trial, cached_dir, tmp_path):
    annotations = load_annotations(cached_dir)
    fps = 62.5
    starts = padded_starts(751, WIDTH, OVERLAP)
    fp_windows = {rid: event_windows(annotations.fp[annotations.fp.recording == rid], starts, annotations.n_species)
                  for rid in fp_only_ids(annotations)}
    rid = next(rid for rid, held in fp_windows.items() if not held[0].any())  # window 0: no annotation
    tp_rid = annotations.tp.recording.iloc[0]
    tp_species, tp_start = int(annotations.tp.species.iloc[0]), int(3751 * annotations.tp.start_s.iloc[0] / 60)
    tp_window = int(np.flatnonzero(padded_starts(751, WIDTH, OVERLAP) <= tp_start)[-1])
    # Each threshold at its boundary, as the mean of two teachers (binary fractions: exact means).
    first = {(rid, 0): {0: 0.25, 1: 0.25, 2: 0.9, 3: 0.0625, 4: 0.0, 5: 0.0},
             (tp_rid, tp_window): {tp_species: 0.0}}
    second = {(rid, 0): {0: 0.75, 1: 0.74, 2: 0.0, 3: 0.0625, 4: 0.125, 5: 0.0625},
              (tp_rid, tp_window): {tp_species: 0.0}}
    paths = []
    for k, values in enumerate((first, second)):
        paths.append(str(tmp_path / f"teacher_{k}.csv"))
        teacher_table(annotations, values, fps).to_csv(paths[-1], index=False)
    stage3 = training(tiny_trial, "stage3-v4_2", teacher_files=paths, **{"loss.teacher_negative_below": 0.0625,
                                                                         "loss.teacher_negatives": True})
    targets = stage3.loader.dataset[ClipSpec(rid)][1]
    expected = [(1.0, 0.5),  # mean 0.5 >= 0.5: a pseudo positive of weight 0.5
                (0.0, 0.0),  # mean 0.495: unlabelled
                (0.0, 0.0),  # mean 0.45, though one teacher says 0.9: the mean decides
                (0.0, 0.0),  # mean 0.0625, not below 0.0625: unlabelled
                (0.0, 0.0),  # mean 0.0625 again
                (0.0, 0.5)]  # mean 0.03125 < 0.0625: a difficult negative (teacher_negatives on)
    for species, (label, weight) in enumerate(expected):
        assert (targets.clip[0, species].item(), targets.clip_weight[0, species].item()) == (label, weight), species
    # The other windows: the recording's fp events are its negatives, and the teacher's 0.3 labels nothing.
    np.testing.assert_array_equal(targets.clip_weight[1:].numpy(), fp_windows[rid][1:])
    assert not targets.clip[1:].any()
    # The annotation wins: a tp window stays positive, of weight 1, under a teacher mean of 0.
    tp_targets = stage3.loader.dataset[ClipSpec(tp_rid)][1]
    assert (tp_targets.clip[tp_window, tp_species].item(), tp_targets.clip_weight[tp_window, tp_species].item()) == (
        1.0, 1.0)
    # Difficult negatives are off in the recipe: the same mean leaves the species unlabelled.
    off = training(tiny_trial, "stage3-v4_2", teacher_files=paths, **{"loss.teacher_negative_below": 0.0625})
    assert off.loader.dataset[ClipSpec(rid)][1].clip_weight[0, 5].item() == 0.0
    # An fp event wins over the teacher: a window holding one is a negative of weight 1.
    rid, held = next((rid, held) for rid, held in fp_windows.items() if held.any())
    window, species = np.argwhere(held)[0]
    teacher_table(annotations, {(rid, window): {species: 1.0}}, fps).to_csv(paths[0], index=False)
    teacher_table(annotations, {(rid, window): {species: 1.0}}, fps).to_csv(paths[1], index=False)
    taught = training(tiny_trial, "stage3-v4_2", teacher_files=paths).loader.dataset[ClipSpec(rid)][1]
    assert (taught.clip[window, species].item(), taught.clip_weight[window, species].item()) == (0.0, 1.0)


@pytest.fixture(scope="module")
def stage3_run(tiny_trial, cached_dir, tmp_path_factory):
    """A stage-3 training of one epoch on 2 folds, taught by a teacher that finds species 0 in
    half of the fp-only recordings."""
    annotations = load_annotations(cached_dir)
    fp_only = fp_only_ids(annotations)
    path = tmp_path_factory.mktemp("teacher") / "windows.csv"
    teacher_table(annotations, {(rid, 2): {0: 0.9} for rid in fp_only[::2]}, 62.5).to_csv(path, index=False)
    stage3 = training(tiny_trial, "stage3-v4_2", teacher_files=[str(path)],
                      **{"data.crop_frames": 256, "data.clip_overlap": 24, "train.batch_size": 8})
    return stage3, stage3.run_epoch(), fp_only


def test_stage_3_splits_the_fp_only_recordings_into_folds_and_trains_on_the_rest(stage3_run):
    stage3, _, fp_only = stage3_run
    valid = [set(run.fp_only_valid) for run in stage3.runs]
    assert set().union(*valid) == set(fp_only) and not valid[0] & valid[1] and all(valid)
    for run in stage3.runs:
        items = stage3._epoch_items(run)
        assert not any(item.negative_item for item in items)  # each recording once, all its events
        trained = [item.recording_id for item in items]
        assert sorted(trained) == sorted([*run.fold.train_ids, *(set(fp_only) - set(run.fp_only_valid))])
        assert not set(trained) & (set(run.fold.valid_ids) | set(run.fp_only_valid))


def test_stage_3_reports_the_cv_on_the_original_labels_and_on_the_relabelled_truth(stage3_run, cached_dir):
    stage3, metrics, fp_only = stage3_run
    annotations = load_annotations(cached_dir)
    taught = set(fp_only[::2])
    for run in stage3.runs:
        tp_rows, fp_rows = run.relabelled[:len(run.fold.valid_ids)], run.relabelled[len(run.fold.valid_ids):]
        np.testing.assert_array_equal(tp_rows >= run.truth, True)  # a tp species stays; the teacher may add
        np.testing.assert_array_equal(fp_rows[:, 0], [rid in taught for rid in run.fp_only_valid])
        assert not fp_rows[:, 1:].any()
    # The predictions again, from the weights the epoch ended with (evaluation is deterministic).
    score = stage3.config.data.window_score
    predicted = [stage3._evaluate_fold(run) for run in stage3.runs]
    tp = np.concatenate([clips[score] for clips, _ in predicted])
    assert tp.shape == (sum(len(run.fold.valid_ids) for run in stage3.runs), annotations.n_species)
    assert metrics["cv_lwlrap"] == pytest.approx(lwlrap(np.concatenate([run.truth for run in stage3.runs]), tp))
    everything = [np.concatenate([clips[score], fp_only_scores]) for clips, fp_only_scores in predicted]
    relabelled = np.concatenate([run.relabelled for run in stage3.runs])
    assert metrics["cv_lwlrap_relabelled"] == pytest.approx(lwlrap(relabelled, np.concatenate(everything)))
    assert metrics["cv_lwlrap_relabelled"] != metrics["cv_lwlrap"]
    # Each fold is selected by v4_2's own score: its LWLRAP against the relabelled truth.
    for run, predictions in zip(stage3.runs, everything):
        assert metrics[f"fold/{run.fold.index}/lrap_reference"] == pytest.approx(lwlrap(run.relabelled, predictions))


def test_the_windows_of_a_clip_share_its_augmentation_and_are_zero_past_its_end(tiny_trial):
    stage2 = training(tiny_trial, "stage2-v2_1", **{"augment.group_p": 1.0, "augment.time_masks": 0,
                                                    "augment.freq_mask_bins": 30})
    ids = list(stage2.runs[0].fold.train_ids[:3])
    x, _, where = collate_clips([stage2.loader.dataset[ClipSpec(rid)] for rid in ids])
    # The random group on a blank image: what it masks is 0, the rest stays 1.
    ones = torch.ones(len(x), 1, x.shape[2], WIDTH)
    v = reference_group(ones, where, stage2.config.augment, np.random.default_rng(3), draw_units(where, len(x)))
    masked = (v[:, 0] == 0).all(dim=-1)  # (W, M): the mel rows masked in each window
    per_clip = [masked[where.clip == clip] for clip in range(3)]
    assert all((rows == rows[0]).all() for rows in per_clip)  # one frequency mask per clip, on all its windows
    drawn = {tuple(rows[0].tolist()) for rows in per_clip if rows.any()}  # a draw may mask nothing (width 0)
    assert len(drawn) >= 2  # each clip draws its own
    # The last window of a clip runs past its end (frames 672..799 of 751): 0 there, as v2_1 padded.
    image = stage2.pipeline.training(x, where, np.random.default_rng(3))
    assert (image[7, ..., 751 - 672:] == 0).all() and (image[7, ..., :751 - 672] != 0).any()
    # Crops (stage 1) keep the padding the evaluation windows have: the clip's quietest value.
    crops = InputPipeline(stage2.config.model, stage2.config.augment).training(x, where, np.random.default_rng(3))
    assert not (crops[7, ..., 751 - 672:] == 0).any()


def test_a_time_mask_is_drawn_over_the_whole_clip_and_cut_with_it(tiny_trial):
    stage2 = training(tiny_trial, "stage2-v2_1", **{"augment.group_p": 1.0, "augment.freq_masks": 0,
                                                    "augment.time_mask_frames": 200})
    ids = list(stage2.runs[0].fold.train_ids[:4])
    x, _, where = collate_clips([stage2.loader.dataset[ClipSpec(rid)] for rid in ids])
    v = reference_group(torch.ones(len(x), 1, 8, WIDTH), where, stage2.config.augment, np.random.default_rng(5),
                        draw_units(where, len(x)))
    masked = (v[:, 0] == 0).all(dim=1)  # (W, T): the frames masked in each window
    bands = 0
    for clip in range(4):
        frames = set()  # the masked frames of the clip, in its own coordinates
        for w in np.flatnonzero(where.clip.numpy() == clip):
            frames |= {int(where.start[w]) + t for t in np.flatnonzero(masked[w].numpy())}
        if frames:  # one band of the clip: every window that meets it masks its part of it
            band = range(min(frames), max(frames) + 1)
            assert frames == set(band)
            for w in np.flatnonzero(where.clip.numpy() == clip):
                inside = [t for t in range(WIDTH) if int(where.start[w]) + t in band]
                assert masked[w, inside].all() and masked[w].sum() == len(inside)
            bands += 1
    assert bands >= 2


def test_fewer_fp_only_recordings_than_folds_leave_folds_without_any(stage3_run):
    annotations_fp = pd.DataFrame({"recording": ["a"], "species": [0]})
    assert split_fp_only(["a"], annotations_fp, 6, 3, 0) == [("a",), (), ()]
    stage3, _, _ = stage3_run
    run = stage3.runs[0]
    alone = dataclasses.replace(run, fp_only_valid=(), relabelled=run.relabelled[:len(run.fold.valid_ids)])
    clips, fp_only = stage3._evaluate_fold(alone)
    assert fp_only.shape == (0, run.truth.shape[1])
    score = stage3.config.data.window_score
    assert stage3._reference_score(alone, clips, fp_only) == pytest.approx(lwlrap(alone.relabelled, clips[score]))


def test_a_checkpoint_within_a_stage_3_epoch_holds_its_clips_and_fp_only_scores(stage3_run, tmp_path):
    stage3, _, _ = stage3_run
    run = stage3.runs[0]
    clips, fp_only = stage3._evaluate_fold(run)
    score = clips[stage3.config.data.window_score]
    stage3.progress = EpochProgress(lr=1e-4, position=1, batches=[stage3._epoch_items(stage3.runs[1])[:3]])
    stage3.progress.done.append(FoldResult(0.6, score, EpochStats({}, 1, 1.0), fp_only))
    try:
        stage3.save(tmp_path)
        stage3.progress = None
        stage3.load(tmp_path)
        restored = stage3.progress
    finally:
        stage3.progress = None
    assert restored is not None
    assert restored.batches == [stage3._epoch_items(stage3.runs[1])[:3]]
    assert all(isinstance(item, ClipSpec) for item in restored.batches[0])
    np.testing.assert_array_equal(restored.done[0].scores, score)
    np.testing.assert_array_equal(restored.done[0].fp_only_scores, fp_only)
