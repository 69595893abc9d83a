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
import socket
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

# Light imports only: --help and argument errors must answer at once. Ray, torch and timm are
# imported by the functions that need them (search.tuner.experiment, search.tuner.session).
from datatools.builtin import QUICK_PRESET, QUICK_TRAINING, default_data_dir, ensure_synthetic
from search.plan import (
    PLAN_FILE,
    SAMPLERS,
    SearchPlan,
    check_plan,
    extended,
    load_plan,
    param_names,
    plan_difference,
    report_dir,
    searched_keys,
)
from search.storage import (
    DEFAULT_STORAGE,
    REMOTE_TIMEOUT_ENV,
    StorageError,
    check_storage,
    newest_with,
    normalise,
    remote_timeout,
)
from search.tuner.schedulers import DEFAULT_SCHEDULER, SCHEDULERS, chosen_settings, owners, setting_names
from search.tuner.signals import stop_on_sigterm_like_ctrl_c
from spaces import SPACES
from trainable.config import STAGES, ConfigError, TrainConfig, TrialConfig
from trainable.data.cache import DEFAULT_CACHE_NAME
from trainable.dotted import flatten_dotted, merge
from trainable.recipes import DEFAULT_RECIPE, RECIPES, STAGE_RECIPES, resolve

# max_failures: a reclaimed spot node is one failure for each trial it held, and a retry costs at
# most the epoch in flight. The schedulers' settings and defaults are their own (search.tuner.schedulers).
DEFAULTS = {"num_samples": 8, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "seed": 0, "max_failures": 5}
# Flags that define a search; resuming takes them from the experiment itself.
SEARCH_FLAGS = ("space", "recipe", "data_dir", "cache_dir", "num_samples", "max_concurrent", "epochs", "folds",
                "backbone", "cpus_per_trial", "gpus_per_trial", "seed", "set", "config", "max_failures", "stage",
                "teacher", "init_from", "sampler", "scheduler", *setting_names())
# Paths of this machine: given by their own flags, never taken from --config or --set.
PATH_FLAGS = {"data_dir": "--data-dir", "cache_dir": "--cache-dir", "teacher_files": "--teacher",
              "teacher_file": "--teacher", "init_from": "--init-from"}  # teacher_file: the key's former name


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="search/run.py", description=__doc__.split("\n\n")[0],
    )
    add = parser.add_argument
    add("--space", action="append", default=[], metavar="NAME",
        help=f"search space, repeatable ({', '.join(SPACES)}); other parameters keep the recipe's values;"
             f" none: train the recipe's own configuration once")
    add("--list-spaces", action="store_true", help="list the spaces and their parameters, then exit")
    add("--recipe", choices=list(RECIPES), metavar="NAME",
        help=f"the set of defaults every trial starts from ({', '.join(RECIPES)}; default: {DEFAULT_RECIPE},"
             f" the reference stage 1; see --list-recipes)")
    add("--list-recipes", action="store_true", help="list the recipes, then exit")
    add("--data-dir", type=Path, help="RFCx data with its log-mel cache (default: the built-in synthetic"
                                      f" dataset in {default_data_dir()}, generated on first use)")
    add("--cache-dir", type=Path, help=f"log-mel cache (default: DATA_DIR/{DEFAULT_CACHE_NAME})")
    add("--num-samples", type=int, help=f"trials to run (default: {DEFAULTS['num_samples']}); with --resume, a"
                                        " larger count extends the search (its study goes on)")
    add("--max-concurrent", type=int, help="trials at once (default: as many as the resources allow)")
    add("--epochs", type=int, help="epochs per trial = the scheduler's max_t (default: the recipe's: 50 in stage 1,"
                                   f" {QUICK_TRAINING['train.epochs']} on the synthetic data; 5 in stages 2 and 3);"
                                   " a cosine over the whole budget (those of the synthetic data and of stages 2"
                                   " and 3) goes on spanning it")
    add_scheduler_flags(parser)
    add("--folds", type=int, help="number of CV folds (default: the recipe's 5;"
                                  f" {QUICK_PRESET['data.n_folds']} on the synthetic data)")
    add("--backbone", help="timm backbone (default: the recipe's resnet18;"
                           f" {QUICK_PRESET['model.backbone']} on the synthetic data)")
    add("--stage", type=int, choices=STAGES,
        help="1: the recipe; 2: loss only on what is labelled (tp positive, fp negative); 3: stage 2 plus the"
             " teachers' labels (default: the recipe's, or 3 with --teacher); without --recipe, 2 and 3 take the"
             f" reference's recipes {STAGE_RECIPES[2]} and {STAGE_RECIPES[3]}")
    add("--teacher", type=Path, action="append", metavar="FILE",
        help="stage 3's teacher, repeatable (their mean): an export's windows.csv, oof.csv or submission.csv"
             " (a mean >= loss.teacher_threshold becomes a positive of weight loss.teacher_weight)")
    add("--init-from", metavar="EXPERIMENT[:TRIAL]", help="start each fold from that fold's model of a trial of an"
                                                          " earlier search (a directory, or a name in --storage;"
                                                          " TRIAL: an id or best, the default)")
    add("--cpus-per-trial", type=float,
        help=f"CPUs per trial = its torch threads (default: {DEFAULTS['cpus_per_trial']:g})")
    add("--gpus-per-trial", type=float, help="GPUs per trial; a fraction (0.25, 0.5) packs trials on one GPU"
                                             f" (default: {DEFAULTS['gpus_per_trial']:g})")
    add("--address", help="join a running Ray cluster (e.g. auto); default: the cluster of the Ray job this runs"
                          " in (RAY_ADDRESS), else start a local Ray")
    add("--storage", default=DEFAULT_STORAGE, help="where experiments go: a path, or s3://bucket/prefix or"
                                                   " gs://...; on a multi-node cluster, one every node reaches"
                                                   f" (default: {DEFAULT_STORAGE})")
    add("--name", help="experiment name (default: SPACES-DATE-TIME); an existing one is resumed")
    add("--resume", action="store_true", help="continue the experiment --name (default: the newest)")
    add("--seed", type=int, help=f"Optuna sampler seed (default: {DEFAULTS['seed']})")
    add("--sampler", choices=SAMPLERS, help="how Optuna proposes: tpe (TPE, after random proposals for half the"
                                            " trials, at most 10) or random (default: tpe)")
    add("--set", action="append", default=[], metavar="KEY=VALUE",
        help="fix any config value, e.g. --set loss.pseudo_threshold=0.6 --set train.lr=5e-4")
    add("--config", type=Path, help="YAML config with fixed values, e.g. a best_config.yaml (its data paths"
                                    " are ignored: use --data-dir)")
    add("--max-failures", type=int, help="retries of a failed trial from its last checkpoint"
                                         f" (default: {DEFAULTS['max_failures']})")
    return parser.parse_args(argv)


