"""Teacher files for stage 3: both layouts read into frames, every bad file refused with one
line that names the problem, and several files averaged into one teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainable.data.layouts import load_annotations
from trainable.data.teacher import WHOLE_CLIP, TeacherError, load_teacher, load_teachers

FPS = 62.5


@pytest.fixture(scope="module")
def annotations(cached_dir):
    return load_annotations(cached_dir)


def species(annotations) -> list[str]:
    return [f"s{i}" for i in range(annotations.n_species)]


def recording_level(annotations) -> pd.DataFrame:
    """An oof.csv + submission.csv teacher: every tp and test recording once."""
    ids = sorted(set(annotations.tp.recording)) + list(annotations.test_ids)
    probabilities = np.random.default_rng(0).uniform(size=(len(ids), annotations.n_species))
    return pd.DataFrame(probabilities, columns=species(annotations)).assign(recording_id=ids)[
        ["recording_id", *species(annotations)]]


def write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def test_a_recording_level_teacher_covers_whole_clips(annotations, tmp_path):
    table = recording_level(annotations).assign(fold=0)  # oof.csv's fold column is accepted
    teacher = load_teacher(write(table, tmp_path / "oof.csv"), annotations, FPS)
    assert set(teacher.train) == set(annotations.tp.recording)
    assert set(teacher.test) == set(annotations.test_ids)
    rid = table.recording_id[3]
    windows = teacher.train[rid]
    assert windows.start.tolist() == [0] and windows.end.tolist() == [WHOLE_CLIP]
    expected = table.set_index("recording_id").loc[rid, species(annotations)].to_numpy(np.float32)
    np.testing.assert_array_equal(windows.probabilities[0], expected)
    np.testing.assert_array_equal(windows.crop_probabilities(start=300, width=128), expected)  # any crop


def test_a_window_level_teacher_keeps_its_windows_in_frames(annotations, tmp_path):
    rid, columns = annotations.test_ids[0], species(annotations)
    first, second = np.full(len(columns), 0.1), np.full(len(columns), 0.1)
    first[1], second[2] = 0.9, 0.8
    table = pd.DataFrame([[rid, 0.0, 2.048, *first], [rid, 1.024, 3.072, *second]],
                         columns=["recording_id", "t_min", "t_max", *columns])
    windows = load_teacher(write(table, tmp_path / "windows.csv"), annotations, FPS).test[rid]
    assert windows.start.tolist() == [0, 64] and windows.end.tolist() == [128, 192]
    # A window counts for a crop it covers by half of the crop or of itself, not by a touch.
    np.testing.assert_allclose(windows.crop_probabilities(0, 100), first)  # the second only touches it
    np.testing.assert_allclose(windows.crop_probabilities(64, 128), np.maximum(first, second))
    assert windows.crop_probabilities(300, 128) is None


BAD = {
    "no recording_id": (lambda t, a: t.drop(columns=["recording_id"]), "no recording_id column"),
    "a species short": (lambda t, a: t.drop(columns=[f"s{a.n_species - 1}"]),
                        "species columns s0..s4, the data have 6 species (s0..s5)"),
    "an unknown column": (lambda t, a: t.assign(score=1.0), "unexpected column 'score'"),
    "t_min alone": (lambda t, a: t.assign(t_min=0.0), "window-level predictions need both t_min and t_max"),
    "above 1": (lambda t, a: t.assign(s2=[1.5] + list(t.s2[1:])), "probabilities must be in [0, 1]; s2 of"),
    "below 0": (lambda t, a: t.assign(s0=[-0.1] + list(t.s0[1:])), "is -0.1"),
    "missing": (lambda t, a: t.assign(s1=[np.nan] + list(t.s1[1:])), "is missing"),
    "not a number": (lambda t, a: t.assign(s3=["high"] + list(t.s3[1:])), "is 'high'"),
    "an unknown recording": (lambda t, a: t.assign(recording_id=["nope"] + list(t.recording_id[1:])),
                             "1 recording ids are neither train nor test recordings of the data (first: nope)"),
    "a recording twice": (lambda t, a: pd.concat([t, t.iloc[:1]]), "appears twice; window-level predictions"),
    "an empty window": (lambda t, a: t.assign(t_min=2.0, t_max=2.0), "needs 0 <= t_min < t_max, got 2..2"),
    "no rows": (lambda t, a: t.iloc[:0], "no rows"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_teacher_is_one_line_naming_the_problem(case, annotations, tmp_path):
    breaker, message = BAD[case]
    path = write(breaker(recording_level(annotations), annotations), tmp_path / "teacher.csv")
    with pytest.raises(TeacherError) as error:
        load_teacher(path, annotations, FPS)
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text


def test_a_missing_or_unreadable_teacher_is_one_line(annotations, tmp_path):
    for path in (tmp_path / "absent.csv", write(pd.DataFrame(), tmp_path / "empty.csv")):
        with pytest.raises(TeacherError, match="cannot read it"):
            load_teacher(path, annotations, FPS)


def window_level(annotations, recordings: list[str], width: float, count: int, seed: int) -> pd.DataFrame:
    """A windows.csv teacher: `count` windows `width` seconds wide every 1.024 s of each recording."""
    rows = [(rid, i * 1.024, i * 1.024 + width) for rid in recordings for i in range(count)]
    probabilities = np.random.default_rng(seed).uniform(size=(len(rows), annotations.n_species))
    return pd.concat([pd.DataFrame(rows, columns=["recording_id", "t_min", "t_max"]),
                      pd.DataFrame(probabilities, columns=species(annotations))], axis=1)


def probabilities_of(table: pd.DataFrame, rid: str, annotations) -> np.ndarray:
    """(W, C) float32: a teacher table's rows of one recording, as the teacher reads them."""
    return table[table.recording_id == rid][species(annotations)].to_numpy(np.float32)


