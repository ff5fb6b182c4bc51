"""Optuna studies over Hydra configs: search the validation split, prune, resume, finalize on test.

A study spec (`studies/NAME.yaml`, composed by Hydra so any key is overridable) names the base
training overrides, the search space, the objective, the sampler and pruner, a total `n_trials`,
`workers` and the storage. Every trial composes its config with `hpexp.run.compose` (base overrides
plus the sampled values) and trains through `hpexp.run.run` with the test split sealed; the hook
reports the validation metric each epoch and returns a `Stop` when Optuna prunes.

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
This is the only module that imports Optuna.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import functools
import io
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from hpexp import rundir
from hpexp.paths import config_dir, studies_dir
from hpexp.run import ConfigError, compose, run, validate
from hpexp.train import Stop

PASSWORD_ENV, PASSWORD_FILE_ENV = "HPEXP_DB_PASSWORD", "HPEXP_DB_PASSWORD_FILE"
HOST = socket.gethostname()
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
TYPES = ("float", "int", "categorical")
METRICS = {"val_accuracy": "maximize", "val_cost": "minimize", "val_loss": "minimize"}
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "bruteforce": "BruteForceSampler",
    "nsgaii": "NSGAIISampler",
    "qmc": "QMCSampler",  # needs SciPy
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "none": "NopPruner",
}
# Two-sided 95% Student t quantiles for 1..30 degrees of freedom (then the normal 1.96).
T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


# --- the spec ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One search dimension: a dotted config key (or a config group) and its distribution."""

    name: str
    type: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()


