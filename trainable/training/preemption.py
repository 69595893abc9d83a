"""A trial whose process is ending mid-epoch checkpoints at the next batch boundary.

Ray ends the processes of a draining or reclaimed node with SIGTERM. Ray 2.60's worker
(`Worker.main_loop`) installs its own SIGTERM handler in the worker's main thread, after any
`worker_process_setup_hook` ran, and that handler raises SystemExit there: the interpreter
then exits normally, running the `atexit` functions (Ray's own shutdown among them) while
the function trainable's thread, a daemon, still runs. A Python signal handler can only be
installed from the main thread, and the trainable runs in another one, so `ExitCheckpoint`
learns of the exit through `atexit`: its function (registered after Ray's, so run before
Ray shuts down) tells the training thread to stop at its next batch boundary, waits for it,
and saves the trial's state there. Any normal exit of the process while the trial trains
does the same (Ray ending the actor gracefully); an exception in the trial saves nothing.

The checkpoint goes to the trial's folder in the experiment's storage (the node's disk may be
gone with it), beside Ray's checkpoints but not one of them: Ray registers a checkpoint only
with a reported result, and a result is a training iteration to ASHA. So it also keeps the
results reported since the latest Ray checkpoint: the retry restores Ray's checkpoint, finds
this one newer, loads it and reports those results again, so Ray's iteration count and the
epoch agree. `INCOMPLETE` marks a checkpoint being written; a process killed before its end
leaves one the retry ignores.
"""

from __future__ import annotations

import atexit
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs

BOUNDARY_WAIT_S = 60.0  # how long an exiting process waits for the next batch boundary (a batch takes seconds)
FOLDER = "preempted"  # in the trial's storage folder
REPORTS_FILE = "reports.json"  # base_epoch: the epoch of Ray's checkpoint; reports: the results since then
INCOMPLETE = "INCOMPLETE"  # written first, removed last: the checkpoint is whole without it


class ExitCheckpoint:
    """Between `with` and its end, an exit of the process saves the state at a batch boundary.

    The training thread holds a lock while it changes the trial's state; it lets go of it at
    each batch boundary once the process is exiting (and stays there: the process ends), and
    around calls that change nothing (`idle`: tune.report). The exit function takes the lock
    and calls `save`, so the state it saves is the one between two batches.

    Args:
        save: writes the checkpoint; called in the main thread while the process exits.
        wait_s: how long the exit waits for the boundary before it gives up.
    """

    def __init__(self, save: Callable[[], None], wait_s: float = BOUNDARY_WAIT_S):
        self.save, self.wait_s = save, wait_s
        self.exiting = threading.Event()
        self.saved = threading.Event()
        self.state = threading.Lock()  # held by the training thread while it changes the state
        self.closed = False

    def __enter__(self) -> ExitCheckpoint:
        self.state.acquire()
        atexit.register(self.on_exit)
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        atexit.unregister(self.on_exit)  # a process reused for the next trial must not save this one
        self.closed = True  # the trial ended (or failed): nothing to save
        self.state.release()

    def at_boundary(self) -> None:
        """Between two batches: if the process is exiting, hand the state over and stop here."""
        if self.exiting.is_set():
            self.state.release()
            threading.Event().wait()  # a daemon thread: it ends with the process

    def idle(self) -> _Idle:
        """A `with` block in which the thread changes nothing (the state is at a boundary)."""
        return _Idle(self)

    def on_exit(self) -> None:
        self.exiting.set()
        if self.state.acquire(timeout=self.wait_s) and not self.closed:
            self.save()
            self.saved.set()


class _Idle:
    def __init__(self, guard: ExitCheckpoint):
        self.guard = guard

    def __enter__(self) -> None:
        self.guard.state.release()

    def __exit__(self, *exc_info) -> None:
        self.guard.state.acquire()
        self.guard.at_boundary()


def _location(fs: pyarrow.fs.FileSystem, trial_fs_path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    return fs, f"{trial_fs_path.rstrip('/')}/{FOLDER}"


def upload(local: Path, fs: pyarrow.fs.FileSystem, trial_fs_path: str, base_epoch: int,
           reports: list[dict[str, Any]]) -> None:
    """Store the checkpoint in `local` as the trial's mid-epoch checkpoint, with the results
    reported since Ray's checkpoint of epoch `base_epoch` (0: none)."""
    fs, folder = _location(fs, trial_fs_path)
    (Path(local) / REPORTS_FILE).write_text(json.dumps({"base_epoch": base_epoch, "reports": reports}))
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{INCOMPLETE}"):
        pass
    pyarrow.fs.copy_files(str(local), folder, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)
    fs.delete_file(f"{folder}/{INCOMPLETE}")


def download(fs: pyarrow.fs.FileSystem, trial_fs_path: str, local: Path) -> dict | None:
    """Copy the trial's whole mid-epoch checkpoint into `local`; its reports.json, or None
    when there is none (or an incomplete one)."""
    fs, folder = _location(fs, trial_fs_path)
    found = fs.get_file_info([f"{folder}/{REPORTS_FILE}", f"{folder}/{INCOMPLETE}"])
    if found[0].type == pyarrow.fs.FileType.NotFound or found[1].type != pyarrow.fs.FileType.NotFound:
        return None
    pyarrow.fs.copy_files(folder, str(local), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())
    return json.loads((Path(local) / REPORTS_FILE).read_text())


def discard(fs: pyarrow.fs.FileSystem, trial_fs_path: str) -> None:
    """Delete the trial's mid-epoch checkpoint: a newer Ray checkpoint supersedes it."""
    fs, folder = _location(fs, trial_fs_path)
    if fs.get_file_info(folder).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(folder)


def local_folder() -> tempfile.TemporaryDirectory:
    """A scratch folder for a checkpoint on its way to or from the storage."""
    return tempfile.TemporaryDirectory(prefix="rfcx-preempted-", dir=os.environ.get("TMPDIR"))
