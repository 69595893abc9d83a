"""Training crops and evaluation windows over a real cache of the synthetic dataset."""

import numpy as np
import pandas as pd
import pytest
import torch

from trainable.annotations import load_annotations
from trainable.cache import LogMelCache
from trainable.config import DataConfig, LossConfig
from trainable.data import ClipWindows, TrainCrops, centre_frames, crop, crop_start, epoch_crops, window_starts
from trainable.folds import make_folds, species_matrix
from trainable.targets import Events, Labels, frame_targets, index_events

FPS = 62.5


def stage1(annotations) -> Labels:
    return Labels(1, index_events(annotations.tp, FPS), {}, LossConfig())


@pytest.fixture(scope="module")
def setup(cached_dir):
    annotations = load_annotations(cached_dir)
    cache = LogMelCache.open(cached_dir / "logmel")
    folds = make_folds(annotations, n_folds=3, seed=0)
    return annotations, cache, folds


def test_crop_start_puts_the_centre_at_the_offset_and_clips_at_the_edges():
    assert crop_start(centre=1000, offset=64, n_frames=3751, width=512) == 936
    assert crop_start(centre=20, offset=64, n_frames=3751, width=512) == 0  # clipped at the start
    assert crop_start(centre=3740, offset=32, n_frames=3751, width=512) == 3751 - 512  # and at the end
    assert crop_start(centre=50, offset=32, n_frames=300, width=512) == 0  # clip shorter than a crop


def test_short_clip_is_padded_with_its_quietest_value():
    spectrogram = np.arange(4 * 10, dtype=np.float16).reshape(4, 10) - 50
    out = crop(spectrogram, 0, 16)
    assert out.shape == (4, 16) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :10], spectrogram)
    assert (out[:, 10:] == spectrogram.min()).all()


def test_frame_targets_follow_the_intervals_overlapping_the_crop():
    events = Events(species=np.array([2, 0]), start=np.array([90, 300]), end=np.array([140, 400]))
    targets = frame_targets(events, start=100, width=256, n_species=3)
    assert targets.shape == (3, 256)
    assert targets[2].nonzero()[0].tolist() == list(range(0, 40))  # frames 100..139
    assert targets[0].nonzero()[0].tolist() == list(range(200, 256))  # frames 300..355, cut at the crop end
    assert not targets[1].any()
    assert not frame_targets(None, 0, 256, 3).any()  # a pure fp recording: all negative


def test_intervals_become_the_frames_they_touch():
    rows = pd.DataFrame({"recording_id": ["a", "a", "b"], "species_id": [3, 1, 0],
                         "t_min": [1.0, 10.001, 0.0], "t_max": [2.0, 10.002, 0.5]})
    events = index_events(rows, FPS)
    assert sorted(events) == ["a", "b"]
    assert events["a"].species.tolist() == [3, 1]
    assert events["a"].start.tolist() == [62, 625] and events["a"].end.tolist() == [125, 626]  # >= 1 frame
    assert centre_frames(rows, FPS).tolist() == [94, 625, 16]


@pytest.mark.parametrize("n_frames, width, overlap", [(3751, 512, 49), (3751, 512, 256), (751, 512, 49),
                                                      (512, 512, 0), (100, 512, 49), (2000, 300, 299)])
def test_windows_cover_every_frame_with_the_requested_overlap(n_frames, width, overlap):
    starts = window_starts(n_frames, width, overlap)
    covered = np.zeros(max(n_frames, width), bool)
    for s in starts:
        covered[s:s + width] = True
    assert covered[:n_frames].all()
    assert starts[0] == 0 and (starts + width <= max(n_frames, width)).all()
    assert (np.diff(starts) <= width - overlap).all() and (np.diff(starts) > 0).all()


def test_epoch_crops_one_per_tp_event_plus_fresh_negatives(setup):
    annotations, _, folds = setup
    fold, config = folds[0], DataConfig(fp_per_epoch=5)
    rng = np.random.default_rng(0)
    first = epoch_crops(fold, annotations.tp, annotations.fp, config, FPS, rng)
    second = epoch_crops(fold, annotations.tp, annotations.fp, config, FPS, rng)
    train_events = annotations.tp[annotations.tp.recording_id.isin(fold.train_ids)]
    assert len(first) == len(train_events) + 5
    negatives = [[c.recording_id for c in crops[len(train_events):]] for crops in (first, second)]
    assert all(len(set(n)) == 5 and set(n) <= set(fold.negative_ids) for n in negatives)
    assert negatives[0] != negatives[1]  # drawn anew each epoch
    assert {c.offset for c in first} <= set(config.crop_offsets)
    assert not {c.recording_id for c in first} & set(fold.valid_ids)


