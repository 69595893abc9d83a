"""Seed repeats: the recipe point under several seeds, and a confirmation round for the top
configurations, as trials of the same experiment that Optuna never sees.

One trial is one seed, and on the built-in data the recipe point's score moves by several
hundredths from seed to seed: more than the spread of the configurations a search compares.
SeedRepeats wraps the search's searcher (as Ray's ConcurrencyLimiter does) and adds trials:

- the recipe point (the searcher's first proposal) again under the plan's other seeds, queued as
  soon as it is proposed, so its noise is measured while the search runs;
- once every proposal has ended, the top `confirm` configurations by score (of those that trained
  their whole budget) again under the same seeds, unless they have them already (the recipe
  point, or a configuration confirmed before the search was extended).

A repeat's config is its configuration's with another `train.seed` and `seed_group` (the first
trial's id, trainable.config.SEED_GROUP); the recipe point's own trial carries its own id there,
so the schedulers never stop the trials of a seed group (search.tuner.remembering). Optuna is told
each configuration once: the repeats' results are not passed on. The state (what was proposed,
scored and queued) is saved with the experiment, so an interrupted round goes on where it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, cast

from ray.tune.search import Searcher

from trainable.config import SEED_GROUP
from trainable.reported import ITERATION, SCORE

PROGRESS = ("proposed", "ended", "scores", "repeated", "queue", "repeats", "last")  # the state Ray saves


class SeedRepeats(Searcher):
    """Args:
        searcher: the search's proposer (its first proposal is the recipe point).
        proposals: how many configurations it proposes (the plan's num_samples).
        seeds: the other seeds of a repeated configuration ([] repeats nothing).
        confirm: how many top configurations the confirmation round repeats.
        max_iterations: the epoch budget: a proposal that reported it completed (ASHA stopped the others).
    """

    def __init__(self, searcher: Searcher, proposals: int, seeds: Sequence[int], confirm: int, max_iterations: int):
        self.searcher = searcher  # the name Ray's SearchGenerator follows to save the wrapped searcher
        self.proposals, self.seeds, self.confirm, self.max_iterations = proposals, tuple(seeds), confirm, max_iterations
        self.proposed: dict[str, dict[str, Any]] = {}  # proposal trial id -> its suggestion, in order
        self.ended: list[str] = []  # proposals that ended (completed, stopped or errored)
        self.scores: dict[str, float] = {}  # proposals that trained their whole budget -> score
        self.repeated: list[str] = []  # configurations (their first trial) whose repeats were queued
        self.queue: list[tuple[str, int]] = []  # (configuration, seed) still to suggest
        self.repeats: dict[str, tuple[str, int]] = {}  # repeat trial id -> (configuration, seed)
        self.last: dict[str, dict] = {}  # a proposal's last result (Ray may end it without one)
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:  # or Searcher.FINISHED, a str Ray's type leaves out
        if self.queue:
            group, seed = self.queue.pop(0)
            self.repeats[trial_id] = (group, seed)
            return {**self.proposed[group], "train.seed": seed, SEED_GROUP: group}
        if len(self.proposed) < self.proposals:
            suggestion = self.searcher.suggest(trial_id)
            if suggestion is None or suggestion == Searcher.FINISHED:
                return suggestion
            first = not self.proposed
            self.proposed[trial_id] = dict(suggestion)
            if first and self.seeds:  # the recipe point: its seeds from the start
                self._repeat(trial_id)
                return {**suggestion, SEED_GROUP: trial_id}
            return suggestion
        if any(trial not in self.ended for trial in self.proposed):
            return None  # the confirmation round ranks every proposal: wait for the last ones
        for group in self.top():
            self._repeat(group)
        return self.suggest(trial_id) if self.queue else cast(dict, Searcher.FINISHED)

    def most_trials(self) -> int:
        """The most trials the search can make from here: every proposal, the seeds of the
        configurations repeated so far, and those of a round still to come (the recipe point's,
        and a confirmation round's: an extended search has one more)."""
        to_come = self.confirm + (0 if self.repeated else 1)
        return self.proposals + len(self.seeds) * (len(self.repeated) + to_come)

    def top(self) -> list[str]:
        """The configurations of the confirmation round: the top `confirm` by score."""
        if not self.seeds:
            return []
        return sorted(self.scores, key=lambda trial: -self.scores[trial])[:self.confirm]

    def _repeat(self, group: str) -> None:
        if group not in self.repeated:
            self.repeated.append(group)
            self.queue += [(group, seed) for seed in self.seeds]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.repeats:
            return
        self.last[trial_id] = result
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.repeats or trial_id not in self.proposed:
            return
        last = self.last.pop(trial_id, None)
        final = result if result or error else last
        if trial_id not in self.ended:
            self.ended.append(trial_id)
        if not error and final and final.get(ITERATION, 0) >= self.max_iterations \
                and math.isfinite(final.get(SCORE, math.nan)):
            self.scores[trial_id] = float(final[SCORE])
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        return copy.deepcopy({name: getattr(self, name) for name in PROGRESS})

    def set_state(self, state: dict) -> None:
        for name in PROGRESS:
            setattr(self, name, state[name])

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
