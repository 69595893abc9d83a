"""What a trial reports: the names, meaning and direction of its metrics, owned here.

Every module that writes or reads a reported value (the k-fold training, the trainable, the
schedulers, the searcher, the leaderboard, TensorBoard, the report page, the benchmarks) takes
its name from this module. A new metric of an epoch is one entry of METRICS (its meaning, its
TensorBoard tag, its leaderboard column, how it is computed from the epoch's Outcome) and
nothing else changes: the trainable reports it, TensorBoard shows it, the leaderboard lists it.

The iteration rule: a trial reports once per epoch on every fold, so Ray's ITERATION count of
a trial's reports is its epochs done. Every scheduler's time unit (ASHA's max_t and grace
period, HyperBand's budget), the searcher's budget and the trial's `train.epochs` are in epochs.

The direction: every CV is an LWLRAP-like score, higher is better (MODE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainable.metrics import lwlrap

ITERATION = "training_iteration"  # Ray's count of a trial's reports = its epochs done on every fold
MODE = "max"  # every metric a trial is compared on is better higher
EPOCH = "epoch"  # the trial's own count of epochs done (survives Ray's restarts of the count)

CV = "cv_lwlrap"  # this epoch's pooled out-of-fold LWLRAP: what schedulers compare at each report
METRIC = CV
# The trial's score by its recipe's selection (trainable.training.selection): what Optuna is told of a
# completed trial, what the leaderboard ranks, and the weights export and --init-from use.
SCORE = "score"
BEST_CV = "best_cv_lwlrap"
FOLD_BEST_CV = "cv_lwlrap_fold_best"
SCORE_LRAP_REFERENCE = "score_lrap_reference"
CV_LRAP_REFERENCE = "cv_lrap_reference"
FOLD_STD = "fold_lwlrap_std"
RELABELLED = "cv_lwlrap_relabelled"
LR = "lr"
THROUGHPUT = "samples_per_s"

# Per-fold values: fold/<index>/<name>.
FOLD_LWLRAP, FOLD_LRAP_REFERENCE, FOLD_BEST_EPOCH = "lwlrap", "lrap_reference", "best_epoch"
LOSS_PREFIX = "loss/"  # loss/<term>: the epoch's mean loss per training sample (trainable.model.losses)


def fold_key(index: int, name: str) -> str:
    """The reported name of fold `index`'s value `name`: fold/2/lwlrap."""
    return f"fold/{index}/{name}"


def fold_keys(keys, name: str) -> list[str]:
    """The reported names among `keys` of every fold's value `name`, in fold order."""
    found = [key for key in keys if key.startswith("fold/") and key.split("/")[2:] == [name]]
    return sorted(found, key=lambda key: int(key.split("/")[1]))


@dataclass(frozen=True)
class Outcome:
    """What one epoch on every fold produced: the inputs of its metrics, in fold order."""

    epoch: int  # epochs done on every fold, this one included
    folds: list[int]  # the folds' indices
    truth: list[np.ndarray]  # per fold (V, C) 0/1: the validation recordings' species
    oof: list[np.ndarray]  # per fold (V, C): the validation recordings' scores
    lrap_reference: list[float]  # per fold: the reference's own LRAP
    lr: float  # the learning rate the epoch began with
    samples: int  # training samples of the epoch over every fold
    seconds: float  # the time they took
    losses: dict[str, float]  # per loss term: the mean per training sample
    selection: dict[str, float]  # what the selection reports (trainable.training.selection)
    relabelled_truth: list[np.ndarray] | None = None  # stage 3 of whole clips: per fold the relabelled truth
    relabelled_scores: list[np.ndarray] | None = None  # and the scores it is compared with


def pooled_lwlrap(truth: list[np.ndarray], scores: list[np.ndarray]) -> float:
    """LWLRAP over the folds' recordings pooled: the competition's metric on the whole OOF."""
    return lwlrap(np.concatenate(truth), np.concatenate(scores))


def _relabelled(outcome: Outcome) -> float | None:
    if outcome.relabelled_truth is None or outcome.relabelled_scores is None:
        return None
    return pooled_lwlrap(outcome.relabelled_truth, outcome.relabelled_scores)


def _selected(name: str) -> Callable[[Outcome], float]:
    return lambda outcome: outcome.selection[name]


