"""The leaderboard of a finished (or interrupted) search, and the files beside it.

In the experiment directory:
    leaderboard.md / .csv   one row per trial, ranked by its configuration's score (its seed mean
                            where it has several seeds: search.results.seeds; the `exp | CV | LB
                            | memo` table users keep by hand, filled in)
    best_config.yaml        the best configuration's full resolved config, reusable with --config
    study.db                the Optuna study in sqlite, for Optuna's own tools
Every file is written atomically: a report cut short never replaces a good one. The report page
(report.html, search.results.page) is drawn from them: search.results.refresh writes both.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import optuna
import pandas as pd
import yaml

from search.results.holdout import HOLDOUT_FILE, notes
from search.results.lb_scores import LB_MEMO, LB_PRIVATE, LB_PUBLIC, load_lb
from search.results.records import recorded, seed_verdict
from search.results.seeds import (
    MARGIN_SD,
    SEED,
    SEED_GROUP_COLUMN,
    SEED_MEAN,
    SEED_STD,
    SEEDS,
    Seeds,
    margin_sd,
    noise_line,
    seed_groups,
)
from search.results.trials import ENSEMBLE, EXPORTS
from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS, Scheduler
from trainable import reported
from trainable.atomic import TEMP_SUFFIX, atomic_write_text
from trainable.config import SEED_GROUP, ConfigError, resolve, to_dict
from trainable.dotted import flatten_dotted, nest_dotted
from trainable.reported import SCORE
from trainable.training.out_of_memory import OUT_OF_MEMORY_ADVICE, OutOfGPUMemoryError

if TYPE_CHECKING:
    from ray import tune  # the Tuner's results, read here as they are (metrics, config, error, path)

LEADERBOARD_MD, LEADERBOARD_CSV = "leaderboard.md", "leaderboard.csv"
BEST_CONFIG, STUDY_DB = "best_config.yaml", "study.db"
MIN_TRIALS_FOR_IMPORTANCE = 4  # fANOVA on fewer trials is noise


# Reported metric -> leaderboard column (trainable.reported): the CVs side by side, at the
# trial's last report; and those read at the epoch of the best CV, shown where a trial
# reports them (stage 3's CV against the relabelled truth, beside the CV on the original labels:
# the gap between the two is what the seed's stage-3 CV hid).
CV_COLUMNS, AT_BEST_COLUMNS = reported.leaderboard_columns(), reported.at_best_columns()


@dataclass(frozen=True)
class Row:
    """One trial on the leaderboard."""

    trial: str
    # completed / stopped by ASHA at epoch n (the scheduler's words) / out of GPU memory at ... / errored: ...
    status: str
    score: float  # the trial's score by its recipe's selection (trainable.reported.SCORE)
    fold_std: float  # std of the fold scores at the best common epoch
    epochs: int
    params: dict[str, Any]
    wall_s: float
    holdout: dict[str, float] = field(default_factory=dict)  # once exported: search/export.py
    cvs: dict[str, float] = field(default_factory=dict)  # CV_COLUMNS' values
    best_epochs: str = ""  # the epoch of each fold's selected weights, "7,5,9"
    recipe_point: bool = False  # the trial of the search's baseline (the recipe with the fixed values)
    fold_scores: str = ""  # each fold's LWLRAP at the best common epoch, "0.912,0.874"
    lb: dict[str, Any] = field(default_factory=dict)  # recorded leaderboard scores: search/lb.py
    memo: str = ""  # the ensemble's composition
    seed: float = math.nan  # the trial's train.seed
    seed_group: str = ""  # the first trial of its configuration, when it is one of several seeds
    # Its configuration's seeds (set by `ranked`): how many completed, their mean and std, and the
    # configuration's score above the recipe point's seed mean in units of its seed std.
    seeds: int = 0
    seed_mean: float = math.nan
    seed_std: float = math.nan
    margin_sd: float = math.nan

    @property
    def is_ensemble(self) -> bool:
        return self.trial == ENSEMBLE

    @property
    def group(self) -> str:
        """Its configuration: the trials under other seeds of the same configuration share it."""
        return self.seed_group or self.trial

    @property
    def is_repeat(self) -> bool:
        return self.group != self.trial


def trial_budget(config: dict[str, Any] | None, epochs: int) -> int:
    """A trial's epoch budget: its own train.epochs (a space may search it), else the search's."""
    return int(nest_dotted(config or {}).get("train", {}).get("epochs", epochs))


def trial_status(done: int, budget: int, finished: bool, error: str | None = None,
                 scheduler: Scheduler = SCHEDULERS[DEFAULT_SCHEDULER]) -> str:
    """What the leaderboard and TensorBoard say of a trial that ran `done` of `budget` epochs:
    out of GPU memory at ... / errored: ... / completed / what the scheduler says of a trial it
    stopped (stopped by ASHA at epoch n), or, before it finished, interrupted at epoch n."""
    if error is not None:
        return out_of_memory_status(error) or f"errored: {error}"
    if not finished:
        return f"interrupted at epoch {done}"
    return "completed" if done >= budget else scheduler.stopped(done)


def out_of_memory_status(error: str) -> str | None:
    """"out of GPU memory at 0.25 GPU per trial with train.batch_size 64 (...)" when the error's
    line is an OutOfGPUMemoryError, else None: the trainable's own line, which names the share
    and the batch sizes, without its advice (the same for every such trial; the printed
    summary says it once)."""
    _, name, message = error.partition(f"{OutOfGPUMemoryError.__name__}: ")
    return message.removesuffix(f": {OUT_OF_MEMORY_ADVICE}") if name else None


def leaderboard(results: tune.ResultGrid, epochs: int, param_names: list[str],
                recipe: dict[str, Any] | None = None,
                scheduler: Scheduler = SCHEDULERS[DEFAULT_SCHEDULER]) -> list[Row]:
    """Rows of every trial, best first as `ranked` orders them (trials without a score last); the
    trial whose config has the `recipe` values (dotted keys; {} for a search of one configuration)
    is marked as the recipe point; a trial stopped early has the `scheduler`'s words."""
    configs = trial_configs(results)
    return ranked([_row(result, epochs, param_names, recipe, scheduler, configs) for result in trial_results(results)])


