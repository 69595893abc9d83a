"""The console of a search: one line per event a person follows, in place of Ray's boxes and tables.

Console (a Ray Tune callback among search.tuner.experiment.logger_callbacks) prints, after
search/run.py's start-up line and before the summary (search.tuner.session.summary):

- a trial's start: its id and the values the search proposed, the recipe point and a seed repeat
  said as such (a trial that goes on from a checkpoint: the epoch it resumes from);
- ASHA's decision at a rung (the epochs where it compares trials): the trial's CV there and that it
  continues; a trial it stops there ends, and its end line says so;
- a trial's end: its status in the leaderboard's words, its epochs and its score;
- a progress line at most every PROGRESS_S seconds, once a line above was printed since the last
  one (else after QUIET_S: a long epoch prints no line a minute): trials done, running and to come,
  the best score so far, the time elapsed and an estimate of the time left.

Ray's own output is off unless `--verbose` (show_ray_output): its output engine's boxes and status
tables, its trial processes' INFO lines (one "Checkpoint successfully created" per checkpoint), its
"Tuner.restore(...)" advice on Ctrl-C (search/run.py prints the resume command), its list of the
trials that did not complete (the lines above and the summary say it), a failed trial's traceback
(its line here says the error's last line and the file that holds the whole one), its note that
a local Ray has token authentication, and a background copy's traceback for one of its own
temporary files renamed meanwhile (VANISHED_TEMP). Ray's other warnings and errors stay. The driver of a Ray job
is the same script, so a job's logs read the same.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from search.plan import SearchPlan, milestones, param_names, recipe_config, scheduler_of
from search.results.leaderboard import last_line, same_value, trial_budget, trial_status
from search.tuner.remembering import is_repeat, seed_group
from trainable import reported
from trainable.dotted import flatten_dotted, nest_dotted

PREFIX = "[rfcx-tune]"
PROGRESS_S = 30.0  # the shortest time between two progress lines
QUIET_S = 600.0  # the longest time without one
# Ray's switch between its two output engines, read from the driver's environment when the run starts
# (ray.tune.experimental.output.get_air_verbosity). At verbose 0 the new engine still prints its box
# of the experiment's settings and a box per errored trial; the old one prints nothing.
RAY_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"
# Ray's loggers in a trial's process whose INFO lines are a line per checkpoint or restore.
TRIAL_LOGGERS = ("ray.train", "ray.tune")
# What ray.tune.tune logs at the end of an interrupted or incomplete run: its own resume advice
# ("Tuner.restore(...)"; search/run.py says the command that resumes), and the list of the trials
# that did not finish (their end lines and the summary say it).
RESTORE_HINT = ("Experiment has been interrupted", "Training has been interrupted")
INCOMPLETE = ("Trials did not complete",)
# What ray.tune.execution.tune_controller logs when a trial's task fails: the whole traceback, for
# every retry (the line per failure below says its last line and where the whole error is).
FAILED_TASK = ("Trial task failed for trial",)
# Ray's copy of the experiment's state to its storage, in the background after each step, lists
# the driver's staging folder and then copies each file: a temporary file of Ray's own atomic save
# (".<uuid>-<name>") that was renamed in between fails that copy with a traceback, harmless (the
# next copy takes the new state) and sometimes printed in the middle of a search.
SYNC_LOGGER = "ray.train._internal.syncer"
VANISHED_TEMP = re.compile(r"^Last sync command failed.*FileNotFoundError: .*"
                           r"Failed to open local file '[^']*/\.[^/']*'", re.DOTALL)
# Ray's note, on starting a local Ray, that it enabled token authentication: its default, not news.
TOKEN_NOTE_LOGGER = "ray._private.authentication.authentication_token_setup"
ERROR_FILE = "error.txt"  # Ray's record of a trial's failures, in its folder (ray.tune.experiment.trial)


class Console(Callback):
    """A Ray Tune callback that prints the search's events, one line each (module docstring)."""

    def __init__(self, plan: SearchPlan):
        self.params = param_names(plan.spaces, plan.epochs, plan.teacher)
        self.recipe = recipe_config(plan.spaces, plan.epochs, plan.teacher, plan.baseline)
        self.epochs = plan.epochs
        self.scheduler = scheduler_of(plan)
        # ASHA decides at every result whether a trial goes on, so the result at a rung says it.
        # HyperBand pauses a trial there until its bracket is complete and decides then: its stops
        # are said by the trials' end lines.
        self.rungs = set(milestones(plan)) if plan.scheduler == "asha" else set()
        self.total = 0  # the most trials the search makes (Ray's count, from the searcher's bound)
        self.started = time.monotonic()
        self.last_progress = self.started
        self.news = False  # whether a trial's line was printed since the last progress line
        self.seen: set[str] = set()  # trials whose start was said by this driver
        self.epoch_seconds: list[float] = []  # one epoch of one trial on every fold, as reported

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self.total = int(total_num_samples or 0)
        self.started = self.last_progress = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        if trial.trial_id in self.seen:
            return  # restarted after a failure: on_trial_recover said so
        self.seen.add(trial.trial_id)
        checkpoint = trial.latest_checkpoint_result
        epoch = int(checkpoint.metrics.get(reported.EPOCH, 0)) if checkpoint is not None else 0
        verb = f"resumes from epoch {epoch}" if epoch else "started"
        self.event(f"trial {trial.trial_id} {verb}: {self.proposal(trial, trials)}")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        seconds = result.get("time_this_iter_s")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            self.epoch_seconds.append(float(seconds))
        epoch = result.get(reported.ITERATION)
        # A stopped trial's decision is said by its end line (the scheduler marked the result done).
        if epoch not in self.rungs or result.get("done") or is_repeat(trial):
            return
        why = " (the recipe point: compared, never stopped)" if seed_group(trial) == trial.trial_id else ""
        self.event(f"trial {trial.trial_id} at {self.scheduler.label}'s rung, epoch {epoch}:"
                   f" {reported.CV} {number(result.get(reported.CV))}, continues{why}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        result = trial.last_result
        done = epochs_done(result)
        status = trial_status(done, trial_budget(trial.config, self.epochs), finished=True, scheduler=self.scheduler)
        rung = (f" ({reported.CV} {number(result.get(reported.CV))} at the rung)"
                if result.get(reported.ITERATION) in self.rungs and not is_repeat(trial) else "")
        epochs = "" if status.endswith(f"epoch {done}") else f" after {done} epoch{'s' if done != 1 else ''}"
        self.event(f"trial {trial.trial_id} {status}{epochs}{rung}: score {number(result.get(reported.SCORE))}")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.event(f"trial {trial.trial_id} failed after {epochs_done(trial.last_result)} epochs:"
                   f" {error_line(trial)}; retry {trial.num_failures} of {trial.max_failures}, from its last"
                   f" checkpoint{whole_error(trial)}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        done = epochs_done(trial.last_result)
        status = trial_status(done, trial_budget(trial.config, self.epochs), finished=True,
                              error=error_line(trial), scheduler=self.scheduler)
        self.event(f"trial {trial.trial_id} {status} (after {done} epochs, {trial.num_failures} failures)"
                   f"{whole_error(trial)}")

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        now = time.monotonic()
        since = now - self.last_progress
        if since >= QUIET_S or (since >= PROGRESS_S and self.news):
            self.last_progress, self.news = now, False
            say(self.progress(trials, now - self.started))

    def event(self, line: str) -> None:
        self.news = True
        say(line)

    def proposal(self, trial: Trial, trials: list[Trial]) -> str:
        """What the trial trains: the values the search proposed, or the configuration it repeats."""
        config = flatten_dotted(nest_dotted(trial.config or {}))
        values = ", ".join(f"{name}={shown(config.get(name))}" for name in self.params)
        group = seed_group(trial)
        if group is not None and group != trial.trial_id:
            first = next((other for other in trials if other.trial_id == group), None)
            whose = "the recipe point" if first is not None and self.is_recipe(first) else f"trial {group}"
            return f"{whose} again under train.seed {shown(config.get('train.seed'))}"
        if not self.params:
            return "the fixed configuration (no space searched)"
        return f"the recipe point ({values})" if self.is_recipe(trial) else values

    def is_recipe(self, trial: Trial) -> bool:
        """Whether the trial has the recipe point's values, compared as the leaderboard compares them
        (same_value), so the console and the leaderboard mark the same trial."""
        config = flatten_dotted(nest_dotted(trial.config or {}))
        return all(same_value(config.get(key), value) for key, value in self.recipe.items())

    def progress(self, trials: list[Trial], elapsed: float) -> str:
        """The progress line: trials done / running / to come, the best score, elapsed, time left."""
        ended = [trial for trial in trials if trial.status in (Trial.TERMINATED, Trial.ERROR)]
        running = [trial for trial in trials if trial.status in (Trial.RUNNING, Trial.PAUSED)]
        pending = sum(trial.status == Trial.PENDING for trial in trials)
        to_come = pending + max(self.total - len(trials), 0)
        scored = [(score, trial.trial_id) for trial in trials
                  if math.isfinite(score := finite(trial.last_result.get(reported.SCORE)))]
        top = max(scored, default=None)
        best = f"best score {top[0]:.4f} (trial {top[1]})" if top else "no score yet"
        left = self.time_left(ended, running, to_come)
        estimate = f"about {duration(left)} left" if left is not None else "time left not known yet"
        return (f"progress: {len(ended)} of {len(ended) + len(running) + to_come} trials done, {len(running)}"
                f" running, {to_come} to come; {best}; {duration(elapsed)} elapsed, {estimate}")

    def time_left(self, ended: list[Trial], running: list[Trial], to_come: int) -> float | None:
        """The epochs still to train over the trials that train at once, at the mean epoch time so far.

        A trial to come trains as many epochs as the ended ones did on average (the scheduler stops
        most early), a running one the rest of its budget once past the last rung (or in a seed
        group, which no scheduler stops), else up to that average. Written here: Ray's progress
        reporter shows elapsed time only."""
        if not self.epoch_seconds:
            return None
        lengths = [epochs_done(trial.last_result) for trial in ended]
        expected = sum(lengths) / len(lengths) if lengths else float(self.epochs)
        last_rung = max(self.rungs, default=0)
        epochs = to_come * expected
        for trial in running:
            done, budget = epochs_done(trial.last_result), trial_budget(trial.config, self.epochs)
            goes_on = done >= last_rung or seed_group(trial) is not None
            epochs += max((budget if goes_on else min(expected, budget)) - done, 1)
        at_once = max(len(running), 1)
        return epochs * (sum(self.epoch_seconds) / len(self.epoch_seconds)) / at_once


def say(line: str) -> None:
    print(f"{PREFIX} {line}", flush=True)


def epochs_done(result: dict[str, Any]) -> int:
    """The epochs a trial trained, by its own count (Ray's iterations start over on some restores)."""
    done = finite(result.get(reported.EPOCH, result.get(reported.ITERATION)))
    return int(done) if math.isfinite(done) else 0


def finite(value: Any) -> float:
    """A reported number as a float (NaN when missing or not a number)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def error_line(trial: Trial) -> str:
    """The last line of the trial's latest error (its exception), from Ray's error file as the
    driver wrote it (the copy in the trial's folder may not be synced yet)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    return last_line(Exception(text)) if text.strip() else "no error recorded"


def whole_error(trial: Trial) -> str:
    """Where the whole error is, said beside its last line unless --verbose printed it."""
    return "" if _verbose or not trial.path else f" (traceback: {trial.path.rstrip('/')}/{ERROR_FILE})"


def number(value: Any) -> str:
    score = finite(value)
    return f"{score:.4f}" if math.isfinite(score) else "none"


def shown(value: Any) -> str:
    """A config value as the line shows it: floats to 4 significant digits, lists comma-separated."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(shown, value))
    return str(value)


def duration(seconds: float) -> str:
    """45s, 3m05s, 2h10m."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _VanishedTemp(logging.Filter):
    """Drops the syncer's failure of a copy whose source was one of Ray's temporary files (VANISHED_TEMP)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not VANISHED_TEMP.match(record.getMessage())


class _Dropped(logging.Filter):
    """Drops the records of a logger whose message starts with one of `starts`."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


# One instance each, so that choosing again (tests run several searches in one process) replaces
# rather than stacks them.
_RESTORE_HINT, _RAY_QUIET, _FAILED_TASK = _Dropped(RESTORE_HINT), _Dropped(INCOMPLETE), _Dropped(FAILED_TASK)
_SYNC_TEMP = _VanishedTemp()
_verbose = False  # the choice of show_ray_output: Ray's engine and loggers are the driver process's


def show_ray_output(verbose: bool) -> None:
    """Ray's own console output for this driver: off (the default) or, with `verbose`, as Ray prints
    it. Its resume advice on Ctrl-C is never printed. Called once, before Ray starts."""
    global _verbose
    _verbose = verbose
    tune_logger = logging.getLogger("ray.tune.tune")
    controller_logger = logging.getLogger("ray.tune.execution.tune_controller")
    tune_logger.addFilter(_RESTORE_HINT)
    if verbose:
        tune_logger.removeFilter(_RAY_QUIET)
        controller_logger.removeFilter(_FAILED_TASK)
        logging.getLogger(SYNC_LOGGER).removeFilter(_SYNC_TEMP)
        logging.getLogger(TOKEN_NOTE_LOGGER).setLevel(logging.NOTSET)
    else:
        os.environ[RAY_NEW_OUTPUT] = "0"  # the engine that is silent at verbose 0
        tune_logger.addFilter(_RAY_QUIET)
        controller_logger.addFilter(_FAILED_TASK)
        logging.getLogger(SYNC_LOGGER).addFilter(_SYNC_TEMP)
        logging.getLogger(TOKEN_NOTE_LOGGER).setLevel(logging.ERROR)


def ray_verbosity() -> int:
    """RunConfig.verbose: 0 (silent) unless --verbose, then 1 (Ray's default: its boxes and status tables)."""
    return 1 if _verbose else 0


def ray_init_options() -> dict[str, Any]:
    """ray.init's options for the trial processes: without --verbose, their Ray INFO lines off."""
    return {} if _verbose else {"runtime_env": {"worker_process_setup_hook": quiet_trial_logs}}


def quiet_trial_logs() -> None:
    """Ray's worker_process_setup_hook (runs in every process of the job before its tasks): Ray's
    INFO lines (a line per checkpoint) off; its warnings and errors, and everything else, stay."""
    for name in TRIAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
