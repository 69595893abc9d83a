"""Ensemble selection over out-of-fold predictions: greedy forward selection with
replacement (Caruana et al., "Ensemble selection from libraries of models", ICML 2004), and
a nested cross-validation of that selection.

Written here rather than taken from a library: scikit-learn's stacking and voting estimators
refit models, and none of the common packages selects among fixed predictions by a
ranking metric such as LWLRAP with a nested estimate of the selection's own optimism.

Pure numpy over arrays of one shape: predictions (M models, N recordings, C species) and
truth (N, C); search.results.ensembles reads them from the trials' exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainable.metrics import lwlrap

DEFAULT_MAX_STEPS = 20  # models added after the first; Caruana's libraries needed a few dozen
DEFAULT_TOLERANCE = 1e-4  # a step must raise the pooled OOF LWLRAP by more than this
AVERAGES = ("probability", "rank")


@dataclass(frozen=True)
class Step:
    """One step of the selection: the model it added and the blend's score after it."""

    model: int
    score: float


@dataclass(frozen=True)
class Blend:
    """A selection: how often each model was chosen (its weight is its share of the choices),
    and the path that chose them, the first step being the best single model."""

    counts: np.ndarray  # (M,) int
    path: tuple[Step, ...]

    @property
    def weights(self) -> np.ndarray:
        return self.counts / self.counts.sum()

    @property
    def score(self) -> float:
        return self.path[-1].score

    def apply(self, predictions: np.ndarray) -> np.ndarray:
        """The weighted mean of the models' predictions, (M, N, C) -> (N, C)."""
        return np.tensordot(self.weights, np.asarray(predictions, dtype=np.float64), axes=1)


@dataclass(frozen=True)
class NestedScore:
    """The selection's honest CV: each fold's rows predicted by the blend chosen on the other
    folds' rows only, the pooled LWLRAP of those predictions, and each fold's blend."""

    score: float
    folds: dict[int, Blend]
    predictions: np.ndarray  # (N, C): each row by the blend chosen without its fold


def select(predictions: np.ndarray, truth: np.ndarray, max_steps: int = DEFAULT_MAX_STEPS,
           tolerance: float = DEFAULT_TOLERANCE) -> Blend:
    """Greedy forward selection with replacement, maximising the pooled LWLRAP of the mean of
    the chosen models: start from the best single model, then add, one step at a time, the
    model (any, a chosen one again included) whose addition scores best, while that raises
    the score by more than `tolerance`, for at most `max_steps` steps. Ties go to the
    lower model index, so the same inputs give the same blend.

    Args:
        predictions: (M, N, C) scores of M models.
        truth: (N, C) labels; > 0 means positive.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    singles = [lwlrap(truth, p) for p in predictions]
    first = int(np.argmax(singles))
    counts = np.zeros(len(predictions), dtype=np.int64)
    counts[first] = 1
    total = predictions[first].copy()
    path = [Step(first, singles[first])]
    for _ in range(max_steps):
        n = counts.sum()
        candidates = [lwlrap(truth, (total + p) / (n + 1)) for p in predictions]
        best = int(np.argmax(candidates))
        if not candidates[best] > path[-1].score + tolerance:
            break
        counts[best] += 1
        total += predictions[best]
        path.append(Step(best, candidates[best]))
    return Blend(counts, tuple(path))


def nested_score(predictions: np.ndarray, truth: np.ndarray, folds: np.ndarray, max_steps: int = DEFAULT_MAX_STEPS,
                 tolerance: float = DEFAULT_TOLERANCE) -> NestedScore:
    """For each fold, select on the other folds' rows and predict the fold's rows with that
    blend; the pooled LWLRAP over all rows. The in-sample score of `select` on all rows has
    seen the labels it is scored on; this one has not, so it is what the blend is worth on
    new recordings (up to the models' own OOF being out-of-fold).

    Args:
        folds: (N,) the fold that held each row out (the trials' oof.csv fold column).
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    held_out = np.empty(predictions.shape[1:], dtype=np.float64)
    blends = {}
    for fold in np.unique(folds):
        inside = folds != fold
        blend = select(predictions[:, inside], truth[inside], max_steps, tolerance)
        held_out[~inside] = blend.apply(predictions[:, ~inside])
        blends[int(fold)] = blend
    return NestedScore(lwlrap(truth, held_out), blends, held_out)


def ranks(predictions: np.ndarray) -> np.ndarray:
    """Each model's scores replaced by their rank over the rows, per species, scaled into
    (0, 1] (ties share their mean rank): rank averaging blends models whose probabilities are
    calibrated differently. (M, N, C) -> (M, N, C)."""
    from scipy.stats import rankdata  # a second of imports, for this option only

    predictions = np.asarray(predictions, dtype=np.float64)
    return rankdata(predictions, axis=1) / predictions.shape[1]
