"""Search quality at equal compute: random search, TPE (with the spec's pruner) and population-based
training on the same budget of trial-epochs, each repeated with different sampler seeds and
finalized (the best setting retrained with fresh seeds, the test set scored once): the table a user
reads to choose a search, in reports/search/.

    python benchmarks/bench_search.py [--studies book_l2_mlp30 mlp100] [--budget N]
        [--repetitions 3] [--methods random tpe pbt] [--interval 4] [--warmup 0] [--startup N]
        [--no-baseline]
    python benchmarks/bench_search.py --report      # rebuild reports/search/README.md from the rows

A job that accumulates across sessions: each finished (study, method, settings, budget, sampler
seed) search appends its row to reports/search/tables/runs.csv (written atomically; commit it). A
re-run skips the rows already there, and resumes an interrupted search from its Optuna storage
under --runs (SIGTERM stops it cleanly; its wall time so far is kept in the study folder's
bench.json); a search scored on the test set but not yet in the table reads its final.json instead of
scoring again. The report is built from the committed rows alone (tests/test_bench_search.py checks
that the committed README regenerates byte for byte).

The budget is in trial-epochs (one network trained for one epoch on the full 50,000 images): random
search and TPE start with budget / E trials (E: the spec's `train.epochs`, or the top of its epochs
search) and get more trials while a whole one still fits in what pruning and shorter trials left;
PBT trains budget / E members for E epochs (E: the spec's epochs, or its baseline's when epochs are
searched; keys PBT cannot change while training, such as the batch size, are fixed at the
baseline's values and named in its settings).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import importlib.util
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hpexp.paths import source_commit
from hpexp.study import pbt
from hpexp.study.coordinator import search
from hpexp.study.progress import _best
from hpexp.study.spec import check_spec, load_spec, parse_space
from hpexp.study.storage import _load, study_dir
from hpexp.train import rundir
from hpexp.train.runner import compose

METHODS = ("random", "tpe", "pbt")
ROWS = Path("reports/search/tables/runs.csv")
KEY = ["study", "method", "settings", "baseline", "budget", "sampler_seed"]
COLUMNS = [
    *KEY,
    "trials",
    "trial_epochs",
    "best_val",
    "best_is_baseline",
    "final_val",
    "test",
    "test_seeds",
    "search_s",
    "finalize_s",
    "wall_s",
    "sessions",
    "load_before",
    "load_after",
    "cores",
    "finished",
    "commits",
]


def epochs_of(spec: DictConfig, method: str) -> int:
    """Epochs per trial (random, TPE: the most a trial may take) or per member (PBT)."""
    searched = {p.name: p for p in parse_space(spec.search)}
    if "train.epochs" not in searched:
        return int(compose(list(spec.base)).train.epochs)
    if method == "pbt":  # PBT trains every member for one number of epochs: the baseline's
        return int(spec.baseline["train.epochs"])
    return int(searched["train.epochs"].high)


def variant(
    spec: DictConfig,
    method: str,
    budget: int,
    seed: int,
    interval: int,
    baseline: bool = True,
    warmup: int = 0,
    startup: int | None = None,
) -> DictConfig:
    """The spec as searched by `method` with sampler seed `seed` on `budget` trial-epochs; without
    `baseline`, no search starts from the spec's baseline (its trial 0, PBT's member 0); `startup`:
    TPE's random trials before its model chooses (n_startup_trials; None: the spec's)."""
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
        sampler = OmegaConf.to_container(spec.sampler) | {"seed": seed}
        s.sampler = OmegaConf.create(sampler | ({} if startup is None else {"n_startup_trials": startup}))
    else:
        fixed, search, baseline_values = [], {}, {}
        for p in parse_space(spec.search):
            entry = OmegaConf.select(spec.search, p.name) or spec.search[p.name]
            if p.name.startswith(pbt.FIXED) or p.name in pbt._groups():
                if spec.baseline and p.name in spec.baseline:  # the baseline's, kept even without it
                    fixed.append(f"{p.name}={spec.baseline[p.name]}")
            else:
                search[p.name] = OmegaConf.to_container(entry)
                if s.baseline and p.name in s.baseline:
                    baseline_values[p.name] = s.baseline[p.name]
        s.base = [*spec.base, *fixed]
        s.search = OmegaConf.create(search)
        s.baseline = OmegaConf.create(baseline_values) if baseline_values else None
        s.sampler = OmegaConf.create({"name": "pbt", "seed": seed, "interval": interval, "warmup": warmup})
        s.pruner = OmegaConf.create({"name": "none"})
    return s


def settings_of(s: DictConfig, spec: DictConfig) -> str:
    """What, besides the study, budget, baseline and sampler seed, makes a search this search: the
    sampler's and pruner's arguments (PBT's defaults spelled out), keys fixed for it, final seeds."""

    def args(node: Any) -> str:
        items = {str(k): v for k, v in OmegaConf.to_container(node).items() if k not in ("name", "seed")}
        return " ".join([str(node.name), *(f"{k}={v}" for k, v in items.items())])

    if pbt.is_pbt(s):
        sampler = " ".join(["pbt", *(f"{k}={v}" for k, v in pbt.arguments(s).items() if k != "seed")])
    else:
        sampler = args(s.sampler)
    fixed = [o for o in s.base if o not in list(spec.base)]
    return "; ".join(
        [
            sampler,
            "pruner " + args(s.pruner),
            *(["fixed " + " ".join(fixed)] if fixed else []),
            f"final_seeds={s.final_seeds}",
        ]
    )


def trial_epochs(spec: DictConfig, runs: Path) -> tuple[int, float]:
    """Trial-epochs the search spent (`epochs_used`); its best value."""
    study = _load(spec, runs, parse_space(spec.search), 0, create=False)
    trials = study.get_trials(deepcopy=False)
    done = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return epochs_used(trials), max(done) if done else math.nan


def epochs_used(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Every trial that trained, failed retries too; but a retry that went on from its trial's
    checkpoint in the same run folder reports the epochs it restored as its own, so per run folder
    the most epochs any attempt reached is what was trained (an interrupted PBT search, resumed,
    read 740 of 600)."""
    reached: dict[str, int] = {}
    for t in trials:
        folder = str(t.user_attrs.get("run_dir") or f"trial {t.number}")
        epochs = int(t.user_attrs.get("epochs_run") or len(t.intermediate_values))
        reached[folder] = max(reached.get(folder, 0), epochs)
    return sum(reached.values())


class Clock:
    """Seconds spent per phase, summed over sessions, in the study folder's bench.json (a killed
    session keeps what it spent: phases are written in a `finally`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = {"search_s": 0.0, "finalize_s": 0.0, "sessions": 0, "load_before": None, "load_after": None}
        self.data = json.loads(path.read_text()) if path.is_file() else fresh

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.data[name] += time.perf_counter() - start
            self.data["load_after"] = round(os.getloadavg()[0], 2)
            rundir.write_atomic(self.path, json.dumps(self.data, indent=2) + "\n")

    def session(self) -> None:
        self.data["sessions"] += 1
        if self.data["load_before"] is None:
            self.data["load_before"] = round(os.getloadavg()[0], 2)
        commits = self.data.setdefault("commits", [])  # the code of each session (hpexp.paths)
        full = source_commit()
        if (commit := full[:12] + ("+changes" if full.endswith("+changes") else "")) not in commits:
            commits.append(commit)


def one(spec: DictConfig, runs: Path, method: str, budget: int) -> dict[str, Any]:
    """Search until the budget is spent, then finalize; goes on from where an earlier session
    stopped. Random search and TPE get more trials while a whole trial still fits in what pruning
    and shorter trials left of the budget (the study resumes with a larger n_trials); PBT spends
    it exactly."""
    from hpexp.study.finalize import finalize

    folder = study_dir(spec, runs)
    clock = Clock(folder / "bench.json")
    clock.session()
    params = parse_space(spec.search)
    if (folder / "journal.log").is_file():  # an earlier session may have raised n_trials
        before = _load(spec, runs, params, 0, create=False).user_attrs.get("n_trials", 0)
        spec.n_trials = max(int(spec.n_trials), int(before))
    most = epochs_of(spec, "pbt" if method == "pbt" else "tpe")
    with clock.phase("search_s"):
        for _ in range(50):
            search(spec, runs, quiet=True)
            left = budget - trial_epochs(spec, runs)[0]
            if method == "pbt" or left < most:
                break
            spec.n_trials += left // most
    study = _load(spec, runs, params, 0, create=False)
    if study.user_attrs.get("finalized"):  # scored in an earlier session: never twice
        result = json.loads((folder / "final.json").read_text())
    else:
        with clock.phase("finalize_s"):
            result = finalize(spec, runs)
    used, best_val = trial_epochs(spec, runs)
    best = _best(study.get_trials(deepcopy=False), spec)
    assert best is not None
    c = clock.data
    return {
        "study": spec.name.rsplit("-", 2)[0],
        "method": method,
        "sampler_seed": int(spec.sampler.seed),
        "trials": int(spec.n_trials),
        "trial_epochs": used,
        "best_val": best_val,
        "best_is_baseline": is_baseline(result, spec.baseline),
        "final_val": result["mean"]["val_accuracy"],
        "test": result["mean"]["test_accuracy"],
        "test_seeds": " ".join(f"{r['test_accuracy']:.4f}" for r in result["seeds"]),
        "search_s": round(c["search_s"], 1),
        "finalize_s": round(c["finalize_s"], 1),
        "wall_s": round(c["search_s"] + c["finalize_s"], 1),
        "sessions": c["sessions"],
        "load_before": c["load_before"],
        "load_after": c["load_after"],
        "cores": os.cpu_count(),
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "commits": " ".join(c.get("commits", [])),
    }


def is_baseline(result: dict[str, Any], baseline: DictConfig | None) -> bool:
    """Whether the finalized setting is the spec's baseline (for PBT: kept all along)."""
    if not baseline:
        return False
    want = {str(k): v for k, v in OmegaConf.to_container(baseline).items()}
    if schedule := result.get("pbt_schedule"):
        return all(e["values"] == want for e in schedule)
    return bool(result["params"] == want)


def read_rows(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.read_csv(path, dtype={"settings": str, "baseline": str, "test_seeds": str, "commits": str})
    return rows.reindex(columns=COLUMNS)  # rows from before a column was added: empty there


def done(rows: pd.DataFrame, key: dict[str, Any]) -> bool:
    match = pd.Series(True, index=rows.index)
    for k, v in key.items():
        match &= rows[k].astype(str) == str(v)
    return bool(match.any())


def add_row(path: Path, row: dict[str, Any]) -> pd.DataFrame:
    """The table with `row` appended, written atomically (a killed write leaves the old table), under
    the table's update lock."""
    new = pd.DataFrame([row])[COLUMNS]  # a row missing a column is the benchmark's bug: KeyError
    with rundir.updating(path):  # another benchmark process may add its row meanwhile
        rows = read_rows(path)
        rows = pd.concat([rows, new], ignore_index=True) if len(rows) else new
        rundir.write_atomic(path, rows.to_csv(index=False))
    return rows


def report_module() -> Any:
    """benchmarks/search_report.py (beside this file), imported by path: benchmarks is no package."""
    where = Path(__file__).with_name("search_report.py")
    spec = importlib.util.spec_from_file_location("search_report", where)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["book_l2_mlp30", "mlp100"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--budget", type=int, default=None, help="trial-epochs (default: the spec's n_trials x E)"
    )
    parser.add_argument("--repetitions", type=int, default=3, help="sampler seeds 1..R")
    parser.add_argument("--interval", type=int, default=4, help="PBT's epochs between exploits")
    parser.add_argument("--warmup", type=int, default=0, help="PBT's first epoch that may exploit")
    parser.add_argument(
        "--startup", type=int, default=None, help="TPE's n_startup_trials (default: the spec's)"
    )
    parser.add_argument("--final-seeds", type=int, default=None, help="finalize seeds (default: the spec's)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="searches do not start from the spec's baseline"
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the report from the rows")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_search"))
    parser.add_argument("--out", type=Path, default=Path("reports/search"))
    args = parser.parse_args()
    table = args.out / "tables" / "runs.csv"
    if args.report:
        report_module().write(args.out, read_rows(table))
        return
    if args.repetitions < 1 or (args.budget is not None and args.budget < 1):
        parser.error(f"--repetitions and --budget must be >= 1, got {args.repetitions}, {args.budget}")
    if args.startup is not None and args.startup < 0:
        parser.error(f"--startup must be >= 0, got {args.startup}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `finally` blocks run: times are kept
    jobs = []
    for name in args.studies:  # every spec checked before any work
        spec = load_spec(name)
        if args.final_seeds:
            spec.final_seeds = args.final_seeds
        budget = args.budget or int(spec.n_trials) * epochs_of(spec, "tpe")
        for seed in range(1, args.repetitions + 1):  # repetition by repetition: a partial table is balanced
            for method in args.methods:
                s = variant(
                    spec, method, budget, seed, args.interval, not args.no_baseline, args.warmup, args.startup
                )
                check_spec(s)
                if method == "pbt":
                    pbt.check(s)
                settings = settings_of(s, spec)
                key = {
                    "study": name,
                    "method": method,
                    "settings": settings,
                    "baseline": "no" if args.no_baseline else "yes",
                    "budget": budget,
                    "sampler_seed": seed,
                }
                tag = hashlib.sha1(settings.encode()).hexdigest()[:8]
                runs = args.runs / f"{name}-b{budget}-{key['baseline']}base" / f"{method}-{tag}"
                jobs.append((key, s, runs))
    for key, s, runs in jobs:
        if done(read_rows(table), key):
            print(
                f"{key['study']} {key['method']} seed {key['sampler_seed']}: in {table} already", flush=True
            )
            continue
        print(
            f"{key['study']} {key['method']} seed {key['sampler_seed']}: {s.n_trials} trials, "
            f"budget {key['budget']} trial-epochs ({runs})",
            flush=True,
        )
        row = one(s, runs, key["method"], key["budget"]) | key
        print("  " + "  ".join(f"{k}={row[k]}" for k in COLUMNS), flush=True)
        rows = add_row(table, row)
        report_module().write(args.out, rows)  # after every search


if __name__ == "__main__":
    main()
