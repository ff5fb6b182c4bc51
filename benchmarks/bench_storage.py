"""Study storage capacity: epoch reports per second that PostgreSQL and DaskStorage sustain with 8,
16 and 32 concurrent clients, the per-trial overhead (ask, tell, report, artifact upload), one
784-30-10 epoch for scale, and from these the number of workers each storage can feed before
coordination passes 5% of a worker's time (the model is in docs/scaling.md).

A client is a process that loops as a study worker does without training: ask a trial, then per
epoch `trial.report` and `trial.should_prune` (median pruner), then tell. The clients, the database
server and the Dask scheduler all share this machine's CPUs, so the capacities are this machine's:
give the load average with any figure. Loopback only.

    nice -n 10 python benchmarks/bench_storage.py --postgres postgresql://USER@127.0.0.1:PORT/DB \\
        [--clients 8 16 32] [--seconds 10] [--epochs 10]      # password in $HPEXP_DB_PASSWORD

Without --postgres only DaskStorage is measured (a `dask scheduler` is started on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
from bench_cluster import start_scheduler  # this folder is on the path when run as a script

EPOCH_BASE = ["network=mlp30", "train.batch_size=10", "train.epochs=1", "train.monitor=[train,val]"]
DIST = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def machine() -> str:
    from threadpoolctl import threadpool_info

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )
    blas = ", ".join(f"{i['internal_api']} {i.get('architecture', '')}".strip() for i in threadpool_info())
    return f"{cpu}, {os.cpu_count()} CPUs; BLAS: {blas or 'none loaded'}"


def open_storage(kind: str, where: str) -> Any:
    from omegaconf import OmegaConf

    from hpexp.study.storage import open_storage as hpexp_storage

    spec = OmegaConf.create({"storage": where, "storage_password_file": None})
    return hpexp_storage(spec, Path(tempfile.gettempdir()))


def client(
    kind: str, where: str, name: str, epochs: int, ready: Any, start: Any, seconds: float, out: Any
) -> None:
    """Loop until `seconds` after the start: ask, per epoch report and should_prune, tell; put the
    number of epoch reports made inside the window."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")  # workers beat without optimize()
    storage = open_storage(kind, where)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    ready.put(os.getpid())
    start.wait()
    end, reports = time.time() + seconds, 0
    while time.time() < end:
        trial = study.ask(DIST)
        value = trial.params["x"]
        for epoch in range(1, epochs + 1):
            if time.time() >= end:
                break
            trial.report(value, epoch)
            trial.should_prune()
            reports += 1
        study.tell(trial, value)
    out.put(reports)


def capacity(kind: str, where: str, clients: int, epochs: int, seconds: float) -> float:
    """Epoch reports per second, all clients together, on a fresh study."""
    name = f"bench_{kind}_{clients}_{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(kind, where))
    ctx = multiprocessing.get_context("spawn")
    ready, out, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=client, args=(kind, where, name, epochs, ready, start, seconds, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    start.set()
    total = sum(out.get(timeout=seconds + 300) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def overhead(kind: str, where: str, run_dir: Path, artifacts: Path, n: int = 20) -> dict[str, float]:
    """Median seconds of one client's ask (pop an enqueued trial, sample), report + should_prune, the
    artifact upload of a real run directory (config, history, summary) and tell."""
    from hpexp.study.artifacts import FILES, open_store

    storage = open_storage(kind, where)
    name = f"bench_overhead_{kind}_{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(
        study_name=name, storage=storage, pruner=optuna.pruners.MedianPruner(n_startup_trials=5)
    )
    store = open_store(str(artifacts))
    times: dict[str, list[float]] = {"ask": [], "report": [], "upload": [], "tell": []}
    for i in range(n):
        study.enqueue_trial({})
        t0 = time.perf_counter()
        trial = optuna.Trial(study, study._pop_waiting_trial_id())  # as a worker pops its trials
        trial.suggest_float("x", 0.0, 1.0)
        t1 = time.perf_counter()
        trial.report(i / n, 1)
        trial.should_prune()
        t2 = time.perf_counter()
        for f in FILES:
            optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(run_dir / f), study_or_trial=trial
            )
        t3 = time.perf_counter()
        study.tell(trial, i / n)
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def epoch_seconds(folder: Path) -> tuple[float, Path]:
    """Seconds of one 784-30-10 epoch on the full data (batch 10, one BLAS thread; data cached)."""
    from hpexp.train.runner import compose, run

    cfg = compose(EPOCH_BASE)
    run(cfg, folder / "warm", progress=False, allow_test=False)  # loads and caches the data
    started = time.perf_counter()
    out = run(cfg, folder / "epoch", progress=False, allow_test=False)
    return time.perf_counter() - started, out


def limit(capacity_per_s: float, over: dict[str, float], epoch_s: float, epochs: int) -> tuple[float, int]:
    """The unloaded coordination fraction of a worker and the most workers below 5% (docs/scaling.md):
    a worker's storage work per epoch d = report + (ask + tell + upload) / E; each worker asks the
    storage for 1 + 3/E operations per epoch; queueing stretches d by 1/(1 - utilization)."""
    d = over["report"] + (over["ask"] + over["tell"] + over["upload"]) / epochs
    f0 = d / epoch_s
    if f0 >= 0.05:
        return f0, 0
    per_worker = (1 + 3 / epochs) / epoch_s  # operations per second, report-sized
    return f0, int((1 - f0 / 0.05) * capacity_per_s / per_worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=None, help="postgresql://USER@127.0.0.1:PORT/DB to measure")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="the measuring window per point")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per benchmark trial")
    parser.add_argument(
        "--study-epochs", type=int, default=30, help="E, epochs per trial of the study modelled"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    print(machine())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        epoch_s, run_dir = epoch_seconds(folder)
        print(f"one 784-30-10 epoch (50,000 images, batch 10, 1 BLAS thread): {epoch_s:.2f} s")
        scheduler, port = start_scheduler(folder)
        dask_url = f"dask://127.0.0.1:{port}"
        try:
            storages = [("dask", dask_url)] + ([("postgresql", args.postgres)] if args.postgres else [])
            rows = []
            for kind, where in storages:
                over = overhead(kind, where, run_dir, folder / f"artifacts_{kind}")
                caps = {c: capacity(kind, where, c, args.epochs, args.seconds) for c in args.clients}
                rows.append((kind, over, caps))
                print(
                    f"{kind}: "
                    + ", ".join(f"{c} clients {r:.0f} reports/s" for c, r in caps.items())
                    + "; per "
                    "trial (ms): " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in over.items()),
                    flush=True,
                )
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(
                f"\nworkers before coordination > 5% (E = {args.study_epochs} epochs a trial, "
                f"{epoch_s:.2f} s an epoch):"
            )
            print(
                "| storage | reports/s at "
                + " / ".join(map(str, args.clients))
                + " clients | ask | report | upload | tell | "
                "unloaded share | workers at 5% |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for kind, over, caps in rows:
                f0, n = limit(max(caps.values()), over, epoch_s, args.study_epochs)
                ms = " | ".join(f"{1000 * over[k]:.1f} ms" for k in ("ask", "report", "upload", "tell"))
                print(
                    f"| {kind} | {' / '.join(f'{r:.0f}' for r in caps.values())} | {ms} | "
                    f"{100 * f0:.2f}% | {n} |"
                )
        finally:
            scheduler.terminate()
            scheduler.wait(timeout=30)


if __name__ == "__main__":
    main()
