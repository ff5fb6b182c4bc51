"""Where a study's workers run: spawned processes here (`local`, the default, run by
`hpexp.study.coordinator.Pool`), long-running tasks on a Dask distributed cluster (`dask`), or a
SLURM job array through submitit (`slurm`; `submitit_local` runs the same array as local processes
through submitit's local executor).

Every worker runs the same loop (`hpexp.study.workers.work`): it opens the study's storage, pops
waiting trials until none is left, trains them and tells them, so the budget stays exact however
many workers there are, whenever they join or leave. The storage must reach every worker: a
PostgreSQL database (every launcher), the Dask scheduler itself (`storage: dask://HOST:PORT`,
Optuna's DaskStorage) or, for the processes of this machine only, the Journal file.

The spec's `launcher` section (or `--launcher`, `--scheduler` on the command line):

    launcher:
      name: local          # local | dask | slurm | submitit_local
      scheduler: null      # dask: tcp://HOST:PORT (default: the dask:// storage's scheduler)
      folder: null         # submitit: its logs and pickles (default: runs/studies/NAME/submitit)
      slurm: {}            # submitit's SLURM parameters: slurm_partition, timeout_min, mem_gb, ...

`workers` is the number of worker processes (local), of long-running tasks (dask: each takes one
thread of the cluster; tasks beyond its threads wait and start on a worker that joins later), or
of array jobs (slurm). A worker lost with its machine has its running trials failed and enqueued
again: found by RDB heartbeats (PostgreSQL), by the Dask scheduler losing the worker (the
coordinator compares its workers with the trials' host and pid), or on one machine by the pid being
gone. The pools here answer the coordinator as its local `Pool` does (start_all, step, stop).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hpexp.study.daskstore import client_for, is_dask_url, scheduler_address
from hpexp.study.storage import fail_stale, study_dir, unclaimed
from hpexp.study.workers import work
from hpexp.train.loop import clear_stop, request_stop
from hpexp.train.runner import ConfigError

__all__ = [
    "LAUNCHERS",
    "DaskPool",
    "SubmititPool",
    "add_arguments",
    "apply_arguments",
    "check_launcher",
    "is_remote",
    "refuse_hydra_overrides",
    "remote_pool",
    "where",
]

LAUNCHERS = ("local", "dask", "slurm", "submitit_local")
KEYS = ("name", "scheduler", "folder", "slurm")


def _settings(spec: DictConfig) -> dict[str, Any]:
    raw = spec.get("launcher") or {}
    if isinstance(raw, str):
        raw = {"name": raw}
    elif isinstance(raw, DictConfig):
        raw = OmegaConf.to_container(raw, resolve=True)
    return {"name": "local", "scheduler": None, "folder": None, "slurm": {}} | dict(raw)  # type: ignore[arg-type]


def is_remote(spec: DictConfig) -> bool:
    return _settings(spec)["name"] != "local"


def where(spec: DictConfig) -> str:
    """ " on ..." for the coordinator's first line (nothing for local processes)."""
    s = _settings(spec)
    if s["name"] == "dask":
        return f" on the Dask cluster {scheduler_address(s['scheduler'] or spec.storage)}"
    return f" as a {s['name']} job array" if s["name"] != "local" else ""


def refuse_hydra_overrides(overrides: Sequence[str]) -> None:
    """The study is not a Hydra multirun: a `hydra/launcher=...` (or any hydra key) would be composed
    and ignored, so it is refused, naming what places the workers instead."""
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key == "hydra" or key.startswith(("hydra/", "hydra.")):
            raise ConfigError(
                f"{o!r}: a study does not run through Hydra's launchers or sweepers; place its workers "
                f"with --launcher {{{','.join(LAUNCHERS)}}} (or launcher.name in the spec), "
                f"e.g. --launcher dask --scheduler tcp://HOST:8786"
            )


def check_launcher(spec: DictConfig) -> dict[str, Any]:
    """The launcher settings, or a ConfigError naming the key, the bad value and what is valid."""
    s = _settings(spec)
    if unknown := set(s) - set(KEYS):
        raise ConfigError(f"launcher: unknown key(s) {sorted(unknown)}; valid: {list(KEYS)}")
    name, storage = s["name"], spec.storage
    if name not in LAUNCHERS:
        raise ConfigError(f"launcher.name must be one of {list(LAUNCHERS)}, got {name!r}")
    if s["scheduler"] and name != "dask":
        raise ConfigError(f"launcher.scheduler is for the dask launcher, not {name!r}")
    if s["slurm"] and name != "slurm":
        raise ConfigError(f"launcher.slurm is for the slurm launcher, not {name!r}")
    if not isinstance(s["slurm"], dict):
        raise ConfigError(f"launcher.slurm must be a mapping of submitit parameters, got {s['slurm']!r}")
    if name == "dask":
        if not s["scheduler"] and not is_dask_url(storage):
            raise ConfigError(
                "the dask launcher needs the scheduler's address: launcher.scheduler=tcp://HOST:PORT "
                "(--scheduler), or storage=dask://HOST:PORT"
            )
        s["scheduler"] = scheduler_address(s["scheduler"] or storage)
        if not storage:
            raise ConfigError(
                "the dask launcher's workers cannot reach this machine's Journal file: set storage to "
                "dask://HOST:PORT (held by the scheduler) or postgresql://USER@HOST/DB"
            )
    if name == "slurm" and not (storage and str(storage).startswith("postgres")):
        raise ConfigError(
            "the slurm launcher needs a database every node reaches, with heartbeats to find lost "
            f"nodes: storage=postgresql://USER@HOST/DB (got {storage or 'the Journal file'})"
        )
    if name != "local" and is_dask_url(storage) and name != "dask":
        raise ConfigError(f"storage {storage} (DaskStorage) needs the dask launcher, not {name!r}")
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="where the workers run: local processes (default), a Dask cluster, SLURM via submitit",
    )
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="the Dask scheduler, tcp://HOST:PORT"
    )


