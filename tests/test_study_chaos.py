"""Chaos: a 24-trial study with 2 workers while a driver SIGKILLs workers at random moments, some
right after an epoch and some inside a journal write. The study must end by itself, with no wait
over 60 s, exactly its budget of finished trials, every killed trial failed and run again, and no
two finished trials alike. Slow (a minute or two): CI runs it with `-m chaos` (see .ci/run)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState
from test_study import write_spec

from hpexp.study.journal import journal_backend
from hpexp.study.storage import superseded
from hpexp.train import rundir

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

N_TRIALS, KILLS = 24, 12
# Trials long enough (784-100-10 on 50,000 images for 8 epochs, ~3 s on a quiet 2-core machine)
# that the study outlasts the driver's 12 kills wherever it runs: on tiny data a quiet machine
# finished the study before the second kill, and with 4 epochs (1.5 s trials, today's engine)
# before the tenth in 1 run of 6.
EPOCHS = 8
BASE = [
    "network=mlp100",
    "data.n_train=50000",
    "data.n_validation=200",
    "train.batch_size=10",
    f"train.epochs={EPOCHS}",
]
KINDS = ("after an epoch", "inside a journal write", "at random")


@dataclass
class Chaos:
    """The driver's record: each kill (kind, pid, trials that pid was running), the longest time
    the journal stood still while the study ran."""

    kills: list[tuple[str, int, list[int]]] = field(default_factory=list)
    longest_wait: float = 0.0


def workers_of(coordinator: int) -> list[int]:
    """The coordinator's worker processes (spawned children; not multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{coordinator}/task/{coordinator}/children").read_text().split()
    except OSError:
        return []
    pids = []
    for pid in map(int, children):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


def running(study: optuna.Study) -> dict[int, list[tuple[int, int]]]:
    """pid -> [(trial number, last epoch)] of the RUNNING trials."""
    out: dict[int, list[tuple[int, int]]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "pid" in t.user_attrs:
            out.setdefault(t.user_attrs["pid"], []).append((t.number, t.last_step or 0))
    return out


def kill_after_an_epoch(study: optuna.Study, coordinator: int, until: float) -> int | None:
    """Watch the trials' epochs; kill the worker whose trial has just reported one."""
    seen = {pid: dict(trials) for pid, trials in running(study).items()}
    while time.monotonic() < until:
        for pid, trials in running(study).items():
            if any(epoch > seen.get(pid, {}).get(n, epoch) for n, epoch in trials):
                if pid in workers_of(coordinator):
                    os.kill(pid, signal.SIGKILL)
                    return pid
            seen[pid] = dict(trials)
        time.sleep(0.005)
    return None


def kill_inside_a_journal_write(lock: Path, coordinator: int, until: float) -> int | None:
    """Stop a worker at a random moment; if it holds the journal lock, kill it there, else let it go."""
    while time.monotonic() < until:
        pids = workers_of(coordinator)
        if not pids:
            time.sleep(0.05)
            continue
        pid = random.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            try:
                holder = lock.read_text().split()
            except OSError:
                holder = []
            if holder[1:2] == [str(pid)]:
                os.kill(pid, signal.SIGKILL)
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(random.uniform(0.0, 0.02))
    return None


def kill_at_random(coordinator: int, until: float) -> int | None:
    time.sleep(random.uniform(0.0, 1.5))
    while time.monotonic() < until:
        if pids := workers_of(coordinator):
            pid = random.choice(pids)
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    return None


def drive(process: subprocess.Popen, journal: Path, chaos: Chaos) -> None:
    """Kill workers until KILLS kills are done (kinds in turn), then watch the study to its end."""
    while not journal.exists() or os.path.getsize(journal) == 0:
        time.sleep(0.05)
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(journal_backend(journal)))
    last_change, mtime = time.monotonic(), journal.stat().st_mtime_ns
    while process.poll() is None:
        if len(chaos.kills) < KILLS:
            kind = KINDS[len(chaos.kills) % len(KINDS)]
            until = time.monotonic() + 20
            before = running(study)
            if kind == KINDS[0]:
                pid = kill_after_an_epoch(study, process.pid, until)
            elif kind == KINDS[1]:
                pid = kill_inside_a_journal_write(Path(f"{journal}.lock"), process.pid, until)
            else:
                pid = kill_at_random(process.pid, until)
            if pid is not None:
                chaos.kills.append((kind, pid, [n for n, _ in before.get(pid, [])]))
                time.sleep(random.uniform(0.5, 2.0))  # let the study notice, and go on
        else:
            time.sleep(0.2)
        if (now := journal.stat().st_mtime_ns) != mtime:
            mtime, last_change = now, time.monotonic()
        chaos.longest_wait = max(chaos.longest_wait, time.monotonic() - last_change)
        if chaos.longest_wait > 90:  # hung: stop the study, the assertions say so
            process.kill()


