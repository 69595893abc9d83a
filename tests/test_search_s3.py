"""A search with --storage s3://: checkpoints, TensorBoard files and reports land in the bucket,
and the same command resumes from it. S3 is moto's server on 127.0.0.1, which pyarrow (Ray's
storage layer) and boto3 reach through AWS_ENDPOINT_URL, as they would reach AWS."""

from __future__ import annotations

import socket
import subprocess
import sys

import boto3
import optuna
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import ENV, REPO, tiny_search

pytestmark = [pytest.mark.ray, pytest.mark.s3]

BUCKET = "rfcx"


@pytest.fixture
def s3_env(monkeypatch):
    """An empty bucket on a local S3 server; the environment that points AWS clients at it."""
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def keys(prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"].removeprefix(prefix) for page in pages for item in page.get("Contents", [])]


def test_a_search_on_s3_keeps_everything_in_the_bucket_and_resumes_from_it_elsewhere(s3_env, cached_dir, tmp_path):
    storage = f"s3://{BUCKET}/experiments"
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"  # two machines, as far as the files go
    command = tiny_search(cached_dir, storage, "cloud") + ["--num-samples", "2", "--epochs", "2", "--grace-period", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**ENV, **s3_env, "XDG_CACHE_HOME": str(here)})
    assert done.returncode == 0, done.stderr[-3000:]

    stored = keys("experiments/cloud/")
    local_copy = here / "rfcx-tune/reports/s3/rfcx/experiments/cloud"
    for report in ("search_plan.json", "leaderboard.md", "leaderboard.csv", "best_config.yaml", "study.db"):
        assert report in stored
        assert (local_copy / report).is_file()
    assert f"leaderboard: {local_copy / 'leaderboard.md'}" in done.stdout
    assert not (tmp_path / "experiments").exists()  # no local copy where a local --resume would look
    trials = {key.split("/")[0] for key in stored if key.startswith("trial_")}
    assert len(trials) == 2
    for trial in trials:
        # One checkpoint, at the end: 2 epochs have no ASHA rung below the budget, nor 60 s.
        assert {f"{trial}/checkpoint_000000/fold_0.pt", f"{trial}/checkpoint_000000/trial.json"} <= set(stored)
        assert any(key.startswith(f"{trial}/events.out.tfevents") for key in stored)

    again = subprocess.run([sys.executable, str(REPO / "search/run.py"), "--resume", "--storage", storage],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path,
                           env={**ENV, **s3_env, "XDG_CACHE_HOME": str(elsewhere)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming experiment {storage}/cloud" in again.stdout  # the newest experiment in the bucket
    copy = elsewhere / "rfcx-tune/reports/s3/rfcx/experiments/cloud"
    board = pd.read_csv(copy / "leaderboard.csv")
    assert list(board.status) == ["completed"] * 2 and list(board.epochs) == [2, 2]
    study = optuna.load_study(study_name="cloud", storage=f"sqlite:///{copy / 'study.db'}")
    assert len(study.trials) == 2  # the study came along from the bucket


def test_a_bucket_that_cannot_be_read_is_one_line_and_exit_2(s3_env, cached_dir, tmp_path):
    done = subprocess.run(tiny_search(cached_dir, "s3://rfcx/experiments", "x"), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**ENV, **s3_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert done.returncode == 2
    assert done.stderr.startswith("error: --storage s3://rfcx/experiments: cannot read it:")
    assert len(done.stderr.strip().splitlines()) == 1
