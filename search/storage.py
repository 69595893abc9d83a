"""Where an experiment lives, and whether every node of a Ray cluster can reach it.

`--storage` is a local path or a URI that pyarrow opens (s3://, gs://, file://), as Ray
Tune's `storage_path` takes it. On a multi-node cluster every trial writes its checkpoints
there from whichever node runs it, so a directory on the head's own disk breaks the first
checkpoint taken on a worker: `shared_storage_problem` says so before anything starts.

`check_storage` refuses a scheme pyarrow (and so Ray) is not used with here, and asks an object
store once, with a timeout, before anything else reads it: pyarrow itself has none that
covers a silent endpoint or a bucket GCS keeps retrying (its retry limit is 15 minutes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DEFAULT_STORAGE = "experiments"  # relative to the working directory
# File systems that other machines mount too (fuse covers s3fs, gcsfuse, sshfs, ...).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "ceph", "glusterfs", "gpfs", "beegfs",
                       "fuse")
SCHEMES = ("s3", "gs", "gcs", "file")  # the URIs --storage takes (pyarrow's S3 and GCS, and local paths)
REMOTE_TIMEOUT_ENV = "RFCX_TUNE_REMOTE_TIMEOUT_S"  # how long a remote call before the search may take
DEFAULT_REMOTE_TIMEOUT_S = 30.0
# Run in a child process: a pyarrow call stuck on a silent store cannot be cancelled, and a
# thread left in one keeps the process from exiting (pyarrow's S3 finaliser waits for it).
PROBE = """
import sys
import pyarrow.fs
try:
    filesystem, path = pyarrow.fs.FileSystem.from_uri(sys.argv[1])
    filesystem.get_file_info(path)
except Exception as error:
    print(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    sys.exit(1)
"""


class StorageError(Exception):
    """--storage cannot be used: one line naming the problem."""


def remote_timeout() -> float:
    """Seconds a remote call before the search may take (REMOTE_TIMEOUT_ENV, else the default).

    Raises:
        StorageError: the variable is not a positive number.
    """
    text = os.environ.get(REMOTE_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_REMOTE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise StorageError(f"{REMOTE_TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


def check_storage(storage: str) -> None:
    """A supported scheme and, for an object store, one that answers within `remote_timeout()`.

    Raises:
        StorageError: an unsupported scheme, a store that did not answer, or its error.
    """
    scheme = storage.partition("://")[0] if "://" in storage else ""
    if scheme and scheme not in SCHEMES:
        raise StorageError(f"--storage {storage}: {scheme}:// is not supported; give a path, or"
                           f" {', '.join(f'{s}://' for s in SCHEMES if s != 'file')} or file://")
    local = local_path(storage)
    if local is not None:
        existing = next(path for path in (local, *local.parents) if path.exists() or path == path.parent)
        if not existing.is_dir():
            raise StorageError(f"--storage {storage}: {existing} is a file, not a folder")
    else:
        probe_store(storage, remote_timeout())


def probe_store(storage: str, timeout: float) -> None:
    """Ask the object store for the storage's root once, in a child process killed after `timeout` s."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, storage], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StorageError(f"--storage {storage}: {store_name(storage)} did not answer in {timeout:g} s"
                           f" (set {REMOTE_TIMEOUT_ENV} to wait longer)") from None
    if done.returncode != 0:
        problem = (done.stdout.strip() or done.stderr.strip() or "failed").splitlines()[-1]
        raise StorageError(f"--storage {storage}: cannot read it: {problem}")


def store_name(storage: str) -> str:
    """The object store a URI names, for messages: its endpoint when the URI overrides it."""
    parts = urlsplit(storage)
    endpoint = parse_qs(parts.query).get("endpoint_override")
    kind = {"s3": "S3", "gs": "Google Cloud Storage", "gcs": "Google Cloud Storage"}.get(parts.scheme, parts.scheme)
    return f"{kind} at {endpoint[0]}" if endpoint else f"{kind} (bucket {parts.netloc})"


def normalise(storage: str) -> str:
    """A URI as given; a path made absolute (Ray and the trials' nodes need absolute paths)."""
    return storage if "://" in storage else str(Path(storage).resolve())


