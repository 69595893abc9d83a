"""All-or-nothing file writes, for caches, datasets and reports that a killed run must not tear."""

from __future__ import annotations

import errno
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
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise DiskFullError(path) from None
        raise
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class DiskFullError(OSError):
    """No space was left on the disk of `path` to write it (errno ENOSPC), `needed` bytes when
    known; the message is one line: what filled up, where, and how much it needed."""

    def __init__(self, path: str | Path, needed: int | None = None):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path, self.needed = Path(path), needed

    def __reduce__(self):  # OSError's would call __init__ with its own arguments (a trial's error crosses processes)
        return type(self), (self.path, self.needed)

    def __str__(self) -> str:
        size = "" if self.needed is None else f" ({size_text(self.needed)})"
        return (f"no space left on the disk of {self.path.parent} ({size_text(free_bytes(self.path))} free) to write"
                f" {self.path.name}{size}; free some space and run the same command again")


def is_disk_full(error: BaseException) -> bool:
    """An OSError of a full disk, raised by Python (errno) or by pyarrow, whose errors carry the
    C library's words and no errno."""
    return isinstance(error, OSError) and (error.errno == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(error))


def free_bytes(path: Path) -> int:
    """The bytes free on the disk of `path` (its nearest existing folder)."""
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(folder).free


def size_text(size: int) -> str:
    """1536 -> "1.5 KB": sizes in the messages a person reads."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # unreachable: GB is the last unit


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
    data = text.encode()
    try:
        atomic_write(path, lambda handle: handle.write(data))
    except DiskFullError:
        raise DiskFullError(path, needed=len(data)) from None


def remove_partial_files(folder: Path, recursive: bool = False) -> int:
    """Delete the temporary files (and folders, `atomic_directory`'s) that killed or failed writes
    left in `folder` (and its subfolders when `recursive`); returns how many. Only while nothing
    writes there: a write in progress has its temporary file too."""
    found = Path(folder).rglob(f".*{TEMP_SUFFIX}") if recursive else Path(folder).glob(f".*{TEMP_SUFFIX}")
    partial = list(found)
    for path in partial:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
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