def add_scheduler_flags(parser: argparse.ArgumentParser) -> None:
    """--scheduler from SCHEDULERS, and each scheduler's settings as flags (a setting that several
    schedulers have, such as --reduction-factor, is one flag; each of them says what it means)."""
    described = "; ".join(f"{name}: {entry.description}" for name, entry in SCHEDULERS.items())
    parser.add_argument("--scheduler", choices=list(SCHEDULERS),
                        help=f"how weak trials are stopped early (default: {DEFAULT_SCHEDULER}). {described}")
    for name in setting_names():
        settings = [setting for entry in owners(name) for setting in entry.settings if setting.name == name]
        parser.add_argument(settings[0].flag, type=settings[0].type, help="; ".join(s.help for s in settings))


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
    return values


def fixed_config(args: argparse.Namespace, data_dir: Path, synthetic: bool) -> dict[str, Any]:
    """Dotted config keys, lowest priority first: preset, --config, --set, flags (--recipe among
    them); every key given here wins over the recipe's defaults.

    The preset and --config are bases: keys the chosen spaces search are dropped from them, so
    a best_config.yaml fixes everything else of a new search. A --set on a searched key is a
    contradiction, refused by `check_plan`.
    """
    searched = searched_keys(tuple(args.space), TrainConfig.epochs, teacher=args.teacher is not None)
    config: dict[str, Any] = {}
    if args.config is not None:
        loaded = read_config(args.config)
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {args.config}: expected a mapping of config keys")
        # The data (and teacher and init checkpoint) come from their flags, never from a config
        # written on another machine or for other data.
        config = {k: v for k, v in flatten_dotted(loaded).items() if k not in PATH_FLAGS}
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
    overrides = parse_set(args.set)
    for key, flag in PATH_FLAGS.items():
        if key in overrides:
            raise UsageError(f"--set {key}=...: use {flag}")
    if "recipe" in overrides:
        raise UsageError("--set recipe=...: use --recipe")
    fixed.update(overrides)
    flags = {"recipe": recipe, "train.epochs": args.epochs, "data.n_folds": args.folds,
             "model.backbone": args.backbone, "stage": stage}
    fixed.update({key: value for key, value in flags.items() if value is not None})
    fixed["data_dir"] = str(data_dir.resolve())
    if args.cache_dir is not None:
        fixed["cache_dir"] = str(args.cache_dir.resolve())
    if args.teacher:
        fixed["teacher_files"] = [str(path.resolve()) for path in args.teacher]
    if args.init_from is not None:
        fixed["init_from"] = str(init_checkpoint(args.init_from, args.storage))
    if resolve_stage(fixed) == 3 and "teacher_files" not in fixed:
        raise UsageError("stage 3 learns from a teacher: give --teacher FILE (an export's windows.csv; repeatable)")
    merge({}, fixed)  # a key given both as a value and as a section fails here, with its name
    return fixed


