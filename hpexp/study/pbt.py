"""Population-based training as a study's search (`sampler: {name: pbt, ...}`).

The study's `n_trials` trials are the members of one population, trained together by one worker
process for the base config's `train.epochs`, all from the spec's `seed` and one shared mini-batch
order (so a member's recorded schedule, replayed alone, retraces it). Their starting values are
drawn at random from the search space (the `baseline` is member 0). Every `interval` epochs (from
epoch `warmup` on) the bottom `fraction` by validation copy the weights, momentum and history of a
random member of the top `fraction` (exploit), then each searched value is, with probability
`resample`, drawn afresh from its distribution, else multiplied by one of the `perturb` factors, and
kept inside its bounds (explore). Only values a member can change while training may be searched
(eta, lmbda, momentum, dropout p, schedule and stopping parameters): not config groups, the batch
size, epochs or the network. The pruner is not used: truncation selection is PBT's own.

Each trial reports its member's validation metric every epoch and ends with the best value of its
lineage's history; its user attributes hold `member`, `pbt_schedule` (the values from each epoch
on, as the lineage lived them) and `pbt_lineage`. Files, under `runs/studies/NAME/pbt/`:
`members/KK/` (run directories), `checkpoint.npz` (after every epoch, the plan included: a killed
worker's replacement goes on from it), `pbt.json` (every member's schedule, the lineage, the best
member). `--finalize` replays the best member's schedule from scratch with fresh seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hpexp.study.spec import Param, _check_keys, _groups, _monitor, compose_trial, parse_space, sample
from hpexp.study.storage import _load, study_dir
from hpexp.study.workers import _finish, _interrupted, _mark
from hpexp.train import rundir
from hpexp.train.pbt_runner import run_pbt, with_values
from hpexp.train.plans import Truncation
from hpexp.train.runner import SHARED, ConfigError, compose, validate

__all__ = ["ARGUMENTS", "check", "explore", "is_pbt", "work"]

ARGUMENTS: dict[str, Any] = {
    "seed": 0,
    "interval": 4,
    "warmup": 0,
    "fraction": 0.25,
    "perturb": [0.8, 1.25],
    "resample": 0.25,
}
FIXED = ("train.", "seed", "data", "network", "dtype")  # what no member may change while training


def is_pbt(spec: DictConfig) -> bool:
    return bool(spec.sampler.name == "pbt")


def arguments(spec: DictConfig) -> dict[str, Any]:
    given = OmegaConf.to_container(spec.sampler)
    assert isinstance(given, dict)
    return {**ARGUMENTS, **{str(k): v for k, v in given.items() if k != "name"}}


def check(spec: DictConfig) -> None:
    """Everything PBT needs of a spec, before any work; a ConfigError names the bad value."""
    given = [str(k) for k in spec.sampler if k != "name"]
    _check_keys(given, list(ARGUMENTS), "sampler.")
    a = arguments(spec)
    base = compose(list(spec.base))
    epochs = base.train.epochs
    if not (isinstance(a["interval"], int) and 1 <= a["interval"] < epochs):
        raise ConfigError(
            f"sampler.interval must be an integer in [1, train.epochs={epochs}), got {a['interval']!r}"
        )
    if not (isinstance(a["warmup"], int) and 0 <= a["warmup"] < epochs):
        raise ConfigError(
            f"sampler.warmup must be an integer in [0, train.epochs={epochs}) (the first epoch that may "
            f"exploit), got {a['warmup']!r}"
        )
    if not (isinstance(a["fraction"], int | float) and 0 < a["fraction"] <= 0.5):
        raise ConfigError(
            f"sampler.fraction must be in (0, 0.5] (the bottom and top shares), got {a['fraction']!r}"
        )
    perturb = a["perturb"]
    if not (
        isinstance(perturb, Sequence)
        and perturb
        and all(isinstance(f, int | float) and f > 0 for f in perturb)
    ):
        raise ConfigError(f"sampler.perturb must be a list of factors > 0, e.g. [0.8, 1.25], got {perturb!r}")
    if not (isinstance(a["resample"], int | float) and 0 <= a["resample"] <= 1):
        raise ConfigError(f"sampler.resample must be a probability in [0, 1], got {a['resample']!r}")
    if not (isinstance(spec.n_trials, int) and spec.n_trials >= 2):
        raise ConfigError(f"n_trials is PBT's population size and must be >= 2, got {spec.n_trials!r}")
    if spec.get("launcher"):
        raise ConfigError(
            f"PBT trains its population in one process on this machine: remove launcher={spec.launcher}"
        )
    if base.choices.get("stopping") not in (None, "none"):
        raise ConfigError(
            f"PBT trains every member for train.epochs; stopping={base.choices['stopping']} would end "
            "members early: remove it from base (stopping=none)"
        )
    groups = _groups()
    for p in parse_space(spec.search):
        if p.name in groups or p.name.startswith(FIXED) or p.name in SHARED:
            raise ConfigError(
                f"search.{p.name}: PBT changes only values a member can change while it trains "
                f"(eta, lmbda, momentum, dropout p, schedule and stopping parameters), not config groups, "
                f"{', '.join(FIXED)}; fix it in base, or search it with sampler.name=tpe or random"
            )
        if p.type != "categorical":
            for bound in (p.low, p.high):
                value = int(bound) if p.type == "int" else bound
                validate(with_values(base, {p.name: value}), selection=True)


def explore(
    values: dict[str, Any],
    params: Sequence[Param],
    rng: np.random.Generator,
    perturb: Sequence[float],
    resample: float,
) -> dict[str, Any]:
    """PBT's explore: each searched value resampled from its distribution with probability
    `resample`, else multiplied by a random `perturb` factor (a categorical keeps its value),
    then kept inside its bounds (on its step grid for a stepped or integer parameter)."""
    out = dict(values)
    for p in params:
        if p.name not in out:
            continue  # its `when` guard did not hold for this member
        if rng.random() < resample:
            out[p.name] = _draw(p, rng)
        elif p.type != "categorical":
            out[p.name] = _inside(p, out[p.name] * float(perturb[int(rng.integers(len(perturb)))]))
    return out


def _draw(p: Param, rng: np.random.Generator) -> Any:
    if p.type == "categorical":
        return p.choices[rng.integers(len(p.choices))]
    if p.log:
        return _inside(p, math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
    return _inside(p, rng.uniform(p.low, p.high))


def _inside(p: Param, value: float) -> Any:
    value = min(max(value, p.low), p.high)
    if p.step is not None or p.type == "int":
        step = p.step or 1
        value = p.low + round((value - p.low) / step) * step
        value = min(value, p.low + math.floor((p.high - p.low) / step + 1e-9) * step)
    return int(round(value)) if p.type == "int" else float(value)


def _root(trial: optuna.Trial, by_number: dict[int, Any]) -> int:
    """The first trial of a chain of retries: a retried member stays the same member."""
    number = trial.number
    while (earlier := by_number[number].user_attrs.get("retry_of")) is not None:
        number = earlier
    return number


def work(spec_data: dict[str, Any], runs: Path, worker: int = 0, deadline: float | None = None) -> int:
    """The PBT worker: take every waiting trial (the population) and train it, or go on from the
    population's checkpoint; returns how many trials it ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = OmegaConf.create(spec_data)
    params, base = parse_space(spec.search), compose(list(spec.base))
    seed = int(arguments(spec)["seed"] or 0)
    study = _load(spec, runs, params, seed, create=False)
    ids = []
    while (trial_id := study._pop_waiting_trial_id()) is not None:
        ids.append(trial_id)
    if not ids:
        return 0
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    trials = sorted((optuna.Trial(study, i) for i in ids), key=lambda t: _root(t, by_number))
    run_members(study, trials, spec, params, base, study_dir(spec, runs), worker)
    return len(trials)


