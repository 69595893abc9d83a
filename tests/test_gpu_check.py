"""The GPU check (bench.gpu_check) where the CPU allows: its answer without CUDA, its parts run as
processes under time limits (stand-in parts here), the table, the words of every row from given
measurements, the trainable-vs-bare measurement on the CPU, and the real-sized cache the search
accepts. On a GPU, `python -m bench.gpu_check` itself runs (docs/benchmarks.md, "GPU check")."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_check import (
    BUDGET_S,
    KILL_GRACE_S,
    NO_GPU,
    NO_GPU_EXIT,
    PARTS,
    REPO,
    CheckFailed,
    Outcome,
    Part,
    attempt,
    run_part,
    table,
)

STARTUP_S = 10  # the check's own start (torch, the machine's line) before its first part


# Stand-in parts, run by `python -m bench.gpu_check --part tests.test_gpu_check:NAME ROWS_FILE`.
def ok_part(args: argparse.Namespace) -> list:
    return [("first | check", "42 samples/s", True), attempt("second", lambda: "fine")]


def slow_part(args: argparse.Namespace) -> list:
    print("warming up", flush=True)
    time.sleep(60)
    return []


def broken_part(args: argparse.Namespace) -> list:
    raise ValueError("boom\nsecond line of the message")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_without_cuda_it_exits_at_once_with_one_line():
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (NO_GPU_EXIT, "", NO_GPU + "\n")
    assert NO_GPU_EXIT == 3 and time.perf_counter() - started < 20  # torch's import only


def test_the_parts_time_limits_keep_the_whole_check_within_8_minutes():
    assert BUDGET_S == 480
    assert sum(part.limit_s for part in PARTS) + len(PARTS) * KILL_GRACE_S + STARTUP_S <= BUDGET_S
    assert [part.name for part in PARTS] == ["data", "trial", "packing", "oom", "sigterm", "search"]


@pytest.mark.slow  # part processes under time limits
def test_every_part_and_its_rows_and_seconds_go_into_one_table_and_failures_fail_the_check(tmp_path, monkeypatch,
                                                                                          capsys):
    """The check runs every part, each in its own process under its limit: one that fails or runs
    out of time becomes one row saying why, and the others go on."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("bench.common.machine", lambda: "a machine with a GPU")
    monkeypatch.setattr(gpu_check, "PARTS", (
        Part("ok", "ok part", 30, "tests.test_gpu_check:ok_part"),
        Part("slow", "slow part", 2, "tests.test_gpu_check:slow_part"),
        Part("broken", "broken part", 30, "tests.test_gpu_check:broken_part")))
    started = time.perf_counter()
    assert gpu_check.main(["--logs", str(tmp_path), "--recordings", "40"]) == 1
    assert time.perf_counter() - started < 30
    out = capsys.readouterr().out
    assert out.startswith("# GPU check, ") and "a machine with a GPU" in out
    assert "# the real-sized cache has 40 train recordings: FEWER than the real-sized 2,200" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0] == "| check | result | s |"
    assert rows[1].startswith("| first \\| check | 42 samples/s | ") and rows[2] == "| second | fine |  |"
    assert rows[3].startswith("| slow part | **timed out after 2 s (its last line: warming up)** | ")
    assert rows[4].startswith("| broken part | **failed (exit code 1): error: ValueError: boom** | ")
    assert len(rows) == 5
    assert "Traceback" in (tmp_path / "broken.log").read_text()  # the whole error stays in the part's log


@pytest.mark.slow  # part processes under time limits
def test_a_part_out_of_time_is_ended_with_the_processes_it_started(tmp_path):
    script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); print(child.pid, flush=True);"
              " time.sleep(60)")
    started = time.perf_counter()
    outcome = run_part([sys.executable, "-c", script], 2, "a part", tmp_path / "part.log")
    assert time.perf_counter() - started < 2 + KILL_GRACE_S + 3
    [(check, why, ok)] = outcome.rows
    child = int((tmp_path / "part.log").read_text())
    assert (check, why, ok) == ("a part", f"timed out after 2 s (its last line: {child})", False)
    assert not alive(child)


def test_a_part_that_ends_normally_leaves_nothing_behind_either(tmp_path):
    script = ("import json, subprocess, sys; child = subprocess.Popen(['sleep', '60']); print(child.pid);"
              " open(sys.argv[1], 'w').write(json.dumps([['c', 'r', True]]))")
    outcome = run_part([sys.executable, "-c", script], 30, "a part", tmp_path / "part.log")
    assert outcome.rows == [("c", "r", True)] and outcome.passed
    assert not alive(int((tmp_path / "part.log").read_text()))


