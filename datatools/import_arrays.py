"""Adopt log-mel arrays computed elsewhere as the cache, without decoding audio:
`python -m datatools.import_arrays`.

    python -m datatools.import_arrays ARRAYS --data-dir DATA --sample-rate SR --n-fft N --hop-length H
                                      --n-mels M --fmin F --fmax F [--duration S] [--cache-dir DATA/logmel]
                                      [--npz-key NAME] [--dataset rfcx]

The seed's way of working: little compute, so its author downloaded precomputed spectrograms
(npz) onto a Colab GPU instead of the audio. ARRAYS holds one array per recording, named by its
recording id (`<id>.npy` or `<id>.npz`, in ARRAYS or in ARRAYS/train and ARRAYS/test), mels x
frames. The arrays' feature parameters cannot be read from them, so all six are stated (the
flags of datatools.prepare) and become the cache's manifest; the shapes are checked against them:
n_mels mels, and the frames of the recording's length at that hop (its audio's header when the
audio is there, else --duration). Every recording the search reads (search.datadir.check_cached's:
the annotated train recordings and the submission's test recordings) is imported; an array of
the wrong shape, dtype or values is refused in one line (file, what is wrong, what was expected).

The audio is optional. A recording's audio, when present, is recorded as its array's source, so a
later change of it makes the array stale (the search then refuses it and names this command); an
array imported without audio records NO_AUDIO (trainable.data.cache): nothing can show that it no
longer matches, until audio appears. The cache's manifest records this command, so the search's
message about a stale or incomplete cache repeats it, and datatools.prepare refuses to compute
arrays into such a cache (they would be mixed with arrays of another computation).

Each array is written atomically (float16, as prepare writes them), so a killed run leaves no
half-written one; a second run imports every array again, so the same command finishes a killed
run. Exit codes: 0 done, 1 some arrays refused (each in one line, then the count), 2 bad input,
130 interrupted.
"""

from __future__ import annotations

import os
import signal
import sys


def _exit_before_start(signum: int, frame) -> None:
    # As datatools.prepare: os._exit, since an exception raised inside torch's C extension
    # imports aborts with a C++ trace. Nothing has been written yet.
    print("interrupted before the import started; the same command starts it", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":  # Ctrl-C during the imports below (torch: seconds): one line, no traceback
    signal.signal(signal.SIGINT, _exit_before_start)

import argparse  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from datatools.prepare import FEATURE_FLAGS, FLUSH_SECONDS, check_cache_dir, recordings  # noqa: E402
from trainable.atomic import DiskFullError  # noqa: E402
from trainable.config import ConfigError  # noqa: E402
from trainable.data.annotations import AnnotationError, Annotations  # noqa: E402
from trainable.data.cache import (  # noqa: E402
    NO_AUDIO,
    SPLITS,
    AudioSource,
    CacheError,
    FeatureConfig,
    LogMelCache,
    cache_location,
    source_key,
)
from trainable.data.layouts import DATASETS, DEFAULT_DATASET, Dataset, dataset, load_annotations  # noqa: E402

SUFFIXES = (".npy", ".npz")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # the cache's dtype: anything larger would become inf
EVENT_TOLERANCE = 1e-3  # seconds an event may pass its recording's end (annotations are rounded)
UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile)  # np.load on a file that is not numpy's


class Refused(Exception):
    """An array that cannot be imported: what is wrong, and what was expected (one line with its file)."""

    def __init__(self, problem: str, expected: str):
        super().__init__(f"{problem}; expected {expected}")


@dataclass(frozen=True)
class Recording:
    """One recording the search reads, and the length its array must have."""

    split: str
    recording_id: str
    audio: Path
    duration: float | None  # seconds: its audio's header, else --duration; None: neither
    measured: str  # where the duration comes from, or why there is none (messages)

    @property
    def key(self) -> str:
        return source_key(self.split, self.recording_id)


