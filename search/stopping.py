"""SCHEDULERS: how a search stops trials early, chosen by `--scheduler` (asha, fifo, hyperband),
without Ray.

Each entry owns the facts of its scheduler that the plan, the command line and the reports need:
its settings (the flags search/run.py adds from them, their defaults and checks, kept in the plan
as a dict), its milestones (the epochs where it compares trials: the trials checkpoint there, so
a stopped or paused trial's last checkpoint holds the state its last result reports, and the
report page draws them), how the reports name a trial it stopped, and its one-line description
(`--help`, the start-up line). The Ray scheduler each one builds is in search.tuner.schedulers:
a new scheduler is one entry here, one there, and its test.

Time is epochs (trainable.reported.ITERATION: one report per epoch on every fold), max_t the
plan's epoch budget.

Resume: Ray does not save a scheduler's state (ray#30838). ASHA rebuilds its rungs from the
trials' recorded results (search.tuner.remembering.RememberingASHA). HyperBand only leaves a restored
finished trial out of its bracket (search.tuner.remembering.RememberingHyperBand), so that it does not
wait for it forever; its halving starts over after a resume: an unfinished trial is compared
with the trials of its new bracket, not with those that ran before. FIFO has no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainable.config import ConfigError

DEFAULT_SCHEDULER = "asha"


@dataclass(frozen=True)
class Setting:
    """One setting of a scheduler: a key of the plan's scheduler settings and its flag."""

    name: str  # the key, and the flag with dashes: grace_period -> --grace-period
    help: str
    default: int
    minimum: int
    type: type[int] = int

    @property
    def flag(self) -> str:
        return flag_of(self.name)


@dataclass(frozen=True)
class Scheduler:
    """An entry of SCHEDULERS: a scheduler that never stops a trial unless a subclass does."""

    name: str  # its --scheduler value
    label: str  # how the reports name it: "stopped by ASHA at epoch 3"
    description: str  # one line for --help and the start-up line
    settings: tuple[Setting, ...] = ()

    def resolve(self, given: dict[str, Any], epochs: int) -> dict[str, Any]:
        """The settings from the values given (the rest at their defaults), checked.

        Raises:
            ConfigError: one line naming the bad value.
        """
        settings = {setting.name: self.default(setting, epochs) for setting in self.settings}
        settings.update({name: value for name, value in given.items() if value is not None})
        self.check(settings, epochs)
        return settings

    def default(self, setting: Setting, epochs: int) -> Any:
        return setting.default

    def check(self, settings: dict[str, Any], epochs: int) -> None:
        """Raises ConfigError on a setting it does not have, lacks, or with a value below its minimum."""
        known = {setting.name: setting for setting in self.settings}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"{flag_of(unknown[0])} is not a setting of --scheduler {self.name}"
                              f" ({self.settings_text()})")
        for name, setting in known.items():
            value = settings.get(name)
            if not isinstance(value, setting.type) or value < setting.minimum:
                raise ConfigError(f"{setting.flag} must be >= {setting.minimum} for --scheduler {self.name},"
                                  f" got {value}")

    def settings_text(self) -> str:
        return f"its settings: {', '.join(s.flag for s in self.settings)}" if self.settings else "it has no settings"

    def milestones(self, settings: dict[str, Any], epochs: int) -> list[int]:
        """The epochs below the budget where it may stop (or pause) a trial, ascending."""
        return []

    @property
    def stopped_words(self) -> str:
        return f"stopped by {self.label}"

    def stopped(self, epoch: int) -> str:
        """The status of a trial it stopped after `epoch` epochs."""
        return f"{self.stopped_words} at epoch {epoch}"

    def summary(self, settings: dict[str, Any]) -> str:
        """The start-up line's words: "ASHA grace 4, reduction 3"."""
        shown = ", ".join(f"{s.name.split('_')[0]} {settings[s.name]}" for s in self.settings)
        return f"{self.label} {shown}" if shown else self.label

    def milestones_caption(self, milestones: list[int]) -> str:
        """What the report page's learning curves say of the milestones they draw."""
        if not milestones:
            return f"no {self.label} rung below the budget"
        return f"{self.label}'s rungs at epoch {', '.join(map(str, milestones))} (dotted)"


@dataclass(frozen=True)
class Fifo(Scheduler):
    """Every trial runs its whole budget."""

    @property
    def stopped_words(self) -> str:  # FIFO stops no trial; Ray might, when a search is cut short
        return "stopped"

    def summary(self, settings: dict[str, Any]) -> str:
        return f"{self.label}: every trial runs all its epochs"

    def milestones_caption(self, milestones: list[int]) -> str:
        return f"{self.label} stops no trial"


