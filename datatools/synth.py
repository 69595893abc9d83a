"""Synthetic RFCx-layout dataset with a hidden test truth.

Writes train/*.flac, test/*.flac, train_tp.csv, train_fp.csv and sample_submission.csv (the
real layout) plus test_truth.csv (what the competition kept hidden), so a search runs end to
end on a laptop. Each species has its own call shape in its own band; an fp row is a decoy:
a call in that species' band with another shape. The annotations follow the real statistics:
events 0.27-7.9 s (median 1.9 s), 94-13,700 Hz, 1-3 species per recording, some recordings in
both tp and fp, and a few unannotated calls as label noise.

    python -m datatools.synth OUT --recordings 40 --test-recordings 10 --duration 10
"""

# Aliased: this module's public `annotations` function would otherwise rebind the feature's name.
from __future__ import annotations as _future_annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from datatools.synth_audio import DECOYS, CallSpec, Rng, background, make_species, synth_call
from trainable.atomic import atomic_write, atomic_write_text, remove_partial_files
from trainable.data.layouts.rfcx import ANNOTATION_COLUMNS, FP_FILE, SUBMISSION_FILE, TP_FILE, species_columns

Jobs = list[list[tuple[int, str]]]  # per recording: (species, role) of each of its events

EVENT_MEDIAN_S, EVENT_SIGMA = 1.9, 0.6  # lognormal event length; real median 1.9 s
EVENT_MIN_S, EVENT_MAX_S = 0.27, 7.9  # real shortest / longest event
MAX_CLIP_FRACTION = 0.5  # an event covers at most half a clip: background always remains
SNR_DB = (6.0, 20.0)  # band SNR of a call: clearly audible, never the whole mix
TP_FRACTION, BOTH_FRACTION = 0.5, 0.3  # train recordings with tp rows; of those, also fp rows
LABEL_NOISE = 0.15  # tp recordings with an unannotated call of another species
TEST_DECOY = 0.4  # test recordings that also hold decoys
COUNT_P = {"tp": (0.7, 0.2, 0.1), "fp": (0.45, 0.35, 0.2), "test": (0.5, 0.3, 0.2)}  # P(1..3)
PLACEMENT_TRIES = 32  # candidate starts per event; the least overlapping one wins
CSV_NAMES = (TP_FILE, FP_FILE, SUBMISSION_FILE, "test_truth.csv")
MARKER = ".rfcx_synth.json"  # marks a directory as ours, so a rerun may overwrite it


@dataclass(frozen=True)
class Event:
    """One call placed in one recording."""

    species: int
    role: str  # "tp": a true call (annotated in train); "fp": a decoy; "hidden": label noise
    call: CallSpec
    start: int  # first sample
    length: int  # samples
    snr_db: float  # band SNR against the background
    songtype: int  # 1 or 4, as in the real data


