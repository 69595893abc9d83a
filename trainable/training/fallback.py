"""A checkpoint that cannot be read is named, and the trial goes on from the newest one that can.

Ray keeps a trial's last checkpoints (search.tuner.experiment.CHECKPOINTS_KEPT: the latest and
the one before) as `checkpoint_<index>` folders, the index counted up, in the trial's folder of
the experiment's storage, and restores the latest one it registered. A file of it that cannot
be read (cut, truncated, damaged on disk) used to fail every retry of the trial the same way;
here the trial says which file and why, in one line, and loads the newest earlier checkpoint
that reads instead (or, with none, starts over). A folder with a higher index than Ray's latest
is a copy Ray never registered (its process ended during the copy): passed over, Ray writes its
next checkpoint there. The checkpoints are read with pyarrow, as trainable.training.preemption
reads its own: Ray's Checkpoint holds only the latest.

What Ray was told of the epochs after the checkpoint loaded is trainable.tune's: they are not
reported again.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs

from trainable.training.checkpoint import TRIAL_FILE, UnreadableCheckpointError, why_unreadable
from trainable.training.kfold import KFoldTraining

CHECKPOINT_FOLDER = re.compile(r"checkpoint_(\d+)")  # Ray's name of a trial's checkpoint_000003


def ray_checkpoints(fs: pyarrow.fs.FileSystem, latest: str) -> list[str]:
    """Ray's latest checkpoint (`latest`, its path on `fs`) and the trial's earlier ones beside
    it, newest first."""
    parent, _, name = latest.rstrip("/").rpartition("/")
    newest = CHECKPOINT_FOLDER.fullmatch(name)
    if newest is None:  # not in a trial's folder as Ray names them: no earlier ones to know of
        return [latest]
    earlier = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(parent)):
        found = CHECKPOINT_FOLDER.fullmatch(info.base_name)
        if info.type == pyarrow.fs.FileType.Directory and found and int(found[1]) < int(newest[1]):
            earlier.append((int(found[1]), info.path))
    return [latest, *(path for _, path in sorted(earlier, reverse=True))]


def checkpoint_epoch(fs: pyarrow.fs.FileSystem, path: str) -> int | None:
    """The epochs done in the checkpoint at `path` (its trial.json); None: that cannot be read."""
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{TRIAL_FILE}") as stream:
            return int(json.loads(stream.read())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def local_copy(fs: pyarrow.fs.FileSystem, path: str) -> Iterator[Path]:
    """The checkpoint at `path` in a local folder: itself on the local file system, else a copy."""
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="rfcx-checkpoint-", dir=os.environ.get("TMPDIR")) as local:
        pyarrow.fs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield Path(local)


def load_local(new: Callable[[], KFoldTraining], local: Path, name: str,
               say: Callable[[str], None]) -> KFoldTraining | None:
    """A new training (`new()`) loaded from the checkpoint in `local`, which the lines call
    `name`; None when a file of it cannot be read, said in one line (the file and why).

    Raises:
        ConfigError: a checkpoint of another recipe or other folds (not a damaged one).
    """
    training = new()  # a failed load leaves a part of the checkpoint in the training it loaded into
    try:
        training.load(local)
    except UnreadableCheckpointError as error:
        path = Path(error.path)
        file = f"{name.rstrip('/')}/{path.relative_to(local)}" if path.is_relative_to(local) else error.path
        say(f"unreadable checkpoint: {file} ({error.why})")
        return None
    return training


def load_newest_readable(new: Callable[[], KFoldTraining], fs: pyarrow.fs.FileSystem, paths: list[str],
                         say: Callable[[str], None]) -> tuple[KFoldTraining, str] | None:
    """A new training loaded from the first of the checkpoints at `paths` (on `fs`) that reads,
    and that one's path; None when none does. Each that does not is said in one line.

    Raises:
        ConfigError: a checkpoint of another recipe or other folds (not a damaged one).
    """
    for path in paths:
        try:
            with local_copy(fs, path) as local:
                training = load_local(new, local, path, say)
        except OSError as error:  # the copy from the storage failed
            say(f"unreadable checkpoint: {path} ({why_unreadable(error)})")
            continue
        if training is not None:
            return training, path
    return None
