"""What the benchmarks share: the machine, the data, a trial to measure, and how figures print.

Figures are medians of repeats, and every target is a ratio of two things measured in the
same run, interleaved, so a noisy machine moves both sides alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from datatools.builtin import default_data_dir, ensure_synthetic
from trainable.config import TrialConfig, from_dict
from trainable.dotted import merge
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining


def machine() -> str:
    """One line: CPU model and cores, GPU, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, {gpu}, torch {torch.__version__}"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def efficiency_parser(module: str, doc: str, measured: str) -> argparse.ArgumentParser:
    """The flags of a paired efficiency benchmark: the backbone, the repeats, the threads."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", help="timm backbone (default: resnet18)")
    parser.add_argument("--repeats", type=int, default=5, help=f"measured {measured} on each side (default: 5)")
    parser.add_argument("--threads", type=int, default=cores(), help="torch threads (default: all cores)")
    return parser


def synthetic_data() -> Path:
    """The built-in synthetic dataset (as `search/run.py` uses it), generated on first use."""
    return ensure_synthetic(default_data_dir(), workers=cores())


def trial(overrides: dict, device: Device | None = None, data: Path | None = None) -> KFoldTraining:
    """A trial of the recipe over `data` (default: the synthetic data) with `overrides` (dotted
    keys), without ImageNet weights (as the built-in data's preset)."""
    data = data or synthetic_data()
    config = from_dict(TrialConfig, merge({"data_dir": str(data), "model.pretrained": False}, overrides))
    return KFoldTraining(config, device or Device(torch.device("cpu")))


def timed(work: Callable[[], int]) -> float:
    """Items per second of `work`, which returns how many items it did."""
    started = time.perf_counter()
    items = work()
    return items / (time.perf_counter() - started)


def interleaved(measure: Callable[[], float], baseline: Callable[[], float],
                repeats: int) -> tuple[float, float, float]:
    """Medians of `measure`, of `baseline` and of their per-repeat ratio, measured in turns.

    One warm-up round of each comes first (allocator, caches, cuDNN autotuning).
    """
    measure(), baseline()
    pairs = [(measure(), baseline()) for _ in range(repeats)]
    ours, theirs = zip(*pairs)
    return statistics.median(ours), statistics.median(theirs), statistics.median(a / b for a, b in pairs)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def header(title: str) -> None:
    print(f"# {title}\n# machine: {machine()}", flush=True)