@dataclass(frozen=True)
class Recording:
    rec_id: str  # 9 lowercase hex chars, like the real ids
    events: tuple[Event, ...]


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote (the RFCx layout under `out_dir`) and how much."""

    out_dir: Path
    train_dir: Path  # train/<recording_id>.flac
    test_dir: Path  # test/<recording_id>.flac
    train_tp: Path  # train_tp.csv
    train_fp: Path  # train_fp.csv
    sample_submission: Path  # sample_submission.csv, all zeros
    test_truth: Path  # test_truth.csv, 0/1: which species truly call
    n_train: int  # train recordings
    n_test: int  # test recordings
    n_species: int
    n_tp_rows: int
    n_fp_rows: int
    n_both: int  # train recordings with both tp and fp rows
    duration: float  # seconds per clip
    sample_rate: int  # Hz
    seed: int


# ---- what goes where --------------------------------------------------------------------------
def _count(rng: Rng, key: str) -> int:
    return int(rng.choice([1, 2, 3], p=COUNT_P[key]))


def _others(rng: Rng, k: int, exclude: Sequence[int], m: int) -> list[int]:
    """Up to m distinct species not in `exclude` (fewer when K is small)."""
    pool = np.setdiff1d(np.arange(k), np.asarray(exclude, dtype=int))
    return [int(s) for s in rng.choice(pool, size=min(m, len(pool)), replace=False)]


def _balanced(rng: Rng, counts: np.ndarray, m: int) -> list[int]:
    """m distinct species, favouring the rarely labelled so every species gets tp rows."""
    weights = 1.0 / (1.0 + counts) ** 2
    chosen = rng.choice(len(counts), min(m, len(counts)), replace=False, p=weights / weights.sum())
    counts[chosen] += 1
    return [int(s) for s in chosen]


def _train_jobs(rng: Rng, n_train: int, k: int) -> Jobs:
    """Per train recording: tp calls (some + label noise, some + decoys), or decoys only."""
    n_tp = max(1, round(n_train * TP_FRACTION))
    n_both = max(1, round(n_tp * BOTH_FRACTION)) if n_tp >= 2 else 0
    counts = np.zeros(k)
    jobs = []
    for i in range(n_train):
        tp = _balanced(rng, counts, _count(rng, "tp")) if i < n_tp else []
        hidden = _others(rng, k, tp, 1) if tp and rng.random() < LABEL_NOISE else []
        # A decoy never shares a species with a call of the same recording.
        fp = _others(rng, k, tp + hidden, _count(rng, "fp")) if not tp or i < n_both else []
        jobs.append([(s, "tp") for s in tp] + [(s, "hidden") for s in hidden]
                    + [(s, "fp") for s in fp])
    return [jobs[i] for i in rng.permutation(n_train)]  # tp and fp-only mixed over the ids


def _test_jobs(rng: Rng, n_test: int, k: int) -> Jobs:
    """Per test recording: 1-3 true calls, sometimes decoys of other species."""
    jobs = []
    for _ in range(n_test):
        truth = [int(s) for s in rng.choice(k, min(_count(rng, "test"), k), replace=False)]
        decoys = int(rng.integers(1, 3)) if rng.random() < TEST_DECOY else 0
        fp = _others(rng, k, truth, decoys)  # a decoy never shares a species with a true call
        jobs.append([(s, "tp") for s in truth] + [(s, "fp") for s in fp])
    return jobs


def _event_samples(rng: Rng, n: int, sr: int) -> int:
    """Lognormal length (median 1.9 s), clipped to the real range and to half the clip."""
    cap = min(EVENT_MAX_S, MAX_CLIP_FRACTION * n / sr)
    seconds = rng.lognormal(np.log(EVENT_MEDIAN_S), EVENT_SIGMA)
    seconds = np.clip(seconds, min(EVENT_MIN_S, cap), cap)
    return max(1, int(round(seconds * sr)))


def _place(rng: Rng, jobs: list[tuple[int, str]], species: Sequence[CallSpec],
           songtype4: set[int], n: int, sr: int) -> tuple[Event, ...]:
    """Place events at random, avoiding time overlap with placed events in a shared band."""
    placed: list[Event] = []
    for s, role in jobs:
        call = DECOYS[species[s].kind](species[s]) if role == "fp" else species[s]
        length = _event_samples(rng, n, sr)
        starts = rng.integers(0, n - length + 1, PLACEMENT_TRIES)  # (tries,)
        cost = np.zeros(PLACEMENT_TRIES)
        for ev in placed:
            if ev.call.f_lo < call.f_hi and call.f_lo < ev.call.f_hi:
                end = np.minimum(starts + length, ev.start + ev.length)
                cost += np.clip(end - np.maximum(starts, ev.start), 0, None)
        songtype = 4 if s in songtype4 and rng.random() < 0.5 else 1
        start, snr = int(starts[np.argmin(cost)]), float(rng.uniform(*SNR_DB))
        placed.append(Event(s, role, call, start, length, snr, songtype))
    return tuple(placed)


def _recording_ids(rng: Rng, n: int) -> list[str]:
    """n unique ids of 9 lowercase hex chars, like the real '003bec244', in random order."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.update(f"{int(x):09x}" for x in rng.integers(0, 16**9, n - len(ids)))
    ordered = sorted(ids)  # a set's order is not reproducible
    return [ordered[i] for i in rng.permutation(n)]


