import numpy as np
import pandas as pd
import pytest

from trainable.data.annotations import EVENT_COLUMNS, Annotations
from trainable.data.folds import make_folds, species_matrix
from trainable.data.layouts import load_annotations


def rows(pairs, kind="tp"):
    """Events from (recording, species) pairs."""
    return pd.DataFrame([(rid, s, 1.0, 2.0, kind) for rid, s in pairs], columns=EVENT_COLUMNS)


def made_up_annotations(n_recordings=60, n_species=8, seed=0) -> Annotations:
    """tp labels with every species in >= 5 recordings; a third of tp ids also in fp."""
    rng = np.random.default_rng(seed)
    tp_pairs, fp_pairs = [], []
    for i in range(n_recordings):
        rid = f"r{i:03d}"
        for s in {i % n_species, *rng.choice(n_species, size=rng.integers(0, 3))}:
            tp_pairs.append((rid, int(s)))
        if i % 3 == 0:
            fp_pairs.append((rid, int(rng.integers(n_species))))
    fp_pairs += [(f"f{i:03d}", int(rng.integers(n_species))) for i in range(40)]
    return Annotations(tp=rows(tp_pairs), fp=rows(fp_pairs, "fp"), test_ids=(), n_species=n_species)


def test_folds_partition_the_tp_recordings():
    annotations = made_up_annotations()
    folds = make_folds(annotations, n_folds=5, seed=1)
    valid = [set(f.valid_ids) for f in folds]
    all_tp = set(annotations.tp.recording)
    assert set().union(*valid) == all_tp and sum(map(len, valid)) == len(all_tp)
    for fold in folds:
        assert set(fold.train_ids) == all_tp - set(fold.valid_ids)


def test_every_species_is_in_every_validation_fold():
    annotations = made_up_annotations()
    for fold in make_folds(annotations, n_folds=5, seed=3):
        labels = species_matrix(annotations.tp, fold.valid_ids, annotations.n_species)
        assert labels.any(axis=0).all(), f"fold {fold.index} misses a species"


def test_stratified_on_the_synthetic_dataset(synth_dir):
    annotations = load_annotations(synth_dir)
    k = 3
    ids = sorted(set(annotations.tp.recording))
    counts = species_matrix(annotations.tp, ids, annotations.n_species).sum(axis=0)
    assert (counts >= k).any()
    for fold in make_folds(annotations, n_folds=k, seed=0):
        present = species_matrix(annotations.tp, fold.valid_ids, annotations.n_species).any(axis=0)
        assert present[counts >= k].all()


def test_same_seed_same_folds_other_seed_other_folds():
    annotations = made_up_annotations()
    assert make_folds(annotations, 5, seed=11) == make_folds(annotations, 5, seed=11)
    assert make_folds(annotations, 5, seed=11) != make_folds(annotations, 5, seed=12)


def test_folds_do_not_depend_on_row_order():
    annotations = made_up_annotations()
    shuffled = Annotations(tp=annotations.tp.sample(frac=1.0, random_state=0), fp=annotations.fp,
                           test_ids=(), n_species=annotations.n_species)
    assert make_folds(annotations, 5, seed=2) == make_folds(shuffled, 5, seed=2)


def test_validation_recordings_never_become_negatives():
    annotations = made_up_annotations()
    overlap = set(annotations.tp.recording) & set(annotations.fp.recording)
    assert len(overlap) == 20
    for fold in make_folds(annotations, 5, seed=0):
        assert not set(fold.negative_ids) & set(fold.valid_ids)
        # every other fp recording stays available, including tp training recordings
        expected = set(annotations.fp.recording) - set(fold.valid_ids)
        assert set(fold.negative_ids) == expected


def test_too_few_recordings_for_the_folds():
    annotations = Annotations(tp=rows([("a", 0), ("b", 1)]), fp=rows([]), test_ids=(), n_species=2)
    with pytest.raises(ValueError, match="at least 5"):
        make_folds(annotations, 5)
