"""Teacher files for stage 3: both layouts read into frames, and every bad file refused with
one line that names the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainable.annotations import load_annotations
from trainable.teacher import WHOLE_CLIP, TeacherError, load_teacher

FPS = 62.5


@pytest.fixture(scope="module")
def annotations(cached_dir):
    return load_annotations(cached_dir)


def species(annotations) -> list[str]:
    return [f"s{i}" for i in range(annotations.n_species)]


def recording_level(annotations) -> pd.DataFrame:
    """An oof.csv + submission.csv teacher: every tp and test recording once."""
    ids = sorted(set(annotations.tp.recording_id)) + list(annotations.test_ids)
    probabilities = np.random.default_rng(0).uniform(size=(len(ids), annotations.n_species))
    return pd.DataFrame(probabilities, columns=species(annotations)).assign(recording_id=ids)[
        ["recording_id", *species(annotations)]]


def write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def test_a_recording_level_teacher_covers_whole_clips(annotations, tmp_path):
    table = recording_level(annotations).assign(fold=0)  # oof.csv's fold column is accepted
    teacher = load_teacher(write(table, tmp_path / "oof.csv"), annotations, FPS)
    assert set(teacher.train) == set(annotations.tp.recording_id)
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
