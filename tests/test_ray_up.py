"""`ray up` for real: cluster-onprem.yaml, pointed at an SSH server on 127.0.0.1, brought up
with Ray's cluster launcher, a tiny search submitted to its head with `ray job submit`, and
`ray down`, as docs/cluster.md ("Machines you already have") runs them.

The SSH server is Debian's sshd (openssh-server; .ci/run installs it), run by the test with a
host key and a user key of its own, in its own PID namespace: `ray down` runs `ray stop` on the
head, which stops every Ray process its user has on the machine, and there it sees the test's
cluster only, not the Ray of a test running beside this one. Its sessions get a home of their
own (sshd's SetEnv HOME), so nothing is written to the user's ~. Nothing outside 127.0.0.1 is
contacted: the addresses are 127.0.0.1, Ray's usage report is off and the search downloads no
weights. Without sshd, rsync or a PID namespace the test is skipped, unless RFCX_REQUIRE_SSHD=1
(CI), where that fails it.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import ENV, REPO, tiny_search

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ONPREM_YAML = REPO / "cluster-onprem.yaml"
RAY_CLI = str(Path(sys.executable).parent / "ray")  # the .venv's, whatever PATH says
SHARED_DATA = "/mnt/shared/rfcx-data"  # cluster-onprem.yaml's --data-dir, replaced by the test's data
FEW_MINUTES = 240  # for anything that should take seconds, on a loaded 2-core machine

# ssh's ProxyCommand: stdin and stdout to HOST:PORT. Ray's auth section takes no SSH port, and
# ssh's own Port would need a line in the user's ~/.ssh/config; written here, not netcat, which
# a clean machine lacks.
BRIDGE = '''import os, socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def forward():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=forward, daemon=True).start()
while data := sock.recv(65536):
    os.write(1, data)
'''


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each probe stays bound until all are drawn (a port released
    at once can be handed out again by the next probe, and Ray refuses one port for two parts)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def unavailable(reason: str) -> None:
    """Skip the test, or fail it where RFCX_REQUIRE_SSHD=1 (CI installs the SSH server)."""
    if os.environ.get("RFCX_REQUIRE_SSHD") == "1":
        pytest.fail(f"RFCX_REQUIRE_SSHD=1 but {reason}")
    pytest.skip(reason)


def sshd_binary() -> str:
    found = shutil.which("sshd") or next((path for path in ("/usr/sbin/sshd",) if os.access(path, os.X_OK)), None)
    if found is None:
        unavailable("no sshd (apt-get install openssh-server)")
    for tool in ("rsync", "unshare", "ssh", "ssh-keygen"):  # rsync: Ray's file_mounts; unshare: the PID namespace
        if shutil.which(tool) is None:
            unavailable(f"no {tool} on PATH (apt-get install openssh-server rsync)")
    return found


def processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of every process this one can see (those of the
    server's PID namespace too), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2:].split()[1])
                found[int(entry.name)] = (parent, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError):  # ended meanwhile
            continue
    return found


def processes_mentioning(*paths: Path) -> list[str]:
    """The command lines of the processes that name one of `paths`."""
    return [f"{pid}: {line[:300]}" for pid, (_, line) in processes().items()
            if any(str(path) in line for path in paths)]


def gone(*paths: Path, within: float = 30) -> list[str]:
    """Wait until no process names `paths`; returns those left after `within` seconds."""
    deadline = time.time() + within
    while (left := processes_mentioning(*paths)) and time.time() < deadline:
        time.sleep(0.5)
    return left


@dataclass
class SSHServer:
    port: int
    key: Path  # the user's private key, in the server's authorized_keys
    home: Path  # $HOME of its sessions: the "node"'s home
    process: subprocess.Popen  # unshare, whose child is sshd, PID 1 of the namespace
    log: Path

    def stop(self) -> None:
        """SIGTERM to sshd; as PID 1 of its namespace, its end kills whatever still runs there."""
        if self.process.poll() is None:
            for pid, (parent, _) in processes().items():
                if parent == self.process.pid:
                    os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()  # unshare --kill-child: SIGKILL to sshd, and so to the namespace
                self.process.wait(timeout=15)


@pytest.fixture
def ssh_server(tmp_path) -> Iterator[SSHServer]:
    """sshd on a free port of 127.0.0.1 in a PID namespace of its own, accepting a key made here."""
    sshd = sshd_binary()
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "user_key.pub", keys / "authorized_keys")
    home = tmp_path / "node"
    home.mkdir()
    port = free_port()
    config = keys / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {keys / 'host_key'}",
        f"AuthorizedKeysFile {keys / 'authorized_keys'}",
        "PidFile none",
        "UsePAM no",
        "StrictModes no",  # the keys are in pytest's tmp_path, whatever its modes
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",  # the key only, where the tests run as root
        f"SetEnv HOME={home}",  # the sessions' ~ (bash reads ~/.bashrc from it): not the user's
    ]) + "\n")
    if os.geteuid() == 0:
        # sshd run by root separates privileges into this directory, which Debian's service creates.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        namespace = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    else:  # an unprivileged user namespace, the same user inside: sshd runs without privilege separation
        namespace = ["unshare", "--user", "--map-current-user", "--pid", "--fork", "--mount-proc", "--kill-child"]
    log = tmp_path / "sshd.log"
    with open(log, "w") as out:
        process = subprocess.Popen([*namespace, sshd, "-D", "-e", "-f", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = SSHServer(port, keys / "user_key", home, process, log)
    try:
        deadline = time.time() + 20
        while process.poll() is None and time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            server.stop()
            unavailable(f"sshd did not start: {' '.join(log.read_text().split())[-500:]}")
        login = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(server.key), "-p", str(port), "-o", "BatchMode=yes",
                                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                f"{getpass.getuser()}@127.0.0.1", "true"], capture_output=True, text=True, timeout=60)
        if login.returncode != 0:  # e.g. a user sshd takes for locked
            server.stop()
            unavailable(f"sshd refused the test's key: {' '.join(log.read_text().split())[-500:]}")
        yield server
    finally:
        server.stop()


def ray_start_flags(temp_dir: str) -> tuple[list[str], int]:
    """What the test adds to the head's `ray start`: its own free ports (another Ray may run on
    this machine: the defaults 6379, 8265, 10001 and 52365 may be taken), a temp dir of its own,
    2 CPUs and 127.0.0.1 as the node's address (Ray would pick the machine's own); and the
    dashboard's port. Click takes an option's last value, so these override the config's."""
    names = ("port", "object-manager-port", "node-manager-port", "ray-client-server-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port")
    dashboard, *drawn = free_ports(1 + len(names))
    ports = dict(zip(names, drawn))
    flags = [f"--{name}={port}" for name, port in ports.items()]
    return [*flags, f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--num-cpus=2",
            "--node-ip-address=127.0.0.1"], dashboard