def run_members(
    study: optuna.Study,
    trials: list[optuna.Trial],
    spec: DictConfig,
    params: Sequence[Param],
    base: DictConfig,
    folder: Path,
    worker: int,
) -> None:
    a, here = arguments(spec), folder / "pbt"
    outs = [(here / "members" / f"{k:02d}").resolve() for k in range(len(trials))]
    path = here / "checkpoint.npz"
    try:
        cfgs, values = [], []
        for trial, out in zip(trials, outs, strict=True):
            _mark(trial, folder, worker, a["seed"])
            trial.set_user_attr("run_dir", str(out))
            overrides = sample(trial, params, base)
            trial.set_user_attr("overrides", overrides)
            values.append({p.name: trial.params[p.name] for p in params if p.name in trial.params})
            fixed = [_monitor(base), "train.shared_order=true", f"seed={spec.seed}"]
            cfgs.append(compose_trial([*spec.base, *overrides, *fixed]))
        plan = Truncation(
            values,
            interval=a["interval"],
            warmup=a["warmup"],
            fraction=a["fraction"],
            explore=lambda v, rng: explore(v, params, rng, a["perturb"], a["resample"]),
            seed=int(a["seed"] or 0),
            metric=spec.objective.metric,
            maximize=spec.objective.direction == "maximize",
        )
        resume = path.exists()
        if resume:
            print(f"PBT: going on from {path}", flush=True)
        hooks = [_reporter(t, spec.objective.metric) for t in trials]
        run_pbt(cfgs, outs, plan, checkpoint=path, resume=resume, on_epochs=hooks, allow_test=False)
    except KeyboardInterrupt:
        _interrupted(study, trials)
        raise
    except Exception as e:  # the population's error is every member's outcome
        for t in trials:
            _finish(study, t, TrialState.FAIL, status="failed", fail_reason=f"{type(e).__name__}: {e}")
        return
    best = _tell_all(study, trials, outs, spec)
    result = {
        "schedules": plan.schedules,
        "lineage": plan.lineage,
        "best_member": best,
        "arguments": a,
        "trials": [t.number for t in trials],
        "run_dirs": [str(o) for o in outs],
    }
    rundir.write_atomic(here / "pbt.json", json.dumps(result, indent=2, default=str) + "\n")


