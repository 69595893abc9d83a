"""report.html: an experiment's leaderboard and figures on one self-contained page.

Built from the files the experiment directory already has (leaderboard.csv, study.db,
search_plan.json), so it is refreshed wherever they change: at the end of a search, after
an export and after an LB score is recorded. The figures are PNGs embedded in the page
(base64): it opens from disk, offline, and can be mailed or attached as one file.
search.results.refresh writes it after the leaderboard.

Once the recipe point has run under several seeds (search/results/seeds.py), the history and
the CV-vs-holdout figures draw its seed band and the page prints the seed-noise line under the
leaderboard: the margins the figures show are read against that noise.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from search.plan import PLAN_FILE, load_plan, milestones, scheduler_of
from search.results import figures
from search.results.holdout import MIN_RANKED, PRIVATE, PUBLIC, rho_text, spearman
from search.results.lb_scores import LB_PRIVATE, LB_PUBLIC
from search.results.leaderboard import (
    CV_COLUMNS,
    LEADERBOARD_CSV,
    MIN_TRIALS_FOR_IMPORTANCE,
    importances_for,
    load_study,
    notes_below,
    param_columns,
)
from search.results.records import recorded
from search.results.seeds import SEED_GROUP_COLUMN, Seeds, holdout_means, recipe_seeds
from search.results.trials import trial_rows
from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS, Scheduler
from trainable.atomic import atomic_write_text
from trainable.reported import BEST_CV, METRIC, SCORE

REPORT_HTML = "report.html"
TOP_FOLDS = 5  # trials in the per-fold figure
STOPPED = (optuna.trial.TrialState.PRUNED,)


@dataclass(frozen=True)
class Panel:
    """One figure of the page, or why it is not there yet."""

    title: str
    caption: str
    png: bytes | None = None


def write_report_page(directory: Path, title: str) -> Path:
    """Write DIRECTORY/report.html (atomically) from its leaderboard, study and plan."""
    # Trial ids as text, and the seed groups that name them: an all-digit id must not become a number.
    board = pd.read_csv(directory / LEADERBOARD_CSV, dtype={"trial": str, "fold_scores": str, SEED_GROUP_COLUMN: str})
    trials_board = trial_rows(board)  # the figures of configurations leave the ensemble out
    study = load_study(directory)
    trials = [] if study is None else study.get_trials(deepcopy=False)
    plan = load_plan(str(directory.parent), directory.name) if (directory / PLAN_FILE).is_file() else None
    # Without a plan (an experiment from elsewhere, copied without it) the default scheduler's words.
    scheduler = SCHEDULERS[DEFAULT_SCHEDULER] if plan is None else scheduler_of(plan)
    compared = [] if plan is None else milestones(plan)
    # fANOVA's epoch: the first where the scheduler compares trials, every trial reaches it;
    # under FIFO (no milestone) every trial reaches the budget.
    first = None if plan is None else (compared or [plan.epochs])[0]
    where = f"{scheduler.label}'s first rung" if compared else "the end of the budget"
    # The recipe point's seeds in each figure's units: the history plots each trial's best pooled
    # CV (the leaderboard's column of it), the CV-vs-holdout figure the score and the holdout's
    # mean of the halves. No band on the LB axis: seeds are not submitted one by one.
    best_cv = CV_COLUMNS[BEST_CV]
    held = holdout_means(trials_board)
    on_history = recipe_band_seeds(trials_board, trials_board[best_cv] if best_cv in trials_board else None)
    on_cv, on_holdout = recipe_band_seeds(trials_board), None if held is None else recipe_band_seeds(trials_board, held)
    panels = [history_panel(trials, scheduler, on_history), curves_panel(trials, compared, scheduler),
              parallel_panel(trials_board), importance_panel(trials, first, where, scheduler),
              folds_panel(trials_board),
              versus_panel(trials_board, "holdout", PUBLIC, PRIVATE, "when the data have test_truth.csv, the search"
                           " scores its top trials on the holdout (search/export.py scores any)", on_cv, on_holdout),
              versus_panel(trials_board, "LB", LB_PUBLIC, LB_PRIVATE, "record real leaderboard scores with"
                           " python search/lb.py EXPERIMENT TRIAL --public S", on_cv)]
    record = recorded(directory)
    if record is not None:
        panels.append(ensemble_panel(record))
    path = directory / REPORT_HTML
    atomic_write_text(path, page(title, board, panels))
    return path


def recipe_band_seeds(board: pd.DataFrame, values: pd.Series | None = None) -> Seeds | None:
    """The recipe point's completed seeds by `values` (default: the score), None below two: one
    seed has no spread to draw."""
    found = recipe_seeds(board, values)
    return found if found is not None and found.n >= 2 else None


def band(recipe: Seeds | None, what: str) -> figures.Band | None:
    return None if recipe is None else figures.Band(recipe.mean, recipe.std,
                                                    f"recipe point, {recipe.n} seeds: {what} mean ± std")


def band_words(bands: list[tuple[str, Seeds | None]]) -> str:
    """The caption's sentence on a figure's seed bands, each (what it is of, the recipe point's
    seeds or None); "" without any."""
    said = [f"the recipe point's {what} under its {recipe.n} seeds, {recipe.mean:.4f} ± {recipe.std:.4f}"
            for what, recipe in bands if recipe is not None]
    if not said:
        return ""
    return (f" Green: {'; '.join(said)} (mean ± std, a line at the mean). A trial inside a band is within one seed"
            f" std of the recipe point: as close as a change of seed alone would put it.")


def history_panel(trials: list[optuna.trial.FrozenTrial], scheduler: Scheduler, recipe: Seeds | None = None) -> Panel:
    """`recipe`: the recipe point's seeds by their best METRIC, the figure's axis."""
    shown = [t for t in trials if _best(t) is not None]
    stopped = sum(t.state in STOPPED for t in shown)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    caption = (f"{len(shown)} trials: each one's best {METRIC} over its epochs, in the order Optuna proposed them;"
               f" {stopped} {scheduler.stopped_words} (crosses), {failed} errored (not shown). The red line is the"
               f" best so far.{band_words([(f'best {METRIC}', recipe)])}")
    best = [b for t in shown if (b := _best(t)) is not None]  # each shown trial's: shown are those with one
    figure = figures.history([t.number for t in shown], best, [t.state in STOPPED for t in shown],
                             METRIC, scheduler.stopped_words, band(recipe, METRIC))
    return _panel("Optimisation history", caption, figure)


def curves_panel(trials: list[optuna.trial.FrozenTrial], rungs: list[int], scheduler: Scheduler) -> Panel:
    shown = [t for t in trials if t.intermediate_values]
    stopped = sum(t.state in STOPPED for t in shown)
    caption = (f"{len(shown)} trials: {METRIC} after every epoch; {len(shown) - stopped} ran on (solid),"
               f" {stopped} were {scheduler.stopped_words} (dashed, cross at the last epoch);"
               f" {scheduler.milestones_caption(rungs)}.")
    figure = figures.learning_curves([(dict(t.intermediate_values), t.state in STOPPED) for t in shown], rungs, METRIC,
                                     scheduler.stopped_words)
    return _panel("Learning curves", caption, figure)


def parallel_panel(board: pd.DataFrame) -> Panel:
    params = board[param_columns(board)]
    count = int(board[SCORE].notna().sum())
    caption = (f"{count} trials with a score: one line each across the searched parameters and the score"
               f" (yellow: the best, purple: the worst); stopped trials count with the score of the epochs they ran.")
    return _panel("Parallel coordinates", caption, figures.parallel_coordinates(params, board[SCORE], SCORE))


def importance_panel(trials: list[optuna.trial.FrozenTrial], grace: int | None, where: str,
                     scheduler: Scheduler) -> Panel:
    """fANOVA on the value every trial reached at epoch `grace` (`where`: the scheduler's first
    rung; stopped trials included), beside the same on the completed trials' scores when there
    are enough."""
    title = "Parameter importance"
    if not trials or grace is None:
        return Panel(title, "no study or plan yet: importances come once trials have finished")
    # A trial stopped before the first rung (none with Ray's schedulers) has no value there.
    at_rung = [(t, t.intermediate_values[grace]) for t in trials if grace in t.intermediate_values]
    completed = [(t, t.value) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    on_rung, on_completed = importances_for(at_rung), importances_for(completed)
    panels = [(f"{METRIC} at epoch {grace}, {len(at_rung)} trials", on_rung),
              (f"{SCORE}, {len(completed)} completed trials", on_completed)]
    right = (f" Right: on the {len(completed)} completed trials' scores, which under {scheduler.label} are the"
             f" survivors only." if on_completed else f" The completed trials alone ({len(completed)}) are too few"
             f" (fANOVA needs {MIN_TRIALS_FOR_IMPORTANCE} with varied values).")
    caption = (f"Optuna's fANOVA importances. Left: on the {METRIC} that all {len(at_rung)} trials reached at"
               f" {where} (epoch {grace}), those {scheduler.stopped_words} included.{right}")
    return _panel(title, caption, figures.importance_bars(panels))


def folds_panel(board: pd.DataFrame) -> Panel:
    top = board[board[SCORE].notna()].head(TOP_FOLDS)
    folds = [[float(v) for v in str(s).split(",")] if isinstance(s, str) and s else [] for s in top.get(
        "fold_scores", pd.Series([""] * len(top)))]
    caption = (f"The top {len(top)} trials by score: each fold's LWLRAP at the trial's best common epoch and their"
               f" mean. A trial whose folds spread widely has a CV to trust less.")
    return _panel("Per-fold spread of the top trials", caption, figures.fold_spread(list(top.trial), folds))


def versus_panel(board: pd.DataFrame, what: str, public: str, private: str, how: str,
                 on_cv: Seeds | None = None, on_what: Seeds | None = None) -> Panel:
    """`on_cv`, `on_what`: the recipe point's seeds by their score and by their `what` scores."""
    title = f"CV vs {what}"
    if public not in board or board[public].isna().all():
        return Panel(title, f"no {what} score yet: {how}.")
    rho_public, count = spearman(board, public)
    rho_private, private_count = spearman(board, private)
    rhos = (f"public {rho_text(rho_public)}" + (f", private {rho_text(rho_private)}" if private_count >= MIN_RANKED
                                                else "")) if count >= MIN_RANKED else f"needs {MIN_RANKED} trials"
    caption = (f"{count} trials with a {what} score: the CV score against it, with the line of equality;"
               f" Spearman {rhos}. Points below the line: the CV promised more than the {what} gave."
               + band_words([("CV score (vertical band)", on_cv),
                             (f"{what} score, the mean of its halves (horizontal band)", on_what)]))
    figure = figures.cv_versus(board[SCORE], board[public], board[private] if private in board else None, what,
                               band(on_cv, "CV"), band(on_what, what))
    return _panel(title, caption, figure)


