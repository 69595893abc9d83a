"""python search/run.py [--recipe NAME] [--space NAME ...] [--scheduler NAME]: an Optuna search over
named spaces, its weak trials stopped early by ASHA (or another scheduler), or without a space the
recipe's own configuration trained once.

Every trial is the full k-fold training of one configuration (trainable.tune.train_sed) of
a named recipe (--recipe; the reference's v1_7 by default). Results land in STORAGE/NAME:
Ray's trial directories with TensorBoard files (scalars and the HParams table),
leaderboard.md/.csv, best_config.yaml and study.db.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

STARTED_NOTHING = "interrupted before the search started; the same command starts it"


def _exit_interrupted(signum: int, frame) -> None:
    # os._exit, not an exception: one raised inside a C extension's import (torch's pybind11
    # modules) aborts the interpreter with a C++ trace instead. Nothing has started to clean up.
    print(STARTED_NOTHING, file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":  # Ctrl-C or SIGTERM during the imports below (seconds): one line, no traceback
    signal.signal(signal.SIGINT, _exit_interrupted)
    signal.signal(signal.SIGTERM, _exit_interrupted)

# Light imports only: --help and argument errors must answer at once. Ray and timm are imported by
# the functions that need them (search.preflight, search.tuner.session); torch comes with the cache's
# module (DEFAULT_CACHE_NAME).
from datatools.builtin import QUICK_PRESET, QUICK_TRAINING, default_data_dir, ensure_synthetic
from search.plan import (
    CPU_TRIAL_CPUS,
    DEFAULT_GPU_SHARE,
    PLAN_FILE,
    SAMPLERS,
    SearchPlan,
    check_plan,
    extended,
    fixed_stage,
    load_plan,
    param_names,
    plan_difference,
    report_dir,
    resume_command,
    searched_keys,
    with_resources_of,
)
from search.preflight import (
    PATH_FLAGS,
    UsageError,
    check_address,
    check_backbone,
    check_data,
    check_init_from,
    check_name,
    check_resources,
    check_weights,
    config_values,
    init_checkpoint,
)
from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS, chosen_settings, owners, setting_names
from search.storage import DEFAULT_STORAGE, StorageError, check_storage, newest_with, normalise
from search.tuner.signals import stop_on_sigterm_like_ctrl_c
from spaces import SPACES
from trainable.atomic import DiskFullError, is_disk_full
from trainable.config import STAGES, ConfigError, TrainConfig, resolve
from trainable.data.cache import DEFAULT_CACHE_NAME
from trainable.dotted import merge
from trainable.recipes import DEFAULT_RECIPE, RECIPES, STAGE_RECIPES

# max_failures: a reclaimed spot node is one failure for each trial it held, and a retry costs at
# most the epoch in flight. The schedulers' settings and defaults are their own (search.stopping);
# the resources' are settled on the Ray cluster (search.plan.trial_share: a GPU where it has GPUs).
DEFAULTS = {"num_samples": 8, "seed": 0, "max_failures": 5}
# Seed repeats by default where they cost little beside the search: 2 more trials (3 seeds, the
# fewest that give a std) once a search has REPEATS_FROM trials or more, and always on the built-in
# data (make run), where a newcomer should see the noise; the confirmation round (CONFIRM more
# configurations x 2 seeds) from REPEATS_FROM trials. A search of 12 then runs 18 trials; one of 8
# on the user's own data runs no more than its 8, since there a trial of the recipe costs hours.
REPEATS, CONFIRM, REPEATS_FROM = 3, 2, 12
# Flags that define a search; resuming takes them from the experiment itself.
SEARCH_FLAGS = ("space", "recipe", "data_dir", "cache_dir", "num_samples", "max_concurrent", "epochs", "folds",
                "backbone", "cpus_per_trial", "gpus_per_trial", "seed", "set", "config", "max_failures", "stage",
                "teacher", "init_from", "sampler", "scheduler", "repeats", "confirm", *setting_names())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search/run.py", description=__doc__.split("\n\n")[0])
    for add_flags in (add_search_flags, add_data_flags, add_scheduler_flags, add_training_flags,
                      add_resource_flags, add_experiment_flags):
        add_flags(parser)
    return parser.parse_args(argv)


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    """What is searched, from which recipe, and how Optuna proposes."""
    add = parser.add_argument_group("the search").add_argument
    add("--space", action="append", default=[], metavar="NAME",
        help=f"search space, repeatable ({', '.join(SPACES)}); other parameters keep the recipe's values;"
             f" none: train the recipe's own configuration once")
    add("--list-spaces", action="store_true", help="list the spaces and their parameters, then exit")
    add("--recipe", choices=list(RECIPES), metavar="NAME",
        help=f"the set of defaults every trial starts from ({', '.join(RECIPES)}; default: {DEFAULT_RECIPE},"
             f" the reference stage 1; see --list-recipes)")
    add("--list-recipes", action="store_true", help="list the recipes, then exit")
    add("--num-samples", type=int, help=f"trials to run (default: {DEFAULTS['num_samples']}); with --resume, a"
                                        " larger count extends the search (its study goes on)")
    add("--seed", type=int, help=f"Optuna sampler seed (default: {DEFAULTS['seed']})")
    add("--sampler", choices=SAMPLERS, help="how Optuna proposes: tpe (TPE, after random proposals for half the"
                                            " trials, at most 10) or random (default: tpe)")
    add("--repeats", type=int, metavar="K",
        help=f"seeds of the recipe point: K-1 more trials of it under other train.seed values, trained to the end,"
             f" beside --num-samples; its seed mean and std are the noise every margin is measured in (default:"
             f" {REPEATS} from {REPEATS_FROM} trials and on the built-in data, else 1)")
    add("--confirm", type=int, metavar="N",
        help=f"after the search, train its top N configurations again under the same K seeds and rank them by"
             f" their seed mean (best_config.yaml, export's best and --init-from follow it); Optuna sees each"
             f" configuration once (default: {CONFIRM} from {REPEATS_FROM} trials, else 0; 0 turns it off)")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """The data, its cache, a teacher and a model to start from: paths of this machine."""
    add = parser.add_argument_group("data").add_argument
    add("--data-dir", type=Path, help="RFCx data with its log-mel cache (default: the built-in synthetic"
                                      f" dataset in {default_data_dir()}, generated on first use)")
    add("--cache-dir", type=Path, help=f"log-mel cache (default: DATA_DIR/{DEFAULT_CACHE_NAME})")
    add("--teacher", type=Path, action="append", metavar="FILE",
        help="stage 3's teacher, repeatable (their mean): an export's windows.csv, oof.csv or submission.csv"
             " (a mean >= loss.teacher_threshold becomes a positive of weight loss.teacher_weight)")
    add("--init-from", metavar="EXPERIMENT[:TRIAL]", help="start each fold from that fold's model of a trial of an"
                                                          " earlier search (a directory, or a name in --storage;"
                                                          " TRIAL: an id or best, the default)")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """What every trial trains: its budget, folds, backbone, stage and fixed values."""
    add = parser.add_argument_group("every trial").add_argument
    add("--epochs", type=int, help="epochs per trial = the scheduler's max_t (default: the recipe's: 50 in stage 1,"
                                   f" {QUICK_TRAINING['train.epochs']} on the synthetic data; 5 in stages 2 and 3);"
                                   " a cosine over the whole budget (those of the synthetic data and of stages 2"
                                   " and 3) goes on spanning it")
    add("--folds", type=int, help="number of CV folds (default: the recipe's 5;"
                                  f" {QUICK_PRESET['data.n_folds']} on the synthetic data)")
    add("--backbone", help="timm backbone (default: the recipe's resnet18;"
                           f" {QUICK_PRESET['model.backbone']} on the synthetic data)")
    add("--stage", type=int, choices=STAGES,
        help="1: the recipe; 2: loss only on what is labelled (tp positive, fp negative); 3: stage 2 plus the"
             " teachers' labels (default: the recipe's, or 3 with --teacher); without --recipe, 2 and 3 take the"
             f" reference's recipes {STAGE_RECIPES[2]} and {STAGE_RECIPES[3]}")
    add("--set", action="append", default=[], metavar="KEY=VALUE",
        help="fix any config value, e.g. --set loss.pseudo_threshold=0.6 --set train.lr=5e-4")
    add("--config", type=Path, help="YAML config with fixed values, e.g. a best_config.yaml (its data paths"
                                    " are ignored: use --data-dir)")


def add_resource_flags(parser: argparse.ArgumentParser) -> None:
    """What each trial asks of a node, how many run at once, and where Ray runs."""
    add = parser.add_argument_group("resources").add_argument
    add("--max-concurrent", type=int, help="trials at once (default: as many as the resources allow)")
    add("--cpus-per-trial", type=float,
        help=f"CPUs per trial = its torch threads; with a GPU, all but one load its batches (default: with a GPU,"
             f" a GPU node's CPUs shared among the trials its GPUs hold; without, {CPU_TRIAL_CPUS:g})")
    add("--gpus-per-trial", type=float, help="GPUs per trial; a fraction (0.25, 0.5) packs trials on one GPU; 0"
                                             f" trains on CPUs (default: {DEFAULT_GPU_SHARE:g} where the Ray"
                                             " cluster has GPUs, else 0)")
    add("--address", help="join a running Ray cluster (e.g. auto); default: the cluster of the Ray job this runs"
                          " in (RAY_ADDRESS), else start a local Ray")
    add("--max-failures", type=int, help="retries of a failed trial from its last checkpoint"
                                         f" (default: {DEFAULTS['max_failures']})")


def add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    """Where the experiment goes, its name, and resuming it."""
    add = parser.add_argument_group("the experiment").add_argument
    add("--storage", default=DEFAULT_STORAGE, help="where experiments go: a path, or s3://bucket/prefix or"
                                                   " gs://...; on a multi-node cluster, one every node reaches"
                                                   f" (default: {DEFAULT_STORAGE})")
    add("--name", help="experiment name (default: SPACES-DATE-TIME); an existing one is resumed")
    add("--resume", action="store_true", help="continue the experiment --name (default: the newest)")
    add("--verbose", action="store_true", help="Ray's own output too: its settings and result boxes, status tables"
                                               " and a line per checkpoint (default: a line per trial event and a"
                                               " progress line; not part of the experiment's settings)")


def add_scheduler_flags(parser: argparse.ArgumentParser) -> None:
    """--scheduler from SCHEDULERS, and each scheduler's settings as flags (a setting that several
    schedulers have, such as --reduction-factor, is one flag; each of them says what it means)."""
    add = parser.add_argument_group("early stopping").add_argument
    described = "; ".join(f"{name}: {entry.description}" for name, entry in SCHEDULERS.items())
    add("--scheduler", choices=list(SCHEDULERS),
        help=f"how weak trials are stopped early (default: {DEFAULT_SCHEDULER}). {described}")
    for name in setting_names():
        settings = [setting for entry in owners(name) for setting in entry.settings if setting.name == name]
        add(settings[0].flag, type=settings[0].type, help="; ".join(s.help for s in settings))


def list_spaces() -> str:
    lines = []
    for name, space in SPACES.items():
        doc = (space.__doc__ or "").strip().splitlines()[0] if space.__doc__ else ""
        names = param_names((name,), 50)
        with_teacher = param_names((name,), 50, teacher=True)
        added = [p for p in with_teacher if p not in names]
        dropped = [p for p in names if p not in with_teacher]
        extra = f" (with --teacher: {', '.join(added)} instead of {', '.join(dropped)})" if added else ""
        lines.append(f"{name:14s} {doc}\n{'':14s} parameters: {', '.join(names)}{extra}")
    return "\n".join(lines)


def list_recipes() -> str:
    return "\n".join(f"{name:12s} {recipe.summary}" for name, recipe in RECIPES.items())


def parse_set(items: list[str]) -> dict[str, Any]:
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=5e-4")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: {text!r} is not a value") from None
    for key, flag in {**PATH_FLAGS, "recipe": "--recipe"}.items():
        if key in values:
            raise UsageError(f"--set {key}=...: use {flag}")
    return values


def fixed_config(args: argparse.Namespace, data_dir: Path, synthetic: bool) -> dict[str, Any]:
    """Dotted config keys, lowest priority first: preset, --config, --set, flags (--recipe among
    them); every key given here wins over the recipe's defaults.

    The preset and --config are bases: keys the chosen spaces search are dropped from them, so
    a best_config.yaml fixes everything else of a new search. A --set on a searched key is a
    contradiction, refused by `check_plan`.
    """
    searched = searched_keys(tuple(args.space), TrainConfig.epochs, teacher=args.teacher is not None)
    config = {} if args.config is None else config_values(args.config)
    stage = args.stage if args.stage is not None else 3 if args.teacher else None
    # A stage's own recipe where none is named, on the command line or in --config.
    recipe = args.recipe or config.get("recipe") or (STAGE_RECIPES[stage] if stage is not None else None)
    recipe_values = RECIPES.get(recipe or DEFAULT_RECIPE, RECIPES[DEFAULT_RECIPE]).values
    base: dict[str, Any] = dict(QUICK_PRESET) if synthetic else {}
    if synthetic and recipe_values.get("stage", 1) == 1:
        base.update(QUICK_TRAINING)  # the later stages' recipes keep their own training
    base.update(config)
    given = {**recipe_values, **base}
    if args.epochs is not None and given.get("train.t_max", TrainConfig.t_max) == given.get("train.epochs",
                                                                                          TrainConfig.epochs):
        base["train.t_max"] = args.epochs  # a cosine over the whole budget (the preset's, stages 2 and 3's) stays so
    fixed = {key: value for key, value in base.items() if key not in searched}
    fixed.update(parse_set(args.set))
    flags = {"recipe": recipe, "train.epochs": args.epochs, "data.n_folds": args.folds,
             "model.backbone": args.backbone, "stage": stage}
    fixed.update({key: value for key, value in flags.items() if value is not None})
    fixed.update(path_values(args, data_dir))
    if fixed_stage(fixed) == 3 and "teacher_files" not in fixed:
        raise UsageError("stage 3 learns from a teacher: give --teacher FILE (an export's windows.csv; repeatable)")
    merge({}, fixed)  # a key given both as a value and as a section fails here, with its name
    return fixed


def path_values(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The config's paths from their flags, absolute: the trials run in other directories."""
    paths: dict[str, Any] = {"data_dir": str(data_dir.resolve())}
    if args.cache_dir is not None:
        paths["cache_dir"] = str(args.cache_dir.resolve())
    if args.teacher:
        paths["teacher_files"] = [str(path.resolve()) for path in args.teacher]
    if args.init_from is not None:
        paths["init_from"] = str(init_checkpoint(args.init_from, args.storage))
    return paths


