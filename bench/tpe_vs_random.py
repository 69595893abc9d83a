"""What Optuna's TPE buys over random sampling: the same search (space, trials, epochs, ASHA,
the built-in data and its quick preset) run with each sampler under several seeds, each judged
by its best trial's score on the holdout.

Each search is the product's own (search/run.py's plan, run by search.tuner.session.run_search),
which scores its top trials and the recipe point on the holdout at the end; the table reads
their leaderboards. Ray's progress output goes to a log file, named at the start.

    python -m bench.tpe_vs_random [--space loss_weights] [--trials 8] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray

from bench.common import header, synthetic_data
from search import run
from search.plan import SAMPLERS
from search.results.holdout import PRIVATE, PUBLIC
from search.results.leaderboard import LEADERBOARD_CSV
from search.tuner.session import run_search
from spaces import SPACES
from trainable.reported import SCORE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tpe_vs_random", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="loss_weights", choices=list(SPACES), help="(default: loss_weights)")
    parser.add_argument("--trials", type=int, default=8, help="trials per search (default: 8, as make run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds (default: 0 1 2)")
    return parser.parse_args(argv)


def holdout(row: pd.Series) -> float:
    """A trial's holdout score: the mean of the public and the private half."""
    return (row[PUBLIC] + row[PRIVATE]) / 2


def search(space: str, trials: int, sampler: str, seed: int, storage: Path, log) -> dict:
    """One search; its best trial's CV and holdout scores and the recipe point's holdout."""
    name = f"{sampler}-{seed}"
    plan = run.make_plan(run.parse_args(["--space", space, "--num-samples", str(trials), "--sampler", sampler,
                                         "--seed", str(seed), "--storage", str(storage), "--name", name,
                                         "--repeats", "1"]))  # the samplers' proposals only, as measured before repeats
    started = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = run_search(plan, address=None)
        ray.shutdown()
    if code != 0:
        raise RuntimeError(f"search {name} ended with exit code {code}; see {log.name}")
    board = pd.read_csv(storage / name / LEADERBOARD_CSV, dtype={"trial": str})
    best, recipe = board.iloc[0], board[board.recipe_point].iloc[0]
    return {"sampler": sampler, "seed": seed, "best trial": best.trial, "best score (CV)": best[SCORE],
            "best holdout": holdout(best), "public": best[PUBLIC], "private": best[PRIVATE],
            "recipe point holdout": holdout(recipe), "wall s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    synthetic_data()  # generated before the clock of the first search starts
    header(f"TPE vs random: {len(args.seeds)} seeds x {args.trials} trials of {args.space} per sampler, the"
           f" built-in data with the quick preset, ASHA as make run")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rfcx-bench-samplers-") as storage, \
            tempfile.NamedTemporaryFile("w", prefix="rfcx-bench-samplers-", suffix=".log", delete=False) as log:
        print(f"# Ray's output: {log.name}", flush=True)
        for sampler in SAMPLERS:
            for seed in args.seeds:
                rows.append(search(args.space, args.trials, sampler, seed, Path(storage), log))
                row = rows[-1]
                print(f"{sampler:6s} seed {seed}: best trial {row['best trial']} score {row['best score (CV)']:.4f},"
                      f" holdout {row['best holdout']:.4f} (recipe point {row['recipe point holdout']:.4f});"
                      f" {row['wall s']:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False))
    for sampler in SAMPLERS:
        mine = table[table.sampler == sampler]
        print(f"{sampler:6s}: best-trial holdout median {statistics.median(mine['best holdout']):.4f}"
              f" (min {mine['best holdout'].min():.4f}, max {mine['best holdout'].max():.4f}); best CV median"
              f" {statistics.median(mine['best score (CV)']):.4f}")


if __name__ == "__main__":
    main()
