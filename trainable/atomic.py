"""All-or-nothing file writes, for caches, datasets and reports that a killed run must not tear."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_SUFFIX = ".partial"  # what a run killed mid-write leaves behind: `.<name>.<random>.partial`


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(binary_file)` so that readers see all of it or none.

    The data goes to a temporary file in the same directory (same filesystem), is flushed
    to disk, then renamed over `path`, which POSIX makes atomic. On an exception the
    temporary file is removed; after a SIGKILL it stays, named `.<name>.*.partial`, and
    `remove_partial_files` clears it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write` of a UTF-8 string."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def remove_partial_files(folder: Path) -> int:
    """Delete the temporary files that killed writes left in `folder`; returns how many."""
    partial = list(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)
