"""search/run.py end to end on local Ray: the real CLI in a subprocess, its reports, the
Optuna study's truth about stopped trials, TensorBoard files, and resuming a killed driver."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from search.results.exports import submit_command
from search.stopping import SCHEDULERS
from search.tuner.searcher import TruthfulOptunaSearch
from spaces import recipe_point
from tests.helpers import ENV, REPO, colours, screenshot, tiny_search
from trainable.config import TrialConfig, from_dict

pytestmark = pytest.mark.ray

SEARCHED = ["loss.w_max", "loss.w_pseudo", "loss.w_frame"]


def hparams_records(events: EventAccumulator) -> dict:
    """A run's HParams records by kind (experiment, session_start_info, session_end_info)."""
    records = {}
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        records[data.WhichOneof("data")] = getattr(data, data.WhichOneof("data"))
    return records


def test_a_stopped_trial_is_pruned_in_optuna_with_its_intermediate_values():
    searcher = TruthfulOptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)}, metric="score",
                                    mode="max", max_iterations=5)
    searcher.suggest("stopped"), searcher.suggest("finished")
    for step in (1, 2):
        searcher.on_trial_result("stopped", {"score": 0.1 * step, "training_iteration": step})
    searcher.on_trial_complete("stopped", {"score": 0.3, "training_iteration": 3})  # ASHA stopped it at 3
    searcher.on_trial_complete("finished", {"score": 0.9, "training_iteration": 5})
    stopped, finished = searcher.study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})
    assert finished.state == optuna.trial.TrialState.COMPLETE and finished.value == 0.9


