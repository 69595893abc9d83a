"""Searches as Ray Jobs, as docs/cluster.md runs them: two searches submitted to
one local Ray cluster through its job server (the dashboard), followed with `ray job logs
--follow`; one is stopped mid-run with `ray job stop`'s signal, the other goes on and finishes,
and the stopped one resumes when its command is submitted again."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.helpers import ENV, REPO, tiny_search

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

FEW_MINUTES = 300  # for anything that should take seconds, on a loaded 2-core machine
DONE = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
RAY_CLI = str(Path(sys.executable).parent / "ray")  # the .venv's, whatever PATH says


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_grace_of_cluster_yaml() -> str:
    """The seconds `ray job stop` gives a driver before SIGKILL on the cluster: what the head's
    `ray start` in cluster.yaml sets (Ray's own 3 s leave Tune no time to save)."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    found = re.search(r"RAY_JOB_STOP_WAIT_TIME_S=(\d+)", " ".join(config["head_start_ray_commands"]))
    assert found, "cluster.yaml's head must give `ray job stop` time to save the search"
    return found.group(1)


@pytest.fixture
def job_server(monkeypatch):
    """A one-node Ray cluster with 2 CPUs and the dashboard's job server; yields its URL (what
    `ray dashboard cluster.yaml` forwards to localhost:8265 on a real cluster)."""
    # The job stop grace as cluster.yaml sets it: Ray's processes inherit it from `ray start`.
    monkeypatch.setenv("RAY_JOB_STOP_WAIT_TIME_S", stop_grace_of_cluster_yaml())
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # A temp dir of its own, short for the sockets' path limit.
    temp_dir = tempfile.mkdtemp(prefix="rfcx-jobs-", dir="/tmp")
    port = free_port()
    cluster = None
    try:
        # Free ports for the dashboard and its agent: the agent's default (52365) may be taken
        # by another Ray here, and without its agent the job server accepts no job.
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "include_dashboard": True, "dashboard_port": port,
            "dashboard_agent_listen_port": free_port(), "temp_dir": temp_dir})
        # What `ray start --head` does and Cluster does not: record the cluster as this temp
        # dir's current one. A job's driver gets the address the job server resolves from it
        # ("auto"); without it, Ray picks any GCS process on this machine, another test's too.
        ray._private.utils.write_ray_address(cluster.address, temp_dir)
        yield f"http://127.0.0.1:{port}"
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(client: JobSubmissionClient, command: list[str]) -> str:
    """Submit a command as a job, as `ray job submit -- COMMAND` does (no working dir: the
    code is on the node); retried while the head's agent, which runs the jobs, is starting."""
    deadline = time.time() + FEW_MINUTES
    while True:
        try:
            return client.submit_job(entrypoint=shlex.join(command))
        except RuntimeError as error:  # "No available agent to submit job, please try again later."
            if "No available agent" not in str(error) or time.time() > deadline:
                raise
            time.sleep(0.5)


def wait_for(client: JobSubmissionClient, job: str) -> JobStatus:
    deadline = time.time() + FEW_MINUTES
    while (status := client.get_job_status(job)) not in DONE and time.time() < deadline:
        time.sleep(0.5)
    return status


def recorded_epochs(experiment: Path) -> int:
    """Results the search's trials have recorded so far."""
    return sum(len(path.read_text().splitlines()) for path in experiment.glob("trial_*/result.json"))


def leaderboard(experiment: Path) -> pd.DataFrame:
    return pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})


def test_two_searches_share_a_cluster_as_jobs_and_a_stopped_one_resumes(job_server, cached_dir, tmp_path):
    client = JobSubmissionClient(job_server)
    storage = tmp_path / "experiments"
    # One trial each: 2 epochs, long enough to stop one mid-run, and 3 for the other, which must
    # still be running then.
    going, stopping = (tiny_search(cached_dir, storage, name) + ["--num-samples", "1", "--epochs", str(epochs),
                                                                  "--grace-period", str(epochs)]
                       for name, epochs in (("going", 3), ("stopping", 2)))
    cli_env = {**ENV, "RAY_API_SERVER_ADDRESS": job_server}  # as docs/cluster.md's `export` sets it
    first = submit(client, going)
    follow = subprocess.Popen([RAY_CLI, "job", "logs", "--follow", first], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = submit(client, stopping)

    deadline = time.time() + FEW_MINUTES
    while recorded_epochs(storage / "stopping") == 0 and time.time() < deadline \
            and client.get_job_status(second) not in DONE:
        time.sleep(0.2)
    assert recorded_epochs(storage / "stopping") > 0, client.get_job_logs(second)[-3000:]
    # SIGTERM to the driver, SIGKILL after the grace; the CLI waits until the job has ended.
    stop = subprocess.run([RAY_CLI, "job", "stop", second], env=cli_env, capture_output=True, text=True,
                          timeout=FEW_MINUTES)
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert client.get_job_status(second) == JobStatus.STOPPED
    # The other search was not stopped with it (it may have finished meanwhile: its trial is short).
    assert client.get_job_status(first) in (JobStatus.RUNNING, JobStatus.SUCCEEDED)
    stopped_log = client.get_job_logs(second)
    # The driver had time to stop Tune and save: it ends with the line that says how to go on.
    assert "interrupted: continue with" in stopped_log, stopped_log[-3000:]
    assert (storage / "stopping" / "leaderboard.csv").exists()  # the leaderboard so far

    again = submit(client, stopping)  # the same command, submitted again, resumes
    assert wait_for(client, first) == JobStatus.SUCCEEDED, client.get_job_logs(first)[-3000:]
    assert wait_for(client, again) == JobStatus.SUCCEEDED, client.get_job_logs(again)[-3000:]
    followed, _ = follow.communicate(timeout=FEW_MINUTES)  # `--follow` ends with its job
    assert "starting experiment" in followed and "leaderboard" in followed, followed[-3000:]
    assert "resuming experiment" in client.get_job_logs(again)

    for name, epochs in (("going", 3), ("stopping", 2)):
        board = leaderboard(storage / name)
        assert len(board) == 1 and (board.status == "completed").all(), (name, list(board.status))
        for trial in board.trial:  # every trial trained to its last epoch
            results = [json.loads(line) for line in
                       (storage / name / f"trial_{trial}" / "result.json").read_text().splitlines()]
            assert results[-1]["epoch"] == epochs
    # Each driver joined the job's cluster (RAY_ADDRESS) rather than starting a Ray of its own:
    # the cluster knows the driver of every submission.
    drivers = {job.submission_id: job.driver_info for job in client.list_jobs()}
    assert all(drivers[job] is not None for job in (first, second, again)), drivers
