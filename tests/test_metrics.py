import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from trainable.metrics import lwlrap, per_class_lwlrap

# Two recordings, three classes, no ties.
#   row 0: scores (0.9, 0.5, 0.1), positives {0, 2}
#     class 0 ranks 1st, 1 positive at or above it      -> 1/1
#     class 2 ranks 3rd, 2 positives at or above it     -> 2/3
#   row 1: scores (0.2, 0.8, 0.4), positives {2}
#     class 2 ranks 2nd, 1 positive at or above it      -> 1/2
# lwlrap = mean over the 3 positive labels = (1 + 2/3 + 1/2) / 3 = 13/18.
# per class: class 0 = 1 (weight 1/3), class 1 = 0 (weight 0), class 2 = (2/3 + 1/2) / 2 = 7/12
# (weight 2/3); 1/3 + 7/12 * 2/3 = 13/18.
TRUTH = np.array([[1, 0, 1], [0, 0, 1]])
SCORES = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.4]])


def random_case(n=200, c=6, seed=0, decimals=None):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c)) < 0.3).astype(np.uint8)
    scores = rng.random((n, c)) + 0.5 * truth  # informative: lwlrap well above chance, below 1
    if decimals is not None:
        scores = scores.round(decimals)  # many ties within a row
    return truth, scores


def sklearn_lwlrap(truth, scores):
    """lwlrap as sklearn's LRAP weighted by each row's positives, over rows with any positive."""
    keep = truth.sum(axis=1) > 0
    return label_ranking_average_precision_score(truth[keep], scores[keep], sample_weight=truth[keep].sum(axis=1))


def test_hand_computed_case():
    assert lwlrap(TRUTH, SCORES) == pytest.approx(13 / 18)
    per_class, weight = per_class_lwlrap(TRUTH, SCORES)
    np.testing.assert_allclose(per_class, [1.0, 0.0, 7 / 12])
    np.testing.assert_allclose(weight, [1 / 3, 0.0, 2 / 3])


def test_ties_count_as_ranked_above():
    # row 0: scores (0.3, 0.7, 0.3), positives {0, 2}. Classes 0 and 2 tie: each sees all 3 classes
    # at or above it, 2 of them positive -> 2/3 each, so lwlrap = 2/3. An order-dependent tie
    # break would give 1/2 and 2/3 instead (mean 7/12).
    truth = np.array([[1, 0, 1]])
    assert lwlrap(truth, np.array([[0.3, 0.7, 0.3]])) == pytest.approx(2 / 3)
    # row 0: scores (0.5, 0.5, 0.2), positive {1}: class 0 ties with it -> 1/2.
    # row 1: scores (0.1, 0.6, 0.6), positives {0, 1}: class 1 ties with negative class 2 -> 1/2;
    #   class 0 is last, 2 of 3 at or above are positive -> 2/3.
    # lwlrap = (1/2 + 1/2 + 2/3) / 3 = 5/9.
    truth = np.array([[0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.5, 0.5, 0.2], [0.1, 0.6, 0.6]])
    assert lwlrap(truth, scores) == pytest.approx(5 / 9)
    # All scores equal: every positive sees all C classes -> precision = positives / C.
    assert lwlrap(np.array([[1, 1, 0, 0]]), np.zeros((1, 4))) == pytest.approx(1 / 2)


def test_perfect_ranking_is_one():
    truth, _ = random_case(seed=1)
    assert lwlrap(truth, truth + 0.1 * np.random.default_rng(2).random(truth.shape)) == pytest.approx(1.0)
    assert lwlrap(truth.astype(bool), truth.astype(np.float32)) == pytest.approx(1.0)


def test_rows_without_positives_are_ignored():
    truth = np.vstack([TRUTH, [0, 0, 0]])
    scores = np.vstack([SCORES, [0.9, 0.1, 0.5]])
    assert lwlrap(truth, scores) == pytest.approx(13 / 18)
    np.testing.assert_allclose(per_class_lwlrap(truth, scores)[0], per_class_lwlrap(TRUTH, SCORES)[0])


def test_class_without_positives_has_weight_zero():
    truth, scores = random_case(seed=3)
    truth[:, 4] = 0
    per_class, weight = per_class_lwlrap(truth, scores)
    assert weight[4] == 0.0 and per_class[4] == 0.0
    assert weight.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed, decimals):
    truth, scores = random_case(seed=seed, decimals=decimals)
    assert lwlrap(truth, scores) == pytest.approx(sklearn_lwlrap(truth, scores))


@pytest.mark.parametrize("decimals", [None, 1])
def test_per_class_sums_to_lwlrap(decimals):
    truth, scores = random_case(n=300, c=24, seed=4, decimals=decimals)
    per_class, weight = per_class_lwlrap(truth, scores)
    assert per_class.shape == weight.shape == (24,)
    assert weight.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weight, truth.sum(axis=0) / truth.sum())
    assert ((per_class > 0) & (per_class <= 1)).all()
    assert (per_class * weight).sum() == pytest.approx(lwlrap(truth, scores))


def test_invariant_to_class_and_row_order():
    truth, scores = random_case(seed=5, decimals=1)
    rng = np.random.default_rng(6)
    cols, rows = rng.permutation(truth.shape[1]), rng.permutation(truth.shape[0])
    per_class, weight = per_class_lwlrap(truth, scores)
    per_class_p, weight_p = per_class_lwlrap(truth[rows][:, cols], scores[rows][:, cols])
    np.testing.assert_allclose(per_class_p, per_class[cols])
    np.testing.assert_allclose(weight_p, weight[cols])
    assert lwlrap(truth[rows][:, cols], scores[rows][:, cols]) == pytest.approx(lwlrap(truth, scores))


@pytest.mark.parametrize(
    "truth, scores, match",
    [
        (np.ones((2, 3)), np.ones((2, 4)), "shape"),
        (np.ones((2, 3)), np.ones((3, 3)), "shape"),
        (np.ones(3), np.ones(3), "shape"),
        (np.zeros((2, 3)), np.ones((2, 3)), "positive"),
        (np.ones((1, 3)), np.array([[0.1, np.nan, 0.3]]), "finite"),
    ],
)
def test_bad_inputs_raise(truth, scores, match):
    with pytest.raises(ValueError, match=match):
        lwlrap(truth, scores)