def trial_configs(results: tune.ResultGrid) -> dict[str, dict[str, Any]]:
    """Every trial's config by its id, as Ray keeps it from the trial's creation on. A Result's
    own config is that of the trial's last report: None for a trial that never reported (pending
    or just started when the search was interrupted), whose row would show no values."""
    # A ResultGrid holds its trials in the ExperimentAnalysis it wraps, and gives their configs
    # through nothing public (Ray 2.60); get_all_configs is the analysis' own public method.
    analysis = getattr(results, "_experiment_analysis", None)
    return analysis.get_all_configs() if analysis is not None else {}


def _row(result: tune.Result, epochs: int, param_names: list[str], recipe: dict[str, Any] | None,
         scheduler: Scheduler, configs: dict[str, dict[str, Any]] | None = None) -> Row:
    metrics = result.metrics or {}
    trial = metrics.get("trial_id") or Path(result.path).name
    config = result.config or (configs or {}).get(trial) or {}
    done = int(metrics.get(reported.EPOCH, 0))
    if result.error is None and not metrics:
        status = "not started"
    else:  # Ray marks a finished or scheduler-stopped trial done
        # ... except in the state it restores a trial from when the trial ended on its own (its
        # function returned) just before the driver saved the experiment: a trial that reported its
        # whole budget has finished, whatever the mark says.
        budget = trial_budget(config, epochs)
        status = trial_status(done, budget, finished=bool(metrics.get("done", False)) or done >= budget,
                              error=None if result.error is None else last_line(result.error), scheduler=scheduler)
    flat = flatten_dotted(nest_dotted(config))
    params = {name: _display(flat.get(name)) for name in param_names}
    history = result.metrics_dataframe
    fold_std, fold_scores, at_best = math.nan, "", {}
    if history is not None and reported.CV in history:
        # cast: pandas-stubs' .loc takes no Hashable label (idxmax's type); Ray's frames have a RangeIndex.
        best = history.loc[cast(int, history[reported.CV].idxmax())]
        fold_std = float(best[reported.FOLD_STD])
        at_best = {column: float(best[name]) for name, column in AT_BEST_COLUMNS.items() if name in history}
        fold_scores = ",".join(f"{best[c]:.4f}" for c in reported.fold_keys(history.columns, reported.FOLD_LWLRAP))
    cvs = {column: float(metrics.get(key, math.nan)) for key, column in CV_COLUMNS.items()} | at_best
    folds = reported.fold_keys(metrics, reported.FOLD_BEST_EPOCH)
    is_recipe = recipe is not None and all(same_value(flat.get(key), value) for key, value in recipe.items())
    return Row(trial, status, float(metrics.get(SCORE, math.nan)), fold_std, done, params,
               float(metrics.get("time_total_s", 0.0)), cvs=cvs,
               best_epochs=",".join(str(int(metrics[key])) for key in folds), fold_scores=fold_scores,
               recipe_point=is_recipe,
               seed=trial_seed(config), seed_group=str(config.get(SEED_GROUP, "")))


