"""The run directory: the one format every training run writes, whoever started it.

    config.yaml    the resolved config, with the chosen option of every config group
    history.csv    one row per epoch (rewritten after every epoch, so a killed run keeps its curve)
    summary.json   status, stop reason, best epoch and its record, final record, seconds, versions
    checkpoint.npz while training: the state to resume from (hpexp.train.checkpoint), removed
                   when the run ends; kept when it is interrupted
    weights.npz    optional: the final parameters, layer by layer (a dense layer's weights as the
                   book's (n_out, n_in), then its biases (1, n_out); conv filters (filters, c, kh, kw))

Every file is written atomically (a temporary file in the same folder, then os.replace), so a reader
never sees half a file, with SIGINT and SIGTERM held until it is written (`signals_held`); a file
several processes add to is read, changed and written under its update lock (`updating`). A new run
gets a folder of its own: `new_run_dir` names it by the time plus a short random suffix and creates
it exclusively, so runs started in the same second never share one.

While a run trains, its process holds a lock on `.lock` in the folder (`RunLock`). The lock dies
with the process, however it ends (kill -9 included), so `read_summary` reports a run whose summary
still says `running` but whose lock nobody holds as `interrupted`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHECKPOINT",
    "RunLock",
    "HistoryWriter",
    "history_csv",
    "describe",
    "disk_full",
    "new_run_dir",
    "npz_bytes",
    "read_history",
    "read_summary",
    "signals_held",
    "updating",
    "write_atomic",
    "write_history",
    "write_summary",
    "write_weights",
]

Record = dict[str, Any]
CHECKPOINT = "checkpoint.npz"  # a run's last saved state while it trains (hpexp.train.checkpoint)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own 0600 would hide runs from others


def new_run_dir(parent: str | Path) -> Path:
    """A fresh folder PARENT/<date>_<time>_<4 hex digits>, created here and by no one else."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    while True:
        path = parent / f"{stamp}_{secrets.token_hex(2)}"
        try:
            path.mkdir()  # no exist_ok: whoever creates the folder owns it
        except FileExistsError:
            continue
        return path


