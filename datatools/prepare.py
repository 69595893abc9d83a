"""Build the log-mel cache of a data directory, in parallel: `python -m datatools.prepare`.

    python -m datatools.prepare --data-dir DATA [--cache-dir DATA/logmel] [--workers N] [--dataset rfcx]

It checks that the cache directory is writable and validates the annotations first (a bad
CSV fails in a second, not after an hour), then turns every train and test recording of the
data layout (--dataset; RFCx: train/*.flac, test/*.flac) into one float16 log-mel array and
records the audio it came from. A second run does only what is missing or stale (audio
changed or replaced since), so a killed run is finished by running it again. Exit codes:
0 done, 1 some recordings failed (listed), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path


def _exit_before_start(signum: int, frame) -> None:
    # os._exit, not an exception: one raised inside torch's C extension imports aborts with a C++
    # trace. Nothing has been written yet.
    print("interrupted before the cache build started; the same command starts it", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":  # Ctrl-C during the imports below (torch: seconds): one line, no traceback
    signal.signal(signal.SIGINT, _exit_before_start)

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from trainable.config import ConfigError
from trainable.data.annotations import AnnotationError
from trainable.data.cache import (
    CHANGED,
    DEFAULT_CACHE_NAME,
    FRESH,
    MISSING,
    SPLITS,
    AudioSource,
    CacheError,
    FeatureConfig,
    LogMelCache,
    cache_location,
    source_key,
)
from trainable.data.features import file_log_mel, warm_up
from trainable.data.layouts import DATASETS, DEFAULT_DATASET, Dataset, dataset

FEATURE_FLAGS = {  # FeatureConfig field -> --help text of its flag
    "sample_rate": "Hz; audio is resampled to it",
    "n_fft": "STFT window, samples",
    "hop_length": "samples between frames (512 at 32 kHz = 62.5 frames/s)",
    "n_mels": "mel bands",
    "fmin": "lowest mel frequency, Hz",
    "fmax": "highest mel frequency, Hz",
}
FLUSH_SECONDS = 5.0  # records of finished arrays are merged into sources.json this often, and at the end
REASONS = {MISSING: "not cached yet", CHANGED: "changed since they were cached"}


@dataclass(frozen=True)
class Job:
    """One recording to cache."""

    split: str
    recording_id: str
    audio: Path

    @property
    def key(self) -> str:
        return source_key(self.split, self.recording_id)


def find_recordings(data_dir: Path, layout: Dataset | None = None) -> list[Job]:
    """Every train and test recording of a data directory with audio (`layout`'s; RFCx by
    default), in a stable order."""
    layout = layout or dataset(DEFAULT_DATASET)
    return [Job(split, rid, layout.audio_path(data_dir, split, rid))
            for split in SPLITS for rid in layout.recordings(data_dir, split)]


@dataclass(frozen=True)
class Outcome:
    """What a worker made of one job: the source its array was computed from, or why it failed."""

    source: AudioSource | None
    error: str | None  # one line


def cache_recording(cache: LogMelCache, job: Job) -> Outcome:
    """Compute and save one recording, with the source it was computed from.

    Runs in a worker process. Audio errors are returned, not raised, so one corrupt
    file does not stop the others; the recording's old array, stale since it is here,
    is removed so no trial reads it.
    """
    try:
        # Before reading: audio rewritten while it is read then differs from its record.
        source = AudioSource.of(job.audio)
        cache.save(job.split, job.recording_id, file_log_mel(job.audio, cache.features))
    except (RuntimeError, ValueError, OSError) as error:  # LibsndfileError is a RuntimeError
        cache.path(job.split, job.recording_id).unlink(missing_ok=True)
        return Outcome(None, " ".join(str(error).split()) or type(error).__name__)
    return Outcome(source, None)


class SourceRecords:
    """Sources of finished arrays, merged into the cache's sources.json every FLUSH_SECONDS and at
    the end (Ctrl-C included), so a killed run loses the records of a few seconds at most (and
    those arrays, newer than their audio, are adopted by the next run)."""

    def __init__(self, cache: LogMelCache):
        self.cache = cache
        self.pending: dict[str, AudioSource | None] = {}
        self.flushed_at = time.monotonic()

    def add(self, job: Job, outcome: Outcome) -> None:
        self.pending[job.key] = outcome.source  # None: failed, its array is gone, so is its record
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.cache.record_sources(self.pending)
        self.pending = {}
        self.flushed_at = time.monotonic()


class CtrlC:
    """Ctrl-C as KeyboardInterrupt, remembered. One that lands while C code is calling back into
    Python (numba's compiler in warm_up, through llvmlite's ctypes callbacks) is lost there:
    Python prints it as "Exception ignored ... Traceback" and the build went on to the end. Here it
    is printed by no one and raised again at the build's next step (`check`)."""

    asked = False

    @classmethod
    def handler(cls, signum: int, frame) -> None:
        cls.asked = True
        raise KeyboardInterrupt

    @staticmethod
    def unraisable(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            sys.__unraisablehook__(unraisable)

    @classmethod
    def check(cls) -> None:
        """Raise the Ctrl-C that a callback swallowed."""
        if cls.asked:
            raise KeyboardInterrupt


def _worker_start() -> None:
    """Worker start: BLAS (the mel projection) on one thread, so N workers use N cores; with
    a thread pool per worker, N workers would each run one thread per core and fight. Ctrl-C
    reaches the whole process group: the workers leave it to the main process, which stops the
    pool; a worker that took it while starting broke the pool with a traceback instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)


def build_cache(cache: LogMelCache, jobs: list[Job], workers: int) -> dict[Job, str]:
    """Cache `jobs` with `workers` processes and a progress bar, recording each array's source;
    returns failures by job."""
    failures: dict[Job, str] = {}
    records = SourceRecords(cache)
    warm_up(cache.features)  # once here, inherited by the forked workers
    CtrlC.check()
    progress = tqdm(total=len(jobs), unit="rec", desc="log-mel", file=sys.stderr, dynamic_ncols=True)
    # Processes, not threads: STFT and mel projection hold the GIL for much of their time.
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_start) as pool:
        futures: dict = {}
        seen = set()
        try:  # Ctrl-C while the jobs are submitted too: the pool's exit would otherwise run them all
            futures = {pool.submit(cache_recording, cache, job): job for job in jobs}
            for future in as_completed(futures):
                CtrlC.check()
                seen.add(future)
                job, outcome = futures[future], future.result()
                records.add(job, outcome)
                if outcome.error is not None:
                    failures[job] = outcome.error
                    progress.write(f"FAILED {job.audio}: {outcome.error}", file=sys.stderr)
                progress.update()
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            for future in finished(futures.keys() - seen):  # those that ended while we stopped
                records.add(futures[future], future.result())
            raise
        finally:
            progress.close()
            records.flush()
    return failures


def finished(futures):
    """The futures that ran to the end without raising."""
    return [f for f in futures if f.done() and not f.cancelled() and f.exception() is None]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = FeatureConfig()
    parser = argparse.ArgumentParser(
        prog="python -m datatools.prepare",
        description="Build the float16 log-mel cache of a data directory (RFCx: train/ and test/"
                    " flac files). Idempotent: a second run caches only what is missing.")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the data, in the layout --dataset names (RFCx: train_tp.csv, train_fp.csv,"
                             " train/, test/)")
    parser.add_argument("--dataset", choices=list(DATASETS), default=DEFAULT_DATASET,
                        help="the data layout, data.dataset of the trials (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where the cache goes (default: DATA_DIR/{DEFAULT_CACHE_NAME})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel worker processes (default: all %(default)s cores)")
    features = parser.add_argument_group("feature parameters (a cache holds one set)")
    for name, text in FEATURE_FLAGS.items():
        default = getattr(defaults, name)
        features.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                              help=f"{text} (default %(default)s)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        args.features = FeatureConfig(**{name: getattr(args, name) for name in FEATURE_FLAGS})
    except ConfigError as error:
        parser.error(f"feature parameters: {error}")
    return args


def check_cache_dir(cache_dir: Path) -> None:
    """Refuse a cache directory that is a file or cannot be written, before any work.

    Raises:
        CacheError: naming the path and why.
    """
    existing = next(p for p in (cache_dir, *cache_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == cache_dir else f"is under {existing}, which is a file"
        raise CacheError(f"cache directory {cache_dir} {where}, not a directory")
    try:
        # A real directory made and removed: os.access says yes to root on read-only or
        # virtual file systems (/proc), where only trying tells.
        os.rmdir(tempfile.mkdtemp(prefix=".writable-", dir=existing))
    except OSError as error:
        raise CacheError(f"cache directory {cache_dir} cannot be written: creating a directory in"
                         f" {existing} failed ({error.strerror})") from None


def triage(cache: LogMelCache, jobs: list[Job]) -> tuple[dict[str, list[Job]], dict[str, AudioSource | None]]:
    """The jobs to do by why (MISSING, CHANGED), and the records to write for fresh arrays that
    had none or an out-of-date one."""
    todo: dict[str, list[Job]] = {MISSING: [], CHANGED: []}
    adopted: dict[str, AudioSource | None] = {}
    for job in jobs:
        verdict, record = cache.freshness(job.split, job.recording_id, job.audio)
        if verdict != FRESH:
            todo[verdict].append(job)
        elif record is not None:
            adopted[job.key] = record
    return todo, adopted


def recordings(count: int) -> str:
    return f"{count} recording{'' if count == 1 else 's'}"


def prepare(data_dir: Path, cache_dir: Path, features: FeatureConfig, workers: int,
            dataset_name: str = DEFAULT_DATASET) -> int:
    """Validate, then cache what is missing or stale; returns the exit code."""
    check_cache_dir(cache_dir)
    layout = dataset(dataset_name)
    layout.validate(data_dir)
    jobs = find_recordings(data_dir, layout)
    if not jobs:
        where = " or ".join(str(layout.audio_path(data_dir, split, "*")) for split in SPLITS)
        raise AnnotationError(f"no audio files in {where}")
    cache = LogMelCache.create(cache_dir, features)
    cache.remove_partial_files()
    by_reason, adopted = triage(cache, jobs)
    if adopted:
        cache.record_sources(adopted)
        print(f"adopted {recordings(len(adopted))} already cached from their current audio (by an"
              f" earlier version or a killed run, or the same samples copied or rewritten)")
    todo = [job for reason in by_reason.values() for job in reason]
    counts = ", ".join(f"{sum(j.split == s for j in jobs)} {s}" for s in SPLITS)
    if not todo:
        print(f"cache up to date: {len(jobs)} recordings ({counts}) in {cache.root}; nothing to do")
        return 0
    why = ", ".join(f"{recordings(len(group))} {REASONS[reason]}" for reason, group in by_reason.items() if group)
    print(f"caching {len(todo)} of {len(jobs)} recordings ({counts}) into {cache.root}"
          f" with {min(workers, len(todo))} workers: {why}")
    started = time.perf_counter()
    failures = build_cache(cache, todo, min(workers, len(todo)))
    elapsed = time.perf_counter() - started
    done = len(todo) - len(failures)
    print(f"cached {done} recordings in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.1f} recordings/s)")
    if failures:
        print(f"error: {len(failures)} recording(s) could not be cached:", file=sys.stderr)
        for job, error in sorted(failures.items(), key=lambda item: str(item[0].audio)):
            print(f"  {job.audio}: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return prepare(args.data_dir, cache_location(args.data_dir, args.cache_dir), args.features, args.workers,
                       args.dataset)
    except (AnnotationError, CacheError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished arrays are kept; run the same command again to complete the cache",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    signal.signal(signal.SIGINT, CtrlC.handler)  # from here on, KeyboardInterrupt
    sys.unraisablehook = CtrlC.unraisable
    sys.exit(main())
