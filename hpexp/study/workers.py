"""Optuna studies over Hydra configs: search the validation split, prune, resume, finalize on test.

A study spec (`studies/NAME.yaml`, composed by Hydra so any key is overridable) names the base
training overrides, the search space, the objective, the sampler and pruner, a total `n_trials`,
`workers` and the storage. Every trial composes its config with `hpexp.train.runner.compose` (base overrides
plus the sampled values) and trains through `hpexp.train.runner.run_population` with the test split sealed;
its hook reports the validation metric each epoch and returns a `Stop` when Optuna prunes.

Populations (`population: K`, default 1): a worker pops up to K waiting trials at once (a batched
ask), samples and composes each, and trains those with equal `hpexp.train.runner.population_key` (same
network, data, batch size...) as one population in one vectorized pass. Each member reports to its
own trial and is pruned alone (it leaves the population, the others go on); a diverging member is
a failed trial; every trial keeps its own run directory; then each trial is told. The trials share
the study's seed, so the population's shared mini-batch order is each trial's own: a member's
history is the one it would have alone. With TPE, `constant_liar: true` spreads a batch's points.

Layout, under `runs/studies/NAME/`: `journal.log` (the default Optuna storage), `spec.yaml` (the
composed spec, storage URL masked), `trials/NNNN/` (one run directory per trial number), and after
`--finalize`: `final/seed_S/` run directories, `final.json` and `final.csv`.

The budget is exact whatever the number of workers: the coordinator enqueues `n_trials` trials
(the spec's `baseline` first) and workers only pop waiting trials, which Optuna hands out once.
A trial whose worker died (same host, process gone; or an RDB heartbeat gone stale) is failed and
enqueued again with the same parameters, so a restarted study ends with `n_trials` finished trials.
Many machines share one PostgreSQL database (Optuna's RDB storage, with heartbeats): start the study
on one machine, `hpexp study NAME --storage postgresql://USER@HOST/DB` with the password in
$HPEXP_DB_PASSWORD (or a file named by $HPEXP_DB_PASSWORD_FILE), then on each other machine the same
command with `--join`; every machine runs `workers` processes and writes its trials' run
directories locally (the trial's `host` and `run_dir` user attributes say where).
Only the study package imports Optuna: `spec` (the spec and its search space), `storage`
(storage, secrets, stale trials), `progress` (what the coordinator prints), `finalize` (the
test set, once) and this module (the search: coordinator, workers, trials, command line).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hpexp.study.finalize import finalize
from hpexp.study.progress import _watch, summary_text
from hpexp.study.spec import (
    Param,
    _monitor,
    check_spec,
    compose_trial,
    load_spec,
    parse_space,
    population_size,
    sample,
)
from hpexp.study.storage import (
    FINISHED,
    HOST,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    _heartbeat,
    _load,
    _process_start,
    _retry,
    fail_stale,
    mask,
    open_storage,
    study_dir,
)
from hpexp.train import rundir
from hpexp.train.loop import Stop
from hpexp.train.runner import compose, population_key, run_population, validate

__all__ = [
    "PASSWORD_ENV",
    "PASSWORD_FILE_ENV",
    "Param",
    "finalize",
    "load_spec",
    "main",
    "mask",
    "open_storage",
    "parse_space",
    "prepare",
    "sample",
    "search",
    "work",
]


def prepare(spec: DictConfig, runs: Path, *, join: bool = False) -> tuple[optuna.Study, list[Param]]:
    """Check the spec, open (or create) the study, fail dead workers' trials, enqueue the budget."""
    params, _ = check_spec(spec)
    study = _load(spec, runs, params, 0, create=not join)
    if stale := fail_stale(study):
        print(f"failed trial(s) {stale} left running by a dead worker; they will run again", flush=True)
    if not join:
        folder = study_dir(spec, runs)
        rundir.write_atomic(folder / "spec.yaml", mask(OmegaConf.to_yaml(spec)))
        study.set_user_attr("objective", spec.objective.metric)
        study.set_user_attr("n_trials", spec.n_trials)
        study.set_user_attr("trials_dir", str((folder / "trials").resolve()))
        _fill_budget(study, spec)
    return study, params


def _fill_budget(study: optuna.Study, spec: DictConfig) -> None:
    """Enqueue trials until the study holds n_trials (a failed-and-retried trial counts once)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    have = len(trials) - len(retried)
    if not trials and spec.baseline:
        study.enqueue_trial(OmegaConf.to_container(spec.baseline), user_attrs={"baseline": True})  # type: ignore[arg-type]
        have += 1
    for _ in range(spec.n_trials - have):
        study.enqueue_trial({})


def work(spec_data: dict[str, Any], runs: Path, worker: int = 0, deadline: float | None = None) -> int:
    """A worker: pop waiting trials, up to `population` at a time, and run them until none is left
    or the deadline; returns how many it ran.

    `worker` offsets the sampler's seed; the coordinator passes index + trials so far, so a
    restarted study does not draw the same points again.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = OmegaConf.create(spec_data)
    params, base = parse_space(spec.search), compose(list(spec.base))
    study = _load(spec, runs, params, worker, create=False)
    size, done = population_size(spec, base), 0
    while deadline is None or time.time() < deadline:
        fail_stale(study)
        # Only waiting (enqueued) trials run, so the budget is exact with any number of workers;
        # Optuna hands each out once, so K pops are a batched ask of up to K trials.
        ids: list[int] = []
        while len(ids) < size and (trial_id := study._pop_waiting_trial_id()) is not None:
            ids.append(trial_id)
        if not ids:
            break
        trials = [optuna.Trial(study, i) for i in ids]
        run_trials(study, trials, spec, params, base, study_dir(spec, runs), worker)
        done += len(trials)
    return done


