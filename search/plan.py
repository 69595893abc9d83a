"""What defines a search, without Ray: the plan, its checks, its record on disk, and the
command that resumes it.

`search/run.py` builds a SearchPlan from the command line and checks it before anything
heavy starts; `search.tuner.experiment` turns it into a Ray Tune experiment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import optuna

from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS, Scheduler, migrated
from search.storage import DEFAULT_STORAGE, is_remote, local_copy_dir, local_path, normalise, read_text, upload
from spaces import REFERENCE_WINDOWS, combine, recipe_point, set_context, windows_of
from trainable.atomic import atomic_write_text
from trainable.config import MODEL_KEYS, ConfigError, TrialConfig, resolve, to_dict
from trainable.dotted import flatten_dotted, merge
from trainable.recipes import DEFAULT_RECIPE, RECIPES

PLAN_FILE = "search_plan.json"  # in the experiment directory: the settings it was started with
SAMPLERS = ("tpe", "random")  # Optuna's TPESampler, or its RandomSampler as the baseline to beat
# TPE proposes at random until this many trials have finished (Optuna's default, 10, which a
# search of 8 trials never reaches); at most half of the budget, so TPE guides the rest.
TPE_STARTUP_TRIALS = 10
# Config keys that say where a trial's data and earlier models are, not how it trains.
PATH_KEYS = ("data_dir", "cache_dir", "teacher_files", "teacher_file", "init_from")
CHANGES_SHOWN = 3  # fixed values the start-up line names (search_plan.json has them all)
# Each trial's share of a GPU where --gpus-per-trial is not given and the Ray cluster has GPUs: a
# whole one. Packing (0.5, 0.25) pays only where one trial leaves its GPU idle, and no GPU has
# measured that yet (docs/benchmarks.md, section 6); a whole GPU is never slower per trial, and
# no neighbour can take its memory.
DEFAULT_GPU_SHARE = 1.0
CPU_TRIAL_CPUS = 1.0  # a trial without a GPU: one torch thread, so as many trials at once as CPUs
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial")  # None in a plan: settled on the Ray cluster


@dataclass(frozen=True)
class SearchPlan:
    """Everything that defines a search, resolved from the command line."""

    spaces: tuple[str, ...]  # () = one fixed configuration: the recipe with its --set/--config values
    fixed: dict[str, Any]  # dotted config keys the search does not touch (with `recipe`)
    num_samples: int
    max_concurrent: int | None
    # None: not given, settled on the search's Ray cluster (settled) before the plan is saved; a
    # saved plan has what its trials got, and keeps it when the experiment resumes.
    cpus_per_trial: float | None
    gpus_per_trial: float | None
    storage: str  # absolute path or URI (s3://...)
    name: str
    seed: int
    max_failures: int
    sampler: str = "tpe"  # one of SAMPLERS; an experiment from before this field used TPE
    scheduler: str = DEFAULT_SCHEDULER  # a key of search.stopping.SCHEDULERS
    scheduler_settings: dict[str, Any] = field(default_factory=dict)  # its settings, resolved and checked
    # Seeds per repeated configuration (search.tuner.repeats), the plan's own train.seed first: the
    # recipe point always, and the top `confirm` configurations in a confirmation round at the end.
    # An experiment from before these fields repeated nothing.
    repeats: int = 1
    confirm: int = 0

    @property
    def epochs(self) -> int:
        return self.trial_config({}).train.epochs

    @property
    def teacher(self) -> bool:
        """Whether the trials learn from a teacher (stage 3)."""
        return bool(self.fixed.get("teacher_files") or self.fixed.get("teacher_file"))  # the latter: older plans

    def trial_config(self, suggested: dict[str, Any]) -> TrialConfig:
        """The config a trial with these suggested parameters runs.

        Raises:
            ConfigError: the combination is invalid (message names the key).
        """
        return resolve(merge(self.fixed, suggested))

    @property
    def baseline(self) -> dict[str, Any]:
        """The config the search starts from (its recipe with the fixed values), dotted."""
        return flatten_dotted(to_dict(resolve(self.fixed)))


def fixed_changes(plan: SearchPlan) -> list[str]:
    """The plan's fixed values that change its recipe, "key=value" in key order (the paths
    aside): flags, the built-in data's preset, --config and --set alike."""
    paths = {key: value for key, value in plan.fixed.items() if key in PATH_KEYS}
    changed = plan.baseline
    try:  # the recipe alone, at the plan's stage (a stage-3 recipe needs the plan's teachers)
        recipe = flatten_dotted(to_dict(resolve({**paths, "recipe": changed["recipe"], "stage": changed["stage"]})))
    except ConfigError:  # a stage the recipe cannot have alone: every fixed value counts
        recipe = {}
    return [f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
            for key, value in sorted(changed.items()) if key not in PATH_KEYS and recipe.get(key) != value]


