"""The Ray scheduler of each entry of search.stopping.SCHEDULERS, built for a plan.

Ray's schedulers are built without metric and mode: the Tuner's TuneConfig passes
reported.METRIC and MODE to them, and Ray refuses a scheduler that has its own. Time is epochs
(trainable.reported.ITERATION), max_t the plan's epoch budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.plan import SearchPlan
from search.tuner.remembering import RememberingASHA, RememberingHyperBand
from trainable.reported import ITERATION


def _asha(settings: dict[str, Any], epochs: int) -> TrialScheduler:
    return RememberingASHA(time_attr=ITERATION, max_t=epochs, **settings)


def _fifo(settings: dict[str, Any], epochs: int) -> TrialScheduler:
    return FIFOScheduler()


def _hyperband(settings: dict[str, Any], epochs: int) -> TrialScheduler:
    return RememberingHyperBand(time_attr=ITERATION, max_t=epochs, **settings)


# search.stopping.SCHEDULERS' name -> its Ray scheduler, from its resolved settings and the budget.
RAY_SCHEDULERS: dict[str, Callable[[dict[str, Any], int], TrialScheduler]] = {
    "asha": _asha, "fifo": _fifo, "hyperband": _hyperband,
}


def ray_scheduler(name: str, settings: dict[str, Any], epochs: int) -> TrialScheduler:
    """The Ray scheduler of entry `name` with its resolved settings, over `epochs`."""
    return RAY_SCHEDULERS[name](settings, epochs)


def build(plan: SearchPlan) -> TrialScheduler:
    """The plan's Ray scheduler: trials compared on their epochs, up to the plan's budget."""
    return ray_scheduler(plan.scheduler, plan.scheduler_settings, plan.epochs)
