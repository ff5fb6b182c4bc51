"""The coordinator of a study on one machine: start its worker processes, replace any that dies,
show progress, stop them all promptly on Ctrl-C or SIGTERM, and end with an exit status that says
whether the study finished. Workers stop too when the coordinator itself is killed (SIGKILL): their
trials are failed and enqueued again, as on Ctrl-C.

A worker that dies (killed, or ended by an error) has its running trials failed and enqueued again
(`storage.fail_stale`), and is replaced while trials wait, at most `max_restarts` times in all (a
line on stderr says so each time). Exit status of `hpexp study`: 0 when the budget is done (or the
spec's timeout stopped new trials, or the rest runs on other machines); 1 when the study cannot
finish here (its workers kept dying, or no trial completed), with the reason on stderr; 2 for bad
input; 130 on Ctrl-C (SIGINT) and 143 on SIGTERM, after one line. In every case the same command
resumes the study. A study started with SIGINT ignored (`hpexp study ... &` in a shell script) keeps
ignoring it, workers too, as Python and `hpexp train` do; SIGTERM stops it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NoReturn

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hpexp.study import launchers, pbt
from hpexp.study.progress import Display, _best, summary_text
from hpexp.study.spec import compose_trial, population_size, tpe_startup
from hpexp.study.storage import fail_stale, mask, study_dir, unclaimed
from hpexp.study.workers import prepare, work
from hpexp.train import loggers, rundir

__all__ = ["Interrupted", "Pool", "search"]

STOP_WAIT = 10.0  # seconds interrupted workers get to record their trials before they are killed
DISK_FULL = 75  # a worker's exit status when it found no room to write (EX_TEMPFAIL): not restarted


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the coordinator."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def search(
    spec: DictConfig, runs: Path = Path("runs"), *, join: bool = False, quiet: bool = False
) -> optuna.Study:
    """Run the study: `spec.workers` processes (spawned, one BLAS thread each), replaced when one
    dies, with a progress display; raises SystemExit(1) if the study cannot finish here."""
    study: optuna.Study | None = None
    pool: AnyPool | None = None
    tracked: DictConfig | None = None
    launchers.check_launcher(spec)
    with _signals_interrupt(), contextlib.ExitStack() as stack:
        try:
            # Workers spawned now import hpexp while the study is prepared; unused ones end with it.
            spares = stack.enter_context(
                contextlib.closing(Spares(0 if launchers.is_remote(spec) else _slots(spec)))
            )
            if pbt.is_pbt(spec):
                pbt.check(spec)
            study, _ = prepare(spec, runs, join=join)
            tracked = _track(study, spec)  # before the pool copies the spec for its workers
            size = population_size(spec, compose_trial(list(spec.base)))  # `auto`: measured once, here
            # Where the workers run: this machine's processes, or a Dask cluster or a job array.
            pool = (
                launchers.remote_pool(spec, runs, size)
                if launchers.is_remote(spec)
                else Pool(spec, runs, size, spares)
            )
            _print_start(spec, runs, size)
            pool.start_all()
            _supervise(study, pool, spec, quiet)
        except Interrupted as e:
            _stop(pool, study, spec, e.signum)
        except OSError as e:  # the coordinator's own write (the journal, the spec) found no room
            if not rundir.disk_full(e):
                raise
            if pool is not None:
                pool.stop(signal.SIGTERM)
            _fail(f"{rundir.describe(e)}; free space, then run the same command again to resume {spec.name}")
    assert study is not None and pool is not None
    if not quiet:
        print(summary_text(study, spec, runs), flush=True)
    best = _best(study.get_trials(deepcopy=False), spec)
    if tracked is not None and best is not None and best.value is not None:
        loggers.end_study_run(
            tracked, study.user_attrs["mlflow_run_id"], {f"best_{spec.objective.metric}": best.value}
        )
    _verdict(study, pool, spec)
    return study


def _track(study: optuna.Study, spec: DictConfig) -> DictConfig | None:
    """With logger.mlflow in the trials' config: the study's MLflow run (made once, kept in the
    study) becomes every trial's parent run. Returns the trials' base config, or None."""
    base = compose_trial(list(spec.base))
    data = OmegaConf.to_container(spec)
    assert isinstance(data, dict)
    run_id = loggers.study_run(base, spec.name, data, study.user_attrs.get("mlflow_run_id"))
    if run_id is None:
        return None
    study.set_user_attr("mlflow_run_id", run_id)
    spec.base = [*spec.base, f"logger.mlflow.parent_run_id={run_id}"]
    return base


def _print_start(spec: DictConfig, runs: Path, size: int) -> None:
    where = spec.storage or str((study_dir(spec, runs) / "journal.log").resolve())
    workers = "population-based training in 1 worker" if pbt.is_pbt(spec) else f"{spec.workers} worker(s)"
    print(
        f"study {spec.name}: {spec.n_trials} trials, {workers}{launchers.where(spec)}, "
        f"population {size}, "
        f"storage {mask(where)}",
        flush=True,
    )
    if spec.sampler.name == "tpe":
        startup = tpe_startup(spec.sampler)
        if spec.n_trials <= 2 * startup:
            print(
                f"  TPE draws its first {startup} trials at random (sampler n_startup_trials): its model "
                f"chooses {max(0, spec.n_trials - startup)} of these {spec.n_trials}",
                flush=True,
            )


def _supervise(study: optuna.Study, pool: AnyPool, spec: DictConfig, quiet: bool) -> None:
    display = Display(spec, quiet)
    try:
        while pool.step(study):
            display.update(study.get_trials(deepcopy=False))
            pool.wait(0.5)
        display.update(study.get_trials(deepcopy=False))
    finally:
        display.close()


class Pool:
    """This machine's worker processes, one per slot. A slot whose worker ended is started again
    while trials wait; if the worker died, that is a restart, `max_restarts` at most in all."""

    def __init__(self, spec: DictConfig, runs: Path, size: int, spares: Spares | None = None) -> None:
        self.spec, self.runs = spec, runs
        self.data = {**OmegaConf.to_container(spec, resolve=True), "population": size}  # type: ignore[dict-item]
        self.deadline = time.time() + spec.timeout if spec.timeout else None
        self.slots: dict[int, BaseProcess | None] = dict.fromkeys(range(_slots(spec)))
        self.spares = spares or Spares(0)
        self.died: set[int] = set()  # slots whose worker died and has not been replaced
        self.restarts, self.gave_up = 0, False
        self.full = False  # a worker found the disk full

    def start_all(self) -> None:
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: int) -> None:
        process, jobs = self.spares.take()
        process.name = f"worker {slot}"
        with jobs, contextlib.suppress(BrokenPipeError):  # it died starting: `step` reports it
            jobs.send((self.data, self.runs, slot, self.deadline))
        self.slots[slot] = process

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking as soon as a worker ends."""
        running = [p.sentinel for p in self.slots.values() if p is not None]
        if running:
            multiprocessing.connection.wait(running, seconds)
        else:
            time.sleep(seconds)

    def step(self, study: optuna.Study) -> bool:
        """Reap ended workers, fail dead ones' trials, start workers where trials wait; False once
        nothing runs here and nothing is left to start."""
        for slot, process in self.slots.items():
            if process is not None and not process.is_alive():
                process.join()
                self.slots[slot] = None
                if process.exitcode == DISK_FULL:  # it said why; restarting cannot help
                    self.full = True
                elif process.exitcode:
                    self.died.add(slot)
                    print(
                        f"hpexp study: {process.name} (pid {process.pid}) {_ended(process)}", file=sys.stderr
                    )
        if failed := fail_stale(study, self.spec.max_attempts):
            print(f"hpexp study: trial(s) {failed} of a dead worker failed; they run again", file=sys.stderr)
        if self.full:  # no room to write: stop the others (they record what they can) and end
            self.stop(signal.SIGTERM)
            return False
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if waiting and not self.past_deadline():
            for slot in [s for s, p in self.slots.items() if p is None][:waiting]:
                if slot in self.died:
                    self._restart(slot)
                else:
                    self._start(slot)
        idle = all(p is None for p in self.slots.values())
        return not (idle and (not waiting or self.gave_up or self.past_deadline()) and not unclaimed(study))

    def _restart(self, slot: int) -> None:
        if self.restarts >= self.spec.max_restarts:
            if not self.gave_up:
                print(
                    f"hpexp study: no restarts left (max_restarts={self.spec.max_restarts})", file=sys.stderr
                )
            self.gave_up = True
            return
        self.restarts += 1
        self.died.discard(slot)
        self._start(slot)
        print(
            f"hpexp study: started worker {slot} again (restart {self.restarts} of {self.spec.max_restarts})",
            file=sys.stderr,
        )

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def stop(self, signum: int) -> None:
        """Stop the workers, give them STOP_WAIT seconds to record their trials, then kill. Each is
        sent SIGTERM, whatever `signum`: a worker takes it as it takes Ctrl-C, and one still starting
        (SIGINT blocked until it has imported hpexp) ends at once."""
        running = [p for p in self.slots.values() if p is not None and p.is_alive()]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)  # type: ignore[arg-type]
        end = time.monotonic() + STOP_WAIT
        for p in running:
            p.join(max(0.0, end - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()


AnyPool = Pool | launchers.DaskPool | launchers.SubmititPool


def _slots(spec: DictConfig) -> int:
    """The worker processes a local study runs: `workers` (0 while that is not a valid count, for
    `check_spec` to refuse); PBT trains its whole population in one process, whatever it says."""
    if pbt.is_pbt(spec):
        return 1
    workers = spec.get("workers")
    return workers if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1 else 0


class Spares:
    """Worker processes spawned ahead of their job: a spawned process spends about a second
    importing hpexp, which the coordinator's own preparation (checking the spec, opening the study,
    enqueuing the budget) would otherwise precede. Each waits on a pipe for its job (`take` hands
    one out, spawning a fresh one when none is left); `close` ends those never used, which exit
    at once, without a word."""

    def __init__(self, count: int) -> None:
        self.waiting = [self._spawn() for _ in range(count)]

    @staticmethod
    def _spawn() -> tuple[BaseProcess, Connection]:
        context = multiprocessing.get_context("spawn")
        reader, writer = context.Pipe(duplex=False)
        with _one_blas_thread(), _children_hold_sigint() as ignored:
            process = context.Process(target=_worker_boot, args=(reader, ignored), name="worker")
            process.start()
        reader.close()
        return process, writer

    def take(self) -> tuple[BaseProcess, Connection]:
        return self.waiting.pop(0) if self.waiting else self._spawn()

    def close(self) -> None:
        for process, jobs in self.waiting:
            jobs.close()
            process.terminate()  # still importing, or waiting: nothing of the study's is under way
            process.join()
        self.waiting = []


def _ended(process: BaseProcess) -> str:
    code = process.exitcode or 0
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        return f"was stopped by {signal.Signals(code - 128).name}"
    return f"ended with exit status {code} (its error is above)"


def _stop(pool: AnyPool | None, study: optuna.Study | None, spec: DictConfig, signum: int) -> NoReturn:
    """Stop the workers, fail what they could not record, say how to resume; exit 128 + signum."""
    for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the clean-up short
        signal.signal(s, signal.SIG_IGN)
    if pool is not None:
        pool.stop(signum)
    if study is not None:
        fail_stale(study, spec.max_attempts)
    print(
        f"\nhpexp study: interrupted ({signal.Signals(signum).name}); run the same command again to "
        f"resume study {spec.name}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(128 + signum)


def _verdict(study: optuna.Study, pool: AnyPool, spec: DictConfig) -> None:
    """Say why a study did not finish here; exit 1 if it cannot."""
    if getattr(pool, "full", False):
        _fail(f"the disk is full; free space, then run the same command again to resume study {spec.name}")
    trials = study.get_trials(deepcopy=False)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    elsewhere = sum(t.state == TrialState.RUNNING for t in trials)
    if waiting and pool.gave_up:
        _fail(
            f"study {spec.name} cannot finish: {waiting} trial(s) never ran because workers died "
            f"{len(pool.died) + pool.restarts} times (max_restarts={spec.max_restarts}); see the errors "
            "above, then run the same command again to resume"
        )
    if waiting and pool.past_deadline():
        print(
            f"timeout ({spec.timeout} s) reached: {waiting} trial(s) not started; run the same command "
            "again to run them",
            file=sys.stderr,
        )
    if elsewhere:
        print(f"{elsewhere} trial(s) still running on other machines or processes", file=sys.stderr)
    if not waiting and not elsewhere and not any(t.state == TrialState.COMPLETE for t in trials):
        _fail(f"study {spec.name}: no trial completed; {_fail_reasons(trials)}")


def _fail_reasons(trials: list[optuna.trial.FrozenTrial], shown: int = 3, width: int = 300) -> str:
    """The failed trials' reasons, the commonest first, each with its count (a quiet study printed
    no trial lines, so the verdict itself says why)."""
    reasons = Counter(
        str(t.user_attrs.get("fail_reason") or t.user_attrs.get("stop_reason") or t.state.name.lower())
        for t in trials
    )
    parts = [
        f"{n} trial(s): {why if len(why) <= width else why[: width - 3] + '...'}"
        for why, n in reasons.most_common(shown)
    ]
    if len(reasons) > shown:
        parts.append(f"{len(reasons) - shown} other reason(s)")
    return "; ".join(parts) if parts else "the study has no trials"


def _fail(message: str) -> NoReturn:
    print(f"hpexp study: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _stopping_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, and SIGINT unless this process was started with it ignored: a shell script's
    `hpexp study ... &` ignores Ctrl-C, as Python and `hpexp train` do (SIGTERM still stops it)."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    return (signal.SIGTERM,) if ignored else (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread (restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    saved = {s: signal.signal(s, interrupt) for s in _stopping_signals()}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _children_hold_sigint() -> Iterator[bool]:
    """Processes started in the block begin with SIGINT blocked (a thread's signal mask survives
    fork and exec), so a Ctrl-C while they import hpexp waits until they can take it
    (`_worker_boot`) instead of printing their KeyboardInterrupt tracebacks. A Ctrl-C reaching the
    coordinator in the block is held to its end (`rundir.signals_held`): not lost, as when SIGINT
    was ignored here and a study interrupted while it started a worker ran on to its end, and not
    raised halfway through a process's start. Yields whether this process ignores SIGINT itself:
    then its workers do too, for good."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored or threading.current_thread() is not threading.main_thread():
        yield ignored
        return
    # multiprocessing's resource tracker, started with the first process, unblocks SIGINT once
    # it has started: started first (an undocumented module: tests/test_study_faults.py's
    # test_ctrl_c_while_workers_are_started_is_not_lost fails if it changes).
    resource_tracker.ensure_running()
    with rundir.signals_held():
        saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def _worker_boot(jobs: Connection, sigint_ignored: bool) -> None:
    """A spawned worker: wait for the coordinator's job, then run it (`_worker_main`); without one
    (the coordinator ended first), end quietly. It started with SIGINT blocked; it now takes it, as
    the coordinator does, unless the study ignores it (`sigint_ignored`). Until the job comes there
    is nothing to record, so SIGINT or SIGTERM ends the process at once, with 128 + the signal (a
    Ctrl-C held since it was spawned, as soon as it is unblocked)."""
    for s in (signal.SIGTERM,) if sigint_ignored else (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: os._exit(128 + signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        with jobs:
            job = jobs.recv()
    except EOFError:
        return
    _worker_main(*job)


def _worker_main(spec_data: dict[str, Any], runs: Path, slot: int, deadline: float | None) -> None:
    """A worker process: SIGINT or SIGTERM interrupts its trials once (they are failed and enqueued
    again), then it exits with 128 + the signal. A worker whose coordinator died (SIGKILL, a crash)
    gives itself SIGTERM: no worker trains on, unsupervised, after its study's command is gone."""
    received: list[int] = []
    _watch_parent()

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        for s in (signal.SIGINT, signal.SIGTERM):  # the next ones do nothing: a Ctrl-C reaches a
            # worker twice, from the terminal and from the coordinator (SIGTERM), maybe both before
            # this runs; set to SIG_IGN, Python reported the second as "ignored due to race condition"
            signal.signal(s, _nothing)
        raise KeyboardInterrupt

    for s in _stopping_signals():  # the coordinator's: it passes its SIGINT on ignored
        signal.signal(s, interrupt)
    try:
        (pbt.work if spec_data["sampler"]["name"] == "pbt" else work)(spec_data, runs, slot, deadline)
    except KeyboardInterrupt:
        sys.exit(128 + (received[0] if received else signal.SIGINT))
    except OSError as e:
        if not rundir.disk_full(e):
            raise
        print(f"hpexp study: worker {slot} stopped: {rundir.describe(e)}", file=sys.stderr, flush=True)
        sys.exit(DISK_FULL)


def _nothing(signum: int, frame: Any) -> None:
    pass


def _watch_parent() -> None:
    """A daemon thread that waits on the coordinator's sentinel (ready when it ends) and then
    interrupts this process with SIGTERM, the path a `kill` of the study would take."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by a Pool (a test calling the worker directly)
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Spawned workers start with one BLAS/OpenMP thread (run() also limits it at training time)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