def resolve_stage(fixed: dict[str, Any]) -> int:
    """The stage of a search's fixed keys: their own, else their recipe's."""
    if "stage" in fixed:
        return fixed["stage"]
    return RECIPES[fixed.get("recipe", DEFAULT_RECIPE)].values.get("stage", 1)


def read_config(path: Path) -> Any:
    """The YAML of --config; a problem is one line (PyYAML's messages span several, with the
    offending text quoted and a caret under it)."""
    try:
        return yaml.safe_load(path.read_text())
    except IsADirectoryError:
        raise UsageError(f"--config {path} is a directory, not a YAML file") from None
    except OSError as error:
        raise UsageError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {path}: not a text file") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(f"--config {path}: {where}{error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"--config {path}: {str(error).splitlines()[0]}") from None


def init_checkpoint(reference: str, storage: str) -> Path:
    """The checkpoint directory --init-from EXPERIMENT[:TRIAL] names: the trial's newest checkpoint."""
    from search.results.trials import TrialNotFound, newest_checkpoint, split_trial_ref, trial_dir
    from search.storage import local_path

    name, trial = split_trial_ref(reference)
    experiment = Path(name)
    local = local_path(normalise(storage))
    if not experiment.is_dir() and local is not None and (local / name).is_dir():
        experiment = local / name
    if not experiment.is_dir():
        raise UsageError(f"--init-from {reference}: no experiment directory {name} (here or in {storage})")
    from trainable.training.kfold import CheckpointError, read_trial_file
    try:
        checkpoint = newest_checkpoint(trial_dir(experiment.resolve(), trial))
        read_trial_file(checkpoint)  # a checkpoint of an earlier format is refused here, in one line
    except (TrialNotFound, CheckpointError) as error:
        raise UsageError(f"--init-from {reference}: {error}") from None
    return checkpoint


def check_data(trial: TrialConfig) -> int:
    """The data, the cache, the folds and a teacher file, checked against each other before Ray
    starts (each would fail only inside every trial, retried --max-failures times); returns the
    number of species."""
    from trainable.data.annotations import AnnotationError, load_annotations
    from trainable.data.cache import CacheError, LogMelCache
    from trainable.data.folds import folds_of
    from trainable.data.layouts import dataset
    from trainable.data.teacher import TeacherError, load_teachers

    data_dir = Path(trial.data_dir)
    cache_dir = Path(trial.cache_dir or data_dir / DEFAULT_CACHE_NAME)
    check_directory("--data-dir", data_dir)
    if trial.cache_dir:
        check_directory("--cache-dir", cache_dir, may_be_missing=True)
    try:
        annotations = load_annotations(data_dir, trial.data.dataset)
        if not cache_dir.is_dir():
            raise UsageError(f"no log-mel cache at {cache_dir}; build it: {prepare_command(trial)}")
        cache = LogMelCache.open(cache_dir)
        check_cached(annotations, dataset(trial.data.dataset), cache, data_dir, prepare_command(trial, cache.features))
        if trial.teacher_files:
            load_teachers([Path(path) for path in trial.teacher_files], annotations, cache.features.frames_per_second)
    except (AnnotationError, CacheError, TeacherError) as error:
        raise UsageError(str(error)) from None
    try:
        folds_of(annotations, trial.data)  # the trials' own split, so whatever it refuses is refused here
    except ValueError as error:  # fewer tp recordings than folds
        raise UsageError(f"data.n_folds {trial.data.n_folds} (--folds): {error} in {data_dir}") from None
    return annotations.n_species


def check_directory(flag: str, path: Path, may_be_missing: bool = False) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is not a directory")
    if not path.exists() and not may_be_missing:
        raise UsageError(f"{flag} {path} does not exist")


MISSING_SHOWN = 3  # recordings a missing-array message names