def trial_seed(config: dict[str, Any]) -> float:
    """The train.seed a trial ran with (its recipe's when the search did not set one)."""
    try:
        return float(resolve(config).train.seed)
    except ConfigError:  # a config this version cannot read (an old experiment's): no seed to show
        return math.nan


def same_value(value: Any, expected: Any) -> bool:
    """Config values equal, floats up to rounding (a value may have passed through JSON)."""
    if isinstance(expected, float) and isinstance(value, (int, float)):
        return math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, (list, tuple)):
        return isinstance(value, (list, tuple)) and list(value) == list(expected)
    return value == expected


def last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _display(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def frame(rows: list[Row]) -> pd.DataFrame:
    """The leaderboard as a table (leaderboard.csv): the LB columns once a score was recorded."""
    holdout = sorted({name for row in rows for name in row.holdout}, reverse=True)  # public, private
    lb = [LB_PUBLIC, LB_PRIVATE, LB_MEMO] if any(row.lb for row in rows) else []
    records = [{"rank": i + 1, "trial": row.trial, "status": row.status, SCORE: row.score,
                **{name: row.cvs.get(name, math.nan) for name in cv_columns(rows)},
                "best_epochs": row.best_epochs, "fold_std": row.fold_std,
                **{name: row.holdout.get(name, math.nan) for name in holdout},
                SEED: pd.NA if math.isnan(row.seed) else int(row.seed), SEEDS: row.seeds, SEED_MEAN: row.seed_mean,
                SEED_STD: row.seed_std, MARGIN_SD: row.margin_sd,
                SEED_GROUP_COLUMN: "" if row.is_ensemble else row.group,
                **{name: row.lb.get(name, "" if name == LB_MEMO else math.nan) for name in lb},
                "epochs": row.epochs, **row.params, "wall_s": round(row.wall_s, 1), "recipe_point": row.recipe_point,
                "fold_scores": row.fold_scores}
               for i, row in enumerate(rows)]
    columns = ["rank", "trial", "status", SCORE, *CV_COLUMNS.values(), "best_epochs", "fold_std", SEED, SEEDS,
               SEED_MEAN, SEED_STD, MARGIN_SD, SEED_GROUP_COLUMN, "epochs", "wall_s", "recipe_point", "fold_scores"]
    return pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=columns)


def cv_columns(rows: list[Row]) -> list[str]:
    """The leaderboard's CV columns: CV_COLUMNS', and AT_BEST_COLUMNS' where a trial has them."""
    return [*CV_COLUMNS.values(), *(name for name in AT_BEST_COLUMNS.values() if any(name in row.cvs for row in rows))]


