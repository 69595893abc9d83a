"""A search with --storage s3://: checkpoints, TensorBoard files and reports land in the bucket,
and the same command resumes from it. S3 is moto's server on 127.0.0.1, which pyarrow (Ray's
storage layer) and boto3 reach through AWS_ENDPOINT_URL, as they would reach AWS."""

from __future__ import annotations

import socket
import subprocess

import boto3
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from search.plan import load_plan
from tests.helpers import ENV, tiny_search

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


def test_a_search_on_s3_keeps_everything_in_the_bucket_and_resumes_from_it(s3_env, cached_dir, tmp_path):
    storage = f"s3://{BUCKET}/experiments"
    command = tiny_search(cached_dir, storage, "cloud") + ["--num-samples", "2", "--epochs", "2", "--grace-period", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env={**ENV, **s3_env}, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    stored = keys("experiments/cloud/")
    for report in ("search_plan.json", "leaderboard.md", "leaderboard.csv", "best_config.yaml", "study.db"):
        assert report in stored
        assert (tmp_path / "experiments/cloud" / report).is_file()  # and the local copy
    trials = {key.split("/")[0] for key in stored if key.startswith("trial_")}
    assert len(trials) == 2
    for trial in trials:
        assert {f"{trial}/checkpoint_000001/fold_0.pt", f"{trial}/checkpoint_000001/trial.json"} <= set(stored)
        assert any(key.startswith(f"{trial}/events.out.tfevents") for key in stored)
    plan = load_plan(storage, "cloud")  # read back from the bucket
    assert plan is not None and plan.spaces == ("loss_weights",) and plan.num_samples == 2

    again = subprocess.run(command, capture_output=True, text=True, env={**ENV, **s3_env}, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming experiment {storage}/cloud" in again.stdout
    board = pd.read_csv(tmp_path / "experiments/cloud/leaderboard.csv")
    assert list(board.status) == ["completed"] * 2 and list(board.epochs) == [2, 2]
