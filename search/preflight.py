"""The checks search/run.py makes before Ray starts of what the trials will read and where they
will run: --config, the resources, --name, the data, the backbone, the ImageNet weights,
--init-from and --address (the storage is search.storage's, the scheduler's settings
search.stopping's, the plan's own search.plan's). Each one answers in one line (UsageError, exit
code 2) what would otherwise fail inside every trial, retried --max-failures times, or leave Ray
retrying for minutes.

The command line's own values (--config, the resources, --init-from, --address), then the data
(search.datadir opens and validates it), the backbone, the --init-from checkpoint and the
ImageNet weights. Light imports only at the top: --help must answer at once; torch, timm, grpc
and Ray come with the checks that need them.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from search.results.trials import TrialNotFound, newest_checkpoint, split_trial_ref, trial_dir
from search.storage import REMOTE_TIMEOUT_ENV, StorageError, local_path, normalise, remote_timeout
from trainable.config import ConfigError, TrialConfig
from trainable.dotted import flatten_dotted

# Paths of this machine: given by their own flags, never taken from --config or --set.
PATH_FLAGS = {"data_dir": "--data-dir", "cache_dir": "--cache-dir", "teacher_files": "--teacher",
              "teacher_file": "--teacher", "init_from": "--init-from"}  # teacher_file: the key's former name
MAX_NAME_BYTES = 255  # a file name on Linux and macOS file systems (NAME_MAX), and a folder of an object store's key


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


def read_config(path: Path) -> Any:
    """The YAML of --config; a problem is one line (PyYAML's messages span several, with the
    offending text quoted and a caret under it)."""
    try:
        return yaml.safe_load(path.read_text())
    except IsADirectoryError:
        raise UsageError(f"--config {path} is a directory, not a YAML file") from None
    except OSError as error:
        raise UsageError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {path}: not a text file") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(f"--config {path}: {where}{error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"--config {path}: {str(error).splitlines()[0]}") from None


def config_values(path: Path) -> dict[str, Any]:
    """--config's dotted keys without the paths of the machine it was written on: the data
    (and teacher and init checkpoint) come from their flags, never from a config written on
    another machine or for other data."""
    loaded = read_config(path)
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: expected a mapping of config keys")
    return {k: v for k, v in flatten_dotted(loaded).items() if k not in PATH_FLAGS}


def check_name(name: str) -> None:
    """--name is a folder's name."""
    if not name.strip():
        raise UsageError("--name is empty: give a name, or leave --name out for SPACES-DATE-TIME")
    if Path(name).name != name or name in (".", ".."):
        raise UsageError(f"--name {name!r}: a plain name, without '/'")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"--name is {len(name.encode())} bytes long; the experiment's folder name can"
                         f" have at most {MAX_NAME_BYTES}")