def markdown(rows: list[Row], title: str, importances: dict[str, float] | None) -> str:
    """The leaderboard as the markdown table users keep, with LB and memo left to fill."""
    if not rows:
        return f"# {title}\n\nNo trial has run yet.\n"
    table = frame(rows).drop(columns="fold_scores")
    lines_below = notes_below(table)
    table["LB"] = [_lb_cell(row.lb) for row in rows]
    # A search without a space has one configuration, every trial of it marked: no recipe point to single out.
    compared = any(not row.recipe_point for row in rows if not row.is_ensemble)
    table["memo"] = ["; ".join(part for part in ("recipe point" if row.recipe_point and compared else "",
                                                 f"seed {row.seed:g} of {row.group}" if row.is_repeat else "",
                                                 row.memo, row.lb.get(LB_MEMO, "")) if part) for row in rows]
    table = table.drop(columns=[c for c in ("recipe_point", SEED_GROUP_COLUMN, LB_PUBLIC, LB_PRIVATE, LB_MEMO)
                                if c in table])
    for name in (SCORE, *cv_columns(rows), "fold_std", SEED_MEAN, SEED_STD,
                 *{name for row in rows for name in row.holdout}):
        table[name] = table[name].map(lambda v: f"{v:.4f}" if math.isfinite(v) else "-")
    table[MARGIN_SD] = table[MARGIN_SD].map(lambda v: f"{v:+.1f}" if math.isfinite(v) else "-")
    table[SEED] = table[SEED].map(lambda v: "-" if pd.isna(v) else v)
    for name in (rows[0].params if rows else {}):  # searched values, short enough to read
        table[name] = table[name].map(_short)
    lines = [f"# {title}", "", _markdown_table(table)]
    for note in lines_below:
        lines += ["", note]
    if importances:
        lines += ["", "Parameter importance (Optuna, completed trials):", "",
                  _markdown_table(pd.DataFrame({"parameter": list(importances),
                                                "importance": [f"{v:.3f}" for v in importances.values()]}))]
    return "\n".join(lines) + "\n"


def notes_below(board: pd.DataFrame) -> list[str]:
    """The lines below a leaderboard: the seed noise first (search.results.seeds), then the
    holdout's and the LB's (search.results.holdout.notes)."""
    line = noise_line(board)
    return ([line] if line else []) + notes(board)


def _lb_cell(lb: dict[str, Any]) -> str:
    """"0.912 / 0.905" (public / private), "0.912" without a private score, "" without any."""
    scores = [lb.get(name) for name in (LB_PUBLIC, LB_PRIVATE)]
    return " / ".join(f"{v:.4f}" for v in scores if isinstance(v, float) and math.isfinite(v))


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "-"
    return "-" if value is None else value


def _markdown_table(table: pd.DataFrame) -> str:
    # Written by hand: pandas' to_markdown needs the tabulate package for one table.
    cells = [[str(c) for c in table.columns]] + [["" if v is None else str(v) for v in row]
                                                 for row in table.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
                     + ["| " + " | ".join(row) + " |" for row in cells[1:]])


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Optuna's parameter importances for the completed trials' scores, once enough trials
    completed to mean something."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return importances_for([(trial, trial.value) for trial in completed])


def importances_for(pairs: Sequence[tuple[optuna.trial.FrozenTrial, float | None]]) -> dict[str, float] | None:
    """Optuna's fANOVA importances (seeded) of the trials' parameters for the values paired
    with them (a trial's score, or the value it reached at a rung); None below
    MIN_TRIALS_FOR_IMPORTANCE trials with a value."""
    pairs = [(t, v) for t, v in pairs if v is not None and math.isfinite(v) and t.params]
    if len(pairs) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=v)
                      for t, v in pairs])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception:  # e.g. every trial had the same values; never lose the report over it
        return None


