"""The review logger's HParams records and seed statistics, read back by TensorBoard's own
reader and its HParams plugin (the data its table shows), without starting Ray: the logger is
driven as Tune drives it, by its callbacks, for stand-in trials."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups, plugin_data_pb2

from search.tuner import review_logger
from search.tuner.review_logger import SEED_TAGS, ReviewLogger, write_seed_metrics
from trainable import reported
from trainable.config import SEED_GROUP

EPOCHS = 2
# The recipe point under two seeds (its repeat names the first trial as its group), and one
# configuration trained once (no seed_group in its config: its own group).
TRIALS = {"aa_00000": {"train.seed": 416}, "bb_00001": {"train.seed": 417, SEED_GROUP: "aa_00000"},
          "cc_00002": {"loss.w_max": 0.3}}


class StandInTrial:
    """What ReviewLogger reads of a Ray Tune trial."""

    def __init__(self, experiment: Path, trial_id: str, config: dict):
        self.trial_id, self.evaluated_params = trial_id, {"loss.w_max": config.get("loss.w_max", 1.0)}
        self.config = {"recipe": "v1_7", "train.epochs": EPOCHS, "data_dir": str(experiment), **config}
        self.local_experiment_path, self.local_path = str(experiment), str(experiment / f"trial_{trial_id}")

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


@pytest.fixture
def experiment(tmp_path) -> Path:
    """An experiment directory whose three trials each trained EPOCHS epochs under the logger."""
    logger = ReviewLogger()
    for trial_id, config in TRIALS.items():
        trial = StandInTrial(tmp_path, trial_id, config)
        logger.log_trial_start(trial)
        for epoch in range(1, EPOCHS + 1):
            logger.log_trial_result(epoch, trial, {reported.ITERATION: epoch, reported.CV: 0.5 + 0.1 * epoch})
        logger.log_trial_end(trial)
    return tmp_path


def board(mean: float, std: float, margin: float) -> pd.DataFrame:
    """A leaderboard's seed columns: the recipe point's group of two seeds, the third trial alone
    (no seed std, so no margin), and the ensemble's row, which has no trial directory."""
    return pd.DataFrame({
        "trial": ["aa_00000", "bb_00001", "cc_00002", "ensemble"], "epochs": [EPOCHS, EPOCHS, EPOCHS, math.nan],
        "seed_group": ["aa_00000", "aa_00000", "cc_00002", math.nan], "seeds": [2, 2, 1, math.nan],
        "seed_mean": [mean, mean, 0.8, math.nan], "seed_std": [std, std, math.nan, math.nan],
        "margin_sd": [margin, margin, math.nan, math.nan]})


def run_events(experiment: Path, trial_id: str) -> EventAccumulator:
    events = EventAccumulator(str(experiment / f"trial_{trial_id}"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def session_start(events: EventAccumulator) -> plugin_data_pb2.SessionStartInfo:
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.WhichOneof("data") == "session_start_info":
            return data.session_start_info
    raise AssertionError("no HParams record")


def hparams_table(experiment: Path) -> dict[str, dict[str, float]]:
    """TensorBoard's HParams table as its page asks for it: trial id -> metric column -> value."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(experiment))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(experiment))
    tb_context = base_plugin.TBContext(logdir=str(experiment), multiplexer=multiplexer, data_provider=provider)
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100,
                                               allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS])
    groups = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb_context), "",
                                         request).run().session_groups
    return {group.name: {value.name.tag: value.value for value in group.metric_values} for group in groups}


def test_every_trial_s_hparams_hold_its_seed_and_seed_group(experiment):
    for trial_id, expected in (("aa_00000", (416, "aa_00000")), ("bb_00001", (417, "aa_00000")),
                               ("cc_00002", (416, "cc_00002"))):  # v1_7's seed; no seed_group: its own id
        start = session_start(run_events(experiment, trial_id))
        assert (start.hparams["train.seed"].number_value, start.hparams["seed_group"].string_value) == expected
        assert start.hparams["loss.w_max"].number_value == TRIALS[trial_id].get("loss.w_max", 1.0)


def test_seed_statistics_become_metric_columns_and_a_second_report_replaces_them(experiment, monkeypatch):
    table = hparams_table(experiment)
    assert set(table) == set(TRIALS)  # a row each, named by its trial id
    assert not set(SEED_TAGS) & set(table["aa_00000"])  # declared, not known before the report
    assert table["aa_00000"]["cv/lwlrap"] == pytest.approx(0.7)

    write_seed_metrics(experiment, board(0.85, 0.04, 0.0))
    table = hparams_table(experiment)
    for trial_id in ("aa_00000", "bb_00001"):
        assert {tag: table[trial_id][tag] for tag in SEED_TAGS} == pytest.approx(
            {"seed/mean": 0.85, "seed/std": 0.04, "seed/margin_sd": 0.0})
    assert {tag: table["cc_00002"].get(tag) for tag in SEED_TAGS} == pytest.approx(
        {"seed/mean": 0.8, "seed/std": None, "seed/margin_sd": None})  # NaN: no value written
    assert table["aa_00000"]["cv/lwlrap"] == pytest.approx(0.7)  # the trial's own records stay
    assert not (experiment / "trial_ensemble").exists()

    # A resumed search reports again, a minute later: its file (named by the time) replaces the first.
    later = time.time() + 60
    monkeypatch.setattr(review_logger, "time", SimpleNamespace(time=lambda: later))
    write_seed_metrics(experiment, board(0.86, 0.05, 1.5))
    for trial_id in ("aa_00000", "bb_00001"):
        events = run_events(experiment, trial_id)
        for tag, expected in (("seed/mean", 0.86), ("seed/std", 0.05), ("seed/margin_sd", 1.5)):
            [event] = events.Scalars(tag)  # one value: the first report's is gone
            assert (event.value, event.step) == (pytest.approx(expected), EPOCHS)
    assert hparams_table(experiment)["aa_00000"]["seed/margin_sd"] == pytest.approx(1.5)
    assert not list(experiment.rglob(".*.partial"))  # nothing half-written left behind
