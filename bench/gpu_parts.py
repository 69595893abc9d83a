"""The GPU check's measurements (bench.gpu_check runs each part in a process of its own): the
real-sized cache, the recipe's trial against the bare step and its epoch's GPU and host time,
trials packed on one GPU, and a 2-epoch search. Each returns its table rows; the words of a row
come from a function of the measured numbers alone, so the CPU tests check them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from bench.common import cores
from bench.gpu_check import REPO, CheckFailed, Row, attempt, last_line
from bench.real_sized import DONE, RECORDINGS, real_sized_data, real_sized_root
from trainable.training.fit import Device

BATCH, WIDTH = 64, 512  # the recipe's
REPEATS = 3  # paired passes per autocast, after a warm-up pair
AUTOCASTS = (("bfloat16 autocast", torch.bfloat16), ("float16 autocast + GradScaler (a T4's path, forced)",
                                                     torch.float16))
PACKS = (1, 2, 4)  # trials per GPU: --gpus-per-trial 1, 0.5, 0.25
PACK_SECONDS = 10.0  # the measured window of each packing
SEARCH_TRIALS = 2
SEARCH = ["--space", "loss_weights", "--epochs", "2", "--num-samples", str(SEARCH_TRIALS), "--max-failures", "0",
          "--set", "model.pretrained=false"]  # no model hub is reachable from a lent GPU machine


def data(args: argparse.Namespace) -> Path:
    return real_sized_data(progress=False, recordings=args.recordings or RECORDINGS)


def data_rows(args: argparse.Namespace) -> list[Row]:
    """The real-sized cache: built here once, reused by the other parts (and later checks)."""
    recordings = args.recordings or RECORDINGS
    built = "reused" if (real_sized_root(recordings) / DONE).is_file() else "built now"
    root = real_sized_data(progress=False, recordings=recordings)
    arrays = list((root / "logmel" / "train").glob("*.npy"))
    size = sum(path.stat().st_size for path in arrays)
    tp = pd.read_csv(root / "train_tp.csv").recording_id.nunique()
    fewer = "" if recordings == RECORDINGS else f" (FEWER than the real-sized {RECORDINGS:,}, for the time budget)"
    return [("real-sized cache (bench.real_sized)",
             f"{len(arrays):,} train recordings{fewer} of 60 s, {tp:,} with tp rows; 128 x 3751 float16 arrays,"
             f" {size / 1e9:.1f} GB; no audio, no test recordings; {built}", True)]


def recipe_device(amp: torch.dtype | None = None) -> Device:
    """The GPU as a trial with the whole GPU and the machine's cores gets it (trainable.tune.assigned_device)."""
    torch.backends.cudnn.benchmark = True
    return Device(torch.device("cuda"), cores(), force_amp=amp)


def trial_rows(args: argparse.Namespace) -> list[Row]:
    from bench.train_efficiency import paired_rates

    where = data(args)
    rows = []
    for words, amp in AUTOCASTS:
        def measure(amp: torch.dtype = amp) -> str:
            paired = paired_rates("resnet18", BATCH, WIDTH, REPEATS, recipe_device(amp), where, n_folds=5)
            return paired_words(paired.ours, paired.bare, paired.ratio, paired.steps, paired.batch)

        rows.append(attempt(f"recipe trial vs bare step: resnet18, fold 0 of 5, batch {BATCH}, 128 x {WIDTH},"
                            f" channels_last, {words}", measure))
    rows.append(attempt("recipe epoch (5 folds, their validation), bfloat16: GPU vs host time",
                        lambda: epoch_words(*epoch_split(where))))
    return rows