@dataclass(frozen=True)
class Metric:
    """One reported value: what it means and where it is shown."""

    meaning: str
    compute: Callable[[Outcome], float | None]  # None: not reported this epoch
    tag: str | None = None  # its TensorBoard tag; None: its name
    column: str | None = None  # its leaderboard column, read at the trial's last report
    at_best: str | None = None  # its leaderboard column, read at the epoch of the best CV


METRICS: dict[str, Metric] = {
    EPOCH: Metric("epochs done on every fold", lambda o: o.epoch),
    CV: Metric("the epoch's pooled out-of-fold LWLRAP over every fold's validation recordings",
               lambda o: pooled_lwlrap(o.truth, o.oof), tag="cv/lwlrap"),
    CV_LRAP_REFERENCE: Metric("the mean over folds of the reference's own LRAP this epoch",
                              lambda o: float(np.mean(o.lrap_reference)), tag="cv/lrap_reference"),
    FOLD_STD: Metric("the std of the folds' LWLRAP this epoch",
                     lambda o: float(np.std([lwlrap(t, s) for t, s in zip(o.truth, o.oof)])),
                     tag="cv/fold_std"),
    LR: Metric("the learning rate the epoch began with", lambda o: o.lr),
    THROUGHPUT: Metric("training samples per second of training time",
                       lambda o: o.samples / max(o.seconds, 1e-9), tag="throughput"),
    RELABELLED: Metric("stage 3 of whole clips: the pooled LWLRAP against the relabelled truth"
                       " (the fp-only recordings included)", _relabelled, tag="cv/lwlrap_relabelled",
                       at_best=RELABELLED),
    # The selection's values (trainable.training.selection says what each one is): the three CVs side
    # by side on the leaderboard, so a user can line them up with their notebook's.
    BEST_CV: Metric("the best pooled CV of any epoch so far", _selected(BEST_CV), tag="cv/best", column=CV),
    FOLD_BEST_CV: Metric("the pooled LWLRAP of each fold's own best epoch", _selected(FOLD_BEST_CV),
                         tag="cv/fold_best", column=FOLD_BEST_CV),
    SCORE: Metric("the trial's score by its recipe's selection rule", _selected(SCORE), tag="cv/score"),
    SCORE_LRAP_REFERENCE: Metric("the reference's LRAP of the selected epochs", _selected(SCORE_LRAP_REFERENCE),
                                 tag="cv/score_lrap_reference", column=CV_LRAP_REFERENCE),
}

# The per-fold values, fold/<index>/<name>, and their TensorBoard tag (fold/<index> for its LWLRAP).
# (Their order, and METRICS', is progress.csv's column order. Ray's CSV logger appends a resumed
# trial's rows under the header it wrote first, so a reordering misaligns that file, not result.json.)
FOLD_METRICS: dict[str, Callable[[Outcome, int], float]] = {
    FOLD_BEST_EPOCH: lambda o, i: o.selection[fold_key(o.folds[i], FOLD_BEST_EPOCH)],
    FOLD_LWLRAP: lambda o, i: lwlrap(o.truth[i], o.oof[i]),
    FOLD_LRAP_REFERENCE: lambda o, i: o.lrap_reference[i],
}


def epoch_metrics(outcome: Outcome) -> dict[str, float]:
    """Everything a trial reports of one epoch."""
    values = {name: metric.compute(outcome) for name, metric in METRICS.items()}
    reported = {name: value for name, value in values.items() if value is not None}
    for name, compute in FOLD_METRICS.items():
        reported.update({fold_key(fold, name): float(compute(outcome, i)) for i, fold in enumerate(outcome.folds)})
    reported.update({f"{LOSS_PREFIX}{term}": value for term, value in outcome.losses.items()})
    return reported


def tag(name: str) -> str:
    """The TensorBoard tag of a reported value."""
    if name in METRICS:
        return METRICS[name].tag or name
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "fold" and parts[2] == FOLD_LWLRAP:
        return f"fold/{parts[1]}"
    return name


def leaderboard_columns() -> dict[str, str]:
    """Reported value -> the leaderboard column that shows it at the trial's last report."""
    return {name: metric.column for name, metric in METRICS.items() if metric.column}


def at_best_columns() -> dict[str, str]:
    """Reported value -> the leaderboard column that shows it at the epoch of the best CV."""
    return {name: metric.at_best for name, metric in METRICS.items() if metric.at_best}
