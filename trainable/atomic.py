"""All-or-nothing file writes, for caches, datasets and reports that a killed run must not tear."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".partial"  # what a run killed mid-write leaves behind: `.<name>.<random>.partial`


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(binary_file)` so that readers see all of it or none.

    The data goes to a temporary file in the same directory (same filesystem), is flushed
    to disk, then renamed over `path`, which POSIX makes atomic. The file has the mode open()
    gives a new file under the process's umask (0644 under 022): teammates, a web server and
    trials running as another user read it. On an exception the
    temporary file is removed; after a SIGKILL it stays, named `.<name>.*.partial`, and
    `remove_partial_files` clears it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # as open() would create it: mkstemp makes it 0600 whatever the umask
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's umask. Linux states it in /proc/self/status; elsewhere it is read the only
    way POSIX offers, by setting it and putting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write` of a UTF-8 string."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def remove_partial_files(folder: Path) -> int:
    """Delete the temporary files that killed writes left in `folder`; returns how many."""
    partial = list(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def atomic_directory(path: Path, fill: Callable[[Path], object]) -> None:
    """Write a folder of files that belong together through `fill(folder)`, so that `path`
    holds the old set or the new one, never a mix: the files go into a temporary folder beside
    it, which replaces the old folder once `fill` returned. POSIX renames a folder only onto an
    empty one or none, so the old folder is renamed aside first (`.<name>.*.old`, removed
    after): between the two renames `path` is missing; an exception there puts the old folder
    back, a SIGKILL leaves it under that name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
    temp.chmod(0o777 & ~umask())  # as os.mkdir would: mkdtemp makes it 0700
    old = temp.with_name(temp.name.removesuffix(TEMP_SUFFIX) + ".old")
    try:
        fill(temp)
        for file in temp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if path.exists():
            os.replace(path, old)
        os.replace(temp, path)
    except BaseException:
        if old.exists() and not path.exists():  # interrupted between the renames: the old set goes back
            os.replace(old, path)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