Outcome = tuple[optuna.Trial, TrialState, float | None, dict[str, Any]]


def run_trials(
    study: optuna.Study,
    trials: Sequence[optuna.Trial],
    spec: DictConfig,
    params: Sequence[Param],
    base: DictConfig,
    folder: Path,
    worker: int,
) -> None:
    """Compose each trial's config; train the trials that can share a pass (equal `population_key`)
    as one population, test split sealed, each reporting to and pruned by its own trial; then tell
    Optuna each trial's outcome. One trial is the ordinary run."""
    pending = {t.number: t for t in trials}  # started, not yet told
    try:
        groups: dict[str, list[tuple[optuna.Trial, DictConfig]]] = {}
        for trial in trials:
            _mark(trial, folder, worker)
            try:
                cfg = _trial_config(trial, spec, params, base)
            except Exception as e:  # a trial's error is the trial's outcome; the study goes on
                _tell(study, pending, (trial, TrialState.FAIL, None, _failed(e)))
                continue
            groups.setdefault(population_key(cfg), []).append((trial, cfg))
        for group in groups.values():
            for outcome in _train(study, group, spec, folder):
                _tell(study, pending, outcome)
    except KeyboardInterrupt:
        for trial in list(pending.values()):
            attrs = {"status": "interrupted", "fail_reason": "interrupted (Ctrl-C)"}
            _tell(study, pending, (trial, TrialState.FAIL, None, attrs))
            _retry(study, trial)  # type: ignore[arg-type]
        raise


def _run_dir(folder: Path, trial: optuna.Trial) -> Path:
    return (folder / "trials" / f"{trial.number:04d}").resolve()


def _mark(trial: optuna.Trial, folder: Path, worker: int) -> None:
    """Who runs the trial and where: host and pid let a restarted study fail it if the worker died."""
    pid = os.getpid()
    for key, value in (
        ("host", HOST),
        ("pid", pid),
        ("pid_start", _process_start(pid)),
        ("worker", worker % 1000),  # the index; the thousands offset the sampler's seed per restart
        ("run_dir", str(_run_dir(folder, trial))),
    ):
        trial.set_user_attr(key, value)


def _trial_config(
    trial: optuna.Trial, spec: DictConfig, params: Sequence[Param], base: DictConfig
) -> DictConfig:
    """Sample the trial's values and compose its config, checked (a bad one fails alone)."""
    overrides = sample(trial, params, base)
    trial.set_user_attr("overrides", overrides)
    cfg = compose_trial([*spec.base, *overrides, _monitor(base)])
    validate(cfg)
    return cfg


def _train(
    study: optuna.Study, group: Sequence[tuple[optuna.Trial, DictConfig]], spec: DictConfig, folder: Path
) -> list[Outcome]:
    """Train one population (one run directory per trial) and read each trial's outcome."""
    trials = [t for t, _ in group]
    outs = [_run_dir(folder, t) for t in trials]
    hooks = [_reporter(t, spec.objective.metric, c.train.epochs) for t, c in group]
    try:
        with _heartbeat(study._storage, [t._trial_id for t in trials]):
            run_population([c for _, c in group], outs, on_epochs=hooks, progress=False, allow_test=False)
    except Exception as e:  # the trials' error is their outcome; the study goes on
        return [(t, TrialState.FAIL, None, _failed(e)) for t in trials]
    return [(t, *_outcome(out, spec)) for t, out in zip(trials, outs, strict=True)]


def _failed(e: Exception) -> dict[str, Any]:
    return {"status": "failed", "fail_reason": f"{type(e).__name__}: {e}"}


def _outcome(out: Path, spec: DictConfig) -> tuple[TrialState, float | None, dict[str, Any]]:
    """The trial's state and value from its run directory: the metric at its best epoch."""
    metric = spec.objective.metric
    summary, history = rundir.read_summary(out), rundir.read_history(out)
    values = [(r[metric], r["epoch"]) for r in history if math.isfinite(r.get(metric, math.nan))]
    best = (max if spec.objective.direction == "maximize" else min)(values, default=(None, None))
    attrs = {
        "status": summary["status"],
        "stop_reason": summary["stop_reason"],
        "best_epoch": best[1],
        "epochs_run": summary["epochs_run"],
        "seconds": summary["seconds"],
    }
    if summary["status"] == "pruned":
        return TrialState.PRUNED, None, attrs
    if summary["status"] == "diverged" or best[0] is None:
        return TrialState.FAIL, None, {**attrs, "fail_reason": f"diverged: {summary['stop_reason']}"}
    return TrialState.COMPLETE, best[0], attrs


