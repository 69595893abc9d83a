"""The k-fold training without Ray: determinism, exact resume, checkpoints, divergence, schedule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainable.config import ConfigError, TrainConfig, TrialConfig, from_dict
from trainable.data.layouts import load_annotations
from trainable.dotted import merge
from trainable.metrics import lwlrap
from trainable.training.checkpoint import BEST_OOF_FILE, TRIAL_FILE, best_weights_file, fold_file
from trainable.training.fit import Device, DivergedError
from trainable.training.kfold import KFoldTraining
from trainable.training.loader import loader_workers, shuffled_batches
from trainable.training.optim import batches_per_epoch, step_clamped

pytestmark = pytest.mark.slow

CPU = Device(torch.device("cpu"))
TIMING = "samples_per_s"  # the one metric that may differ between identical runs


def training(tiny_trial: dict, **overrides) -> KFoldTraining:
    torch.set_num_threads(1)
    return KFoldTraining(from_dict(TrialConfig, merge(tiny_trial, overrides)), CPU)


def same_numbers(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != TIMING} == {k: v for k, v in b.items() if k != TIMING}


def test_resumed_training_repeats_an_uninterrupted_one_exactly(tiny_trial, tmp_path):
    straight = training(tiny_trial)
    epochs = [straight.run_epoch(), straight.run_epoch()]
    # cv_lwlrap scores the pooled out-of-fold predictions, not the mean of the fold scores; the
    # checkpointed predictions are those of the selected epochs (each fold's best, v1_7).
    pooled_truth = np.concatenate([run.truth for run in straight.runs])
    assert straight.selection.common.score == max(e["cv_lwlrap"] for e in epochs)
    assert lwlrap(pooled_truth, straight.selection.oof) == straight.selection.score == epochs[1]["cv_lwlrap_fold_best"]
    for index in (0, 1):  # each fold at the epoch of its best reference LRAP, the first of ties
        lraps = [e[f"fold/{index}/lrap_reference"] for e in epochs]
        assert epochs[1][f"fold/{index}/best_epoch"] == 1 + int(np.argmax(lraps))

    first = training(tiny_trial)
    assert same_numbers(first.run_epoch(), epochs[0])  # deterministic for a seed
    first.save(tmp_path)
    resumed = training(tiny_trial)
    resumed.load(tmp_path)
    assert resumed.epoch == 1
    second = resumed.run_epoch()
    assert second["epoch"] == 2
    assert same_numbers(second, epochs[1])
    for a, b in zip(straight.runs, resumed.runs):
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
        chosen, restored = straight.selection.weights[a.fold.index], resumed.selection.weights[b.fold.index]
        assert all(torch.equal(chosen[k], restored[k]) for k in chosen)  # the selected weights too


def test_epoch_metrics_describe_every_fold(tiny_trial):
    metrics = training(tiny_trial, **{"train.folds": [1], "data.n_folds": 3}).run_epoch()
    assert metrics["epoch"] == 1 and metrics["lr"] == pytest.approx(1e-3)
    assert 0 < metrics["cv_lwlrap"] <= 1 and metrics["best_cv_lwlrap"] == metrics["cv_lwlrap"]
    assert sorted(k for k in metrics if k.startswith("fold/")) == [  # only the chosen fold
        "fold/1/best_epoch", "fold/1/lrap_reference", "fold/1/lwlrap"]
    assert metrics["fold/1/lwlrap"] == metrics["cv_lwlrap"] and metrics["fold_lwlrap_std"] == 0.0
    assert metrics["cv_lrap_reference"] == metrics["fold/1/lrap_reference"] == metrics["score_lrap_reference"]
    assert metrics["score"] == metrics["cv_lwlrap_fold_best"] == metrics["cv_lwlrap"]  # one epoch: all agree
    assert metrics["samples_per_s"] > 0
    for term in ("total", "att", "max", "pseudo", "frame"):
        assert math.isfinite(metrics[f"loss/{term}"]) and metrics[f"loss/{term}"] > 0


def test_another_seed_gives_other_numbers(tiny_trial):
    one = training(tiny_trial, **{"train.folds": [0]}).run_epoch()
    other = training(tiny_trial, **{"train.folds": [0], "train.seed": 1}).run_epoch()
    assert one["loss/total"] != other["loss/total"]


def test_checkpoint_holds_every_fold_and_the_best_out_of_fold_predictions(tiny_trial, tmp_path):
    trial = training(tiny_trial)
    metrics = trial.run_epoch()
    trial.save(tmp_path)
    saved = json.loads((tmp_path / TRIAL_FILE).read_text())
    assert saved["epoch"] == 1 and saved["score"] == metrics["score"] and saved["best_epochs"] == [1, 1]
    assert saved["config"]["model"]["backbone"] == "test_resnet" and saved["config"]["recipe"] == "v1_7"
    for index in (0, 1):
        state = torch.load(tmp_path / fold_file(index), weights_only=True)  # safe to load
        assert set(state) == {"model", "optimizer", "scheduler", "scaler", "rng"}
        best = torch.load(tmp_path / best_weights_file(index), weights_only=True)  # weights only
        assert set(best) == set(trial.runs[index].model.state_dict())
    oof = np.load(tmp_path / BEST_OOF_FILE)
    tp_ids = set(load_annotations(tiny_trial['data_dir']).tp.recording)
    assert sorted(oof["recording_ids"]) == sorted(tp_ids)  # every tp recording exactly once
    assert oof["scores"].shape == (len(tp_ids), trial.annotations.n_species)
    assert oof["fold_best_scores"].shape == oof["common_best_scores"].shape == oof["scores"].shape
    assert set(oof["fold"]) == {0, 1}


def test_resuming_with_another_recipe_is_refused(tiny_trial, tmp_path):
    trial = training(tiny_trial, **{"train.folds": [0]})
    trial.run_epoch()
    trial.save(tmp_path)
    with pytest.raises(ConfigError, match="loss.w_max = 0.5, this trial has 0.3"):
        training(tiny_trial, **{"train.folds": [0], "loss.w_max": 0.3}).load(tmp_path)
    longer = training(tiny_trial, **{"train.folds": [0], "train.epochs": 5})
    longer.load(tmp_path)  # a longer budget may go on
    assert longer.epoch == 1
    with pytest.raises(ConfigError, match="stage = 1, this trial has 2"):
        training(tiny_trial, **{"train.folds": [0], "stage": 2}).load(tmp_path)
    with pytest.raises(ConfigError, match="augment.freq_masks = 1, this trial has 2"):  # the fixed recipe's
        training(tiny_trial, **{"train.folds": [0], "recipe": "fixed", "data.test_overlap": 64}).load(tmp_path)


def test_a_checkpoint_without_keys_added_since_resumes(tiny_trial, tmp_path):
    trial = training(tiny_trial, **{"train.folds": [0]})
    trial.run_epoch()
    trial.save(tmp_path)
    saved = json.loads((tmp_path / "trial.json").read_text())
    for key in ("stage", "teacher_files", "init_from"):
        del saved["config"][key]
    for key in ("teacher_threshold", "teacher_weight", "teacher_soft_negatives"):
        del saved["config"]["loss"][key]
    (tmp_path / "trial.json").write_text(json.dumps(saved))
    training(tiny_trial, **{"train.folds": [0]}).load(tmp_path)  # missing keys had their defaults
    # A checkpoint of before several teachers names its one teacher file, or none.
    (tmp_path / "trial.json").write_text(json.dumps({**saved, "config": {**saved["config"], "teacher_file": ""}}))
    training(tiny_trial, **{"train.folds": [0]}).load(tmp_path)


def test_a_checkpoint_from_before_recipes_is_refused_in_one_line(tiny_trial, tmp_path):
    trial = training(tiny_trial, **{"train.folds": [0]})
    trial.run_epoch()
    trial.save(tmp_path)
    saved = json.loads((tmp_path / "trial.json").read_text())
    (tmp_path / "trial.json").write_text(json.dumps({**saved, "format": 1}))
    with pytest.raises(ConfigError, match=r"made before recipes \(format 1\).*--recipe fixed") as error:
        training(tiny_trial, **{"train.folds": [0]}).load(tmp_path)
    assert len(str(error.value).splitlines()) == 1


def test_a_diverging_trial_stops_with_a_clear_error(tiny_trial):
    with pytest.raises(DivergedError, match=r"fold 0, epoch 1: the (loss|predictions) (is|are) not finite"):
        training(tiny_trial, **{"train.folds": [0], "train.lr": 1e30, "train.min_lr": 0.0}).run_epoch()


def test_cosine_schedule_stays_at_its_floor_after_t_max():
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=1e-5)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_clamped(scheduler, t_max=4)
    assert lrs[0] == 1e-3
    assert all(a > b for a, b in zip(lrs[:5], lrs[1:5]))  # decreasing for T_max epochs
    assert lrs[4:] == pytest.approx([1e-5] * 6)  # then flat, never climbing back


@pytest.mark.parametrize("size, batch, expected",
                         [(21, 20, [20]), (5, 20, [5]), (41, 20, [20, 20]), (40, 20, [20, 20])])
def test_training_batches_never_end_with_a_lone_sample(size, batch, expected):
    batches = shuffled_batches(list(range(size)), batch, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == expected
    assert batches_per_epoch(size, batch) == len(expected)  # what the per-batch cosine's T_max counts


def test_training_batches_are_drawn_as_torchs_random_sampler_draws_them():
    items = list(range(45))
    ours = shuffled_batches(items, 8, torch.Generator().manual_seed(3))
    loader = DataLoader(items, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert ours == [batch.tolist() for batch in loader]  # the order of the loaders before this one


@pytest.mark.parametrize("recipe", ["v1_7", "exp0109", "fixed"])
def test_every_recipe_trains_an_epoch_on_every_fold(tiny_trial, recipe):
    metrics = training(tiny_trial, **{"recipe": recipe, "data.test_overlap": 64}).run_epoch()
    assert 0 < metrics["cv_lwlrap"] <= 1 and 0 < metrics["cv_lrap_reference"] <= 1
    assert math.isfinite(metrics["loss/total"])
    if recipe == "exp0109":  # the attention term alone
        assert metrics["loss/total"] == metrics["loss/att"] and metrics["loss/frame"] == 0


def test_the_per_batch_cosine_steps_through_each_epochs_batches(tiny_trial):
    trial = training(tiny_trial, **{"train.folds": [0], "train.t_max": 1})
    batches = trial.runs[0].scheduler.T_max  # t_max 1: one epoch's batches
    trial.run_epoch()
    run = trial.runs[0]
    assert run.scheduler.last_epoch == batches  # one step per batch: T_max = batches x t_max
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the reference's eta_min
    trial.run_epoch()
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # never clamped: back up at 2 t_max


def test_loader_workers_default_to_the_assigned_cpus_but_one_on_cuda_and_none_on_the_cpu():
    auto = TrainConfig()  # loader_workers -1
    assert loader_workers(auto, Device(torch.device("cuda"), cpus=4)) == 3
    assert loader_workers(auto, Device(torch.device("cuda"), cpus=1)) == 0
    assert loader_workers(auto, Device(torch.device("cpu"), cpus=4)) == 0  # the model needs every core
    assert loader_workers(TrainConfig(loader_workers=2), Device(torch.device("cpu"))) == 2


def test_persistent_loader_workers_serve_every_fold_and_epoch_with_the_same_numbers(tiny_trial):
    """One loader per trial, its worker processes started once: the crops they cut for fold 1
    and for epoch 2 are the ones the trial's own process would cut."""
    in_process, with_workers = training(tiny_trial), training(tiny_trial, **{"train.loader_workers": 1})
    assert with_workers.loader.num_workers == 1 and with_workers.loader.persistent_workers
    for _ in range(2):
        assert same_numbers(in_process.run_epoch(), with_workers.run_epoch())
