"""The search's console (search/tuner/console.py): its lines on trials as Ray passes them, Ray's
own output off unless --verbose, and a real search's whole console."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial

from search import run
from search.plan import SearchPlan
from search.results.holdout import TRUTH_FILE
from search.tuner import console
from search.tuner.console import Console
from tests.helpers import ENV, REPO, tiny_search

RECIPE = {"loss.w_att": 1.0, "loss.w_max": 0.5, "loss.w_pseudo": 1.0, "loss.w_frame": 0.5}
OTHER = {"loss.w_att": 1.0, "loss.w_max": 1.0976, "loss.w_pseudo": 1.4304, "loss.w_frame": 1.2055}


def plan(scheduler: str = "asha") -> SearchPlan:
    """loss_weights over 8 epochs; ASHA's one rung at epoch 4."""
    settings = {"asha": {"grace_period": 4, "reduction_factor": 3}, "hyperband": {"reduction_factor": 3}}
    return SearchPlan(spaces=("loss_weights",), fixed={"train.epochs": 8, "data_dir": "/data"}, num_samples=4,
                      max_concurrent=None, cpus_per_trial=1.0, gpus_per_trial=0.0, storage="/tmp/x", name="x", seed=0,
                      max_failures=5, scheduler=scheduler, scheduler_settings=settings.get(scheduler, {}), repeats=3)


def trial(trial_id: str, values: dict, status: str = Trial.RUNNING, result: dict | None = None, **config):
    """What the console reads of a Ray Trial."""
    return SimpleNamespace(trial_id=trial_id, config={**values, **config}, status=status, last_result=result or {},
                           latest_checkpoint_result=None, num_failures=0, max_failures=5, error_file=None,
                           path=f"/experiments/search/trial_{trial_id}")


def result(epoch: int, cv: float, score: float, done: bool = False, seconds: float = 2.0) -> dict:
    return {"training_iteration": epoch, "epoch": epoch, "cv_lwlrap": cv, "score": score, "done": done,
            "time_this_iter_s": seconds}


def lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_start_lines_name_the_searched_values_the_recipe_point_and_seed_repeats(capsys):
    seen = Console(plan())
    recipe = trial("aaaa0001", RECIPE, seed_group="aaaa0001")
    proposal = trial("bbbb0002", {**OTHER, "data_dir": "/data", "train.epochs": 8})
    repeat = trial("cccc0003", RECIPE, seed_group="aaaa0001", **{"train.seed": 417})
    resumed = trial("dddd0004", OTHER)
    resumed.latest_checkpoint_result = SimpleNamespace(metrics={"epoch": 4, "training_iteration": 4})
    everyone = [recipe, proposal, repeat, resumed]
    for each in everyone:
        seen.on_trial_start(iteration=1, trials=everyone, trial=each)
    seen.on_trial_start(iteration=2, trials=everyone, trial=proposal)  # again after a failure: said by its retry line
    assert lines(capsys) == [
        "[rfcx-tune] trial aaaa0001 started: the recipe point (loss.w_max=0.5, loss.w_pseudo=1, loss.w_frame=0.5)",
        "[rfcx-tune] trial bbbb0002 started: loss.w_max=1.098, loss.w_pseudo=1.43, loss.w_frame=1.206",
        "[rfcx-tune] trial cccc0003 started: the recipe point again under train.seed 417",
        "[rfcx-tune] trial dddd0004 resumes from epoch 4: loss.w_max=1.098, loss.w_pseudo=1.43, loss.w_frame=1.206",
    ]


