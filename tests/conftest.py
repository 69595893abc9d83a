"""Shared fixtures: one small synthetic RFCx dataset and its log-mel cache per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from datatools import prepare

# No model hub is reachable here: a test that would fetch ImageNet weights fails at once instead
# of retrying for half a minute (subprocesses inherit it). Tests train with model.pretrained
# false and load weights from local files.
os.environ["HF_HUB_OFFLINE"] = "1"
# Ray 2.60's first local ray.init() in a process sets RAY_AUTH_MODE=token in its environment, so
# every cluster the process starts after it requires the token, and the subprocesses that tests
# started with an environment copied before it (tests.helpers.ENV) are refused. Tests run their
# clusters on 127.0.0.1 without token authentication, whatever ran before them.
os.environ["RAY_AUTH_MODE"] = "disabled"

# Small enough for seconds on 2 cores, large enough for 3 stratified folds over 6 species.
SYNTH = dict(recordings=40, test_recordings=6, species=6, duration=12.0, sample_rate=16000, seed=7)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A synthetic dataset, generated once; tests must not modify it (copy it first)."""
    from datatools.synth import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, **SYNTH)
    return out


@pytest.fixture(scope="session")
def cached_dir(tmp_path_factory, synth_dir) -> Path:
    """The synthetic dataset with its log-mel cache in DATA/logmel; read-only for tests."""
    out = tmp_path_factory.mktemp("cached") / "data"
    shutil.copytree(synth_dir, out)
    assert prepare.main(["--data-dir", str(out), "--workers", "2"]) == 0
    return out


@pytest.fixture
def data_copy(tmp_path, synth_dir) -> Path:
    """A private copy of the synthetic dataset that a test may break."""
    out = tmp_path / "data"
    shutil.copytree(synth_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_trial(cached_dir) -> dict:
    """A trial config (as Ray Tune passes it) over the cached dataset: 2 folds, 2 epochs,
    128-frame crops and timm's test_resnet, well under a second per fold-epoch on one core."""
    return {
        "data_dir": str(cached_dir),
        "data": {"n_folds": 2, "crop_frames": 128, "crop_offsets": [16, 32, 64], "fp_per_epoch": 4,
                 "valid_overlap": 32, "test_overlap": 64},
        "model": {"backbone": "test_resnet", "pretrained": False},
        "augment": {"time_mask_frames": 8, "freq_mask_bins": 8},
        "train": {"epochs": 2, "batch_size": 16},
    }


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with 2 CPUs (the CI machine's), started once per test module (the
    multi-node tests connect this process to clusters of their own)."""
    import ray

    # "local": a new Ray even where a cluster of `ray start` runs on this machine (tests/test_jobs.py)
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def trained_experiment(tmp_path_factory, tiny_trial) -> Path:
    """An experiment with one trial ("abc") trained 1 epoch on 2 folds, checkpointed as Ray
    stores it, an empty trial, and a leaderboard naming "abc" best. Tests may add exports."""
    import numpy as np
    import torch

    from search.results.leaderboard import Row, frame
    from trainable.config import TrialConfig, from_dict
    from trainable.dotted import merge
    from trainable.training.fit import Device
    from trainable.training.kfold import KFoldTraining

    root = tmp_path_factory.mktemp("experiment") / "exp"
    config = from_dict(TrialConfig, merge(tiny_trial, {"train.epochs": 1}))
    training = KFoldTraining(config, Device(torch.device("cpu")))
    training.run_epoch()
    training.save(root / "trial_abc" / "checkpoint_000000")
    (root / "trial_empty").mkdir()
    rows = [Row("abc", "completed", training.selection.score, 0.01, 1, {"loss.w_max": 0.5}, 12.0),
            Row("empty", "errored: boom", np.nan, np.nan, 0, {"loss.w_max": 0.7}, 1.0)]
    (root / "leaderboard.csv").write_text(frame(rows).to_csv(index=False))
    (root / "leaderboard.md").write_text("# exp: loss_weights\n")
    return root


# The longest test files (minutes of real Ray searches each), longest first. `make test` hands
# whole files to its two processes in collection order: run these first, so that the short files
# fill the gaps and no process is left with one long file at the end while the other is idle.
LONGEST_FIRST = ("test_search_run", "test_cluster_multinode", "test_tune", "test_legacy_experiment", "test_reuse",
                 "test_interrupts", "test_search_s3", "test_jobs", "test_out_of_memory", "test_extend",
                 "test_preemption")


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank)))
