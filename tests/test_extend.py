"""Extending a search: `search/run.py --resume --num-samples K` adds trials to a search that has
run its own, and its searcher goes on with the same Optuna study (TPE keeps what it learned). A
real search of 2 trials on local Ray is extended to 3; fewer trials than planned are refused."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from search import run
from search.plan import report_dir, save_plan
from search.results.leaderboard import STUDY_DB, load_study
from search.tuner.experiment import build_tuner, fit, restore_tuner
from search.tuner.searcher import STUDY_EXPORT_ENV
from tests.helpers import NO_HUB, tiny_search

pytestmark = pytest.mark.ray


# Lines that Ray forwards from its worker processes to this one's stderr, at any time.
RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")


def error_of(capsys, argv: list[str]) -> str:
    assert run.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not RAY_WORKER_LINE.match(line)]
    assert len(err) == 1 and err[0].startswith("error: "), err  # one line, no traceback
    return err[0]


def studied(study) -> list[tuple[int, dict, str]]:
    """What the study knows of each trial: its number, its parameters and its state."""
    return [(trial.number, trial.params, trial.state.name) for trial in study.trials]


def test_a_resumed_search_runs_more_trials_in_the_same_study(local_ray, cached_dir, tmp_path, capsys, monkeypatch):
    arguments = tiny_search(cached_dir, tmp_path, "grow")[2:]
    arguments[arguments.index("--num-samples") + 1], arguments[arguments.index("--epochs") + 1] = "2", "1"
    plan = run.make_plan(run.parse_args(arguments))
    monkeypatch.setenv(STUDY_EXPORT_ENV, str(report_dir(plan) / STUDY_DB))  # as search.tuner.session does
    save_plan(plan)
    assert len(fit(build_tuner(plan))) == 2
    before = studied(load_study(report_dir(plan)))
    assert len(before) == 2

    # The experiment is moved to another folder before it is extended: it goes on from there (its
    # new trials too: Ray would make them at the old place, search.tuner.experiment.PlannedSearch).
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(tmp_path / "grow", moved / "grow")
    monkeypatch.setenv(STUDY_EXPORT_ENV, str(moved / "grow" / STUDY_DB))
    resume = ["--resume", "--name", "grow", "--storage", str(moved)]
    assert "has 2 trials planned and a resume only adds trials (--num-samples 3 or more" in error_of(
        capsys, [*resume, "--num-samples", "1"])
    assert "drop --epochs" in error_of(capsys, [*resume, "--num-samples", "3", "--epochs", "2"])
    grown = run.make_plan(run.parse_args([*resume, "--num-samples", "3"]))
    assert grown == dataclasses.replace(plan, num_samples=3, storage=str(moved))

    tuner = restore_tuner(grown)
    results = fit(tuner)
    assert len(results) == 3 and all(result.error is None for result in results)
    # ASHA's one rung (epoch 1) holds the two trials from before the resume, read back from their
    # result.json through the experiment's file system (search.tuner.remembering), and the new one.
    [(milestone, recorded)] = tuner._local_tuner._tune_config.scheduler._brackets[0]._rungs
    assert milestone == 1 and len(recorded) == 3
    assert len(list((moved / "grow").glob("trial_*/result.json"))) == 3
    assert not (tmp_path / "grow").exists()  # nothing written at the old place
    after = studied(load_study(report_dir(grown)))
    assert after[:2] == before and len(after) == 3  # the study went on: its trials kept, one added
    assert after[2][1] not in (before[0][1], before[1][1])
    # The plan records the new count: a plain --resume goes on with 3 trials, and 2 are refused.
    assert run.make_plan(run.parse_args(resume)).num_samples == 3
    assert "has 3 trials planned" in error_of(capsys, [*resume, "--num-samples", "2"])


def test_a_search_without_a_space_has_nothing_to_extend(capsys, cached_dir, tmp_path):
    arguments = ["--data-dir", str(cached_dir), "--storage", str(tmp_path), "--name", "once", *NO_HUB]
    save_plan(run.make_plan(run.parse_args(arguments)))
    err = error_of(capsys, ["--resume", "--name", "once", "--storage", str(tmp_path), "--num-samples", "2"])
    assert "trains one configuration (no --space); there is nothing to extend" in err
