"""Where an experiment lives, and whether every node of a Ray cluster can reach it.

`--storage` is a local path or a URI that pyarrow opens (s3://, gs://, file://), as Ray
Tune's `storage_path` takes it. On a multi-node cluster every trial writes its checkpoints
there from whichever node runs it, so a directory on the head's own disk breaks the first
checkpoint taken on a worker: `shared_storage_problem` says so before anything starts.
"""

from __future__ import annotations

from pathlib import Path

# File systems that other machines mount too (fuse covers s3fs, gcsfuse, sshfs, ...).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "ceph", "glusterfs", "gpfs", "beegfs",
                       "fuse")


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
        point = point.replace("\\040", " ")  # /proc/mounts escapes spaces
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
    if "://" in storage or (nodes <= 1 and not can_add_nodes):
        return None
    fstype = filesystem_type(Path(storage))
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


def read_text(uri: str) -> str | None:
    """A small text file on an object store, or None when it does not exist."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()
