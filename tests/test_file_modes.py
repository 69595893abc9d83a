"""Files are written with the process's umask, as open() and os.mkdir would: the synthetic data,
the cache and every atomic write (reports, exports, plans) are readable by a team under 022 and
private under 077. mkstemp and mkdtemp, under the atomic writes, would make them 0600 / 0700."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ENV, REPO
from trainable.atomic import atomic_directory, atomic_write_text, umask


def modes(folder: Path) -> dict[str, set[int]]:
    """The permission bits of every file and folder below `folder` (itself included)."""
    found: dict[str, set[int]] = {"files": set(), "folders": {stat.S_IMODE(folder.stat().st_mode)}}
    for path in folder.rglob("*"):
        found["folders" if path.is_dir() else "files"].add(stat.S_IMODE(path.stat().st_mode))
    return found


def under(mask: int, *command: str) -> None:
    subprocess.run([sys.executable, *command], env=ENV, cwd=REPO, check=True, capture_output=True, timeout=300,
                   preexec_fn=lambda: os.umask(mask))


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_the_data_the_cache_and_the_reports_follow_the_umask(tmp_path, mask):
    data = tmp_path / "data"
    under(mask, "-m", "datatools.synth", str(data), "--recordings", "4", "--test-recordings", "2",
          "--duration", "3")
    under(mask, "-m", "datatools.prepare", "--data-dir", str(data), "--workers", "1")
    before = os.umask(mask)
    try:
        assert umask() == mask
        atomic_write_text(tmp_path / "reports" / "leaderboard.md", "# a report\n")
        atomic_directory(tmp_path / "reports" / "ensemble", lambda folder: (folder / "weights.json").write_text("{}"))
    finally:
        os.umask(before)
    expected = {"files": {0o666 & ~mask}, "folders": {0o777 & ~mask}}
    assert modes(data) == expected  # the flac files, the csvs, the cache's arrays and manifest
    assert any(data.rglob("*.flac")) and any(data.rglob("*.npy"))
    assert modes(tmp_path / "reports") == expected
