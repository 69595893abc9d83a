"""ASHA that remembers its rungs across a resume; HyperBand that forgets finished trials on one.

Ray does not save a scheduler's state with the experiment (ray#30838). When an experiment is
restored, Ray's TuneController adds every saved trial to the scheduler again (on_trial_add:
finished trials as TERMINATED, errored ones as ERROR, unfinished ones as PENDING), but never
passes their results on, so the stock ASHA starts with empty rungs: a trial that reaches a rung
after the resume is compared only with the trials that reached it since.

RememberingASHA rebuilds the rungs there: when a trial that already has results is added for the
first time, it replays the results the trial recorded (its result.json, read through the trial's
storage file system, so an s3:// experiment works too) into the trial's bracket, as ASHA recorded
them when they came in. An unfinished trial goes on from its last checkpoint and reports the
epochs after it again, so only its results up to that checkpoint are replayed (none without
one: it starts over), and ASHA decides on the repeated epochs as it would have.

Stock HyperBand after a resume would put every restored trial back into a bracket with no result,
finished ones included, and a bracket waits (its other trials paused) until all its live trials
reach the milestone: a finished trial never does. RememberingHyperBand takes a restored finished
or errored trial out of its bracket at once. Its halving decisions are not replayed (a bracket's
state is its sequence of halvings, not a set of results): after a resume, the unfinished trials
are compared with the trials of their bracket from then on (search.stopping says so).

Neither stops a trial of a seed group (search.tuner.repeats: the recipe point and the seeds of a
configuration, trained to the end to measure the noise). ASHA keeps the recipe point's own trial
in its rungs (the proposals are compared with it, as without repeats) and leaves the repeats out
(one configuration would count several times); HyperBand runs them all outside its brackets,
first come first served, since a bracket pauses its trials and halves them.
"""

from __future__ import annotations

import json
import logging
import math

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.experiment import Trial
from ray.tune.result import DONE
from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler, TrialScheduler
from ray.tune.utils import flatten_dict

from trainable.config import SEED_GROUP

logger = logging.getLogger(__name__)


class RememberingASHA(ASHAScheduler):
    """ASHAScheduler whose rungs hold the results of the trials restored with the experiment."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._added: set[str] = set()  # trial ids added before (first_seen_restored)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if first_seen_restored(self._added, trial, self._time_attr) and not is_repeat(trial):
            self._replay(trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if is_repeat(trial):
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if seed_group(trial) else action  # the recipe point: compared, never stopped

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        if is_repeat(trial):
            self._trial_info.pop(trial.trial_id, None)
        else:
            super().on_trial_complete(tune_controller, trial, result)

    def _replay(self, trial: Trial) -> None:
        """Record the trial's saved results in its bracket; ASHA's decisions on them were
        taken before the resume, so they are not taken again."""
        bracket = self._trial_info[trial.trial_id]
        until = self._resumes_after(trial)
        for result in recorded_results(trial):
            time, metric = result.get(self._time_attr), result.get(self._metric)
            if time is not None and metric is not None and time <= until:
                bracket.on_result(trial, time, self._metric_op * metric)

    def _resumes_after(self, trial: Trial) -> float:
        """The time (time_attr) after which the trial reports again: never for a finished or
        errored trial, its last checkpoint's for an unfinished one (0 without one)."""
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return math.inf
        checkpointed = trial.latest_checkpoint_result
        return checkpointed.metrics.get(self._time_attr, 0) if checkpointed else 0


def seed_group(trial: Trial) -> str | None:
    """The trial's seed group (search.tuner.repeats; no scheduler stops such a trial), or None."""
    return (trial.config or {}).get(SEED_GROUP)


def is_repeat(trial: Trial) -> bool:
    """Whether the trial repeats another's configuration under another seed."""
    group = seed_group(trial)
    return group is not None and group != trial.trial_id


def first_seen_restored(added: set[str], trial: Trial, time_attr: str) -> bool:
    """Whether a trial added to a scheduler for the first time comes from the saved experiment:
    it reported before it was ever added (run_metadata: Trial.last_result makes up a result for a
    trial that has none). `added` remembers the trials seen: a failed trial is added again."""
    restored = trial.trial_id not in added and time_attr in trial.run_metadata.last_result
    added.add(trial.trial_id)
    return restored


class RememberingHyperBand(HyperBandScheduler):
    """HyperBandScheduler whose brackets do not wait for the finished trials restored with the experiment."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._added: set[str] = set()

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if seed_group(trial):
            return  # run first come first served, outside the brackets
        super().on_trial_add(tune_controller, trial)
        restored = first_seen_restored(self._added, trial, self._time_attr)
        if restored and trial.status in (Trial.TERMINATED, Trial.ERROR):
            bracket, _ = self._trial_info[trial]
            bracket.cleanup_trial(trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if seed_group(trial):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        chosen = super().choose_trial_to_run(tune_controller)
        if chosen is not None:
            return chosen
        return next((trial for trial in tune_controller.get_trials()
                     if trial.status == Trial.PENDING and seed_group(trial)), None)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:  # also on its complete and error
        if seed_group(trial):
            return
        if trial.status == Trial.PAUSED:
            # HyperBand stops a paused trial itself (halved out, or its bracket finished), and Ray
            # then records no last result done: mark it done, as Ray marks a trial stopped at a
            # result, so the reports say it ended there rather than that it was interrupted.
            trial.run_metadata.last_result = {**trial.run_metadata.last_result, DONE: True}
        super().on_trial_remove(tune_controller, trial)


def recorded_results(trial: Trial) -> list[dict]:
    """The results the driver recorded for the trial (flattened, as schedulers see them), from
    the result.json in its directory on the experiment's storage; [] when there is none or it
    cannot be read (the search goes on, comparing with fewer trials, rather than fail)."""
    storage = trial.storage
    assert storage is not None  # the driver creates every trial with its storage context
    path = f"{storage.trial_fs_path}/{EXPR_RESULT_FILE}"
    try:
        with storage.storage_filesystem.open_input_stream(path) as stream:
            text = stream.readall().decode()
    except FileNotFoundError:
        return []
    except OSError as error:
        logger.warning("ASHA cannot read the results of trial %s (%s): %s", trial.trial_id, path, error)
        return []
    results = []
    for line in text.splitlines():
        try:
            results.append(flatten_dict(json.loads(line)))
        except ValueError:  # a last line cut by a killed copy: the lines before it are whole
            continue
    return results
