"""Searches on a real two-node Ray cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`): the
shared-storage check, trials packed on (declared, fake) GPUs of both nodes, and a worker
node that dies mid-search."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
from ray import tune
from ray.cluster_utils import Cluster

from datatools.builtin import default_data_dir
from search.run import make_plan, parse_args
from search.tuner import experiment
from search.tuner.session import cluster_problem
from tests.helpers import ENV, NO_HUB, tiny_search

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

FEW_SECONDS = 120  # for anything that should take seconds, on a loaded 2-core machine


@pytest.fixture
def start_cluster():
    """Start a cluster of nodes with the given resources (the first is the head)."""
    clusters = []

    def start(*nodes: dict) -> tuple[Cluster, list]:
        cluster = Cluster(initialize_head=True, head_node_args={**nodes[0], "include_dashboard": False})
        workers = [cluster.add_node(**node) for node in nodes[1:]]
        cluster.wait_for_nodes()
        clusters.append(cluster)
        return cluster, workers

    yield start
    if ray.is_initialized():
        ray.shutdown()
    for cluster in clusters:
        cluster.shutdown()


def test_what_one_node_alone_has_is_refused_on_a_multi_node_cluster(start_cluster, cached_dir, tmp_path):
    """A storage path on the head's disk, or the built-in synthetic data, would fail the trials
    of the other nodes: the search is refused before it starts."""
    cluster, _ = start_cluster({"num_cpus": 1}, {"num_cpus": 1})
    ray.init(address=cluster.address, configure_logging=False)
    plan = make_plan(parse_args(["--space", "loss_weights", "--data-dir", str(cached_dir),
                                 "--storage", f"file://{tmp_path}/shared", "--name", "ok", *NO_HUB]))
    alive = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    assert len(alive) == 2
    assert cluster_problem(plan, alive, []) is None  # a file:// URI vouches for a shared path
    synthetic = dataclasses.replace(plan, fixed={**plan.fixed, "data_dir": str(default_data_dir())})
    assert cluster_problem(synthetic, alive, []).startswith("the built-in synthetic data are on this node only")
    ray.shutdown()

    storage = tmp_path / "experiments"
    done = subprocess.run(tiny_search(cached_dir, storage, "local") + ["--address", cluster.address],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=FEW_SECONDS)
    assert done.returncode == 2, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: --storage {storage} is on this node's own disk")
    assert "2 nodes" in error and "s3://" in error
    assert not storage.exists()  # refused before anything was written or trained


@ray.remote(num_cpus=0)
class Barrier:
    """Trials wait here until `parties` of them run at the same time."""

    def __init__(self, parties: int):
        self.parties, self.arrived = parties, 0

    def arrive(self) -> None:
        self.arrived += 1

    def complete(self) -> bool:
        return self.arrived >= self.parties


def where_am_i(config: dict) -> None:
    """Stands in for the trainable: reports where Ray placed it and what it was given, once
    all trials run at the same time (which they can only if Ray packs them as asked)."""
    context = ray.get_runtime_context()
    barrier = ray.get_actor(BARRIER)
    ray.get(barrier.arrive.remote())
    deadline = time.time() + FEW_SECONDS
    while not ray.get(barrier.complete.remote()) and time.time() < deadline:
        time.sleep(0.2)
    tune.report({"cv_lwlrap": 0.5, "node": context.get_node_id(),
                 "gpu_ids": ",".join(context.get_accelerator_ids()["GPU"]),
                 "gpu_share": context.get_assigned_resources().get("GPU", 0.0),
                 "packed": ray.get(barrier.complete.remote())})


BARRIER = "all-trials-at-once"


@pytest.mark.parametrize("share", [0.5])  # two trials per GPU; 0.25 packs four the same way, in twice the time
def test_fractional_gpus_pack_trials_on_every_gpu_of_both_nodes(start_cluster, cached_dir, tmp_path, monkeypatch,
                                                                share):
    per_gpu = round(1 / share)
    capacity = 2 * per_gpu  # two nodes with one GPU each
    cluster, _ = start_cluster(*[{"num_cpus": per_gpu, "num_gpus": 1}] * 2)
    plan = make_plan(parse_args(["--space", "loss_weights", "--data-dir", str(cached_dir), "--storage",
                                 str(tmp_path), "--name", "packed", "--gpus-per-trial", str(share),
                                 "--cpus-per-trial", "1", "--num-samples", str(capacity), "--epochs", "1",
                                 "--grace-period", "1", *NO_HUB]))
    ray.init(address=cluster.address, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    barrier = Barrier.options(name=BARRIER).remote(capacity)
    monkeypatch.setattr(experiment, "train_sed", where_am_i)  # the search's own Tuner, a stand-in trial
    results = [result.metrics for result in experiment.fit(experiment.build_tuner(plan))]
    ray.kill(barrier)

    assert len(results) == capacity and all(result["packed"] for result in results)
    assert all(result["gpu_share"] == share for result in results)
    placed = pd.DataFrame(results).groupby(["node", "gpu_ids"]).size()
    assert len(placed) == 2 and placed.index.get_level_values("node").nunique() == 2  # one GPU per node
    assert list(placed) == [per_gpu, per_gpu]  # 1/share trials on each GPU at once


def results_recorded(experiment: Path) -> dict[str, list[dict]]:
    """Trial directory -> the results the driver has recorded (each with its checkpoint)."""
    return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
            for path in experiment.glob("trial_*/result.json")}


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_a_search_survives_the_death_of_a_worker_node(start_cluster, cached_dir, tmp_path):
    """Two trials, one per node, checkpointing every epoch; the worker node dies once its trial
    has a recorded checkpoint."""
    epochs = 5
    cluster, (worker,) = start_cluster({"num_cpus": 1}, {"num_cpus": 1})
    raylet = worker.all_processes["raylet"][0].process.pid  # the parent of the worker's trial processes
    storage, experiment_dir = f"file://{tmp_path}/shared", tmp_path / "shared" / "spot"
    command = tiny_search(cached_dir, storage, "spot") + [
        "--address", cluster.address, "--num-samples", "2", "--epochs", str(epochs),
        "--grace-period", str(epochs),  # ASHA stops no one: every trial must finish
        "--set", "train.checkpoint_seconds=0"]  # every epoch: only the one in flight may be lost
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                              cwd=tmp_path)
    killed: dict[str, tuple[int, int]] = {}  # the worker's trial -> (epochs recorded, pid) when its node died

    def kill_the_worker_once_its_trial_has_a_checkpoint():
        deadline = time.time() + 4 * FEW_SECONDS
        while not killed and time.time() < deadline and driver.poll() is None:
            for trial, results in results_recorded(experiment_dir).items():
                if results and parent_pid(results[-1]["pid"]) == raylet and results[-1]["epoch"] < epochs:
                    killed[trial] = len(results), results[-1]["pid"]
            time.sleep(0.1)
        cluster.remove_node(worker, allow_graceful=False)  # as a reclaimed spot instance

    killer = threading.Thread(target=kill_the_worker_once_its_trial_has_a_checkpoint)
    killer.start()
    try:
        stdout, stderr = driver.communicate(timeout=8 * FEW_SECONDS)
    finally:
        driver.kill()
        killer.join()
    assert driver.returncode == 0, stderr[-3000:]
    assert killed, "the worker's trial reported no epoch before the end"

    board = pd.read_csv(experiment_dir / "leaderboard.csv")
    assert list(board.status) == ["completed"] * 2 and list(board.epochs) == [epochs] * 2
    study = optuna.load_study(study_name="spot", storage=f"sqlite:///{experiment_dir / 'study.db'}")
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(sorted(trial.intermediate_values) == list(range(1, epochs + 1)) for trial in study.trials)

    for trial, results in results_recorded(experiment_dir).items():
        last = results[-1]
        assert last["epoch"] == last["training_iteration"] == epochs  # the epochs count on, none is skipped
        if trial in killed:  # retried by Ray on the head, from its last recorded checkpoint: only the
            # epoch in flight when the node died is trained again
            recorded, pid = killed[trial]
            assert last["pid"] != pid
            assert last["iterations_since_restore"] <= epochs - recorded
        else:
            assert last["iterations_since_restore"] == epochs  # the head's trial ran straight through
