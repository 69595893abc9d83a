"""A full disk answers in one line, without retries, and leaves no partial files: the writes of
trainable.atomic and of the experiment's file system (search.tuner.experiment.WholeFiles) on a
real small tmpfs, and a real search whose --storage fills up, resumed once space is freed.

Mounting a tmpfs takes root (CI runs as root); elsewhere these tests are skipped."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pyarrow.fs
import pytest

from search.tuner.experiment import WholeFiles
from tests.helpers import ENV, REPO, tiny_search
from trainable.atomic import DiskFullError, atomic_write_text, remove_partial_files


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` (mount's units: 4m) mounted on `folder` for the test."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Fill the disk of `folder` up to its last byte."""
    with open(folder / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)


def partial_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.partial"))


def test_an_atomic_write_on_a_full_disk_says_what_where_and_how_much(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        report = disk / "leaderboard.md"
        atomic_write_text(report, "the old leaderboard\n")
        fill(disk)
        with pytest.raises(DiskFullError) as raised:
            atomic_write_text(report, "x" * 200_000)
        line = str(raised.value)
        assert line.startswith(f"no space left on the disk of {disk} (") and "free) to write leaderboard.md" in line
        assert "(195.3 KB)" in line and "\n" not in line
        assert report.read_text() == "the old leaderboard\n"  # the old file stays whole
        assert partial_files(disk) == []


def test_the_experiment_file_system_leaves_no_partial_file_on_a_full_disk(tmp_path):
    """Ray copies checkpoints and its state through WholeFiles: each failed copy on a full disk
    left an empty partial file (8,648 after one search), never cleaned."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        filesystem = pyarrow.fs.PyFileSystem(WholeFiles())
        source = tmp_path / "checkpoint"
        source.mkdir()
        (source / "fold_0.pt").write_bytes(b"\1" * 300_000)
        (disk / "checkpoint_000000").mkdir()  # a folder takes space on a tmpfs too
        fill(disk)
        for _ in range(3):  # as Ray retries its copies
            with pytest.raises(OSError, match="No space left on device"):
                pyarrow.fs.copy_files(str(source), str(disk / "checkpoint_000000"), destination_filesystem=filesystem)
        assert partial_files(disk) == []


def test_partial_files_are_swept_in_subfolders_too(tmp_path):
    (tmp_path / "trial_a" / "checkpoint_000001").mkdir(parents=True)
    left = [tmp_path / ".leaderboard.md.x1.partial", tmp_path / "trial_a" / ".result.json.x2.partial",
            tmp_path / "trial_a" / "checkpoint_000001" / ".fold_0.pt.x3.partial"]
    for path in left:
        path.write_bytes(b"")
    (tmp_path / ".exports.x4.partial").mkdir()  # atomic_directory's folder
    kept = tmp_path / "trial_a" / "result.json"
    kept.write_text("{}")
    assert remove_partial_files(tmp_path) == 2  # this folder only: its file and its folder
    assert remove_partial_files(tmp_path, recursive=True) == 2
    assert partial_files(tmp_path) == [] and kept.exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_whose_storage_fills_up_stops_in_one_line_and_resumes_once_space_is_freed(cached_dir, tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        command = tiny_search(cached_dir, disk, "full")
        command[command.index("--num-samples") + 1], command[command.index("--epochs") + 1] = "2", "2"
        full = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert full.returncode == 1, full.stderr[-3000:]
        errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "no space left on the disk of" in errors[0], full.stderr[-3000:]
        assert "Traceback" not in full.stdout + full.stderr
        # No trial was retried against the full disk: Ray wrote one failure per trial at most.
        failures = [line for path in disk.rglob("error.txt") for line in path.read_text().splitlines()
                    if line.startswith("Failure #")]
        assert all(line.startswith("Failure # 1 ") for line in failures), failures

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        resumed = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming experiment" in resumed.stdout
        board = (disk / "full" / "leaderboard.csv").read_text().splitlines()
        assert len(board) == 1 + 2  # the header and the search's 2 trials
        assert partial_files(disk) == []


def test_a_full_disk_while_the_reports_are_written_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    """After the trials, the reports go to the experiment's folder: a full disk there (here raised
    where the search would write them) ends search/run.py with one line, not a traceback."""
    from search import run
    from search.tuner import session

    def reports_on_a_full_disk(plan, address, verbose=False):
        atomic_write_text(tmp_path / "gone" / "leaderboard.md", "x" * 3000)

    def full(fd):  # the disk fills while the leaderboard is flushed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trainable.atomic.os.fsync", full)
    monkeypatch.setattr(run, "make_plan", lambda args: None)
    monkeypatch.setattr(session, "run_search", reports_on_a_full_disk)
    assert run.main([]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: no space left on the disk of {tmp_path / 'gone'} (") and line.endswith(
        "free) to write leaderboard.md (2.9 KB); free some space and run the same command again")
    assert list((tmp_path / "gone").iterdir()) == []  # the temporary file went with the failure