def write_reports(directory: Path, results: tune.ResultGrid, study: optuna.Study | None, epochs: int,
                  param_names: list[str], title: str, recipe: dict[str, Any] | None = None,
                  scheduler: Scheduler = SCHEDULERS[DEFAULT_SCHEDULER]) -> list[Row]:
    """Write the leaderboard and the best config into `directory` (search.results.refresh.write_page
    draws the report page from them); return the rows. `recipe`:
    the values of the search's recipe point, which marks its trial; `scheduler`: the search's,
    whose words a trial it stopped has.

    The study itself is exported by the searcher after every trial (search.tuner.searcher).
    """
    rows = with_scores(leaderboard(results, epochs, param_names, recipe, scheduler), directory)
    best = _best_result(results, rows)
    if best is not None:
        assert best.config is not None  # a trial with a score ran with its config
        config = to_dict(resolve(best.config))
        atomic_write_text(directory / BEST_CONFIG, yaml.safe_dump(config, sort_keys=False))
    _write_leaderboard(directory, rows, title, importances(study) if study else None)
    return rows


def refresh_leaderboard(directory: Path) -> list[Row]:
    """Rewrite the leaderboard of `directory` with the holdout and LB scores recorded since; its
    rows, title and importances come from the files the search wrote (search.results.refresh
    redraws the report page with it)."""
    table = pd.read_csv(directory / LEADERBOARD_CSV, dtype={"trial": str, "best_epochs": str, "fold_scores": str,
                                                            SEED_GROUP_COLUMN: str})
    params = param_columns(table)
    text = lambda value: "" if pd.isna(value) else value  # noqa: E731
    rows = with_scores([Row(r.trial, r.status, r[SCORE], r.fold_std, int(r.epochs), {name: r[name] for name in params},
                            r.wall_s, cvs={name: r[name] for name in (*CV_COLUMNS.values(), *AT_BEST_COLUMNS.values())
                                           if name in r},
                            best_epochs=text(r.best_epochs), recipe_point=bool(r.get("recipe_point", False)),
                            fold_scores=text(r.get("fold_scores", "")), seed=float(r.get(SEED, math.nan)),
                            seed_group="" if text(r.get(SEED_GROUP_COLUMN, "")) == r.trial
                            else text(r.get(SEED_GROUP_COLUMN, "")))
                        for _, r in table.iterrows() if r.trial != ENSEMBLE], directory)
    study = load_study(directory)
    _write_leaderboard(directory, rows, leaderboard_title(directory), importances(study) if study else None)
    return rows


def leaderboard_title(directory: Path) -> str:
    """The title leaderboard.md has (the search's), else the directory's name."""
    old = (directory / LEADERBOARD_MD).read_text().splitlines() if (directory / LEADERBOARD_MD).exists() else []
    return old[0].removeprefix("# ") if old else directory.name


def param_columns(table: pd.DataFrame) -> list[str]:
    """The searched parameters of a leaderboard table: its columns between epochs and wall_s."""
    columns = list(table.columns)
    return columns[columns.index("epochs") + 1:columns.index("wall_s")]


def load_study(directory: Path) -> optuna.Study | None:
    """The study the searcher exported into `directory` (study.db, which holds that one study),
    or None before any export."""
    path = directory / STUDY_DB
    if not path.exists():
        return None
    storage = f"sqlite:///{path}"
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def with_scores(rows: list[Row], directory: Path) -> list[Row]:
    """The rows with the holdout scores of the trials exported so far (search/export.py), the
    leaderboard scores recorded so far (search/lb.py) and the ensemble's row (search/ensemble.py),
    best first."""
    def holdout(trial: str) -> dict[str, float]:
        path = directory / EXPORTS / f"trial_{trial}" / HOLDOUT_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    recorded = load_lb(directory)
    trials = [replace(row, holdout=holdout(row.trial), lb=recorded.get(row.trial, {}))
              for row in rows if not row.is_ensemble]
    ensemble = [replace(row, lb=recorded.get(ENSEMBLE, {})) for row in ensemble_rows(trials, directory)]
    return ranked(trials + ensemble)