def test_epoch_crops_are_deterministic_for_a_seed(setup):
    annotations, _, folds = setup
    draw = lambda seed: epoch_crops(folds[1], annotations.tp, annotations.fp, DataConfig(), FPS,
                                    np.random.default_rng(seed))
    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_train_crops_carry_the_event_at_its_offset(setup):
    annotations, cache, folds = setup
    config = DataConfig(crop_frames=256, crop_offsets=(32, 64), test_overlap=128)
    specs = epoch_crops(folds[0], annotations.tp, annotations.fp, config, FPS, np.random.default_rng(1))
    dataset = TrainCrops(cache, specs, stage1(annotations), annotations.n_species, 256)
    n_tp = len(annotations.tp[annotations.tp.recording_id.isin(folds[0].train_ids)])
    tp_rows = annotations.tp[annotations.tp.recording_id.isin(folds[0].train_ids)].reset_index(drop=True)
    checked = 0
    for i in range(n_tp):
        x, (clip, clip_weight, frames, frame_weight) = dataset[i]
        assert (clip_weight == 1).all() and torch.equal(frame_weight, frames)  # stage 1
        assert x.shape == (1, 128, 256) and clip.shape == (6,) and frames.shape == (6, 256)
        species = int(tp_rows.species_id[i])
        assert clip[species] == 1 and frames[species].any()
        n_frames = cache.load("train", specs[i].recording_id).shape[1]
        if 0 <= specs[i].centre - specs[i].offset <= n_frames - 256:  # not clipped at an edge
            assert frames[species, specs[i].offset] == 1
            checked += 1
        assert (clip.numpy() == frames.numpy().max(axis=1)).all()
    assert checked > 0


def test_pure_fp_crops_are_all_negative(setup):
    annotations, cache, folds = setup
    fold = folds[0]
    specs = epoch_crops(fold, annotations.tp, annotations.fp, DataConfig(fp_per_epoch=30), FPS,
                        np.random.default_rng(2))
    dataset = TrainCrops(cache, specs, stage1(annotations), annotations.n_species, 512)
    tp_ids = set(annotations.tp.recording_id)
    n_tp = len(annotations.tp[annotations.tp.recording_id.isin(fold.train_ids)])
    pure = [i for i in range(n_tp, len(specs)) if specs[i].recording_id not in tp_ids]
    assert pure
    for i in pure:
        x, (clip, clip_weight, frames, frame_weight) = dataset[i]
        assert (clip_weight == 1).all()  # stage 1: every species is a labelled negative
        assert x.shape == (1, 128, 512)  # 12 s clips are longer than a crop: no padding needed
        assert not clip.any() and not frames.any()


def test_validation_windows_cover_whole_clips_with_their_labels(setup):
    annotations, cache, folds = setup
    fold = folds[2]
    dataset = ClipWindows.validation(cache, fold, annotations.tp, annotations.n_species, DataConfig())
    assert len(dataset) == len(fold.valid_ids)
    windows, truth = dataset[0]
    n_frames = cache.load("train", fold.valid_ids[0]).shape[1]
    assert windows.shape == (len(window_starts(n_frames, 512, 49)), 1, 128, 512)
    expected = species_matrix(annotations.tp, fold.valid_ids[:1], annotations.n_species)[0]
    np.testing.assert_array_equal(truth.numpy(), expected)
    np.testing.assert_array_equal(windows[-1, 0, :, -1].numpy(), cache.load("train", fold.valid_ids[0])[:, -1])


def test_test_windows_pad_short_clips(setup, cached_dir):
    _, cache, _ = setup
    rid = sorted(p.stem for p in (cached_dir / "test").glob("*.flac"))[0]
    dataset = ClipWindows(cache, "test", [rid], crop_frames=1024, overlap=256, n_species=6)
    windows, truth = dataset[0]
    assert windows.shape == (1, 1, 128, 1024) and truth.shape == (6,) and not truth.any()
