"""Study storage: the Journal file or a PostgreSQL database (password from the environment, masked
everywhere), opening the study with its sampler and pruner, and failing trials of dead workers."""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from hpexp.study.daskstore import is_dask_url, open_dask_storage
from hpexp.study.journal import HOST, alive, journal_backend
from hpexp.study.spec import PRUNERS, SAMPLERS, Param
from hpexp.train.runner import ConfigError

__all__ = [
    "HOST",
    "fail_stale",
    "superseded",
    "unclaimed",
    "make_pruner",
    "make_sampler",
    "mask",
    "open_storage",
    "study_dir",
]

PASSWORD_ENV, PASSWORD_FILE_ENV = "HPEXP_DB_PASSWORD", "HPEXP_DB_PASSWORD_FILE"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# A URL's user information runs to the last @ of the word (a password may hold / or an unencoded @).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s:@'\"]*):[^\s'\"]*@")
_QUERY = re.compile(r"(?P<head>\b(?:password|passwd|pwd)=)[^&\s'\"]*", re.IGNORECASE)


def mask(text: str) -> str:
    """`text` with every password hidden: a URL's (`user:PASSWORD@`, `:PASSWORD@`, percent-encoded
    or not), a query string's or keyword's (`password=...`), and the configured one wherever it is."""
    text = _USERINFO.sub(r"\g<head>:***@", text)
    text = _QUERY.sub(r"\g<head>***", text)
    for secret in _known_secrets():
        text = text.replace(secret, "***")
    return text


_SECRETS: set[str] = set()  # passwords found in storage URLs, hidden even where no pattern shows them


def _known_secrets() -> list[str]:
    """Passwords seen (the environment's, any in a storage URL), as written and percent-encoded."""
    from urllib.parse import quote, quote_plus

    plain = {s for s in (*_SECRETS, os.environ.get(PASSWORD_ENV) or "") if len(s) >= 3}
    forms = plain | {quote(s, safe="") for s in plain} | {quote_plus(s) for s in plain}
    return sorted(forms, key=len, reverse=True)


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
        _SECRETS.update(str(v) for v in (url.password, url.query.get("password")) if v)
        raise ConfigError(
            f"storage {mask(spec.storage)} has a password in it: it would be saved with the spec. "
            f"Put it in ${PASSWORD_ENV}, or in a file named by ${PASSWORD_FILE_ENV} or storage_password_file"
        )
    if url.drivername in ("postgres", "postgresql"):  # SQLAlchemy 2.1 means psycopg 3 by it
        import importlib.util

        if not (importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2")):
            raise ConfigError(
                "PostgreSQL storage needs a driver: pip install 'hpexp[postgres]' (psycopg2-binary)"
            )
        url = url.set(
            drivername="postgresql+psycopg" if importlib.util.find_spec("psycopg") else "postgresql+psycopg2"
        )
    if (password := _password(spec)) is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


def open_storage(spec: DictConfig, folder: Path) -> optuna.storages.BaseStorage:
    """The spec's storage (default: the Journal file in `folder`), reachable, or a ConfigError."""
    if not spec.storage:
        from optuna.storages.journal import JournalStorage

        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(journal_backend(folder / "journal.log"))
    if is_dask_url(spec.storage):  # held by a Dask scheduler
        return open_dask_storage(spec.storage)
    url = _rdb_url(spec)
    kwargs = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgres") else {}
    on_stale = functools.partial(_retry_stale, max_attempts=spec.get("max_attempts"))
    try:
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna: said once in the README
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=10,
                grace_period=30,
                heartbeat_stale_trial_callback=on_stale,
            )
    except Exception as e:  # sqlalchemy and driver errors share no useful base class
        reason = mask(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise ConfigError(f"cannot reach storage {mask(spec.storage)}: {reason}") from None


def _retry(study: optuna.Study, trial: Any, max_attempts: int | None = None, died: bool = True) -> bool:
    """Enqueue a failed trial again with the same parameters (it keeps its budget slot), unless
    workers have died running it `max_attempts` times; returns whether it runs again. An
    interrupted trial (`died=False`) always runs again, as the same attempt."""
    attempt = trial.user_attrs.get("attempt", 1)
    if died and max_attempts is not None and attempt >= max_attempts:
        return False
    attrs = {"retry_of": trial.number, "attempt": attempt + died}
    # A trial killed before it sampled has no params yet: an enqueued one (a baseline, a retry) keeps
    # its fixed values; a sampled one draws afresh.
    frozen = trial if isinstance(trial, FrozenTrial) else study.get_trials(deepcopy=False)[trial.number]
    params = {**frozen.system_attrs.get("fixed_params", {}), **frozen.params}
    study.enqueue_trial(params, user_attrs=attrs | {k: True for k in ("baseline",) if k in trial.user_attrs})
    return True


def _retry_stale(study: optuna.Study, trial: FrozenTrial, max_attempts: int | None) -> None:
    """Optuna's callback for a trial whose heartbeat stopped (a database study)."""
    _retry(study, trial, max_attempts)


def superseded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Trials that another took over (a failed trial's retry, a duplicate's replacement): not counted."""
    return {t.user_attrs[k] for t in trials for k in ("retry_of", "replaces") if k in t.user_attrs}


ORPHAN_AFTER = 20.0  # seconds a RUNNING trial may go without its worker's name (popped, then killed)


def unclaimed(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials no worker has put its name on (yet, or ever: killed right after taking it)."""
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if "pid" not in t.user_attrs
    ]


