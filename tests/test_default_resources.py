"""What each trial gets without --gpus-per-trial / --cpus-per-trial: a whole GPU and its part of
the node's CPUs where the Ray cluster has GPUs (Ray's fake GPUs here: RAY_OVERRIDE_RESOURCES, which
Ray reads when it starts a node), one CPU where it has none; and an experiment keeps what its
trials got when it resumes."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys

import pytest
import ray
from ray import tune

from search import run
from search.plan import PLAN_FILE, load_plan, save_plan, settled, share_words, trial_resources, trial_share
from search.tuner.cluster import autoscaler_nodes
from tests.helpers import NO_HUB, REPO
from trainable import reported

CLUSTER_YAML = REPO / "cluster.yaml"
FAKE_GPUS = "RAY_OVERRIDE_RESOURCES"  # ray._private.ray_constants.RESOURCES_ENVIRONMENT_VARIABLE


def words(nodes: list[dict], cpus: float | None = None, gpus: float | None = None) -> str:
    plan = run.SearchPlan(spaces=(), fixed={}, num_samples=1, max_concurrent=None, cpus_per_trial=cpus,
                          gpus_per_trial=gpus, storage="/s", name="n", seed=0, max_failures=0)
    return share_words(plan, nodes)


def test_a_cluster_with_gpus_gives_each_trial_a_whole_gpu_and_its_part_of_the_cpus():
    workstation = [{"CPU": 16, "GPU": 2}]
    assert trial_share(workstation, None, None) == (8, 1)
    assert words(workstation) == "each trial: 1 GPU, 8 CPUs"
    assert trial_share([{"CPU": 16}], None, None) == (1, 0)
    assert words([{"CPU": 16}]) == "each trial: 1 CPU (no GPU in this Ray cluster)"
    assert words([{"CPU": 16}], cpus=2) == "each trial: 2 CPUs (no GPU in this Ray cluster)"
    # cluster.yaml: a head without CPUs alone at first; the GPU workers its autoscaler adds count.
    head = {"CPU": 0}
    assert trial_share([head, *autoscaler_nodes(CLUSTER_YAML)], None, None) == (8, 1)
    assert trial_share([head], None, None) == (1, 0)
    # Every GPU of every node can be busy: the node with the fewest CPUs per trial decides.
    assert trial_share([{"CPU": 8, "GPU": 1}, {"CPU": 16, "GPU": 8}, {"CPU": 64}], None, None) == (2, 1)
    assert trial_share([{"CPU": 2, "GPU": 4}], None, None) == (1, 1)  # at least one
    # What is given wins, and the other follows from it.
    assert trial_share(workstation, 3, None) == (3, 1)
    assert trial_share([{"CPU": 8, "GPU": 1}], None, 0.25) == (2, 0.25)
    assert words([{"CPU": 8, "GPU": 1}], gpus=0.25) == "each trial: 0.25 GPU (4 trials per GPU), 2 CPUs"
    assert trial_share([{"CPU": 8, "GPU": 1}, {"CPU": 32, "GPU": 4}], None, 2) == (16, 2)  # fits the second only
    assert trial_share(workstation, None, 0) == (1, 0)
    assert words(workstation, gpus=0) == ("each trial: 1 CPU and no GPU (--gpus-per-trial 0 in its plan, though"
                                         " this Ray cluster has GPUs)")


def test_an_experiment_keeps_the_resources_its_trials_got(capsys, cached_dir, tmp_path):
    """The plan leaves what is not given to the cluster; the saved plan has what the trials got,
    and the same command, or --resume, continues with it wherever it runs now."""
    search = ["--space", "loss_weights", "--data-dir", str(cached_dir), "--storage", str(tmp_path), *NO_HUB]
    command = [*search, "--name", "e"]
    plan = run.make_plan(run.parse_args(command))
    assert (plan.cpus_per_trial, plan.gpus_per_trial) == (None, None)
    assert trial_resources(plan) == {"CPU": 1, "GPU": 0}  # a Tuner built without a cluster: the CPU default
    (tmp_path / "e").mkdir()
    save_plan(settled(plan, [{"CPU": 16, "GPU": 2}]))
    for again in (command, ["--resume", "--name", "e", "--storage", str(tmp_path)]):
        resumed = run.make_plan(run.parse_args(again))
        assert (resumed.cpus_per_trial, resumed.gpus_per_trial) == (8, 1)
    assert run.make_plan(run.parse_args([*command, "--gpus-per-trial", "1"])).cpus_per_trial == 8
    assert run.main([*command, "--gpus-per-trial", "0.5"]) == 2
    assert "exists with other settings (gpus_per_trial: 1.0 there, 0.5 here)" in capsys.readouterr().err

    # Saved before the defaults came from the cluster: 1 CPU and no GPU, and so it resumes.
    saved = json.loads((tmp_path / "e" / PLAN_FILE).read_text())
    (tmp_path / "e" / PLAN_FILE).write_text(json.dumps({**saved, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}))
    assert load_plan(str(tmp_path), "e").gpus_per_trial == 0.0
    resumed = run.make_plan(run.parse_args(command))
    assert (resumed.cpus_per_trial, resumed.gpus_per_trial) == (1, 0)
    assert trial_resources(settled(resumed, [{"CPU": 16, "GPU": 2}])) == {"CPU": 1, "GPU": 0}

    # A trial without CPUs needs a GPU share that is known before Ray starts.
    assert run.main([*search, "--name", "f", "--cpus-per-trial", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("error: a trial needs CPUs or GPUs: got --cpus-per-trial 0 (give"
                                               " --gpus-per-trial for a trial without CPUs)")
    without_cpus = run.make_plan(run.parse_args([*search, "--name", "f", "--cpus-per-trial", "0",
                                                 "--gpus-per-trial", "0.5"]))
    assert trial_resources(without_cpus) == {"CPU": 0, "GPU": 0.5}


def what_ray_gave(config: dict) -> None:
    """Stands in for the trainable (whose CUDA check would refuse a fake GPU): one epoch, no
    score, and what Ray assigned it."""
    tune.report({reported.EPOCH: 1, reported.CV: 0.5, reported.FOLD_STD: 0.0,
                 **ray.get_runtime_context().get_assigned_resources()})


@pytest.fixture
def own_ray(monkeypatch):
    """Ray started by the test itself (join_cluster starts it); SIGTERM's handler as before."""
    from search.tuner import experiment

    if ray.is_initialized():
        ray.shutdown()
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(experiment, "train_sed", what_ray_gave)  # the search's own Tuner, a stand-in trial
    yield
    ray.shutdown()
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.ray
def test_without_the_flag_each_trial_of_a_cluster_with_gpus_gets_one(own_ray, capsys, cached_dir, tmp_path,
                                                                     monkeypatch):
    """The search itself (search.tuner.session.run_search on a local Ray with 2 fake GPUs), its
    trials stand-ins that report what Ray assigned them."""
    from search.tuner.session import run_search

    plan = run.make_plan(run.parse_args(["--space", "loss_weights", "--data-dir", str(cached_dir), "--storage",
                                         str(tmp_path), "--name", "g", "--num-samples", "2", "--epochs", "1",
                                         "--grace-period", "1", *NO_HUB]))
    monkeypatch.setenv(FAKE_GPUS, json.dumps({"CPU": 4, "GPU": 2}))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    assert run_search(plan, address=None) == 1  # no trial has a score: the stand-ins report none
    assert "; 2 trials of 1 epochs; each trial: 1 GPU, 2 CPUs; ASHA" in capsys.readouterr().out
    saved = load_plan(str(tmp_path), "g")
    assert (saved.cpus_per_trial, saved.gpus_per_trial) == (2, 1)  # what the trials got, for a resume
    assert dataclasses.replace(saved, cpus_per_trial=None, gpus_per_trial=None) == plan
    given = [json.loads(path.read_text()) for path in (tmp_path / "g").glob("trial_*/result.json")]
    assert [(result["GPU"], result["CPU"]) for result in given] == [(1, 2)] * 2