def user_cache_dir() -> Path:
    """rfcx-tune's folder in the user's cache (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rfcx-tune"


def local_copy_dir(storage: str) -> Path:
    """Where the reports of experiments on the object store `storage` are written on this
    machine before they are uploaded (outside any local --storage, so that a local
    `--resume` never mistakes a copy for an experiment)."""
    parts = re.sub(r"[^\w.\-/]", "_", storage.replace("://", "/", 1)).split("/")
    return user_cache_dir().joinpath("reports", *(part for part in parts if part not in ("", ".", "..")))


def is_remote(storage: str) -> bool:
    """True for object stores (s3://, gs://, ...); `file://` and plain paths are local."""
    return "://" in storage and not storage.startswith("file://")


def local_path(storage: str) -> Path | None:
    """The storage as a path on this machine, or None for an object store."""
    if is_remote(storage):
        return None
    return Path(storage.removeprefix("file://"))


def filesystem_type(path: Path) -> str:
    """The type of the file system holding `path` (ext4, nfs4, ...), from /proc/mounts.

    By hand: psutil, which does this, is not among Ray Tune's dependencies, and the rule is
    a few lines: the mount point that is the longest prefix of the path.
    """
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    path = path.resolve()
    best, kind = "", "unknown"
    for point, fstype in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda code: chr(int(code.group(1), 8)), point)  # /proc/mounts escapes
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best):
            best, kind = point, fstype
    return kind


def is_network_filesystem(fstype: str) -> bool:
    return fstype.split(".")[0] in NETWORK_FILESYSTEMS


def shared_storage_problem(storage: str, nodes: int, can_add_nodes: bool) -> str | None:
    """Why `storage` cannot hold the checkpoints of a cluster with `nodes` alive nodes (and
    maybe more to come), or None when it can.

    Object stores always can. A `file://` URI is taken at its word: a path every node mounts.
    A plain path must be on a network file system once the cluster has (or can get) more than
    one node.
    """
    local = local_path(storage)
    if local is None or storage.startswith("file://") or (nodes <= 1 and not can_add_nodes):
        return None
    fstype = filesystem_type(local)
    if is_network_filesystem(fstype):
        return None
    where = f"this Ray cluster has {nodes} nodes" if nodes > 1 else "this Ray cluster's autoscaler adds nodes"
    return (f"--storage {storage} is on this node's own disk ({fstype}) but {where}: trials on the other"
            f" nodes could not write their checkpoints there. Use --storage s3://BUCKET/PREFIX (or gs://...),"
            f" or a path every node mounts (NFS; file:///PATH for one not detected as shared)")


def upload(local_dir: Path, storage_dir: str) -> None:
    """Copy the files of `local_dir` (not its subdirectories) to `storage_dir` on an object store."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage_dir)
    filesystem.create_dir(root, recursive=True)
    for path in sorted(local_dir.iterdir()):
        if path.is_file():
            pyarrow.fs.copy_files(str(path), f"{root}/{path.name}", destination_filesystem=filesystem)


def download(storage_dir: str, local_dir: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the files of `storage_dir` on an object store (not its subdirectories) into
    `local_dir`, except those the local copy has in a newer version and those named in `skip`."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    for info in filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        local = local_dir / info.base_name
        newer_here = local.exists() and local.stat().st_mtime >= info.mtime.timestamp()
        if info.type == pyarrow.fs.FileType.File and not newer_here and info.base_name not in skip:
            pyarrow.fs.copy_files(info.path, str(local), source_filesystem=filesystem)


def read_text(location: str) -> str | None:
    """A small text file (a path or a URI), or None when it does not exist.

    Raises:
        OSError: the store cannot be reached (no credentials, no such bucket, ...).
    """
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(normalise(location))
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def newest_with(storage: str, filename: str) -> str | None:
    """The name of the newest folder of `storage` that holds `filename`, or None.

    Raises:
        OSError: the store cannot be reached.
    """
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(normalise(storage))
    folders = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    found = [info for info in filesystem.get_file_info([f"{folder.path}/{filename}" for folder in folders
                                                        if folder.type == pyarrow.fs.FileType.Directory])
             if info.type == pyarrow.fs.FileType.File]
    newest = max(found, key=lambda info: info.mtime, default=None)
    return None if newest is None else Path(newest.path).parent.name
