"""The RFCx layout (Rainforest Connection Species Audio Detection), behind trainable.data.layouts'
interface; the only module that knows its files and their columns:

    train_tp.csv, train_fp.csv   recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max (s, Hz)
    sample_submission.csv        recording_id,s0,...,sK-1: the test recordings, the species count
    train/<id>.flac, test/<id>.flac

Every problem is reported as one line naming the file, the line (as an editor numbers
it: the header is line 1) and what is wrong, so a user can fix the CSV at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from trainable.atomic import atomic_write_text
from trainable.data.annotations import EVENT_COLUMNS, AnnotationError
from trainable.metrics import lwlrap

TP_FILE = "train_tp.csv"
FP_FILE = "train_fp.csv"
SUBMISSION_FILE = "sample_submission.csv"
ANNOTATION_COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
NUMERIC_COLUMNS = ANNOTATION_COLUMNS[1:]
DEFAULT_N_SPECIES = 24  # RFCx: 24 frog and bird species
AUDIO_SUFFIX = ".flac"
DURATION_TOLERANCE = 1e-3  # seconds; annotations are rounded, audio lengths are exact
NEUTRAL = {"recording_id": "recording", "species_id": "species", "t_min": "start_s", "t_max": "end_s"}


@dataclass(frozen=True)
class RFCxFiles:
    """The validated RFCx files of one data directory, in their own columns.

    Attributes:
        tp: train_tp rows (columns ANNOTATION_COLUMNS, plus `line`: the CSV line number).
        fp: train_fp rows, same columns.
        test_ids: recording ids of sample_submission.csv (empty when the file is absent).
        n_species: number of species; species ids are in [0, n_species).
    """

    tp: pd.DataFrame
    fp: pd.DataFrame
    test_ids: tuple[str, ...]
    n_species: int


class RFCx:
    """The RFCx layout: trainable.data.layouts.Dataset."""

    def species_count(self, data_dir: Path) -> int:
        """The submission's s0..sK-1 columns, or 24 without a submission file."""
        return submission_of(data_dir)[1] or DEFAULT_N_SPECIES

    def events(self, data_dir: Path) -> pd.DataFrame:
        """train_tp.csv and train_fp.csv, validated, as events (EVENT_COLUMNS; kind tp / fp)."""
        files = read_files(data_dir)
        return pd.concat([to_events(files.tp, "tp"), to_events(files.fp, "fp")], ignore_index=True)

    def recordings(self, data_dir: Path, split: str) -> list[str]:
        """Every recording with audio in DATA/<split>/, sorted."""
        return sorted(path.name[: -len(AUDIO_SUFFIX)] for path in (Path(data_dir) / split).glob(f"*{AUDIO_SUFFIX}"))

    def submission_recordings(self, data_dir: Path) -> list[str]:
        """sample_submission.csv's recordings, in its order ([] without the file)."""
        return list(submission_of(data_dir)[0])

    def audio_path(self, data_dir: Path, split: str, recording: str) -> Path:
        """Where the audio of a recording lives: DATA/train/<id>.flac or DATA/test/<id>.flac."""
        return audio_path(data_dir, split, recording)

    def validate(self, data_dir: Path) -> None:
        """The annotations, then every annotated and every submitted recording's audio header."""
        check_audio(read_files(data_dir), data_dir)

    def warnings(self, data_dir: Path) -> list[str]:
        """Rows of train_tp.csv or train_fp.csv that repeat an earlier row exactly (`copied_rows`)."""
        files = read_files(data_dir)
        found = [copied_rows(Path(data_dir) / name, rows) for name, rows in ((TP_FILE, files.tp), (FP_FILE, files.fp))]
        return [line for line in found if line is not None]

    def write_submission(self, data_dir: Path, path: Path, recordings: list[str], scores: np.ndarray) -> pd.DataFrame:
        """recording_id,s0..sK-1 in sample_submission.csv's row order, written atomically.

        Args:
            recordings: (T,) test recordings, any order; every submission row must be among them.
            scores: (T, K) their scores.

        Raises:
            AnnotationError: no sample_submission.csv, other species, or a recording of it without scores.
        """
        sample = Path(data_dir) / SUBMISSION_FILE
        if not sample.is_file():
            raise AnnotationError(f"{SUBMISSION_FILE}: not found in {data_dir}: no submission to write")
        order, n_species = _read_submission(sample)
        if scores.shape[1] != n_species:
            raise AnnotationError(f"{SUBMISSION_FILE} has {n_species} species columns, the scores {scores.shape[1]}")
        table = pd.DataFrame(scores, columns=species_columns(scores.shape[1]), index=list(recordings))
        missing = [rid for rid in order if rid not in table.index]
        if missing:
            raise AnnotationError(f"{SUBMISSION_FILE}: test recording {missing[0]!r} has no scores"
                                  f" ({len(missing)} of {len(order)} missing)")
        table = table.loc[list(order)].rename_axis("recording_id").reset_index()
        atomic_write_text(Path(path), table.to_csv(index=False))
        return table

    def metric(self, truth: np.ndarray, scores: np.ndarray) -> float:
        """The competition's metric: LWLRAP."""
        return lwlrap(truth, scores)


