"""Leak-free, multilabel-stratified folds over the train_tp recordings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from trainable.config import DataConfig
from trainable.data.annotations import Annotations


@dataclass(frozen=True)
class Fold:
    """One cross-validation split.

    Attributes:
        index: fold number in [0, n_folds).
        train_ids: train_tp recordings to train on.
        valid_ids: train_tp recordings to validate on (out-of-fold).
        negative_ids: train_fp recordings that may be drawn as negatives; never a
            validation recording, although 363 real recordings are in both files.
    """

    index: int
    train_ids: tuple[str, ...]
    valid_ids: tuple[str, ...]
    negative_ids: tuple[str, ...]


def species_matrix(tp: pd.DataFrame, recording_ids: list[str] | tuple[str, ...], n_species: int) -> np.ndarray:
    """Multi-hot species labels of recordings, from their tp rows.

    Returns:
        (N, n_species) uint8; row i is 1 for every species annotated in recording_ids[i].
    """
    row_of = {rid: i for i, rid in enumerate(recording_ids)}
    labels = np.zeros((len(recording_ids), n_species), dtype=np.uint8)
    known = tp[tp.recording.isin(row_of)]
    labels[known.recording.map(row_of).to_numpy(), known.species.to_numpy()] = 1
    return labels


def single_row_species(tp: pd.DataFrame, recording_ids: list[str] | tuple[str, ...], n_species: int) -> np.ndarray:
    """The reference's stratification labels: 1 for a species with exactly one tp row in the
    recording (its sum of one-hot rows == 1), so a species annotated twice counts 0 there.

    Returns:
        (N, n_species) uint8.
    """
    row_of = {rid: i for i, rid in enumerate(recording_ids)}
    counts = np.zeros((len(recording_ids), n_species), dtype=np.int64)
    known = tp[tp.recording.isin(row_of)]
    np.add.at(counts, (known.recording.map(row_of).to_numpy(), known.species.to_numpy()), 1)
    return (counts == 1).astype(np.uint8)


FOLD_LABELS = {"single": single_row_species, "multi_hot": species_matrix}  # DataConfig.fold_labels


def make_folds(annotations: Annotations, n_folds: int = 5, seed: int = 0, labels: str = "single") -> list[Fold]:
    """Split the train_tp recordings with iterstrat's MultilabelStratifiedKFold.

    The recordings are taken in sorted order (the reference's `groupby("recording_id")`), each
    labelled by `FOLD_LABELS[labels]`, so every species with at least `n_folds` recordings
    appears in every validation fold. The split depends only on the annotations, `seed` and
    `labels`; with the defaults it is the reference's, recording by recording.

    Raises:
        ValueError: fewer tp recordings than folds.
    """
    tp_ids = sorted(set(annotations.tp.recording))  # sorted: independent of CSV row order
    if len(tp_ids) < n_folds:
        raise ValueError(f"{n_folds} folds need at least {n_folds} train_tp recordings, found {len(tp_ids)}")
    label_matrix = FOLD_LABELS[labels](annotations.tp, tp_ids, annotations.n_species)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fp_ids = sorted(set(annotations.fp.recording))
    folds = []
    for index, (train_rows, valid_rows) in enumerate(splitter.split(np.zeros(len(tp_ids)), label_matrix)):
        valid_ids = tuple(tp_ids[i] for i in sorted(valid_rows))
        held_out = set(valid_ids)
        folds.append(Fold(
            index=index,
            train_ids=tuple(tp_ids[i] for i in sorted(train_rows)),
            valid_ids=valid_ids,
            negative_ids=tuple(rid for rid in fp_ids if rid not in held_out),
        ))
    return folds


def folds_of(annotations: Annotations, config: DataConfig) -> list[Fold]:
    """The folds a trial's DataConfig asks for."""
    return make_folds(annotations, config.n_folds, config.fold_seed, config.fold_labels)


def fp_only_ids(annotations: Annotations) -> list[str]:
    """The train_fp recordings without a tp row, sorted (stage 3 trains and validates on them)."""
    return sorted(set(annotations.fp.recording) - set(annotations.tp.recording))


def split_fp_only(recording_ids: list[str], fp: pd.DataFrame, n_species: int, n_folds: int,
                  seed: int) -> list[tuple[str, ...]]:
    """The reference stage 3's folds of the fp-only recordings, apart from the tp folds (v4_2:
    MultilabelStratifiedKFold with the tp folds' seed). v4_2 stratified them on labels that were
    all zero; here on the species of their fp events, so that the split depends on the
    annotations alone: one on the teacher would move recordings a trial trained on into its
    validation when the teacher or its threshold changes on a resume. Fewer recordings than
    folds leave the last folds without any.

    Args:
        recording_ids: the fp-only recordings, sorted.
        fp: the train_fp rows.

    Returns:
        For each fold, the fp-only recordings it validates on (the others train it).
    """
    if len(recording_ids) < n_folds:  # the splitter needs a recording per fold
        return [tuple(recording_ids[k:k + 1]) for k in range(n_folds)]
    labels = species_matrix(fp, recording_ids, n_species)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [tuple(recording_ids[i] for i in sorted(valid))
            for _, valid in splitter.split(np.zeros(len(recording_ids)), labels)]