def test_a_search_leaves_a_leaderboard_a_study_a_config_and_tensorboard_files(cached_dir, tmp_path):
    done = subprocess.run(tiny_search(cached_dir, tmp_path, "e2e"), capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = tmp_path / "e2e"
    assert f"tensorboard --logdir {experiment}" in done.stdout

    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    assert len(board) == 4 and list(board["rank"]) == [1, 2, 3, 4]
    assert list(board.score) == sorted(board.score, reverse=True)
    assert {"cv_lwlrap", "cv_lwlrap_fold_best", "cv_lrap_reference", "best_epochs"} <= set(board.columns)
    assert (board.score == board.cv_lwlrap_fold_best).all()  # v1_7: each fold at its own best epoch
    assert set(SEARCHED) <= set(board.columns)
    assert (experiment / "leaderboard.md").read_text().count("\n| ") >= 5

    # Optuna is told the truth: a trial ASHA stopped is PRUNED with one value per epoch it ran.
    # Read with Optuna's storage API, as optuna-dashboard does.
    storage = optuna.storages.RDBStorage(f"sqlite:///{experiment / 'study.db'}")
    [summary] = storage.get_all_studies()
    assert summary.study_name == "e2e"
    trials = storage.get_all_trials(summary._study_id)
    assert len(trials) == 4 and trials[0].params == recipe_point(["loss_weights"], 3)  # the recipe runs first
    by_params = {tuple(round(t.params[k], 6) for k in SEARCHED): t for t in trials}
    for row in board.itertuples():
        trial = by_params[tuple(round(board.loc[row.Index, k], 6) for k in SEARCHED)]
        if row.status == "completed":
            assert trial.state == optuna.trial.TrialState.COMPLETE and row.epochs == 3
            assert trial.value == pytest.approx(row.score)  # Optuna is told the leaderboard's score
        else:
            assert row.status == SCHEDULERS["asha"].stopped(row.epochs) and row.epochs < 3
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert sorted(trial.intermediate_values) == list(range(1, row.epochs + 1))

    best = from_dict(TrialConfig, yaml.safe_load((experiment / "best_config.yaml").read_text()))
    assert best.loss.w_max == pytest.approx(board.loc[0, "loss.w_max"])

    # TensorBoard, read back with its own reader: clear tags, no Ray bookkeeping, every trial in
    # HParams with its searched values, its status in words, and one chart over all trials.
    assert "driver_artifacts" not in done.stdout and "To visualize your results" not in done.stdout
    for row in board.itertuples():
        events = EventAccumulator(str(experiment / f"trial_{row.trial}"), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        scalars = set(events.Tags()["scalars"])
        assert {"cv/lwlrap", "cv/best", "cv/score", "cv/lrap_reference", "fold/0", "fold/1", "loss/att",
                "loss/frame", "lr", "throughput", "status/epochs"} <= scalars
        assert not {tag for tag in scalars if tag.startswith(("ray/", "config/"))}
        assert not scalars & {"done", "iterations_since_restore", "time_total_s", "timestamp"}
        assert [e.step for e in events.Scalars("cv/lwlrap")] == list(range(1, row.epochs + 1))
        hparams = hparams_records(events)
        assert set(SEARCHED) <= set(hparams["session_start_info"].hparams)
        assert hparams["session_end_info"].status == api_pb2.STATUS_SUCCESS
        assert "cv/score" in {info.name.tag for info in hparams["experiment"].metric_infos}
        statuses = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("status/text_summary")]
        assert statuses[0] == "running: epoch 1 of 3" and statuses[-1] == row.status
    layout = EventAccumulator(str(experiment), size_guidance={"tensors": 0})
    layout.Reload()
    assert layout.Tags()["tensors"] == ["custom_scalars__config__"]

    # The search scores its top trials and the recipe point on the holdout itself (the data have
    # test_truth.csv), with the predictions beside: the summary says whether the best trial beats
    # the recipe point there, and whether the CV ranks trials as the holdout does.
    assert board[["holdout_public", "holdout_private"]].notna().all().all()  # 4 trials: all among the top 5
    assert board.recipe_point.sum() == 1
    recipe = board.trial[board.recipe_point].iloc[0]
    assert dict(board.loc[board.recipe_point, SEARCHED].iloc[0]) == pytest.approx(recipe_point(["loss_weights"], 3))
    for trial in board.trial:
        assert (experiment / "exports" / f"trial_{trial}" / "submission.csv").is_file()
    summary = done.stdout[done.stdout.index(" rank "):]
    assert summary.index("holdout_public") < summary.index("holdout: the best trial") < summary.index("CV vs holdout")
    best = board.trial[0]
    assert (f"holdout: the best trial {best} is the recipe point" if best == recipe
            else f"holdout: the best trial {best} ") in summary
    assert "CV vs holdout over 4 trials: Spearman" in summary
    text = (experiment / "leaderboard.md").read_text()
    assert "CV vs holdout" in text and text.count("| recipe point |") == 1

    # report.html: one page that needs no network, every figure drawn, the trial count said.
    page = (experiment / "report.html").read_text()
    assert f"report:      {experiment / 'report.html'}" in done.stdout
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page
    images = dict(re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page))
    assert set(images) == {"Optimisation history", "Learning curves", "Parallel coordinates", "Parameter importance",
                           "Per-fold spread of the top trials", "CV vs holdout"}  # CV vs LB: no score recorded yet
    for name, data in images.items():
        assert colours(imread(io.BytesIO(base64.b64decode(data)), format="png")) > 10, name
    stopped = int(board.status.str.startswith("stopped").sum())
    for caption in ("4 trials: each one's best cv_lwlrap", f"{stopped} stopped by ASHA", "4 trials: cv_lwlrap after",
                    "4 trials with a score", "all 4 trials reached at ASHA's first rung (epoch 1)",
                    "4 trials with a holdout score", "no LB score yet"):
        assert caption in html.unescape(page), caption
    shot = screenshot((experiment / "report.html").as_uri(), tmp_path / "report.png", height=2400)
    assert colours(shot) > 50  # a rendered page, not a blank one

    # The real leaderboard's scores, as `kaggle competitions submissions --csv` lists them, matched
    # by the description of export's submit command; the report gains the CV-vs-LB figure.
    submissions = tmp_path / "submissions.csv"
    lines = ["fileName,date,description,status,publicScore,privateScore"]
    for k, trial in enumerate(board.trial):
        description = submit_command(experiment, f"trial_{trial}", Path("x")).split(' -m "')[1].rstrip('"')
        lines.append(f"submission.csv,2026-12-01 10:0{k}:00,{description},complete,0.{80 + k},0.{70 + k}")
    submissions.write_text("\n".join(lines) + "\n")
    recorded = subprocess.run([sys.executable, str(REPO / "search/lb.py"), str(experiment), "--submissions",
                               str(submissions)], capture_output=True, text=True, timeout=120)
    assert recorded.returncode == 0, recorded.stderr
    assert "CV vs LB over 4 trials: Spearman" in recorded.stdout
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    assert list(board.lb_public) == pytest.approx([0.80 + k / 100 for k in range(4)])
    assert "CV vs LB over 4 trials" in (experiment / "leaderboard.md").read_text()
    assert '<img alt="CV vs LB"' in (experiment / "report.html").read_text()

    # The ensemble of the trials (all exported already): its files, its row and its figure.
    blended = subprocess.run([sys.executable, str(REPO / "search/ensemble.py"), str(experiment)], capture_output=True,
                             text=True, timeout=120)
    assert blended.returncode == 0, blended.stderr[-3000:]
    assert "exporting" not in blended.stdout  # the search's own exports are of the trials' newest checkpoints
    folder = experiment / "exports" / "ensemble"
    record = json.loads((folder / "weights.json").read_text())
    assert {"oof.csv", "submission.csv", "windows.csv", "holdout.json"} <= {p.name for p in folder.iterdir()}
    assert len(record["candidates"]) == 4 and record["weights"]
    assert f"nested oof lwlrap (each fold's recordings blended by the weights chosen on the other folds): the" \
           f" ensemble {record['nested_oof_lwlrap']:.4f}" in blended.stdout
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    size = len(record["weights"])  # 1 when no trial adds to the best one
    assert list(board.status).count(f"ensemble of {size} trial{'s' if size > 1 else ''}") == 1
    assert '<img alt="Ensemble selection"' in (experiment / "report.html").read_text()

    # Stages 2 and 3 of the reference (no space: their recipes with the fixed values above, one trial each,
    # one epoch): stage 2 from the best trial's fold models, stage 3 from them too, taught by two
    # teachers: the ensemble's windows and stage 2's (its search exported its trial).
    board = board[board.trial != "ensemble"].reset_index(drop=True)
    command = [part for part in tiny_search(cached_dir, tmp_path, "stage2") if part not in ("--space", "loss_weights")]
    command[command.index("--num-samples") + 1], command[command.index("--epochs") + 1] = "1", "1"
    command += ["--set", "data.clip_overlap=0", "--init-from", "e2e"]  # 6 windows of a 12 s clip
    stage2 = subprocess.run([*command, "--stage", "2"], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                            timeout=600)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    assert ("recipe stage2-v2_1, no space (one fixed configuration: the recipe with data.clip_overlap=0,"
            " data.crop_frames=128, data.crop_offsets=[16,32,64] and 9 more values); 1 trials of 1 epochs"
            in stage2.stdout)
    [second] = (tmp_path / "stage2" / "exports").glob("trial_*/windows.csv")
    teachers = [str(folder / "windows.csv"), str(second)]
    command[command.index("--name") + 1] = "stage3"
    stage3 = subprocess.run([*command, "--teacher", teachers[0], "--teacher", teachers[1]], capture_output=True,
                            text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert stage3.returncode == 0, stage3.stderr[-3000:]
    assert "recipe stage3-v4_2, no space" in stage3.stdout
    for name, stage in (("stage2", 2), ("stage3", 3)):
        taught = pd.read_csv(tmp_path / name / "leaderboard.csv", dtype={"best_epochs": str})
        assert len(taught) == 1 and taught.status[0] == "completed" and taught.best_epochs[0] == "1,1"
        for column in ("score", "cv_lwlrap", "cv_lwlrap_fold_best", "cv_lrap_reference"):  # the three CVs
            assert 0 < taught[column][0] <= 1
        # Stage 3 reports its CV against the relabelled truth beside the one on the original labels.
        assert ("cv_lwlrap_relabelled" in taught) == (stage == 3)
        config = from_dict(TrialConfig, yaml.safe_load((tmp_path / name / "best_config.yaml").read_text()))
        assert config.stage == stage and config.recipe == f"stage{stage}-v{'2_1' if stage == 2 else '4_2'}"
        assert config.data.train_items == "clips" and config.loss.clip_reduction == "sum"
        assert Path(config.init_from).parent == experiment / f"trial_{board.trial[0]}"
    assert 0 < taught.cv_lwlrap_relabelled[0] <= 1
    assert list(config.teacher_files) == teachers


def results_recorded(experiment: Path) -> dict[str, int]:
    """Trial directory -> the results the driver has recorded (each with its checkpoint)."""
    return {path.parent.name: len(path.read_text().splitlines()) for path in experiment.glob("trial_*/result.json")}


def test_tensorboard_shows_a_running_trial_in_hparams(cached_dir, tmp_path):
    command = tiny_search(cached_dir, tmp_path, "live")
    command[command.index("--num-samples") + 1], command[command.index("--epochs") + 1] = "1", "30"
    driver = subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    board = None
    try:
        deadline = time.time() + 300
        while max(results_recorded(tmp_path / "live").values(), default=0) < 1:  # the trial's first epoch
            assert time.time() < deadline and driver.poll() is None, "no epoch was recorded"
            time.sleep(0.5)
        port = free_port()
        board = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "live"),
                                  "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        groups = []
        while not groups:  # TensorBoard answers before it has read the logdir
            assert time.time() < deadline, "TensorBoard never listed the trial in HParams"
            groups = session_groups(port)
            time.sleep(0.5)
        [group] = groups
        assert f"trial_{group['name']}" == next((tmp_path / "live").glob("trial_*")).name
        values = {metric["name"]["tag"]: metric["value"] for metric in group["metricValues"]}
        assert values["status/epochs"] >= 1 and 0 < values["cv/lwlrap"] <= 1
        # No end record yet: TensorBoard's status "Unknown", the trial still running.
        assert group["sessions"][0].get("status", "STATUS_UNKNOWN") == "STATUS_UNKNOWN"
        assert driver.poll() is None  # the search was running all along
        shot = screenshot(f"http://127.0.0.1:{port}/#hparams", tmp_path / "hparams.png")
        assert colours(shot) > 20  # TensorBoard's HParams table, not a blank page
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        if board is not None:
            board.kill()
            board.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session_groups(port: int) -> list[dict]:
    """TensorBoard's HParams table, as its page asks for it; [] until TensorBoard answers."""
    request = {"experimentName": "", "colParams": [], "startIndex": 0, "sliceSize": 100,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups", data=json.dumps(request).encode(),
                headers={"Content-Type": "application/json"}), timeout=10) as reply:
            return json.loads(reply.read())["sessionGroups"]
    except (OSError, ValueError, KeyError):
        return []
