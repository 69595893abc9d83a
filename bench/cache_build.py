"""Cache build scaling and trial start-up.

Recordings/s of the log-mel cache build (datatools.prepare) with 1 worker and with N (all
cores), over the synthetic dataset's flac files; and the time a trial takes to open the
cache, for a cache of R recordings and one of 10 x R.

    python -m bench.cache_build [--workers N] [--repeats 3]

Targets: scaling >= 0.8 x N; opening the cache independent of the number of recordings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import cores, header, synthetic_data, verdict
from datatools.prepare import build_cache, find_recordings
from trainable.data.cache import FeatureConfig, LogMelCache

SCALING_TARGET = 0.8  # of N
START_UP_RECORDINGS = (200, 2000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=cores(), help="N (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="builds with each worker count (default: 3)")
    return parser.parse_args(argv)


def build_rate(jobs: list, workers: int) -> float:
    """Recordings/s of one build of `jobs` into a fresh cache."""
    with tempfile.TemporaryDirectory(prefix="rfcx-bench-cache-") as root:
        cache = LogMelCache.create(Path(root), FeatureConfig())
        started = time.perf_counter()
        failures = build_cache(cache, jobs, workers)
        elapsed = time.perf_counter() - started
    assert not failures, failures
    return len(jobs) / elapsed


def open_seconds(recordings: int, repeats: int = 50) -> float:
    """Median seconds to open a cache of `recordings` arrays and read one, as a trial starts."""
    with tempfile.TemporaryDirectory(prefix="rfcx-bench-open-") as root:
        cache = LogMelCache.create(Path(root), FeatureConfig())
        array = np.zeros((128, 64), np.float16)  # the size does not matter: only the manifest is read
        for i in range(recordings):
            cache.save("train", f"rec{i:06d}", array)
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            LogMelCache.open(Path(root)).load("train", f"rec{i % recordings:06d}")
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    jobs = find_recordings(synthetic_data())
    header(f"cache build: {len(jobs)} recordings of the synthetic data, 1 vs {args.workers} workers")
    ones, many = [], []
    for _ in range(args.repeats):  # in turns, so drift on a noisy machine hits both
        ones.append(build_rate(jobs, 1))
        many.append(build_rate(jobs, args.workers))
    one, n = statistics.median(ones), statistics.median(many)
    scaling = n / one
    print(f"1 worker:   {one:.1f} recordings/s")
    print(f"{args.workers} workers:  {n:.1f} recordings/s")
    print(f"scaling:    {scaling:.2f} x (target >= {SCALING_TARGET * args.workers:.1f} x:"
          f" {verdict(scaling, SCALING_TARGET * args.workers)})")
    small, large = START_UP_RECORDINGS
    t_small, t_large = open_seconds(small), open_seconds(large)
    print(f"opening the cache: {t_small * 1e3:.2f} ms with {small} recordings, {t_large * 1e3:.2f} ms with"
          f" {large} ({t_large / t_small:.2f} x for 10 x the recordings)")


if __name__ == "__main__":
    main()
