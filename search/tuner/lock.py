"""One driver per experiment: a lock file, STORAGE/NAME/driver.lock, that a second driver (another
process, another node through shared storage, the same Ray job submitted again) finds and is
refused by, naming the driver that holds it.

The lock is a small JSON file: the driver's host, pid, start time and a random token and, on
Linux, what tells its process apart on that machine (boot id, pid namespace, process start
time). Its modification time (the file's, or the object's as the store records it) is the
heartbeat, renewed every RENEW_S by a daemon thread; it is compared with the reader's clock, so
the clocks of the machines must agree to well within the lease (NTP does). A lock
is stale, its driver gone, when it was not renewed for LEASE_S (any host, any store), or at once
when it was written on this machine by a process that no longer runs (a SIGKILLed driver).

A local path (file://, NFS included) takes the lock by hard-linking a complete temporary file to
its name: the link fails when a lock exists, atomically (on NFS too), and a reader never finds a
part of a lock. A stale lock is removed only by the driver that links it to a name of its own
(one name per stale lock, so a second link fails): of two drivers that judged it stale at the
same moment, one removes it, and then one of them links its own. Without hard links (some FUSE
mounts) the lock is created in place with O_EXCL instead, and a stale one is removed after a
second look (two drivers taking it over in the same millisecond may both win there).

An object store (s3://, gs://) has no conditional write that pyarrow exposes (S3's If-None-Match
and GCS's ifGenerationMatch are not), so a driver reads the lock, writes its own when there is
none (or a stale one), waits SETTLE_S and reads it back: the lock is its own if its token is
still there, else the driver that wrote last holds it. With the stores' strong read-after-write
consistency (S3's since 2020, GCS's always) that leaves one winner unless the writes of two
drivers that read at the same moment land more than SETTLE_S apart (a request stalled for
seconds); and a driver stalled (not killed) for longer than the lease may find its lock taken.
Either way the driver that lost finds out at its next renewal and says so in one line; the two
then share the experiment.

By hand: Ray has no driver lock (a Tune experiment assumes one driver), and the `filelock`
package's flock() dies with its process but is not seen through object stores or most FUSE
mounts, and cannot say who holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs

from search.storage import local_path

LOCK_FILE = "driver.lock"
RENEW_S = 15.0  # how often the driver renews its lock's heartbeat
LEASE_S = 60.0  # a lock not renewed for this long is stale: 4 renewals, so one failed renewal is harmless
SETTLE_S = 5.0  # object stores: how long a driver waits between writing its lock and reading it back
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)  # what link() says where it cannot
TAKE_S = 10.0  # how long a driver tries to take a lock that keeps changing hands before it gives up
CLAIM_S = 10.0  # a claim on a stale lock (local) older than this was left by a driver killed while removing it


class DriverLocked(Exception):
    """Another driver runs the experiment: one line naming it."""


@dataclass(frozen=True)
class Holder:
    """What a lock says of the driver that holds it."""

    host: str
    pid: int
    started: float  # time.time() when it took the lock
    token: str  # tells one taking of the lock from another
    machine: str | None = None  # boot id and pid namespace: the pid's meaning (Linux; None elsewhere)
    start_ticks: str | None = None  # the process's start time since boot: its pid, never reused

    @classmethod
    def this_process(cls) -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(), started=time.time(), token=uuid.uuid4().hex,
                   machine=machine(), start_ticks=start_ticks(os.getpid()))

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a lock's text names, or None for text that is not a lock (a torn or foreign file)."""
        try:
            fields = json.loads(text)
            return cls(**{field.name: fields[field.name] for field in dataclasses.fields(cls)
                          if field.name in fields})
        except (ValueError, TypeError):
            return None

    def text(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def gone(self) -> bool:
        """Known to have ended: a process of this machine (same host, boot and pid namespace) that
        no longer runs. Elsewhere only the lease tells."""
        if self.host != socket.gethostname():
            return False
        here = machine()
        if here is None or self.machine is None:  # no /proc: the pid alone
            return not pid_runs(self.pid)
        return self.machine == here and start_ticks(self.pid) != self.start_ticks

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host} since {since}"