_HELD = (signal.SIGINT, signal.SIGTERM)
_holding: set[int] = set()  # the main thread, inside `signals_held`


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM arriving in the block are delivered when it ends, to the handlers there
    were before it. Python runs a handler between any two bytecodes, and an exception it raises
    inside a library's bookkeeping can leave it broken: inside np.savez, a zip file with a writing
    handle still open, which raises again when closed or collected. Blocks nest. Python handles
    signals in the main thread only: in another thread the block does nothing (a thread is stopped
    at safe points instead, `hpexp.train.loop.request_stop`)."""
    me = threading.get_ident()
    if me in _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    saved: dict[int, Any] = {}
    open_ = True

    def hold(signum: int, frame: Any) -> None:
        if open_:
            received.append(signum)
        else:  # the block has ended but this handler is not yet replaced: act as the old one
            _deliver(signum, saved[signum], frame)

    try:
        for s in _HELD:
            saved[s] = signal.getsignal(s)
            signal.signal(s, hold)
        _holding.add(me)
        yield
    finally:  # a signal is held until its old handler is back
        _holding.discard(me)
        try:
            _restore(list(saved.items()))
        finally:
            open_ = False
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def _restore(handlers: list[tuple[int, Any]]) -> None:
    """Each handler is set again even when one set before it raises (its signal came just then)."""
    if handlers:
        (signum, handler), rest = handlers[0], handlers[1:]
        try:
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        finally:
            _restore(rest)


def _deliver(signum: int, handler: Any, frame: Any) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler != signal.SIG_IGN:  # the default action (SIG_DFL, or a handler set outside Python)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def npz_bytes(*arrays: np.ndarray, **named: np.ndarray) -> bytes:
    """`np.savez` into memory, with signals held: an interrupted np.savez leaves a zip file that
    raises when collected (`signals_held`)."""
    buffer = io.BytesIO()
    with signals_held():
        np.savez(buffer, *arrays, **named)  # type: ignore[arg-type]
    return buffer.getvalue()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` whole or not at all, with signals held until it is written (`signals_held`); a
    failed write (a full disk) leaves the old file as it was and raises an OSError that names
    `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_held():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            _name(e, path)
            raise


@contextlib.contextmanager
def updating(path: Path) -> Iterator[None]:
    """Hold `path`'s update lock (an flock on `.NAME.lock` beside it) while the body reads, changes
    and rewrites the file: two processes adding to one table or record (two commands at once) each
    find the other's addition, where read-then-write alone loses one of them. The lock dies with its
    process; the lock file stays (empty), so a waiting process never takes a lock file unlinked
    under it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, _MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def disk_full(e: BaseException) -> bool:
    """Whether `e` is a write that found no room (a full disk or a used-up quota): no run's fault,
    and nothing goes on until space is freed."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def describe(e: OSError) -> str:
    """`No space left on device: PATH` (the file when the error names one)."""
    return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else (e.strerror or str(e))


def _name(e: BaseException, path: Path) -> None:
    """Raise an OSError that says which file it met, when `e` names none (a write's ENOSPC)."""
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
        raise OSError(e.errno, e.strerror, str(path)) from e


def history_csv(history: Sequence[Record]) -> str:
    columns = list(dict.fromkeys(key for record in history for key in record))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def write_history(run_dir: Path, history: Sequence[Record]) -> None:
    write_atomic(Path(run_dir) / "history.csv", history_csv(history))


class HistoryWriter:
    """Appends one record per epoch to history.csv, so a killed run keeps every finished epoch.

    The header and first row are written atomically; later rows are appended and flushed (a run of
    thousands of epochs must not rewrite the whole file each epoch). A row cut short by a crash is
    skipped by `read_history`."""

    def __init__(self, run_dir: Path, history: Sequence[Record] = ()) -> None:
        """`history`: the rows so far (a resumed run's), written at once in place of the file."""
        self.path = Path(run_dir) / "history.csv"
        self.columns: list[str] | None = None
        if history:
            write_history(run_dir, history)
            self.columns = list(history[0])

    def append(self, record: Record) -> None:
        if self.columns is None:
            self.columns = list(record)
            write_atomic(self.path, history_csv([record]))
            return
        out = io.StringIO()
        csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n").writerow(record)
        try:
            with self.path.open("a") as f:  # a row cut short by a full disk is skipped when read
                f.write(out.getvalue())
                f.flush()
        except OSError as e:
            _name(e, self.path)
            raise


def write_summary(run_dir: Path, summary: Record) -> None:
    write_atomic(Path(run_dir) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def write_weights(run_dir: Path, params: Sequence[np.ndarray]) -> None:
    write_atomic(Path(run_dir) / "weights.npz", npz_bytes(*params))


def read_history(run_dir: Path) -> list[Record]:
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
            for row in csv.DictReader(f)
            if None not in row.values() and None not in row  # a row cut short by a crash
        ]


def read_summary(run_dir: Path) -> Record:
    """summary.json; a run that says `running` but whose process is gone reads as `interrupted`."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {"status": "unknown"}
    if summary.get("status") == "running" and RunLock.abandoned(Path(run_dir), summary):
        who = f"pid {summary.get('pid')} on {summary.get('host')}"
        summary |= {"status": "interrupted", "stop_reason": f"the process ({who}) ended while training"}
    return summary


class RunLock:
    """Held by the process training a run (see the module docstring); one holder at a time."""

    NAME = ".lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / self.NAME
        self.fd: int | None = None

    def acquire(self, timeout: float = 2.0) -> None:
        """Take the lock, waiting up to `timeout` s (a reader may hold it for a moment); raises
        BlockingIOError if another process trains this run."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _MODE)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise
                time.sleep(0.05)
                continue
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    @staticmethod
    def owner() -> Record:
        """What a `running` summary records of the process that trains the run."""
        return {"pid": os.getpid(), "host": socket.gethostname()}

    @classmethod
    def abandoned(cls, run_dir: Path, summary: Record) -> bool:
        """Whether a `running` run's process is gone. Only this host can tell: a run of another
        machine (on a shared file system) reads as running."""
        if summary.get("host") != socket.gethostname():
            return False
        path = run_dir / cls.NAME
        if not path.exists():  # no lock, no telling
            return False
        import fcntl

        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True