def test_a_measurement_that_fails_is_its_rows_one_line_and_the_part_goes_on():
    assert attempt("x", lambda: "12 samples/s") == ("x", "12 samples/s", True)

    def saw() -> str:
        raise CheckFailed("saw 3 failures\nand more")

    def broke() -> str:
        raise RuntimeError("CUDA error: an illegal memory access\n  at line 3")

    assert attempt("x", saw) == ("x", "failed: saw 3 failures", False)
    assert attempt("x", broke) == ("x", "failed: RuntimeError: CUDA error: an illegal memory access", False)


def test_the_table_has_a_row_per_measurement_and_each_parts_seconds_on_its_first():
    outcomes = [(PARTS[0], Outcome([("cache", "2,200 recordings", True)], 12.4)),
                (PARTS[1], Outcome([("bf16", "1,000 vs 1,100\nsamples/s", True), ("fp16", "failed: x | y", False)],
                                   61.0))]
    assert table(outcomes) == ("| check | result | s |\n|---|---|---|\n| cache | 2,200 recordings | 12 |\n"
                               "| bf16 | 1,000 vs 1,100 samples/s | 61 |\n| fp16 | **failed: x \\| y** |  |")
    assert not outcomes[1][1].passed and outcomes[0][1].passed


def test_trainable_against_bare_step_on_the_cpu_under_forced_bfloat16_and_channels_last(cached_dir):
    """The trial part's measurement, with test_resnet at a tiny shape: both sides run the
    device's autocast and layout, in whole batches."""
    import torch

    from bench.gpu_parts import paired_words
    from bench.train_efficiency import paired_rates
    from trainable.training.fit import Device

    device = Device(torch.device("cpu"), 1, force_amp=torch.bfloat16, force_channels_last=True)
    paired = paired_rates("test_resnet", 8, 64, 1, device, cached_dir, n_folds=2)
    assert paired.ours > 0 and paired.bare > 0 and paired.ratio > 0 and paired.steps >= 1 and paired.batch == 8
    words = paired_words(1234.4, 1400.0, 0.88, 30, 64)
    assert words.startswith("1,234 vs 1,400 samples/s: 0.88 of the bare step") and "30 batches of 64" in words


def test_the_epoch_split_is_the_union_of_the_gpus_busy_intervals():
    from bench.gpu_parts import busy_seconds, epoch_words

    assert busy_seconds([(5, 6), (0, 2), (1, 3), (5.5, 5.7), (2, 2.5)]) == 4
    assert busy_seconds([]) == 0
    assert epoch_words(10.0, 7.5, 4550, 8800) == (
        "10.0 s for 4,550 crops and 8,800 windows: GPU busy 7.5 s (75%), waiting for the host 2.5 s (25%: data,"
        " Python, launches, syncs)")


def error_file(first_frame: str, retry_frame: str, line: str, allocator: str = "") -> str:
    """Ray's error.txt of a trial and its retry, as Ray 2.60 writes it (shortened)."""
    def failure(number: int, frame: str) -> str:
        return (f"Failure # {number} (occurred at 2026-12-08_02-14-2{number})\nray::ImplicitFunc.train() (pid=5405)\n"
                f'  File "/home/ray/rfcx-tune/trainable/tune.py", line 75, in train_sed\n'
                f'  File "/home/ray/rfcx-tune/trainable/tune.py", line 138, in {frame}\n{allocator}'
                f"trainable.training.out_of_memory.OutOfGPUMemoryError: {line}\n")
    return failure(1, first_frame) + failure(2, retry_frame)


def test_the_out_of_memory_row_needs_one_line_then_a_retry_refused_before_training():
    from bench.gpu_faults import IMPOSSIBLE_BATCH, oom_words
    from trainable.config import resolve
    from trainable.training.out_of_memory import out_of_memory_message

    line = out_of_memory_message(1.0, resolve({"data_dir": "/d", "train.batch_size": IMPOSSIBLE_BATCH}).train)
    words = oom_words(line, error_file("run_epoch", "refuse_a_failed_trial", line))
    assert words.startswith("one line: `out of GPU memory at 1 GPU per trial with train.batch_size 100000"
                            " (train.eval_recordings 8)` (and the advice)")
    with pytest.raises(CheckFailed, match="retry in refuse_a_failed_trial"):  # the retry trained again
        oom_words(line, error_file("run_epoch", "run_epoch", line))
    with pytest.raises(CheckFailed, match="allocator report"):
        oom_words(line, error_file("run_epoch", "refuse_a_failed_trial", line, "Tried to allocate 2.00 GiB\n"))
    with pytest.raises(CheckFailed, match="1 failures"):
        oom_words(line, error_file("run_epoch", "refuse_a_failed_trial", line).split("Failure # 2")[0])
    with pytest.raises(CheckFailed, match="no failure: the batch fit"):
        oom_words(line, "")
    with pytest.raises(CheckFailed, match="did not end with the out-of-memory line"):
        oom_words(line, error_file("run_epoch", "refuse_a_failed_trial", "another line"))


