"""Finalize a study: retrain its best configuration with fresh seeds, choose each seed's epoch by
validation, score the test set once, and write `final.json` and `final.csv` (mean +/- 95% CI)."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from hpexp.stats import mean_ci
from hpexp.study.progress import _best
from hpexp.study.spec import _monitor, parse_space
from hpexp.study.storage import _load, study_dir
from hpexp.train import rundir
from hpexp.train.pbt_runner import run_pbt, with_values
from hpexp.train.plans import Replay
from hpexp.train.runner import ConfigError, compose, run_population, validate

__all__ = ["finalize"]


def finalize(
    spec: DictConfig, runs: Path = Path("runs"), seeds: int | None = None, *, again: bool = False
) -> dict[str, Any]:
    """Retrain the best trial's config with K fresh seeds (epoch chosen by validation), score test once.
    The best member of a population-based training study is retrained by replaying its schedule.

    A study is scored once: a second scoring is refused (saying when the first was, and its result)
    unless `again`; every scoring is recorded in the study (user attribute `finalized`).
    The K seeds train as one population, each in its own seed's mini-batch order, so each ends
    where it would alone."""
    k = seeds or spec.final_seeds
    if not (isinstance(k, int) and k >= 1):
        raise ConfigError(f"final_seeds must be an integer >= 1, got {k!r}")
    params = parse_space(spec.search)
    study = _load(spec, runs, params, 0, create=False)
    scorings = list(study.user_attrs.get("finalized", [])) or _scored_by_file(study_dir(spec, runs))
    if scorings and not again:
        raise ConfigError(_scored_before(spec, scorings))
    best = _best(study.get_trials(deepcopy=False), spec)
    if best is None:
        raise ConfigError(f"study {spec.name} has no completed trial to finalize; run the search first")
    folder, base = study_dir(spec, runs), compose(list(spec.base))
    overrides = [*spec.base, *best.user_attrs["overrides"], _monitor(base)]
    fixed = ["train.restore_best=true", "train.save_weights=true", "train.shared_order=false"]
    cfgs = [compose([*overrides, f"seed={s}", *fixed]) for s in range(spec.seed + 1, spec.seed + 1 + k)]
    outs = [folder / "final" / f"seed_{cfg.seed}" for cfg in cfgs]
    if schedule := best.user_attrs.get("pbt_schedule"):  # population-based training: replay it
        start = schedule[0]["values"]
        plan = Replay([dict(start) for _ in cfgs], schedule=schedule)
        cfgs = [with_values(cfg, start) for cfg in cfgs]
        run_pbt(cfgs, outs, plan, checkpoint=folder / "final" / "checkpoint.npz", allow_test=False)
    else:
        run_population(cfgs, outs, progress=False, allow_test=False)
    test = _test_split(cfgs[0])  # the one place a study reads the test split
    rows = []
    for cfg, out in zip(cfgs, outs, strict=True):
        rows.append(_score(cfg, out, test))
        print(
            f"seed {cfg.seed}: epoch {rows[-1]['best_epoch']}  val {100 * rows[-1]['val_accuracy']:.2f}%  "
            f"test {100 * rows[-1]['test_accuracy']:.2f}%",
            flush=True,
        )
    result = _final_result(spec, best, rows)
    if schedule:
        result["pbt_schedule"] = schedule
    study.set_user_attr("finalized", [*scorings, _scoring(result)])  # before anything can fail
    rundir.write_atomic(folder / "final.json", json.dumps(result, indent=2) + "\n")
    rundir.write_atomic(folder / "final.csv", _final_csv(result))
    print(
        f"final ({k} seeds, 95% CI): val {_pm(result, 'val_accuracy')}  test {_pm(result, 'test_accuracy')}\n"
        f"wrote {folder / 'final.json'} and {folder / 'final.csv'}",
        flush=True,
    )
    return result


def _test_split(cfg: DictConfig) -> Any:
    from hpexp.train.runner import load_data

    return load_data(cfg, splits=["test"])["test"]


def _score(cfg: DictConfig, out: Path, test: Any) -> dict[str, Any]:
    """One seed's row: its validation-chosen epoch (restored weights) scored on the test split."""
    from hpexp.train.loop import evaluate, rng_streams
    from hpexp.train.runner import build_network

    summary, parts = rundir.read_summary(out), validate(cfg)
    network = build_network(cfg, parts, rng_streams(cfg.seed)["init"])
    with np.load(out / "weights.npz") as saved:
        for i, p in enumerate(network.params):
            p[...] = saved[f"arr_{i}"]
    masks = parts.regularizer.eval_masks(len(network.layers))  # network3-style dropout scales at evaluation
    test_cost, test_accuracy = evaluate(network, test, masks)
    chosen = summary.get("best") or {}
    return {
        "seed": cfg.seed,
        "best_epoch": summary.get("best_epoch"),
        "status": summary["status"],
        "val_accuracy": chosen.get("val_accuracy", math.nan),
        "test_accuracy": float(test_accuracy),
        "val_cost": chosen.get("val_cost", math.nan),
        "test_cost": float(test_cost),
        "run_dir": str(out.resolve()),
    }


def _scoring(result: dict[str, Any]) -> dict[str, Any]:
    """What the study records of one scoring of the test set."""
    return {
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "best_trial": result["best_trial"],
        "seeds": len(result["seeds"]),
        "test_accuracy": result["mean"]["test_accuracy"],
        "test_accuracy_ci95": result["ci95"]["test_accuracy"],
    }


def _scored_by_file(folder: Path) -> list[dict[str, Any]]:
    """A scoring recorded only by its final.json (a study finalized before scorings were recorded)."""
    path = folder / "final.json"
    if not path.is_file():
        return []
    result = json.loads(path.read_text())
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
    return [{**_scoring(result), "at": mtime.isoformat(timespec="seconds")}]


def _scored_before(spec: DictConfig, scorings: list[dict[str, Any]]) -> str:
    last = scorings[-1]
    when = "once" if len(scorings) == 1 else f"{len(scorings)} times, last"
    return (
        f"study {spec.name} has been scored on the test set {when} at {last['at']} (best trial "
        f"#{last['best_trial']}, {last['seeds']} seeds: test "
        f"{100 * last['test_accuracy']:.2f}% +/- {100 * last['test_accuracy_ci95']:.2f}); "
        "the test set is scored once. Pass --again to score it again (both scorings stay recorded)"
    )


COLUMNS = ("val_accuracy", "test_accuracy", "val_cost", "test_cost")


def _final_result(spec: DictConfig, best: FrozenTrial, rows: list[dict[str, Any]]) -> dict[str, Any]:
    stats = {c: mean_ci([r[c] for r in rows])[:2] for c in COLUMNS}
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
