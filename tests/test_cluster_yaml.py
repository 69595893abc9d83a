"""cluster.yaml and cluster-onprem.yaml: valid for Ray's own cluster launcher, checked offline,
and true to the project.

Ray's validator is `prepare_config` (merge with the AWS defaults, node-type min/max workers; for
the local provider, its one node type from the addresses) then `validate_config` (ray-schema.json,
no unknown keys, head type among the node types). Neither calls EC2 nor SSH: node resources are
only looked up by `ray up` itself, and cluster.yaml declares them anyway. A guard makes any
network use fail the test. tests/test_ray_up.py runs cluster-onprem.yaml for real.
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import ray
import tomllib
import yaml
from ray.autoscaler._private import util as ray_util
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
from ray.autoscaler._private.util import hash_runtime_conf, prepare_config, validate_config
from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE
from ray.core.generated.common_pb2 import PlacementStrategy
from ray.core.generated.gcs_pb2 import PlacementGroupTableData
from setuptools import find_packages

from search.run import parse_args

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
ONPREM_YAML = ROOT / "cluster-onprem.yaml"  # machines you already have: Ray's local provider
CLUSTER_GUIDE = ROOT / "docs" / "cluster.md"  # the guide's "Running on a cluster"

PROJECT_DIR = "/home/ray/rfcx-tune"  # where file_mounts puts the project's code in the container
DATA_DIR = "/home/ray/rfcx-data"  # where every node pulls the annotations and the log-mel cache
TOKEN_MOUNT = "/home/ray/.ray/auth_token"  # Ray's default token path in the container
LOCAL_TOKEN = "~/.ray/auth_token"  # where `ray get-auth-token --generate` writes it on your machine
PLACEHOLDER_VALUES = ("YOUR-",)  # values a user must replace; their lines say PLACEHOLDER
NEVER_MOUNTED = (".venv", "data", "experiments", ".git")  # big, or not needed on the nodes
S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.\-]*[a-z0-9]|[A-Z0-9][A-Z0-9\-]*[A-Z0-9])(/[^\s'\"]*)?")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Validation is offline: any connection or name lookup fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("cluster.yaml checks must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict[str, Any]:
    """The file as written (tests must not modify it: copy first)."""
    return yaml.safe_load(text)


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it talks to AWS; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: node for name, node in config["available_node_types"].items() if name != config["head_node_type"]}


def start_commands(config: dict[str, Any]) -> list[str]:
    return [cmd for key in ("head_start_ray_commands", "worker_start_ray_commands") for cmd in config[key]
            if "ray start" in cmd]


def code_part(line: str) -> str:
    """The line without its comment (a # inside quotes is not one)."""
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", lambda m: "x" * len(m.group()), line)
    found = re.search(r"(^|\s)#", unquoted)
    return line[:found.start()] if found else line


def has_comment(line: str) -> bool:
    return code_part(line) != line


def uncommented_keys(text: str) -> list[str]:
    """Keys with no comment on their line nor a comment line right above them ('line N: key').

    Keys come from YAML's own scanner, so flow mappings, keys in list items and comment lines
    that merely look like `key: value` are all handled.
    """
    lines = text.splitlines()
    tokens = list(yaml.scan(text))
    missing = []
    for token, following in zip(tokens, tokens[1:]):
        if not isinstance(token, yaml.KeyToken):
            continue
        line = token.start_mark.line
        above = lines[line - 1].lstrip() if line > 0 else ""
        if not (has_comment(lines[line]) or above.startswith("#")):
            name = following.value if isinstance(following, yaml.ScalarToken) else "?"
            missing.append(f"line {line + 1}: {name}")
    return missing


def documented_search(text: str, run_py: str = f"{PROJECT_DIR}/search/run.py") -> list[str]:
    """The arguments of the search that the header comment tells users to submit as a Ray Job
    (`ray job submit ... -- python RUN_PY ...`)."""
    lines = [line.lstrip("# ").strip() for line in text.splitlines()
             if line.lstrip().startswith("#") and f"-- python {run_py} " in line]
    assert len(lines) == 1, "the header documents exactly one search command"
    submit, _, command = lines[0].partition(" -- ")
    assert shlex.split(submit)[:3] == ["ray", "job", "submit"], lines[0]
    argv = shlex.split(command)
    assert argv[:2] == ["python", run_py], "a job starts where Ray started: run.py's path from there"
    return argv[2:]


def s3_buckets(text: str) -> set[str]:
    return {match.group(1) for match in S3_URI.finditer(text)}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def installed_packages() -> set[str]:
    """The top-level packages that `pip install` takes from the repository, found the way
    setuptools finds them ([tool.setuptools.packages.find], flat layout)."""
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return {name.split(".")[0] for name in find_packages(str(ROOT), include=include)}


def project_mounts(config: dict[str, Any]) -> dict[str, str]:
    """file_mounts under PROJECT_DIR: {local path: remote path}."""
    return {local: remote for remote, local in config["file_mounts"].items()
            if remote == PROJECT_DIR or remote.startswith(PROJECT_DIR + "/")}


def s3_sync(config: dict[str, Any]) -> tuple[str, str]:
    """(source, destination) of the setup command that pulls the data from S3."""
    syncs = [shlex.split(code_part(cmd)) for cmd in config["setup_commands"] if " s3 sync " in cmd]
    assert len(syncs) == 1, "one setup command pulls the data"
    args = syncs[0]
    at = args.index("sync")
    return args[at + 1], args[at + 2]


# --- Ray's own validator ---------------------------------------------------------------------


def test_committed_config_passes_rays_validator(config):
    before = set(sys.modules)
    prepared = ray_validate(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert not {name for name in set(sys.modules) - before if name.split(".")[0] in ("boto3", "botocore")}, \
        "validation must not load the AWS SDK"


def rename(path: tuple[str, ...], new: str) -> Callable[[dict], None]:
    """A mutation that renames the key at `path` (which must exist) to `new`."""

    def mutate(config: dict) -> None:
        *parents, old = path
        node = config
        for key in parents:
            node = node[key]
        node[new] = node.pop(old)

    return mutate


def set_value(path: tuple[str, ...], value: Any) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        *parents, last = path
        node = config
        for key in parents:
            node = node[key]
        assert last in node, f"{path} is not in cluster.yaml"
        node[last] = value

    return mutate


BROKEN = {
    "misspelled top-level key": (rename(("idle_timeout_minutes",), "idle_timout_minutes"),
                                 jsonschema.ValidationError, "idle_timout_minutes"),
    "misspelled node-type key": (rename(("available_node_types", "gpu_worker", "max_workers"), "max_worker"),
                                 jsonschema.ValidationError, "max_worker"),
    "misspelled node_config": (rename(("available_node_types", "gpu_worker", "node_config"), "node_confg"),
                               jsonschema.ValidationError, "'node_config' is a required property"),
    "misspelled docker key": (rename(("docker", "run_options"), "run_option"),
                              jsonschema.ValidationError, "run_option"),
    "misspelled auth key": (rename(("auth", "ssh_user"), "ssh_usr"), jsonschema.ValidationError, "ssh_usr"),
    "fractional GPU resource": (set_value(("available_node_types", "gpu_worker", "resources", "GPU"), 0.5),
                                jsonschema.ValidationError, "0.5"),
    "head type not among the node types": (set_value(("head_node_type",), "ray.head.default"),
                                           ValueError, "head_node_type"),
    "min_workers above the global max_workers": (set_value(("available_node_types", "gpu_worker", "min_workers"), 5),
                                                 ValueError, "max_workers"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_copies_are_rejected(config, name):
    mutate, error, needle = BROKEN[name]
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(error) as raised:
        ray_validate(broken)
    message = raised.value.message if isinstance(raised.value, jsonschema.ValidationError) else str(raised.value)
    assert needle in message


# --- project invariants ----------------------------------------------------------------------


def test_docker_image_has_the_projects_ray_and_python(config):
    docker = config["docker"]
    assert not {"head_image", "worker_image"} & set(docker), "one image for every node"
    found = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<minor>\d+)-(?P<flavour>gpu|cu\d+)",
                         docker["image"])
    assert found, f"not a rayproject/ray VERSION-pyXY-gpu tag: {docker['image']}"
    assert found["ray"] == ray.__version__
    assert (int(found["py"]), int(found["minor"])) == sys.version_info[:2]


def test_setup_installs_the_project_without_replacing_ray(config):
    assert config["file_mounts"][f"{PROJECT_DIR}/pyproject.toml"] == "pyproject.toml"
    installs = [cmd for cmd in config["setup_commands"] if cmd.startswith("pip install")]
    assert len(installs) == 1
    args = shlex.split(installs[0])
    assert args[args.index("-e") + 1] == PROJECT_DIR
    assert f"ray[tune]=={ray.__version__}" in args, "ray pinned to the image's (= the .venv's) version"


def test_docker_gives_workers_the_gpu_and_enough_shared_memory(config):
    docker = config["docker"]
    assert "--gpus all" in docker["worker_run_options"]
    assert not any("--gpus" in option for option in docker["run_options"] + docker.get("head_run_options", [])), \
        "--gpus on the CPU head makes docker run fail"
    shm = [re.fullmatch(r"--shm-size=(\d+)g", option) for option in docker["run_options"]]
    sizes = [int(found.group(1)) for found in shm if found]
    assert len(sizes) == 1 and sizes[0] >= 8, "room for Ray's object store (Docker's default /dev/shm is 64 MB)"
    assert "--ulimit nofile=65536:65536" in docker["run_options"]


def test_every_node_type_declares_its_resources(config):
    for name, node in config["available_node_types"].items():
        assert isinstance(node["resources"].get("CPU"), int), f"{name}: CPU not declared"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head advertises no CPU, so no trial runs there"
    workers = worker_types(config)
    assert workers and all(node["resources"].get("GPU", 0) >= 1 for node in workers.values())


def test_the_documented_search_fills_a_worker_exactly(config, text):
    args = parse_args(documented_search(text))
    assert args.address is None  # a job joins its cluster through the RAY_ADDRESS the job sets
    for name, node in worker_types(config).items():
        by_gpu = node["resources"]["GPU"] / args.gpus_per_trial
        by_cpu = node["resources"]["CPU"] / args.cpus_per_trial
        assert by_gpu == by_cpu == int(by_gpu) >= 1, f"{name}: {by_gpu:g} trials fit by GPU, {by_cpu:g} by CPU"


def test_workers_scale_to_zero_on_spot_and_idle_nodes_go(config):
    assert isinstance(config["idle_timeout_minutes"], int) and 0 < config["idle_timeout_minutes"] <= 30
    assert config["provider"]["cache_stopped_nodes"] is False, "idle workers terminated, not stopped"
    for name, node in worker_types(config).items():
        assert node["min_workers"] == 0, name
        assert node["min_workers"] <= node["max_workers"] <= config["max_workers"], name
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        assert node["node_config"]["IamInstanceProfile"], f"{name}: no S3 access without an instance profile"


def test_no_port_is_opened_beyond_ssh(config):
    head_start = [cmd for cmd in config["head_start_ray_commands"] if "ray start" in cmd]
    assert len(head_start) == 1
    assert "--dashboard-host=127.0.0.1" in head_start[0]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start[0], "without it no worker is started"
    assert not any("0.0.0.0" in cmd for cmd in start_commands(config))
    # Ray's group: SSH from anywhere and intra-cluster traffic only; no extra rule, no other group.
    assert config["provider"]["security_group"]["IpPermissions"] == []
    for name, node in config["available_node_types"].items():
        assert not {"SecurityGroupIds", "NetworkInterfaces"} & set(node["node_config"]), name
    docker = config["docker"]
    options = docker["run_options"] + docker.get("head_run_options", []) + docker.get("worker_run_options", [])
    assert not any(option.startswith(("-p", "--publish")) for option in options)


def test_token_auth_is_on_everywhere(config, text):
    commands = start_commands(config)
    assert len(commands) == 2
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in commands), "every ray start (head and workers)"
    assert config["file_mounts"][TOKEN_MOUNT] == LOCAL_TOKEN, "the token comes from your machine, not the repo"
    assert any("export RAY_AUTH_MODE=token" in cmd and "~/.bashrc" in cmd for cmd in config["setup_commands"]), \
        "drivers started with ray exec find the token too"
    assert "RAY_AUTH_TOKEN" not in text, "a token is never written into the config"


def test_only_the_installed_code_is_mounted(config):
    """The packages pip installs, pyproject.toml and its readme, each in its place under
    PROJECT_DIR; not the repository root, whose .venv, data/ and experiments/ `ray up` would
    read in full on every run to hash them."""
    mounts = project_mounts(config)
    assert set(config["file_mounts"]) == {*mounts.values(), TOKEN_MOUNT}
    assert all(remote == f"{PROJECT_DIR}/{local}" for local, remote in mounts.items()), mounts
    assert set(mounts) == installed_packages() | {"pyproject.toml", pyproject()["project"]["readme"]}
    for local in mounts:
        path = (ROOT / local).resolve()
        assert path.exists() and ROOT in path.parents, f"{local}: not a path inside the repository"
        for name in NEVER_MOUNTED:
            never = ROOT / name
            assert path != never and path not in never.parents and never not in path.parents, \
                f"{local} would copy {name}"
    assert "__pycache__/" in config["rsync_exclude"]


def test_ray_up_hashes_only_the_mounted_code(config, monkeypatch, tmp_path):
    """What `ray up` reads on every run: Ray's own hash over every file of every mount."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("not a token")
    monkeypatch.setenv("HOME", str(home))  # the ~ of LOCAL_TOKEN
    monkeypatch.chdir(ROOT)  # `ray up` runs in the repository root
    allowed = [(ROOT / local).resolve() for local in project_mounts(config)] + [home / ".ray" / "auth_token"]
    read: dict[Path, int] = {}

    def counting_open(path, *args, **kwargs):
        path = Path(path).resolve()
        assert any(path == top or top in path.parents for top in allowed), f"ray up would read {path}"
        read[path] = path.stat().st_size
        assert sum(read.values()) < 5_000_000, "ray up would read more than the code"
        return open(path, *args, **kwargs)

    monkeypatch.setattr(ray_util, "open", counting_open, raising=False)  # hash_runtime_conf's open
    hash_runtime_conf(copy.deepcopy(config["file_mounts"]), None, config, generate_file_mounts_contents_hash=True)
    assert {path.relative_to(ROOT).parts[0] for path in read if ROOT in path.parents} == set(project_mounts(config))


def test_the_mounts_are_enough_for_the_editable_install(config, tmp_path):
    """setuptools' editable build (what `pip install -e` runs) on a copy of the mounts alone:
    it finds every package and the readme, and writes nothing into the project folder itself,
    which in the container is the root-owned folder Docker creates for the mounts."""
    mounts = project_mounts(config)
    assert not {".", *NEVER_MOUNTED} & set(mounts), "nothing to copy here"
    project = tmp_path / "rfcx-tune"
    for local, remote in mounts.items():
        target = project / Path(remote).relative_to(PROJECT_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / local).is_dir():
            shutil.copytree(ROOT / local, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / local, target)
    before = sorted(project.rglob("*"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    script = f"import setuptools.build_meta as b; b.build_editable({str(wheels)!r})"
    build = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-3000:]
    assert sorted(project.rglob("*")) == before, "the build wrote into the project folder"
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (finder,) = [name for name in archive.namelist() if name.endswith("_finder.py")]
        mapping = re.search(r"^MAPPING[^=]*=\s*(\{.*\})$", archive.read(finder).decode(), re.MULTILINE)
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata).decode()
    assert ast.literal_eval(mapping.group(1)) == {name: str(project / name) for name in installed_packages()}
    readme = (ROOT / pyproject()["project"]["readme"]).read_text()
    assert readme.strip() in metadata, "the readme is not the package's description"


def waiting_trials(args, count: int) -> list[PlacementGroupTableData]:
    """`count` trials waiting for resources, as the autoscaler sees them: Tune's placement
    groups of one bundle (PACK)."""
    groups = []
    for _ in range(count):
        group = PlacementGroupTableData(strategy=PlacementStrategy.PACK)
        group.bundles.add().unit_resources.update({"CPU": args.cpus_per_trial, "GPU": args.gpus_per_trial})
        groups.append(group)
    return groups


@pytest.mark.parametrize("upscaling_speed", ["committed", 0.0])
def test_waiting_trials_start_every_worker_at_once(config, text, upscaling_speed):
    """Ray's scheduler of the autoscaler, on the head alone with a worker's worth of trials
    waiting per worker: every worker is started in the first round, whatever upscaling_speed."""
    prepared = ray_validate(config)
    speed = prepared["upscaling_speed"] if upscaling_speed == "committed" else upscaling_speed

    class HeadOnly:
        def node_tags(self, node_id):
            return {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: prepared["head_node_type"]}

        def internal_ip(self, node_id):
            return "10.0.0.1"

    scheduler = ResourceDemandScheduler(HeadOnly(), prepared["available_node_types"], prepared["max_workers"],
                                        prepared["head_node_type"], speed)
    args = parse_args(documented_search(text))
    (name, worker), = worker_types(prepared).items()
    per_worker = int(worker["resources"]["GPU"] / args.gpus_per_trial)
    head = {"10.0.0.1": prepared["available_node_types"][prepared["head_node_type"]]["resources"]}
    to_launch, _ = scheduler.get_nodes_to_launch(
        ["head"], {}, [], head, waiting_trials(args, per_worker * prepared["max_workers"]), head, [],
        NodeAvailabilitySummary(node_availabilities={}))
    assert to_launch == {name: prepared["max_workers"]}


def test_data_and_results_share_one_bucket(config, text):
    source, destination = s3_sync(config)
    assert destination == DATA_DIR
    args = parse_args(documented_search(text))
    assert str(args.data_dir) == DATA_DIR, "the search reads the data where setup put them"
    (bucket,) = s3_buckets(source)
    assert s3_buckets(args.storage) == {bucket}
    assert s3_buckets(text) == {bucket}, "one bucket throughout the file"


def test_the_guide_uses_the_same_bucket_and_data_prefix(config):
    guide = CLUSTER_GUIDE.read_text()
    assert "# Running on a cluster" in guide
    source, _ = s3_sync(config)
    assert source in guide, "the guide pushes the data where the nodes pull them from"
    assert s3_buckets(guide) == s3_buckets(source)


def test_placeholders_are_marked(text, config):
    """Every value a user must fill in says PLACEHOLDER on its line (`grep -n PLACEHOLDER`)."""
    for number, line in enumerate(text.splitlines(), 1):
        if any(value in code_part(line) for value in PLACEHOLDER_VALUES):
            assert "PLACEHOLDER" in line, f"line {number}: {line.strip()}"
    region_line = next(line for line in text.splitlines() if line.strip().startswith("region:"))
    assert "PLACEHOLDER" in region_line
    assert config["provider"]["region"] in region_line


@pytest.mark.parametrize("path", [CLUSTER_YAML, ONPREM_YAML], ids=lambda path: path.name)
def test_every_key_is_commented(path):
    assert uncommented_keys(path.read_text()) == []


@pytest.mark.parametrize("snippet, missing", [
    ("a: 1  # why\n", []),
    ("# why\na: 1\n", []),
    ("a: 1\n", ["line 1: a"]),
    ("a: 'x # not a comment'\n", ["line 1: a"]),
    ("a:  # why\n  b: 2\n", ["line 2: b"]),
    ("a:  # why\n  - c: 3\n", ["line 2: c"]),
    ("# why\nr: {\"CPU\": 0}\n", []),
    ("# a: 1 is only a comment\nb: 2  # why\n", []),
])
def test_the_comment_rule(snippet, missing):
    assert uncommented_keys(snippet) == missing


# --- cluster-onprem.yaml: machines you already have -------------------------------------------

ONPREM_PROJECT = "~/rfcx-tune"  # where its file_mounts put the code: the ssh_user's home on each machine
ONPREM_TOKEN = "~/.ray/auth_token"  # Ray's default token path on each machine
ONPREM_VENV = "~/rfcx-venv"  # the virtual environment its setup installs the project into
ONPREM_GUIDE = "## Machines you already have"  # its section of the cluster guide


@pytest.fixture(scope="module")
def onprem_text() -> str:
    return ONPREM_YAML.read_text()


@pytest.fixture(scope="module")
def onprem(onprem_text) -> dict[str, Any]:
    """The file as written (tests must not modify it: copy first)."""
    return yaml.safe_load(onprem_text)


def onprem_start(onprem: dict[str, Any], key: str) -> str:
    (start,) = [cmd for cmd in onprem[key] if "ray start" in cmd]
    return start


def data_check(onprem: dict[str, Any]) -> str:
    """The data directory whose annotations a setup command checks on every machine."""
    checks = [re.search(r"test -f (\S+)/train_tp\.csv", cmd) for cmd in onprem["setup_commands"]]
    (found,) = [check for check in checks if check]
    return found.group(1)


def test_onprem_config_passes_rays_validator_with_every_machine_started(onprem):
    before = set(sys.modules)
    prepared = ray_validate(onprem)
    provider = prepared["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    (node_type,) = prepared["available_node_types"].values()  # the local provider's one type, head included
    workers = len(provider["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == prepared["max_workers"] == workers, \
        "ray up starts every machine listed, and no other"
    assert not {name for name in set(sys.modules) - before if name.split(".")[0] in ("boto3", "botocore")}


def drop(path: tuple[str, ...]) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        *parents, last = path
        node = config
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


ONPREM_BROKEN = {
    "misspelled auth key": (rename(("auth", "ssh_private_key"), "ssh_private_kye"), jsonschema.ValidationError,
                            "ssh_private_kye"),
    "misspelled top-level key": (rename(("file_mounts",), "file_mount"), jsonschema.ValidationError, "file_mount"),
    "node types, which the local provider refuses": (
        lambda config: config.update(available_node_types={"gpu": {"resources": {"GPU": 1}, "node_config": {}}}),
        click.ClickException, "available_node_types"),
    "no worker_ips": (drop(("provider", "worker_ips")), click.ClickException, "worker_ips"),
}


@pytest.mark.parametrize("name", ONPREM_BROKEN)
def test_broken_onprem_copies_are_rejected(onprem, name):
    mutate, error, needle = ONPREM_BROKEN[name]
    broken = copy.deepcopy(onprem)
    mutate(broken)
    with pytest.raises(error) as raised:
        ray_validate(broken)
    message = raised.value.message if isinstance(raised.value, jsonschema.ValidationError | click.ClickException) \
        else str(raised.value)
    assert needle in message


def test_onprem_copies_the_same_code_as_cluster_yaml(onprem, config):
    """The same mounts in the ssh_user's home instead of the container's (so what `ray up` reads
    and what `pip install -e` needs are cluster.yaml's, checked above), and no Docker."""
    def in_home(remote: str) -> str:
        return remote.replace(PROJECT_DIR, ONPREM_PROJECT).replace(TOKEN_MOUNT, ONPREM_TOKEN)

    assert onprem["file_mounts"] == {in_home(remote): local for remote, local in config["file_mounts"].items()}
    assert onprem["rsync_exclude"] == config["rsync_exclude"]
    assert "docker" not in onprem, "machines you already have need no Docker"


def test_onprem_setup_installs_the_project_in_a_venv_that_every_command_uses(onprem, config):
    setup = onprem["setup_commands"]
    venvs = [shlex.split(code_part(cmd)) for cmd in setup if " -m venv " in cmd]
    assert len(venvs) == 1 and f"python{sys.version_info[0]}.{sys.version_info[1]}" in venvs[0], \
        "the .venv's Python: Ray needs one minor version on every node"
    assert venvs[0][-1] == ONPREM_VENV
    installs = [shlex.split(cmd) for cmd in setup if "pip install" in cmd]
    assert len(installs) == 1
    args = installs[0]
    assert args[0] == f"{ONPREM_VENV}/bin/pip" and args[args.index("-e") + 1] == ONPREM_PROJECT
    assert f"ray[tune]=={ray.__version__}" in args, "ray pinned to the .venv's version"
    # `ray down` runs `ray stop` by name, and jobs run `python`: the venv first on PATH for every
    # shell ray up, ray exec and ray down open (they source ~/.bashrc), before any of them runs ray.
    path_line = f"export PATH=$HOME/{ONPREM_VENV.removeprefix('~/')}/bin:$PATH"
    (path_setup,) = [i for i, cmd in enumerate(setup) if path_line in cmd and "~/.bashrc" in cmd]
    assert path_setup < setup.index(next(cmd for cmd in setup if "pip install" in cmd))
    assert [cmd for cmd in setup if "RAY_AUTH_MODE" in cmd] == \
        [cmd for cmd in config["setup_commands"] if "RAY_AUTH_MODE" in cmd], "cluster.yaml's token line"


def test_onprem_starts_ray_as_cluster_yaml_does_in_the_project(onprem, config):
    head, worker = onprem_start(onprem, "head_start_ray_commands"), onprem_start(onprem, "worker_start_ray_commands")
    for start in (head, worker):
        assert start.startswith(f"cd {ONPREM_PROJECT} && "), "jobs start where Ray did: `python search/run.py`"
        assert "RAY_AUTH_MODE=token" in start and "0.0.0.0" not in start
    assert "--dashboard-host=127.0.0.1" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head, "without it no worker is started"
    assert "RAY_enable_autoscaler_v2=0" in head, "ray up's default autoscaler starts no worker of the local provider"
    grace = re.search(r"RAY_JOB_STOP_WAIT_TIME_S=\d+", onprem_start(config, "head_start_ray_commands"))
    assert grace and grace.group() in head, "the same time for `ray job stop` to save the search"
    assert "--address=$RAY_HEAD_IP:6379" in worker and "--port=6379" in head
    assert onprem["head_start_ray_commands"][0] == onprem["worker_start_ray_commands"][0] == "ray stop"


def test_onprem_documented_search_reads_the_checked_data_and_writes_shared_storage(onprem, onprem_text):
    args = parse_args(documented_search(onprem_text, run_py="search/run.py"))
    assert args.address is None  # a job joins its cluster through the RAY_ADDRESS the job sets
    shared = data_check(onprem)
    assert str(args.data_dir) == shared, "the search reads the data where setup checked them"
    root = Path(shared).parent
    assert root in Path(args.storage).parents, "results on the directory every machine mounts"
    # Workers the head has not started yet count for nothing: with a GPU share given, a search
    # submitted before they joined is refused instead of training on CPUs.
    assert args.gpus_per_trial is not None


def test_onprem_placeholders_are_marked(onprem_text, onprem):
    for number, line in enumerate(onprem_text.splitlines(), 1):
        if any(value in code_part(line) for value in PLACEHOLDER_VALUES) or data_check(onprem) in code_part(line):
            assert "PLACEHOLDER" in line, f"line {number}: {line.strip()}"
    provider, auth = onprem["provider"], onprem["auth"]
    for value in (provider["head_ip"], *provider["worker_ips"], auth["ssh_user"]):
        assert value.startswith(PLACEHOLDER_VALUES), f"{value}: a real-looking value a user could forget"


def test_the_guide_runs_the_onprem_cluster(onprem, onprem_text):
    guide = CLUSTER_GUIDE.read_text()
    assert ONPREM_GUIDE in guide
    section = guide.split(ONPREM_GUIDE, 1)[1].split("\n## ", 1)[0]
    for needed in ("ray up cluster-onprem.yaml", "ray down cluster-onprem.yaml", "ray status", "--gpus-per-trial",
                   data_check(onprem), "rsync", "openssh-server"):
        assert needed in section, needed
    args = parse_args(documented_search(onprem_text, run_py="search/run.py"))
    assert args.storage in section, "the guide's search writes where the file's does"
