"""The GPU check: every path only a GPU takes, measured in one command within 8 minutes on one
H100-class GPU, in one table (markdown, for docs/benchmarks.md).

    python -m bench.gpu_check [--only PART ...] [--recordings N] [--logs DIR]

Its parts, each in a process of its own under a time limit (PARTS; their sum stays within
BUDGET_S), so that one that fails or hangs costs its own row only, says why in one line, and
leaves no process behind:

    data     the real-sized cache without audio (bench.real_sized), built once, reused after
    trial    the recipe's trial (resnet18, 5 folds, batch 64, 128 x 512, channels_last) against
             the bare step of the same model, in bfloat16 autocast and in float16 with its
             GradScaler (a T4's path, forced), and its epoch split into GPU and host time
    packing  1, 2 and 4 trials packed on the GPU (bench.gpu_packing): samples/s, utilisation
    oom      a batch that cannot fit: the trial ends with one line and its retry fails at once
    sigterm  SIGTERM mid-epoch: the retry resumes there with the CUDA random generator's state
    search   the mission's command, 2 epochs of 2 trials on the real-sized cache

Exit codes: 0 every row passed; 1 a row failed (the table says why); 2 bad flags; 3 no CUDA
GPU here: one line, nothing run. Light imports only at the top: without a GPU it answers at once.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0  # the whole check on one H100-class GPU
NO_GPU_EXIT = 3
NO_GPU = "no CUDA GPU here (torch.cuda.is_available() is false): the GPU check needs one; nothing was run"
KILL_GRACE_S = 3.0  # between SIGTERM and SIGKILL to a part out of time

Row = tuple[str, str, bool]  # the check, its result in words, whether it passed


class CheckFailed(Exception):
    """A measurement ran but did not show what it checks; the message says what it saw."""


@dataclass(frozen=True)
class Part:
    name: str
    title: str  # the check a failed part's row names
    limit_s: float
    run: str  # "module:function", called with the parsed flags in the part's own process; returns its rows


PARTS = (
    Part("data", "real-sized cache", 60, "bench.gpu_parts:data_rows"),
    Part("trial", "the recipe's trial vs the bare step", 80, "bench.gpu_parts:trial_rows"),
    Part("packing", "trials packed on one GPU", 85, "bench.gpu_parts:packing_rows"),
    Part("oom", "out of GPU memory", 45, "bench.gpu_faults:oom_rows"),
    Part("sigterm", "SIGTERM mid-epoch", 70, "bench.gpu_faults:sigterm_rows"),
    Part("search", "2-epoch search", 110, "bench.gpu_parts:search_rows"),
)


@dataclass
class Outcome:
    """What one part gave: its rows and its wall time."""

    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[part.name for part in PARTS], metavar="PART",
                        help=f"run these parts only ({', '.join(part.name for part in PARTS)}; default: all)")
    parser.add_argument("--recordings", type=int, default=None,
                        help="train recordings of the real-sized cache (default: bench.real_sized's 2,200;"
                             " fewer are said in the table)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="folder for each part's output (default: a new temporary folder, named in the header)")
    # A part's own process: its function (Part.run) and the file for its rows.
    parser.add_argument("--part", nargs=2, metavar=("MODULE:FUNCTION", "ROWS_FILE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def one_line(error: BaseException) -> str:
    """An error in one line: its type and the first line of its message."""
    if isinstance(error, CheckFailed):
        return str(error).splitlines()[0]
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def attempt(check: str, measure: Callable[[], str]) -> Row:
    """The row of one measurement: its words, or why it failed (the part goes on with the next)."""
    try:
        return check, measure(), True
    except Exception as error:  # any failure of a measurement is its row's; the others still run
        return check, f"failed: {one_line(error)}", False


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run_part(command: list[str], limit_s: float, title: str, log: Path, env: dict[str, str] | None = None) -> Outcome:
    """Run one part's process, `command` with the file for its rows appended, for at most
    `limit_s` seconds; its output goes to `log`.

    The part writes its rows (JSON) to that file and exits 0. Exiting otherwise, or running out
    of time (its whole process group is ended: Ray's processes and loader workers with it), gives
    one failed row naming `title` and why, in one line.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rfcx-gpu-check-") as scratch, open(log, "w") as output:
        rows_file = Path(scratch) / "rows.json"
        process = subprocess.Popen([*command, str(rows_file)], stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env, cwd=REPO)
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            end_group(process)
            why = f"timed out after {limit_s:.0f} s (its last line: {last_line(log.read_text())})"
            return Outcome([(title, why, False)], time.perf_counter() - started)
        finally:
            end_group(process)  # what it started and left running (a loader worker, a Ray process)
        seconds = time.perf_counter() - started
        if code != 0 or not rows_file.exists():
            return Outcome([(title, f"failed (exit code {code}): {last_line(log.read_text())}", False)], seconds)
        return Outcome([(check, result, ok) for check, result, ok in json.loads(rows_file.read_text())], seconds)


def end_group(process: subprocess.Popen) -> None:
    """End the process group of `process` (its session): SIGTERM, then SIGKILL to what is left."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # nothing left in the group
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap the part itself: a zombie still counts as the group's member
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    process.wait()


def cell(text: str) -> str:
    """Text as one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def table(outcomes: list[tuple[Part, Outcome]]) -> str:
    """The check's table: a row per measurement, the part's seconds on its first row."""
    lines = ["| check | result | s |", "|---|---|---|"]
    for _, outcome in outcomes:
        for index, (check, result, ok) in enumerate(outcome.rows):
            seconds = f"{outcome.seconds:.0f}" if index == 0 else ""
            lines.append(f"| {cell(check)} | {cell(result if ok else '**' + result + '**')} | {seconds} |")
    return "\n".join(lines)


def part_command(part: Part, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "bench.gpu_check"]
    if args.recordings is not None:
        command += ["--recordings", str(args.recordings)]
    return [*command, "--part", part.run]


def run_one(args: argparse.Namespace) -> int:
    """In a part's own process: run it, write its rows; a failure outside its rows is one line."""
    spec, rows_file = args.part
    module, function = spec.split(":")
    try:
        rows = getattr(importlib.import_module(module), function)(args)
    except Exception as error:  # the whole part failed: one line for its row (the traceback stays in the log)
        import traceback

        traceback.print_exc()
        print(f"error: {one_line(error)}", flush=True)
        return 1
    Path(rows_file).write_text(json.dumps(rows))
    return 0


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part:
        return run_one(args)
    import warnings

    import torch

    with warnings.catch_warnings():  # torch warns where a CUDA build finds no driver: the line below says it
        warnings.simplefilter("ignore")
        if not torch.cuda.is_available():
            print(NO_GPU, file=sys.stderr)
            return NO_GPU_EXIT
    from bench.common import machine

    logs = args.logs or Path(tempfile.mkdtemp(prefix="rfcx-gpu-check-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}  # no network: no hub, no usage stats
    outcomes = []
    for part in (part for part in PARTS if not args.only or part.name in args.only):
        print(f"# {part.name}: at most {part.limit_s:.0f} s ...", file=sys.stderr, flush=True)
        outcome = run_part(part_command(part, args), part.limit_s, part.title, logs / f"{part.name}.log", env)
        outcomes.append((part, outcome))
    from bench.real_sized import RECORDINGS

    print(f"# GPU check, {datetime.date.today()}, commit {commit()}: {machine()}")
    if args.recordings not in (None, RECORDINGS):
        print(f"# the real-sized cache has {args.recordings:,} train recordings: FEWER than the real-sized"
              f" {RECORDINGS:,}")
    print(f"# each part's output: {logs}\n")
    print(table(outcomes), flush=True)
    return 0 if all(outcome.passed for _, outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
