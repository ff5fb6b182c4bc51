"""The study journal's lock: a dead owner's lock is released at once, another host's after a bounded
time, a live owner's never; a torn last line is cut; the journal path is absolute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from test_study import write_spec

from hpexp.study import storage
from hpexp.study.journal import HOST, OwnedLock, journal_backend, process_start
from hpexp.study.spec import load_spec

HOLD = """
import os, sys, time
from hpexp.study.journal import OwnedLock
lock = OwnedLock(sys.argv[1])
lock.acquire()
with open(sys.argv[1], "ab") as f:  # half a line, as if killed inside a write
    f.write(b'{"op_code": 0, "worker_')
    f.flush()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
if sys.argv[3] == "die":
    os._exit(9)
with open(sys.argv[1], "rb+") as f:
    f.truncate(f.seek(0, 2) - 23)
lock.release()
"""


def hold_lock(journal: Path, seconds: float, end: str) -> subprocess.Popen:
    """A process that takes the journal's lock, tears a line, holds it `seconds`, then dies or releases."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(journal), str(seconds), end],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "holding\n"
    return child


def new_study(journal: Path) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=JournalStorage(journal_backend(journal)))


def test_a_dead_owners_lock_is_released_at_once_and_its_torn_line_cut(tmp_path, capfd):
    """Issue row: a worker SIGKILLed inside a journal write left a lock that hung every process."""
    journal = tmp_path / "journal.log"
    new_study(journal).enqueue_trial({"x": 1.0})
    child = hold_lock(journal, 0, "die")
    child.wait()
    assert (tmp_path / "journal.log.lock").exists() and not journal.read_bytes().endswith(b"\n")
    started = time.monotonic()
    s = optuna.load_study(study_name="s", storage=JournalStorage(journal_backend(journal)))
    s.enqueue_trial({"x": 2.0})  # a write: it must take the lock
    assert time.monotonic() - started < 2
    err = [line for line in capfd.readouterr().err.splitlines() if not line.startswith("[I ")]
    assert err == [
        f"hpexp: released the journal lock {journal}.lock: process {child.pid} on {HOST} is gone",
        f"hpexp: cut a torn last line (23 bytes) from {journal}",
    ]
    fresh = optuna.load_study(study_name="s", storage=JournalStorage(journal_backend(journal)))
    assert [t.state.name for t in fresh.get_trials()] == ["WAITING", "WAITING"]  # both, readable
    assert not (tmp_path / "journal.log.lock").exists()


def test_a_zombie_is_not_alive_and_a_live_process_is(tmp_path):
    """An ended process its parent has not reaped yet (a zombie: the state of a worker whose
    adopter does not reap, as in some containers) holds no lock and runs no trial."""
    from hpexp.study.journal import alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not alive(child.pid, process_start(child.pid))  # ended, though its pid still answers
    os.kill(child.pid, 0)
    child.wait()
    assert alive(os.getpid(), process_start(os.getpid()))


def test_a_live_owners_lock_is_waited_for_not_taken(tmp_path, capfd):
    journal = tmp_path / "journal.log"
    s = new_study(journal)
    child = hold_lock(journal, 1.5, "release")
    started = time.monotonic()
    s.enqueue_trial({"x": 1.0})
    waited = time.monotonic() - started
    assert child.wait(timeout=10) == 0
    assert 1.0 < waited < 5 and "released" not in capfd.readouterr().err
    reloaded = optuna.load_study(study_name="s", storage=JournalStorage(journal_backend(journal)))
    assert len(reloaded.trials) == 1


@pytest.mark.parametrize(
    "lock",
    [
        "worker-7.cluster 4242 123456 0123456789abcdef",  # an OwnedLock of another host
        "",  # created, never written (its owner died in between)
        "runs/studies/x/journal.log",  # Optuna's symlink lock, with the relative path the issue found
    ],
    ids=["another host", "empty", "optuna symlink"],
)
def test_a_lock_it_cannot_judge_is_released_after_the_grace_time(tmp_path, capfd, lock):
    journal = tmp_path / "journal.log"
    journal.touch()
    if lock.startswith("runs/"):
        os.symlink(lock, f"{journal}.lock")
    else:
        Path(f"{journal}.lock").write_text(lock)
    backend = journal_backend(journal, grace=1.0)
    started = time.monotonic()
    backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}])
    waited = time.monotonic() - started
    assert 1.0 < waited < 4
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "released the journal lock" in err and "unchanged for 1 s" in err
    assert journal.read_text().count("\n") == 1 and not Path(f"{journal}.lock").exists()


def test_the_same_instance_takes_back_a_lock_it_left(tmp_path):
    """An interrupt between creating the lock and returning leaves it held by this instance."""
    lock = OwnedLock(str(tmp_path / "journal.log"))
    lock.acquire()
    done = threading.Event()
    threading.Thread(target=lambda: (lock.acquire(), done.set()), daemon=True).start()
    assert done.wait(2)
    lock.release()
    assert not (tmp_path / "journal.log.lock").exists()
    assert OwnedLock(str(tmp_path / "journal.log")).owner.split()[:3] == [
        HOST,
        str(os.getpid()),
        str(process_start(os.getpid())),
    ]