def machine() -> str | None:
    """This boot of this machine, in this pid namespace (a container has its own), or None without /proc."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def start_ticks(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None when it does not run (or is a
    zombie: killed, not yet reaped) or there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return None if fields[0] == "Z" else fields[19]  # state is field 3, starttime field 22


def pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale(holder: Holder | None, age: float) -> bool:
    """A lock whose driver is gone: not renewed for LEASE_S, or its process ended on this machine.
    A lock that cannot be read (torn, foreign) is judged by its age alone."""
    return age > LEASE_S or (holder is not None and holder.gone())


def refusal(experiment: str, holder: Holder | None, age: float, where: str) -> DriverLocked:
    who = "a driver whose lock cannot be read" if holder is None else holder.describe()
    return DriverLocked(f"experiment {experiment} is already running, driven by {who} (lock {where}, renewed"
                        f" {max(age, 0):.0f} s ago); once that driver stops, the same command resumes it")


class FileLock:
    """The lock on a local (or mounted) file system."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / LOCK_FILE
        self.fd: int | None = None  # the lock file, held open: its heartbeat is renewed through it
        self.created: list[Path] = []  # the folders taking the lock made, removed on release when empty

    def take(self, me: Holder, experiment: str) -> None:
        try:
            deadline = time.monotonic() + TAKE_S
            while not self.place(me):
                self.clear_stale(experiment)  # or DriverLocked
                if time.monotonic() > deadline:
                    raise OSError(f"could not take {self.path} in {TAKE_S:g} s: other drivers kept taking it")
        except BaseException:  # refused: a folder made for the lock is not left behind empty
            self.remove_created()
            raise

    def place(self, me: Holder) -> bool:
        """Put this driver's lock in place unless there is one; whether it did."""
        self.make_folder()
        temp = self.folder / f".{LOCK_FILE}.{me.token}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileNotFoundError:  # the folder was removed by a driver that just left it: made again next time
            return False
        try:
            os.write(fd, me.text().encode())
            os.fsync(fd)
            os.link(temp, self.path)
            self.fd, fd = fd, -1
            return True
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in NO_HARD_LINKS:
                raise
            return self.create(me)
        finally:
            if fd >= 0:
                os.close(fd)
            temp.unlink(missing_ok=True)

    def create(self, me: Holder) -> bool:
        """The lock created in place, exclusively, where the file system has no hard links (some
        FUSE mounts): a reader may find it empty for a moment (and judges it by its age)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        os.write(fd, me.text().encode())
        os.fsync(fd)
        self.fd = fd
        return True

    def make_folder(self) -> None:
        missing = [folder for folder in (self.folder, *self.folder.parents) if not folder.exists()]
        for folder in reversed(missing):
            try:
                folder.mkdir()
                self.created.append(folder)
            except FileExistsError:
                pass

    def clear_stale(self, experiment: str) -> None:
        """Remove the lock if it is stale; raises DriverLocked when it is not.

        Of the drivers that judged one stale lock at the same time, the one that links it to a
        name of its own (the lock's inode and time: one name per stale lock) removes it; the
        others find that name taken and try again once it is removed.
        """
        try:  # its status and its text from one open file: a lock that replaced the stale one between a
            # stat and a read (with the stale one's inode number, which file systems reuse) would be judged
            # by the stale one's age, and removed in the claim below
            with open(self.path, "rb") as held:
                seen = os.fstat(held.fileno())
                text = held.read().decode(errors="replace")
        except FileNotFoundError:  # released meanwhile
            return
        holder, age = Holder.parse(text), time.time() - seen.st_mtime
        if not stale(holder, age):
            raise refusal(experiment, holder, age, str(self.path))
        claim = self.folder / f".{LOCK_FILE}.{seen.st_ino}.{seen.st_mtime_ns}.stale"
        try:
            os.link(self.path, claim)
        except FileNotFoundError:  # removed meanwhile
            return
        except FileExistsError:  # another driver removes it
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.stat(claim).st_ctime > CLAIM_S:  # (a link sets ctime) its driver died midway
                    claim.unlink()
            time.sleep(0.01)
            return
        except OSError as error:
            if error.errno not in NO_HARD_LINKS:
                raise
            claim = self.path  # no hard links: checked again just before it goes (two drivers at once may both win)
        try:
            now = os.stat(claim)
            same = (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns)
            if same and claim.read_text(errors="replace") == text:
                self.path.unlink()  # the stale lock judged: no other driver removes it while the claim is ours
        except FileNotFoundError:
            pass
        finally:
            if claim != self.path:
                claim.unlink(missing_ok=True)

    def renew(self, me: Holder) -> bool:
        assert self.fd is not None
        os.utime(self.fd)
        return self.owned()

    def owned(self) -> bool:
        try:
            return self.fd is not None and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def release(self, me: Holder) -> None:
        if self.owned():
            self.path.unlink(missing_ok=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.remove_created()

    def remove_created(self) -> None:
        for folder in reversed(self.created):  # an experiment refused, or never written: left as found
            try:
                folder.rmdir()
            except OSError:  # not empty: the experiment's files, or another experiment's
                break


class StoreLock:
    """The lock as an object in an object store."""

    def __init__(self, experiment: str):
        self.filesystem, folder = pyarrow.fs.FileSystem.from_uri(experiment)
        self.path = f"{folder.rstrip('/')}/{LOCK_FILE}"
        self.where = f"{experiment.rstrip('/')}/{LOCK_FILE}"

    def read(self) -> tuple[Holder | None, float] | None:
        """The lock's holder and age, or None when there is no lock."""
        info = self.filesystem.get_file_info(self.path)
        if info.type != pyarrow.fs.FileType.File:
            return None
        try:
            with self.filesystem.open_input_stream(self.path) as stream:
                text = stream.read().decode(errors="replace")
        except FileNotFoundError:  # deleted since
            return None
        return Holder.parse(text), time.time() - info.mtime.timestamp()

    def write(self, me: Holder) -> None:
        with self.filesystem.open_output_stream(self.path) as stream:
            stream.write(me.text().encode())

    def take(self, me: Holder, experiment: str) -> None:
        found = self.read()
        if found is not None and not stale(*found):
            raise refusal(experiment, *found, self.where)
        try:
            self.write(me)
            time.sleep(SETTLE_S)  # a driver that read the same lock (or none) has written by now: the last one wins
            found = self.read()
        except BaseException:  # interrupted while it settles: leave no lock of ours
            with contextlib.suppress(OSError):
                self.release(me)
            raise
        if found is None:
            raise OSError(f"{self.where} was removed while this driver took it")
        if found[0] is None or found[0].token != me.token:
            raise refusal(experiment, *found, self.where)

    def renew(self, me: Holder) -> bool:
        if not self.owned(me):
            return False
        self.write(me)  # a new modification time
        return True

    def owned(self, me: Holder) -> bool:
        found = self.read()
        return found is not None and found[0] is not None and found[0].token == me.token

    def release(self, me: Holder) -> None:
        if self.owned(me):
            self.filesystem.delete_file(self.path)


class DriverLock:
    """The experiment's lock, held: renewed by a daemon thread until released (a context manager)."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.me = Holder.this_process()
        folder = local_path(experiment)
        self.lock = FileLock(folder) if folder is not None else StoreLock(experiment)
        self.done = threading.Event()
        self.renewer = threading.Thread(target=self.keep, name="driver-lock", daemon=True)

    def take(self) -> DriverLock:
        self.lock.take(self.me, self.experiment)
        self.renewer.start()
        return self

    def keep(self) -> None:
        while not self.done.wait(RENEW_S):
            try:
                held = self.lock.renew(self.me)
            except OSError:  # a store that did not answer this once: the lease outlasts a few
                continue
            if not held:
                print(f"warning: another driver took over the lock of experiment {self.experiment} (this one"
                      f" stalled past the {LEASE_S:g} s lease, or their writes raced on an object store); the two"
                      f" now write the same experiment: stop one of them", file=sys.stderr, flush=True)
                return

    def release(self) -> None:
        self.done.set()
        if self.renewer.is_alive():  # not for ever: a renewal stuck on a silent store must not keep the driver
            self.renewer.join(timeout=RENEW_S)
        with contextlib.suppress(OSError):  # a stale lock is taken over by the next driver
            self.lock.release(self.me)

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def hold(experiment: str) -> DriverLock:
    """Take the lock of `experiment` (a path or a URI), taking over a stale one.

    Raises:
        DriverLocked: another driver holds it.
        OSError: the storage cannot be written.
    """
    return DriverLock(experiment).take()