def check_cached(annotations, layout, cache, data_dir: Path, command: str) -> None:
    """Every annotated recording and every test recording of the submission has its array, computed
    from its audio as it is now (a cache that prepare left incomplete, e.g. after it exited 1, or one
    whose audio was regenerated since, is refused here); `layout`: the data's trainable.data.layouts.Dataset."""
    wanted = [("train", rid) for rid in annotations.train_ids] + [("test", rid) for rid in annotations.test_ids]
    stale = [f"{split}/{rid}" for split, rid in wanted
             if cache.stale(split, rid, layout.audio_path(data_dir, split, rid))]
    if stale:
        missing = sum(not cache.has(*name.split("/")) for name in stale)
        changed = len(stale) - missing
        what = " and ".join(part for count, part in ((missing, f"lacks {missing}"),
                                                      (changed, f"has stale arrays of {changed}")) if count)
        more = f" and {len(stale) - MISSING_SHOWN} more" if len(stale) > MISSING_SHOWN else ""
        raise UsageError(f"the log-mel cache {cache.root} {what} of the {len(wanted)} recordings the search"
                         f" reads ({', '.join(stale[:MISSING_SHOWN])}{more}); update it: {command}")


def prepare_command(trial: TrialConfig, features=None) -> str:
    """The command that builds (or completes) the trial's cache, with the cache's own feature
    parameters where they are not prepare's defaults (prepare refuses a cache of others)."""
    from datatools.prepare import FEATURE_FLAGS
    from trainable.config import FeatureConfig
    from trainable.data.annotations import DEFAULT_DATASET

    command = f"python -m datatools.prepare --data-dir {trial.data_dir}"
    if trial.data.dataset != DEFAULT_DATASET:
        command += f" --dataset {trial.data.dataset}"
    if trial.cache_dir:
        command += f" --cache-dir {trial.cache_dir}"
    if features is not None:
        defaults = FeatureConfig()
        command += "".join(f" --{name.replace('_', '-')} {getattr(features, name)}" for name in FEATURE_FLAGS
                           if getattr(features, name) != getattr(defaults, name))
    return command


def check_init_from(trial: TrialConfig, n_species: int) -> None:
    """Every fold this search trains can start from --init-from's checkpoint: the same
    backbone and fold split, and weights that load into a model of `n_species`."""
    import torch

    from trainable.model.sed import SEDModel
    from trainable.training.fit import Device
    from trainable.training.kfold import check_init_source, load_fold_weights

    checkpoint = Path(trial.init_from)
    try:
        check_init_source(checkpoint, trial)
        for fold in trial.fold_indices:
            load_fold_weights(SEDModel(trial.model, n_species), checkpoint, fold, Device(torch.device("cpu")))
    except ConfigError as error:
        raise UsageError(f"--init-from: {error}") from None


def check_weights(trial: TrialConfig) -> None:
    """The ImageNet weights load here (timm fetches them once, into its cache), before Ray starts."""
    from trainable.model.sed import create_backbone

    source = trial.model.pretrained_file or "the model hub"
    print(f"[rfcx-tune] loading the ImageNet weights of {trial.model.backbone} (model.pretrained) from {source}",
          flush=True)
    try:
        create_backbone(trial.model)
    except ConfigError as error:
        raise UsageError(str(error)) from None


MAX_NAME_BYTES = 255  # a file name on Linux and macOS file systems (NAME_MAX), and a folder of an object store's key