def train_and_test(annotations) -> list[str]:
    return [sorted(set(annotations.tp.recording))[0], annotations.test_ids[0]]


def test_one_teacher_file_is_load_teachers_result(annotations, tmp_path):
    path = write(window_level(annotations, train_and_test(annotations), 2.048, 5, seed=1), tmp_path / "w.csv")
    mine, theirs = load_teachers([path], annotations, FPS), load_teacher(path, annotations, FPS)
    for split in ("train", "test"):
        assert list(getattr(mine, split)) == list(getattr(theirs, split))
        for rid, windows in getattr(theirs, split).items():
            for field in ("start", "end", "probabilities"):
                np.testing.assert_array_equal(getattr(getattr(mine, split)[rid], field), getattr(windows, field))


def test_teachers_on_the_same_windows_average_window_by_window(annotations, tmp_path):
    recordings = train_and_test(annotations)
    # Overlapping windows: a neighbour covers half of each window, and must still not count.
    first, second = (window_level(annotations, recordings, 2.048, 5, seed) for seed in (1, 2))
    teacher = load_teachers([write(first, tmp_path / "a.csv"), write(second, tmp_path / "b.csv")], annotations, FPS)
    for rid, windows in ((recordings[0], teacher.train[recordings[0]]), (recordings[1], teacher.test[recordings[1]])):
        assert windows.start.tolist() == [0, 64, 128, 192, 256] and windows.end.tolist() == [128, 192, 256, 320, 384]
        expected = (probabilities_of(first, rid, annotations) + probabilities_of(second, rid, annotations)) / 2
        np.testing.assert_allclose(windows.probabilities, expected, rtol=1e-6)
        assert windows.probabilities.dtype == np.float32
    # The combined teacher answers as one: its test positives are those of the mean.
    means = teacher.test[recordings[1]].probabilities
    assert teacher.positive_test_ids(float(means.max())) == [recordings[1]]
    assert teacher.positive_test_ids(float(means.max()) + 1e-3) == []


def test_a_teacher_on_other_windows_is_seen_on_the_first_ones_by_the_covering_rule(annotations, tmp_path):
    rid = annotations.test_ids[0]
    wide = window_level(annotations, [rid], 2.048, 3, seed=1)  # frames [0, 128), [64, 192), [128, 256)
    narrow = window_level(annotations, [rid], 1.024, 4, seed=2)  # frames [0, 64), [64, 128), [128, 192), [192, 256)
    paths = [write(wide, tmp_path / "wide.csv"), write(narrow, tmp_path / "narrow.csv")]
    windows = load_teachers(paths, annotations, FPS).test[rid]
    assert windows.start.tolist() == [0, 64, 128] and windows.end.tolist() == [128, 192, 256]  # the first's
    mine, theirs = probabilities_of(wide, rid, annotations), probabilities_of(narrow, rid, annotations)
    # Each wide window is covered by the two narrow windows inside it, not by those touching it.
    seen = np.stack([theirs[0:2].max(axis=0), theirs[1:3].max(axis=0), theirs[2:4].max(axis=0)])
    np.testing.assert_allclose(windows.probabilities, (mine + seen) / 2, rtol=1e-6)
    # The other order: each narrow window is covered by the wide windows covering half of it.
    windows = load_teachers(paths[::-1], annotations, FPS).test[rid]
    assert windows.start.tolist() == [0, 64, 128, 192]
    seen = np.stack([mine[0], mine[0:2].max(axis=0), mine[1:3].max(axis=0), mine[2]])
    np.testing.assert_allclose(windows.probabilities, (theirs + seen) / 2, rtol=1e-6)


