"""Training crops and evaluation windows over a real cache of the synthetic dataset, by both
rules of each switch (the reference's formulas themselves: tests/test_reference.py)."""

import numpy as np
import pandas as pd
import pytest
import torch

from trainable.config import DataConfig, LossConfig
from trainable.data.cache import LogMelCache, clip_statistics
from trainable.data.crops import TrainCrops, centre_frames, crop, crop_start, epoch_crops, epoch_size
from trainable.data.folds import make_folds, species_matrix
from trainable.data.layouts import load_annotations
from trainable.data.targets import Events, Labels, frame_targets, index_events
from trainable.data.windows import ClipWindows, window_starts

FPS = 62.5
# The fixed recipe's rules: one crop per event, frames an event touches, windows to the clip end.
EVENT = dict(crop_rule="event", event_frames="cover", window_rule="cover")


def stage1(annotations, rule: str = "reference") -> Labels:
    return Labels(1, index_events(annotations.tp, FPS, rule), {}, LossConfig())


@pytest.fixture(scope="module")
def setup(cached_dir):
    annotations = load_annotations(cached_dir)
    cache = LogMelCache.open(cached_dir / "logmel")
    folds = make_folds(annotations, n_folds=3, seed=0)
    return annotations, cache, folds


def test_crop_start_puts_the_centre_at_the_offset_and_clips_at_the_edges():
    assert crop_start(centre=1000, offset=64, n_frames=3751, width=512, rule="event") == 936
    assert crop_start(centre=20, offset=64, n_frames=3751, width=512, rule="event") == 0  # clipped at the start
    assert crop_start(centre=3740, offset=32, n_frames=3751, width=512, rule="event") == 3751 - 512  # and at the end
    assert crop_start(centre=50, offset=32, n_frames=300, width=512, rule="event") == 0  # clip shorter than a crop
    # The reference's: the offset was chosen feasible already; past frame n - 1 -> [n - 1 - width, n - 1).
    assert crop_start(centre=1000, offset=64, n_frames=3751, width=512) == 936
    assert crop_start(centre=3740, offset=32, n_frames=3751, width=512) == 3750 - 512
    assert crop_start(centre=50, offset=32, n_frames=300, width=512) == 0
    assert crop_start(centre=200, offset=256, n_frames=3751, width=512) == 0  # a teacher's early crop (stage 3)


def test_short_clip_is_padded_with_its_quietest_value():
    spectrogram = np.arange(4 * 10, dtype=np.float16).reshape(4, 10) - 50
    out = crop(spectrogram, 0, 16)
    assert out.shape == (4, 16) and out.dtype == np.float16  # as cached: the device converts it
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
    rows = pd.DataFrame({"recording": ["a", "a", "b"], "species": [3, 1, 0],
                         "start_s": [1.0, 10.001, 0.0], "end_s": [2.0, 10.002, 0.5]})
    events = index_events(rows, FPS, "cover")
    assert sorted(events) == ["a", "b"]
    assert events["a"].species.tolist() == [3, 1]
    assert events["a"].start.tolist() == [62, 625] and events["a"].end.tolist() == [125, 626]  # >= 1 frame
    assert centre_frames(rows, FPS).tolist() == [94, 625, 16]
    # The reference's: int(3751 * t / 60), so the shortest event may cover no frame at all.
    reference = index_events(rows, FPS, "reference")
    assert reference["a"].start.tolist() == [62, 625] and reference["a"].end.tolist() == [125, 625]


@pytest.mark.parametrize("n_frames, width, overlap", [(3751, 512, 49), (3751, 512, 256), (751, 512, 49),
                                                      (512, 512, 0), (100, 512, 49), (2000, 300, 299)])