def pointed_at_the_server(server: SSHServer, bridge: Path, data_dir: Path, temp_dir: str) -> tuple[dict, int]:
    """cluster-onprem.yaml pointed at the test's SSH server, and the port of its job server.

    Changed: the addresses (127.0.0.1, no worker: a second node would need a second address),
    the SSH user, key and port (a ProxyCommand), a cluster name of its own, the data's path, and
    the head's `ray start` flags (ray_start_flags). Left out: the setup command that pip-installs
    the project, which needs the network and would rewrite the .venv: the node's ~/rfcx-venv is
    the .venv already (a link), so the venv's creation is a no-op. Everything else as committed.
    """
    config = yaml.safe_load(ONPREM_YAML.read_text())
    config["cluster_name"] = f"rfcx-tune-test-{uuid.uuid4().hex[:8]}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    python = shlex.quote(sys.executable)
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(server.key),
                      "ssh_proxy_command": f"{python} -I {shlex.quote(str(bridge))} %h {server.port}"}
    installs = [cmd for cmd in config["setup_commands"] if "pip install" in cmd]
    assert len(installs) == 1, config["setup_commands"]
    checks = [cmd for cmd in config["setup_commands"] if SHARED_DATA in cmd]
    assert checks, f"cluster-onprem.yaml's setup no longer checks {SHARED_DATA}"
    config["setup_commands"] = [cmd.replace(SHARED_DATA, str(data_dir)) for cmd in config["setup_commands"]
                                if cmd not in installs]
    flags, dashboard = ray_start_flags(temp_dir)
    starts = [i for i, cmd in enumerate(config["head_start_ray_commands"]) if "ray start --head" in cmd]
    assert len(starts) == 1, config["head_start_ray_commands"]
    config["head_start_ray_commands"][starts[0]] += " " + " ".join(flags)
    return config, dashboard