def audio_duration(path: Path) -> float | None:
    """The length of an audio file from its header (no decoding); None when it cannot be read."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    return info.frames / info.samplerate if info.samplerate else None


def wanted(data_dir: Path, layout: Dataset, annotations: Annotations, duration: float | None) -> list[Recording]:
    """The recordings whose arrays a search reads (search.datadir.check_cached's), with their lengths."""
    found = []
    for split, ids in (("train", annotations.train_ids), ("test", annotations.test_ids)):
        for rid in ids:
            audio = layout.audio_path(data_dir, split, rid)
            length = audio_duration(audio) if audio.is_file() else None
            if length is not None:
                found.append(Recording(split, rid, audio, length, "its audio's length"))
            elif duration is not None:
                found.append(Recording(split, rid, audio, duration, "--duration"))
            else:
                why = f"its audio {audio} cannot be read" if audio.is_file() else f"no audio file {audio}"
                found.append(Recording(split, rid, audio, None, why))
    return found


def check_events(todo: list[Recording], annotations: Annotations) -> None:
    """Every annotated event ends inside its recording, whose length is the audio's or --duration:
    what the layout's validation checks against the audio, for data without it.

    Raises:
        AnnotationError: one line naming the first event past its recording's end, and the count.
    """
    lengths = {r.recording_id: r.duration for r in todo if r.split == "train"}
    events = pd.concat([annotations.tp, annotations.fp], ignore_index=True)
    late = events[events.end_s > events.recording.map(lengths).astype(float) + EVENT_TOLERANCE]
    if len(late):
        first, more = late.iloc[0], f" [and {len(late) - 1} more like it]" if len(late) > 1 else ""
        raise AnnotationError(f"a {first.kind} event of recording {first.recording!r} ends at {first.end_s:g} s,"
                              f" after the recording's end ({lengths[first.recording]:g} s){more}")


def array_files(arrays: Path) -> dict[tuple[str, str], list[Path]]:
    """The array files of ARRAYS by (folder, recording id): folder "" for ARRAYS itself, "train"
    and "test" for its subfolders. One listing per folder, not a stat per recording."""
    files: dict[tuple[str, str], list[Path]] = {}
    for folder in ("", *SPLITS):
        where = arrays / folder
        if not where.is_dir():
            continue
        for entry in os.scandir(where):
            path = Path(entry.path)
            if path.suffix in SUFFIXES and entry.is_file():
                files.setdefault((folder, path.stem), []).append(path)
    return files


def locate(files: dict[tuple[str, str], list[Path]], arrays: Path, recording: Recording) -> Path:
    """The one array file of a recording: ARRAYS/<split>/<id>.npy|.npz, else ARRAYS/<id>.npy|.npz.

    Raises:
        Refused: none, or more than one.
    """
    found = sorted(files.get((recording.split, recording.recording_id)) or files.get(("", recording.recording_id))
                   or [])
    if not found:
        raise Refused(f"not found (nor .npz, nor in {arrays / recording.split})",
                      f"an array of every {recording.split} recording the search reads")
    if len(found) > 1:
        raise Refused(f"{found[1].name} there too", "one array per recording")
    return found[0]


def read_array(path: Path, npz_key: str | None) -> np.ndarray:
    """The array of a .npy file, or the one array of a .npz file (`npz_key`'s when given).

    Raises:
        Refused: not numpy's format, or an npz without exactly the array asked for.
    """
    try:
        # allow_pickle=False: an object array is refused, and nothing in the file runs code
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded as archive:
            names = list(archive.files)
            if npz_key is not None:
                if npz_key not in names:
                    raise Refused(f"no array {npz_key!r} (--npz-key) in it, only {', '.join(names) or 'none'}",
                                  "an npz file holding that array")
                return archive[npz_key]
            if len(names) != 1:
                raise Refused(f"holds {len(names)} arrays ({', '.join(names)})",
                              "one array per npz file, or --npz-key NAME to choose")
            return archive[names[0]]
    except UNREADABLE as error:
        text = " ".join(str(error).split()) or type(error).__name__
        raise Refused(f"cannot be read ({text})", "numpy's .npy or .npz format") from None


def frame_tolerance(features: FeatureConfig) -> int:
    """How many frames an array may differ from the centred STFT's 1 + samples // hop: an STFT
    without centring has n_fft / hop frames fewer, and resampling may round a sample either way."""
    return math.ceil(features.n_fft / features.hop_length) + 1


def checked(array: np.ndarray, features: FeatureConfig, recording: Recording) -> np.ndarray:
    """The array as the cache holds it, (n_mels, frames) float16, once its shape, dtype and values
    match the stated feature parameters and the recording's length.

    Raises:
        Refused: the first of those that does not.
    """
    mels = f"{features.n_mels} mels (--n-mels) x frames"
    if array.ndim != 2:
        raise Refused(f"{array.ndim} dimensions {tuple(array.shape)}", f"2: {mels}")
    if array.dtype.kind != "f":
        raise Refused(f"dtype {array.dtype}", "floating point (a log-mel: float16, float32 or float64)")
    n_mels, frames = array.shape
    assert recording.duration is not None  # import_arrays refuses recordings of unknown length first
    expected = 1 + round(recording.duration * features.sample_rate) // features.hop_length
    tolerance = frame_tolerance(features)
    if n_mels != features.n_mels:
        turned = " (frames x mels? save it transposed)" if frames == features.n_mels else ""
        raise Refused(f"{n_mels} mels x {frames} frames{turned}", f"{mels}")
    if abs(frames - expected) > tolerance:
        raise Refused(f"{frames} frames ({frames / features.frames_per_second:.2f} s at"
                      f" {features.frames_per_second:g} frames/s)",
                      f"{expected} ± {tolerance} frames for {recording.duration:g} s ({recording.measured})"
                      f" at --sample-rate {features.sample_rate} --hop-length {features.hop_length}")
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        raise Refused(f"{nan} NaN and {array.size - int(finite.sum()) - nan} infinite values",
                      "finite log-mel values")
    largest = float(np.abs(array).max())
    if largest > FLOAT16_MAX:
        raise Refused(f"values up to {largest:.3g}, beyond float16 (the cache's dtype: up to {FLOAT16_MAX:g})",
                      "a log-mel (dB or log), not a power spectrogram")
    return array.astype(np.float16, copy=False)


def import_command(arrays: Path, data_dir: Path, cache_dir: Path | None, features: FeatureConfig,
                   duration: float | None, npz_key: str | None, dataset_name: str) -> str:
    """This import as one command, absolute paths: the cache's manifest records it, and the search
    repeats it when the cache lacks arrays or holds stale ones."""
    command = ["python", "-m", "datatools.import_arrays", str(arrays.absolute()),
               "--data-dir", str(data_dir.absolute())]
    if dataset_name != DEFAULT_DATASET:
        command += ["--dataset", dataset_name]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir.absolute())]
    for name in FEATURE_FLAGS:
        command += [f"--{name.replace('_', '-')}", f"{getattr(features, name)}"]
    if duration is not None:
        command += ["--duration", f"{duration:g}"]
    if npz_key is not None:
        command += ["--npz-key", npz_key]
    return shlex.join(command)