def ranked(rows: list[Row]) -> list[Row]:
    """The rows with their configurations' seed columns, best first: a configuration ranks by its
    seed mean (its score with one seed), its trials together, the first one first; once a
    confirmation round has run (a configuration besides the recipe point has several seeds),
    the configurations with several seeds rank above those with one, whose single score is a
    lucky draw as often as not. Trials without a score come last; ties, see below."""
    groups = seed_groups([row.group for row in rows], [row.status for row in rows], [row.score for row in rows])
    recipe = next((groups[row.group] for row in rows if row.recipe_point and row.group in groups), None)
    confirmed = any(seeds.n >= 2 and seeds is not recipe for seeds in groups.values())

    def value(row: Row) -> float:
        return groups[row.group].mean if row.group in groups else row.score

    # Ties (equal scores) are broken the same way in every rewrite, whatever order Ray lists the
    # trials in: the higher best pooled CV of the configuration's first trial, then its trial id.
    first_cv = {row.group: row.cvs.get(CV_COLUMNS[reported.BEST_CV], math.nan) for row in rows if not row.is_repeat}

    def key(row: Row) -> tuple:
        several = confirmed and groups.get(row.group, Seeds(())).n >= 2
        known = math.isfinite(value(row))
        cv = first_cv.get(row.group, math.nan)
        return (not known, not several, -value(row) if known else 0.0, -cv if math.isfinite(cv) else 0.0,
                row.group, row.is_repeat, row.seed)

    def with_stats(row: Row) -> Row:
        if row.is_ensemble:  # not a configuration: its noise is judged in its memo (search/ensemble.py)
            return row
        seeds = groups.get(row.group, Seeds(()))  # none for a trial stopped early: no margin from part of a budget
        return replace(row, seeds=seeds.n, seed_mean=seeds.mean, seed_std=seeds.std,
                       margin_sd=margin_sd(seeds.mean, recipe))

    return sorted((with_stats(row) for row in rows), key=key)


def ensemble_rows(rows: list[Row], directory: Path) -> list[Row]:
    """The row of the experiment's ensemble (search/ensemble.py), if it has one: ranked by its
    nested CV, its in-sample OOF score as its cv_lwlrap."""
    record = recorded(directory)
    if record is None:
        return []
    weights = record["weights"]
    cvs = {name: math.nan for name in CV_COLUMNS.values()} | {CV_COLUMNS[reported.BEST_CV]: record["oof_lwlrap"]}
    params = {name: math.nan for name in (rows[0].params if rows else {})}
    blend = ", ".join(f"{weight:.2f} {trial}" for trial, weight in weights.items())
    memo = "; ".join(part for part in (f"in-sample {record['oof_lwlrap']:.4f}", blend, seed_verdict(record)) if part)
    status = f"ensemble of {len(weights)} trial{'s' if len(weights) > 1 else ''}"
    return [Row(ENSEMBLE, status, record["nested_oof_lwlrap"], math.nan, 0, params,
                record["wall_s"], holdout=record.get("holdout", {}), cvs=cvs, memo=memo)]


def _write_leaderboard(directory: Path, rows: list[Row], title: str, found: dict[str, float] | None) -> None:
    atomic_write_text(directory / LEADERBOARD_CSV, frame(rows).to_csv(index=False))
    atomic_write_text(directory / LEADERBOARD_MD, markdown(rows, title, found))


def trial_results(results: tune.ResultGrid) -> list[tune.Result]:
    """The results of every trial, in order (a ResultGrid is iterated by index, which mypy
    does not follow)."""
    return [results[i] for i in range(len(results))]


def _best_result(results: tune.ResultGrid, rows: list[Row]) -> tune.Result | None:
    """The result of the leaderboard's best trial: its first with a score (ranked by seed mean)."""
    best = next((row.trial for row in rows if not row.is_ensemble and math.isfinite(row.score)), None)
    return next((r for r in trial_results(results) if (r.metrics or {}).get("trial_id") == best), None)


def export_study(study: optuna.Study, path: Path) -> None:
    """Copy the study into a sqlite file, replacing the old one only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + TEMP_SUFFIX)
    partial.unlink(missing_ok=True)
    copy = optuna.create_study(storage=f"sqlite:///{partial}", study_name=study.study_name or "search",
                               directions=study.directions)
    copy.add_trials(study.get_trials(deepcopy=False))
    del copy  # release the sqlite engine before the rename
    os.replace(partial, path)