@dataclass(frozen=True)
class Asha(Scheduler):
    """Ray's ASHA with its rungs rebuilt on a resume (search.tuner.remembering.RememberingASHA)."""

    def default(self, setting: Setting, epochs: int) -> Any:
        # A grace period beyond the budget would be refused; a short search gets the whole budget.
        return min(setting.default, epochs) if setting.name == "grace_period" else setting.default

    def check(self, settings: dict[str, Any], epochs: int) -> None:
        super().check(settings, epochs)
        if settings["grace_period"] > epochs:
            raise ConfigError(f"--grace-period must be in [1, epochs={epochs}], got {settings['grace_period']}")

    def milestones(self, settings: dict[str, Any], epochs: int) -> list[int]:
        """Ray's ASHA rungs below max_t: grace_period x reduction_factor^k < epochs."""
        rungs, epoch = [], settings["grace_period"]
        while epoch < epochs:
            rungs.append(epoch)
            epoch *= settings["reduction_factor"]
        return rungs


@dataclass(frozen=True)
class HyperBand(Scheduler):
    """Ray's synchronous HyperBand: brackets of trials halved at their milestones; a trial that
    reaches a milestone before the others of its bracket is paused (at its checkpoint there)."""

    def milestones(self, settings: dict[str, Any], epochs: int) -> list[int]:
        """Every bracket's milestones below max_t, as Ray's HyperBandScheduler computes them:
        bracket s starts at r0 = int(max_t / eta^s) epochs and each halving multiplies by eta."""
        eta = settings["reduction_factor"]
        brackets = int(round(math.log(epochs) / math.log(eta))) + 1
        found = set()
        for s in range(brackets):
            epoch = int(epochs * eta ** (-s))
            for _ in range(s + 1 if epoch else 0):
                found.add(epoch)
                epoch = int(min(epoch * eta, epochs))
        return sorted(epoch for epoch in found if epoch < epochs)


REDUCTION_HELP = "keeps 1/factor of the trials at each rung"
SCHEDULERS: dict[str, Scheduler] = {
    "asha": Asha("asha", "ASHA", "asynchronous successive halving: stops a trial at a rung when it is below the"
                 " best 1/reduction of the trials that reached it (Ray's ASHAScheduler)", (
        Setting("grace_period", "ASHA: epochs every trial runs before it may be stopped; early epochs say little"
                " (default: 4, at most --epochs)", default=4, minimum=1),
        # Hyperband's eta = 3: halving (2) lets too many weak trials run on when only a few reached a rung.
        Setting("reduction_factor", f"ASHA: {REDUCTION_HELP} (default: 3)", default=3, minimum=2))),
    "fifo": Fifo("fifo", "FIFO", "no early stopping: every trial runs all its epochs (the baseline ASHA has to"
                 " beat)"),
    "hyperband": HyperBand("hyperband", "HyperBand", "synchronous HyperBand: brackets of trials halved together at"
                           " their milestones, waiting (paused) for the bracket (Ray's HyperBandScheduler)", (
        Setting("reduction_factor", f"HyperBand: {REDUCTION_HELP} of a bracket (eta; default: 3)", default=3,
                minimum=2),)),
}


def flag_of(name: str) -> str:
    """The flag of a setting's name: grace_period -> --grace-period."""
    return f"--{name.replace('_', '-')}"


def setting_names() -> list[str]:
    """Every scheduler's settings, each name once, in registry order (the flags run.py adds)."""
    return list(dict.fromkeys(setting.name for entry in SCHEDULERS.values() for setting in entry.settings))


def owners(name: str) -> list[Scheduler]:
    """The schedulers that have the setting `name`."""
    return [entry for entry in SCHEDULERS.values() if any(s.name == name for s in entry.settings)]


def chosen_settings(name: str, given: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The settings of scheduler `name` from the setting flags given (None: not given), checked;
    a flag of another scheduler is refused.

    Raises:
        ConfigError: one line naming the flag or the bad value.
    """
    entry = SCHEDULERS[name]
    own = {setting.name for setting in entry.settings}
    foreign = [key for key, value in given.items() if value is not None and key not in own]
    if foreign:
        of = ", ".join(e.name for e in owners(foreign[0]))
        raise ConfigError(f"{flag_of(foreign[0])} is a setting of --scheduler {of}, not of {name}"
                          f" ({entry.settings_text()})")
    return entry.resolve({key: given.get(key) for key in own}, epochs)


def migrated(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved plan's fields as SearchPlan takes them today: a plan saved before the registry had
    ASHA's settings as top-level fields and no scheduler."""
    if "scheduler" in saved:
        return saved
    old = {key: saved.pop(key) for key in ("grace_period", "reduction_factor") if key in saved}
    return {**saved, "scheduler": "asha", "scheduler_settings": old}
