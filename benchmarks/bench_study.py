"""Study speed: throughput with 1 vs 2 workers, with populations, and the per-trial overhead.

Targets: 2 workers reach at least 1.7x the trial-epochs per second of 1 worker (issue 4); 2 workers
with `population: auto` (or a given K) reach at least 3.5x a 1-worker study without populations
(issue 19), split into the gain of populations (1 worker with them against 1 without) and of
the second worker (with populations); the storage and Hydra-composition work of one trial is under
5% of a 1-epoch trial on the full data.
All figures are ratios measured in one run of this script, on the real MNIST ($HPEXP_DATA_DIR):

    nice -n 10 python benchmarks/bench_study.py [--trials 16] [--epochs 2] [--population auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from omegaconf import OmegaConf

from hpexp import study
from hpexp.study.spec import population_size
from hpexp.train import rundir, timings
from hpexp.train.runner import compose, run

BASE = ["network=mlp30", "regularizer=l2", "train.batch_size=10"]
SEARCH = {
    "optimizer.eta": {"type": "float", "low": 0.1, "high": 1.0, "log": True},
    "regularizer.lmbda": {"type": "float", "low": 1.0, "high": 10.0, "log": True},
}


def spec_for(folder: Path, workers: int, trials: int, epochs: int, population: int | str = 1) -> object:
    spec = {
        "base": [*BASE, f"train.epochs={epochs}"],
        "search": SEARCH,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},  # every trial runs all its epochs: equal work for 1 and 2 workers
        "n_trials": trials,
        "workers": workers,
        "population": population,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench_{workers}.yaml"
    OmegaConf.save(OmegaConf.create(spec), path)
    return study.load_spec(str(path))


def throughput(folder: Path, workers: int, trials: int, epochs: int, population: int | str = 1) -> float:
    """Trial-epochs per second of wall time for a whole study, worker start-up included (and, for
    `population: auto`, choosing K: a measurement the first time on a machine, then a cache read)."""
    spec = spec_for(folder, workers, trials, epochs, population)
    started = time.perf_counter()
    s = study.search(spec, folder, quiet=True)
    seconds = time.perf_counter() - started
    done = [t for t in s.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == trials, f"{len(done)} of {trials} trials completed"
    return sum(t.user_attrs["epochs_run"] for t in done) / seconds


def storage_seconds(folder: Path, n: int = 20) -> float:
    """Median seconds of the storage work one 1-epoch trial does on the Journal file."""
    from optuna.storages.journal import JournalStorage

    from hpexp.study.journal import journal_backend

    storage = JournalStorage(journal_backend(folder / "overhead.log"))  # as studies open it
    s = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    params = study.parse_space(SEARCH)
    base = compose(BASE)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        s.enqueue_trial({})
        trial = optuna.Trial(s, s._pop_waiting_trial_id())
        for key in ("host", "pid", "pid_start", "worker", "sampler_seed", "run_dir", "overrides"):
            trial.set_user_attr(key, key)
        study.sample(trial, params, base)
        trial.report(0.9, 1)
        trial.should_prune()
        for key in ("status", "stop_reason", "best_epoch", "epochs_run", "seconds"):
            trial.set_user_attr(key, key)
        s.tell(trial, 0.9)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compose_seconds(n: int = 10) -> float:
    """Median seconds of a trial's composition (study.compose_trial, as workers call it)."""
    study.compose_trial(BASE)
    times = []
    for i in range(n):
        started = time.perf_counter()
        study.compose_trial(
            [*BASE, f"optimizer.eta={0.1 + i / 100!r}", "regularizer.lmbda=5.0", "train.epochs=1"]
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def trial_seconds(folder: Path, n: int = 3) -> float:
    """Median seconds of run() for a 1-epoch trial on the full data (data loading included)."""
    cfg = compose([*BASE, "train.epochs=1", "train.monitor=[train,val]"])
    times = []
    for i in range(n):
        started = time.perf_counter()
        out = run(cfg, folder / f"trial_{i}", progress=False, allow_test=False)
        times.append(time.perf_counter() - started)
        assert rundir.read_summary(out)["status"] == "completed"
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="at least 2 x population")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--population", default="auto", help="trials per pass with populations (or auto)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load = os.getloadavg()[0]
    print(f"machine: {timings.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one = throughput(folder / "one", 1, args.trials, args.epochs)
        two = throughput(folder / "two", 2, args.trials, args.epochs)
        k = args.population if args.population == "auto" else int(args.population)
        spec = spec_for(folder / "pop", 2, args.trials, args.epochs, k)
        chosen = population_size(spec, compose(list(spec.base)))  # measured now if not cached
        pop = throughput(folder / "pop", 2, args.trials, args.epochs, k)
        pop_one = throughput(folder / "pop1", 1, args.trials, args.epochs, k)
        k = f"{k}={chosen}" if k == "auto" else k
        print(f"throughput ({args.trials} trials x {args.epochs} full-data epochs, mlp30, batch 10):")
        print(f"  1 worker                  {one:.3f} trial-epochs/s")
        print(f"  2 workers                 {two:.3f} trial-epochs/s")
        print(f"  2 workers, population {k:<7} {pop:.3f} trial-epochs/s")
        print(f"  1 worker, population {k:<8} {pop_one:.3f} trial-epochs/s")
        print(f"  2 workers / 1 worker: {two / one:.2f}x (target >= 1.7)")
        print(f"  2 workers with populations / 1 worker without: {pop / one:.2f}x (target >= 3.5)")
        print(
            f"    = populations {pop_one / one:.2f}x (1 worker with / without) "
            f"x workers {pop / pop_one:.2f}x (2 / 1, with populations)"
        )
        after = os.getloadavg()[0]
        print(f"  load average (1 min) {load:.2f} before, {after:.2f} after, on {os.cpu_count()} CPUs")
        store, comp, trial = storage_seconds(folder), compose_seconds(), trial_seconds(folder)
        print("per-trial overhead against a 1-epoch full-data trial:")
        print(
            f"  storage (Journal) {1000 * store:.1f} ms, Hydra compose {1000 * comp:.1f} ms, "
            f"trial {trial:.3f} s"
        )
        print(f"  overhead {100 * (store + comp) / trial:.1f}% (target < 5%)")


if __name__ == "__main__":
    main()