def apply_arguments(args: argparse.Namespace, spec: DictConfig) -> None:
    if args.launcher is None and args.scheduler is None:
        return
    settings = _settings(spec)
    if args.launcher is not None:
        settings["name"] = args.launcher
    if args.scheduler is not None:
        settings["scheduler"] = args.scheduler
        settings["name"] = args.launcher or "dask"
    spec.launcher = settings


def remote_pool(spec: DictConfig, runs: Path, size: int) -> DaskPool | SubmititPool:
    """The pool of the spec's remote launcher (workers train `size` trials at a time)."""
    s = check_launcher(spec)
    return DaskPool(spec, runs, size, s) if s["name"] == "dask" else SubmititPool(spec, runs, size, s)


def run_worker(
    spec_data: dict[str, Any], runs: Path, worker: int, deadline: float | None, stop: str = ""
) -> int:
    """A remote worker: one BLAS thread, the worker loop; on Dask, the distributed Event `stop`, set
    by the coordinator, interrupts it as Ctrl-C interrupts a local worker (its trials wait again)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), _interrupted_by(stop):
        return work(spec_data, runs, worker, deadline)
    return 0  # interrupted


@contextlib.contextmanager
def _interrupted_by(stop: str) -> Iterator[None]:
    """In a Dask task: when the distributed Event `stop` is set, this thread is asked to stop
    (`hpexp.train.loop.request_stop`; no signal reaches it): training raises KeyboardInterrupt at its
    next mini-batch, and the worker loop between trials, so it fails its running trials as
    interrupted, enqueues them again and returns, as on Ctrl-C. Nothing else is interrupted: the
    worker process lives on and runs the next task, so a storage call or a run folder's lock cut in
    the middle would outlast the stop."""
    if not stop:
        yield
        return
    import distributed

    event, me = distributed.Event(stop, client=distributed.get_client()), threading.get_ident()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):  # a scheduler that went away: nothing to stop for
                if event.wait(timeout=1):
                    request_stop(me)
                    return

    threading.Thread(target=watch, daemon=True, name="hpexp-stop-watch").start()
    try:
        yield
    except KeyboardInterrupt:
        pass  # the worker loop has put its trials back
    finally:
        done.set()
        clear_stop(me)


@contextlib.contextmanager
def _sigint_not_passed_on() -> Iterator[None]:
    """Processes started in the block do not inherit an ignored SIGINT (a study started by a shell
    script's `&` ignores it): submitit cancels a local job with SIGINT, and a job that ignored it
    would train on, unsupervised. A handler that does nothing ignores SIGINT here as before, and
    `exec` resets a handled signal to its default in the child."""
    if (
        signal.getsignal(signal.SIGINT) != signal.SIG_IGN
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _identity() -> tuple[str, int]:
    import os

    return socket.gethostname(), os.getpid()


class _RemotePool:
    """What the coordinator needs of a pool, shared by the remote ones."""

    def __init__(self, spec: DictConfig, runs: Path, size: int, settings: dict[str, Any]) -> None:
        self.spec, self.settings = spec, settings
        self.runs = Path(runs).resolve()  # the same path on every worker (shared, or made there)
        self.data = {**OmegaConf.to_container(spec, resolve=True), "population": size}  # type: ignore[dict-item]
        self.deadline = time.time() + spec.timeout if spec.timeout else None
        self.died: set[int] = set()
        self.restarts, self.gave_up = 0, False

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def _more(self, study: optuna.Study, idle: bool, lost: dict[tuple[str, int], str] | None = None) -> bool:
        """Fail lost workers' trials; False once nothing runs and nothing is left to start."""
        if failed := fail_stale(study, self.spec.max_attempts, lost):
            print(f"hpexp study: trial(s) {failed} of a lost worker failed; they run again", file=sys.stderr)
        waiting = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        return not (idle and (not waiting or self.gave_up or self.past_deadline()) and not unclaimed(study))


class DaskPool(_RemotePool):
    """`workers` long-running worker tasks on a Dask cluster.

    Each step (every half second) asks the scheduler for its workers: one seen for the first time is
    asked its host and pid; one gone from the scheduler has its running trials failed and enqueued
    again. Dask itself runs a lost worker's task again elsewhere; when every task has ended but trials
    wait (a retry enqueued after the last task finished), one more task is submitted, at most
    n_trials times; tasks that fail with an error are not submitted again."""

    def __init__(self, spec: DictConfig, runs: Path, size: int, settings: dict[str, Any]) -> None:
        super().__init__(spec, runs, size, settings)
        self.client = client_for(settings["scheduler"])
        self.stop_event = f"hpexp-stop-{spec.name}-{uuid.uuid4().hex[:8]}"
        self.futures: list[Any] = []
        self.known: dict[str, tuple[str, int]] = {}
        self.extra = int(spec.n_trials)

    def _submit(self) -> None:
        i = len(self.futures)
        self.futures.append(
            self.client.submit(
                run_worker,
                self.data,
                self.runs,
                i,
                self.deadline,
                self.stop_event,
                pure=False,
                key=f"{self.stop_event.replace('-stop-', '-worker-')}-{i}",
            )
        )

    def start_all(self) -> None:
        for _ in range(self.spec.workers):
            self._submit()

    def step(self, study: optuna.Study) -> bool:
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        if new := [a for a in info if a not in self.known]:
            self.known.update(self.client.run(_identity, workers=new, on_error="ignore"))
        lost = {}
        for address in [a for a in self.known if a not in info]:
            host, pid = self.known.pop(address)
            lost[(host, pid)] = f"dask worker {address} ({host}:{pid}) left the cluster"
        idle = all(f.done() for f in self.futures)
        for f in [f for f in self.futures if f.status == "error" and not getattr(f, "_told", False)]:
            f._told = True
            print(f"hpexp study: a Dask worker task failed: {f.exception()!r}", file=sys.stderr)
            self.died.add(self.futures.index(f))
            self.gave_up = True  # an error in the worker loop would come back
        waiting = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if idle and waiting and not self.gave_up and not self.past_deadline() and self.extra > 0:
            self.extra -= 1
            self._submit()
            idle = False
        return self._more(study, idle, lost)

    def stop(self, signum: int) -> None:
        """Interrupt every task (their trials fail as interrupted and wait again); wait up to 60 s,
        then cancel what is left."""
        import distributed

        pending = [f for f in self.futures if not f.done()]
        if not pending:
            return
        distributed.Event(self.stop_event, client=self.client).set()
        end = time.time() + 60
        while time.time() < end and not all(f.done() for f in pending):
            time.sleep(0.2)
        self.client.cancel([f for f in pending if not f.done()])


class SubmititPool(_RemotePool):
    """A submitit job array of `workers` jobs (SLURM, or submitit's local executor)."""

    def __init__(self, spec: DictConfig, runs: Path, size: int, settings: dict[str, Any]) -> None:
        super().__init__(spec, runs, size, settings)
        try:
            import submitit
        except ImportError:
            raise ConfigError(
                "the slurm launcher needs the slurm extra: pip install 'hpexp[slurm]'"
            ) from None
        folder = Path(settings["folder"] or study_dir(spec, self.runs) / "submitit").resolve()
        # A job's wall time: the study's timeout plus an hour for the trials under way, else a week.
        minutes = math.ceil(spec.timeout / 60) + 60 if spec.timeout else 7 * 24 * 60
        if settings["name"] == "submitit_local":
            self.executor: Any = submitit.LocalExecutor(folder=folder)
            self.executor.update_parameters(timeout_min=minutes)
        else:
            self.executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
            params = {"timeout_min": minutes, "cpus_per_task": 1, "name": f"hpexp-{spec.name}"}
            try:
                self.executor.update_parameters(**(params | settings["slurm"]))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"launcher.slurm {settings['slurm']}: {e}") from None
        self.jobs: list[Any] = []

    def start_all(self) -> None:
        n = self.spec.workers
        with _sigint_not_passed_on():
            self.jobs = self.executor.map_array(
                run_worker, [self.data] * n, [self.runs] * n, list(range(n)), [self.deadline] * n
            )

    def step(self, study: optuna.Study) -> bool:
        idle = all(job.done() for job in self.jobs)
        if idle and not self.gave_up:
            for i, job in enumerate(self.jobs):
                if job.state not in ("FINISHED", "COMPLETED"):
                    self.died.add(i)
                    print(f"hpexp study: job {job.job_id} ended {job.state}", file=sys.stderr)
            self.gave_up = bool(self.died)  # a job array is not started again from here
        return self._more(study, idle)

    def stop(self, signum: int) -> None:
        """Cancel the jobs (SIGINT to local ones, scancel on SLURM); their trials wait again."""
        for job in self.jobs:
            if not job.done():
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
        end = time.time() + 60
        while time.time() < end and not all(job.done() for job in self.jobs):
            time.sleep(0.2)