def load_spec(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """`studies/NAME.yaml` (or a path to a YAML file) composed by Hydra with `overrides`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    path = Path(name)
    folder, stem = (path.parent.resolve(), path.stem) if path.suffix == ".yaml" else (studies_dir(), name)
    if not (folder / f"{stem}.yaml").is_file():
        known = sorted(p.stem for p in studies_dir().glob("*.yaml"))
        raise ConfigError(f"no study spec {folder / stem}.yaml; shipped studies: {', '.join(known)}")
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            spec = hydra_compose(stem, overrides=list(overrides))
    except HydraException as e:
        raise ConfigError(f"study spec {stem}: {e}") from e
    defaults: dict[str, Any] = {
        "name": stem,
        "base": [],
        "baseline": None,
        "timeout": None,
        "storage": None,
        "storage_password_file": None,
        "seed": 0,
        "final_seeds": 3,
        "finalize": False,
    }
    merged = OmegaConf.merge(defaults, spec)
    assert isinstance(merged, DictConfig)
    return merged


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Leaves of the search tree: a mapping with a `type` is one parameter named by its path."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise ConfigError(f"search.{name}: expected a mapping with `type`, got {value!r}")
        if "type" in value or not value:
            yield name, value
        else:
            yield from _flatten(value, f"{name}.")


def parse_space(search: Any) -> list[Param]:
    """The search space as Params, checked: types, low < high, log needs low > 0, choices."""
    raw = OmegaConf.to_container(search, resolve=True) if isinstance(search, DictConfig) else search
    merged: dict[str, dict[str, Any]] = {}
    for name, entry in _flatten(raw or {}):  # `a.b: {...}` and `a: {b: {...}}` are the same key
        merged.setdefault(name, {}).update(entry)
    if not merged:
        raise ConfigError("the search space is empty: give at least one `search.KEY: {type: ...}`")
    return [_param(name, entry) for name, entry in merged.items()]


def _param(name: str, e: dict[str, Any]) -> Param:
    where = f"search.{name}"
    unknown = set(e) - {"type", "low", "high", "log", "step", "choices", "when"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    kind = e.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}: type must be one of {list(TYPES)}, got {kind!r}")
    when = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in (e.get("when") or {}).items())
    if kind == "categorical":
        choices = e.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty `choices` list, got {choices!r}")
        return Param(name, kind, choices=tuple(choices), when=when)
    low: Any = e.get("low")
    high: Any = e.get("high")
    log, step = bool(e.get("log", False)), e.get("step")
    number = int if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: {kind} needs numeric `low` and `high`, got low={low!r} high={high!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be < high, got low={low} high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got low={low}")
    if step is not None and (log or not step > 0):
        raise ConfigError(f"{where}: step must be > 0 and cannot be combined with log, got step={step}")
    return Param(name, kind, float(low), float(high), log, step, when=when)


@functools.lru_cache(maxsize=1)
def _groups() -> frozenset[str]:
    return frozenset(p.name for p in config_dir().iterdir() if p.is_dir())


def _override(name: str, value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return f"{name}={text}"


def check_spec(spec: DictConfig) -> tuple[list[Param], DictConfig]:
    """Everything that can be checked before a trial runs; returns the space and the base config."""
    if not (isinstance(spec.n_trials, int) and spec.n_trials >= 1):
        raise ConfigError(f"n_trials must be an integer >= 1, got {spec.n_trials!r}")
    if not (isinstance(spec.workers, int) and spec.workers >= 1):
        raise ConfigError(f"workers must be an integer >= 1, got {spec.workers!r}")
    if spec.timeout is not None and not (isinstance(spec.timeout, int | float) and spec.timeout > 0):
        raise ConfigError(f"timeout must be a number of seconds > 0 or null, got {spec.timeout!r}")
    if spec.objective.metric not in METRICS:
        raise ConfigError(f"objective.metric must be one of {list(METRICS)}, got {spec.objective.metric!r}")
    if spec.objective.direction not in ("maximize", "minimize"):
        raise ConfigError(
            f"objective.direction must be maximize or minimize, got {spec.objective.direction!r}"
        )
    if spec.sampler.name not in SAMPLERS or spec.pruner.name not in PRUNERS:
        raise ConfigError(
            f"sampler.name must be one of {list(SAMPLERS)} and pruner.name one of {list(PRUNERS)}; "
            f"got {spec.sampler.name!r}, {spec.pruner.name!r}"
        )
    params, base = parse_space(spec.search), compose(list(spec.base))
    groups = _groups()
    for p in params:
        _check_key(p, spec, groups)
    baseline = OmegaConf.to_container(spec.baseline) if spec.baseline else {}
    assert isinstance(baseline, dict)
    if missing := set(baseline) - {p.name for p in params}:
        raise ConfigError(f"baseline sets {sorted(missing)}, which are not in the search space")
    validate(compose([*spec.base, *(_override(str(k), v) for k, v in baseline.items())]))
    return params, base


def _check_key(p: Param, spec: DictConfig, groups: frozenset[str]) -> None:
    """The key must exist in the config the trial composes when its `when` guard holds."""
    if p.name in groups:
        options = {f.stem for f in (config_dir() / p.name).glob("*.yaml")}
        if p.type != "categorical" or set(map(str, p.choices)) - options:
            raise ConfigError(
                f"search.{p.name} picks a config group: it must be categorical over "
                f"its options {sorted(options)}, got {p.type} {list(p.choices)}"
            )
        return
    guard = [_override(k, v[0]) for k, v in p.when]
    cfg = compose([*spec.base, *guard])
    if OmegaConf.select(cfg, p.name, default="<missing>") == "<missing>":
        raise ConfigError(
            f"search.{p.name} is not a config key (with base overrides {list(spec.base)} "
            f"and its guard {guard or 'none'}); check the spelling with `hpexp train --cfg job`"
        )
    if isinstance(OmegaConf.select(cfg, p.name), DictConfig):
        raise ConfigError(f"search.{p.name} is a config section, not a value")


def compose_trial(overrides: Sequence[str]) -> DictConfig:
    """`compose(overrides)`, faster: Hydra composes the config-group choices once per distinct set,
    then Hydra's own override parser applies the value overrides (`optimizer.eta=0.3`) to a copy.
    The result equals `compose(overrides)` (tested); anything unusual takes the full path."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = _groups()
    is_value = [
        re.fullmatch(r"[A-Za-z_][\w.]*=.*", o) is not None and o.split("=")[0] not in groups
        for o in overrides
    ]
    structure = tuple(o for o, v in zip(overrides, is_value, strict=True) if not v)
    values = [o for o, v in zip(overrides, is_value, strict=True) if v]
    try:
        cfg = copy.deepcopy(_compose_cached(structure))
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(values), cfg)
        return cfg
    except Exception:  # let Hydra compose it all, and word any error its usual way
        return compose(list(overrides))


@functools.lru_cache(maxsize=16)
def _compose_cached(structure: tuple[str, ...]) -> DictConfig:
    return compose(list(structure))