def _tell(study: optuna.Study, pending: dict[int, optuna.Trial], outcome: Outcome) -> None:
    trial, state, value, attrs = outcome
    _finish(study, trial, state, value, **attrs)
    pending.pop(trial.number, None)


def _reporter(trial: optuna.Trial, metric: str, epochs: int) -> Any:
    def hook(record: dict[str, Any]) -> Stop | None:
        value = record.get(metric, math.nan)
        if not math.isfinite(value):
            return None  # the run itself ends as diverged
        trial.report(value, record["epoch"])
        # At its last epoch a trial has spent its budget: it completes, whatever the pruner says.
        if record["epoch"] < epochs and trial.should_prune():
            return Stop(f"pruned by {type(trial.study.pruner).__name__} at epoch {record['epoch']}", "pruned")
        return None

    return hook


def _finish(
    study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None, **attrs: Any
) -> None:
    for key, v in attrs.items():
        trial.set_user_attr(key, v)
    study.tell(trial, value, state=state)


# --- the coordinator: workers and progress -------------------------------------------------------


def _worker_main(spec_data: dict[str, Any], runs: Path, worker: int, deadline: float | None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        work(spec_data, runs, worker, deadline)


def search(
    spec: DictConfig, runs: Path = Path("runs"), *, join: bool = False, quiet: bool = False
) -> optuna.Study:
    """Run the study: N worker processes (spawned, one BLAS thread each) and a progress display."""
    study, _ = prepare(spec, runs, join=join)
    offset = 1000 * len(study.get_trials(deepcopy=False, states=FINISHED))
    deadline = time.time() + spec.timeout if spec.timeout else None
    size = population_size(spec, compose(list(spec.base)))  # `auto` measured once, here, not per worker
    data = {**OmegaConf.to_container(spec, resolve=True), "population": size}  # type: ignore[dict-item]
    context = multiprocessing.get_context("spawn")
    with _one_blas_thread():
        workers = [
            context.Process(
                target=_worker_main, args=(data, runs, offset + i, deadline), name=f"hpexp-worker-{i}"
            )
            for i in range(spec.workers)
        ]
        for w in workers:
            w.start()
    print(
        f"study {spec.name}: {spec.n_trials} trials, {spec.workers} worker(s), population {size}, storage "
        f"{mask(spec.storage or str(study_dir(spec, runs) / 'journal.log'))}",
        flush=True,
    )
    try:
        _watch(study, workers, spec, quiet)
    except KeyboardInterrupt:
        for w in workers:
            w.join()
        print(f"\ninterrupted; run the same command again to resume study {spec.name}", file=sys.stderr)
        raise SystemExit(130) from None
    if dead := [w for w in workers if w.exitcode]:
        codes = ", ".join(f"{w.name} exit {w.exitcode}" for w in dead)
        print(f"worker(s) ended abnormally ({codes}); run the same command again to resume", file=sys.stderr)
    if not quiet:
        print(summary_text(study, spec, runs), flush=True)
    return study


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


# --- command line --------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(
        prog="hpexp study",
        description="Run or resume the Optuna study studies/NAME.yaml; --finalize scores the test set once.",
        epilog="Overrides are Hydra-style on the spec: n_trials=20 workers=2 pruner.name=hyperband "
        "'base=[network=mlp100]' search.optimizer.eta.high=3 (for dotted search keys use "
        "+search.optimizer.eta.high=3). Database password: $HPEXP_DB_PASSWORD or a file "
        "($HPEXP_DB_PASSWORD_FILE or storage_password_file=PATH), never in the URL.",
    )
    parser.add_argument("name", help="a spec in studies/ (e.g. book_l2_mlp30) or a path to a YAML file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the spec")
    parser.add_argument(
        "--finalize", action="store_true", help="retrain the best config with K seeds, score test"
    )
    parser.add_argument(
        "--again", action="store_true", help="with --finalize: score the test set again (it was scored)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="K for --finalize (default: final_seeds, 3)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes on this machine")
    parser.add_argument(
        "--storage", default=None, help="a database URL (postgresql://user@host/db) for many machines"
    )
    parser.add_argument(
        "--join", action="store_true", help="work on an existing study (another machine started it)"
    )
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a training override appended to the spec's base (repeat), e.g. --base train.epochs=5",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (default: runs)")
    args = parser.parse_intermixed_args(argv)
    spec = load_spec(args.name, args.overrides)
    if args.workers is not None:
        spec.workers = args.workers
    if args.storage is not None:
        spec.storage = args.storage
    spec.base = [*spec.base, *args.base]
    if not args.finalize:
        search(spec, args.runs, join=args.join)
    if args.finalize or spec.finalize:
        finalize(spec, args.runs, args.seeds, again=args.again)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main(sys.argv[1:])