def test_asha_rung_decisions_and_end_lines(capsys):
    seen = Console(plan())
    recipe = trial("aaaa0001", RECIPE, seed_group="aaaa0001")
    kept, stopped = trial("bbbb0002", OTHER), trial("cccc0003", OTHER)
    repeat = trial("dddd0004", RECIPE, seed_group="aaaa0001", **{"train.seed": 417})
    everyone = [recipe, kept, stopped, repeat]
    for each in everyone:
        seen.on_trial_result(iteration=1, trials=everyone, trial=each, result=result(3, 0.5, 0.5))  # no rung
    seen.on_trial_result(iteration=2, trials=everyone, trial=recipe, result=result(4, 0.81, 0.82))
    seen.on_trial_result(iteration=2, trials=everyone, trial=kept, result=result(4, 0.85, 0.86))
    seen.on_trial_result(iteration=2, trials=everyone, trial=repeat, result=result(4, 0.8, 0.8))  # never compared
    # ASHA stopped it: Ray marked the result done before the callbacks saw it.
    stopped.last_result = result(4, 0.70, 0.7123, done=True)
    seen.on_trial_result(iteration=2, trials=everyone, trial=stopped, result=stopped.last_result)
    seen.on_trial_complete(iteration=2, trials=everyone, trial=stopped)
    kept.last_result = result(8, 0.88, 0.8893, done=True)
    seen.on_trial_complete(iteration=3, trials=everyone, trial=kept)
    assert lines(capsys) == [
        "[rfcx-tune] trial aaaa0001 at ASHA's rung, epoch 4: cv_lwlrap 0.8100, continues (the recipe point:"
        " compared, never stopped)",
        "[rfcx-tune] trial bbbb0002 at ASHA's rung, epoch 4: cv_lwlrap 0.8500, continues",
        "[rfcx-tune] trial cccc0003 stopped by ASHA at epoch 4 (cv_lwlrap 0.7000 at the rung): score 0.7123",
        "[rfcx-tune] trial bbbb0002 completed after 8 epochs: score 0.8893",
    ]


def test_no_rung_lines_where_the_scheduler_decides_later(capsys):
    """HyperBand pauses a trial at a milestone and decides once its bracket is complete; FIFO has none."""
    for scheduler in ("hyperband", "fifo"):
        seen = Console(plan(scheduler))
        one = trial("bbbb0002", OTHER)
        for epoch in range(1, 9):
            seen.on_trial_result(iteration=epoch, trials=[one], trial=one, result=result(epoch, 0.8, 0.8))
        assert lines(capsys) == []
    stopped = trial("cccc0003", OTHER, status=Trial.PAUSED, result=result(2, 0.7, 0.71))
    Console(plan("hyperband")).on_trial_complete(iteration=1, trials=[stopped], trial=stopped)
    assert lines(capsys) == ["[rfcx-tune] trial cccc0003 stopped by HyperBand at epoch 2: score 0.7100"]


def test_failed_and_errored_trials_say_the_error_and_where_its_traceback_is(capsys, tmp_path):
    """Ray's error file (the driver's copy) holds every failure's traceback; the line says its last line."""
    seen = Console(plan())
    failing = trial("eeee0005", OTHER, result=result(3, 0.6, 0.6))
    failing.error_file = str(tmp_path / "error.txt")
    Path(failing.error_file).write_text("Failure # 1 (occurred at 2026-12-08)\nTraceback (most recent call last):\n"
                                        "  ...\nOSError: the disk hiccuped\n")
    failing.num_failures = 1
    seen.on_trial_recover(iteration=1, trials=[failing], trial=failing)
    failing.num_failures = 6
    with open(failing.error_file, "a") as error:
        error.write("Failure # 6 (occurred at 2026-12-08)\nTraceback (most recent call last):\n  ...\n"
                    "ValueError: the data moved\n")
    seen.on_trial_error(iteration=2, trials=[failing], trial=failing)
    where = "(traceback: /experiments/search/trial_eeee0005/error.txt)"
    assert lines(capsys) == [
        f"[rfcx-tune] trial eeee0005 failed after 3 epochs: OSError: the disk hiccuped; retry 1 of 5, from its last"
        f" checkpoint {where}",
        f"[rfcx-tune] trial eeee0005 errored: ValueError: the data moved (after 3 epochs, 6 failures) {where}",
    ]


