"""The built-in default search as a new user runs it: `make run`'s command on a fresh cache
(the synthetic data generated on the way), timed, and what it found; beside it the machine's
bare speed for the quick preset's model, and optionally the backbones it was chosen from.

    python -m bench.quick_search [--reuse-data] [--backbones test_resnet resnet10t ...]

Targets (issue 14): at most 5 minutes wall; the best trial's cv_lwlrap >= 0.80 and the median
trial's at least 0.05 below it; ASHA stops >= 3 of the 8 trials; the best trial and the recipe
point both scored on the holdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bench.common import header, synthetic_data, verdict
from datatools.builtin import FEATURES, QUICK_PRESET, QUICK_TRAINING, SYNTHETIC
from search.results.holdout import PRIVATE, PUBLIC
from search.results.leaderboard import CV_COLUMNS
from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS
from trainable import reported
from trainable.config import ModelConfig, TrialConfig, from_dict
from trainable.dotted import merge
from trainable.model.sed import CLIP_ATT, SEDModel
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining

REPO = Path(__file__).resolve().parents[1]
WALL_TARGET_S, BEST_TARGET, MEDIAN_GAP_TARGET, STOPPED_TARGET = 300.0, 0.80, 0.05, 3
COMMAND = ["search/run.py", "--space", "loss_weights"]  # make run's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.quick_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse-data", action="store_true",
                        help="use the synthetic data already in ~/.cache/rfcx-tune (default: generate them in a"
                             " fresh cache, as on a new machine)")
    parser.add_argument("--backbones", nargs="*", default=[],
                        help="also train the recipe point once (one core, the preset otherwise) with each of these"
                             " backbones: their bare speed, cv_lwlrap after the preset's epochs and time")
    return parser.parse_args(argv)


def bare_speed(backbone: str, seconds: float = 3.0) -> float:
    """Training samples/s of the preset's model on one core: forward, backward and Adam step on
    random input of the preset's shape (no data path, no evaluation)."""
    torch.set_num_threads(1)
    model = SEDModel(ModelConfig(backbone=backbone, pretrained=False), SYNTHETIC["species"])
    optimiser = torch.optim.Adam(model.parameters())
    batch = QUICK_TRAINING["train.batch_size"]
    x = torch.randn(batch, model.config.in_chans, FEATURES["n_mels"], QUICK_PRESET["data.crop_frames"])
    target = torch.zeros(batch, SYNTHETIC["species"])

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[CLIP_ATT], target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    step()  # warm-up
    rates = []
    for _ in range(3):
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            step()
            steps += 1
        rates.append(steps * batch / (time.perf_counter() - started))
    return statistics.median(rates)


def recipe_point_trial(backbone: str) -> tuple[float, float]:
    """(cv_lwlrap after the preset's epochs, seconds) of the recipe point with `backbone`, on one core."""
    torch.set_num_threads(1)
    config = from_dict(TrialConfig, merge({**QUICK_PRESET, **QUICK_TRAINING, "data_dir": str(synthetic_data())},
                                          {"model.backbone": backbone}))
    training, started = KFoldTraining(config, Device(torch.device("cpu"))), time.perf_counter()
    metrics = {}
    while training.epoch < config.train.epochs:
        metrics = training.run_epoch()
    return metrics[reported.CV], time.perf_counter() - started


def default_search(reuse_data: bool, storage: Path) -> tuple[float, Path, str]:
    """(wall seconds, experiment directory, output) of make run's search."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if not reuse_data:
        env["XDG_CACHE_HOME"] = str(storage / "cache")  # where search/run.py puts the built-in data
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *COMMAND, "--storage", str(storage), "--name", "quick"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the search failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return wall, storage / "quick", done.stdout


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    backbone = QUICK_PRESET["model.backbone"]
    header(f"the default search: {' '.join(COMMAND)}, {'reusing the data' if args.reuse_data else 'a fresh cache'}")
    speed = bare_speed(backbone)
    print(f"bare speed of the preset's model ({backbone}, {FEATURES['n_mels']} x {QUICK_PRESET['data.crop_frames']},"
          f" batch {QUICK_TRAINING['train.batch_size']}): {speed:.0f} training samples/s per core", flush=True)
    with tempfile.TemporaryDirectory(prefix="rfcx-bench-quick-") as storage:
        wall, experiment, output = default_search(args.reuse_data, Path(storage))
        board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
        artefacts = {name: (experiment / name).is_file() for name in ("leaderboard.md", "best_config.yaml", "study.db")}
        events = sum(1 for trial in experiment.glob("trial_*") if any(trial.glob("events.out.tfevents.*")))
    cv = board[CV_COLUMNS[reported.BEST_CV]]  # each trial's best epoch's pooled CV
    best, median = cv.max(), cv.median()
    stopped_words = SCHEDULERS[DEFAULT_SCHEDULER].stopped_words  # make run's scheduler
    stopped = int(board.status.str.startswith(stopped_words).sum())
    completed = board[board.status == "completed"]
    first, recipe = board.iloc[0], board[board.recipe_point].iloc[0]
    print(f"wall time: {wall:.0f} s (target <= {WALL_TARGET_S:.0f}: {verdict(wall, WALL_TARGET_S, False)})")
    print(f"trials: {len(board)}, {stopped} {stopped_words} (target >= {STOPPED_TARGET}:"
          f" {verdict(stopped, STOPPED_TARGET)}), {len(completed)} completed")
    print(f"cv_lwlrap: best {best:.4f} (target >= {BEST_TARGET}: {verdict(best, BEST_TARGET)}), median {median:.4f}"
          f" ({best - median:.4f} below; target >= {MEDIAN_GAP_TARGET}: {verdict(best - median, MEDIAN_GAP_TARGET)});"
          f" completed trials {cv[completed.index].min():.4f}-{cv[completed.index].max():.4f}")
    scored = all(pd.notna(row[PUBLIC]) and pd.notna(row[PRIVATE]) for row in (first, recipe))
    print(f"holdout: best trial {first.trial} public {first[PUBLIC]:.4f} private {first[PRIVATE]:.4f}; recipe point"
          f" {recipe.trial} public {recipe[PUBLIC]:.4f} private {recipe[PRIVATE]:.4f} (both scored:"
          f" {'met' if scored else 'NOT met'})")
    print(f"files: {', '.join(name for name, there in artefacts.items() if there)}; TensorBoard events in {events}"
          f" of {len(board)} trial directories")
    print("the search's closing lines:\n" + "\n".join(line for line in output.splitlines()
                                                       if line.startswith(("holdout:", "CV vs holdout"))))
    for name in args.backbones:
        lwlrap, seconds = recipe_point_trial(name)
        print(f"backbone {name:22s} bare {bare_speed(name):6.0f} samples/s per core; the recipe point: cv_lwlrap"
              f" {lwlrap:.4f} after {QUICK_TRAINING['train.epochs']} epochs in {seconds:.0f} s on one core", flush=True)


if __name__ == "__main__":
    main()