def sample(trial: optuna.Trial, params: Sequence[Param], base: DictConfig) -> list[str]:
    """Suggest every parameter whose guard holds (in order); returns them as Hydra overrides."""
    values: dict[str, Any] = {}
    for p in params:
        if not all(_current(k, values, base) in allowed for k, allowed in p.when):
            continue
        if p.type == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            values[p.name] = trial.suggest_int(
                p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return [_override(k, v) for k, v in values.items()]


def _current(key: str, values: dict[str, Any], base: DictConfig) -> Any:
    if key in values:
        return values[key]
    if key in base.choices:
        return base.choices[key]
    return OmegaConf.select(base, key)


# --- storage -------------------------------------------------------------------------------------


def mask(text: str) -> str:
    """`text` with any password in URLs (user:PASSWORD@ or password=...) replaced by ***."""
    text = re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)
    return re.sub(r"(password=)[^&\s]+", r"\1***", text, flags=re.IGNORECASE)


def _password(spec: DictConfig) -> str | None:
    if value := os.environ.get(PASSWORD_ENV):
        return value
    path = spec.storage_password_file or os.environ.get(PASSWORD_FILE_ENV)
    if path:
        try:
            return Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the database password file {path}: {e.strerror}") from e
    return None


def _rdb_url(spec: DictConfig) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(spec.storage)
    except ArgumentError as e:
        raise ConfigError(f"storage {mask(spec.storage)!r} is not a database URL: {e}") from e
    if url.password or "password" in url.query:
        raise ConfigError(
            f"storage {mask(spec.storage)} has a password in it: it would be saved with the spec. "
            f"Put it in ${PASSWORD_ENV}, or in a file named by ${PASSWORD_FILE_ENV} or storage_password_file"
        )
    if url.drivername in ("postgres", "postgresql"):  # SQLAlchemy 2.1 means psycopg 3 by it
        import importlib.util

        url = url.set(
            drivername="postgresql+psycopg" if importlib.util.find_spec("psycopg") else "postgresql+psycopg2"
        )
    if (password := _password(spec)) is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


def open_storage(spec: DictConfig, folder: Path) -> optuna.storages.BaseStorage:
    """The spec's storage (default: the Journal file in `folder`), reachable, or a ConfigError."""
    if not spec.storage:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    url = _rdb_url(spec)
    kwargs = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgres") else {}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=10,
            grace_period=30,
            heartbeat_stale_trial_callback=_retry,
        )
    except Exception as e:  # sqlalchemy and driver errors share no useful base class
        reason = mask(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise ConfigError(f"cannot reach storage {mask(spec.storage)}: {reason}") from None


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a failed trial again with the same parameters (it keeps its budget slot)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)  # a reused pid is another process


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail (and enqueue again) RUNNING trials whose worker on this host is gone; returns them."""
    if getattr(study._storage, "get_heartbeat_interval", lambda: None)():  # RDB heartbeats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("host") != HOST or "pid" not in a or _alive(a["pid"], a.get("pid_start")):
            continue
        try:
            # Optuna has no public way to annotate a trial another process owns.
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"worker {HOST}:{a['pid']} died")
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        _retry(study, t)
        failed.append(t.number)
    return failed


# --- the study and its trials --------------------------------------------------------------------


def make_sampler(spec: DictConfig, params: Sequence[Param], worker: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with seed + `worker` (distinct per worker and per restart)."""
    args = {str(k): v for k, v in OmegaConf.to_container(spec.sampler).items() if k != "name"}  # type: ignore[union-attr]
    if spec.sampler.name == "grid":
        args["search_space"] = {p.name: _grid(p) for p in params}
    if args.get("seed") is not None:
        args["seed"] += worker
    try:
        return getattr(optuna.samplers, SAMPLERS[spec.sampler.name])(**args)
    except (TypeError, ValueError, ImportError) as e:
        raise ConfigError(f"sampler {spec.sampler.name} with {args}: {e}") from e


def _grid(p: Param) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices)
    if p.step is None and p.type == "float":
        raise ConfigError(f"the grid sampler needs a step or choices for search.{p.name}")
    step = p.step or 1
    return [p.low + i * step for i in range(int(math.floor((p.high - p.low) / step + 1e-9)) + 1)]