def ensemble_panel(record: dict) -> Panel:
    """The hill climbing of search/ensemble.py: the blend's OOF LWLRAP after each step."""
    path, best = record["path"], record["best_single"]
    caption = (f"Greedy selection with replacement over {len(record['candidates'])} trials' out-of-fold predictions"
               f" ({record['average']} averaging): step 0 is the best single trial ({best['trial']},"
               f" {best['oof_lwlrap']:.4f}), each step adds the trial that raises the pooled OOF LWLRAP most;"
               f" {len(path) - 1} steps, {len(record['weights'])} trials in the blend. In-sample"
               f" {record['oof_lwlrap']:.4f}; nested {record['nested_oof_lwlrap']:.4f} (dashed: each fold's"
               f" recordings blended by the weights chosen on the other folds), which ranks the ensemble on the"
               f" leaderboard; one trial chosen the same way scores {record['nested_single_oof_lwlrap']:.4f}"
               f" (dash-dotted).")
    figure = figures.hill_climbing([step["trial"] for step in path], [step["oof_lwlrap"] for step in path],
                                   record["nested_oof_lwlrap"], record["nested_single_oof_lwlrap"])
    return _panel("Ensemble selection", caption, figure)


def page(title: str, board: pd.DataFrame, panels: list[Panel]) -> str:
    table = board.drop(columns=[c for c in ("fold_scores",) if c in board]).to_html(
        index=False, na_rep="-", float_format=lambda v: f"{v:.4f}", border=0, classes="board")
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in notes_below(board))  # the seed noise first
    sections = "".join(_section(panel) for panel in panels)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }}
table.board {{ border-collapse: collapse; font-size: 12px; display: block; overflow-x: auto; }}
table.board th, table.board td {{ padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right;
                                  white-space: nowrap; }}
figure {{ margin: 1.5em 0; }} figcaption {{ color: #555; font-size: 13px; max-width: 800px; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Leaderboard ({len(board)} trials)</h2>
{table}
{lines}
{sections}
</body></html>
"""


def _section(panel: Panel) -> str:
    image = (f'<img alt="{html.escape(panel.title)}" src="data:image/png;base64,'
             f'{base64.b64encode(panel.png).decode()}">' if panel.png else "")
    return (f"<h2>{html.escape(panel.title)}</h2>\n<figure>{image}"
            f"<figcaption>{html.escape(panel.caption)}</figcaption></figure>\n")


def _panel(title: str, caption: str, figure) -> Panel:
    return Panel(title, caption if figure is not None else f"nothing to draw yet ({caption})",
                 None if figure is None else figures.png(figure))


def _best(trial: optuna.trial.FrozenTrial) -> float | None:
    values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    return max(values) if values else None
