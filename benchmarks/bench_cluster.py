"""Study throughput on a Dask cluster: 2 Dask workers (one thread, one BLAS thread each) against 1,
the same study spec, the workers started as `dask worker` commands on 127.0.0.1 and the study held by
the scheduler (DaskStorage). Target: at least 1.7x the trial-epochs per second (issue 18). Both
figures come from one run of this script, on the real MNIST ($HPEXP_DATA_DIR):

    nice -n 10 python benchmarks/bench_cluster.py [--trials 12] [--epochs 6]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from omegaconf import OmegaConf

DASK = str(Path(sys.executable).with_name("dask"))
LOOPBACK = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--no-dashboard"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 (lives as long as the process)
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)


def start_scheduler(folder: Path) -> tuple[subprocess.Popen, int]:
    """A `dask scheduler` on a free loopback port, once it accepts connections."""
    port = _port()
    proc = _start([DASK, "scheduler", "--port", str(port), *LOOPBACK], folder / "scheduler.log")
    for _ in range(600):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the Dask scheduler did not start; see {folder / 'scheduler.log'}")


def start_worker(folder: Path, port: int, name: str) -> subprocess.Popen:
    cmd = [DASK, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--nworkers", "1", "--name", name]
    return _start([*cmd, *LOOPBACK], folder / f"{name}.log")


def wait_for_workers(port: int, n: int) -> None:
    import distributed

    with distributed.Client(f"tcp://127.0.0.1:{port}", timeout=60, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=300)


def throughput(folder: Path, port: int, workers: int, trials: int, epochs: int, name: str = "") -> float:
    """Trial-epochs per second of wall time for a whole study on the cluster, tasks' start included."""
    from hpexp.study.coordinator import search
    from hpexp.study.spec import load_spec

    spec = {
        "base": ["network=mlp30", "regularizer=l2", "train.batch_size=10", f"train.epochs={epochs}"],
        "search": {"optimizer.eta": {"type": "float", "low": 0.1, "high": 1.0, "log": True}},
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},  # every trial runs all its epochs: equal work for 1 and 2 workers
        "n_trials": trials,
        "workers": workers,
        "population": 1,  # one trial at a time: the workers' scaling alone
        "storage": f"dask://127.0.0.1:{port}",
        "launcher": {"name": "dask"},
    }
    path = folder / f"{name or 'cluster'}_{workers}.yaml"
    OmegaConf.save(OmegaConf.create(spec), path)
    started = time.perf_counter()
    s = search(load_spec(str(path)), folder / "runs", quiet=True)
    seconds = time.perf_counter() - started
    done = [t for t in s.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials, f"{len(done)} of {trials} trials completed"
    return sum(t.user_attrs["epochs_run"] for t in done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scheduler, port = start_scheduler(folder)
        procs = [scheduler]
        try:
            procs += [start_worker(folder, port, "w1"), start_worker(folder, port, "w2")]
            wait_for_workers(port, 2)
            throughput(folder, port, 2, 2, 1, "warm")  # both workers import hpexp and cache MNIST first
            one = throughput(folder, port, 1, args.trials, args.epochs)
            two = throughput(folder, port, 2, args.trials, args.epochs)
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait(timeout=30)
    after = os.getloadavg()
    print(
        f"Dask cluster on 127.0.0.1, {args.trials} trials x {args.epochs} full-data epochs, mlp30, batch 10:"
    )
    print(f"  1 Dask worker   {one:.3f} trial-epochs/s")
    print(f"  2 Dask workers  {two:.3f} trial-epochs/s")
    print(f"  2 / 1: {two / one:.2f}x (target >= 1.7)")
    print(f"  load average (1, 5, 15 min) before {before}, after {after}, on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