def test_journal_path_is_absolute(tmp_path, monkeypatch):
    """Issue row: the lock recorded the journal by a relative path, so stale-lock cleanup never fired."""
    monkeypatch.chdir(tmp_path)
    spec = load_spec(str(write_spec(tmp_path)))
    opened = storage.open_storage(spec, Path("runs/studies/tiny"))
    optuna.create_study(study_name="a", storage=opened)
    monkeypatch.chdir(tmp_path / "runs")  # a relative path would now write elsewhere
    optuna.create_study(study_name="b", storage=opened)
    assert set(optuna.get_all_study_names(storage.open_storage(spec, tmp_path / "runs/studies/tiny"))) == {
        "a",
        "b",
    }
    assert not (tmp_path / "runs/runs").exists()


def test_optuna_calls_the_lock_around_each_append(tmp_path):
    """`JournalFileBackend(path, lock_obj=...)` is public; that it calls `acquire` and `release`
    around every append is what `OwnedLock` relies on: fail loudly if an upgrade changes it."""
    calls: list[str] = []

    class Recording(OwnedLock):
        def acquire(self) -> bool:
            calls.append("acquire")
            assert not (tmp_path / "journal.log").read_bytes().endswith(b"x\n")
            return super().acquire()

        def release(self) -> None:
            calls.append("release")
            super().release()

    path = str(tmp_path / "journal.log")
    backend = JournalFileBackend(path, lock_obj=Recording(path))
    backend.append_logs([{"x": "x"}])
    assert calls == ["acquire", "release"]
    assert list(backend.read_logs(0)) == [{"x": "x"}]


def test_optuna_skips_a_torn_last_line_and_refuses_lines_after_it(tmp_path):
    """Why a torn line must be cut before the next append (Optuna's reader, checked on upgrade)."""
    journal = tmp_path / "journal.log"
    journal.write_bytes(b'{"a": 1}\n{"b": ')
    backend = JournalFileBackend(str(journal))
    assert list(backend.read_logs(0)) == [{"a": 1}]
    journal.write_bytes(b'{"a": 1}\n{"b": {"c": 2}\n{"d": 3}\n')  # the next append after it
    with pytest.raises(ValueError):
        list(JournalFileBackend(str(journal)).read_logs(0))


def test_a_study_left_locked_by_a_killed_worker_runs_at_once(mnist_dir, tmp_path, monkeypatch):
    """Issue row: after a SIGKILLed worker, re-running the study hung until the lock was deleted
    by hand (with a relative --runs). Now the next run releases the lock at once and finishes."""
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, n_trials=2)
    journal = Path("runs/studies/tiny/journal.log")
    journal.parent.mkdir(parents=True)
    new_study(journal)
    hold_lock(journal, 0, "die").wait()
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", "runs"]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    assert done.stderr.count("released the journal lock") == 1 and "is gone" in done.stderr
    assert "It is taking longer" not in done.stderr
    assert "study tiny: 2 complete" in done.stdout


def test_a_lock_whose_owner_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    """A full disk: the lock file was created but its owner line could not be written, and the
    empty lock held every other process up for the grace time (30 s)."""
    import errno

    from hpexp.study import journal

    lock = OwnedLock(str(tmp_path / "journal.log"))

    def no_room(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal.os, "write", no_room)
    with pytest.raises(OSError, match="No space left"):
        lock.acquire()
    monkeypatch.undo()
    assert not (tmp_path / "journal.log.lock").exists()
    assert OwnedLock(str(tmp_path / "journal.log")).acquire()  # at once


CHURN = """
import signal, sys, time
from hpexp.study.journal import OwnedLock

def interrupt(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt

signal.signal(signal.SIGINT, interrupt)
lock = OwnedLock(sys.argv[1], grace=30.0)
print("churning", flush=True)
try:
    while True:  # a worker appending to the journal as fast as it can
        lock.acquire()
        lock.release()
except KeyboardInterrupt:
    pass
started = time.monotonic()
lock.acquire()  # an interrupted worker records its trial: one more append
lock.release()
print(f"{time.monotonic() - started:.3f}", flush=True)
"""


def test_a_signal_at_any_point_of_taking_the_lock_never_leaves_it_unjudgeable(tmp_path):
    """CI row: Ctrl-C reached a worker between the lock file's creation and the writing of its
    owner; the empty lock could not be judged, so the worker's own next append (recording its
    interrupted trial) waited the grace time (30 s) and the study took 40 s to stop. Interrupted
    at random points of a tight acquire/release loop, the process takes the lock again at once,
    and a process killed there leaves a lock the next one takes at once."""
    journal = tmp_path / "journal.log"
    journal.touch()
    waits = []
    for i in range(40):
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHURN), str(journal)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline() == "churning\n"
        time.sleep(0.01 + 0.003 * (i % 7))
        child.send_signal(signal.SIGINT if i % 2 else signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        if i % 2:
            waits.append(float(out))
        started = time.monotonic()
        lock = OwnedLock(str(journal), grace=30.0)
        assert lock.acquire()
        lock.release()
        waits.append(time.monotonic() - started)
    assert max(waits) < 5, waits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.log"]  # killed owners' files swept


def test_without_hard_links_the_lock_is_created_then_written(tmp_path, monkeypatch):
    """A file system that refuses hard links (EPERM) gets the exclusive create-then-write lock."""
    import errno

    from hpexp.study import journal

    def refused(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(journal.os, "link", refused)
    lock, other = OwnedLock(str(tmp_path / "journal.log")), OwnedLock(str(tmp_path / "journal.log"))
    assert lock.acquire()
    assert (tmp_path / "journal.log.lock").read_text() == lock.owner
    assert not other._create()  # held
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
