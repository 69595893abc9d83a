"""The probes of issue 17: no silent wait on a store or a cluster that does not answer, and the
data checked before Ray starts. Each answers with one line and exit code 2, and leaves nothing
behind; all run search/run.py's main() in this process (no Ray is started)."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import time
from pathlib import Path

import pytest

from search import run
from search.storage import REMOTE_TIMEOUT_ENV
from tests.helpers import NO_HUB

TIMEOUT_S = 1  # the remote timeout of these tests


def error_of(capsys, argv: list[str]) -> str:
    assert run.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err  # one line, no traceback
    assert "starting experiment" not in captured.out
    return err


@pytest.fixture
def silent_server():
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))  # Ray and the probe connect to 127.0.0.1 as this node's IP
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def remote_env(monkeypatch, tmp_path):
    monkeypatch.setenv(REMOTE_TIMEOUT_ENV, str(TIMEOUT_S))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the reports of an S3 search go
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def search(cached_dir: Path, *more: str) -> list[str]:
    return ["--space", "mixup", "--data-dir", str(cached_dir), *NO_HUB, *more]


def test_a_silent_object_store_and_an_unsupported_scheme_are_one_line(capsys, cached_dir, silent_server, remote_env,
                                                                      tmp_path):
    storage = f"s3://rfcx/experiments?endpoint_override=127.0.0.1:{silent_server}&scheme=http"
    started = time.monotonic()
    err = error_of(capsys, search(cached_dir, "--storage", storage, "--name", "exp"))
    assert f"S3 at 127.0.0.1:{silent_server} did not answer in {TIMEOUT_S} s" in err and REMOTE_TIMEOUT_ENV in err
    assert time.monotonic() - started < 20  # the timeout, and the child process's start on a loaded machine
    assert "ftp:// is not supported" in error_of(capsys, search(cached_dir, "--storage", "ftp://host/x"))
    assert not (tmp_path / "cache").exists()  # no local copy of reports begun
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in error_of(capsys, search(cached_dir, "--storage", str(tmp_path / "file/exp")))
    assert (tmp_path / "file").read_text() == "x"


def test_a_silent_or_absent_ray_cluster_is_one_line(capsys, cached_dir, silent_server, remote_env, monkeypatch,
                                                    tmp_path):
    storage = ["--storage", str(tmp_path / "experiments")]
    started = time.monotonic()
    err = error_of(capsys, search(cached_dir, *storage, "--address", f"127.0.0.1:{silent_server}"))
    assert f"did not answer as a Ray cluster in {TIMEOUT_S} s" in err and REMOTE_TIMEOUT_ENV in err
    assert time.monotonic() - started < 20
    assert "no Ray cluster there (Connection refused)" in error_of(capsys, search(cached_dir, *storage,
                                                                                  "--address", "127.0.0.1:1"))
    # Inside a Ray job (RAY_ADDRESS set by `ray job submit`) the search joins that cluster.
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{silent_server}")
    assert f"RAY_ADDRESS=127.0.0.1:{silent_server}" in error_of(capsys, search(cached_dir, *storage))
    monkeypatch.setenv(REMOTE_TIMEOUT_ENV, "soon")
    assert f"{REMOTE_TIMEOUT_ENV}='soon': expected a positive number" in error_of(capsys,
                                                                                   search(cached_dir, *storage))
    assert not (tmp_path / "experiments").exists()


def test_the_plan_is_written_before_ray_starts_and_the_banner_is_printed(capsys, cached_dir, tmp_path):
    import ray

    from search.tuner.session import run_search

    plan = run.make_plan(run.parse_args(search(cached_dir, "--storage", str(tmp_path), "--name", "exp")))
    (tmp_path / "file").write_text("x")
    unwritable = dataclasses.replace(plan, storage=str(tmp_path / "file"))
    assert run_search(unwritable, address=None) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: cannot use") and len(captured.err.strip().splitlines()) == 1
    assert "starting experiment" not in captured.out and not ray.is_initialized()
    assert (tmp_path / "file").read_text() == "x"


@pytest.fixture
def cache_copy(cached_dir, tmp_path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(cached_dir, out)
    return out


def test_a_cache_missing_arrays_is_refused_with_the_prepare_command(capsys, cache_copy, tmp_path):
    from trainable.data.layouts import load_annotations

    annotations = load_annotations(cache_copy)
    gone = [f"train/{annotations.train_ids[0]}", f"test/{annotations.test_ids[-1]}"]
    for array in gone:
        (cache_copy / "logmel" / f"{array}.npy").unlink()
    storage = tmp_path / "experiments"
    err = error_of(capsys, search(cache_copy, "--storage", str(storage)))
    assert f"lacks 2 of the {len(annotations.train_ids) + len(annotations.test_ids)} recordings" in err
    assert all(array in err for array in gone)
    assert err.endswith(f"update it: python -m datatools.prepare --data-dir {cache_copy.resolve()}")
    regenerated = annotations.train_ids[1]  # its audio replaced since it was cached: its array is stale
    shutil.copyfile(cache_copy / "train" / f"{annotations.train_ids[2]}.flac",
                    cache_copy / "train" / f"{regenerated}.flac")
    err = error_of(capsys, search(cache_copy, "--storage", str(storage)))
    assert "lacks 2 and has stale arrays of 1 of the" in err and f"train/{regenerated}" in err
    moved = tmp_path / "elsewhere"
    shutil.move(cache_copy / "logmel", moved)
    err = error_of(capsys, search(cache_copy, "--storage", str(storage), "--cache-dir", str(moved)))
    assert err.endswith(f"--data-dir {cache_copy.resolve()} --cache-dir {moved.resolve()}")
    err = error_of(capsys, search(cache_copy, "--storage", str(storage)))
    assert f"no log-mel cache at {cache_copy.resolve() / 'logmel'}; build it: python -m datatools.prepare" in err
    assert not storage.exists()


def test_more_folds_than_tp_recordings_are_refused_before_ray(capsys, cached_dir, tmp_path):
    from trainable.data.layouts import load_annotations

    recordings = len(set(load_annotations(cached_dir).tp.recording))
    err = error_of(capsys, search(cached_dir, "--storage", str(tmp_path / "x"), "--folds", "100"))
    assert f"data.n_folds 100 (--folds): 100 folds need at least 100 train_tp recordings, found {recordings}" in err
    assert not (tmp_path / "x").exists()
