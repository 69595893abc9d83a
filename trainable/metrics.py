"""Label-weighted label-ranking average precision (lwlrap), the RFCx competition metric.

The definition is the Freesound/DCASE 2019 reference (Dan Ellis): every positive label of
every recording scores the precision of the ranking of that recording's classes at the
label's position, and the mean is taken over all positive labels, so each class weighs
in proportion to its number of positives. Ties are scored as sklearn's
`label_ranking_average_precision_score` scores them (a label is ranked below every label
with an equal score), which makes the value independent of the class order.
"""

from __future__ import annotations

import numpy as np


def per_class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lwlrap split by class.

    Args:
        truth: (N, C) labels of any numeric or bool dtype; > 0 means positive.
        scores: (N, C) scores; higher means more likely. Only their order within a row matters.

    Returns:
        per_class: (C,) float, the mean precision over the positive labels of each class;
            0 for a class without positives.
        weight: (C,) float, each class's share of all positive labels; sums to 1.
        lwlrap is `(per_class * weight).sum()`.

    Raises:
        ValueError: if the arrays are not 2-D of equal shape, scores are not finite, or
            there is no positive label at all (the metric is undefined).
    """
    truth, scores = np.asarray(truth), np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != scores.shape:
        raise ValueError(f"lwlrap needs truth and scores of one 2-D shape (N, C); got {truth.shape}, {scores.shape}")
    if not np.isfinite(scores).all():
        # A NaN never compares >= itself, so it would break the ranks below without a word.
        raise ValueError("lwlrap needs finite scores; got NaN or inf")
    positive = truth > 0  # (N, C)
    n_positives = positive.sum(axis=0).astype(np.float64)  # (C,)
    if n_positives.sum() == 0:
        raise ValueError("lwlrap is undefined without any positive label in truth")

    # at_or_above[i, c, j]: class j scores at least as high as class c in row i. Counting
    # ties as above is what makes the value independent of the class order. (N, C, C) is
    # small here: N ~ 5000 recordings x C = 24 species is ~3 M booleans.
    at_or_above = scores[:, None, :] >= scores[:, :, None]  # (N, C, C)
    rank = at_or_above.sum(axis=2)  # (N, C), >= 1 as each class counts itself
    positives_above = (at_or_above & positive[:, None, :]).sum(axis=2)  # (N, C)
    precision = np.where(positive, positives_above / rank, 0.0)  # (N, C)

    # Rows without positives add nothing here, which is how they drop out of the metric.
    per_class = np.divide(precision.sum(axis=0), n_positives, out=np.zeros_like(n_positives), where=n_positives > 0)
    weight = n_positives / n_positives.sum()
    return per_class, weight


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision over all positive labels.

    Args:
        truth: (N, C) labels of any numeric or bool dtype; > 0 means positive.
        scores: (N, C) scores; higher means more likely.

    Returns:
        lwlrap in (0, 1]; 1 when every row ranks all its positives above its negatives.

    Raises:
        ValueError: as `per_class_lwlrap`.
    """
    per_class, weight = per_class_lwlrap(truth, scores)
    return float((per_class * weight).sum())


REFERENCE_BATCH = 64  # the reference's validation batch: its LRAP is a mean over such batches


def reference_lrap(truth: np.ndarray, scores: np.ndarray, batch: int = REFERENCE_BATCH) -> float:
    """The reference notebooks' validation score: instance-level LRAP (each recording's mean
    precision at its positive labels, sklearn's `label_ranking_average_precision_score`) of
    every batch of `batch` recordings in order, averaged over the batches, so the last,
    smaller batch weighs as much as a full one.

    Args:
        truth: (N, C) labels; > 0 means positive.
        scores: (N, C) scores.

    Raises:
        ValueError: no recordings, or arrays of different shapes.
    """
    from sklearn.metrics import label_ranking_average_precision_score

    truth, scores = np.asarray(truth) > 0, np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim != 2 or len(truth) == 0:
        raise ValueError(f"reference_lrap needs truth and scores of one non-empty (N, C) shape;"
                         f" got {truth.shape}, {scores.shape}")
    return float(np.mean([label_ranking_average_precision_score(truth[i:i + batch], scores[i:i + batch])
                          for i in range(0, len(truth), batch)]))
