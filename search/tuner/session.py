"""Running a planned search on Ray and reporting what it found."""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path

import optuna
import ray
from ray import tune

from datatools.builtin import default_data_dir, preset_note
from search.plan import (
    SearchPlan,
    configuration_words,
    experiment_path,
    local_experiment_dir,
    param_names,
    recipe_config,
    repeats_summary,
    report_dir,
    resume_command,
    save_plan,
    scheduler_of,
    settled,
    share_words,
    trial_resources,
)
from search.results.exports import EXPORT_ERRORS, export
from search.results.holdout import TRUTH_FILE, load_truth
from search.results.leaderboard import (
    BEST_CONFIG,
    LEADERBOARD_MD,
    STUDY_DB,
    Row,
    frame,
    load_study,
    notes_below,
    write_reports,
)
from search.results.page import REPORT_HTML
from search.results.refresh import refresh_reports, write_page
from search.storage import download, is_remote, shared_storage_problem, upload
from search.tuner.cluster import autoscaler_nodes, trials_at_once, unfit_request
from search.tuner.console import ray_init_options, show_ray_output
from search.tuner.experiment import build_tuner, can_resume, fit, restore_tuner
from search.tuner.full_disk import stop_on_a_full_disk
from search.tuner.lock import LOCK_FILE, DriverLocked, hold
from search.tuner.review_logger import write_seed_metrics
from search.tuner.searcher import STUDY_EXPORT_ENV
from search.tuner.signals import fit_noting_a_stop, stop_on_sigterm_like_ctrl_c
from trainable.atomic import remove_partial_files
from trainable.training.out_of_memory import OUT_OF_MEMORY, OUT_OF_MEMORY_ADVICE

TOP_ROWS = 5  # leaderboard rows printed at the end, and scored on the holdout with the recipe point


def stage_note(plan: SearchPlan) -> str:
    """"; stage 3 (teacher FILE, folds from CHECKPOINT)" for a later stage or an init, else ""."""
    trial = plan.trial_config({})
    parts = [f"teacher {path}" for path in trial.teacher_files]
    parts += [f"folds from {trial.init_from}"] if trial.init_from else []
    if trial.stage == 1 and not parts:
        return ""
    return f"; stage {trial.stage}" + (f" ({', '.join(parts)})" if parts else "")


def run_search(plan: SearchPlan, address: str | None, verbose: bool = False) -> int:
    """Run (or resume) the search as its experiment's one driver (search.tuner.lock), the lock
    taken before anything reads the experiment and released however the search ends.

    Returns:
        0 when at least one trial scored, 1 when none did, 130 when interrupted (Ctrl-C), 2 when
        another driver runs the experiment (one line naming it) or a check before Ray refused it.
    """
    show_ray_output(verbose)  # the console: one line per event, Ray's boxes and tables with --verbose only
    try:
        lock = hold(experiment_path(plan))
    except DriverLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        return storage_error(plan, error)
    with lock:
        return run_locked(plan, address)


