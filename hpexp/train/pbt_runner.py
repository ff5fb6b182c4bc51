"""`run_pbt`: population-based training from composed configs to run directories.

Each member writes the usual run directory (config.yaml: its starting config; history.csv: its
lineage's records, rewritten when it copies a parent; summary.json with a `pbt` section: its
schedule and the lineage events that made it). The population checkpoints itself, with the plan,
after every epoch; `resume=True` goes on from it bit for bit, as `run_population` does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from hpexp.nn.population import stack, stackable
from hpexp.train import checkpoint as checkpoints
from hpexp.train import rundir
from hpexp.train.loop import Member, Record, Stop, rng_streams
from hpexp.train.pbt import fit_pbt
from hpexp.train.plans import Plan
from hpexp.train.runner import (
    SHARED,
    ConfigError,
    _lock,
    _saved_state,
    _summary,
    build_network,
    load_data,
    member_names,
    network_specs,
    population_key,
    restore_best,
    validate,
)

__all__ = ["run_pbt", "with_values"]


def with_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with dotted keys set (`optimizer.eta: 0.3`)."""
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def _member(cfg: DictConfig, hook: Callable[[Record], Stop | None], allow_test: bool) -> Member:
    p = validate(cfg, selection=not allow_test)
    return Member(
        p.optimizer,
        cfg.train.epochs,
        p.regularizer,
        p.schedule,
        on_epoch=hook,
        restore_best=restore_best(cfg, p),
    )


def run_pbt(
    cfgs: Sequence[DictConfig],
    out_dirs: Sequence[str | Path],
    plan: Plan,
    *,
    checkpoint: str | Path,
    resume: bool = False,
    on_epochs: Sequence[Callable[[Record], Stop | None] | None] | None = None,
    allow_test: bool = True,
) -> list[Path]:
    """Train `cfgs` (their starting configs; `plan.values` their starting values) as one population
    for `train.epochs`, changing members as `plan` decides; one run directory each."""
    parts = [validate(cfg, selection=not allow_test) for cfg in cfgs]
    if len({population_key(cfg) for cfg in cfgs}) > 1:
        differ = [k for k in SHARED if len({str(OmegaConf.select(c, k)) for c in cfgs}) > 1]
        raise ConfigError(f"configs differ in {differ}, which must be equal to train as one population")
    if len({cfg.train.epochs for cfg in cfgs}) > 1:
        raise ConfigError("population-based training trains every member for the same train.epochs")
    cfg0, outs, path = cfgs[0], [Path(o) for o in out_dirs], Path(checkpoint)
    if len(cfgs) > 1 and not stackable(network_specs(cfg0)[1]):
        raise ConfigError("population-based training needs a dense network (conv nets train one by one)")
    names = member_names(path, outs)
    saved = None
    if resume:
        saved = _saved_state(path, outs)
        plan.restore(saved.plan)
    current = [with_values(c, v) for c, v in zip(cfgs, plan.values, strict=True)]
    hooks = list(on_epochs or [None] * len(cfgs))
    writers = [rundir.HistoryWriter(o, saved.histories[k] if saved else []) for k, o in enumerate(outs)]

    def recorder(k: int) -> Callable[[Record], Stop | None]:
        def on_epoch(record: Record) -> Stop | None:
            writers[k].append(record)
            hook = hooks[k]
            return hook(record) if hook else None

        return on_epoch

    members = [_member(c, recorder(k), allow_test) for k, c in enumerate(current)]

    def after(epoch: int, histories: list[list[Record]]) -> list[tuple[int, int, Member]]:
        changes = []
        for k, j, values in plan.decide(epoch, histories):
            current[k] = with_values(current[j], values)
            changes.append((k, j, _member(current[k], recorder(k), allow_test)))
            writers[k] = rundir.HistoryWriter(outs[k], histories[j])
        return changes

    splits = load_data(cfg0, allow_test=allow_test)  # a sealed split is refused before any folder is made
    streams = [rng_streams(cfg.seed) for cfg in cfgs]
    networks = [build_network(c, p, s["init"]) for c, p, s in zip(cfgs, parts, streams, strict=True)]
    network = networks[0] if len(networks) == 1 else stack(networks)
    locks = _lock(outs)
    for cfg, out in zip(cfgs, outs, strict=True):
        rundir.write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        rundir.write_summary(out, {"status": "running", "seed": cfg.seed, **rundir.RunLock.owner()})
    started = time.perf_counter()
    try:
        with threadpool_limits(limits=1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
            results = fit_pbt(
                network,
                splits["train"],
                {s: splits[s] for s in cfg0.train.monitor},
                members,
                epochs=cfg0.train.epochs,
                batch_size=cfg0.train.batch_size,
                rng=streams[0]["shuffle"] if cfg0.train.shared_order else [s["shuffle"] for s in streams],
                after=after,
                expansion=parts[0].expansion,
                dropout_rng=streams[0]["dropout"],
                augment_rng=streams[0]["augment"],
                checkpoint=lambda s: checkpoints.save(path, replace(s, members=names, plan=plan.state())),
                resume=saved,
            )
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        for cfg, out in zip(cfgs, outs, strict=True):
            summary = {"status": status, "stop_reason": repr(e), "seed": cfg.seed}
            rundir.write_summary(out, summary | {"epochs_run": len(rundir.read_history(out))})
        raise
    else:
        seconds = (time.perf_counter() - started) / len(cfgs)
        n_params = sum(p.size for p in networks[0].params)
        for k, (cfg, out, result) in enumerate(zip(current, outs, results, strict=True)):
            summary = _summary(cfg, validate(cfg, selection=not allow_test), result, seconds, n_params)
            summary["pbt"] = {
                "member": k,
                "schedule": plan.schedules[k],
                "lineage": [e for e in plan.lineage if e["member"] == k],
            }
            rundir.write_summary(out, summary)
            if cfg.train.save_weights:
                rundir.write_weights(out, result.params)
        path.unlink(missing_ok=True)
    finally:
        for lock in locks:
            lock.release()
    return outs