def experiment_name(args: argparse.Namespace, storage: str) -> str:
    if args.name is not None:  # "" too: refused, not taken for no name
        check_name(args.name)
        return args.name
    if args.resume:
        newest = newest_with(storage, PLAN_FILE)
        if newest is None:
            raise UsageError(f"--resume: no experiment in {storage}")
        return newest
    what = '+'.join(args.space) if args.space else args.recipe or DEFAULT_RECIPE
    return f"{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def _value(args: argparse.Namespace, flag: str) -> Any:
    value = getattr(args, flag)
    return DEFAULTS[flag] if value is None else value


def new_plan(args: argparse.Namespace, storage: str, name: str) -> SearchPlan:
    """The plan of a search from the command line, checked."""
    unknown = [space for space in args.space if space not in SPACES]
    if unknown:
        raise UsageError(f"unknown space {unknown[0]!r} (known: {', '.join(SPACES)}; see --list-spaces)")
    if not args.space and args.num_samples not in (None, 1):
        raise UsageError(f"--num-samples {args.num_samples} without --space would train one configuration"
                         f" {args.num_samples} times; choose a --space ({', '.join(SPACES)})")
    check_resources(args.num_samples, args.max_concurrent, args.cpus_per_trial, args.gpus_per_trial)
    synthetic = args.data_dir is None
    data_dir = ensure_synthetic(default_data_dir(), workers=os.cpu_count() or 1) if synthetic else args.data_dir
    fixed = fixed_config(args, data_dir, synthetic)
    trial = resolve(fixed)  # a bad fixed value fails here, with its key
    scheduler = args.scheduler or DEFAULT_SCHEDULER
    # Another scheduler's flag, or a bad value, is refused before the data are read.
    settings = chosen_settings(scheduler, {name: getattr(args, name) for name in setting_names()}, trial.train.epochs)
    n_species = check_data(trial)
    check_backbone(trial)
    if trial.init_from:
        check_init_from(trial, n_species)
    num_samples = _value(args, "num_samples") if args.space else 1
    many = num_samples >= REPEATS_FROM
    repeats = args.repeats if args.repeats is not None else REPEATS if many or synthetic or args.confirm else 1
    confirm = args.confirm if args.confirm is not None else CONFIRM if many and args.space else 0
    plan = SearchPlan(spaces=tuple(dict.fromkeys(args.space)), fixed=fixed, num_samples=num_samples,
                      max_concurrent=args.max_concurrent,
                      cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,  # None: the cluster's
                      storage=storage, name=name, seed=_value(args, "seed"), max_failures=_value(args, "max_failures"),
                      sampler=args.sampler or SAMPLERS[0], scheduler=scheduler, scheduler_settings=settings,
                      repeats=repeats, confirm=confirm)
    check_plan(plan)
    if trial.model.pretrained:  # last: every cheap check answers first
        check_weights(trial)
    return plan