class Records:
    """Sources of imported arrays (None: refused, its record goes), merged into sources.json every
    FLUSH_SECONDS and at the end, as prepare's."""

    def __init__(self, cache: LogMelCache):
        self.cache = cache
        self.pending: dict[str, AudioSource | None] = {}
        self.flushed_at = time.monotonic()

    def add(self, key: str, source: AudioSource | None) -> None:
        self.pending[key] = source
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.cache.record_sources(self.pending)
        self.pending, self.flushed_at = {}, time.monotonic()


def source_of(audio: Path) -> AudioSource:
    """What an imported array is recorded as coming from: its audio, or NO_AUDIO."""
    try:
        return AudioSource.of(audio)
    except FileNotFoundError:
        return NO_AUDIO


def import_arrays(arrays: Path, data_dir: Path, cache_dir: Path, features: FeatureConfig, duration: float | None,
                  npz_key: str | None, dataset_name: str, command: str) -> int:
    """Validate, then import every array a search reads; returns the exit code."""
    if not arrays.is_dir():
        raise CacheError(f"ARRAYS {arrays} {'is not a directory' if arrays.exists() else 'does not exist'}")
    check_cache_dir(cache_dir)
    layout = dataset(dataset_name)
    annotations = load_annotations(data_dir, dataset_name)
    todo = wanted(data_dir, layout, annotations, duration)
    if not todo:
        raise AnnotationError(f"no recordings to import: {data_dir} has no annotated or submitted recordings")
    unknown = [r for r in todo if r.duration is None]
    if unknown:
        raise AnnotationError(f"the length of {recordings(len(unknown))} of the {len(todo)} the search reads is"
                              f" unknown ({unknown[0].split}/{unknown[0].recording_id}: {unknown[0].measured});"
                              f" give it, --duration SECONDS (60 for RFCx), to check their arrays' frames against")
    without_audio = sum(not r.audio.is_file() for r in todo)
    if without_audio:
        check_events(todo, annotations)
    else:
        layout.validate(data_dir)  # prepare's checks of the data, with its messages (CSV lines)
    cache = LogMelCache.create(cache_dir, features, imported_by=command)
    cache.remove_partial_files()
    files = array_files(arrays)
    counts = ", ".join(f"{sum(r.split == s for r in todo)} {s}" for s in SPLITS)
    print(f"importing the arrays of {len(todo)} recordings ({counts}) from {arrays} into {cache.root}")
    started, refused, imported_without_audio = time.perf_counter(), 0, 0
    records = Records(cache)
    progress = tqdm(total=len(todo), unit="rec", desc="import", file=sys.stderr, dynamic_ncols=True)
    try:
        for recording in todo:
            path = arrays / f"{recording.recording_id}.npy"  # named when there is none
            try:
                path = locate(files, arrays, recording)
                source = source_of(recording.audio)  # before the array: audio rewritten meanwhile then differs
                cache.save(recording.split, recording.recording_id, checked(read_array(path, npz_key), features,
                                                                            recording))
                records.add(recording.key, source)
                imported_without_audio += source == NO_AUDIO
            except Refused as refusal:
                refused += 1
                cache.path(recording.split, recording.recording_id).unlink(missing_ok=True)  # no trial reads it
                records.add(recording.key, None)
                progress.write(f"refused {path}: {refusal}", file=sys.stderr)
            progress.update()
    finally:
        progress.close()
        records.flush()
    elapsed = time.perf_counter() - started
    done = len(todo) - refused
    taken = {(r.split if (r.split, r.recording_id) in files else "", r.recording_id) for r in todo}
    ignored = len(files.keys() - taken)
    print(f"imported {done} arrays in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.0f} arrays/s)"
          + (f"; {imported_without_audio} of them without audio, their length checked against --duration"
             if imported_without_audio else "")
          + (f"; {ignored} arrays of recordings the search does not read were left out" if ignored else ""))
    if refused:
        print(f"error: {refused} of {len(todo)} arrays refused (each named above); fix or replace them in"
              f" {arrays} and run the same command again", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = FeatureConfig()
    parser = argparse.ArgumentParser(
        prog="python -m datatools.import_arrays",
        description="Adopt precomputed log-mel arrays (one .npy or .npz per recording, mels x frames, named by"
                    " recording id) as the log-mel cache of a data directory, without decoding audio. Their"
                    " feature parameters are stated, and checked against their shapes.")
    parser.add_argument("arrays", type=Path, metavar="ARRAYS",
                        help="the arrays: ARRAYS/<id>.npy|.npz, or ARRAYS/train/ and ARRAYS/test/")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the data, in the layout --dataset names (RFCx: train_tp.csv, train_fp.csv,"
                             " sample_submission.csv; the audio in train/ and test/ is optional)")
    parser.add_argument("--dataset", choices=list(DATASETS), default=DEFAULT_DATASET,
                        help="the data layout, data.dataset of the trials (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the cache goes (default: DATA_DIR/logmel)")
    parser.add_argument("--duration", type=float, default=None,
                        help="the recordings' length in seconds (60 for RFCx), for those without audio: their"
                             " arrays' frames are checked against it (with audio: the audio's length)")
    parser.add_argument("--npz-key", default=None,
                        help="the array to take from each .npz file (default: its only array)")
    features = parser.add_argument_group("the arrays' feature parameters (all required: they cannot be read"
                                         " from the arrays)")
    for name, text in FEATURE_FLAGS.items():
        default = getattr(defaults, name)
        features.add_argument(f"--{name.replace('_', '-')}", type=type(default), required=True,
                              help=f"{text} (prepare's default: {default})")
    args = parser.parse_args(argv)
    if args.duration is not None and not args.duration > 0:
        parser.error("--duration must be > 0 seconds")
    try:
        args.features = FeatureConfig(**{name: getattr(args, name) for name in FEATURE_FLAGS})
    except ConfigError as error:
        parser.error(f"feature parameters: {error}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = import_command(args.arrays, args.data_dir, args.cache_dir, args.features, args.duration, args.npz_key,
                             args.dataset)
    try:
        return import_arrays(args.arrays, args.data_dir, cache_location(args.data_dir, args.cache_dir), args.features,
                             args.duration, args.npz_key, args.dataset, command)
    except (AnnotationError, CacheError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DiskFullError as error:  # the cache's disk: the arrays written so far are whole and recorded
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the arrays imported so far are kept; the same command imports them all",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, KeyboardInterrupt
    sys.exit(main())