def configuration_words(plan: SearchPlan) -> str:
    """What a search without a space trains, for the start-up line: "the recipe's own
    configuration" only where no fixed value changes it."""
    changes = fixed_changes(plan)
    if not changes:
        return "the recipe's own configuration"
    more = f" and {len(changes) - CHANGES_SHOWN} more values" if len(changes) > CHANGES_SHOWN else ""
    return f"one fixed configuration: the recipe with {', '.join(changes[:CHANGES_SHOWN])}{more}"


def repeat_seeds(plan: SearchPlan) -> list[int]:
    """The seeds a repeated configuration trains under besides the plan's own train.seed."""
    seed = int(plan.baseline["train.seed"])
    return list(range(seed + 1, seed + plan.repeats))


def repeats_summary(plan: SearchPlan) -> str:
    """How the plan repeats configurations, for the start-up line ("" when it does not)."""
    if plan.repeats < 2:
        return ""
    seeds = f"{plan.repeats} seeds"
    confirm = f"; then the top {plan.confirm} configurations under the same seeds" if plan.confirm else ""
    repeated = "the recipe point" if plan.spaces else "the configuration"
    return f"; {repeated} under {seeds} ({plan.repeats - 1} more trials){confirm}"


def fixed_stage(fixed: dict[str, Any]) -> int:
    """The stage of a search's fixed keys: their own, else their recipe's."""
    if "stage" in fixed:
        return fixed["stage"]
    return RECIPES[fixed.get("recipe", DEFAULT_RECIPE)].values.get("stage", 1)


def scheduler_of(plan: SearchPlan) -> Scheduler:
    """The plan's entry of search.stopping.SCHEDULERS."""
    return SCHEDULERS[plan.scheduler]


def milestones(plan: SearchPlan) -> list[int]:
    """The epochs where the plan's scheduler compares trials; they checkpoint there."""
    return scheduler_of(plan).milestones(plan.scheduler_settings, plan.epochs)


def resume_command(plan: SearchPlan) -> str:
    """The command that continues the plan's experiment (what an interrupted search says)."""
    where = "" if plan.storage == normalise(DEFAULT_STORAGE) else f" --storage {shlex.quote(plan.storage)}"
    return f"python search/run.py --resume --name {plan.name}{where}"