def species_columns(n_species: int) -> list[str]:
    """The submission's species columns: s0..sK-1."""
    return [f"s{i}" for i in range(n_species)]


def to_events(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """RFCx rows (ANNOTATION_COLUMNS) as events (EVENT_COLUMNS)."""
    return frame.rename(columns=NEUTRAL).assign(kind=kind)[list(EVENT_COLUMNS)]


def read_files(data_dir: Path, n_species: int | None = None) -> RFCxFiles:
    """Read and validate train_tp.csv, train_fp.csv and (if present) sample_submission.csv.

    Args:
        data_dir: an RFCx-layout data directory.
        n_species: number of species; by default taken from the submission's s0..sK-1
            columns, or 24 (RFCx) when there is no submission file.

    Raises:
        AnnotationError: one line naming the file, the line and the problem.
    """
    data_dir = Path(data_dir)
    test_ids, submission_species = submission_of(data_dir)
    # Where the count comes from, for a species_id outside it: the CSV's line is not always the culprit.
    counted = ""
    if not n_species:
        counted = (f"{SUBMISSION_FILE} has {submission_species} species columns, s0..s{submission_species - 1}"
                   if submission_species else f"RFCx's {DEFAULT_N_SPECIES} species (no {SUBMISSION_FILE} to"
                   f" count them from)")
    n_species = n_species or submission_species or DEFAULT_N_SPECIES
    tp = _read_annotation_file(data_dir / TP_FILE, n_species, counted)
    fp = _read_annotation_file(data_dir / FP_FILE, n_species, counted)
    return RFCxFiles(tp=tp, fp=fp, test_ids=test_ids, n_species=n_species)


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV as strings, keeping the editor line number of each row in `line`."""
    if not path.is_file():
        raise AnnotationError(f"{path.name}: not found in {path.parent}")
    try:
        # Blank lines are kept (then dropped) so that `line` matches what an editor shows. The
        # header is read as a row: with header=0, a first data row with one field more than the
        # header made pandas take the first column as the index and shift every column.
        frame = pd.read_csv(path, dtype=str, header=None, skip_blank_lines=False, keep_default_na=False)
    except pd.errors.ParserError as error:
        raise AnnotationError(f"{path.name}{_parser_problem(error)}") from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path.name}: cannot be parsed as CSV ({_first_line(error)})") from None
    frame.columns = [str(c).strip() for c in frame.iloc[0]]
    frame = frame.iloc[1:].reset_index(drop=True)
    frame.insert(0, "line", np.arange(2, len(frame) + 2))
    blank = (frame.drop(columns="line") == "").all(axis=1)
    return frame[~blank].reset_index(drop=True)


def _read_annotation_file(path: Path, n_species: int, counted: str = "") -> pd.DataFrame:
    """One annotation file, validated; `counted`: where `n_species` comes from, said beside a
    species_id outside it."""
    frame = _read_csv(path)
    missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
    if missing:
        raise AnnotationError(f"{path.name} line 1: missing column {', '.join(missing)}"
                              f" (expected {','.join(ANNOTATION_COLUMNS)})")
    frame = frame[["line", *ANNOTATION_COLUMNS]].copy()
    frame["recording_id"] = frame["recording_id"].str.strip()
    _fail_where(path, frame, frame.recording_id == "", "recording_id is empty")
    for column in NUMERIC_COLUMNS:
        raw = frame[column]
        frame[column] = pd.to_numeric(raw.str.strip(), errors="coerce")
        bad = frame[column].isna() | ~np.isfinite(frame[column])
        _fail_where(path, frame, bad, f"{column} is not a number", values=raw)
    species = frame.species_id
    _fail_where(path, frame, species != species.round(), "species_id is not an integer", values=species)
    _fail_where(path, frame, (species < 0) | (species >= n_species),
                f"species_id outside [0, {n_species})", values=species, note=counted)
    frame["species_id"] = species.astype(int)
    frame["songtype_id"] = frame.songtype_id.astype(int)
    _fail_where(path, frame, frame.t_min < 0, "t_min is before the clip start (< 0 s)", values=frame.t_min)
    _fail_where(path, frame, frame.t_min >= frame.t_max, "t_min >= t_max",
                values=frame.t_min.astype(str) + " >= " + frame.t_max.astype(str))
    return frame


# What a copy of a row changes, by file: every reader counts rows, not distinct events.
COPY_CHANGES = {TP_FILE: "the fold labels, the class weights and the crops",
                FP_FILE: "which fp event the negative crops are centred on"}
COPIES_SHOWN = 5  # line numbers a duplicate-row message lists


def copied_rows(path: Path, frame: pd.DataFrame) -> str | None:
    """One line on the rows of an annotation file that repeat an earlier row exactly (every
    column, numbers as numbers), or None: a pasting or merging mistake that weighs its event
    twice. Kept, not dropped nor refused: the reference read every row, so its folds and CV come
    from the file as it is (whether the competition's own files hold copies is not known here)."""
    copies = frame.duplicated(list(ANNOTATION_COLUMNS), keep="first")
    if not copies.any():
        return None
    copy = frame[copies].iloc[0]
    original = frame[(frame[list(ANNOTATION_COLUMNS)] == copy[list(ANNOTATION_COLUMNS)]).all(axis=1)].iloc[0]
    lines = [str(line) for line in frame.line[copies]]
    many = len(lines) > 1
    listed = f"{', '.join(lines[:COPIES_SHOWN])}{', ...' if len(lines) > COPIES_SHOWN else ''}"
    changes = COPY_CHANGES.get(path.name, "how often its event is read")
    return (f"{path.name} line {copy.line} repeats line {original.line} exactly (recording {copy.recording_id!r},"
            f" species {copy.species_id}, {copy.t_min:g}-{copy.t_max:g} s) [{len(lines)} copied"
            f" line{'s' if many else ''}: {listed}]: kept, as the reference read them; a copy changes {changes},"
            f" so remove {'them' if many else 'it'} if {'they are' if many else 'it is'} a mistake")


def _fail_where(path: Path, frame: pd.DataFrame, bad: pd.Series, problem: str,
                values: pd.Series | None = None, note: str = "") -> None:
    """Raise one line for the first bad row, counting the others; `note` ends the line."""
    if not bad.any():
        return
    rows = frame[bad.to_numpy()]
    first = rows.iloc[0]
    shown = f" ({values[bad].iloc[0]})" if values is not None else ""
    more = f" [and {len(rows) - 1} more line(s) like it]" if len(rows) > 1 else ""
    raise AnnotationError(f"{path.name} line {first.line}: {problem}{shown}"
                          f" in recording {first.recording_id!r}{more}{'; ' + note if note else ''}")


def submission_of(data_dir: Path) -> tuple[tuple[str, ...], int | None]:
    """sample_submission.csv's recording ids and species count; ((), None) without the file."""
    path = Path(data_dir) / SUBMISSION_FILE
    return _read_submission(path) if path.exists() else ((), None)


def _read_submission(path: Path) -> tuple[tuple[str, ...], int]:
    """Return the test recording ids and the number of species columns (s0..sK-1)."""
    frame = _read_csv(path)
    if "recording_id" not in frame.columns:
        raise AnnotationError(f"{path.name} line 1: missing column recording_id")
    columns = [c for c in frame.columns if c not in ("line", "recording_id")]
    if not columns or columns != species_columns(len(columns)):
        raise AnnotationError(f"{path.name} line 1: species columns must be s0..sK-1 in order,"
                              f" got {','.join(columns) or 'none'}")
    ids = frame.recording_id.str.strip()
    _fail_where(path, frame.assign(recording_id=ids), ids == "", "recording_id is empty")
    _fail_where(path, frame.assign(recording_id=ids), ids.duplicated(), "duplicate recording_id")
    return tuple(ids), len(columns)


def audio_path(data_dir: Path, split: str, recording_id: str) -> Path:
    """Where the audio of a recording lives: DATA/train/<id>.flac or DATA/test/<id>.flac."""
    return Path(data_dir) / split / f"{recording_id}{AUDIO_SUFFIX}"


def check_audio(files: RFCxFiles, data_dir: Path) -> None:
    """Check that every annotated recording has audio and every time lies inside its clip.

    Reads only the audio headers. A file whose header cannot be read is left to the
    cache build, which names it and carries on with the others.

    Raises:
        AnnotationError: one line naming the file, the line and the problem.
    """
    for name, frame in ((TP_FILE, files.tp), (FP_FILE, files.fp)):
        durations = {rid: _duration(audio_path(data_dir, "train", rid), name, frame, rid)
                     for rid in frame.recording_id.unique()}
        duration = frame.recording_id.map(durations).astype(float)
        outside = frame.t_max > duration + DURATION_TOLERANCE
        _fail_where(Path(name), frame, outside, "t_max is after the clip end",
                    values=frame.t_max.astype(str) + " s > " + duration.astype(str) + " s")
    for rid in files.test_ids:
        path = audio_path(data_dir, "test", rid)
        if not path.is_file():
            raise AnnotationError(f"{SUBMISSION_FILE}: test recording {rid!r} has no audio file {path}")


def _duration(path: Path, file_name: str, frame: pd.DataFrame, recording_id: str) -> float:
    if not path.is_file():
        line = frame.line[frame.recording_id == recording_id].iloc[0]
        raise AnnotationError(f"{file_name} line {line}: recording {recording_id!r} has no audio file {path}")
    try:
        return sf.info(str(path)).duration
    except (sf.LibsndfileError, RuntimeError):
        return float("inf")  # unreadable: reported by the cache build, not here


def _parser_problem(error: Exception) -> str:
    """" line N: M fields, the header has K" from pandas' "Expected K fields in line N, saw M"."""
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
    if found is None:
        return f": cannot be parsed as CSV ({_first_line(error)})"
    header, line, fields = found.groups()
    return f" line {line}: {fields} fields, the header has {header} (a comma too many?)"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
