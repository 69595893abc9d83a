"""A teacher's predictions, read for stage 3 (relabelling with a teacher).

Two layouts, both as `search/export.py` writes them:

    recording-level   recording_id[,fold],s0..sK-1     oof.csv, submission.csv: one row per
                                                        recording, covering the whole clip
    window-level      recording_id,t_min,t_max,s0..    windows.csv: one row per window (seconds)

Rows may cover train recordings (train_tp or train_fp) and test recordings; a test recording
with a teacher positive becomes a training recording of stage 3 (classic pseudo-labelling).
Everything about the file is checked on load, so a bad teacher fails before a search starts.
Several files make one teacher, their mean (`load_teachers`: the reference's stage 3 averages
several models' window probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainable.data.annotations import Annotations

TIME_COLUMNS = ("t_min", "t_max")
OPTIONAL_COLUMNS = ("fold",)  # oof.csv's fold: which model predicted the row; not needed here
WHOLE_CLIP = np.iinfo(np.int64).max // 4  # end frame of a recording-level row: past any clip's end


class TeacherError(ValueError):
    """A teacher file that cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True)
class TeacherWindows:
    """The teacher's windows of one recording."""

    start: np.ndarray  # (W,) int64, first frame
    end: np.ndarray  # (W,) int64, one past the last frame; WHOLE_CLIP for a recording-level row
    probabilities: np.ndarray  # (W, C) float32 in [0, 1]

    def crop_probabilities(self, start: int, width: int) -> np.ndarray | None:
        """The teacher's view of a crop: per species, the max over the windows that cover at
        least half of the crop or half of themselves (a window touching the crop's edge says
        nothing about the crop).

        Returns:
            (C,) float32, or None when no window covers the crop.
        """
        covered = covering(self.start, self.end, start, width)  # (W,)
        if not covered.any():
            return None
        return self.probabilities[covered].max(axis=0)


def covering(starts: np.ndarray, ends: np.ndarray, start, width) -> np.ndarray:
    """Which windows [starts, ends) cover the crops [start, start + width): those that overlap a
    crop by at least half of the crop or half of themselves. Any unit of time; the arguments
    broadcast (windows along the last axis, crops along the first: a (crops, windows) mask)."""
    overlap = np.minimum(ends, start + width) - np.maximum(starts, start)
    return (overlap > 0) & (overlap * 2 >= np.minimum(ends - starts, width))


@dataclass(frozen=True)
class Teacher:
    """Per recording, the windows the teacher predicted."""

    train: dict[str, TeacherWindows]  # train_tp / train_fp recordings
    test: dict[str, TeacherWindows]  # test recordings

    def positive_test_ids(self, threshold: float) -> list[str]:
        """Test recordings with at least one species at or above `threshold`, sorted."""
        return sorted(rid for rid, w in self.test.items() if (w.probabilities >= threshold).any())


def load_teacher(path: Path, annotations: Annotations, frames_per_second: float) -> Teacher:
    """Read and check a teacher file against the data it will relabel.

    Raises:
        TeacherError: unreadable; columns other than the layouts above or another species
            count; a probability outside [0, 1] or missing; bad window times; a recording id
            that is neither a train nor a test recording; a recording twice in a
            recording-level file.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"recording_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise TeacherError(f"teacher {path}: cannot read it ({str(error).splitlines()[0]})") from None
    species = [f"s{i}" for i in range(annotations.n_species)]
    _check_columns(path, list(table.columns), species)
    if table.empty:
        raise TeacherError(f"teacher {path}: no rows")
    probabilities = _probabilities(path, table, species)
    starts, ends = _window_frames(path, table, frames_per_second)
    train_ids = set(annotations.tp.recording) | set(annotations.fp.recording)
    test_ids = set(annotations.test_ids)
    unknown = sorted(set(table.recording_id) - train_ids - test_ids)
    if unknown:
        raise TeacherError(f"teacher {path}: {len(unknown)} recording ids are neither train nor test recordings"
                           f" of the data (first: {unknown[0]})")
    groups = pd.Series(np.arange(len(table))).groupby(table.recording_id.to_numpy()).indices
    windows = {rid: TeacherWindows(starts[rows], ends[rows], probabilities[rows]) for rid, rows in groups.items()}
    return Teacher(train={rid: w for rid, w in windows.items() if rid in train_ids},
                   test={rid: w for rid, w in windows.items() if rid in test_ids and rid not in train_ids})


def load_teachers(paths: Sequence[Path], annotations: Annotations, frames_per_second: float) -> Teacher:
    """One teacher, the mean of several files', each read and checked by `load_teacher`.

    Each recording keeps the windows of the first file (in the order given) that has it. The
    probabilities of each of those windows are the mean, over the files that have the
    recording, of each file's view of the window:
      - the first file's own window is itself, and so is another file's window of exactly
        the same start and end (files on the same windows average window by window);
      - otherwise the covering rule of `TeacherWindows.crop_probabilities`: the max over the
        file's windows covering at least half of the window or half of themselves (a
        recording-level row covers every window);
      - a recording-level window (the first file is recording-level: one window, the whole
        clip) is seen whole: the max over all the other file's windows of the recording;
      - a file with no window covering it is left out of that window's mean.
    Thresholds are the caller's: this only averages probabilities.

    Args:
        paths: teacher files, at least one, each once; one file gives `load_teacher`'s result.

    Raises:
        TeacherError: no file; a file given twice; any of `load_teacher`'s errors, naming the file.
    """
    paths = [Path(path) for path in paths]
    if not paths:
        raise TeacherError("no teacher file given")
    seen: set[Path] = set()
    for path in paths:  # before reading any: a repeated file would silently weigh twice
        if path.resolve() in seen:
            raise TeacherError(f"teacher {path} given twice")
        seen.add(path.resolve())
    teachers = [load_teacher(path, annotations, frames_per_second) for path in paths]
    if len(teachers) == 1:
        return teachers[0]
    return Teacher(train=_mean_recordings([teacher.train for teacher in teachers]),
                   test=_mean_recordings([teacher.test for teacher in teachers]))


def _mean_recordings(files: list[dict[str, TeacherWindows]]) -> dict[str, TeacherWindows]:
    """Per recording of any file, the mean of the files that have it on the first one's windows."""
    recordings = sorted(set().union(*files))
    return {rid: _mean_windows([file[rid] for file in files if rid in file]) for rid in recordings}