@pytest.mark.timeout(1200)
def test_chaos_study_reaches_its_budget_through_random_worker_kills(mnist_dir, tmp_path):
    random.seed(int.from_bytes(os.urandom(4), "little"))
    path = write_spec(
        tmp_path,
        base=BASE,
        n_trials=N_TRIALS,
        workers=2,
        max_restarts=4 * KILLS,
        max_attempts=KILLS + 1,  # a trial may be hit again and again: it must still finish
    )
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(tmp_path)]
    journal = tmp_path / "studies" / "tiny" / "journal.log"
    chaos, started = Chaos(), time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            drive(process, journal, chaos)
            out, err = process.communicate(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
    seconds = time.monotonic() - started
    kinds = {k: sum(kind == k for kind, _, _ in chaos.kills) for k in KINDS}
    print(
        f"\nchaos: {N_TRIALS} trials, 2 workers, {len(chaos.kills)} SIGKILLs {kinds}, {seconds:.0f} s, "
        f"longest journal silence {chaos.longest_wait:.1f} s, "
        f"{err.count('started worker')} restarts, {err.count('released the journal lock')} locks released, "
        f"{err.count('cut a torn last line')} torn lines cut (load {os.getloadavg()[0]:.1f})"
    )
    assert process.returncode == 0, err
    assert len(chaos.kills) >= 10 and all(kinds.values()), chaos.kills
    assert chaos.longest_wait < 60

    trials = optuna.load_study(study_name="tiny", storage=JournalStorage(journal_backend(journal))).trials
    gone = superseded(trials)
    finished = [t for t in trials if t.number not in gone]
    assert len(finished) == N_TRIALS and all(t.state == TrialState.COMPLETE for t in finished)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    killed_pids = {pid for _, pid, _ in chaos.kills}
    killed = [t for t in trials if t.user_attrs.get("pid") in killed_pids and t.state != TrialState.COMPLETE]
    assert killed, "no kill caught a trial"
    for t in killed:
        assert t.state == TrialState.FAIL and "died" in t.user_attrs["fail_reason"], t.user_attrs
        (retry,) = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        kept = {**t.system_attrs.get("fixed_params", {}), **t.params}
        if kept:  # killed before it sampled anything, a drawn trial's retry draws afresh
            # the retry carries them as fixed params (its own params stay empty if it too is killed
            # before it reads them)
            assert {**retry.system_attrs.get("fixed_params", {}), **retry.params} == kept

    numbers = [t.number for t in finished]
    assert len(set(numbers)) == len(numbers)
    assert len({t.user_attrs["run_dir"] for t in finished}) == N_TRIALS
    for t in finished:  # one writer per run directory: every epoch once, the value its trial's
        history = rundir.read_history(Path(t.user_attrs["run_dir"]))
        assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
        assert t.value == max(r["val_accuracy"] for r in history)
    drawn = [tuple(sorted(t.params.items())) for t in finished if not t.user_attrs.get("baseline")]
    assert len(set(drawn)) == len(drawn) == N_TRIALS - 1
