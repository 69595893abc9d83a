"""search/tuner/lock.py: one driver per experiment. A second driver is refused in one line naming
the first; a killed driver's lock is taken over at once on its host, another host's once its
lease ran out; of drivers taking over one stale lock at the same moment exactly one wins; on S3
too (moto's server). And two real `search/run.py` drivers of one experiment."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from search.tuner import lock
from search.tuner.lock import LOCK_FILE, DriverLock, DriverLocked, Holder, hold
from tests.helpers import ENV, REPO, tiny_search

# A driver killed (SIGKILL) right after it took the lock: nothing of it runs any more.
KILLED_DRIVER = """
import os, signal, sys
from search.tuner.lock import hold
hold(sys.argv[1])
os.kill(os.getpid(), signal.SIGKILL)
"""


def holder_of(experiment: Path) -> Holder:
    found = Holder.parse((experiment / LOCK_FILE).read_text())
    assert found is not None
    return found


def write_lock(experiment: Path, text: str, age: float) -> None:
    """A lock left by another driver, last renewed `age` seconds ago."""
    experiment.mkdir(parents=True, exist_ok=True)
    path = experiment / LOCK_FILE
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))


def ended_pid() -> int:
    """The pid of a process that ran here and has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def since(holder: Holder) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.started))


def test_a_second_driver_is_refused_in_one_line_naming_the_first_and_the_lock_goes_with_it(tmp_path):
    experiment = tmp_path / "experiments" / "twin"
    with hold(str(experiment)):
        mine = holder_of(experiment)
        text = (experiment / LOCK_FILE).read_text()
        with pytest.raises(DriverLocked) as refused:
            hold(str(experiment))
        assert (experiment / LOCK_FILE).read_text() == text  # the running driver's lock untouched
    message = str(refused.value)
    assert message.startswith(f"experiment {experiment} is already running, driven by pid {os.getpid()} on host"
                              f" {socket.gethostname()} since {since(mine)}")
    assert message.endswith("once that driver stops, the same command resumes it") and "\n" not in message
    assert not (tmp_path / "experiments").exists()  # released; the folders made for it were left empty: removed

    (experiment / "trial_1").mkdir(parents=True)  # an experiment's own files stay
    with hold(str(experiment)):
        assert sorted(os.listdir(experiment)) == [LOCK_FILE, "trial_1"]
    assert os.listdir(experiment) == ["trial_1"]


def test_the_lock_of_a_killed_driver_is_taken_over_at_once_on_its_host(tmp_path):
    experiment = tmp_path / "killed"
    killed = subprocess.Popen([sys.executable, "-c", KILLED_DRIVER, str(experiment)], cwd=REPO, env=ENV)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert holder_of(experiment).pid == killed.pid  # its lock is left
    with hold(str(experiment)):  # renewed a moment ago, but its process is gone
        assert holder_of(experiment).pid == os.getpid()
    assert not experiment.exists() or os.listdir(experiment) == []


def test_another_hosts_lock_is_stale_only_once_its_lease_ran_out(tmp_path):
    experiment = tmp_path / "exp"
    pid = ended_pid()
    # Its pid runs nowhere here, but it is another host's pid: only the lease tells.
    other = Holder(host="elsewhere", pid=pid, started=time.time() - 3600, token="theirs")
    write_lock(experiment, other.text(), age=lock.LEASE_S - 10)
    with pytest.raises(DriverLocked, match=f"driven by pid {pid} on host elsewhere since .* renewed 50 s ago"):
        hold(str(experiment))
    assert holder_of(experiment) == other
    write_lock(experiment, other.text(), age=lock.LEASE_S + 1)
    with hold(str(experiment)):
        assert holder_of(experiment).token != "theirs"


def test_an_unreadable_lock_is_judged_by_its_age(tmp_path):
    experiment = tmp_path / "exp"
    write_lock(experiment, "{torn", age=1)
    with pytest.raises(DriverLocked, match="driven by a driver whose lock cannot be read"):
        hold(str(experiment))
    write_lock(experiment, "{torn", age=lock.LEASE_S + 1)
    with hold(str(experiment)):
        assert holder_of(experiment).pid == os.getpid()


def test_the_heartbeat_is_renewed_while_the_lock_is_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "RENEW_S", 0.05)
    experiment = tmp_path / "exp"
    with hold(str(experiment)):
        path = experiment / LOCK_FILE
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        deadline = time.monotonic() + 10
        while time.time() - path.stat().st_mtime > 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - path.stat().st_mtime < 5


def test_a_driver_whose_lock_was_taken_over_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lock, "RENEW_S", 0.05)
    experiment = tmp_path / "exp"
    with hold(str(experiment)):
        (experiment / LOCK_FILE).unlink()  # as a driver that judged it stale would have done
        write_lock(experiment, Holder(host="elsewhere", pid=1, started=time.time(), token="new").text(), age=0)
        err, deadline = "", time.monotonic() + 10
        while "warning" not in err and time.monotonic() < deadline:
            time.sleep(0.05)
            err += capsys.readouterr().err
    assert err.strip() == (f"warning: another driver took over the lock of experiment {experiment} (this one stalled"
                           f" past the 60 s lease, or their writes raced on an object store); the two now write the"
                           f" same experiment: stop one of them")
    assert holder_of(experiment).token == "new"  # its lock is not released by the driver that lost