def make_pruner(spec: DictConfig) -> optuna.pruners.BasePruner:
    args = {str(k): v for k, v in OmegaConf.to_container(spec.pruner).items() if k != "name"}  # type: ignore[union-attr]
    try:
        return getattr(optuna.pruners, PRUNERS[spec.pruner.name])(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pruner {spec.pruner.name} with {args}: {e}") from e


def study_dir(spec: DictConfig, runs: Path) -> Path:
    return Path(runs) / "studies" / spec.name


def _load(spec: DictConfig, runs: Path, params: Sequence[Param], worker: int, create: bool) -> optuna.Study:
    storage = open_storage(spec, study_dir(spec, runs))
    kwargs = dict(
        study_name=spec.name,
        storage=storage,
        sampler=make_sampler(spec, params, worker),
        pruner=make_pruner(spec),
    )
    if create:
        return optuna.create_study(direction=spec.objective.direction, load_if_exists=True, **kwargs)
    try:
        return optuna.load_study(**kwargs)
    except KeyError:
        raise ConfigError(
            f"no study {spec.name!r} in {mask(spec.storage or 'the journal')}: start it first without --join"
        ) from None


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
    """A worker: pop waiting trials and run them until none is left or the deadline; returns count.

    `worker` offsets the sampler's seed; the coordinator passes index + trials so far, so a
    restarted study does not draw the same points again.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = OmegaConf.create(spec_data)
    params, base = parse_space(spec.search), compose(list(spec.base))
    study = _load(spec, runs, params, worker, create=False)
    done = 0
    while deadline is None or time.time() < deadline:
        fail_stale(study)
        # Only waiting (enqueued) trials run, so the budget is exact with any number of workers.
        trial_id = study._pop_waiting_trial_id()
        if trial_id is None:
            break
        run_trial(study, optuna.Trial(study, trial_id), spec, params, base, study_dir(spec, runs), worker)
        done += 1
    return done


@contextlib.contextmanager
def _heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Beat for the trial while it runs, when the storage has heartbeats (RDB)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: DictConfig,
    params: Sequence[Param],
    base: DictConfig,
    folder: Path,
    worker: int,
) -> None:
    """Compose the trial's config, train it with the test split sealed, tell Optuna the outcome."""
    out = (folder / "trials" / f"{trial.number:04d}").resolve()
    pid = os.getpid()
    for key, value in (
        ("host", HOST),
        ("pid", pid),
        ("pid_start", _process_start(pid)),
        ("worker", worker % 1000),  # the index; the thousands offset the sampler's seed per restart
        ("run_dir", str(out)),
    ):
        trial.set_user_attr(key, value)
    metric = spec.objective.metric
    try:
        overrides = sample(trial, params, base)
        trial.set_user_attr("overrides", overrides)
        cfg = compose_trial([*spec.base, *overrides, _monitor(base)])
        with _heartbeat(study._storage, trial._trial_id):
            run(cfg, out, on_epoch=_reporter(trial, metric), progress=False, allow_test=False)
    except KeyboardInterrupt:
        _finish(study, trial, TrialState.FAIL, status="interrupted", fail_reason="interrupted (Ctrl-C)")
        _retry(study, trial)  # type: ignore[arg-type]
        raise
    except Exception as e:  # a trial's error is the trial's outcome; the study goes on
        _finish(study, trial, TrialState.FAIL, status="failed", fail_reason=f"{type(e).__name__}: {e}")
        return
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
        _finish(study, trial, TrialState.PRUNED, **attrs)
    elif summary["status"] == "diverged" or best[0] is None:
        _finish(study, trial, TrialState.FAIL, fail_reason=f"diverged: {summary['stop_reason']}", **attrs)
    else:
        _finish(study, trial, TrialState.COMPLETE, best[0], **attrs)


def _monitor(base: DictConfig) -> str:
    """Trials monitor what the base config does, minus the test split, plus validation."""
    splits = [s for s in base.train.monitor if s != "test"]
    return f"train.monitor=[{','.join(splits + ['val'] * ('val' not in splits))}]"


def _reporter(trial: optuna.Trial, metric: str) -> Any:
    def hook(record: dict[str, Any]) -> Stop | None:
        value = record.get(metric, math.nan)
        if not math.isfinite(value):
            return None  # the run itself ends as diverged
        trial.report(value, record["epoch"])
        if trial.should_prune():
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
    data = OmegaConf.to_container(spec, resolve=True)
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
        f"study {spec.name}: {spec.n_trials} trials, {spec.workers} worker(s), storage "
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


def _watch(study: optuna.Study, workers: list[Any], spec: DictConfig, quiet: bool) -> None:
    seen: set[int] = set()
    tty = sys.stdout.isatty() and not quiet
    last = time.monotonic()
    while True:
        alive = any(w.is_alive() for w in workers)
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state in FINISHED and t.number not in seen:
                seen.add(t.number)
                if not quiet:
                    print(("\r\033[K" if tty else "") + _trial_line(t, trials, spec, seen), flush=True)
        if tty:
            print("\r\033[K" + _status_line(trials, spec), end="", flush=True)
        elif not quiet and time.monotonic() - last >= 60:  # a log file gets the running epochs once a minute
            print(_status_line(trials, spec), flush=True)
            last = time.monotonic()
        if not alive:
            break
        time.sleep(0.5)
    if tty:
        print("\r\033[K", end="", flush=True)


def _best(trials: Sequence[FrozenTrial], spec: DictConfig) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pick = max if spec.objective.direction == "maximize" else min
    return pick(complete, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]


def _counts(trials: Sequence[FrozenTrial], spec: DictConfig, numbers: set[int] | None = None) -> str:
    """ "k/n done": finished trials (among `numbers`, if given), a failed-and-retried trial not counted."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    done = sum(
        t.state in FINISHED and t.number not in retried and (numbers is None or t.number in numbers)
        for t in trials
    )
    return f"{done}/{spec.n_trials} done"


def _status_line(trials: Sequence[FrozenTrial], spec: DictConfig) -> str:
    best = _best(trials, spec)
    running = [f"#{t.number} epoch {t.last_step or 0}" for t in trials if t.state == TrialState.RUNNING]
    best_text = f"best {best.value:.4f} (#{best.number})" if best else "best -"
    return f"[{_counts(trials, spec)}, {best_text}; running {', '.join(running) or '-'}]"


def _trial_line(t: FrozenTrial, trials: Sequence[FrozenTrial], spec: DictConfig, seen: set[int]) -> str:
    best = _best(trials, spec)
    value = f"{spec.objective.metric} {t.value:.4f}" if t.value is not None else ""
    why = t.user_attrs.get("fail_reason") or (
        t.user_attrs.get("stop_reason") if t.state != TrialState.COMPLETE else ""
    )
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    parts = [
        f"trial {t.number:>4} {t.state.name.lower():8}",
        value,
        params,
        why or "",
        f"| {_counts(trials, spec, seen)}",
        f"best {best.value:.4f} (#{best.number})" if best else "",
    ]
    return "  ".join(p for p in parts if p)


def summary_text(study: optuna.Study, spec: DictConfig, runs: Path) -> str:
    trials = study.get_trials(deepcopy=False)
    folder = study_dir(spec, runs)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {spec.name}: " + ", ".join(f"{n} {k}" for k, n in states.items() if n)]
    if best := _best(trials, spec):
        lines += [
            f"best trial #{best.number}: {spec.objective.metric} {best.value:.4f} at epoch "
            f"{best.user_attrs.get('best_epoch')}",
            f"  overrides: {' '.join(best.user_attrs.get('overrides', []))}",
            f"  run directory: {best.user_attrs.get('run_dir')}",
        ]
    lines += [
        f"study folder: {folder} (spec.yaml, trials/NNNN/ run directories"
        + (", journal.log)" if not spec.storage else f"); storage {mask(spec.storage)}"),
        f"score the test set once: hpexp study {spec.name} --finalize",
        f"report: hpexp report --study {spec.name}",
    ]
    return "\n".join(lines)


# --- finalize: the test set, once ----------------------------------------------------------------


def finalize(spec: DictConfig, runs: Path = Path("runs"), seeds: int | None = None) -> dict[str, Any]:
    """Retrain the best trial's config with K fresh seeds (epoch chosen by validation), score test once."""
    from hpexp import data
    from hpexp.network import Network
    from hpexp.train import evaluate, rng_streams

    k = seeds or spec.final_seeds
    if not (isinstance(k, int) and k >= 1):
        raise ConfigError(f"final_seeds must be an integer >= 1, got {k!r}")
    params = parse_space(spec.search)
    study = _load(spec, runs, params, 0, create=False)
    best = _best(study.get_trials(deepcopy=False), spec)
    if best is None:
        raise ConfigError(f"study {spec.name} has no completed trial to finalize; run the search first")
    folder, base = study_dir(spec, runs), compose(list(spec.base))
    overrides = [*spec.base, *best.user_attrs["overrides"], _monitor(base)]
    rows, test = [], None
    for seed in range(spec.seed + 1, spec.seed + 1 + k):
        cfg = compose([*overrides, f"seed={seed}", "train.restore_best=true", "train.save_weights=true"])
        out = run(cfg, folder / "final" / f"seed_{seed}", progress=False, allow_test=False)
        summary = rundir.read_summary(out)
        if test is None:  # the one place a study reads the test split
            d = cfg.data
            test = data.load_splits(
                d.dir,
                n_train=d.n_train,
                n_validation=d.n_validation,
                scale=d.scale,
                dtype=cfg.dtype,
                splits=["test"],
            )["test"]
        parts = validate(cfg)
        network = Network.create(
            cfg.network.sizes, parts.activation, parts.cost, parts.init, rng_streams(seed)["init"], cfg.dtype
        )
        with np.load(out / "weights.npz") as saved:
            for i, p in enumerate(network.params):
                p[...] = saved[f"arr_{i}"]
        test_cost, test_accuracy = evaluate(network, test)
        chosen = summary.get("best") or {}
        rows.append(
            {
                "seed": seed,
                "best_epoch": summary.get("best_epoch"),
                "status": summary["status"],
                "val_accuracy": chosen.get("val_accuracy", math.nan),
                "test_accuracy": float(test_accuracy),
                "val_cost": chosen.get("val_cost", math.nan),
                "test_cost": float(test_cost),
                "run_dir": str(out.resolve()),
            }
        )
        print(
            f"seed {seed}: epoch {rows[-1]['best_epoch']}  val {100 * rows[-1]['val_accuracy']:.2f}%  "
            f"test {100 * rows[-1]['test_accuracy']:.2f}%",
            flush=True,
        )
    result = _final_result(spec, best, rows)
    rundir.write_atomic(folder / "final.json", json.dumps(result, indent=2) + "\n")
    rundir.write_atomic(folder / "final.csv", _final_csv(result))
    print(
        f"final ({k} seeds, 95% CI): val {_pm(result, 'val_accuracy')}  test {_pm(result, 'test_accuracy')}\n"
        f"wrote {folder / 'final.json'} and {folder / 'final.csv'}",
        flush=True,
    )
    return result


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t; 0 for one value)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), math.nan
    t = T95[len(x) - 2] if len(x) - 1 <= len(T95) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


