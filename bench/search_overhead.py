"""Search overhead: the wall time of a whole real search (search/run.py: Ray's start, the
trials' start-up, checkpoints, reports) against the trials' own training time divided by
the number of trials that run at once.

    python -m bench.search_overhead [--trials 8] [--epochs 11]

Target: overhead <= 5% for trials of >= 30 s. Every trial runs all its epochs (the grace
period is the whole budget), so ASHA's stops do not shorten the figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import cores, header, synthetic_data, verdict

TARGET = 0.05
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.search_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials (default: 8, a search's default)")
    parser.add_argument("--epochs", type=int, default=11,
                        help="epochs per trial (default: 11, about 60 s per trial of the quick preset on 2 cores)")
    parser.add_argument("--concurrent", type=int, default=cores(), help="trials at once, one CPU each"
                                                                        " (default: all cores)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    synthetic_data()  # generated before the clock starts: it is made once per machine, not per search
    header(f"search overhead: {args.trials} trials x {args.epochs} epochs, {args.concurrent} at once")
    with tempfile.TemporaryDirectory(prefix="rfcx-bench-search-") as storage:
        command = [sys.executable, str(REPO / "search/run.py"), "--space", "loss_weights", "--storage", storage,
                   "--name", "overhead", "--num-samples", str(args.trials), "--epochs", str(args.epochs),
                   "--grace-period", str(args.epochs), "--max-concurrent", str(args.concurrent)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"the search failed:\n{done.stderr[-2000:]}")
        board = pd.read_csv(Path(storage) / "overhead" / "leaderboard.csv")
    assert (board.status == "completed").all(), board.status.tolist()
    training = board.wall_s.sum()
    ideal = training / args.concurrent
    overhead = wall / ideal - 1
    print(f"trial training time: {board.wall_s.min():.0f}-{board.wall_s.max():.0f} s per trial, {training:.0f} s"
          f" in all; / {args.concurrent} at once = {ideal:.0f} s")
    print(f"search wall time:    {wall:.0f} s (the whole command)")
    print(f"search overhead:     {overhead:.1%} (target <= {TARGET:.0%}: {verdict(overhead, TARGET, False)})")


if __name__ == "__main__":
    main()