def paired_words(ours: float, bare: float, ratio: float, steps: int, batch: int) -> str:
    return (f"{ours:,.0f} vs {bare:,.0f} samples/s: {ratio:.2f} of the bare step (the same model's forward,"
            f" backward and Adam step on one random batch); {steps} batches of {batch} a pass,"
            f" medians of {REPEATS} paired passes")


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals: the time a GPU ran at least one kernel."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def epoch_split(where: Path) -> tuple[float, float, int, int]:
    """The recipe's epoch on the GPU after a warm-up epoch: its wall seconds, the seconds the GPU
    was busy (kernels and copies, from torch's profiler, CUDA activity only: it adds nothing on
    the host), its training crops and validation windows."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from bench.common import trial
    from bench.host_ceiling import epoch_items

    training = trial({"model.backbone": "resnet18"}, recipe_device(), where)  # the recipe: 5 folds, batch 64
    training.run_epoch()  # warm-up: loader workers, cuDNN's autotuning, the allocator
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        started = time.perf_counter()
        training.run_epoch()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    intervals = [(event.time_range.start, event.time_range.end) for event in profiler.events()
                 if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)]
    if not intervals:
        raise CheckFailed("torch's profiler recorded no CUDA activity (CUPTI unavailable?)")
    crops, windows = epoch_items(training)
    return wall, busy_seconds(intervals) / 1e6, crops, windows  # the profiler's times are in microseconds


def epoch_words(wall: float, busy: float, crops: int, windows: int) -> str:
    host = max(wall - busy, 0.0)
    return (f"{wall:.1f} s for {crops:,} crops and {windows:,} windows: GPU busy {busy:.1f} s ({busy / wall:.0%}),"
            f" waiting for the host {host:.1f} s ({host / wall:.0%}: data, Python, launches, syncs)")


def packing_rows(args: argparse.Namespace) -> list[Row]:
    from bench import gpu_packing

    flags = argparse.Namespace(backbone="resnet18", batch_size=BATCH, seconds=PACK_SECONDS, data=str(data(args)))
    first: list[tuple[int, float]] = []  # the first packing that ran: trials per GPU, their total

    def measure(pack: int) -> str:
        rates, busy = gpu_packing.measure(flags, pack)
        first.append((pack, sum(rates)))
        return gpu_packing.summary(rates, busy, first[0][1], first[0][0])

    rows = []
    for pack in PACKS:
        check = (f"{pack} trial{'s' if pack > 1 else ''} per GPU (--gpus-per-trial {1 / pack:g}), {cores() // pack}"
                 f" CPUs each, {PACK_SECONDS:g} s")
        rows.append(attempt(check, partial(measure, pack)))
    return rows


def search_rows(args: argparse.Namespace) -> list[Row]:
    """The mission's command (search/run.py --space loss_weights --data-dir DATA) for 2 epochs of 2
    trials, as a user runs it: the resources are its defaults on this machine."""
    recordings = args.recordings or RECORDINGS
    return [attempt(f"2-epoch search of the recipe, {SEARCH_TRIALS} trials, {recordings:,} recordings:"
                    f" search/run.py {' '.join(SEARCH)}", lambda: search(data(args)))]


def search(where: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="rfcx-gpu-check-search-") as storage:
        command = [sys.executable, str(REPO / "search/run.py"), "--data-dir", str(where), "--storage", storage,
                   "--name", "gpu-check", *SEARCH]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=storage, env=os.environ)
        wall = time.perf_counter() - started
        print(done.stdout, done.stderr, sep="\n")  # into the part's log
        if done.returncode != 0:
            raise CheckFailed(f"search/run.py exited {done.returncode}: {last_line(done.stderr or done.stdout)}")
        return search_words(done.stdout, pd.read_csv(Path(storage) / "gpu-check" / "leaderboard.csv"), wall)


def search_words(stdout: str, board: pd.DataFrame, wall: float) -> str:
    """The search's outcome from its console and leaderboard; every trial must have completed."""
    statuses = list(board.status)
    if statuses.count("completed") != len(statuses) or len(statuses) != SEARCH_TRIALS:
        raise CheckFailed(f"trials {', '.join(statuses) or 'none'} (want {SEARCH_TRIALS} completed)")
    share = re.search(r"each trial: [^;]*", stdout)
    return (f"{len(statuses)} trials completed in {wall:.0f} s (Ray's start included), best score"
            f" {board.score.max():.4f}; {share.group(0) if share else 'no start-up line found'}")