def experiment_name(args: argparse.Namespace, storage: str) -> str:
    if args.name:
        if Path(args.name).name != args.name or args.name in (".", ".."):
            raise UsageError(f"--name {args.name!r}: a plain name, without '/'")
        if len(args.name.encode()) > MAX_NAME_BYTES:
            raise UsageError(f"--name is {len(args.name.encode())} bytes long; the experiment's folder name can"
                             f" have at most {MAX_NAME_BYTES}")
        return args.name
    if args.resume:
        newest = newest_with(storage, PLAN_FILE)
        if newest is None:
            raise UsageError(f"--resume: no experiment in {storage}")
        return newest
    what = '+'.join(args.space) if args.space else args.recipe or DEFAULT_RECIPE
    return f"{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_resources(args: argparse.Namespace) -> None:
    for flag, minimum in (("num_samples", 1), ("max_concurrent", 1)):
        value = getattr(args, flag)
        if value is not None and value < minimum:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= {minimum}, got {value}")
    cpus, gpus = _value(args, "cpus_per_trial"), _value(args, "gpus_per_trial")
    if cpus < 0 or gpus < 0 or cpus + gpus <= 0:
        raise UsageError(f"a trial needs CPUs or GPUs: got --cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}")
    if gpus > 1 and not float(gpus).is_integer():
        raise UsageError(f"--gpus-per-trial {gpus:g}: a fraction of one GPU, or whole GPUs")


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
    check_resources(args)
    synthetic = args.data_dir is None
    data_dir = ensure_synthetic(default_data_dir(), workers=os.cpu_count() or 1) if synthetic else args.data_dir
    fixed = fixed_config(args, data_dir, synthetic)
    trial = resolve(fixed)  # a bad fixed value fails here, with its key
    scheduler = args.scheduler or DEFAULT_SCHEDULER
    # Another scheduler's flag, or a bad value, is refused before the data are read.
    settings = chosen_settings(scheduler, {name: getattr(args, name) for name in setting_names()}, trial.train.epochs)
    n_species = check_data(trial)
    import timm

    if not timm.is_model(trial.model.backbone):
        raise UsageError(f"unknown backbone {trial.model.backbone!r} (timm has no such model)")
    if trial.init_from:
        check_init_from(trial, n_species)
    num_samples = _value(args, "num_samples") if args.space else 1
    plan = SearchPlan(spaces=tuple(dict.fromkeys(args.space)), fixed=fixed, num_samples=num_samples,
                      max_concurrent=args.max_concurrent,
                      cpus_per_trial=_value(args, "cpus_per_trial"), gpus_per_trial=_value(args, "gpus_per_trial"),
                      storage=storage, name=name, seed=_value(args, "seed"), max_failures=_value(args, "max_failures"),
                      sampler=args.sampler or SAMPLERS[0], scheduler=scheduler, scheduler_settings=settings)
    check_plan(plan)
    if trial.model.pretrained:  # last: every cheap check answers first
        check_weights(trial)
    return plan


def check_address(address: str | None) -> None:
    """The Ray cluster this run joins (--address, else RAY_ADDRESS as `ray job submit` sets it)
    answers within the remote timeout. Ray itself would retry for minutes, printing warnings:
    a TCP connect says at once whether anything listens, and gRPC's channel readiness (the GCS
    is a gRPC server) whether what listens answers."""
    import grpc  # Ray's own RPC library

    given = address or os.environ.get("RAY_ADDRESS")  # as search.tuner.session.run_search joins
    if not given or given == "local":
        return
    flag = f"--address {address}" if address else f"RAY_ADDRESS={given}"
    if given.startswith(("http://", "https://")):
        raise UsageError(f"{flag} is a dashboard address (for ray job submit); join a cluster by its GCS"
                         f" address (host:6379, or auto)")
    try:
        timeout = remote_timeout()
        host, port = gcs_host_port(given)
    except (StorageError, ValueError, ConnectionError) as error:
        raise UsageError(f"{flag}: {error}") from None
    # Ray connects to the address resolved (127.0.0.1 becomes this node's IP): so does the probe.
    where = f"{host}:{port}"
    flag += "" if where in given else f" ({where})"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        reason = f"no answer in {timeout:g} s" if isinstance(error, TimeoutError) else error.strerror or error
        raise UsageError(f"{flag}: no Ray cluster there ({reason})") from None
    channel = grpc.insecure_channel(where)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise UsageError(f"{flag}: it accepts connections but did not answer as a Ray cluster in {timeout:g} s"
                         f" (set {REMOTE_TIMEOUT_ENV} to wait longer)") from None
    finally:
        channel.close()


def gcs_host_port(address: str) -> tuple[str, int]:
    """Host and port of a Ray address, `auto` resolved as Ray resolves it (the last `ray start`)."""
    from ray._private.services import canonicalize_bootstrap_address  # what ray.init uses

    client = address.startswith("ray://")  # Ray Client: its own gRPC server, at the address as given
    resolved = address.removeprefix("ray://") if client else canonicalize_bootstrap_address(address)
    host, sep, port = (resolved or "").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("not a Ray address (expected HOST:PORT, ray://HOST:PORT or auto)")
    return host.strip("[]"), int(port)


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
    return plan


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
        return run_search(plan, address=args.address)
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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


def resume_command(plan: SearchPlan) -> str:
    where = "" if plan.storage == normalise(DEFAULT_STORAGE) else f" --storage {plan.storage}"
    return f"python search/run.py --resume --name {plan.name}{where}"


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, KeyboardInterrupt
    stop_on_sigterm_like_ctrl_c()
    sys.exit(main())
