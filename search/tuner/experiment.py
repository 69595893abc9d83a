"""Building (or restoring) the Ray Tune experiment of a search.

One trial = `trainable.tune.train_sed` with the fixed config of the search and the
parameters that Optuna suggests from the chosen spaces. OptunaSearch (seeded, the recipe
first) proposes, the plan's scheduler (search.stopping; its Ray scheduler from
search.tuner.schedulers: ASHA by default, with its rungs rebuilt on a resume) stops weak trials
on `training_iteration`, and every trial keeps its checkpoints so a killed driver or node loses
nothing. A resumed search runs the plan's trial count, which `--resume --num-samples` may raise.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs
from fsspec.implementations.local import LocalFileSystem
from pyarrow import PythonFile
from ray import tune
from ray.train._internal.storage import get_fs_and_path
from ray.tune.execution.tune_controller import TuneController
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from search.plan import (
    DefineByRun,
    SearchPlan,
    experiment_path,
    milestones,
    optuna_sampler,
    repeat_seeds,
    save_plan,
    trial_resources,
)
from search.tuner import console, review_logger, schedulers
from search.tuner.legacy import register_old_names
from search.tuner.repeats import SeedRepeats
from search.tuner.searcher import TruthfulOptunaSearch
from spaces import recipe_point, windows_of
from trainable.atomic import TEMP_SUFFIX
from trainable.reported import METRIC, MODE
from trainable.tune import train_sed

CHECKPOINTS_KEPT = 2  # per trial: the latest and the one before, in case a write was cut
NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
EXPERIMENT_STATE = TuneController.CKPT_FILE_TMPL.format("*")  # Ray's trials and settings: experiment_state-*.json


def build_tuner(plan: SearchPlan) -> tune.Tuner:
    """A new experiment."""
    epochs = plan.epochs
    proposer = TruthfulOptunaSearch(
        space=DefineByRun(plan.spaces, epochs, plan.teacher, windows_of(plan.baseline)),
        metric=METRIC, mode=MODE,  # a define-by-run searcher does not take them from TuneConfig
        sampler=optuna_sampler(plan),
        # The baseline (the recipe with the fixed values) runs first.
        points_to_evaluate=[recipe_point(list(plan.spaces), epochs, plan.teacher, plan.baseline)],
        max_iterations=epochs,
        study_name=plan.name,
    )
    searcher = SeedRepeats(proposer, plan.num_samples, repeat_seeds(plan), plan.confirm, epochs)
    return tune.Tuner(
        trainable(plan),
        param_space=trial_space(plan),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher,
                                    scheduler=schedulers.build(plan),
                                    num_samples=searcher.most_trials(), max_concurrent_trials=plan.max_concurrent,
                                    trial_dirname_creator=trial_dirname,
                                    # A new trial runs in the process of a finished one: it skips the
                                    # ~6 s a fresh process spends importing torch and timm. train_sed
                                    # sets all its per-trial state (threads, seeds, trial folder) itself.
                                    # Ray saves the setting with the experiment, so a resume keeps it.
                                    reuse_actors=True),
        run_config=run_config(plan),
    )


def trial_space(plan: SearchPlan) -> dict:
    """The fixed config of every trial, with the scheduler's milestones among the epochs it
    checkpoints: a trial stopped or paused there resumes from (or ends with) that epoch's state."""
    rungs = set(milestones(plan)) | set(plan.trial_config({}).train.checkpoint_epochs)
    return {**plan.fixed, "train.checkpoint_epochs": sorted(rungs)}


def trial_dirname(trial) -> str:
    """Short trial directories (Ray's default spells out every config value)."""
    return f"trial_{trial.trial_id}"


def restore_tuner(plan: SearchPlan) -> tune.Tuner:
    """The interrupted experiment `plan.name`: finished trials stay, unfinished ones resume
    from their last checkpoints, the searcher goes on with its study up to the plan's trial
    count, and the scheduler knows the trials that reported before (search.tuner.remembering)."""
    # Ray's saved state names our classes by the module paths they had when it was saved.
    register_old_names()
    tuner = tune.Tuner.restore(experiment_path(plan), trainable(plan), resume_unfinished=True,
                               resume_errored=False, restart_errored=False,
                               storage_filesystem=experiment_filesystem(plan))
    local = tuner._local_tuner
    assert local is not None  # None only for a Tuner through Ray Client, which the driver does not use
    # Ray restores the callbacks and verbosity that were pickled with the experiment; run with today's.
    local.get_run_config().callbacks = logger_callbacks(plan)
    local.get_run_config().verbose = console.ray_verbosity()
    # Ray keeps the param space out of the experiment (only its keys). When the saved state
    # cannot be resumed (none yet: the driver was killed before its first save), Ray starts
    # the experiment over with the param space given here; without it every new trial would
    # get Optuna's suggestions alone, no data_dir. Set after restore(), not through it: that
    # insists on the experiment's own keys, and older experiments lack train.checkpoint_epochs.
    local.param_space = trial_space(plan)
    continue_search(local._tune_config, plan)
    save_plan(plan)  # its trial count may have grown (--resume --num-samples)
    return tuner