def run_locked(plan: SearchPlan, address: str | None) -> int:
    """run_search, the lock held."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the console's lines say it all
    experiment = local_experiment_dir(plan)
    if experiment is not None:
        # What writes cut short by a full disk or a kill left (no other driver writes here now).
        remove_partial_files(experiment, recursive=True)
        # Save the experiment state after every controller step instead of every >= 10 s, so
        # a killed driver loses no registered checkpoint (the state is small and local).
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    directory = report_dir(plan)
    try:  # read before Ray starts; search/run.py asked a remote store already, with a timeout
        resuming = can_resume(plan)
    except OSError as error:
        return storage_error(plan, error)
    # Inside a Ray job (`ray job submit` sets RAY_ADDRESS) the search joins the job's cluster;
    # otherwise "local", never None: ray.init(None) would join any cluster `ray start` left here.
    joined = join_cluster(plan, address or os.environ.get("RAY_ADDRESS") or "local")
    if joined is None:
        return 2
    plan, nodes = joined  # its resources settled: what the trials get is what search_plan.json says
    try:  # after the cluster's checks, so a refused search leaves nothing behind
        if not resuming:
            save_plan(plan)
        elif is_remote(plan.storage):  # the reports so far, wherever this search ran before
            download(experiment_path(plan), directory, skip=(LOCK_FILE,))  # the lock stays where it is
    except OSError as error:
        return storage_error(plan, error)
    print(start_line(plan, resuming, nodes), flush=True)
    if builtin_data(plan):
        print(f"[rfcx-tune] {preset_note(plan.baseline)}", flush=True)
    os.environ[STUDY_EXPORT_ENV] = str(directory / STUDY_DB)
    tuner = restore_tuner(plan) if resuming else build_tuner(plan)
    full_disk = stop_on_a_full_disk(tuner)
    results, stopped = fit_noting_a_stop(lambda: fit(tuner))
    return report(plan, results, stopped, full_disk.line)


def join_cluster(plan: SearchPlan, address: str) -> tuple[SearchPlan, list[dict[str, float]]] | None:
    """Start or join Ray at `address` and check that the search can run there: the plan with the
    resources its trials get there (search.plan.settled: those not given, from the nodes alive and
    those the autoscaler can add) and those nodes; None (and one line) when it cannot."""
    if not start_ray(address):
        return None
    stop_on_sigterm_like_ctrl_c()  # again: ray.init replaced it with Ray's, which exits at once
    alive = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    coming = autoscaler_nodes() if address != "local" else []  # a local Ray has no autoscaler
    plan = settled(plan, alive + coming)
    problem = cluster_problem(plan, alive, coming)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return None
    if coming and plan.max_concurrent is None:
        # With a searcher of its own, Tune keeps one trial waiting for resources at a time, and
        # the autoscaler starts nodes for waiting trials only: it would add one node after the
        # other. Let as many trials wait as the whole cluster can run, so it scales up at once.
        capacity = trials_at_once(alive + coming, trial_resources(plan))
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(capacity))
    return plan, alive + coming


def start_line(plan: SearchPlan, resuming: bool, nodes: list[dict[str, float]] | None = None) -> str:
    """What the search is, said once it starts; what each trial gets on a cluster of `nodes`."""
    spaces = (f"spaces {', '.join(plan.spaces)} (sampler {plan.sampler})" if plan.spaces
              else f"no space ({configuration_words(plan)})")
    return (f"[rfcx-tune] {'resuming' if resuming else 'starting'} experiment {experiment_path(plan)}:"
            f" recipe {plan.baseline['recipe']}, {spaces}; {plan.num_samples} trials of {plan.epochs} epochs;"
            f" {share_words(plan, nodes or [])}; {scheduler_of(plan).summary(plan.scheduler_settings)}"
            f"{repeats_summary(plan)}{stage_note(plan)}")


def report(plan: SearchPlan, results: tune.ResultGrid, stopped: bool, full_disk: str | None = None) -> int:
    """Write the reports of the search's results, score its top trials on the holdout (unless
    Ctrl-C or SIGTERM `stopped` the search, or a `full_disk` did: its line), copy the reports to a
    remote store and print the summary; returns run_search's exit code."""
    directory = report_dir(plan)
    title = f"{plan.name}: recipe {plan.baseline['recipe']}, {', '.join(plan.spaces) or 'no space'}"
    rows = write_reports(directory, results, load_study(directory), plan.epochs,
                         param_names(plan.spaces, plan.epochs, plan.teacher), title=title,
                         recipe=recipe_config(plan.spaces, plan.epochs, plan.teacher, plan.baseline),
                         scheduler=scheduler_of(plan))
    write_page(directory, title)
    # The reports are written before the holdout scoring, which rewrites them with its scores:
    # a failure or a kill while predicting leaves a complete leaderboard.
    if not stopped and full_disk is None and score_on_holdout(plan, rows):  # after Ctrl-C, stop at once
        rows = refresh_reports(directory)
    write_seed_metrics(directory, frame(rows))  # TensorBoard's HParams: each configuration's seed columns
    if is_remote(plan.storage):
        try:
            upload(directory, experiment_path(plan))
        except OSError as error:  # the local copy stays; the trials' results are already there
            print(f"warning: could not copy the reports to {experiment_path(plan)}: {error}", file=sys.stderr)
    print(summary(rows, directory, experiment_path(plan)))
    if full_disk is not None:  # it stopped the search as Ctrl-C does: the same command resumes it
        print(f"error: {full_disk}", file=sys.stderr)
        return 1
    if stopped:  # only then: a trial that errored, or one left unfinished otherwise, is no interruption
        print(f"interrupted: continue with {resume_command(plan)}")
        return 130
    return 0 if any(math.isfinite(row.score) for row in rows) else 1


def start_ray(address: str) -> bool:
    """Start a local Ray ("local"; without the dashboard, which slows the start) or join the
    cluster at `address`; False (and one line) when that fails. Without --verbose the trial
    processes print no Ray INFO line (search.tuner.console)."""
    try:
        if address == "local":
            ray.init(address="local", configure_logging=False, include_dashboard=False, **ray_init_options())
        else:
            ray.init(address=address, configure_logging=False, **ray_init_options())
    except (ConnectionError, RuntimeError, ValueError) as error:
        print(f"error: cannot start or join Ray at {address}: {error}", file=sys.stderr)
        return False
    return True


