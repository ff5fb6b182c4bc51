"""The study's Journal file and its lock: a lock that names its owner, so a dead owner never hangs a study.

Optuna's `JournalFileBackend` appends each operation to `journal.log` under a lock file. Its own
locks do not say who holds them: one left by a killed process is forced only after its mtime has
stood still for a grace period, and the symlink lock with a relative journal path never is (its
link does not resolve, so the mtime is never read). `OwnedLock` writes `host pid start-time id`
into a file of its own and hard-links it as the lock (so a lock never exists without its owner,
whenever a signal or a kill lands), and a process waiting for it

- releases at once a lock whose owner ran on this host and is gone (pid gone, or reused by a
  process with another start time);
- releases a lock it cannot judge (another host's, one still empty, or Optuna's own symlink lock)
  once it has stood unchanged for `grace` seconds;

each with a one-line notice on stderr; and then, holding the lock, cuts a torn last line the dead
owner may have left in the journal (Optuna would otherwise refuse every line written after it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import time
import uuid
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

__all__ = ["HOST", "OwnedLock", "alive", "journal_backend", "process_start"]

HOST = socket.gethostname()
GRACE = 30.0  # seconds a lock of another host must stand unchanged before it is taken as abandoned


def journal_backend(path: Path, grace: float = GRACE) -> JournalFileBackend:
    """The Journal file at `path` (made absolute) with an `OwnedLock`."""
    path = Path(path).resolve()
    return JournalFileBackend(str(path), lock_obj=OwnedLock(str(path), grace))


def _stat(pid: int, field: int) -> str | None:
    """Field `field` of /proc/PID/stat counted after the command name (Linux), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), or None."""
    return _stat(pid, 19)


def alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` of this host runs, and is the one that started at `started`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _stat(pid, 0) == "Z":  # ended; its parent (or whoever adopted it) has not reaped it yet
        return False
    return started is None or process_start(pid) in (None, started)  # a reused pid is another process


class OwnedLock(JournalFileOpenLock):
    """A journal lock file holding `host pid start id` of its owner (see the module docstring).

    Optuna calls `acquire` and `release` around each append (`JournalFileBackend.append_logs`);
    a `JournalStorage` appends under its own thread lock, so one instance is held once at a time."""

    def __init__(self, journal: str, grace: float = GRACE) -> None:
        super().__init__(journal, grace_period=None)
        self.journal, self.path, self.grace = journal, journal + ".lock", grace
        self.owner = f"{HOST} {os.getpid()} {process_start(os.getpid())} {uuid.uuid4().hex}"
        self._torn = False  # a dead owner was released: check the journal's last line
        host, pid, start, key = self.owner.split()
        self.spare = f"{self.path}.{host}.{pid}.{start}.{key}.owner"  # written, then linked as the lock
        self._links = True
        self._sweep()

    def _sweep(self) -> None:
        """Remove the owner files that processes of this host, killed while taking the lock, left
        (judged by their names: a kill may have come before the owner was written)."""
        lock = Path(self.path)
        for spare in lock.parent.glob(lock.name + ".*.owner"):
            parts = spare.name[len(lock.name) + 1 : -len(".owner")].rsplit(".", 3)
            if len(parts) != 4:
                continue
            host, pid, start, _ = parts
            if host == HOST and pid.isdigit() and not alive(int(pid), None if start == "None" else start):
                with contextlib.suppress(FileNotFoundError):
                    spare.unlink()

    def acquire(self) -> bool:
        seen, since, delay = None, time.monotonic(), 0.001
        while True:
            if self._create():
                if self._torn:
                    self._cut_torn_line()
                return True
            found = self._holder()
            if found is None:
                continue  # released meanwhile
            holder = found[0]
            if holder == self.owner:
                return True  # ours, left by an interrupted release: this instance holds nothing else
            if found != seen:  # another owner, or the same one again: it is alive
                seen, since = found, time.monotonic()
            if self._abandoned(holder, time.monotonic() - since):
                self._release_abandoned(holder, time.monotonic() - since)
                continue
            time.sleep(delay)
            delay = min(2 * delay, 0.05)

    def release(self) -> None:
        if _read(self.path) == self.owner:
            os.unlink(self.path)

    def _create(self) -> bool:
        """Create the lock file with its owner already in it: the owner is written to a file of this
        instance's own, which is then hard-linked as the lock (a link is made whole or not at all).
        Created empty and then written, a lock left by a signal or a kill between the two could not
        be judged, and held every process up for the grace time, the interrupted one included."""
        if self._links:
            self._write(self.spare)
            try:
                os.link(self.spare, self.path)
            except (FileExistsError, FileNotFoundError):  # held (or the spare swept: written again)
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._links = False  # a file system without hard links: create, then write
            else:
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spare)
        try:
            self._write(self.path, exclusive=True)
        except FileExistsError:
            return False
        return True

    def _write(self, path: str, exclusive: bool = False) -> None:
        """Write the owner to `path`; on a failure (a full disk) leave no file behind."""
        flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)
        try:
            os.write(fd, self.owner.encode())
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)

    def _holder(self) -> tuple[str, int] | None:
        """The lock file's content ("" while being written) and mtime, or None if there is none."""
        try:
            mtime = os.lstat(self.path).st_mtime_ns
        except FileNotFoundError:
            return None
        return _read(self.path), mtime

    def _abandoned(self, holder: str, unchanged: float) -> bool:
        host, pid, started = _parse(holder)
        if host == HOST and pid is not None:
            return not alive(pid, started)
        return unchanged > self.grace

    def _release_abandoned(self, holder: str, unchanged: float) -> None:
        """Remove the lock if it still is `holder`'s (rename first, so one process removes it)."""
        aside = f"{self.path}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != holder:
            _restore(aside, self.path)  # a new owner took it meanwhile: give it back
            return
        os.unlink(aside)
        self._torn = True
        host, pid, _ = _parse(holder)
        who = f"process {pid} on {host}" if pid is not None else holder or "an unnamed owner"
        why = "is gone" if host == HOST else f"held it unchanged for {unchanged:.0f} s"
        print(f"hpexp: released the journal lock {self.path}: {who} {why}", file=sys.stderr, flush=True)

    def _cut_torn_line(self) -> None:
        """Truncate the journal to its last complete line (a dead writer may have left half a line)."""
        self._torn = False
        with open(self.journal, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
            if not tail or tail.endswith(b"\n"):
                return
            keep = size - len(tail) + tail.rfind(b"\n") + 1
            f.truncate(keep)
            os.fsync(f.fileno())
        print(
            f"hpexp: cut a torn last line ({size - keep} bytes) from {self.journal}",
            file=sys.stderr,
            flush=True,
        )


def _parse(holder: str) -> tuple[str | None, int | None, str | None]:
    parts = holder.split()
    if len(parts) != 4 or not parts[1].isdigit():
        return None, None, None
    return parts[0], int(parts[1]), None if parts[2] == "None" else parts[2]


def _read(path: str) -> str:
    """A lock file's content: its owner, "" while being written, or Optuna's symlink lock."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return "an Optuna symlink lock"
        with open(path, "rb") as f:
            return f.read(256).decode(errors="replace")
    except FileNotFoundError:
        return ""


def _restore(aside: str, path: str) -> None:
    try:
        os.link(aside, path)
    except OSError:
        pass  # someone else holds a fresh lock already; the one set aside is lost with its owner's
    os.unlink(aside)