def check_resources(num_samples: int | None, max_concurrent: int | None, cpus: float | None,
                    gpus: float | None) -> None:
    """The trial count and concurrency, and what each trial asks for (None: not given; the
    resources are then settled on the Ray cluster, search.plan.trial_share)."""
    for flag, value in (("--num-samples", num_samples), ("--max-concurrent", max_concurrent)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    given = " ".join(f"{flag} {value:g}" for flag, value in (("--cpus-per-trial", cpus), ("--gpus-per-trial", gpus))
                     if value is not None)
    # No CPU needs a GPU share that is known now: the default one depends on the cluster.
    if (cpus or 0) < 0 or (gpus or 0) < 0 or (cpus is not None and cpus + (gpus or 0) <= 0):
        raise UsageError(f"a trial needs CPUs or GPUs: got {given}"
                         + (" (give --gpus-per-trial for a trial without CPUs)" if gpus is None else ""))
    if gpus is not None and gpus > 1 and not float(gpus).is_integer():
        raise UsageError(f"--gpus-per-trial {gpus:g}: a fraction of one GPU, or whole GPUs")


def init_checkpoint(reference: str, storage: str) -> Path:
    """The checkpoint directory --init-from EXPERIMENT[:TRIAL] names: the trial's newest checkpoint."""
    from trainable.training.checkpoint import CheckpointError, read_trial_file  # torch and timm

    name, trial = split_trial_ref(reference)
    experiment = Path(name)
    local = local_path(normalise(storage))
    if not experiment.is_dir() and local is not None and (local / name).is_dir():
        experiment = local / name
    if not experiment.is_dir():
        raise UsageError(f"--init-from {reference}: no experiment directory {name} (here or in {storage})")
    try:
        checkpoint = newest_checkpoint(trial_dir(experiment.resolve(), trial))
        read_trial_file(checkpoint)  # a checkpoint of an earlier format is refused here, in one line
    except (TrialNotFound, CheckpointError) as error:
        raise UsageError(f"--init-from {reference}: {error}") from None
    return checkpoint


def check_directory(flag: str, path: Path, may_be_missing: bool = False) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is not a directory")
    if not path.exists() and not may_be_missing:
        raise UsageError(f"{flag} {path} does not exist")


def check_data(trial: TrialConfig) -> int:
    """The data, the cache, the folds and a teacher file, checked against each other before Ray
    starts (each would fail only inside every trial, retried --max-failures times); returns the
    number of species."""
    from search.datadir import check_cached, open_data  # torch: trainable.data.cache imports it
    from trainable.data.annotations import AnnotationError
    from trainable.data.cache import CacheError
    from trainable.data.folds import folds_of
    from trainable.data.teacher import TeacherError, load_teachers

    data_dir = Path(trial.data_dir)
    check_directory("--data-dir", data_dir)
    if trial.cache_dir:
        check_directory("--cache-dir", Path(trial.cache_dir), may_be_missing=True)
    try:
        data = open_data(data_dir, trial.data.dataset, trial.cache_dir)
        check_cached(data)
        if trial.teacher_files:
            load_teachers([Path(path) for path in trial.teacher_files], data.annotations,
                          data.cache.features.frames_per_second)
    except (AnnotationError, CacheError, TeacherError) as error:
        raise UsageError(str(error)) from None
    for line in data.layout.warnings(data_dir):  # said once here, not by every trial
        print(f"warning: {line}", file=sys.stderr)
    try:
        folds_of(data.annotations, trial.data)  # the trials' own split, so whatever it refuses is refused here
    except ValueError as error:  # fewer tp recordings than folds
        raise UsageError(f"data.n_folds {trial.data.n_folds} (--folds): {error} in {data_dir}") from None
    return data.annotations.n_species


def check_backbone(trial: TrialConfig) -> None:
    import timm

    if not timm.is_model(trial.model.backbone):
        raise UsageError(f"unknown backbone {trial.model.backbone!r} (timm has no such model)")


def check_init_from(trial: TrialConfig, n_species: int) -> None:
    """Every fold this search trains can start from --init-from's checkpoint: the same
    backbone and fold split, and weights that load into a model of `n_species`."""
    import torch

    from trainable.model.sed import SEDModel
    from trainable.training.checkpoint import check_init_source, load_fold_weights
    from trainable.training.fit import Device

    checkpoint = Path(trial.init_from)
    try:
        check_init_source(checkpoint, trial)
        for fold in trial.fold_indices:
            load_fold_weights(SEDModel(trial.model, n_species), checkpoint, fold, Device(torch.device("cpu")))
    except ConfigError as error:
        raise UsageError(f"--init-from: {error}") from None


def check_weights(trial: TrialConfig) -> None:
    """The ImageNet weights load here (timm fetches them once, into its cache), before Ray starts."""
    from trainable.model.sed import create_backbone

    source = trial.model.pretrained_file or "the model hub"
    print(f"[rfcx-tune] loading the ImageNet weights of {trial.model.backbone} (model.pretrained) from {source}",
          flush=True)
    try:
        create_backbone(trial.model)
    except ConfigError as error:
        raise UsageError(str(error)) from None


def check_address(address: str | None) -> None:
    """The Ray cluster this run joins (--address, else RAY_ADDRESS as `ray job submit` sets it)
    answers within the remote timeout. Ray itself would retry for minutes, printing warnings:
    a TCP connect says at once whether anything listens, and gRPC's channel readiness (the GCS
    is a gRPC server) whether what listens answers."""
    import grpc  # Ray's own RPC library

    given = address or os.environ.get("RAY_ADDRESS")  # as search.tuner.session.run_search joins
    if not given or given == "local":
        return
    flag = f"--address {address}" if address else f"RAY_ADDRESS={given}"
    if given.startswith(("http://", "https://")):
        raise UsageError(f"{flag} is a dashboard address (for ray job submit); join a cluster by its GCS"
                         f" address (host:6379, or auto)")
    try:
        timeout = remote_timeout()
        host, port = gcs_host_port(given)
    except (StorageError, ValueError, ConnectionError) as error:
        raise UsageError(f"{flag}: {error}") from None
    # Ray connects to the address resolved (127.0.0.1 becomes this node's IP): so does the probe.
    where = f"{host}:{port}"
    flag += "" if where in given else f" ({where})"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        reason = f"no answer in {timeout:g} s" if isinstance(error, TimeoutError) else error.strerror or error
        raise UsageError(f"{flag}: no Ray cluster there ({reason})") from None
    channel = grpc.insecure_channel(where)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise UsageError(f"{flag}: it accepts connections but did not answer as a Ray cluster in {timeout:g} s"
                         f" (set {REMOTE_TIMEOUT_ENV} to wait longer)") from None
    finally:
        channel.close()


def gcs_host_port(address: str) -> tuple[str, int]:
    """Host and port of a Ray address, `auto` resolved as Ray resolves it (the last `ray start`)."""
    from ray._private.services import canonicalize_bootstrap_address  # what ray.init uses

    client = address.startswith("ray://")  # Ray Client: its own gRPC server, at the address as given
    resolved = address.removeprefix("ray://") if client else canonicalize_bootstrap_address(address)
    host, sep, port = (resolved or "").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("not a Ray address (expected HOST:PORT, ray://HOST:PORT or auto)")
    return host.strip("[]"), int(port)
