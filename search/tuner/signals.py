"""SIGTERM does what Ctrl-C does: `ray job stop`, `kill` and a container's stop end a search
as resumably as Ctrl-C in its terminal.

`ray.init` installs Ray's own SIGTERM handler in the driver (it exits at once), so the search
installs this one again once Ray has started."""

from __future__ import annotations

import signal


def stop_like_ctrl_c(signum: int, frame) -> None:
    """Call whatever answers Ctrl-C at this moment: during the search, Tune's handler, which stops
    the trials and saves the experiment; before it, Python's, which raises KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def stop_on_sigterm_like_ctrl_c() -> None:
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
