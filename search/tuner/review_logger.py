"""TensorBoard as a review tool: one run per trial with clear scalar names, every trial in the
HParams table from its first epoch, and one chart that overlays every trial's CV.

Tags (step = epoch): `cv/lwlrap` (the epoch's CV), `cv/best`, `cv/score`, `cv/...` (the
other CVs, the fold std), `fold/<k>` (a fold's LWLRAP; `fold/<k>/...` its other values),
`loss/<term>`, `lr`, `throughput` (training samples/s), `time/epoch_s`, `status/epochs`.
Ray's bookkeeping (done, iterations_since_restore, timestamps, ...) is not written.

Seed noise (search.results.seeds): every trial's HParams row holds `train.seed` and `seed_group`
(the id of its configuration's first trial), so the table groups and filters the seeds of one
configuration; once the search has reported, `write_seed_metrics` adds each trial's group
statistics, `seed/mean`, `seed/std`, `seed/margin_sd` (the leaderboard's columns), as metric
columns of the table.

TensorBoard keeps the first HParams record of a run and ignores later ones, so a trial's
parameters are written once, at its first epoch; its status lives in the `status` text
(running / stopped by ASHA at epoch n, in the scheduler's words / completed / errored: ...), in the HParams column
`status/epochs`, and at the end in the HParams session status (success, or failure when it
errored) that the HParams tab filters on.

This replaces Ray's TBXLoggerCallback rather than extending it: Ray prints a start-up line
sending users to TensorBoard on a driver-artifacts directory whenever that class is among the
callbacks, and it writes every reported value under `ray/tune/`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, BinaryIO, cast

import pandas as pd
from ray.tune.logger import LoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.utils import flatten_dict
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import scalar
from torch.utils.tensorboard.writer import FileWriter

from search.results.leaderboard import last_line, trial_status
from search.results.seeds import MARGIN_SD, SEED_MEAN, SEED_STD
from search.results.trials import ENSEMBLE
from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS
from trainable import reported
from trainable.atomic import TEMP_SUFFIX, atomic_write
from trainable.config import SEED_GROUP, resolve

logger = logging.getLogger(__name__)

RAY_TAGS = {"time_this_iter_s": "time/epoch_s"}  # what Ray adds to a result that is worth a chart
# Ray's bookkeeping and what the step already says.
SKIPPED = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", reported.EPOCH}
EPOCHS_TAG, STATUS_TAG = "status/epochs", "status"
# A configuration's seed statistics: tag -> the leaderboard's column (search.results.seeds).
SEED_TAGS = {"seed/mean": SEED_MEAN, "seed/std": SEED_STD, "seed/margin_sd": MARGIN_SD}
# The HParams table's metric columns. TensorBoard takes them from the experiment record that
# write_hparams writes at a trial's first epoch, so the seed statistics are declared there too,
# long before write_seed_metrics gives them values.
HPARAMS_METRICS = (*(reported.tag(name) for name in (reported.SCORE, reported.BEST_CV, reported.CV)), EPOCHS_TAG,
                   *SEED_TAGS)
# A trial's own events file of its seed statistics (`events.out.tfevents.<time>.seed_metrics`).
SEED_SUFFIX = ".seed_metrics"
LAYOUT_SUFFIX = ".layout"  # the experiment directory's own event file: the custom-scalars layout
LAYOUT = {"Every trial": {f"{tag} of every trial": ["Multiline", [f"^{tag}$"]]
                          for tag in (reported.tag(reported.CV), reported.tag(reported.BEST_CV))}}


def tag(key: str) -> str | None:
    """The TensorBoard tag of a reported metric (trainable.reported.tag), or None for Ray's bookkeeping."""
    if key in RAY_TAGS:
        return RAY_TAGS[key]
    return None if key in SKIPPED else reported.tag(key)


class ReviewLogger(LoggerCallback):
    """Ray Tune callback writing each trial's TensorBoard run into its trial directory."""

    _SAVED_FILE_TEMPLATES = ["events.out.tfevents.*"]  # what Ray keeps with a trial's files

    def __init__(self, scheduler: str = DEFAULT_SCHEDULER):
        self._scheduler = scheduler  # the search's (a key of SCHEDULERS): how a stopped trial's status reads
        self._writers: dict[Any, SummaryWriter] = {}
        self._last: dict[Any, dict] = {}

    def log_trial_start(self, trial) -> None:
        if trial in self._writers:
            self._writers.pop(trial).close()
        trial.init_local_path()
        write_layout(Path(trial.local_experiment_path))
        self._writers[trial] = SummaryWriter(trial.local_path, flush_secs=30)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self._writers:
            self.log_trial_start(trial)
        writer, step = self._writers[trial], int(result.get(reported.ITERATION, iteration))
        try:
            if trial not in self._last:  # the first result since this writer started
                write_hparams(writer, hparams(trial), trial.trial_id)
            values = {key: value for key, value in result.items() if tag(key)}  # Ray adds the config, ...
            for key, value in flatten_dict(values, delimiter="/").items():
                name = tag(key)
                if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(name, value, global_step=step)
            writer.add_scalar(EPOCHS_TAG, step, global_step=step)
            writer.add_text(STATUS_TAG, f"running: epoch {step} of {_budget(trial)}", global_step=step)
            writer.flush()
        except Exception:  # runs in Tune's controller: a logging failure must not end the search
            logger.exception("could not write the TensorBoard record of trial %s", trial)
        self._last[trial] = result

    def log_trial_end(self, trial, failed: bool = False) -> None:
        writer, result = self._writers.pop(trial, None), self._last.pop(trial, None)
        if writer is None:
            return
        try:
            if result is not None:
                error = (last_line(trial.get_error() or RuntimeError("see the trial's error.txt"))
                         if failed else None)
                status = trial_status(int(result.get(reported.ITERATION, 0)), _budget(trial), finished=True,
                                      error=error, scheduler=SCHEDULERS[self._scheduler])
                writer.add_text(STATUS_TAG, status, global_step=int(result.get(reported.ITERATION, 0)))
                events(writer).add_summary(session_end(failed))
        except Exception:
            logger.exception("could not write the end of trial %s to TensorBoard", trial)
        writer.close()