def test_progress_line_at_most_every_30_s_with_the_best_score_and_time_left(capsys, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    seen = Console(plan())
    seen.setup(total_num_samples=6)
    done = trial("aaaa0001", RECIPE, status=Trial.TERMINATED, result=result(8, 0.8, 0.81), seed_group="aaaa0001")
    stopped = trial("bbbb0002", OTHER, status=Trial.TERMINATED, result=result(4, 0.7, 0.72, done=True))
    running = trial("cccc0003", OTHER, result=result(2, 0.75, 0.75))
    waiting = trial("dddd0004", OTHER, status=Trial.PENDING)
    everyone = [done, stopped, running, waiting]
    for each in (done, stopped, running):
        seen.on_trial_result(iteration=1, trials=everyone, trial=each, result=result(1, 0.5, 0.5, seconds=10.0))
    seen.on_trial_start(iteration=1, trials=everyone, trial=running)
    capsys.readouterr()
    clock[0] += 29.0
    seen.on_step_end(iteration=5, trials=everyone)
    assert lines(capsys) == []
    clock[0] += 1.0
    seen.on_step_end(iteration=6, trials=everyone)
    # Expected epochs of a trial to come: the ended trials' mean, (8 + 4) / 2 = 6; the running trial
    # is below the rung: 6 - 2 = 4 more. 3 trials to come (1 pending, 2 not made yet) x 6 + 4 = 22
    # epochs of 10 s, one trial at a time.
    assert lines(capsys) == ["[rfcx-tune] progress: 2 of 6 trials done, 1 running, 3 to come; best score 0.8100"
                             " (trial aaaa0001); 30s elapsed, about 3m40s left"]
    # Nothing happened since: no line until QUIET_S (a long epoch), then one.
    for step in range(7, 7 + 19):
        clock[0] += 30.0
        seen.on_step_end(iteration=step, trials=everyone)
    assert lines(capsys) == []
    clock[0] += 30.0
    seen.on_step_end(iteration=30, trials=everyone)
    assert lines(capsys) == ["[rfcx-tune] progress: 2 of 6 trials done, 1 running, 3 to come; best score 0.8100"
                             " (trial aaaa0001); 10m30s elapsed, about 3m40s left"]


def test_durations():
    assert [console.duration(s) for s in (0.4, 45, 185, 7830)] == ["0s", "45s", "3m05s", "2h10m"]


@pytest.fixture
def ray_output(monkeypatch):
    """show_ray_output's choice, undone after the test (it sets the process's environment and loggers)."""
    monkeypatch.delenv(console.RAY_NEW_OUTPUT, raising=False)
    tune_logger = logging.getLogger("ray.tune.tune")
    filters = list(tune_logger.filters)
    yield tune_logger
    tune_logger.filters[:] = filters
    console.show_ray_output(False)
    console._verbose = False


def shown(tune_logger: logging.Logger, message: str) -> bool:
    return tune_logger.filter(tune_logger.makeRecord(tune_logger.name, logging.WARNING, __file__, 1, message, (),
                                                     None))


def test_ray_output_off_by_default_and_back_with_verbose(ray_output):
    hint = "Experiment has been interrupted, but the most recent state was saved.\nResume experiment with: Tuner..."
    incomplete = "Trials did not complete: [train_sed_1234]"
    console.show_ray_output(False)
    assert os.environ[console.RAY_NEW_OUTPUT] == "0"  # Ray's engine that is silent at verbose 0
    assert console.ray_verbosity() == 0
    hook = console.ray_init_options()["runtime_env"]["worker_process_setup_hook"]
    assert hook is console.quiet_trial_logs
    assert not shown(ray_output, hint) and not shown(ray_output, incomplete)
    assert shown(ray_output, "Trial train_sed_1234 errored after 3 iterations")  # Ray's other lines stay
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    failed = "Trial task failed for trial train_sed_1234"  # its traceback: the console's line says where it is
    token = logging.getLogger(console.TOKEN_NOTE_LOGGER)
    assert not shown(controller, failed) and not token.isEnabledFor(logging.WARNING)
    console.show_ray_output(True)
    assert console.ray_verbosity() == 1 and console.ray_init_options() == {}
    assert shown(ray_output, incomplete) and shown(controller, failed) and token.isEnabledFor(logging.WARNING)
    assert not shown(ray_output, hint)  # search/run.py's resume command is the one to use


def test_a_sync_that_lost_one_of_rays_temporary_files_is_not_printed(ray_output):
    """Ray's background copy of the experiment's state lists its staging folder, then copies: a
    temporary file of its own atomic save renamed in between fails that copy, harmlessly."""
    syncer = logging.getLogger(console.SYNC_LOGGER)
    vanished = ("Last sync command failed with the following error:\nTraceback (most recent call last):\n  ...\n"
                "FileNotFoundError: [Errno 2] Failed to open local file '/tmp/ray/session_1/artifacts/2026-12-08/"
                "search/driver_artifacts/.d7875cef-75ab-408e-a9f1-0e6c3bd5a1f2-search_gen_state.json'."
                " Detail: [errno 2] No such file or directory")
    full = ("Last sync command failed with the following error:\nTraceback (most recent call last):\n  ...\n"
            "OSError: [Errno 28] No space left on device")
    gone = vanished.replace("/.d7875cef", "/d7875cef")  # not a temporary file: a real loss, said
    console.show_ray_output(False)
    assert not shown(syncer, vanished) and shown(syncer, full) and shown(syncer, gone)
    console.show_ray_output(True)
    assert shown(syncer, vanished)


def test_trial_processes_keep_their_warnings():
    levels = {name: logging.getLogger(name).level for name in console.TRIAL_LOGGERS}
    try:
        console.quiet_trial_logs()
        checkpoints = logging.getLogger("ray.train._internal.storage")
        assert not checkpoints.isEnabledFor(logging.INFO) and checkpoints.isEnabledFor(logging.WARNING)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_verbose_is_no_setting_of_the_search():
    assert run.parse_args(["--verbose"]).verbose and not run.parse_args([]).verbose
    assert "verbose" not in run.SEARCH_FLAGS  # --resume takes it, and the plan does not keep it


BOX = re.compile("[╭╰│├─]")  # Ray's tables and boxes (tabulate's rounded grid)
RAY_LINES = ("Checkpoint successfully created", "Trial status:", "Configuration for experiment", "Tuner.restore")


@pytest.mark.ray
@pytest.mark.slow
def test_a_real_search_console_and_verbose(cached_dir, tmp_path):
    """The tiny search (4 trials x 3 epochs, ASHA's rung at epoch 1) prints its start-up line, a line per
    trial start, rung decision and end, progress lines and the summary, and none of Ray's boxes, tables
    or per-checkpoint lines; resumed with --verbose (one more trial), Ray's output is back."""
    data = tmp_path / "data"  # without test_truth.csv: no holdout to score, which would double the time
    shutil.copytree(cached_dir, data, ignore=shutil.ignore_patterns(TRUTH_FILE))
    started = time.monotonic()
    out = subprocess.run(tiny_search(data, tmp_path, "quiet"), env=ENV, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-3000:]
    printed = (out.stdout + out.stderr).splitlines()
    trial_ids = sorted(path.name.removeprefix("trial_") for path in (tmp_path / "quiet").glob("trial_*"))
    assert len(trial_ids) == 4
    for trial_id in trial_ids:
        assert sum(line.startswith(f"[rfcx-tune] trial {trial_id} started: ") for line in printed) == 1
        ends = [line for line in printed if re.match(rf"\[rfcx-tune\] trial {trial_id} (completed|stopped)", line)]
        assert len(ends) == 1 and re.search(r": score 0\.\d{4}$", ends[0]), printed
    assert not [line for line in printed if BOX.search(line) or any(ray in line for ray in RAY_LINES)], printed
    # The bound: Ray's token line and the start-up line; per trial its start, rung and end lines; a
    # progress line per 30 s; the summary: a blank line, the table's header and 4 rows, a blank line,
    # at most 2 notes and its 5 lines of where things are.
    bound = 2 + 3 * 4 + math.ceil(seconds / console.PROGRESS_S) + (1 + 1 + 4 + 1 + 2 + 5)
    assert len(printed) <= bound, "\n".join(printed)

    resumed = subprocess.run([sys.executable, str(REPO / "search/run.py"), "--resume", "--name", "quiet",
                              "--storage", str(tmp_path), "--num-samples", "5", "--verbose"],
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    loud = resumed.stdout + resumed.stderr
    assert BOX.search(loud) and "Trial status:" in loud and "Checkpoint successfully created" in loud, loud
    assert re.search(r"\[rfcx-tune\] trial \w+ started: ", loud)  # and the console's own lines still
