"""The module names that experiments saved by earlier versions refer to, mapped to today's.

Ray pickles a search's searcher, scheduler, callbacks and storage with the experiment (tuner.pkl,
experiment_state-*.json, search_gen_state-*.json), and a pickle names each class and function by
its module path. Once a module moves, an experiment saved before the move no longer unpickles
unless its old name still resolves: `register_old_names` makes each old name another name of the
module that holds its objects today, before an experiment is restored. Nothing else an
experiment keeps names a module: checkpoints (fold weights, best_oof.npz, trial.json), exports,
blends and search_plan.json hold tensors, arrays and plain JSON.
"""

from __future__ import annotations

import importlib
import sys

# Old module path -> the module that holds its pickled objects today (what they pickled).
OLD_NAMES = {
    # Before ReviewLogger: search.tensorboard.HParamsLogger (a name that shadowed the tensorboard
    # package for scripts in search/).
    "search.tensorboard": "search.tuner.review_logger",
    # Before the sub-packages (issue 30):
    "search.review_logger": "search.tuner.review_logger",  # ReviewLogger
    "search.optuna_search": "search.tuner.searcher",  # TruthfulOptunaSearch
    "search.scheduler": "search.tuner.remembering",  # RememberingASHA, RememberingHyperBand
    "search.experiment": "search.tuner.experiment",  # trial_dirname, WholeFiles (storage)
}


def register_old_names() -> None:
    """Make every old module path resolve to its module of today, as unpickling looks it up
    (by name, through sys.modules); a module that exists under the old name is left alone."""
    for old, new in OLD_NAMES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