def test_windows_cover_every_frame_with_the_requested_overlap(n_frames, width, overlap):
    starts = window_starts(n_frames, width, overlap, "cover")
    covered = np.zeros(max(n_frames, width), bool)
    for s in starts:
        covered[s:s + width] = True
    assert covered[:n_frames].all()
    assert starts[0] == 0 and (starts + width <= max(n_frames, width)).all()
    assert (np.diff(starts) <= width - overlap).all() and (np.diff(starts) > 0).all()
    # The reference's windows are the same without the last one aligned to the clip end.
    reference = window_starts(n_frames, width, overlap, "reference")
    assert (np.diff(reference) == width - overlap).all() and (reference + width <= max(n_frames, width)).all()
    assert set(reference) <= set(starts) and len(starts) - len(reference) in (0, 1)


def test_epoch_crops_one_per_tp_recording_plus_fresh_negatives(setup):
    annotations, _, folds = setup
    fold, config = folds[0], DataConfig(fp_per_epoch=5)
    rng = np.random.default_rng(0)
    first = epoch_crops(fold, annotations.tp, annotations.fp, config, FPS, rng)
    second = epoch_crops(fold, annotations.tp, annotations.fp, config, FPS, rng)
    assert len(first) == len(second) == len(fold.train_ids) + 5 == epoch_size(fold, annotations.tp, config)
    assert [c.recording_id for c in first[:len(fold.train_ids)]] == list(fold.train_ids)  # each once
    assert not any(c.negative_item for c in first[:len(fold.train_ids)])
    negatives = [crops[len(fold.train_ids):] for crops in (first, second)]
    assert all(c.negative_item for n in negatives for c in n)
    assert all(set(c.recording_id for c in n) <= set(fold.negative_ids) for n in negatives)
    assert [c.recording_id for c in negatives[0]] != [c.recording_id for c in negatives[1]]  # drawn anew
    # Offsets the reference could draw: feasible ones, or the centre itself (the crop starts at 0).
    assert all(c.offset in config.crop_offsets and c.centre - c.offset > 0 or c.offset == c.centre for c in first)
    events = index_events(annotations.tp, FPS)
    for crop_ in first[:len(fold.train_ids)]:  # around the middle of one of the recording's events
        rec = events[crop_.recording_id]
        assert crop_.centre in set(((rec.start + rec.end) // 2).tolist())


def test_epoch_crops_one_per_tp_event_plus_fresh_negatives(setup):
    annotations, _, folds = setup
    fold, config = folds[0], DataConfig(fp_per_epoch=5, **EVENT)
    rng = np.random.default_rng(0)
    first = epoch_crops(fold, annotations.tp, annotations.fp, config, FPS, rng)
    second = epoch_crops(fold, annotations.tp, annotations.fp, config, FPS, rng)
    train_events = annotations.tp[annotations.tp.recording.isin(fold.train_ids)]
    assert len(first) == len(train_events) + 5 == epoch_size(fold, annotations.tp, config)
    negatives = [[c.recording_id for c in crops[len(train_events):]] for crops in (first, second)]
    assert all(len(set(n)) == 5 and set(n) <= set(fold.negative_ids) for n in negatives)
    assert negatives[0] != negatives[1]  # drawn anew each epoch
    assert {c.offset for c in first} <= set(config.crop_offsets)
    assert not {c.recording_id for c in first} & set(fold.valid_ids)


def test_epoch_crops_are_deterministic_for_a_seed(setup):
    annotations, _, folds = setup
    for config in (DataConfig(), DataConfig(**EVENT)):
        draw = lambda seed, config=config: epoch_crops(folds[1], annotations.tp, annotations.fp, config, FPS,  # noqa: E731
                                        np.random.default_rng(seed))
        assert draw(3) == draw(3) and draw(3) != draw(4)


def test_train_crops_carry_the_event_at_its_offset(setup):
    annotations, cache, folds = setup
    config = DataConfig(crop_frames=256, crop_offsets=(32, 64), test_overlap=128, **EVENT)
    specs = epoch_crops(folds[0], annotations.tp, annotations.fp, config, FPS, np.random.default_rng(1))
    dataset = TrainCrops(cache, stage1(annotations, "cover"), annotations.n_species, config)
    n_tp = len(annotations.tp[annotations.tp.recording.isin(folds[0].train_ids)])
    tp_rows = annotations.tp[annotations.tp.recording.isin(folds[0].train_ids)].reset_index(drop=True)
    checked = 0
    for i in range(n_tp):
        x, (clip, clip_weight, frames, frame_weight), where = dataset[specs[i]]
        assert (clip_weight == 1).all() and torch.equal(frame_weight, frames)  # stage 1
        assert x.shape == (1, 128, 256) and clip.shape == (6,) and frames.shape == (6, 256)
        species = int(tp_rows.species[i])
        assert clip[species] == 1 and frames[species].any()
        n_frames = cache.load("train", specs[i].recording_id).shape[1]
        assert where.frames == n_frames and where.start == crop_start(specs[i].centre, specs[i].offset, n_frames,
                                                                      256, "event")
        np.testing.assert_array_equal(where.stats.numpy(), clip_statistics(cache.load("train", specs[i].recording_id)))
        if 0 <= specs[i].centre - specs[i].offset <= n_frames - 256:  # not clipped at an edge
            assert frames[species, specs[i].offset] == 1
            checked += 1
        assert (clip.numpy() == frames.numpy().max(axis=1)).all()
    assert checked > 0


@pytest.mark.parametrize("rule", ["recording", "event"])
def test_fp_items_are_all_negative_in_the_reference_and_pure_fp_crops_in_both(setup, rule):
    annotations, cache, folds = setup
    fold = folds[0]
    config = DataConfig(fp_per_epoch=30, **(EVENT if rule == "event" else {}))
    specs = epoch_crops(fold, annotations.tp, annotations.fp, config, FPS, np.random.default_rng(2))
    dataset = TrainCrops(cache, stage1(annotations, config.event_frames), annotations.n_species, config)
    tp_ids = set(annotations.tp.recording)
    n_tp = epoch_size(fold, annotations.tp, config) - min(30, len(fold.negative_ids))
    # The reference labels every fp item all-negative, even one of a recording in both files.
    negative = [i for i in range(n_tp, len(specs)) if rule == "recording" or specs[i].recording_id not in tp_ids]
    assert negative
    for i in negative:
        x, (clip, clip_weight, frames, frame_weight), _ = dataset[specs[i]]
        assert (clip_weight == 1).all()  # stage 1: every species is a labelled negative
        assert x.shape == (1, 128, 512)  # 12 s clips are longer than a crop: no padding needed
        assert not clip.any() and not frames.any()


def test_validation_windows_cover_whole_clips_with_their_labels(setup):
    annotations, cache, folds = setup
    fold = folds[2]
    dataset = ClipWindows.validation(cache, fold, annotations.tp, annotations.n_species, DataConfig(**EVENT))
    assert len(dataset) == len(fold.valid_ids)
    windows, truth, where = dataset[0]
    n_frames = cache.load("train", fold.valid_ids[0]).shape[1]
    starts = window_starts(n_frames, 512, 51, "cover")
    assert windows.shape == (len(starts), 1, 128, 512)
    assert where.start.tolist() == starts.tolist() and (where.frames == n_frames).all()
    assert (where.stats == torch.from_numpy(clip_statistics(cache.load("train", fold.valid_ids[0])))).all()
    expected = species_matrix(annotations.tp, fold.valid_ids[:1], annotations.n_species)[0]
    np.testing.assert_array_equal(truth.numpy(), expected)
    np.testing.assert_array_equal(windows[-1, 0, :, -1].numpy(), cache.load("train", fold.valid_ids[0])[:, -1])


def test_test_windows_pad_short_clips(setup, cached_dir):
    _, cache, _ = setup
    rid = sorted(p.stem for p in (cached_dir / "test").glob("*.flac"))[0]
    dataset = ClipWindows(cache, "test", [rid], crop_frames=1024, overlap=256, n_species=6)
    windows, truth, _ = dataset[0]
    assert windows.shape == (1, 1, 128, 1024) and truth.shape == (6,) and not truth.any()
