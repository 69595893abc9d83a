"""Build the log-mel cache of a data directory, in parallel: `python -m trainable.prepare`.

    python -m trainable.prepare --data-dir DATA [--cache-dir DATA/logmel] [--workers N]

It validates the annotations first (a bad CSV fails in a second, not after an hour),
then turns every train/*.flac and test/*.flac into one float16 log-mel array. A second
run does only what is missing, so a killed run is finished by running it again. Exit
codes: 0 done, 1 some recordings failed (listed), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from trainable.annotations import AUDIO_SUFFIX, AnnotationError, check_audio, load_annotations
from trainable.cache import DEFAULT_CACHE_NAME, SPLITS, CacheError, LogMelCache
from trainable.config import ConfigError, FeatureConfig
from trainable.features import file_log_mel, warm_up

FEATURE_FLAGS = {  # FeatureConfig field -> --help text of its flag
    "sample_rate": "Hz; audio is resampled to it",
    "n_fft": "STFT window, samples",
    "hop_length": "samples between frames (512 at 32 kHz = 62.5 frames/s)",
    "n_mels": "mel bands",
    "fmin": "lowest mel frequency, Hz",
    "fmax": "highest mel frequency, Hz",
}


@dataclass(frozen=True)
class Job:
    """One recording to cache."""

    split: str
    recording_id: str
    audio: Path


def find_recordings(data_dir: Path) -> list[Job]:
    """Every train and test audio file of a data directory, in a stable order."""
    return [Job(split, path.name[: -len(AUDIO_SUFFIX)], path)
            for split in SPLITS
            for path in sorted((data_dir / split).glob(f"*{AUDIO_SUFFIX}"))]


def cache_recording(cache: LogMelCache, job: Job) -> str | None:
    """Compute and save one recording; returns None, or why it failed (one line).

    Runs in a worker process. Audio errors are returned, not raised, so one corrupt
    file does not stop the others.
    """
    try:
        cache.save(job.split, job.recording_id, file_log_mel(job.audio, cache.features))
    except (RuntimeError, ValueError, OSError) as error:  # LibsndfileError is a RuntimeError
        return " ".join(str(error).split()) or type(error).__name__
    return None


def _one_thread_each() -> None:
    """Worker start: BLAS (the mel projection) on one thread, so N workers use N cores; with
    a thread pool per worker, N workers would each run one thread per core and fight."""
    threadpool_limits(1)


def build_cache(cache: LogMelCache, jobs: list[Job], workers: int) -> dict[Job, str]:
    """Cache `jobs` with `workers` processes and a progress bar; returns failures by job."""
    failures: dict[Job, str] = {}
    warm_up(cache.features)  # once here, inherited by the forked workers
    progress = tqdm(total=len(jobs), unit="rec", desc="log-mel", file=sys.stderr, dynamic_ncols=True)
    # Processes, not threads: STFT and mel projection hold the GIL for much of their time.
    with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread_each) as pool:
        futures = {pool.submit(cache_recording, cache, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                error = future.result()
                if error is not None:
                    failures[futures[future]] = error
                    progress.write(f"FAILED {futures[future].audio}: {error}", file=sys.stderr)
                progress.update()
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            progress.close()
    return failures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = FeatureConfig()
    parser = argparse.ArgumentParser(
        prog="python -m trainable.prepare",
        description="Build the float16 log-mel cache of an RFCx data directory (train/ and test/"
                    " flac files). Idempotent: a second run caches only what is missing.")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="RFCx-layout directory: train_tp.csv, train_fp.csv, train/, test/")
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


def prepare(data_dir: Path, cache_dir: Path, features: FeatureConfig, workers: int) -> int:
    """Validate, then cache what is missing; returns the exit code."""
    annotations = load_annotations(data_dir)
    check_audio(annotations, data_dir)
    jobs = find_recordings(data_dir)
    if not jobs:
        raise AnnotationError(f"no {AUDIO_SUFFIX} files in {data_dir / 'train'} or {data_dir / 'test'}")
    cache = LogMelCache.create(cache_dir, features)
    cache.remove_partial_files()
    todo = [job for job in jobs if not cache.has(job.split, job.recording_id)]
    counts = ", ".join(f"{sum(j.split == s for j in jobs)} {s}" for s in SPLITS)
    if not todo:
        print(f"cache up to date: {len(jobs)} recordings ({counts}) in {cache.root}; nothing to do")
        return 0
    print(f"caching {len(todo)} of {len(jobs)} recordings ({counts}) into {cache.root}"
          f" with {min(workers, len(todo))} workers")
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
    cache_dir = args.cache_dir or args.data_dir / DEFAULT_CACHE_NAME
    try:
        return prepare(args.data_dir, cache_dir, args.features, args.workers)
    except (AnnotationError, CacheError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished arrays are kept; run the same command again to complete the cache",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