def run(command: list[str], env: dict[str, str], timeout: float = FEW_MINUTES) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-4000:]


@pytest.fixture
def head_temp_dir() -> Iterator[str]:
    """The head's Ray temp dir: its own, and short (Ray's socket paths have a length limit)."""
    path = tempfile.mkdtemp(prefix="rfcx-up-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ray_up_runs_a_search_as_a_job_and_ray_down_stops_it(ssh_server, head_temp_dir, cached_dir, tmp_path):
    temp_dir = head_temp_dir
    bridge = tmp_path / "bridge.py"
    bridge.write_text(BRIDGE)
    # The node: the project's .venv as its ~/rfcx-venv, the environment a machine without internet
    # access would have (Ray's usage report off; no model hub), and a Ray temp dir of its own for
    # the head's autoscaler's state (on a real head, /tmp/ray, where this machine's would be).
    (ssh_server.home / "rfcx-venv").symlink_to(REPO / ".venv")
    (ssh_server.home / ".bashrc").write_text(
        f"export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 RAY_TMPDIR={shlex.quote(str(tmp_path / 'ray-node'))}\n")
    config, dashboard = pointed_at_the_server(ssh_server, bridge, cached_dir, temp_dir)
    cluster_yaml = tmp_path / "cluster.yaml"
    cluster_yaml.write_text(yaml.safe_dump(config))
    # Your machine: a home of its own (the token ray up copies to the nodes), the cluster's state
    # in a Ray temp dir of its own, ray up's config cache in a temp dir of its own.
    client = tmp_path / "client"
    client.mkdir()
    (tmp_path / "tmp").mkdir()
    env = {**ENV, "HOME": str(client), "RAY_TMPDIR": str(tmp_path / "ray-client"), "TMPDIR": str(tmp_path / "tmp"),
           "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    control = Path("/tmp") / ("ray_ssh_" + hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]) / \
        hashlib.sha256(config["cluster_name"].encode()).hexdigest()[:10]  # Ray's SSH control sockets
    storage = tmp_path / "experiments"
    try:
        token = run([RAY_CLI, "get-auth-token", "--generate"], env)
        assert token.returncode == 0 and (client / ".ray" / "auth_token").exists(), tail(token)

        up = run([RAY_CLI, "up", "-y", "--no-config-cache", str(cluster_yaml)], env)
        assert up.returncode == 0, tail(up) + ssh_server.log.read_text()[-2000:]
        # The project was copied to the node and the token with it.
        assert (ssh_server.home / "rfcx-tune" / "search" / "run.py").read_text() == (REPO / "search/run.py").read_text()
        assert (ssh_server.home / ".ray" / "auth_token").read_text() == (client / ".ray" / "auth_token").read_text()

        # The documented submission, relative run.py included: a job starts where the head's Ray did.
        search = ["python", "search/run.py", *tiny_search(cached_dir, storage, "onprem")[2:],
                  "--num-samples", "1", "--epochs", "1"]
        submit = run([RAY_CLI, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                      "--submission-id", "onprem-1", "--", *search], env)
        assert submit.returncode == 0 and "Job 'onprem-1' succeeded" in submit.stdout, tail(submit)
        assert "starting experiment" in submit.stdout, tail(submit)
        board = pd.read_csv(storage / "onprem" / "leaderboard.csv")
        assert len(board) == 1 and (board.status == "completed").all(), board.to_string()

        running = processes_mentioning(Path(temp_dir))
        assert any("raylet" in line for line in running) and any("gcs_server" in line for line in running), running
        down = run([RAY_CLI, "down", "-y", str(cluster_yaml)], env)
        assert down.returncode == 0, tail(down)
        # `ray down`'s `ray stop` ended the head's Ray: no raylet, GCS or dashboard of its temp dir.
        assert gone(Path(temp_dir)) == [], "left running after ray down"
        ssh_server.stop()
        # Nothing of the test runs any more: no sshd, no SSH connection of ray up's.
        assert gone(tmp_path, Path(temp_dir), within=20) == []
    finally:
        shutil.rmtree(control, ignore_errors=True)
        with contextlib.suppress(OSError):  # Ray's folder for this user's clusters, if no other has one
            control.parent.rmdir()