def _mean_windows(views: list[TeacherWindows]) -> TeacherWindows:
    """The first file's windows of a recording, each the mean of the files' views of it (see
    `load_teachers`)."""
    base = views[0]
    total = base.probabilities.astype(np.float64)  # (W, C)
    count = np.ones((len(base.start), 1))  # (W, 1): the files that see each window
    for other in views[1:]:
        seen, covered = _view(other, base.start, base.end)
        total[covered] += seen[covered]
        count[covered] += 1
    return TeacherWindows(base.start, base.end, (total / count).astype(np.float32))


def _view(windows: TeacherWindows, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A file's view of windows [starts, ends) (W,) of a recording.

    Returns:
        (W, C) float64 probabilities (0 where not covered) and (W,) bool: which windows it covers.
    """
    whole = ends == WHOLE_CLIP  # (W,)
    widths = np.where(whole, 1, ends - starts)[:, None]  # a whole-clip window is masked below, any width
    mask = covering(windows.start, windows.end, starts[:, None], widths)  # (W, V) of the file's V windows
    mask[whole] = True  # seen whole: every window of the recording
    same = (windows.start == starts[:, None]) & (windows.end == ends[:, None])  # (W, V)
    exact = same.any(axis=1)
    mask[exact] = same[exact]  # a window the file has itself is seen as itself, not with its neighbours
    masked = np.where(mask[:, :, None], windows.probabilities[None].astype(np.float64), -np.inf)  # (W, V, C)
    covered = mask.any(axis=1)
    assert isinstance(covered, np.ndarray)  # (W,): any over axis 1 of the 2-D mask is never a scalar
    return np.where(covered[:, None], masked.max(axis=1), 0.0), covered


def _check_columns(path: Path, columns: list[str], species: list[str]) -> None:
    if "recording_id" not in columns:
        raise TeacherError(f"teacher {path}: no recording_id column (expected recording_id[,t_min,t_max],"
                           f"{species[0]}..{species[-1]})")
    given = [c for c in columns if c.startswith("s") and c[1:].isdigit()]
    if given != species:
        raise TeacherError(f"teacher {path}: species columns {_span(given)}, the data have {len(species)} species"
                           f" ({_span(species)})")
    other = [c for c in columns if c not in ("recording_id", *TIME_COLUMNS, *OPTIONAL_COLUMNS, *species)]
    if other:
        raise TeacherError(f"teacher {path}: unexpected column {other[0]!r}")
    if sum(c in columns for c in TIME_COLUMNS) == 1:
        raise TeacherError(f"teacher {path}: window-level predictions need both t_min and t_max")


def _span(columns: list[str]) -> str:
    return "none" if not columns else columns[0] if len(columns) == 1 else f"{columns[0]}..{columns[-1]}"


def _probabilities(path: Path, table: pd.DataFrame, species: list[str]) -> np.ndarray:
    values = table[species].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)  # (N, C)
    bad = ~((values >= 0) & (values <= 1))  # NaN (missing or not a number) is bad too
    if bad.any():
        row, column = np.argwhere(bad)[0]
        value = table[species[column]].iloc[row]
        shown = "missing" if pd.isna(value) else repr(value) if isinstance(value, str) else f"{float(value):g}"
        raise TeacherError(f"teacher {path}: probabilities must be in [0, 1]; {species[column]} of"
                           f" {table.recording_id.iloc[row]} is {shown}")
    return values.astype(np.float32)


def _window_frames(path: Path, table: pd.DataFrame, frames_per_second: float) -> tuple[np.ndarray, np.ndarray]:
    """(N,) start and end frames of each row; a recording-level row spans the whole clip."""
    if "t_min" not in table.columns:
        repeated = table.recording_id[table.recording_id.duplicated()]
        if len(repeated):
            raise TeacherError(f"teacher {path}: recording {repeated.iloc[0]} appears twice; window-level"
                               f" predictions need t_min,t_max columns")
        return np.zeros(len(table), np.int64), np.full(len(table), WHOLE_CLIP, np.int64)
    times = table[list(TIME_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)  # (N, 2)
    bad = ~((times[:, 0] >= 0) & (times[:, 1] > times[:, 0]))
    if bad.any():
        row = int(np.argmax(bad))
        raise TeacherError(f"teacher {path}: window of {table.recording_id.iloc[row]} needs 0 <= t_min < t_max,"
                           f" got {times[row, 0]:g}..{times[row, 1]:g}")
    start = np.floor(times[:, 0] * frames_per_second).astype(np.int64)
    end = np.maximum(np.round(times[:, 1] * frames_per_second).astype(np.int64), start + 1)
    return start, end
