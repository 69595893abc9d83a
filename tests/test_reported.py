"""trainable.reported: the one contract for what a trial reports, and its readers."""

from __future__ import annotations

import numpy as np
import pytest

from search.results import leaderboard
from search.tuner import review_logger
from trainable import reported
from trainable.metrics import lwlrap


def outcome(relabelled: bool = False) -> reported.Outcome:
    rng = np.random.default_rng(0)
    truth = [np.eye(3)[[0, 1, 2, 0]], np.eye(3)[[1, 2, 0]]]
    oof = [rng.random((4, 3)), rng.random((3, 3))]
    selection = {reported.BEST_CV: 0.7, reported.FOLD_BEST_CV: 0.72, reported.SCORE: 0.71,
                 reported.SCORE_LRAP_REFERENCE: 0.69, "fold/3/best_epoch": 2.0, "fold/5/best_epoch": 1.0}
    extra = dict(relabelled_truth=truth, relabelled_scores=[1 - s for s in oof]) if relabelled else {}
    return reported.Outcome(epoch=2, folds=[3, 5], truth=truth, oof=oof, lrap_reference=[0.4, 0.6], lr=1e-3,
                            samples=300, seconds=2.0, losses={"total": 0.5, "att": 0.25}, selection=selection, **extra)


def test_epoch_metrics_compute_each_value_from_the_outcome():
    o = outcome()
    metrics = reported.epoch_metrics(o)
    pooled = lwlrap(np.concatenate(o.truth), np.concatenate(o.oof))
    assert metrics[reported.CV] == pytest.approx(pooled)
    assert metrics[reported.EPOCH] == 2
    assert metrics[reported.CV_LRAP_REFERENCE] == pytest.approx(0.5)
    folds = [lwlrap(t, s) for t, s in zip(o.truth, o.oof)]
    assert metrics["fold/3/lwlrap"] == pytest.approx(folds[0]) and metrics["fold/5/lwlrap"] == pytest.approx(folds[1])
    assert metrics[reported.FOLD_STD] == pytest.approx(np.std(folds))
    assert metrics["fold/5/lrap_reference"] == 0.6 and metrics["fold/3/best_epoch"] == 2.0
    assert metrics[reported.THROUGHPUT] == 150 and metrics[reported.LR] == 1e-3
    assert metrics["loss/total"] == 0.5 and metrics["loss/att"] == 0.25
    assert {name: metrics[name] for name in o.selection} == o.selection
    assert reported.RELABELLED not in metrics  # only stage 3 of whole clips reports it


def test_the_relabelled_cv_is_reported_when_the_outcome_has_a_relabelled_truth():
    o = outcome(relabelled=True)
    expected = lwlrap(np.concatenate(o.truth), 1 - np.concatenate(o.oof))
    assert reported.epoch_metrics(o)[reported.RELABELLED] == pytest.approx(expected)


def test_fold_keys_are_found_in_fold_order():
    keys = ["fold/10/lwlrap", "fold/2/lwlrap", "fold/2/best_epoch", "cv_lwlrap", "fold/2/lwlrap/x"]
    assert reported.fold_keys(keys, reported.FOLD_LWLRAP) == ["fold/2/lwlrap", "fold/10/lwlrap"]


def test_every_metric_has_its_own_tensorboard_tag():
    tags = [reported.tag(name) for name in reported.METRICS]
    assert len(set(tags)) == len(tags)
    assert reported.tag(reported.CV) == "cv/lwlrap" and reported.tag("fold/4/lwlrap") == "fold/4"
    assert reported.tag("fold/4/best_epoch") == "fold/4/best_epoch" and reported.tag("loss/att") == "loss/att"


def test_the_readers_take_names_from_the_contract():
    # TensorBoard writes each reported value under the contract's tag (the step says the epoch).
    assert all(review_logger.tag(name) == reported.tag(name) for name in reported.METRICS if name != reported.EPOCH)
    assert review_logger.tag(reported.EPOCH) is None and review_logger.tag(reported.ITERATION) is None
    assert "cv/score" in review_logger.HPARAMS_METRICS and "cv/lwlrap" in review_logger.HPARAMS_METRICS
    # The leaderboard's CV columns are the contract's, the best-epoch ones shown where reported.
    assert leaderboard.CV_COLUMNS == {reported.BEST_CV: "cv_lwlrap", reported.FOLD_BEST_CV: "cv_lwlrap_fold_best",
                                 reported.SCORE_LRAP_REFERENCE: "cv_lrap_reference"}
    assert leaderboard.AT_BEST_COLUMNS[reported.RELABELLED] == reported.RELABELLED
