"""Study specs: load `studies/NAME.yaml` through Hydra, check it, and turn its search space into
trial configs (Optuna suggestions -> Hydra overrides -> a composed config)."""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from hpexp.nn.network import DenseSpec
from hpexp.paths import config_dir, studies_dir
from hpexp.train import batching
from hpexp.train.runner import ConfigError, compose, network_specs, validate

__all__ = [
    "Param",
    "check_arguments",
    "check_spec",
    "compose_trial",
    "load_spec",
    "parse_space",
    "population_size",
    "sample",
    "tpe_startup",
]

TYPES = ("float", "int", "categorical")
METRICS = {"val_accuracy": "maximize", "val_cost": "minimize", "val_loss": "minimize"}
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "bruteforce": "BruteForceSampler",
    "nsgaii": "NSGAIISampler",
    "qmc": "QMCSampler",  # needs SciPy
    "pbt": "RandomSampler",  # population-based training (hpexp.study.pbt); random starting values
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "none": "NopPruner",
}
# The keys a spec must set, and the others with their defaults; any other key is refused.
REQUIRED = ("search", "objective", "sampler", "pruner", "n_trials", "workers")
DEFAULTS: dict[str, Any] = {
    "name": None,  # the spec's file name
    "base": [],
    "baseline": None,
    "timeout": None,
    "population": "auto",
    "max_restarts": 10,
    "max_attempts": 3,
    "storage": None,
    "storage_password_file": None,
    "seed": 0,
    "final_seeds": 3,
    "finalize": False,
    "launcher": None,  # where the workers run (hpexp.study.launchers); null: local processes
    "artifacts": None,  # where the trials' files go (hpexp.study.artifacts); null: the study folder
}
OBJECTIVE_KEYS = ("metric", "direction")


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
    overrides = _add_defaults(OmegaConf.load(folder / f"{stem}.yaml"), overrides)
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            spec = hydra_compose(stem, overrides=overrides)
    except HydraException as e:
        raise ConfigError(f"study spec {stem}: {' '.join(str(e).split())}") from e
    _check_keys(spec, [*REQUIRED, *DEFAULTS], "")
    if missing := [k for k in REQUIRED if spec.get(k) is None]:
        raise ConfigError(f"study spec {stem} does not set {', '.join(missing)} (see studies/README.md)")
    _check_keys(spec.objective, OBJECTIVE_KEYS, "objective.")
    defaults: dict[str, Any] = {**DEFAULTS, "name": stem}
    merged = OmegaConf.merge(defaults, spec)
    assert isinstance(merged, DictConfig)
    return merged


def population_size(spec: DictConfig, base: DictConfig) -> int:
    """How many trials a worker trains at once: `population` if a number; for `auto`, the fastest
    population size on this machine for the base config's network, batch size and dtype, measured
    with one BLAS thread as workers train (hpexp.train.batching; 1 for conv nets, which train one
    by one), and no more than a worker's share of the trials."""
    if spec.sampler.name == "pbt":
        return int(spec.n_trials)  # population-based training: the whole population at once
    if spec.population != "auto":
        return int(spec.population)
    from threadpoolctl import threadpool_limits

    input_shape, specs = network_specs(base)
    if len(input_shape) != 1 or not all(isinstance(s, DenseSpec) for s in specs):
        return 1
    sizes = [input_shape[0], *(s.units for s in specs if isinstance(s, DenseSpec))]
    share = max(1, spec.n_trials // spec.workers)
    with threadpool_limits(limits=1, user_api="blas"):
        return batching.population(sizes, base.train.batch_size, base.dtype, largest=share)


def _add_defaults(written: Any, overrides: Sequence[str]) -> list[str]:
    """Overrides as Hydra takes them: `max_restarts=20` for a spec key the file leaves to its
    default becomes `+max_restarts=20`; an unknown key is refused here, with a close one named."""
    out = []
    for override in overrides:
        key = re.match(r"([A-Za-z_]\w*)[\w.]*=", override)
        if key and key[1] not in (written or {}):
            _check_keys([key[1]], [*REQUIRED, *DEFAULTS], "")
            override = f"+{override}"
        out.append(override)
    return out


def _check_keys(node: Any, valid: Sequence[str], where: str) -> None:
    """Refuse keys a spec does not know (a typo would otherwise be ignored), naming a close one."""
    for key in node:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown study spec key {where}{key}{hint}")


def check_arguments(kind: str, cls: Any, args: dict[str, Any]) -> None:
    """Refuse a sampler or pruner argument its class does not take, naming a close one."""
    valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    _check_keys(args, valid, f"{kind}.")


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
    if not (spec.population == "auto" or (isinstance(spec.population, int) and spec.population >= 1)):
        raise ConfigError(
            f"population must be an integer >= 1 (trials trained together) or auto (the fastest on "
            f"this machine), got {spec.population!r}"
        )
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
    for kind, table in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if kind == "sampler" and spec.sampler.name == "pbt":
            continue  # its arguments are PBT's own (hpexp.study.pbt.check)
        args = {str(k): v for k, v in spec[kind].items() if k != "name"}
        check_arguments(
            kind,
            getattr(optuna.samplers if kind == "sampler" else optuna.pruners, table[spec[kind].name]),
            args,
        )
    if spec.sampler.name == "tpe":
        tpe_startup(spec.sampler)  # refuses a count that is not one
    for key, least in (("max_restarts", 0), ("max_attempts", 1)):
        if not (isinstance(spec[key], int) and not isinstance(spec[key], bool) and spec[key] >= least):
            raise ConfigError(f"{key} must be an integer >= {least}, got {spec[key]!r}")
    params, base = parse_space(spec.search), compose_trial(list(spec.base))
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
    _check_guard(p, groups)
    guard = [_override(k, v[0]) for k, v in p.when]
    cfg = compose([*spec.base, *guard])
    if OmegaConf.select(cfg, p.name, default="<missing>") == "<missing>":
        raise ConfigError(
            f"search.{p.name} is not a config key (with base overrides {list(spec.base)} "
            f"and its guard {guard or 'none'}); check the spelling with `hpexp train --cfg job`"
        )
    if isinstance(OmegaConf.select(cfg, p.name), DictConfig):
        raise ConfigError(f"search.{p.name} is a config section, not a value")


def _check_guard(p: Param, groups: frozenset[str]) -> None:
    """A `when:` guard on a config group names options the group has (a typo would never hold)."""
    for key, allowed in p.when:
        if key in groups:
            options = sorted(f.stem for f in (config_dir() / key).glob("*.yaml"))
            if bad := [v for v in allowed if str(v) not in options]:
                raise ConfigError(
                    f"search.{p.name}: its guard `when: {{{key}: {bad[0]}}}` names no option of {key}; "
                    f"valid: {options}"
                )


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


def _monitor(base: DictConfig) -> str:
    """Trials monitor what the base config does, minus the test split, plus validation."""
    splits = [s for s in base.train.monitor if s != "test"]
    return f"train.monitor=[{','.join(splits + ['val'] * ('val' not in splits))}]"


def tpe_startup(sampler: Mapping[str, Any]) -> int:
    """The trials a TPE sampler draws at random before its model chooses: its n_startup_trials,
    else Optuna's default (read from TPESampler's signature, so an upgrade that changes it shows)."""
    if "n_startup_trials" in sampler:
        n = sampler["n_startup_trials"]
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
            raise ConfigError(f"sampler.n_startup_trials must be an integer >= 0, got {n!r}")
        return n
    return int(inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default)