def _abandoned(t: FrozenTrial, lost: Mapping[tuple[str, int], str]) -> str | None:
    """Why a RUNNING trial's worker is known to be gone, or None."""
    a = t.user_attrs
    if (why := lost.get((a.get("host"), a.get("pid")))) is not None:  # type: ignore[arg-type]
        return why
    if "pid" not in a:
        started = t.datetime_start
        now = datetime.datetime.now(started.tzinfo) if started else None
        if now and (now - started).total_seconds() > ORPHAN_AFTER:  # type: ignore[operator]
            return f"its worker never named itself in {ORPHAN_AFTER:.0f} s (killed right after taking it)"
        return None
    if a.get("host") == HOST and not alive(a["pid"], a.get("pid_start")):
        return f"worker {HOST}:{a['pid']} died"
    return None


def fail_stale(
    study: optuna.Study, max_attempts: int | None = None, lost: Mapping[tuple[str, int], str] | None = None
) -> list[int]:
    """Fail RUNNING trials whose worker is gone (on this host; or unnamed for ORPHAN_AFTER; or,
    with a database, whose heartbeat stopped; or named in `lost`, (host, pid) -> why, as a cluster's
    scheduler tells) and enqueue them again; returns their numbers."""
    if getattr(study._storage, "get_heartbeat_interval", lambda: None)():  # RDB heartbeats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (why := _abandoned(t, lost or {})) is None:
            continue
        again = t.user_attrs.get("attempt", 1) < (max_attempts or math.inf)
        try:
            # Optuna has no public way to annotate a trial another process owns.
            reason = (
                why
                if again
                else f"{why}; attempt {t.user_attrs.get('attempt', 1)} of {max_attempts}, not run again"
            )
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        _retry(study, t, max_attempts)
        failed.append(t.number)
    return failed


@contextlib.contextmanager
def _heartbeat(storage: Any, trial_ids: Sequence[int]) -> Iterator[None]:
    """Beat for the trials while they run, when the storage has heartbeats (RDB)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
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


def make_sampler(
    spec: DictConfig, params: Sequence[Param], seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """The spec's sampler; `seed` (a worker's own, see `workers.worker_seed`) replaces the spec's."""
    args = {str(k): v for k, v in OmegaConf.to_container(spec.sampler).items() if k != "name"}  # type: ignore[union-attr]
    if spec.sampler.name == "grid":
        args["search_space"] = {p.name: _grid(p) for p in params}
    if spec.sampler.name == "pbt":  # PBT draws its starting values at random, with the spec's seed
        args = {"seed": args.get("seed", 0)}
    elif seed is not None:
        args["seed"] = seed
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


def _load(
    spec: DictConfig, runs: Path, params: Sequence[Param], seed: int | None, create: bool
) -> optuna.Study:
    storage = open_storage(spec, study_dir(spec, runs))
    kwargs = dict(
        study_name=spec.name,
        storage=storage,
        sampler=make_sampler(spec, params, seed),
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