def test_a_recording_or_window_one_file_lacks_is_the_others_alone(annotations, tmp_path):
    shared, only_second = annotations.test_ids[:2]
    first = window_level(annotations, [shared], 2.048, 5, seed=1)  # up to frame 384
    second = window_level(annotations, [shared, only_second], 1.024, 2, seed=2)  # up to frame 128 only
    paths = [write(first, tmp_path / "a.csv"), write(second, tmp_path / "b.csv")]
    teacher = load_teachers(paths, annotations, FPS)
    assert sorted(teacher.test) == sorted([shared, only_second])
    alone = teacher.test[only_second]  # the second's own windows and values
    assert alone.start.tolist() == [0, 64] and alone.end.tolist() == [64, 128]
    np.testing.assert_array_equal(alone.probabilities, probabilities_of(second, only_second, annotations))
    windows, mine = teacher.test[shared], probabilities_of(first, shared, annotations)
    theirs = probabilities_of(second, shared, annotations)
    np.testing.assert_allclose(windows.probabilities[0], (mine[0] + theirs.max(axis=0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(windows.probabilities[1], (mine[1] + theirs[1]) / 2, rtol=1e-6)  # [64, 192): half
    np.testing.assert_array_equal(windows.probabilities[2:], mine[2:])  # from frame 128: the second says nothing


def test_a_recording_level_teacher_and_a_window_level_one(annotations, tmp_path):
    clips = recording_level(annotations)
    rid = annotations.test_ids[0]
    windows_table = window_level(annotations, [rid], 2.048, 5, seed=1)
    paths = [write(clips, tmp_path / "submission.csv"), write(windows_table, tmp_path / "windows.csv")]
    clip = clips.set_index("recording_id").loc[rid, species(annotations)].to_numpy(np.float32)
    mine = probabilities_of(windows_table, rid, annotations)
    # Window-level first: the recording-level row covers every window.
    windows = load_teachers(paths[::-1], annotations, FPS).test[rid]
    assert windows.start.tolist() == [0, 64, 128, 192, 256]
    np.testing.assert_allclose(windows.probabilities, (mine + clip) / 2, rtol=1e-6)
    # Recording-level first: its one whole-clip window, seen by the other as the max of all its windows.
    teacher = load_teachers(paths, annotations, FPS)
    windows = teacher.test[rid]
    assert windows.start.tolist() == [0] and windows.end.tolist() == [WHOLE_CLIP]
    np.testing.assert_allclose(windows.probabilities[0], (clip + mine.max(axis=0)) / 2, rtol=1e-6)
    other = annotations.test_ids[1]  # only in the recording-level file
    np.testing.assert_array_equal(teacher.test[other].probabilities[0],
                                  clips.set_index("recording_id").loc[other, species(annotations)].to_numpy(np.float32))
    assert set(teacher.train) == set(annotations.tp.recording)


def test_a_teacher_given_twice_or_none_is_refused(annotations, tmp_path):
    path = write(recording_level(annotations), tmp_path / "oof.csv")
    other = write(recording_level(annotations), tmp_path / "other.csv")
    with pytest.raises(TeacherError, match=f"^teacher {tmp_path / 'sub' / '..' / 'oof.csv'} given twice$"):
        load_teachers([path, other, tmp_path / "sub" / ".." / "oof.csv"], annotations, FPS)
    with pytest.raises(TeacherError, match="^no teacher file given$"):
        load_teachers([], annotations, FPS)


def test_a_bad_second_teacher_is_refused_naming_it(annotations, tmp_path):
    good = write(recording_level(annotations), tmp_path / "good.csv")
    bad = write(recording_level(annotations).assign(s2=1.5), tmp_path / "bad.csv")
    with pytest.raises(TeacherError) as error:
        load_teachers([good, bad], annotations, FPS)
    assert str(error.value).startswith(f"teacher {bad}: probabilities must be in [0, 1]")