def make_plan(args: argparse.Namespace) -> SearchPlan:
    """Resolve and check everything before Ray starts. An existing experiment is resumed
    with its own settings: `--resume` takes them as they are (`--num-samples` may raise the trial
    count: the search is extended), and repeating the command that started it is fine, but other
    settings under its name are refused (they would be ignored)."""
    check_address(args.address)
    storage = normalise(args.storage)
    try:
        check_storage(storage)  # a remote store is asked once, with a timeout, before anything reads it
    except StorageError as error:
        raise UsageError(str(error)) from None
    try:
        name = experiment_name(args, storage)
        stored = load_plan(storage, name)
    except OSError as error:  # e.g. an s3:// bucket that does not exist, or no credentials
        raise UsageError(f"--storage {storage}: cannot read it: {str(error).splitlines()[0]}") from None
    if args.resume:
        given = [flag for flag in SEARCH_FLAGS if getattr(args, flag) not in (None, [])]
        # --num-samples alone may extend the search: its searcher goes on with the study.
        fixed_flags = [flag for flag in given if flag != "num_samples"]
        if stored is not None and fixed_flags:
            raise UsageError(f"--resume continues {name} with its own settings; drop"
                             f" --{fixed_flags[0].replace('_', '-')} (see {storage}/{name}/{PLAN_FILE})")
        if stored is not None:
            return extended(stored, args.num_samples)
        if not given:
            raise UsageError(f"--resume: no experiment to resume at {storage}/{name}")
    plan = new_plan(args, storage, name)
    from search.tuner.experiment import can_resume  # Ray

    if args.resume and not can_resume(plan):
        raise UsageError(f"--resume: no experiment to resume at {storage}/{name}")
    difference = plan_difference(stored, plan) if stored is not None else None
    if difference:
        raise UsageError(f"experiment {name} exists with other settings ({difference}); continue it with"
                         f" --resume --name {name}, or choose another --name")
    return plan if stored is None else with_resources_of(plan, stored)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_spaces:
        print(list_spaces())
        return 0
    if args.list_recipes:
        print(list_recipes())
        return 0
    plan = None
    try:
        plan = make_plan(args)
        from search.tuner.session import run_search  # starts Ray: only once the input is known to be good
        return run_search(plan, address=args.address, verbose=args.verbose)
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk while the reports are written (search.tuner.full_disk stops the trials)
        if not is_disk_full(error):
            raise
        full = error if isinstance(error, DiskFullError) else DiskFullError(error.filename or args.storage)
        print(f"error: {full}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Before the search, while Ray starts or the Tuner is built, or a second Ctrl-C while Tune
        # stops: whatever was recorded is whole (atomic writes, search.tuner.experiment.WholeFiles).
        print(interrupted_line(plan), file=sys.stderr)
        return 130


def interrupted_line(plan: SearchPlan | None) -> str:
    """The one line an interrupted run ends with: what the next command finds."""
    if plan is None:
        return STARTED_NOTHING
    if not (report_dir(plan) / PLAN_FILE).exists():
        return f"interrupted before experiment {plan.name} was created; the same command starts it"
    return f"interrupted: continue with {resume_command(plan)}"


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, KeyboardInterrupt
    stop_on_sigterm_like_ctrl_c()
    sys.exit(main())