def _reporter(trial: optuna.Trial, metric: str) -> Any:
    def hook(record: dict[str, Any]) -> None:
        value = record.get(metric, math.nan)
        if math.isfinite(value):
            trial.report(value, record["epoch"])

    return hook


def _tell_all(
    study: optuna.Study, trials: list[optuna.Trial], outs: list[Path], spec: DictConfig
) -> int | None:
    """Each trial ends with its lineage's best value; returns the best member."""
    metric, sign = spec.objective.metric, 1 if spec.objective.direction == "maximize" else -1
    best, best_value = None, -math.inf
    for k, (trial, out) in enumerate(zip(trials, outs, strict=True)):
        summary, history = rundir.read_summary(out), rundir.read_history(out)
        scored = [(sign * r[metric], r["epoch"]) for r in history if math.isfinite(r.get(metric, math.nan))]
        attrs = {
            "member": k,
            "pbt_schedule": summary["pbt"]["schedule"],
            "pbt_lineage": summary["pbt"]["lineage"],
            "status": summary["status"],
            "stop_reason": summary["stop_reason"],
            "epochs_run": summary["epochs_run"],
            "seconds": summary["seconds"],
        }
        if not scored:
            _finish(
                study, trial, TrialState.FAIL, **attrs, fail_reason=f"{summary['status']}: no finite {metric}"
            )
            continue
        value, epoch = max(scored)
        if value > best_value:
            best, best_value = k, value
        _finish(study, trial, TrialState.COMPLETE, sign * value, **attrs, best_epoch=epoch)
    return best