def continue_search(config: tune.TuneConfig, plan: SearchPlan) -> None:
    """Set a restored experiment's searcher and scheduler up to go on with the plan.

    Ray restores the search generator's own trial count (search_gen_state-*.json), not the
    Tuner's num_samples (tuner.pkl), so a search extended with --resume --num-samples would stop
    at its old count: PlannedSearch holds the plan's. The searcher in tuner.pkl is the one Ray
    restores the study into (its state file), so the study goes on. A fresh scheduler of the
    plan's replaces the pickled one (Ray saves no scheduler state; RememberingASHA rebuilds its
    rungs from the trials' results), also the stock ASHAScheduler of experiments from before it."""
    # tuner.pkl holds the searcher that build_tuner gave (SeedRepeats; a TruthfulOptunaSearch in an
    # experiment from before it): Ray writes it for a new Tuner only.
    assert isinstance(config.search_alg, Searcher)
    if isinstance(config.search_alg, SeedRepeats):
        config.search_alg.proposals = plan.num_samples
    bound = most_trials(config.search_alg, plan.num_samples)
    config.search_alg = PlannedSearch(limited(config.search_alg, plan.max_concurrent), bound,
                                      where=(experiment_filesystem(plan), plan.storage, plan.name))
    # Ray applies max_concurrent_trials to a Searcher only (warning otherwise): applied above.
    config.max_concurrent_trials = None
    config.num_samples = bound
    config.scheduler = schedulers.build(plan)


def limited(searcher: Searcher, max_concurrent: int | None) -> Searcher:
    """The searcher as Ray wraps it for max_concurrent_trials, so its saved state (the
    ConcurrencyLimiter's, by class name) is restored into the same wrapper."""
    return searcher if not max_concurrent else ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


class PlannedSearch(SearchGenerator):
    """Ray's SearchGenerator that creates at most `num_samples` trials in all, also when its state
    is restored from an experiment started with fewer (Ray's would keep the saved count), and
    when Ray starts an unsaved experiment over (its Tuner.restore passes no num_samples, so
    Ray's would create one trial)."""

    def __init__(self, searcher: Searcher, num_samples: int,
                 where: tuple[pyarrow.fs.FileSystem | None, str, str] | None = None):
        super().__init__(searcher)
        self.num_samples = num_samples
        self.where = where  # the experiment's file system, storage and name now: it may have moved

    def add_configurations(self, experiments) -> None:
        super().add_configurations(experiments)
        self._total_samples = self.num_samples

    def set_state(self, state: dict) -> None:
        # Called once the searchers' own states are restored: SeedRepeats knows its rounds.
        super().set_state(state)
        self._move_experiment_here()
        self._total_samples = most_trials(self.searcher, self.num_samples)
        # The searcher says again whether it is done (search.tuner.repeats): a search that ended
        # and is now extended with --resume --num-samples is not.
        self._finished = False


    def _move_experiment_here(self) -> None:
        """Make new trials in the experiment's folder of today. Ray restores the experiment this
        generator makes every new trial from with the storage it had when saved: for an
        experiment moved since (another folder, another bucket) Ray rewrites the restored trials'
        storage (TuneController._restore_trials) but not this one's, and each new trial then
        failed to set up its storage at the old place."""
        if self.where is None or self._experiment is None:
            return
        filesystem, storage, name = self.where
        here = copy.copy(self._experiment.storage)
        here.storage_filesystem, here.storage_fs_path = get_fs_and_path(storage, filesystem)
        here.storage_fs_path = Path(here.storage_fs_path).as_posix()  # as StorageContext keeps it
        here.experiment_dir_name = name
        self._experiment.storage = self._experiment.spec["storage"] = here


def most_trials(searcher: Searcher, planned: int) -> int:
    """The trial count of a restored search: SeedRepeats' own bound (an extended search may
    confirm more configurations than its plan's first round did), else the plan's."""
    while not isinstance(searcher, SeedRepeats) and hasattr(searcher, "searcher"):
        searcher = searcher.searcher  # through Ray's ConcurrencyLimiter
    return searcher.most_trials() if isinstance(searcher, SeedRepeats) else planned


def trainable(plan: SearchPlan):
    return tune.with_resources(train_sed, trial_resources(plan))


def logger_callbacks(plan: SearchPlan) -> list:
    """Ray's CSV and JSON loggers (the results Ray reads back) and our TensorBoard logger (which
    words a stopped trial's status as the plan's scheduler does), named because `fit` switches
    Ray's automatic loggers off; and the console's lines (search.tuner.console)."""
    return [CSVLoggerCallback(), JsonLoggerCallback(), review_logger.ReviewLogger(plan.scheduler),
            console.Console(plan)]


def fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """Run the experiment without Ray's automatic loggers: Ray would add its own TensorBoard
    logger beside ours (every value again under ray/tune/, and a start-up line sending users
    to a driver-artifacts directory). Ray reads the switch from the environment when the run
    starts; it is set for the run only, so a Tuner of the caller's own keeps its loggers."""
    before = os.environ.get(NO_AUTO_LOGGERS)
    os.environ[NO_AUTO_LOGGERS] = "1"
    try:
        return tuner.fit()
    finally:
        if before is None:
            del os.environ[NO_AUTO_LOGGERS]
        else:
            os.environ[NO_AUTO_LOGGERS] = before


def run_config(plan: SearchPlan) -> tune.RunConfig:
    return tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage,
        storage_filesystem=experiment_filesystem(plan),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=logger_callbacks(plan),
        verbose=console.ray_verbosity(),  # Ray's boxes and tables: --verbose only
    )


def can_resume(plan: SearchPlan) -> bool:
    return tune.Tuner.can_restore(experiment_path(plan), storage_filesystem=experiment_filesystem(plan))


def experiment_filesystem(plan: SearchPlan) -> pyarrow.fs.FileSystem | None:
    """The file system Ray writes the experiment with: WholeFiles for a local path; Ray's own for
    a URI (an object store, s3://..., shows an object only once its upload is complete)."""
    return None if "://" in plan.storage else pyarrow.fs.PyFileSystem(WholeFiles())


class WholeFiles(pyarrow.fs.FSSpecHandler):
    """The local file system, except that a file is written under a temporary name and renamed
    into place once complete: whoever reads it finds the old file or the new one, never a part.

    After every step Ray saves the experiment's state (trials, search generator, searcher) in a
    staging folder and copies that into the experiment directory in the background, and a
    resume reads the copies. Ray's copy wrote each file in place, so a driver killed during one
    left a truncated file; and Ray rewrites experiment_state-*.json in place, so a copy still
    running at the next step read a part of it. Either way (about 2% of a search's time, in all)
    the resume could not read the state, and Ray started the experiment over without its trials.
    """

    def __init__(self):
        super().__init__(LocalFileSystem())

    def open_output_stream(self, path, metadata):
        name = os.path.basename(path)
        whole = (JsonRenamedOnClose if fnmatch.fnmatch(name, EXPERIMENT_STATE)
                 else PickleRenamedOnClose if name.endswith(".pkl") else RenamedOnClose)
        return PythonFile(whole(path), mode="w")


class RenamedOnClose:
    """A file written as a hidden file beside `path` and renamed to `path` by close(). Dropped
    without close() (a copy that failed or was killed), it never replaces `path`."""

    def __init__(self, path: str):
        self.path = path
        folder, name = os.path.split(path)
        self.partial = open(os.path.join(folder, f".{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"), "wb")

    @property
    def closed(self) -> bool:
        return self.partial.closed

    def write(self, data) -> int:
        with self.discarded_on_error():
            return self.partial.write(data)

    def flush(self) -> None:
        with self.discarded_on_error():
            self.partial.flush()

    def close(self) -> None:
        if not self.partial.closed:
            with self.discarded_on_error():
                self.partial.close()
            if self.complete():
                os.replace(self.partial.name, self.path)
            else:
                os.remove(self.partial.name)

    @contextlib.contextmanager
    def discarded_on_error(self) -> Iterator[None]:
        """Drop the partial file when an operation on it fails (a full disk: Ray retries its
        copies, and each failed one left an empty partial file behind); `path` stays as it was."""
        try:
            yield
        except OSError:
            with contextlib.suppress(OSError):  # closing flushes what is buffered, onto the full disk again
                self.partial.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.partial.name)
            raise

    def complete(self) -> bool:
        return True


class PickleRenamedOnClose(RenamedOnClose):
    """RenamedOnClose for a pickle (tuner.pkl, the searcher's state): Ray writes one inside a
    `with` block, whose exit closes the file even when Ctrl-C came before the write, which left
    a 0-byte tuner.pkl that no resume could read. A whole pickle ends with its STOP opcode."""

    def complete(self) -> bool:
        if os.path.getsize(self.partial.name) == 0:
            return False
        with open(self.partial.name, "rb") as written:
            written.seek(-1, os.SEEK_END)
            return written.read(1) == pickle.STOP


class JsonRenamedOnClose(RenamedOnClose):
    """RenamedOnClose for a JSON document copied from a file that its writer may have been
    rewriting: a part of one is never valid JSON, and the last whole one stays."""

    def complete(self) -> bool:
        try:
            with open(self.partial.name, "rb") as written:
                json.load(written)
        except ValueError:
            return False
        return True
