"""search/storage.py: where an experiment lives (a path, file://, or an object store) and
moving its report files to and from it through pyarrow, as Ray does."""

from __future__ import annotations

import os
from pathlib import Path

from search.storage import (
    download,
    is_remote,
    local_copy_dir,
    local_path,
    newest_with,
    normalise,
    read_text,
    upload,
    user_cache_dir,
)


def test_storage_kinds():
    assert is_remote("s3://b/p") and is_remote("gs://b/p") and not is_remote("file:///x") and not is_remote("/x")
    assert local_path("file:///mnt/x") == Path("/mnt/x") and local_path("s3://b/p") is None


def test_reports_are_uploaded_as_files_and_read_back_through_pyarrow(tmp_path):
    reports = tmp_path / "reports"
    (reports / "trial_1").mkdir(parents=True)  # trial directories are Ray's to store, not ours
    (reports / "leaderboard.md").write_text("| rank |")
    (reports / "study.db").write_bytes(b"\0sqlite")
    upload(reports, f"file://{tmp_path}/bucket/name")
    assert sorted(p.name for p in (tmp_path / "bucket/name").iterdir()) == ["leaderboard.md", "study.db"]
    assert (tmp_path / "bucket/name/study.db").read_bytes() == b"\0sqlite"
    assert read_text(f"file://{tmp_path}/bucket/name/leaderboard.md") == "| rank |"
    assert read_text(f"file://{tmp_path}/bucket/name/absent.json") is None


def test_paths_are_made_absolute_and_uris_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise("experiments") == str(tmp_path / "experiments")
    assert normalise("s3://b/p") == "s3://b/p" and normalise("file:///x") == "file:///x"


def test_local_copies_of_object_store_experiments_live_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir() == tmp_path / "rfcx-tune"
    assert local_copy_dir("s3://bucket/a/b") == tmp_path / "rfcx-tune/reports/s3/bucket/a/b"
    assert local_copy_dir("gs://bucket/../../etc") == tmp_path / "rfcx-tune/reports/gs/bucket/etc"


def test_the_newest_experiment_is_the_folder_with_the_newest_plan(tmp_path):
    for name, age in (("old", 100), ("new", 10), ("no_plan", 0)):
        (tmp_path / name).mkdir()
        if name != "no_plan":
            (tmp_path / name / "plan.json").write_text("{}")
            os.utime(tmp_path / name / "plan.json", (1e9 - age, 1e9 - age))
    assert newest_with(str(tmp_path), "plan.json") == "new"
    assert newest_with(f"file://{tmp_path}", "plan.json") == "new"
    assert newest_with(str(tmp_path / "absent"), "plan.json") is None


def test_a_download_keeps_what_the_local_copy_has_newer(tmp_path):
    stored, local = tmp_path / "stored", tmp_path / "local"
    stored.mkdir()
    local.mkdir()
    (stored / "study.db").write_text("stored")
    (stored / "leaderboard.md").write_text("stored")
    (stored / "trial_1").mkdir()
    (local / "study.db").write_text("newer here")
    os.utime(stored / "study.db", (1e9, 1e9))
    download(f"file://{stored}", local)
    assert (local / "study.db").read_text() == "newer here"
    assert (local / "leaderboard.md").read_text() == "stored"
    assert not (local / "trial_1").exists()
