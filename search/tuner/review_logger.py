"""TensorBoard as a review tool: one run per trial with clear scalar names, every trial in the
HParams table from its first epoch, and one chart that overlays every trial's CV.

Tags (step = epoch): `cv/lwlrap` (the epoch's CV), `cv/best`, `cv/score`, `cv/...` (the
other CVs, the fold std), `fold/<k>` (a fold's LWLRAP; `fold/<k>/...` its other values),
`loss/<term>`, `lr`, `throughput` (training samples/s), `time/epoch_s`, `status/epochs`.
Ray's bookkeeping (done, iterations_since_restore, timestamps, ...) is not written.

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
import time
from pathlib import Path
from typing import Any, cast

from ray.tune.logger import LoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.utils import flatten_dict
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter

from search.results.leaderboard import last_line, trial_status
from search.stopping import DEFAULT_SCHEDULER, SCHEDULERS
from trainable import reported
from trainable.config import resolve

logger = logging.getLogger(__name__)

RAY_TAGS = {"time_this_iter_s": "time/epoch_s"}  # what Ray adds to a result that is worth a chart
# Ray's bookkeeping and what the step already says.
SKIPPED = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", reported.EPOCH}
EPOCHS_TAG, STATUS_TAG = "status/epochs", "status"
# The HParams table's metric columns.
HPARAMS_METRICS = (*(reported.tag(name) for name in (reported.SCORE, reported.BEST_CV, reported.CV)), EPOCHS_TAG)
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
                params = {"recipe": resolve(trial.config).recipe, **trial.evaluated_params}  # a row without a space too
                write_hparams(writer, params, trial.trial_id)
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


def _hparam(value: Any) -> Any:
    """Numbers, strings and bools as they are; lists (the crop space's offsets) as text,
    which TensorBoard would otherwise leave empty."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value if isinstance(value, (bool, int, float, str)) else str(value)
