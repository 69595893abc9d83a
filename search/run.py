"""python search/run.py --space NAME [...]: an ASHA + Optuna search over named spaces.

Every trial is the full k-fold training of one configuration (trainable.tune.train_sed).
Results land in STORAGE/NAME: Ray's trial directories with TensorBoard files (scalars and
the HParams table), leaderboard.md/.csv, best_config.yaml and study.db.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from search.default_data import QUICK_PRESET, default_data_dir, ensure_synthetic
from search.experiment import SearchPlan, can_resume, check_plan, param_names, searched_keys
from spaces import SPACES
from trainable.annotations import AnnotationError, load_annotations
from trainable.cache import DEFAULT_CACHE_NAME, CacheError, LogMelCache
from trainable.config import ConfigError, TrainConfig, TrialConfig, flatten_dotted, from_dict, merge



DEFAULT_GRACE = 4  # epochs before ASHA may stop a trial


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="search/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--space", action="append", default=[], metavar="NAME",
        help=f"search space, repeatable ({', '.join(SPACES)}); other parameters keep the recipe's values")
    add("--list-spaces", action="store_true", help="list the spaces and their parameters, then exit")
    add("--data-dir", type=Path, help="RFCx data with its log-mel cache (default: the built-in synthetic"
                                      f" dataset in {default_data_dir()}, generated on first use)")
    add("--cache-dir", type=Path, help=f"log-mel cache (default: DATA_DIR/{DEFAULT_CACHE_NAME})")
    add("--num-samples", type=int, default=8, help="trials to run")
    add("--max-concurrent", type=int, help="trials at once (default: as many as the resources allow)")
    add("--epochs", type=int, help="epochs per trial = ASHA's max_t (default: the recipe's 50;"
                                   f" {QUICK_PRESET['train.epochs']} on the synthetic data)")
    add("--grace-period", type=int, help=f"epochs every trial runs before ASHA may stop it; early epochs say"
                                         f" little (default: {DEFAULT_GRACE}, at most --epochs)")
    add("--reduction-factor", type=int, default=2, help="ASHA keeps 1/factor of the trials at each rung")
    add("--folds", type=int, help="number of CV folds (default: the recipe's 5;"
                                  f" {QUICK_PRESET['data.n_folds']} on the synthetic data)")
    add("--backbone", help="timm backbone (default: the recipe's resnet18)")
    add("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (torch threads)")
    add("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial; a fraction packs trials on a GPU")
    add("--address", help="join a running Ray cluster (e.g. auto); default: start a local Ray")
    add("--storage", default="experiments", help="where experiments go: a path or s3://bucket/prefix")
    add("--name", help="experiment name (default: SPACES-DATE-TIME); an existing one is resumed")
    add("--resume", action="store_true", help="continue the experiment --name (default: the newest)")
    add("--seed", type=int, default=0, help="Optuna sampler seed")
    add("--set", action="append", default=[], metavar="KEY=VALUE",
        help="fix any config value, e.g. --set loss.pseudo_threshold=0.6 --set train.lr=5e-4")
    add("--config", type=Path, help="YAML config with fixed values (e.g. a best_config.yaml)")
    add("--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint")
    return parser.parse_args(argv)


def list_spaces() -> str:
    lines = []
    for name, space in SPACES.items():
        doc = (space.__doc__ or "").strip().splitlines()[0] if space.__doc__ else ""
        lines.append(f"{name:14s} {doc}\n{'':14s} parameters: {', '.join(param_names((name,), 50))}")
    return "\n".join(lines)


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
    """Dotted config keys, lowest priority first: preset, --config, --set, flags.

    The preset and --config are bases: keys the chosen spaces search are dropped from them, so
    a best_config.yaml fixes everything else of a new search. A --set on a searched key is a
    contradiction, refused by `check_plan`.
    """
    searched = searched_keys(tuple(args.space), TrainConfig.epochs)
    base: dict[str, Any] = dict(QUICK_PRESET) if synthetic else {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise UsageError(f"--config {args.config}: {error}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {args.config}: expected a mapping of config keys")
        base.update(flatten_dotted(loaded))
    fixed = {key: value for key, value in base.items() if key not in searched}
    fixed.update(parse_set(args.set))
    flags = {"train.epochs": args.epochs, "data.n_folds": args.folds, "model.backbone": args.backbone}
    fixed.update({key: value for key, value in flags.items() if value is not None})
    fixed["data_dir"] = str(data_dir.resolve())
    if args.cache_dir is not None:
        fixed["cache_dir"] = str(args.cache_dir.resolve())
    merge({}, fixed)  # a key given both as a value and as a section fails here, with its name
    return fixed


def check_data(fixed: dict[str, Any]) -> None:
    data_dir = Path(fixed["data_dir"])
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} does not exist")
    try:
        load_annotations(data_dir)
        LogMelCache.open(Path(fixed.get("cache_dir") or data_dir / DEFAULT_CACHE_NAME))
    except (AnnotationError, CacheError) as error:
        raise UsageError(str(error)) from None


def experiment_name(args: argparse.Namespace, storage: str) -> str:
    if args.name:
        return args.name
    if args.resume:
        local = Path(storage)
        if "://" in storage or not local.is_dir() or not any(local.iterdir()):
            raise UsageError(f"--resume: no experiment in {storage}; give --name")
        return max(local.iterdir(), key=lambda p: p.stat().st_mtime).name
    return f"{'+'.join(args.space)}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_plan(args: argparse.Namespace) -> SearchPlan:
    """Resolve and check everything before Ray starts."""
    unknown = [name for name in args.space if name not in SPACES]
    if unknown:
        raise UsageError(f"unknown space {unknown[0]!r} (known: {', '.join(SPACES)}; see --list-spaces)")
    if not args.space:
        raise UsageError(f"choose at least one --space ({', '.join(SPACES)})")
    synthetic = args.data_dir is None
    data_dir = ensure_synthetic(default_data_dir(), workers=os.cpu_count() or 1) if synthetic else args.data_dir
    fixed = fixed_config(args, data_dir, synthetic)
    check_data(fixed)
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    epochs = from_dict(TrialConfig, merge({}, fixed)).train.epochs  # a bad fixed value fails here
    grace = args.grace_period if args.grace_period is not None else min(DEFAULT_GRACE, epochs)
    plan = SearchPlan(spaces=tuple(dict.fromkeys(args.space)), fixed=fixed, num_samples=args.num_samples,
                      max_concurrent=args.max_concurrent, grace_period=grace,
                      reduction_factor=args.reduction_factor, cpus_per_trial=args.cpus_per_trial,
                      gpus_per_trial=args.gpus_per_trial, storage=storage, name=experiment_name(args, storage),
                      seed=args.seed, max_failures=args.max_failures)
    if args.resume and not can_resume(plan):
        raise UsageError(f"--resume: no experiment to resume at {plan.storage}/{plan.name}")
    check_plan(plan)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_spaces:
        print(list_spaces())
        return 0
    try:
        plan = make_plan(args)
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from search.session import run_search  # imports Ray: only once the input is known to be good
    return run_search(plan, address=args.address)


if __name__ == "__main__":
    sys.exit(main())