def test_the_sigterm_row_needs_the_retry_to_resume_where_the_exit_checkpointed():
    from bench.gpu_faults import preemption_words

    where = "epoch 2, fold 1, after batch 3 of 14"
    log = [f"pid 10: exiting: checkpointed at {where}", f"pid 11: resumed at {where}"]
    assert preemption_words([(1, 10), (1, 11), (2, 11)], log) == (
        f"checkpointed at {where}; the retry (another process) resumed there and finished epoch 2")
    with pytest.raises(CheckFailed, match="want the exit's checkpoint"):
        preemption_words([(1, 10), (1, 11), (2, 11)], [log[0], "pid 11: resumed at epoch 2, fold 0, after batch 1"])
    with pytest.raises(CheckFailed, match="want the exit's checkpoint"):  # the SIGTERM came between epochs
        preemption_words([(1, 10), (1, 11), (2, 11)], ["pid 10: exiting: checkpointed at epoch 2 not begun",
                                                       "pid 11: resumed at epoch 2 not begun"])
    with pytest.raises(CheckFailed, match="results"):  # no SIGTERM landed: one process did it all
        preemption_words([(1, 10), (2, 10)], [])


def test_the_search_row_needs_every_trial_completed_and_says_what_each_got():
    import pandas as pd

    from bench.gpu_parts import search_words

    stdout = ("[rfcx-tune] starting experiment /s/gpu-check: recipe v1_7, spaces loss_weights (sampler tpe); 2 trials"
              " of 2 epochs; each trial: 1 GPU, 16 CPUs; ASHA grace 2, reduction 3\n")
    board = pd.DataFrame({"status": ["completed", "completed"], "score": [0.31, 0.29]})
    assert search_words(stdout, board, 71.6) == ("2 trials completed in 72 s (Ray's start included), best score"
                                                 " 0.3100; each trial: 1 GPU, 16 CPUs")
    with pytest.raises(CheckFailed, match="completed, errored: boom"):
        search_words(stdout, board.assign(status=["completed", "errored: boom"]), 71.6)


def test_the_real_sized_cache_of_fewer_recordings_is_said_and_accepted_by_the_searchs_checks(tmp_path, monkeypatch):
    """bench.real_sized's arrays are recorded as imported without audio, so search/run.py's
    check of the cache accepts them; a smaller cache has a name of its own and says FEWER."""
    from bench.gpu_parts import data_rows
    from search.datadir import check_cached, open_data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = argparse.Namespace(recordings=40)
    [(check, words, ok)] = data_rows(args)
    assert ok and words.startswith("40 train recordings (FEWER than the real-sized 2,200, for the time budget) of 60 s")
    assert words.endswith("built now")
    root = tmp_path / "rfcx-tune" / "host-bench-v2-40"
    check_cached(open_data(root))  # raises CacheError for a stale or missing array
    assert data_rows(args)[0][1].endswith("reused")


def test_each_part_runs_its_function_in_a_process_of_its_own_with_the_cache_size():
    args = gpu_check.parse_args(["--recordings", "500"])
    assert gpu_check.part_command(PARTS[1], args) == [sys.executable, "-m", "bench.gpu_check", "--recordings", "500",
                                                      "--part", "bench.gpu_parts:trial_rows"]
    for part in PARTS:  # every part's function exists
        module, function = part.run.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function))


def test_a_part_that_raises_outside_its_rows_writes_one_line_last(tmp_path, capsys):
    rows_file = tmp_path / "rows.json"
    assert gpu_check.main(["--part", "tests.test_gpu_check:broken_part", str(rows_file)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "error: ValueError: boom" and not rows_file.exists()
    assert gpu_check.main(["--part", "tests.test_gpu_check:ok_part", str(rows_file)]) == 0
    assert json.loads(rows_file.read_text()) == [["first | check", "42 samples/s", True], ["second", "fine", True]]


@pytest.mark.slow  # spawned trial processes
def test_packed_trials_that_cannot_start_are_one_line_and_nothing_waits_for_them(tmp_path):
    """bench.gpu_packing's trials each in a process of its own: one that fails before the measured
    window releases the others and the parent, with its own line."""
    from bench import gpu_packing

    flags = argparse.Namespace(backbone="test_resnet", batch_size=8, seconds=1, data=str(tmp_path / "no-data"))
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"^a packed trial did not start: \w+: ") as error:
        gpu_packing.measure(flags, 2)
    assert "\n" not in str(error.value) and time.perf_counter() - started < 60
