"""Ctrl-C (or SIGTERM) at any moment of search/run.py: one line, exit code 130, and an experiment
that the same command continues (or starts afresh, when nothing was recorded yet)."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.fs
import pytest
from ray import tune

from search import run
from search.tuner.experiment import WholeFiles
from tests.helpers import ENV, REPO, tiny_search

pytestmark = pytest.mark.ray

INTERRUPTED = 130


def small_search(cached_dir: Path, storage: Path, name: str) -> list[str]:
    """tiny_search with one trial of 2 epochs (argparse keeps a repeated flag's last value)."""
    return [*tiny_search(cached_dir, storage, name), "--num-samples", "1", "--epochs", "2"]


def test_a_pickle_that_ray_did_not_write_whole_never_replaces_the_file(tmp_path):
    """Ray writes tuner.pkl as `with open_output_stream(...): f.write(pickle.dumps(...))`: Ctrl-C
    while it pickles closes an empty file, which left a 0-byte tuner.pkl."""
    filesystem = pyarrow.fs.PyFileSystem(WholeFiles())
    path = tmp_path / "tuner.pkl"
    with pytest.raises(KeyboardInterrupt):
        with filesystem.open_output_stream(str(path)):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with filesystem.open_output_stream(str(path)) as stream:
            stream.write(pickle.dumps({"whole": False})[:-1])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with filesystem.open_output_stream(str(path)) as stream:
        stream.write(pickle.dumps({"whole": True}))
    assert pickle.loads(path.read_bytes()) == {"whole": True}
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_before_the_search_answers_one_line(cached_dir, tmp_path, signum):
    """During the imports and the checks (seconds, before Ray): no traceback, nothing written."""
    command = small_search(cached_dir, tmp_path, "early")
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED, stderr
    assert stderr.strip().splitlines() == [run.STARTED_NOTHING]
    assert not (tmp_path / "early").exists()


def test_interrupts_while_the_tuner_is_built_and_during_the_reports_leave_a_resumable_search(
        cached_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C while Ray writes tuner.pkl (in process: injected where Ray pickles the Tuner), then
    the same command starts the search afresh, and Ctrl-C once its trial has reported leaves an
    experiment to resume."""
    import ray
    from ray.tune.impl.tuner_internal import TunerInternal

    def interrupted(self):
        raise KeyboardInterrupt

    command = small_search(cached_dir, tmp_path, "search")
    monkeypatch.delenv("RFCX_TUNE_STUDY_DB", raising=False)  # the in-process run sets it
    with monkeypatch.context() as patch:
        patch.setattr(TunerInternal, "__getstate__", interrupted)
        try:
            assert run.main(command[2:]) == INTERRUPTED
        finally:
            ray.shutdown()
    resume = f"python search/run.py --resume --name search --storage {tmp_path}"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: continue with {resume}"
    experiment = tmp_path / "search"
    assert not (experiment / "tuner.pkl").exists()  # no torn file: nothing for a resume to choke on

    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 240
    while not any(path.stat().st_size for path in experiment.glob("trial_*/result.json")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == INTERRUPTED, output
    assert output.strip().splitlines()[-1] == f"interrupted: continue with {resume}"
    assert "Traceback" not in output

    # What the same command resumes from (tests/test_jobs.py resumes a search stopped this way to
    # its end): the experiment, and the trial's first epoch with its checkpoint (ASHA's rung).
    assert "starting experiment" in output  # after the interrupted build: nothing to resume yet
    assert tune.Tuner.can_restore(str(experiment))
    [trial] = experiment.glob("trial_*")
    assert json.loads((trial / "result.json").read_text().splitlines()[0])["training_iteration"] == 1
    assert (trial / "checkpoint_000000" / "trial.json").exists()