def take_at_once(experiment: str, drivers: int) -> list[DriverLock]:
    """`drivers` threads take the lock at the same moment; the locks they got."""
    start, won, errors = threading.Barrier(drivers), [], []

    def take():
        start.wait()
        try:
            won.append(hold(experiment))
        except DriverLocked:
            pass
        except Exception as error:  # noqa: BLE001 - any other outcome fails the test
            errors.append(error)

    threads = [threading.Thread(target=take) for _ in range(drivers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return won


def test_of_drivers_taking_over_one_stale_lock_at_once_exactly_one_wins(tmp_path):
    for round_ in range(20):
        experiment = tmp_path / f"exp{round_}"
        stale = Holder(host="elsewhere", pid=1, started=time.time() - 3600, token="stale")
        write_lock(experiment, stale.text(), age=lock.LEASE_S + 1)
        won = take_at_once(str(experiment), drivers=6)
        assert len(won) == 1
        assert holder_of(experiment).token == won[0].me.token
        assert os.listdir(experiment) == [LOCK_FILE]  # no claim nor temporary file left behind
        won[0].release()


# --- S3 (moto's server): the lock object, its lease and its read-back ---------------------------


@pytest.fixture
def s3(monkeypatch):
    """An empty bucket on a local S3 server, reached by pyarrow through AWS_ENDPOINT_URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="rfcx")
    monkeypatch.setattr(lock, "SETTLE_S", 0.5)
    yield client
    server.stop()


def stored(client, key: str) -> Holder | None:
    try:
        return Holder.parse(client.get_object(Bucket="rfcx", Key=key)["Body"].read().decode())
    except client.exceptions.NoSuchKey:
        return None


@pytest.mark.s3
def test_on_s3_a_second_driver_is_refused_a_gone_ones_lock_taken_over_and_one_of_two_wins(s3):
    experiment, key = "s3://rfcx/experiments/twin", f"experiments/twin/{LOCK_FILE}"
    with hold(experiment):
        mine = stored(s3, key)
        with pytest.raises(DriverLocked, match=f"driven by pid {os.getpid()} on host {socket.gethostname()} since"
                                               f" {since(mine)}"):
            hold(experiment)
        assert stored(s3, key) == mine
    assert stored(s3, key) is None  # released

    # A driver of this machine that no longer runs: taken over at once, without waiting for its lease.
    gone = dataclasses.replace(Holder.this_process(), pid=ended_pid(), start_ticks="1", token="gone")
    s3.put_object(Bucket="rfcx", Key=key, Body=gone.text().encode())
    with hold(experiment):
        assert stored(s3, key).token not in ("gone", None)

    s3.put_object(Bucket="rfcx", Key=key, Body=gone.text().encode())
    won = take_at_once(experiment, drivers=3)  # read, write, settle, read back: the last writer wins
    assert len(won) == 1 and stored(s3, key).token == won[0].me.token
    won[0].release()
    assert stored(s3, key) is None


# --- Two real drivers -----------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_of_two_real_drivers_started_together_one_is_refused_and_the_other_runs_its_own_trials(cached_dir, tmp_path):
    """The issue's case: the same command started twice at once (two terminals, a Ray job
    submitted twice). Before the lock both said "starting experiment" and overwrote each other."""
    storage = tmp_path / "experiments"
    path = storage / "twin" / LOCK_FILE
    command = tiny_search(cached_dir, storage, "twin") + ["--num-samples", "1", "--epochs", "1",
                                                          "--grace-period", "1"]
    drivers = [subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not path.exists() and all(driver.poll() is None for driver in drivers) and time.monotonic() < deadline:
            time.sleep(0.1)
        held = holder_of(storage / "twin")  # read while the winner runs: it is removed at the end
        outputs = [driver.communicate(timeout=600) for driver in drivers]
    finally:
        for driver in drivers:
            driver.kill()
    winner = next(i for i, driver in enumerate(drivers) if driver.pid == held.pid)
    (stdout, stderr), (refused_out, refused_err) = outputs[winner], outputs[1 - winner]
    assert drivers[1 - winner].returncode == 2, refused_err[-3000:]
    lines = refused_err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: experiment {storage}/twin is already running, driven by pid {held.pid} on host"
        f" {socket.gethostname()} since {since(held)}")
    assert "experiment" not in refused_out  # neither "starting" nor "resuming" it

    assert drivers[winner].returncode == 0, stderr[-3000:]
    assert "starting experiment" in stdout
    board = pd.read_csv(storage / "twin" / "leaderboard.csv")
    assert list(board.status) == ["completed"]
    assert len(list((storage / "twin").glob("trial_*"))) == 1  # its trial alone (twins left 2 folders, 1 row)
    assert not path.exists()  # released at the end