def plan(rng: Rng, species: Sequence[CallSpec], n_train: int, n_test: int, n: int,
         sr: int) -> tuple[list[Recording], list[Recording]]:
    """Decide every recording's events (no audio yet): (train, test), each sorted by id."""
    # Like the real data, a few species also have song type 4 rows.
    k = len(species)
    songtype4 = {int(s) for s in rng.choice(k, max(1, k // 12), replace=False)}
    ids = _recording_ids(rng, n_train + n_test)
    jobs = _train_jobs(rng, n_train, k) + _test_jobs(rng, n_test, k)
    recs = [Recording(i, _place(rng, j, species, songtype4, n, sr)) for i, j in zip(ids, jobs)]
    return (sorted(recs[:n_train], key=lambda r: r.rec_id),
            sorted(recs[n_train:], key=lambda r: r.rec_id))


def planned(recordings: int, test_recordings: int, species: int, duration: float, sample_rate: int,
            seed: int) -> tuple[tuple[CallSpec, ...], list[Recording], list[Recording]]:
    """The species and the recordings `generate` writes with these arguments, without audio."""
    species_seed, plan_seed, _ = np.random.SeedSequence(seed).spawn(3)
    specs = make_species(np.random.default_rng(species_seed), species, sample_rate)
    n = max(1, int(round(duration * sample_rate)))
    return (specs, *plan(np.random.default_rng(plan_seed), specs, recordings, test_recordings, n, sample_rate))


# ---- audio ------------------------------------------------------------------------------------
def render(rec: Recording, n: int, sr: int, rng: Rng) -> np.ndarray:
    """Mix one recording: background plus each event at its band SNR; (n,) float32."""
    mix, band_power = background(rng, n, sr)
    for ev in rec.events:
        amp = np.sqrt(10 ** (ev.snr_db / 10) * band_power(ev.call.f_lo, ev.call.f_hi))
        mix[ev.start : ev.start + ev.length] += amp * synth_call(ev.call, ev.length, sr, rng)
    peak = float(np.abs(mix).max())
    if peak > 0.95:  # keep PCM_16 from clipping; scaling the whole mix keeps every SNR
        mix *= 0.95 / peak
    return mix.astype(np.float32)


# ---- files ------------------------------------------------------------------------------------
def annotations(recs: Sequence[Recording], role: str, sr: int) -> pd.DataFrame:
    """One row per `role` event in the real CSV columns, sorted like the real files."""
    rows = [(r.rec_id, e.species, e.songtype, round(e.start / sr, 4), round(e.call.f_lo, 4),
             round((e.start + e.length) / sr, 4), round(e.call.f_hi, 4))
            for r in recs for e in r.events if e.role == role]
    df = pd.DataFrame(rows, columns=ANNOTATION_COLUMNS)
    return df.sort_values(["recording_id", "t_min"], kind="stable").reset_index(drop=True)


def _truth(recs: Sequence[Recording], k: int) -> pd.DataFrame:
    """0/1 per test recording and species: which species truly call in it."""
    truth = np.zeros((len(recs), k), dtype=int)
    for i, rec in enumerate(recs):
        truth[i, [e.species for e in rec.events if e.role == "tp"]] = 1
    df = pd.DataFrame(truth, columns=species_columns(k))
    df.insert(0, "recording_id", [r.rec_id for r in recs])
    return df


def _write_audio(folder: Path, recs: Sequence[Recording], seeds: Sequence[np.random.SeedSequence],
                 n: int, sr: int, progress: bool) -> None:
    """Render and write one split; each recording has its own seed, so order does not matter."""
    folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(list(zip(recs, seeds)), desc=folder.name, unit="rec", disable=not progress)
    for rec, seed in bar:
        audio = render(rec, n, sr, np.random.default_rng(seed))
        atomic_write(folder / f"{rec.rec_id}.flac",
                     partial(sf.write, data=audio, samplerate=sr, format="FLAC", subtype="PCM_16"))


def argument_problem(out_dir: Path, recordings: int, test_recordings: int, species: int,
                     duration: float, sample_rate: int, seed: int) -> str | None:
    """The first thing wrong with `generate`'s arguments, or None; never overwrite others' files."""
    checks = [
        (recordings >= 1, f"--recordings must be >= 1, got {recordings}"),
        (test_recordings >= 0, f"--test-recordings must be >= 0, got {test_recordings}"),
        (species >= 1, f"--species must be >= 1, got {species}"),
        (np.isfinite(duration) and duration > 0, f"--duration must be > 0 seconds, got {duration}"),
        (sample_rate >= 8000, f"--sample-rate must be >= 8000 Hz, got {sample_rate}"),
        (seed >= 0, f"--seed must be >= 0, got {seed}"),
        (not out_dir.exists() or out_dir.is_dir(), f"{out_dir} exists and is not a directory"),
        (not out_dir.is_dir() or (out_dir / MARKER).is_file() or not any(out_dir.iterdir()),
         f"{out_dir} is a non-empty directory that is not a previous synth output"),
    ]
    return next((message for ok, message in checks if not ok), None)


def _claim(out_dir: Path, params: dict) -> None:
    """Mark the directory as ours, then drop a previous run's files so no stale id survives."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / MARKER, json.dumps({**params, "complete": False}))
    for name in CSV_NAMES:  # first, so no CSV ever lists a missing flac
        (out_dir / name).unlink(missing_ok=True)
    for folder in (out_dir, out_dir / "train", out_dir / "test"):
        remove_partial_files(folder)  # what a crashed run left half-written
    for pattern in ("train/*.flac", "test/*.flac"):
        for old in out_dir.glob(pattern):
            old.unlink()


def generate(out_dir: Path, recordings: int = 120, test_recordings: int = 30, species: int = 24,
             duration: float = 60.0, sample_rate: int = 48000, seed: int = 0,
             progress: bool = True) -> SynthSummary:
    """Write a synthetic dataset in the RFCx layout, plus test_truth.csv, into `out_dir`.

    Raises:
        ValueError: on a bad argument, or an `out_dir` that is neither empty nor ours.
    """
    out_dir = Path(out_dir)
    params: dict[str, Any] = dict(recordings=recordings, test_recordings=test_recordings, species=species,
                                  duration=duration, sample_rate=sample_rate, seed=seed)
    problem = argument_problem(out_dir, **params)
    if problem:
        raise ValueError(problem)
    _claim(out_dir, params)
    # Independent streams for the species, the plan and each recording's audio.
    _, train, test = planned(recordings, test_recordings, species, duration, sample_rate, seed)
    n = max(1, int(round(duration * sample_rate)))
    seeds = np.random.SeedSequence(seed).spawn(3)[2].spawn(recordings + test_recordings)
    _write_audio(out_dir / "train", train, seeds[:recordings], n, sample_rate, progress)
    _write_audio(out_dir / "test", test, seeds[recordings:], n, sample_rate, progress)
    tp, fp = annotations(train, "tp", sample_rate), annotations(train, "fp", sample_rate)
    truth = _truth(test, species)
    zeros = truth.assign(**{c: 0 for c in truth.columns[1:]})
    for df, name in zip((tp, fp, zeros, truth), CSV_NAMES):
        atomic_write_text(out_dir / name, df.to_csv(index=False))
    atomic_write_text(out_dir / MARKER, json.dumps({**params, "complete": True}))
    train_tp, train_fp, sample_submission, test_truth = (out_dir / name for name in CSV_NAMES)
    return SynthSummary(
        out_dir, out_dir / "train", out_dir / "test", train_tp, train_fp, sample_submission, test_truth,
        n_train=recordings, n_test=test_recordings, n_species=species, n_tp_rows=len(tp),
        n_fp_rows=len(fp), n_both=len(set(tp.recording_id) & set(fp.recording_id)),
        duration=duration, sample_rate=sample_rate, seed=seed)


# ---- CLI --------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `PROG: error: ...`, with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m datatools.synth", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("out", type=Path, help="output directory: new, empty, or a previous synth output")
    add("--recordings", type=int, default=120, metavar="N",
        help="train recordings; half carry tp rows (30%% of those also fp rows), half only fp "
             "rows (default: %(default)s)")
    add("--test-recordings", type=int, default=30, metavar="M",
        help="test recordings, their truth in test_truth.csv (default: %(default)s)")
    add("--species", type=int, default=24, metavar="K",
        help="number of species, ids 0..K-1 (default: %(default)s)")
    add("--duration", type=float, default=60.0, metavar="S",
        help="seconds per recording (default: %(default)s)")
    add("--sample-rate", type=int, default=48000, metavar="SR",
        help="Hz, at least 8000; call bands stay below 0.45 * SR (default: %(default)s)")
    add("--seed", type=int, default=0,
        help="random seed; the same seed writes identical files (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: parse, check, generate, and say what was written where."""
    parser = build_parser()
    args = parser.parse_args(argv)
    kwargs = {name: value for name, value in vars(args).items() if name != "out"}
    problem = argument_problem(args.out, **kwargs)
    if problem:
        parser.error(problem)
    s = generate(args.out, **kwargs)
    print(f"wrote {s.n_train} train + {s.n_test} test recordings ({s.n_species} species, "
          f"{s.duration:g} s at {s.sample_rate} Hz), {s.n_tp_rows} tp + {s.n_fp_rows} fp rows "
          f"({s.n_both} recordings in both) and test_truth.csv to {s.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
