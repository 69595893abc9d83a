"""search.tuner.repeats.SeedRepeats without Ray running: the order of its trials, what the wrapped
searcher is told, and its saved state, driven as Ray's SearchGenerator drives it."""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from search.tuner.repeats import SeedRepeats
from trainable.config import SEED_GROUP
from trainable.reported import ITERATION, METRIC, SCORE

EPOCHS = 4


class Proposer(Searcher):
    """Proposes {"w": 0}, {"w": 1}, ... and records what it is told."""

    def __init__(self):
        super().__init__(metric=METRIC, mode="max")
        self.suggested: list[str] = []
        self.results: list[str] = []
        self.completed: list[str] = []

    def suggest(self, trial_id):
        self.suggested.append(trial_id)
        return {"w": len(self.suggested) - 1}

    def on_trial_result(self, trial_id, result):
        self.results.append(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


def finished(score: float, epochs: int = EPOCHS) -> dict:
    return {SCORE: score, METRIC: score, ITERATION: epochs}


def test_the_recipe_point_is_repeated_at_once_and_the_top_configurations_after_every_proposal():
    proposer = Proposer()
    repeats = SeedRepeats(proposer, proposals=3, seeds=[417, 418], confirm=2, max_iterations=EPOCHS)
    assert repeats.most_trials() == 3 + 2 * 3  # the proposals, the recipe point's seeds and the round's
    recipe = repeats.suggest("r")
    assert recipe == {"w": 0, SEED_GROUP: "r"}  # marked: no scheduler stops it
    # Its seeds come next, before the other proposals.
    assert repeats.suggest("r1") == {"w": 0, "train.seed": 417, SEED_GROUP: "r"}
    assert repeats.suggest("r2") == {"w": 0, "train.seed": 418, SEED_GROUP: "r"}
    assert repeats.suggest("a") == {"w": 1} and repeats.suggest("b") == {"w": 2}
    # Every proposal made: the round waits until all of them have ended.
    assert repeats.suggest("x") is None
    for trial, result in (("r", finished(0.5)), ("a", finished(0.7)), ("r1", finished(0.4))):
        repeats.on_trial_result(trial, result)
        repeats.on_trial_complete(trial, result)
    assert repeats.suggest("x") is None  # b is still running
    repeats.on_trial_complete("b", finished(0.9))
    # The top two are b and a (the recipe point has its seeds): b's seeds first.
    assert [repeats.suggest(t) for t in ("b1", "b2", "a1", "a2")] == [
        {"w": 2, "train.seed": 417, SEED_GROUP: "b"}, {"w": 2, "train.seed": 418, SEED_GROUP: "b"},
        {"w": 1, "train.seed": 417, SEED_GROUP: "a"}, {"w": 1, "train.seed": 418, SEED_GROUP: "a"}]
    assert repeats.suggest("y") == Searcher.FINISHED
    assert repeats.most_trials() == 3 + 2 * (3 + 2)  # room for an extended search's round
    # Optuna's side saw each configuration once: no repeat was proposed to it or reported to it.
    assert proposer.suggested == ["r", "a", "b"]
    assert proposer.results == ["r", "a"] and proposer.completed == ["r", "a", "b"]


def test_a_trial_stopped_early_or_errored_is_not_confirmed_and_the_recipe_point_counts_among_the_top():
    repeats = SeedRepeats(Proposer(), proposals=4, seeds=[1], confirm=2, max_iterations=EPOCHS)
    trials = [repeats.suggest(t) for t in ("r", "r1", "a", "b", "c")]
    assert trials[1] == {"w": 0, "train.seed": 1, SEED_GROUP: "r"}
    repeats.on_trial_complete("r", finished(0.95))
    repeats.on_trial_complete("a", finished(0.99, epochs=2))  # stopped by ASHA: not a whole score
    repeats.on_trial_complete("b", error=True)
    repeats.on_trial_result("c", finished(0.6))
    repeats.on_trial_complete("c")  # Ray may end a trial without its result: the last one counts
    # Top two with whole scores: r (repeated already) and c.
    assert repeats.suggest("c1") == {"w": 3, "train.seed": 1, SEED_GROUP: "c"}
    assert repeats.suggest("z") == Searcher.FINISHED


def test_without_seeds_it_only_counts_the_proposals():
    repeats = SeedRepeats(Proposer(), proposals=2, seeds=[], confirm=0, max_iterations=EPOCHS)
    assert repeats.suggest("r") == {"w": 0} and repeats.suggest("a") == {"w": 1}
    repeats.on_trial_complete("r", finished(0.5))
    repeats.on_trial_complete("a", finished(0.6))
    assert repeats.suggest("z") == Searcher.FINISHED


def test_its_state_resumes_a_round_where_it_was_and_an_extended_search_is_confirmed_again():
    repeats = SeedRepeats(Proposer(), proposals=2, seeds=[7], confirm=1, max_iterations=EPOCHS)
    repeats.suggest("r"), repeats.suggest("r1"), repeats.suggest("a")
    repeats.on_trial_complete("r", finished(0.5))
    repeats.on_trial_complete("a", finished(0.8))
    assert repeats.suggest("a1") == {"w": 1, "train.seed": 7, SEED_GROUP: "a"}
    # As Ray saves it (the wrapper's state beside the pickled searcher) and restores it into the
    # searcher that tuner.pkl holds, with the plan's new trial count (search.tuner.experiment).
    state = pickle.loads(pickle.dumps(repeats.get_state()))
    restored = SeedRepeats(Proposer(), proposals=2, seeds=[7], confirm=1, max_iterations=EPOCHS)
    restored.set_state(state)
    assert restored.suggest("z") == Searcher.FINISHED  # a1 is not queued twice
    restored.proposals = 3
    assert restored.suggest("b") == {"w": 0}  # a new proposal (the fresh proposer's first)
    restored.on_trial_complete("b", finished(0.9))
    assert restored.suggest("b1") == {"w": 0, "train.seed": 7, SEED_GROUP: "b"}  # the new top, confirmed
    assert restored.suggest("z") == Searcher.FINISHED
