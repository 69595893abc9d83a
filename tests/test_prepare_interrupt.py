"""Ctrl-C at any moment of `python -m datatools.prepare`, its worker processes starting among
them: exit 130 with one line, no traceback, and what was finished is kept."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ENV, REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("after_s", [0.3, 0.8, 1.3, 1.8, 2.5])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(synth_dir, tmp_path, after_s):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    prepare = subprocess.Popen([sys.executable, "-m", "datatools.prepare", "--data-dir", str(data), "--workers", "2"],
                               env=ENV, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(after_s)
    os.killpg(prepare.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the main process and its workers
    _, err = prepare.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    if prepare.returncode == 130:
        last = err.replace("\r", "\n").strip().splitlines()[-1]
        assert last.startswith("interrupted"), err[-3000:]
    else:
        assert prepare.returncode == 0, err[-3000:]  # done before the Ctrl-C came


def test_a_ctrl_c_that_a_c_callback_swallowed_is_raised_at_the_next_step_without_a_traceback(monkeypatch, capsys):
    """numba compiles through llvmlite's ctypes callbacks: a Ctrl-C landing in one is "ignored"
    by Python (printed with a traceback) and the build went on. Here: a real ctypes callback, a
    real SIGINT inside it."""
    import ctypes

    from datatools.prepare import CtrlC

    monkeypatch.setattr(CtrlC, "asked", False)
    monkeypatch.setattr(sys, "unraisablehook", CtrlC.unraisable)
    previous = signal.signal(signal.SIGINT, CtrlC.handler)
    try:
        callback = ctypes.CFUNCTYPE(None)(lambda: os.kill(os.getpid(), signal.SIGINT))
        callback()  # the KeyboardInterrupt raised inside it does not come out of it
        assert CtrlC.asked
        with pytest.raises(KeyboardInterrupt):
            CtrlC.check()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "Traceback" not in capsys.readouterr().err