COLUMNS = ("val_accuracy", "test_accuracy", "val_cost", "test_cost")


def _final_result(spec: DictConfig, best: FrozenTrial, rows: list[dict[str, Any]]) -> dict[str, Any]:
    stats = {c: mean_ci([r[c] for r in rows]) for c in COLUMNS}
    return {
        "study": spec.name,
        "objective": spec.objective.metric,
        "best_trial": best.number,
        "best_value": best.value,
        "params": best.params,
        "overrides": best.user_attrs["overrides"],
        "base": list(spec.base),
        "selection": "each seed's epoch by validation accuracy; test scored once",
        "seeds": rows,
        "mean": {c: m for c, (m, _) in stats.items()},
        "ci95": {c: h for c, (_, h) in stats.items()},
    }


def _final_csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["seed", "best_epoch", *COLUMNS])
    for r in result["seeds"]:
        writer.writerow([r["seed"], r["best_epoch"], *(r[c] for c in COLUMNS)])
    writer.writerow(["mean", "", *(result["mean"][c] for c in COLUMNS)])
    writer.writerow(["ci95", "", *(result["ci95"][c] for c in COLUMNS)])
    return out.getvalue()


def _pm(result: dict[str, Any], column: str) -> str:
    return f"{100 * result['mean'][column]:.2f}% +/- {100 * result['ci95'][column]:.2f}"


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
    args = parser.parse_args(argv)
    spec = load_spec(args.name, args.overrides)
    if args.workers is not None:
        spec.workers = args.workers
    if args.storage is not None:
        spec.storage = args.storage
    spec.base = [*spec.base, *args.base]
    if not args.finalize:
        search(spec, args.runs, join=args.join)
    if args.finalize or spec.finalize:
        finalize(spec, args.runs, args.seeds)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main(sys.argv[1:])
