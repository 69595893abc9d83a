"""What a search checks about its Ray cluster before it starts: that some node (alive, or one
the autoscaler can start) fits a trial, and that every node can reach the storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.run import parse_args
from search.storage import filesystem_type, is_network_filesystem, shared_storage_problem
from search.tuner.cluster import autoscaler_nodes, trials_at_once, trials_on, unfit_request

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_a_trial_must_fit_on_one_node_not_on_the_cluster_total():
    two_small = [{"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}]
    assert unfit_request({"CPU": 2, "GPU": 1}, two_small) is None
    assert unfit_request({"CPU": 0.5, "GPU": 0.25}, two_small) is None
    error = unfit_request({"CPU": 2, "GPU": 2}, two_small)  # 2 GPUs in all, but never on one node
    assert error.startswith("a trial asks for 2 CPU, 2 GPU but no node")
    assert "the most any node has is 2 CPU, 1 GPU" in error
    assert "no node" in unfit_request({"CPU": 1, "GPU": 0}, [])


def test_the_nodes_the_autoscaler_may_start_come_from_the_cluster_config(tmp_path):
    # The head of a `ray up` cluster keeps cluster.yaml (resources filled in) as ~/ray_bootstrap_config.yaml.
    assert autoscaler_nodes(CLUSTER_YAML) == [{"CPU": 8, "GPU": 1}] * 4  # gpu_worker's max_workers
    assert autoscaler_nodes(tmp_path / "absent.yaml") == []
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    (tmp_path / "capped.yaml").write_text(yaml.safe_dump({**config, "max_workers": 2}))  # all types together
    assert autoscaler_nodes(tmp_path / "capped.yaml") == [{"CPU": 8, "GPU": 1}] * 2


def test_trials_at_once_count_what_fits_on_each_node():
    worker = {"CPU": 8, "GPU": 1}
    assert trials_on(worker, {"CPU": 2, "GPU": 0.25}) == 4
    assert trials_on(worker, {"CPU": 3, "GPU": 0.25}) == 2  # the CPUs run out first
    assert trials_on(worker, {"CPU": 1, "GPU": 0.3}) == 3
    assert trials_on({"CPU": 0}, {"CPU": 1, "GPU": 0}) == 0
    # the documented search on a full cluster.yaml cluster: 4 workers x 4 trials
    assert trials_at_once([{"CPU": 0}, *autoscaler_nodes(CLUSTER_YAML)], {"CPU": 2, "GPU": 0.25}) == 16


def test_the_documented_search_fits_a_fresh_cluster_only_through_its_autoscaler():
    """On `ray up cluster.yaml` a search starts with the CPU-less head alone: it must not be
    refused, because the autoscaler adds the GPU workers that its trials wait for."""
    head = yaml.safe_load(CLUSTER_YAML.read_text())["available_node_types"]["head"]["resources"]
    args = parse_args(["--space", "loss_weights", "--cpus-per-trial", "2", "--gpus-per-trial", "0.25"])
    wanted = {"CPU": args.cpus_per_trial, "GPU": args.gpus_per_trial}
    assert unfit_request(wanted, [head]) is not None
    assert unfit_request(wanted, [head, *autoscaler_nodes(CLUSTER_YAML)]) is None


@pytest.mark.parametrize("storage", ["s3://bucket/experiments", "gs://bucket/experiments", "file:///mnt/shared/x"])
def test_object_stores_and_file_uris_are_taken_on_a_multi_node_cluster(storage):
    assert shared_storage_problem(storage, nodes=3, can_add_nodes=True) is None


def test_a_path_on_the_local_disk_is_refused_once_there_are_or_can_be_other_nodes(tmp_path):
    assert shared_storage_problem(str(tmp_path), nodes=1, can_add_nodes=False) is None  # local Ray
    many = shared_storage_problem(str(tmp_path), nodes=2, can_add_nodes=False)
    assert many.startswith(f"--storage {tmp_path} is on this node's own disk ({filesystem_type(tmp_path)})")
    assert "this Ray cluster has 2 nodes" in many and "s3://" in many
    assert "autoscaler adds nodes" in shared_storage_problem(str(tmp_path), nodes=1, can_add_nodes=True)


def test_a_path_on_a_network_file_system_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr("search.storage.filesystem_type", lambda path: "nfs4")
    assert shared_storage_problem(str(tmp_path), nodes=4, can_add_nodes=True) is None


def test_the_file_system_type_is_the_one_of_the_nearest_mount_point(tmp_path):
    assert filesystem_type(Path("/proc/self/status")) == "proc"
    assert filesystem_type(tmp_path / "not" / "yet" / "made") == filesystem_type(tmp_path)
    assert [is_network_filesystem(kind) for kind in ("nfs4", "fuse.s3fs", "lustre", "ext4", "overlay")] == [
        True, True, True, False, False]
