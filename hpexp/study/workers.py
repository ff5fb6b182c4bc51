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
enqueued again with the same parameters (at most `max_attempts` times), so a study ends with
`n_trials` finished trials; `hpexp.study.coordinator` replaces dead workers and stops them all.

Every worker process draws with its own sampler seed (the spec's seed mixed with fresh OS entropy,
recorded as each trial's `sampler_seed`), so two workers, restarts or machines never draw alike;
a sampled trial that repeats an earlier trial's parameters (by chance, in a small discrete space)
is failed as a duplicate and replaced by a fresh trial (enqueued baselines and retries excepted).
Many machines share one PostgreSQL database (Optuna's RDB storage, with heartbeats): start the study
on one machine, `hpexp study NAME --storage postgresql://USER@HOST/DB` with the password in
$HPEXP_DB_PASSWORD (or a file named by $HPEXP_DB_PASSWORD_FILE), then on each other machine the same
command with `--join`; every machine runs `workers` processes and writes its trials' run
directories locally (the trial's `host` and `run_dir` user attributes say where).
Only the study package imports Optuna: `spec` (the spec and its search space), `storage`
(storage, secrets, stale trials), `progress` (what the coordinator prints), `finalize` (the
test set, once), this module (the worker loop and its trials), `coordinator` (the processes of
one machine) and `command` (the command line).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hpexp.study.artifacts import check_artifacts, store_location, upload_run
from hpexp.study.journal import OwnedLock, process_start
from hpexp.study.spec import Param, _monitor, check_spec, compose_trial, parse_space, population_size, sample
from hpexp.study.storage import (
    HOST,
    _heartbeat,
    _load,
    _retry,
    fail_stale,
    mask,
    study_dir,
    superseded,
)
from hpexp.train import rundir
from hpexp.train.loop import Stop, check_stop
from hpexp.train.runner import population_key, run_population, validate

__all__ = ["prepare", "run_trials", "work", "worker_seed"]

MAX_REDRAWS = 10  # fresh trials drawn in a row for duplicates before a repeat is accepted


def prepare(spec: DictConfig, runs: Path, *, join: bool = False) -> tuple[optuna.Study, list[Param]]:
    """Check the spec, open (or create) the study, fail dead workers' trials, enqueue the budget."""
    params, base = check_spec(spec)
    check_artifacts(spec, base)
    study = _load(spec, runs, params, 0, create=not join)
    if stale := fail_stale(study, spec.max_attempts):
        print(f"failed trial(s) {stale} left running by a dead worker; they will run again", flush=True)
    if not join:
        folder = study_dir(spec, runs)
        rundir.write_atomic(folder / "spec.yaml", mask(OmegaConf.to_yaml(spec)))
        study.set_user_attr("objective", spec.objective.metric)
        study.set_user_attr("n_trials", spec.n_trials)
        study.set_user_attr("trials_dir", str((folder / "trials").resolve()))
        study.set_user_attr("artifact_store", store_location(spec, folder))
        lock = None if spec.storage else OwnedLock(str(folder / "budget"))  # two coordinators at once
        try:
            if lock:
                lock.acquire()
            _fill_budget(study, spec)
        finally:
            if lock:
                lock.release()
    return study, params


def _fill_budget(study: optuna.Study, spec: DictConfig) -> None:
    """Enqueue trials until the study holds n_trials (a retried or replaced trial counts once)."""
    trials = study.get_trials(deepcopy=False)
    have = len(trials) - len(superseded(trials))
    if not trials and spec.baseline:
        study.enqueue_trial(OmegaConf.to_container(spec.baseline), user_attrs={"baseline": True})  # type: ignore[arg-type]
        have += 1
    for _ in range(spec.n_trials - have):
        study.enqueue_trial({})


def worker_seed(spec: DictConfig) -> int:
    """This process's sampler seed: the spec's seed mixed with fresh OS entropy, so no two worker
    processes (on any host, after any restart) draw alike; each trial records it (`sampler_seed`)."""
    entropy = int.from_bytes(os.urandom(8), "little")
    return int(np.random.SeedSequence([spec.sampler.get("seed") or 0, entropy]).generate_state(1)[0])


def work(spec_data: dict[str, Any], runs: Path, worker: int = 0, deadline: float | None = None) -> int:
    """A worker: pop waiting trials, up to `population` at a time, and run them until none is left
    or the deadline; returns how many it ran. `worker` is its slot on this machine."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = OmegaConf.create(spec_data)
    params, base = parse_space(spec.search), compose_trial(list(spec.base))
    seed = worker_seed(spec)
    study = _load(spec, runs, params, seed, create=False)
    size, done = population_size(spec, base), 0
    while deadline is None or time.time() < deadline:
        check_stop()  # a Dask task asked to stop (hpexp.study.launchers): between trials
        fail_stale(study, spec.max_attempts)
        trials = _pop(study, size)
        if not trials:
            break
        run_trials(study, trials, spec, params, base, study_dir(spec, runs), worker, seed)
        done += len(trials)
    return done


def _pop(study: optuna.Study, size: int) -> list[optuna.Trial]:
    """Up to `size` waiting trials, now RUNNING and this worker's (a batched ask). Only enqueued
    trials run, so the budget is exact with any number of workers; Optuna hands each out once."""
    ids: list[int] = []
    try:
        while len(ids) < size:
            # A SIGTERM (the coordinator gone) or Ctrl-C waits until the popped trial is known here:
            # raised inside the pop, it would leave a RUNNING trial no one fails or runs again.
            with rundir.signals_held():
                if (trial_id := study._pop_waiting_trial_id()) is not None:
                    ids.append(trial_id)
            if trial_id is None:
                break
    except KeyboardInterrupt:
        _interrupted(study, [optuna.Trial(study, i) for i in ids])
        raise
    return [optuna.Trial(study, i) for i in ids]


Outcome = tuple[optuna.Trial, TrialState, float | None, dict[str, Any]]


def run_trials(
    study: optuna.Study,
    trials: Sequence[optuna.Trial],
    spec: DictConfig,
    params: Sequence[Param],
    base: DictConfig,
    folder: Path,
    worker: int,
    seed: int | None = None,
) -> None:
    """Compose each trial's config; train the trials that can share a pass (equal `population_key`)
    as one population, test split sealed, each reporting to and pruned by its own trial; then tell
    Optuna each trial's outcome. One trial is the ordinary run. On an interrupt, the trials not yet
    told are failed and enqueued again."""
    pending = {t.number: t for t in trials}  # started, not yet told
    try:
        groups: dict[str, list[tuple[optuna.Trial, DictConfig]]] = {}
        for trial in trials:
            _mark(trial, folder, worker, seed)
            try:
                cfg = _trial_config(study, trial, spec, params, base)
            except Exception as e:  # a trial's error is the trial's outcome; the study goes on
                _tell(study, pending, (trial, TrialState.FAIL, None, _failed(e)))
                continue
            if cfg is None:  # a duplicate, replaced by a fresh trial
                pending.pop(trial.number)
                continue
            groups.setdefault(population_key(cfg), []).append((trial, cfg))
        for group in groups.values():
            for outcome in _train(study, group, spec, folder):
                _tell(study, pending, outcome)
    except KeyboardInterrupt:
        _interrupted(study, list(pending.values()))
        raise
    except OSError as e:  # a full disk stops the worker; its trials run again once there is room
        if not rundir.disk_full(e):
            raise
        with contextlib.suppress(OSError):  # the journal may have no room for this either; then
            _interrupted(study, list(pending.values()), f"stopped: {rundir.describe(e)}")  # else: stale
        raise


def _interrupted(study: optuna.Study, trials: Sequence[optuna.Trial], reason: str = "interrupted") -> None:
    """Fail interrupted trials and enqueue each again (an interrupt is not the trial's fault)."""
    for trial in trials:
        _finish(study, trial, TrialState.FAIL, status="interrupted", fail_reason=reason)
        _retry(study, trial, died=False)


def _run_dir(folder: Path, trial: optuna.Trial) -> Path:
    return (folder / "trials" / f"{trial.number:04d}").resolve()


def _mark(trial: optuna.Trial, folder: Path, worker: int, seed: int | None) -> None:
    """Who runs the trial and where: host and pid let a restarted study fail it if the worker died;
    the sampler seed lets its draw be reproduced."""
    pid = os.getpid()
    for key, value in (
        ("host", HOST),
        ("pid", pid),
        ("pid_start", process_start(pid)),
        ("worker", worker),
        ("sampler_seed", seed),
        ("run_dir", str(_run_dir(folder, trial))),
    ):
        trial.set_user_attr(key, value)


def _trial_config(
    study: optuna.Study, trial: optuna.Trial, spec: DictConfig, params: Sequence[Param], base: DictConfig
) -> DictConfig | None:
    """Sample the trial's values and compose its config, checked (a bad one fails alone); None if
    it drew an earlier trial's parameters (it is then failed and replaced)."""
    overrides = sample(trial, params, base)
    trial.set_user_attr("overrides", overrides)
    if (earlier := _duplicate_of(study, trial)) is not None and _replace(study, trial, earlier):
        return None
    cfg = compose_trial([*spec.base, *overrides, _monitor(base)])
    validate(cfg)
    return cfg


def _duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """Another trial with the same parameters as this sampled one, or None. Baselines and
    retries (their parameters were enqueued) are never duplicates; a trial that was retried or was
    itself a duplicate is not compared (its parameters live on in another trial, or nowhere).

    Later trials count too: two workers that draw alike at the same moment may each check before
    the other's parameters are stored, and then the one that checks second sees the first,
    whichever number it has (if both see each other, both are replaced: one draw too many, never
    a duplicate)."""
    attrs = trial.user_attrs
    if "retry_of" in attrs or attrs.get("baseline"):
        return None
    trials = study.get_trials(deepcopy=False)
    gone = superseded(trials)
    for t in trials:
        if t.number == trial.number or t.number in gone or t.user_attrs.get("status") == "duplicate":
            continue
        if t.params == trial.params:
            return t.number
    return None


def _replace(study: optuna.Study, trial: optuna.Trial, earlier: int) -> bool:
    """Fail a duplicate and enqueue a fresh trial in its place; False (run it) after MAX_REDRAWS."""
    redraws = trial.user_attrs.get("redraws", 0)
    if redraws >= MAX_REDRAWS:
        trial.set_user_attr("duplicate_of", earlier)  # the space is nearly exhausted: run it anyway
        return False
    reason = f"drew the parameters of trial {earlier} again; a fresh trial replaces it"
    _finish(study, trial, TrialState.FAIL, status="duplicate", duplicate_of=earlier, fail_reason=reason)
    study.enqueue_trial({}, user_attrs={"replaces": trial.number, "redraws": redraws + 1})
    return True


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
        if rundir.disk_full(e):  # not theirs: the worker stops (run_trials)
            raise
        outcomes: list[Outcome] = [(t, TrialState.FAIL, None, _failed(e)) for t in trials]
    else:
        outcomes = [(t, *_outcome(out, spec)) for t, out in zip(trials, outs, strict=True)]
    for t, out in zip(trials, outs, strict=True):  # the run directories follow the trials (artifacts)
        upload_run(t, out, spec, folder)
    return outcomes


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
    if summary["status"] != "completed" or best[0] is None:  # diverged, stalled, ...: failed, saying so
        return (
            TrialState.FAIL,
            None,
            {**attrs, "fail_reason": f"{summary['status']}: {summary['stop_reason']}"},
        )
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
