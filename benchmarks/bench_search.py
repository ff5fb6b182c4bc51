"""Search quality at equal compute: random search, TPE (with the spec's pruner) and population-based
training on the same budget of trial-epochs, each repeated with different sampler seeds and
finalized (the best setting retrained with fresh seeds, the test set scored once); prints the table
a user reads to choose a search and writes it to reports/search/ (README.md, tables/*.csv).

    nice -n 10 python benchmarks/bench_search.py [--studies book_l2_mlp30 mlp100] [--budget N]
        [--repetitions 3] [--methods random tpe pbt] [--interval 4] [--out reports/search]

The budget is in trial-epochs (one network trained for one epoch on the full 50,000 images): random
search and TPE start with budget / E trials (E: the spec's `train.epochs`, or the top of its epochs
search) and get more trials while a whole one still fits in what pruning and shorter trials left;
PBT trains budget / E members for E epochs (E: the spec's epochs, or its baseline's when epochs are
searched; keys PBT cannot change while training, such as the batch size, are fixed at the
baseline's values). The table says what each search used. Wall times depend on the machine's
load, which the report states (the 1-minute load average before and after each search).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hpexp.report.pages import _md_table
from hpexp.stats import mean_ci
from hpexp.study import pbt
from hpexp.study.coordinator import search
from hpexp.study.finalize import finalize
from hpexp.study.spec import check_spec, load_spec, parse_space
from hpexp.study.storage import _load
from hpexp.train.runner import compose

METHODS = ("random", "tpe", "pbt")


def epochs_of(spec: DictConfig, method: str) -> int:
    """Epochs per trial (random, TPE: the most a trial may take) or per member (PBT)."""
    searched = {p.name: p for p in parse_space(spec.search)}
    if "train.epochs" not in searched:
        return int(compose(list(spec.base)).train.epochs)
    if method == "pbt":  # PBT trains every member for one number of epochs: the baseline's
        return int(spec.baseline["train.epochs"])
    return int(searched["train.epochs"].high)


def variant(
    spec: DictConfig, method: str, budget: int, seed: int, interval: int, baseline: bool = True
) -> DictConfig:
    """The spec as searched by `method` with sampler seed `seed` on `budget` trial-epochs; without
    `baseline`, no search starts from the spec's baseline (its trial 0, PBT's member 0)."""
    s = copy.deepcopy(spec)
    if not baseline:
        s.baseline = None
    s.name, s.timeout, s.finalize = f"{spec.name}-{method}-seed{seed}", None, False
    epochs = epochs_of(spec, method)
    s.n_trials = max(2, budget // epochs)
    if method == "random":
        s.sampler, s.pruner = (
            OmegaConf.create({"name": "random", "seed": seed}),
            OmegaConf.create({"name": "none"}),
        )
    elif method == "tpe":
        s.sampler = OmegaConf.merge(spec.sampler, {"seed": seed})
    else:
        fixed, search, baseline = [], {}, {}
        for p in parse_space(spec.search):
            entry = OmegaConf.select(spec.search, p.name) or spec.search[p.name]
            if p.name.startswith(pbt.FIXED) or p.name in pbt._groups():
                if spec.baseline and p.name in spec.baseline:  # the baseline's, kept even without it
                    fixed.append(f"{p.name}={spec.baseline[p.name]}")
            else:
                search[p.name] = OmegaConf.to_container(entry)
                if s.baseline and p.name in s.baseline:
                    baseline[p.name] = s.baseline[p.name]
        s.base = [*spec.base, *fixed]
        s.search, s.baseline = OmegaConf.create(search), OmegaConf.create(baseline) if baseline else None
        s.sampler = OmegaConf.create({"name": "pbt", "seed": seed, "interval": interval})
        s.pruner = OmegaConf.create({"name": "none"})
    return s


def trial_epochs(spec: DictConfig, runs: Path) -> tuple[int, float]:
    """Trial-epochs the search spent (every trial that trained, failed retries too); its best value."""
    study = _load(spec, runs, parse_space(spec.search), 0, create=False)
    trials = study.get_trials(deepcopy=False)
    used = sum(int(t.user_attrs.get("epochs_run") or len(t.intermediate_values)) for t in trials)
    done = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return used, max(done) if done else math.nan


def one(spec: DictConfig, runs: Path, method: str, budget: int) -> dict[str, Any]:
    """Search until the budget is spent, then finalize. Random search and TPE get more trials while
    a whole trial still fits in what pruning and shorter trials left of the budget (the study
    resumes with a larger n_trials); PBT spends it exactly."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    most = epochs_of(spec, "tpe" if method != "pbt" else "pbt")
    for _ in range(50):
        search(spec, runs, quiet=True)
        left = budget - trial_epochs(spec, runs)[0]
        if method == "pbt" or left < most:
            break
        spec.n_trials += left // most
    searched = time.perf_counter() - start
    result = finalize(spec, runs)
    wall = time.perf_counter() - start
    used, best = trial_epochs(spec, runs)
    return {
        "study": spec.name.rsplit("-", 2)[0],
        "method": method,
        "sampler_seed": int(spec.sampler.seed),
        "trials": int(spec.n_trials),
        "trial_epochs": used,
        "best_val": best,
        "test": result["mean"]["test_accuracy"],
        "test_ci95": result["ci95"]["test_accuracy"],
        "final_seeds": len(result["seeds"]),
        "search_s": round(searched, 1),
        "wall_s": round(wall, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (name, method), part in rows.groupby(["study", "method"], sort=False):
        test, half, n = mean_ci(part["test"])
        out.append(
            {
                "study": name,
                "method": method,
                "n": n,
                "test_mean": test,
                "test_ci95": half,
                "best_val_mean": part["best_val"].mean(),
                "wall_s_mean": part["wall_s"].mean(),
                "trial_epochs_mean": part["trial_epochs"].mean(),
                "budget": int(part["budget"].iloc[0]),
            }
        )
    return pd.DataFrame(out)


def percent(v: float) -> str:
    return "n/a (n=1)" if not math.isfinite(v) else f"{100 * v:.2f}"


def markdown(table: pd.DataFrame, rows: pd.DataFrame, command: str, started: str, note: str = "") -> str:
    lines = [
        "# Search quality at equal compute",
        "",
        *([note, ""] if note else []),
        f"`{command}` (benchmarks/bench_search.py), started {started}, on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}). The machine was shared with other "
        "jobs: the 1-minute load average before and after each search is in the per-run table; wall "
        "times are only comparable at equal load.",
        "",
        "Test accuracy: each search's best setting retrained with fresh seeds (its `final_seeds`), each "
        "read at its best-validation epoch, the test set scored once; the table gives the mean over "
        "repetitions (different sampler seeds) with a 95% Student-t interval (n = repetitions; none "
        "for n = 1). Best validation: the search's best trial (optimistic: chosen as the best of many).",
        "",
        "| study | search | n | test accuracy % (95% CI) | best val % | wall s (search + finalize) "
        "| trial-epochs used / budget |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        ci = "" if not math.isfinite(r.test_ci95) else f" +/- {100 * r.test_ci95:.2f}"
        lines.append(
            f"| {r.study} | {r.method} | {r.n} | {100 * r.test_mean:.2f}{ci} | {100 * r.best_val_mean:.2f} "
            f"| {r.wall_s_mean:.0f} | {r.trial_epochs_mean:.0f} / {r.budget} |"
        )
    lines += ["", "Every run:", "", _md_table(rows.round(4)), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["book_l2_mlp30", "mlp100"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--budget", type=int, default=None, help="trial-epochs (default: the spec's n_trials x E)"
    )
    parser.add_argument("--repetitions", type=int, default=3, help="sampler seeds 1..R")
    parser.add_argument("--interval", type=int, default=4, help="PBT's epochs between exploits")
    parser.add_argument("--final-seeds", type=int, default=None, help="finalize seeds (default: the spec's)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="searches do not start from the spec's baseline"
    )
    parser.add_argument("--note", default="", help="a paragraph for the report, under its title")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_search"))
    parser.add_argument("--out", type=Path, default=Path("reports/search"))
    args = parser.parse_args()
    if args.repetitions < 1 or (args.budget is not None and args.budget < 1):
        parser.error(f"--repetitions and --budget must be >= 1, got {args.repetitions}, {args.budget}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/bench_search.py " + " ".join(sys.argv[1:])
    rows = []
    specs = {}
    for name in args.studies:  # every spec checked before any work
        spec = load_spec(name)
        if args.final_seeds:
            spec.final_seeds = args.final_seeds
        budget = args.budget or int(spec.n_trials) * epochs_of(spec, "tpe")
        for seed in range(1, args.repetitions + 1):  # repetition by repetition: a partial table is balanced
            for method in args.methods:
                s = variant(spec, method, budget, seed, args.interval, not args.no_baseline)
                check_spec(s)
                if method == "pbt":
                    pbt.check(s)
                specs[(name, method, seed)] = (s, budget)
    for (name, method, seed), (s, budget) in specs.items():
        print(f"{name} {method} seed {seed}: {s.n_trials} trials, budget {budget} trial-epochs", flush=True)
        row = one(s, args.runs / f"seed{seed}", method, budget) | {"budget": budget}
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
        write(args.out, pd.DataFrame(rows), command, started, args.note)  # after every search
    table = summary(pd.DataFrame(rows))
    print(table.to_string(index=False))


def write(out: Path, rows: pd.DataFrame, command: str, started: str, note: str = "") -> None:
    table = summary(rows)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "tables" / "runs.csv", index=False)
    table.to_csv(out / "tables" / "search.csv", index=False)
    buffer = io.StringIO(markdown(table, rows, command, started, note))
    (out / "README.md").write_text(buffer.getvalue())


if __name__ == "__main__":
    main()
