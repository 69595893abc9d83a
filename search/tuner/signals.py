"""The signals that stop a search. SIGTERM does what Ctrl-C does: `ray job stop`, `kill` and a
container's stop end a search as resumably as Ctrl-C in its terminal; and whether one of them
stopped the run is known after it (`fit_noting_a_stop`).

`ray.init` installs Ray's own SIGTERM handler in the driver (it exits at once), so the search
installs this one again once Ray has started."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def stop_like_ctrl_c(signum: int, frame) -> None:
    """Call whatever answers Ctrl-C at this moment: during the search, Tune's handler, which stops
    the trials and saves the experiment; before it, Python's, which raises KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def stop_on_sigterm_like_ctrl_c() -> None:
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)


def fit_noting_a_stop(fit: Callable[[], T]) -> tuple[T, bool]:
    """Run `fit` (a Tuner's) and say whether Ctrl-C or SIGTERM stopped it: only then is a search
    "interrupted" (exit 130), not when a trial errored or a run ended with trials unfinished.

    Ray keeps that to itself (an event local to tune.run). What it does is visible: Tune puts
    its own SIGINT handler over the one in place for the run and puts that one back when the
    first signal comes (ray/tune/tune.py, _setup_signal_catching); a run that ends by itself
    leaves Tune's in place. So a handler of ours is installed before the run, and is in place
    after it exactly when a signal stopped it. Either way the handler from before the run is put
    back: Ctrl-C during the reports raises KeyboardInterrupt again, as before the run.
    """
    if threading.current_thread() is not threading.main_thread():  # no handlers there: Tune's neither
        return fit(), False
    before = signal.getsignal(signal.SIGINT)

    def after_tune_answered(signum: int, frame) -> None:  # a second Ctrl-C: what answered it before
        signal.signal(signal.SIGINT, before)
        if callable(before):
            before(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, after_tune_answered)
    try:
        value = fit()
    finally:
        stopped = signal.getsignal(signal.SIGINT) is after_tune_answered
        signal.signal(signal.SIGINT, before)
    return value, stopped