def storage_error(plan: SearchPlan, error: OSError) -> int:
    print(f"error: cannot use {experiment_path(plan)}: {str(error).splitlines()[0]}", file=sys.stderr)
    return 2


def builtin_data(plan: SearchPlan) -> bool:
    return Path(plan.fixed["data_dir"]) == default_data_dir()


def score_on_holdout(plan: SearchPlan, rows: list[Row]) -> bool:
    """Export the top TOP_ROWS trials and the recipe point when the data have test_truth.csv
    (search.results.exports: their predictions, and holdout.json); returns whether any was scored.

    Runs in the driver, after the trials: predicting is a small part of training, and a
    failure here costs the search nothing (the trial keeps its checkpoints; export it by hand).
    """
    experiment = local_experiment_dir(plan)
    truth = load_truth(Path(plan.fixed["data_dir"]))
    if truth is None:
        return False
    if experiment is None:
        print(f"[rfcx-tune] holdout: the trials are in {plan.storage}; score them with search/export.py on a"
              f" local copy", flush=True)
        return False
    scored = [row for row in rows if math.isfinite(row.score) and not row.is_ensemble]
    top = [row.trial for row in scored[:TOP_ROWS]]
    recipe = next((row.trial for row in scored if row.recipe_point), None)
    chosen = top + [recipe] if recipe is not None and recipe not in top else top
    # Every seed of the configurations scored: their holdout noise is measured like their CV's.
    groups = {row.group for row in scored if row.trial in chosen and row.seeds > 1}
    seeds = [row.trial for row in scored if row.group in groups and row.trial not in chosen]
    chosen += seeds
    if not chosen:
        return False
    which = (f"the top {len(top)} by score" + ("" if recipe is None else " (the recipe point among them)"
                                                if recipe in top else " and the recipe point")
             + (f", and {len(seeds)} more seeds of them" if seeds else ""))
    print(f"[rfcx-tune] scoring {len(chosen)} trials on the holdout ({len(truth)} test recordings with their"
          f" {TRUTH_FILE}): {which}", flush=True)
    done = False
    for trial in chosen:
        try:
            export(experiment, trial, progress=False)
            done = True
        except EXPORT_ERRORS as error:  # one trial's missing checkpoint must not cost the others' scores
            print(f"warning: trial {trial} not scored on the holdout: {str(error).splitlines()[0]}", file=sys.stderr)
    return done


def cluster_problem(plan: SearchPlan, alive: list[dict[str, float]], coming: list[dict[str, float]]) -> str | None:
    """Why this search cannot run on a cluster of the `alive` nodes and those the autoscaler
    may add (`coming`), or None: no node fits a trial, or some node could not reach the
    storage or the data."""
    multi_node = len(alive) > 1 or bool(coming)
    if multi_node and builtin_data(plan):
        return ("the built-in synthetic data are on this node only; on a multi-node cluster give --data-dir"
                " with data at the same path on every node (cluster.yaml pulls them to /home/ray/rfcx-data)")
    return (unfit_request(trial_resources(plan), alive + coming)
            or shared_storage_problem(plan.storage, nodes=len(alive), can_add_nodes=bool(coming)))


def summary(rows: list[Row], directory: Path, experiment: str) -> str:
    """The top of the leaderboard (with the holdout columns once scored), whether the best
    trial beats the recipe point on the holdout, how well the CV ranks as the holdout does,
    which trials ran out of GPU memory, and where everything is."""
    board = frame(rows)
    top = board.drop(columns=["recipe_point", "fold_scores", "seed_group"]).head(TOP_ROWS).to_string(index=False)
    below = "".join(f"{line}\n" for line in [*notes_below(board), *out_of_memory_lines(rows)])
    best = directory / BEST_CONFIG
    reuse = f"best config: {best} (reuse: --config {shlex.quote(str(best))})\n" if best.exists() else ""
    return (f"\n{top}\n\n{below}leaderboard: {directory / LEADERBOARD_MD}\n"
            f"report:      {directory / REPORT_HTML}\n{reuse}"
            f"review:      tensorboard --logdir {shlex.quote(experiment)}\n"
            f"resume:      the same command again (finished trials are kept)\n")


def out_of_memory_lines(rows: list[Row]) -> list[str]:
    """One line per share and batch size that ran out of GPU memory, naming its trials (they
    have no score, so they rank below the rows the summary prints) and what to change."""
    trials_by_status: dict[str, list[str]] = {}
    for row in rows:
        if row.status.startswith(OUT_OF_MEMORY):
            trials_by_status.setdefault(row.status, []).append(row.trial)
    return [f"{status} (trial{'s' if len(trials) > 1 else ''} {', '.join(trials)}): {OUT_OF_MEMORY_ADVICE}"
            for status, trials in trials_by_status.items()]
