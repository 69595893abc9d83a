"""Running a planned search on Ray and reporting what it found."""

from __future__ import annotations

import math
import os
from pathlib import Path

import optuna
import ray

from search.experiment import (SearchPlan, build_tuner, can_resume, experiment_path, local_experiment_dir,
                               param_names, restore_tuner)
from search.report import BEST_CONFIG, LEADERBOARD_MD, STUDY_DB, Row, frame, write_reports

TOP_ROWS = 5  # leaderboard rows printed at the end


def run_search(plan: SearchPlan, address: str | None) -> int:
    """Run (or resume) the search; exit code 0 when at least one trial scored, else 1."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # Ray's progress table says it all
    # Save the experiment state after every controller step instead of every >= 10 s, so a
    # killed driver loses no registered checkpoint (the state is small: trials and study).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    ray.init(address=address or "local", configure_logging=False)
    resuming = can_resume(plan)
    print(f"[rfcx-tune] {'resuming' if resuming else 'starting'} experiment {experiment_path(plan)}:"
          f" spaces {', '.join(plan.spaces)}; {plan.num_samples} trials of {plan.epochs} epochs;"
          f" ASHA grace {plan.grace_period}, reduction {plan.reduction_factor}", flush=True)
    tuner = restore_tuner(plan) if resuming else build_tuner(plan)
    results = tuner.fit()
    directory = local_experiment_dir(plan) or Path("experiments") / plan.name
    study = _load_study(directory / STUDY_DB, plan.name)
    rows = write_reports(directory, results, study, plan.epochs, param_names(plan.spaces, plan.epochs),
                         title=f"{plan.name}: {', '.join(plan.spaces)}")
    print(summary(rows, directory, experiment_path(plan)))
    print(f"resume:      the same command with --name {plan.name} (finished trials are kept)")
    return 0 if any(math.isfinite(row.best_cv_lwlrap) for row in rows) else 1


def _load_study(path: Path, name: str) -> optuna.Study | None:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path}") if path.exists() else None


def summary(rows: list[Row], directory: Path, experiment: str) -> str:
    top = frame(rows).head(TOP_ROWS).to_string(index=False)
    return (f"\n{top}\n\nleaderboard: {directory / LEADERBOARD_MD}\n"
            f"best config: {directory / BEST_CONFIG} (reuse: --config {directory / BEST_CONFIG})\n"
            f"review:      tensorboard --logdir {experiment}\n")
