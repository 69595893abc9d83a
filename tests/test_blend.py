"""search/results/blend.py and search/results/window_blend.py: ensemble selection and its nested CV on
hand-made out-of-fold arrays, and the blend of window predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from search.results.blend import nested_score, ranks, select
from search.results.window_blend import WindowsError, blend_windows
from trainable.metrics import lwlrap

N, C = 60, 4


def labels(seed: int = 0) -> np.ndarray:
    """(N, C): one or two species per recording."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((N, C))
    truth[np.arange(N), rng.integers(0, C, N)] = 1
    truth[rng.random(N) < 0.3, rng.integers(0, C)] = 1
    return truth


def knows(truth: np.ndarray, species: list[int], seed: int) -> np.ndarray:
    """A model that ranks `species` right (their truth plus a little noise) and guesses at
    random elsewhere."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, truth.shape)
    scores[:, species] = 0.5 * truth[:, species] + 0.4 * rng.uniform(0, 1, (len(truth), len(species)))
    return scores


def test_two_complementary_models_beat_either_alone():
    truth = labels()
    left, right = knows(truth, [0, 1], seed=1), knows(truth, [2, 3], seed=2)
    blend = select(np.stack([left, right]), truth)
    assert list(blend.counts > 0) == [True, True]
    assert blend.score > max(lwlrap(truth, left), lwlrap(truth, right)) + 0.02
    assert blend.score == pytest.approx(lwlrap(truth, blend.apply(np.stack([left, right]))))
    assert blend.path[0].score == pytest.approx(max(lwlrap(truth, left), lwlrap(truth, right)))  # the best single first
    assert [step.score for step in blend.path] == sorted(step.score for step in blend.path)


def test_the_best_model_stays_alone_when_nothing_adds_to_it():
    truth = labels()
    good = truth * 0.8 + 0.1 * np.random.default_rng(3).uniform(size=truth.shape)  # ranks every recording right
    noise = [np.random.default_rng(seed).uniform(size=truth.shape) for seed in (4, 5)]
    blend = select(np.stack([noise[0], good, noise[1]]), truth)
    assert list(blend.counts) == [0, 1, 0] and len(blend.path) == 1
    assert blend.score == pytest.approx(1.0)
    assert list(blend.weights) == [0, 1, 0]


def test_the_selection_takes_a_model_again_and_stops_at_max_steps():
    truth = labels()
    rng = np.random.default_rng(19)
    # Noisy views of the truth, the third noisier: its mix weighs the first most.
    library = np.stack([truth + rng.normal(0, sigma, truth.shape) for sigma in (0.5, 0.5, 0.8)])
    free = select(library, truth, max_steps=50, tolerance=0.0)
    assert free.counts.sum() == len(free.path) and list(free.counts) == [3, 1, 0]  # the first chosen 3 times
    capped = select(library, truth, max_steps=1, tolerance=0.0)
    assert len(capped.path) == 2 and capped.path == free.path[:2]


def test_the_nested_cv_sees_through_a_selection_that_overfits():
    """Fifty models of noise and one weak real one: the in-sample selection finds noise that
    happens to fit the labels; blended by weights chosen without their own fold, the
    recordings score much lower."""
    truth = labels(seed=8)
    rng = np.random.default_rng(9)
    library = np.stack([knows(truth, [0], seed=10), *rng.uniform(size=(50, N, C))])
    folds = np.arange(N) % 3
    in_sample = select(library, truth, tolerance=0.0)
    nested = nested_score(library, truth, folds, tolerance=0.0)
    assert len(in_sample.path) > 3  # it kept finding noise that helps
    assert nested.score < in_sample.score - 0.05
    assert sorted(nested.folds) == [0, 1, 2]
    for fold, blend in nested.folds.items():  # each fold's rows come from the blend chosen without them
        rows = folds == fold
        np.testing.assert_allclose(nested.predictions[rows], blend.apply(library[:, rows]))
    assert nested.score == pytest.approx(lwlrap(truth, nested.predictions))


def test_the_same_inputs_give_the_same_blend():
    truth = labels(seed=11)
    library = np.stack([knows(truth, [k], seed=12 + k) for k in range(C)])
    first, again = select(library, truth), select(library.copy(), truth)
    assert first.path == again.path and list(first.counts) == list(again.counts)
    folds = np.arange(N) % 2
    assert nested_score(library, truth, folds).score == nested_score(library, truth, folds).score


def test_rank_averaging_ranks_each_species_over_the_recordings():
    scores = np.array([[[0.9, 0.1], [0.2, 0.3], [0.5, 0.3]]])  # (1 model, 3 recordings, 2 species)
    np.testing.assert_allclose(ranks(scores)[0], [[3 / 3, 1 / 3], [1 / 3, 2.5 / 3], [2 / 3, 2.5 / 3]])


def windows(starts: list[float], width: float, values: list[list[float]], recording: str = "r1") -> pd.DataFrame:
    return pd.DataFrame({"recording_id": recording, "t_min": starts, "t_max": [s + width for s in starts],
                         "s0": [v[0] for v in values], "s1": [v[1] for v in values]})


def test_windows_of_the_same_cut_are_averaged_window_by_window():
    a = windows([0, 4, 8], 4, [[0.2, 0.4], [0.6, 0.0], [1.0, 0.2]])
    b = windows([0, 4, 8], 4, [[0.4, 0.0], [0.0, 1.0], [0.2, 0.2]])
    blended = blend_windows([a, b], [0.75, 0.25], ["s0", "s1"])
    assert list(blended.t_min) == [0, 4, 8]
    np.testing.assert_allclose(blended[["s0", "s1"]], [[0.25, 0.3], [0.45, 0.25], [0.8, 0.2]])


def test_windows_of_another_cut_are_seen_on_the_heaviest_trials_windows():
    heavy = windows([0, 6], 6, [[0.0, 0.0], [0.0, 0.0]])  # two 6 s windows
    light = windows([0, 3, 6, 9], 3, [[0.1, 0.9], [0.5, 0.2], [0.3, 0.0], [0.8, 0.1]])  # four 3 s windows
    blended = blend_windows([light, heavy], [0.4, 0.6], ["s0", "s1"])
    assert list(zip(blended.t_min, blended.t_max)) == [(0, 6), (6, 12)]
    # Each 6 s window sees the max over the two 3 s windows inside it.
    np.testing.assert_allclose(blended[["s0", "s1"]], [[0.4 * 0.5, 0.4 * 0.9], [0.4 * 0.8, 0.4 * 0.1]])
    with pytest.raises(WindowsError, match="recording r2 has windows in one trial's windows.csv and none"):
        blend_windows([light, windows([0, 6], 6, [[0, 0], [0, 0]], recording="r2")], [0.4, 0.6], ["s0", "s1"])