def optuna_sampler(plan: SearchPlan) -> optuna.samplers.BaseSampler:
    """The plan's sampler, seeded."""
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.seed)
    startup = max(1, min(TPE_STARTUP_TRIALS, plan.num_samples // 2))
    return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=startup)


def trial_share(nodes: list[dict[str, float]], cpus: float | None, gpus: float | None) -> tuple[float, float]:
    """(CPUs, GPUs) of each trial on a Ray cluster of `nodes` (alive, and those its autoscaler can
    add): those given, and for None the defaults. GPUs: DEFAULT_GPU_SHARE where a node has a GPU,
    else none. CPUs, with a GPU share: the CPUs of a GPU node over the trials its GPUs hold, on
    the node with the fewest (so every GPU of every node can be busy), rounded down, at least 1;
    without: CPU_TRIAL_CPUS."""
    with_gpus = [node for node in nodes if node.get("GPU", 0) > 0]
    if gpus is None:
        gpus = DEFAULT_GPU_SHARE if with_gpus else 0.0
    if cpus is None:
        # the same rounding as search.tuner.cluster.trials_on: 1 / 0.25 trials per GPU is 4
        held = [(node.get("CPU", 0), math.floor(node["GPU"] / gpus + 1e-9)) for node in with_gpus] if gpus else []
        per_trial = [math.floor(node_cpus / trials + 1e-9) for node_cpus, trials in held if trials > 0]
        cpus = float(max(1, min(per_trial))) if per_trial else CPU_TRIAL_CPUS  # none fits: the check names it
    return cpus, gpus


def settled(plan: SearchPlan, nodes: list[dict[str, float]]) -> SearchPlan:
    """The plan with its trials' resources settled on a Ray cluster of `nodes` (trial_share)."""
    cpus, gpus = trial_share(nodes, plan.cpus_per_trial, plan.gpus_per_trial)
    return dataclasses.replace(plan, cpus_per_trial=cpus, gpus_per_trial=gpus)


def with_resources_of(plan: SearchPlan, stored: SearchPlan) -> SearchPlan:
    """The plan with the resources its experiment's trials got where it does not give them:
    a resume keeps them, whatever this cluster's defaults would be."""
    kept = {key: getattr(stored, key) for key in RESOURCE_KEYS if getattr(plan, key) is None}
    return dataclasses.replace(plan, **kept)


def trial_resources(plan: SearchPlan) -> dict[str, float]:
    """What one trial asks of a node; a GPU fraction packs 1/fraction trials on each GPU. A plan
    not settled on a cluster (a Tuner built by hand, as tests do) asks what it would on one without
    GPUs."""
    cpus, gpus = trial_share([], plan.cpus_per_trial, plan.gpus_per_trial)
    return {"CPU": cpus, "GPU": gpus}


def share_words(plan: SearchPlan, nodes: list[dict[str, float]]) -> str:
    """What each trial gets, for the start-up line: "each trial: 1 GPU, 8 CPUs", or without a GPU
    why not."""
    resources = trial_resources(settled(plan, nodes))
    cpus, gpus = resources["CPU"], resources["GPU"]
    cpu_words = f"{cpus:g} CPU{'' if cpus == 1 else 's'}"
    if gpus > 0:
        packed = f" ({math.floor(1 / gpus + 1e-9)} trials per GPU)" if gpus < 1 else ""
        return f"each trial: {gpus:g} GPU{'s' if gpus > 1 else ''}{packed}, {cpu_words}"
    if any(node.get("GPU", 0) > 0 for node in nodes):
        return f"each trial: {cpu_words} and no GPU (--gpus-per-trial 0 in its plan, though this Ray cluster has GPUs)"
    return f"each trial: {cpu_words} (no GPU in this Ray cluster)"


def save_plan(plan: SearchPlan) -> None:
    """Record the plan in the experiment directory, for resuming with it."""
    atomic_write_text(report_dir(plan) / PLAN_FILE, json.dumps(dataclasses.asdict(plan), indent=2))
    if is_remote(plan.storage):
        upload(report_dir(plan), experiment_path(plan))


def load_plan(storage: str, name: str) -> SearchPlan | None:
    """The plan an existing experiment was started with, or None.

    Raises:
        OSError: the storage cannot be read (an object store without credentials, ...).
    """
    text = read_text(f"{_joined(storage, name)}/{PLAN_FILE}")
    if text is None:
        return None
    saved = migrated(json.loads(text))
    return SearchPlan(**{**saved, "spaces": tuple(saved["spaces"]), "storage": storage, "name": name})


def extended(plan: SearchPlan, num_samples: int | None) -> SearchPlan:
    """The plan with `num_samples` trials in all (None: as it is). The searcher goes on with
    its study, so the new trials learn from those that ran; fewer trials than planned would
    leave trials that ran (or were promised) out of the plan, so they are refused.

    Raises:
        ConfigError: the count is below the plan's, or the plan has no space to search.
    """
    if num_samples is None or num_samples == plan.num_samples:
        return plan
    if not plan.spaces:
        raise ConfigError(f"--num-samples {num_samples}: {plan.name} trains one configuration"
                          f" (no --space); there is nothing to extend")
    if num_samples < plan.num_samples:
        raise ConfigError(f"--num-samples {num_samples}: {plan.name} has {plan.num_samples} trials planned"
                          f" and a resume only adds trials (--num-samples {plan.num_samples + 1} or more, or"
                          f" none to keep {plan.num_samples})")
    return dataclasses.replace(plan, num_samples=num_samples)


def plan_difference(stored: SearchPlan, plan: SearchPlan) -> str | None:
    """The first setting in which two plans differ (paths and name aside), as text."""
    old, new = (json.loads(json.dumps(dataclasses.asdict(p))) for p in (stored, plan))
    for key in old:
        if key in RESOURCE_KEYS and new[key] is None:  # not given: the experiment's own (with_resources_of)
            continue
        if key not in ("storage", "name") and old[key] != new[key]:
            if isinstance(old[key], dict):
                changed = sorted(k for k in set(old[key]) | set(new[key]) if old[key].get(k) != new[key].get(k))
                return f"{changed[0]}: {old[key].get(changed[0])!r} there, {new[key].get(changed[0])!r} here"
            return f"{key}: {old[key]!r} there, {new[key]!r} here"
    return None


def recipe_config(spaces: tuple[str, ...], epochs: int, teacher: bool = False,
                  config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the spaces set (suggested or derived config keys) at a config's point (default:
    the reference's defaults)."""
    point = recipe_point(list(spaces), epochs, teacher, config)
    windows = windows_of(config) if config else REFERENCE_WINDOWS
    # cast: a FixedTrial stands in for a Trial (Optuna's own use of it), a BaseTrial but no subclass.
    return DefineByRun(spaces, epochs, teacher, windows)(cast(optuna.Trial, optuna.trial.FixedTrial(point)))


def searched_keys(spaces: tuple[str, ...], epochs: int, teacher: bool = False) -> set[str]:
    """Config keys the spaces set (suggested or derived), found by running them once."""
    return set(recipe_config(spaces, epochs, teacher))


def param_names(spaces: tuple[str, ...], epochs: int, teacher: bool = False) -> list[str]:
    """The Optuna parameter names of the spaces (config paths), in suggestion order."""
    return list(recipe_point(list(spaces), epochs, teacher))


def check_plan(plan: SearchPlan) -> None:
    """Fail before Ray starts: a bad fixed value, or a fixed value that a space searches.

    Raises:
        ConfigError: one line naming the problem.
    """
    epochs = plan.epochs
    searched = searched_keys(plan.spaces, epochs, plan.teacher)  # suggested or derived
    clash = sorted(searched & set(plan.fixed))
    if clash:
        raise ConfigError(f"{clash[0]} is searched by --space {' '.join(plan.spaces)};"
                          f" drop it from --set/--config or choose other spaces")
    model_keys = sorted(searched & set(MODEL_KEYS))
    if plan.fixed.get("init_from") and model_keys:
        raise ConfigError(f"--init-from starts every trial from one model, but --space {' '.join(plan.spaces)}"
                          f" searches {model_keys[0]}, which needs another")
    recipe = recipe_config(plan.spaces, epochs, plan.teacher, plan.baseline)
    scheduler_of(plan).check(plan.scheduler_settings, epochs)
    check_repeats(plan)
    plan.trial_config(recipe)


def check_repeats(plan: SearchPlan) -> None:
    """--repeats and --confirm: seeds to repeat under, and configurations that have more than one."""
    if plan.repeats < 1:
        raise ConfigError(f"--repeats {plan.repeats}: the seeds of the recipe point, 1 (no repeat) or more")
    if plan.confirm < 0:
        raise ConfigError(f"--confirm {plan.confirm}: the configurations confirmed at the end, 0 (none) or more")
    if plan.confirm and plan.repeats < 2:
        raise ConfigError(f"--confirm {plan.confirm} trains the top configurations again under --repeats seeds;"
                          f" give --repeats 2 or more, or --confirm 0")
    if plan.confirm and not plan.spaces:
        raise ConfigError(f"--confirm {plan.confirm}: without --space there is one configuration (its seeds:"
                          f" --repeats)")
    if plan.confirm > plan.num_samples:
        raise ConfigError(f"--confirm {plan.confirm}: more configurations than the search's {plan.num_samples}"
                          f" trials")


@dataclass(frozen=True)
class DefineByRun:
    """The chosen spaces as one define-by-run function (a class: Ray pickles the searcher
    with the experiment state, and a closure cannot be pickled). Spaces read the epoch
    budget, whether there is a teacher and the baseline's windows from the trial's user
    attributes."""

    spaces: tuple[str, ...]
    epochs: int
    teacher: bool = False
    windows: tuple[int, int, int] = REFERENCE_WINDOWS  # the baseline's, see spaces.set_context

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return combine(list(self.spaces))(set_context(trial, self.epochs, self.teacher, self.windows))


def experiment_path(plan: SearchPlan) -> str:
    return _joined(plan.storage, plan.name)


def _joined(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def local_experiment_dir(plan: SearchPlan) -> Path | None:
    """The experiment directory when it is on this machine's file system."""
    local = local_path(plan.storage)
    return None if local is None else local / plan.name


def report_dir(plan: SearchPlan) -> Path:
    """Where the reports (leaderboard, best config, study.db, plan) are written: the
    experiment directory, or for an object store a local copy that is uploaded to it."""
    return local_experiment_dir(plan) or local_copy_dir(plan.storage) / plan.name
