"""A full disk stops the whole search at once, as Ctrl-C would.

Every trial writes its checkpoints to the same storage, so when one fails because the disk is
full, the others and every retry would too: Ray retried each trial `--max-failures` times against
it (thousands of lines of tracebacks and sync errors), then the reports failed in a traceback.
`FullDiskStop` watches the trials' errors and, at the first full disk, stops the search the way
Ctrl-C does: the unfinished trials stay unfinished (a Stopper's stop_all would mark them
finished, and a resume would not train them again). The search then says so in one line and exits
1 (search.tuner.session). Nothing finished is lost: after space is freed the same command
resumes, from the trials' last checkpoints.
"""

from __future__ import annotations

import signal
from pathlib import Path

from ray import tune

from search.results.leaderboard import last_line
from search.tuner.signals import stop_like_ctrl_c
from trainable.atomic import DiskFullError, is_disk_full


class FullDiskStop(tune.Callback):
    """A callback that sees each trial error (Ray passes a callback the trial, whose error file
    holds the error). `line`: the first full disk's error line, None while there was none."""

    def __init__(self) -> None:
        self.line: str | None = None

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # Ray is about to retry it
        self.watch(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # its last try failed
        self.watch(trial)

    def watch(self, trial) -> None:
        if self.line is not None or trial.error_file is None:
            return
        try:
            text = Path(trial.error_file).read_text()
        except OSError:
            return
        line = last_line(Exception(text))
        said = f"{DiskFullError.__name__}: "
        if said in line:  # the trainable's own line: its checkpoint, where, how large
            self.line = f"trial {trial.trial_id}: {line.split(said, 1)[1]}"
        elif is_disk_full(OSError(line)):  # another write of the trial's (its error says no more)
            self.line = f"trial {trial.trial_id}: {DiskFullError(trial.path)}"
        if self.line is not None:
            stop_like_ctrl_c(signal.SIGINT, None)


def stop_on_a_full_disk(tuner: tune.Tuner) -> FullDiskStop:
    """Watch `tuner`'s trials for a full disk (added to the callbacks of a new Tuner and of a
    restored one alike, which search.tuner.experiment sets anew)."""
    watch = FullDiskStop()
    local = tuner._local_tuner
    assert local is not None  # None only through Ray Client, which the driver does not use
    run_config = local.get_run_config()
    run_config.callbacks = [*(run_config.callbacks or []), watch]
    return watch