class HParamsLogger(ReviewLogger):
    """What experiments started before ReviewLogger pickled; search.tuner.experiment.restore_tuner
    replaces it with today's loggers once unpickled."""

    def __setstate__(self, state: dict) -> None:
        ReviewLogger.__init__(self)


def _budget(trial) -> int:
    return resolve(trial.config).train.epochs


def hparams(trial) -> dict[str, Any]:
    """A trial's HParams values: its recipe (a row without a space has one too), its searched
    parameters, and its seed and seed group (the columns that gather a configuration's seeds)."""
    config = resolve(trial.config)
    return {"recipe": config.recipe, **trial.evaluated_params, "train.seed": config.train.seed,
            SEED_GROUP: str(trial.config.get(SEED_GROUP, trial.trial_id))}


def write_seed_metrics(experiment_dir: Path, board: pd.DataFrame) -> None:
    """Each trial's seed statistics (its leaderboard row's SEED_TAGS columns; NaN ones left out)
    into its trial directory, as metric values of its HParams row.

    A report rewrites them (a resumed search reports again): each call's file replaces the
    previous one, so TensorBoard never shows two values. Its name carries the time of writing,
    so that a TensorBoard already reading the trial reads it after the trial's own files, and
    the newest value is the one it shows.
    """
    for row in board[board.trial != ENSEMBLE].to_dict("records"):
        directory = experiment_dir / f"trial_{row['trial']}"
        if directory.is_dir():  # not on this machine (a search on remote storage), or never started
            write_trial_seed_metrics(directory, row)


def write_trial_seed_metrics(directory: Path, row: dict[str, Any]) -> None:
    """One trial's file of write_seed_metrics (`row`: its leaderboard row)."""
    values = {name: _number(row.get(column)) for name, column in SEED_TAGS.items()}
    values = {name: value for name, value in values.items() if math.isfinite(value)}
    epochs = _number(row.get("epochs"))
    path = directory / f"events.out.tfevents.{int(time.time()):010d}{SEED_SUFFIX}"
    # What a write killed midway left: its name holds "tfevents", so TensorBoard would read its stale values.
    for partial in directory.glob(f".events.out.tfevents.*{SEED_SUFFIX}.*{TEMP_SUFFIX}"):
        partial.unlink(missing_ok=True)
    if values:
        # At the trial's last epoch: the statistics are of its whole training.
        atomic_write(path, lambda handle: _write_scalars(handle, values, int(epochs) if math.isfinite(epochs) else 0))
    for older in directory.glob(f"events.out.tfevents.*{SEED_SUFFIX}"):
        if older != path:
            older.unlink(missing_ok=True)


def _write_scalars(handle: BinaryIO, values: dict[str, float], step: int) -> None:
    """An events file of scalars, as a SummaryWriter writes it (which chooses its own file name)."""
    records, now = RecordWriter(handle), time.time()
    records.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    for name, value in values.items():
        records.write(Event(wall_time=now, step=step, summary=scalar(name, value)).SerializeToString())


def write_hparams(writer: SummaryWriter, params: dict[str, Any], trial_id: str) -> None:
    """The HParams table's columns (the parameters, HPARAMS_METRICS) and this run's values
    (its own row even when another trial drew the same values)."""
    values = {key: _hparam(value) for key, value in flatten_dict(params, delimiter=".").items() if value is not None}
    columns = [summary_v2.HParam(name) for name in values]
    events(writer).add_summary(summary_v2.hparams_config_pb(
        columns, [summary_v2.Metric(name) for name in HPARAMS_METRICS]))
    events(writer).add_summary(summary_v2.hparams_pb(values, trial_id=trial_id, start_time_secs=time.time()))


def events(writer: SummaryWriter) -> FileWriter:
    """The writer's FileWriter (torch types SummaryWriter.file_writer as None: its __init__
    assigns None before the FileWriter)."""
    return cast(FileWriter, writer.file_writer)


def session_end(failed: bool) -> Summary:
    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                        metadata=metadata.create_summary_metadata(content))])


def write_layout(experiment: Path) -> None:
    """The custom-scalars layout, once per experiment (in its own run, the directory itself)."""
    if any(experiment.glob(f"events.out.tfevents.*{LAYOUT_SUFFIX}")):
        return
    with SummaryWriter(str(experiment), filename_suffix=LAYOUT_SUFFIX) as writer:
        writer.add_custom_scalars(LAYOUT)


def _number(value: Any) -> float:
    """A leaderboard cell as a float; NaN when it is empty or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _hparam(value: Any) -> Any:
    """Numbers, strings and bools as they are; lists (the crop space's offsets) as text,
    which TensorBoard would otherwise leave empty."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value if isinstance(value, (bool, int, float, str)) else str(value)
