"""The book registry: every experiment of Nielsen's chapters 1, 3, 5 and 6 as a preset, run and compared.

A preset is `conf/experiment/book/<id>.yaml`, a `@package _global_` config selected by
`hpexp train +experiment=book/<id>`. Its `book:` block holds the book's metadata and what to compare:

    book:
      chapter, section, demonstrates, source, note   where the experiment is and what it shows
      value, metric, selection                       the book's headline number and how it was read
      run, epoch, log, rounding                      (optional) which run / epoch; log10; the book's rounding
      pick: {metric, selection}                      (optional) the book quoted the best of its runs by this
      deterministic                                  (optional) a computation, not a training run: own table
      explain                                        (optional) why rows miss, once the runs are in
      runner                                         (optional) a function like hpexp.train.runner.run
      seeds                                          (optional) 1 for deterministic experiments
      runs: [{name, overrides: [...]}, ...]          (optional) several runs, e.g. a sweep over eta
      checks: [{run, metric, selection, value, epoch, log, rounding, note}, ...]
      plots: [{name, y, x, runs, xlim, ylim, logx, logy, also, kind}, ...]          the book's figures

A check takes one number per seed from a run's history (`selection` of `metric`) and compares it with
the book's value in two views: by the book's rule (ONE run, chosen as the book chose: the best of its
runs by `pick`, or the first seed where the book ran once, and every row of the experiment read from
that run) and as the mean over seeds with its 95% interval. Either is reproduced when
|ours - book| <= tolerance, where the tolerance is derived, never set by hand (see `tolerance`).
Values are in the history's units: accuracies are fractions.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from hpexp.paths import config_dir
from hpexp.stats import mean_ci
from hpexp.train import rundir

__all__ = [
    "Check",
    "Experiment",
    "Progress",
    "compare",
    "compose_run",
    "estimate_seconds",
    "load",
    "presets_dir",
    "record_provenance",
    "registry",
    "run_dirs",
    "run_experiments",
    "chosen_seed",
    "select",
    "tolerance",
]

Record = dict[str, Any]
REQUIRED = (
    "chapter",
    "section",
    "demonstrates",
    "source",
    "value",
    "metric",
    "selection",
    "note",
)
SELECTIONS = ("peak", "min", "final", "first", "epoch", "epoch_of_min", "epoch_of_max", "best_val")
RUNS_DIR, REPORTS_DIR = Path("runs/book"), Path("reports/book")
DEFAULT_RUNNER = "hpexp.train.runner.run"
QUALITATIVE_POINTS = 0.03  # an accuracy row whose tolerance exceeds 3 points cannot be checked


@dataclass(frozen=True)
class Check:
    """One number of the book and how to read ours: `selection` of `metric` in run `run`'s history.

    `rounding` is half a unit of the book's last printed digit where the book rounds (its accuracies
    are counts of images, exact); by default it is read from how the value is written."""

    metric: str
    selection: str
    value: float | None
    run: str = ""
    epoch: int | None = None
    log: bool = False
    rounding: float | None = None
    note: str = ""

    @property
    def label(self) -> str:
        what = (
            f"{self.metric} at epoch {self.epoch}"
            if self.selection == "epoch"
            else (f"{self.selection} {self.metric}")
        )
        return f"{self.run}: {what}" if self.run else what

    @property
    def is_accuracy(self) -> bool:
        return self.metric.endswith("accuracy") and not self.selection.startswith("epoch_of")

    def book_rounding(self) -> float:
        if self.rounding is not None:
            return float(self.rounding)
        if self.value is None or self.is_accuracy:
            return 0.0
        exponent = Decimal(repr(self.value)).as_tuple().exponent
        return 0.5 * 10.0 ** int(exponent)


@dataclass(frozen=True)
class Experiment:
    """A preset: its metadata, its runs (name -> overrides) and its checks (the first is the headline)."""

    id: str
    meta: dict[str, Any]
    runs: dict[str, list[str]]
    checks: list[Check]
    plots: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chapter(self) -> int:
        return int(self.meta["chapter"])

    @property
    def runner(self) -> str:
        return str(self.meta.get("runner") or DEFAULT_RUNNER)

    def seeds(self, requested: int) -> int:
        return int(self.meta.get("seeds") or requested)

    @property
    def deterministic(self) -> bool:
        return bool(self.meta.get("deterministic"))


def presets_dir() -> Path:
    return config_dir() / "experiment" / "book"


def _check(item: dict[str, Any], defaults: dict[str, Any]) -> Check:
    inherited = ("metric", "selection", "epoch", "log")
    merged = {k: defaults.get(k) for k in inherited} | item
    if merged["selection"] not in SELECTIONS:
        raise ValueError(f"unknown selection {merged['selection']!r}; valid: {', '.join(SELECTIONS)}")
    if merged["selection"] == "epoch" and merged.get("epoch") is None:
        raise ValueError("selection 'epoch' needs an `epoch`")
    if unknown := set(merged) - set(Check.__dataclass_fields__):
        raise ValueError(f"unknown check keys {sorted(unknown)}; valid: {list(Check.__dataclass_fields__)}")
    given = {k: v for k, v in merged.items() if v is not None}
    return Check(**{"value": None} | given)


def load(experiment_id: str) -> Experiment:
    """Read one preset's `book:` block (without composing the whole config)."""
    path = presets_dir() / f"{experiment_id}.yaml"
    if not path.exists():
        raise ValueError(f"no book experiment {experiment_id!r}; `hpexp book list` shows them")
    try:
        preset = OmegaConf.load(path)
        block = preset.get("book") if isinstance(preset, DictConfig) else None
        meta = cast(dict[str, Any], OmegaConf.to_container(block or OmegaConf.create({}), resolve=True))
    except Exception as e:  # a YAML syntax error: name the file
        raise ValueError(f"{path}: {e}") from None
    if missing := [k for k in REQUIRED if k not in meta]:
        raise ValueError(f"{path}: book block lacks {', '.join(missing)}")
    runs = {r["name"]: list(r.get("overrides", [])) for r in meta.get("runs") or []} or {"": []}
    headline = {k: meta.get(k) for k in ("run", "epoch", "value", "rounding")} | {
        "run": meta.get("run") or ""
    }
    checks = [_check(c, meta) for c in [headline, *(meta.get("checks") or [])]]
    for c in checks:
        if c.run not in runs:
            raise ValueError(f"{path}: check names run {c.run!r}; runs are {list(runs)}")
    pick = meta.get("pick")
    if pick is not None and (set(pick) != {"metric", "selection"} or pick["selection"] not in SELECTIONS):
        raise ValueError(f"{path}: pick must be {{metric, selection}} with a selection of {SELECTIONS}")
    return Experiment(experiment_id, meta, runs, checks, list(meta.get("plots") or []))


def registry(chapter: int | None = None) -> list[Experiment]:
    """Every preset, ordered by chapter then id."""
    experiments = [load(p.stem) for p in sorted(presets_dir().glob("*.yaml"))]
    experiments.sort(key=lambda e: (e.chapter, e.id))
    return [e for e in experiments if chapter is None or e.chapter == chapter]


# --- reading our numbers -------------------------------------------------------------------------


def select(history: Sequence[Record], check: Check) -> float:
    """Our number for `check` from one run's history (NaN when the metric is missing)."""
    rows = [r for r in history if check.metric in r]
    if not rows:
        return math.nan
    values = [float(r[check.metric]) for r in rows]
    s = check.selection
    if s == "epoch":
        return next((float(r[check.metric]) for r in rows if r["epoch"] == check.epoch), math.nan)
    if s in ("peak", "min", "epoch_of_min", "epoch_of_max"):
        finite = [(v, r["epoch"]) for v, r in zip(values, rows, strict=True) if math.isfinite(v)]
        if not finite:
            return math.nan
        low = min(finite, key=lambda t: t[0])
        high = max(finite, key=lambda t: t[0])
        return {"peak": high[0], "min": low[0], "epoch_of_min": low[1], "epoch_of_max": high[1]}[s]
    if s == "best_val":
        scored = [r for r in rows if math.isfinite(r.get("val_accuracy", math.nan))]
        return float(max(scored, key=lambda r: r["val_accuracy"])[check.metric]) if scored else math.nan
    return values[0] if s == "first" else values[-1]


def run_dirs(experiment: Experiment, run: str, runs_dir: Path = RUNS_DIR) -> list[Path]:
    """The finished run directories of one run of an experiment, one per seed."""
    base = runs_dir / experiment.id
    dirs = sorted(base.glob(f"seed*/{run}".rstrip("/")), key=lambda p: seed_of(p, base))
    return [d for d in dirs if rundir.read_summary(d).get("status") in ("completed", "diverged", "stalled")]


def seed_of(run_dir: Path, base: Path) -> int:
    return int(run_dir.relative_to(base).parts[0][4:])


def seed_values(experiment: Experiment, check: Check, runs_dir: Path = RUNS_DIR) -> dict[int, float]:
    """Our number for `check`, seed by seed."""
    base = runs_dir / experiment.id
    return {
        seed_of(d, base): select(rundir.read_history(d), check)
        for d in run_dirs(experiment, check.run, runs_dir)
    }


def chosen_seed(experiment: Experiment, runs_dir: Path = RUNS_DIR) -> int | None:
    """The ONE run the book's rule takes: the best seed by `pick` (the book quoted the best of its
    runs), else the first seed (the book ran once). Every row of the experiment reads this seed."""
    pick = experiment.meta.get("pick")
    if pick is None:
        seeds = seed_values(experiment, experiment.checks[0], runs_dir)
        return min(seeds) if seeds else None
    rule = Check(metric=pick["metric"], selection=pick["selection"], value=None, run=experiment.checks[0].run)
    values = {k: v for k, v in seed_values(experiment, rule, runs_dir).items() if math.isfinite(v)}
    return max(values, key=lambda k: (values[k], -k)) if values else None  # ties: the first seed


def evaluated_images(experiment: Experiment, check: Check, runs_dir: Path = RUNS_DIR) -> int | None:
    """How many images an accuracy of `check` is measured on (None for other metrics)."""
    dirs = run_dirs(experiment, check.run, runs_dir)
    if not check.is_accuracy or not dirs:
        return None
    data = OmegaConf.load(dirs[0] / "config.yaml").data
    split = check.metric.split("_")[0]
    return {"test": 10_000, "val": data.get("n_validation"), "train": data.get("n_train")}.get(split)


def tolerance(check: Check, ours: Sequence[float], images: int | None) -> tuple[float, str]:
    """The tolerance of a row and what sets it: the largest of the book's rounding, twice the standard
    deviation of our seeds (a run is one draw, the book's too: two sigma covers 95% of such draws),
    and for accuracies the test-set resolution, the binomial standard error sqrt(p(1-p)/n) on the n
    images evaluated. In log10 units for `log` checks."""
    value = check.value if check.value is not None else math.nan
    finite = [v for v in ours if math.isfinite(v) and (v > 0 or not check.log)]
    points = [math.log10(v) for v in finite] if check.log else finite
    rounding = check.book_rounding()
    if check.log and value > 0:
        rounding = math.log10(1 + rounding / value)
    terms = {
        "the book's rounding": rounding,
        "2 x seed std": 2 * statistics.stdev(points) if len(points) > 1 else 0.0,
        "binomial SE": math.sqrt(value * (1 - value) / images) if images and 0 <= value <= 1 else 0.0,
    }
    term = max(terms, key=lambda k: terms[k])
    return terms[term], term


def _diff(check: Check, ours: float) -> float:
    if check.value is None or not math.isfinite(ours):
        return math.nan
    if check.log:
        return math.log10(ours / check.value) if ours > 0 else math.nan
    return ours - check.value


def _verdict(check: Check, diff: float, tol: float) -> str | None:
    if check.value is None or not math.isfinite(diff):
        return None
    if check.is_accuracy and tol > QUALITATIVE_POINTS:
        return "qualitative"
    return "yes" if abs(diff) <= tol + 1e-12 else "no"


def compare(
    experiment: Experiment, check: Check, runs_dir: Path = RUNS_DIR, seed: int | None = None
) -> dict[str, Any]:
    """The check's row in both views: the run chosen by the book's rule (`seed`, by default
    `chosen_seed`) and the mean over seeds with its 95% interval; each with its difference from the
    book and its verdict (yes, no, or qualitative when an accuracy's tolerance exceeds 3 points)."""
    by_seed = seed_values(experiment, check, runs_dir)
    seed = chosen_seed(experiment, runs_dir) if seed is None else seed
    ours = list(by_seed.values())
    if check.log:  # orders of magnitude: the geometric mean and its interval, from log10 values
        m, half, n = mean_ci([math.log10(v) for v in ours if v > 0])
        mean, low, high = 10**m, 10 ** (m - half), 10 ** (m + half)
    else:
        mean, half, n = mean_ci(ours)
        low, high = mean - half, mean + half
        if check.is_accuracy:  # an accuracy's interval stays inside [0, 1]
            low, high = max(low, 0.0), min(high, 1.0)
    finite = [v for v in ours if math.isfinite(v)]
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0 if finite else math.nan
    tol, term = tolerance(check, ours, evaluated_images(experiment, check, runs_dir))
    rule = by_seed.get(seed, math.nan) if seed is not None else math.nan
    diff_rule, diff_mean = _diff(check, rule), _diff(check, mean)
    return {
        "id": experiment.id,
        "chapter": experiment.chapter,
        "check": check.label,
        "book": check.value,
        "seeds": ours,
        "seed_ids": list(by_seed),
        "chosen_seed": seed if by_seed else None,
        "rule": rule,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "std": std,
        "diff_rule": diff_rule,
        "diff": diff_mean,
        "tolerance": tol if ours else math.nan,
        "tolerance_term": term,
        "log": check.log,
        "reproduced_rule": _verdict(check, diff_rule, tol),
        "reproduced": _verdict(check, diff_mean, tol),
        "deterministic": experiment.deterministic,
        "metric": check.metric,
        "selection": check.selection,
        "note": check.note,
        "explain": str(experiment.meta.get("explain") or "").strip(),
    }


# --- running -------------------------------------------------------------------------------------


def compose_run(experiment: Experiment, run: str, seed: int, extra: Sequence[str] = ()) -> Any:
    from hpexp.train.runner import compose

    # Seeds train together (a population) but each in its own mini-batch order: every seed's run is
    # the run it would be alone, as the book's independent repeats were.
    overrides = [*experiment.runs[run], f"seed={seed}", "train.shared_order=false", *extra]
    return compose([f"+experiment=book/{experiment.id}", *overrides])


def estimate_seconds(cfg: Any) -> float:
    """A rough duration of one run, for the time-left display: per-step overhead plus the multiply-adds
    of training and of the evaluation of the monitored splits (constants fitted on this engine: a
    50,000-image epoch of 784-30-10 with the test set monitored takes about 0.35 s on one core)."""
    if cfg.book.get("seconds") is not None:
        return float(cfg.book.seconds)
    sizes = list(cfg.network.sizes)
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    n = cfg.data.n_train
    n_eval = sum({"train": n, "val": cfg.data.n_validation, "test": 10_000}[s] for s in cfg.train.monitor)
    every = cfg.train.get("eval_every") or 1
    steps = math.ceil(n / cfg.train.batch_size)
    return cfg.train.epochs * (steps * 5e-5 + n * macs * 1e-10 + n_eval * macs * 5e-11 / every) + 1.0


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Prints what runs and how long is left; the estimate is rescaled by the runs done so far."""

    def __init__(self, total: float, count: int, every: float = 20.0) -> None:
        self.total, self.count, self.every = total, count, every
        self.done_estimate = self.done_seconds = 0.0
        self.started, self.last, self.index = time.perf_counter(), 0.0, 0

    def _left(self, current: float) -> float:
        ratio = self.done_seconds / self.done_estimate if self.done_estimate > 30 else 1.0
        return max(0.0, self.total - self.done_estimate - current) * ratio

    def start(self, label: str, estimate: float) -> Callable[[Record], None]:
        self.index += 1
        self.label, self.estimate, self.run_started = label, estimate, time.perf_counter()
        print(
            f"[{self.index}/{self.count}] {label} (~{_fmt(estimate)}; left ~{_fmt(self._left(0))})",
            flush=True,
        )

        def on_epoch(record: Record) -> None:
            now = time.perf_counter()
            if now - self.last >= self.every:
                self.last = now
                epochs = int(record.get("epochs") or 0)
                fraction = min(1.0, (now - self.run_started) / max(estimate, 1e-9))
                print(
                    f"    {label} epoch {record.get('epoch')}{f'/{epochs}' if epochs else ''}; "
                    f"elapsed {_fmt(now - self.started)}, left ~{_fmt(self._left(fraction * estimate))}",
                    flush=True,
                )

        return on_epoch

    def finish(self, status: str) -> None:
        seconds = time.perf_counter() - self.run_started
        self.done_estimate += self.estimate
        self.done_seconds += seconds
        print(
            f"    {status} in {_fmt(seconds)}; elapsed {_fmt(time.perf_counter() - self.started)}, "
            f"left ~{_fmt(self._left(0))}",
            flush=True,
        )


def _is_done(out: Path, cfg: Any) -> bool:
    """A run is done when it finished with the same training config. The `book:` block (the book's
    numbers and how to read ours) does not change what a run computes, and a key the saved config
    lacks is an option added since, whose default keeps the old behaviour: neither reruns anything."""
    if rundir.read_summary(out).get("status") not in ("completed", "diverged", "stalled"):
        return False
    now = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    before = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(out / "config.yaml")))
    return _same(now, before, ignored=("out_dir", "book"))


def _same(now: Any, before: Any, ignored: Sequence[str] = ()) -> bool:
    if isinstance(now, dict) and isinstance(before, dict):
        return all(k in now and _same(now[k], v) for k, v in before.items() if k not in ignored)
    return bool(now == before)


def source_commit() -> str:
    """The git commit of the code running (suffixed `+changes` when the work tree differs), or
    `unknown` outside a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--", "hpexp", "conf").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def record_provenance(runs_dir: Path, experiment_id: str, label: str, seconds: float, status: str) -> None:
    """Add one finished run (or population of seeds) to runs_dir/ID/provenance.json: the commit
    that produced it and its wall time, which the pages print."""
    path = runs_dir / experiment_id / "provenance.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known[label] = {
        "commit": source_commit(),
        "seconds": round(seconds, 1),
        "status": status,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(path, json.dumps(known, indent=1) + "\n")


def run_experiments(
    experiments: Sequence[Experiment],
    seeds: int = 3,
    runs_dir: Path = RUNS_DIR,
    extra: Sequence[str] = (),
    force: bool = False,
) -> list[str]:
    """Run every (experiment, run, seed) not already done with the same config; returns the messages
    of runs skipped (a missing optional dependency) or failed, which do not stop the others."""
    from hydra.utils import get_method

    from hpexp.book.runners import Skip
    from hpexp.train.runner import run_population

    plan = []
    for e in experiments:
        for k in range(e.seeds(seeds)):
            for name in e.runs:
                cfg = compose_run(e, name, k, extra)
                out = runs_dir / e.id / f"seed{k}" / name
                if force or not _is_done(out, cfg):
                    plan.append((e, name, k, cfg, out))
    # The seeds of one run differ only in their seed: they train together, as one population.
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for item in plan:
        e, name, k = item[:3]
        groups.setdefault((e.id, name) if e.runner == DEFAULT_RUNNER else (e.id, name, k), []).append(item)
    progress = Progress(sum(estimate_seconds(p[3]) for p in plan), len(groups))
    skipped: list[str] = []
    for items in groups.values():
        e, name = items[0][:2]
        label = f"{e.id}{f'/{name}' if name else ''} seed{','.join(str(i[2]) for i in items)}"
        hook = progress.start(label, sum(estimate_seconds(i[3]) for i in items))
        started = time.perf_counter()
        epochs = items[0][3].train.epochs
        on_epoch = lambda r, h=hook, n=epochs: h(r | {"epochs": n})  # noqa: E731
        try:
            if len(items) > 1:
                run_population(
                    [i[3] for i in items],
                    [i[4] for i in items],
                    on_epochs=[on_epoch] + [None] * (len(items) - 1),
                    progress=False,
                )
            else:
                get_method(e.runner)(items[0][3], items[0][4], on_epoch=on_epoch, progress=False)
            status = ", ".join(sorted({rundir.read_summary(i[4]).get("status", "done") for i in items}))
            progress.finish(status)
            record_provenance(runs_dir, e.id, label, time.perf_counter() - started, status)
        except Skip as why:
            skipped.append(f"{label}: skipped, {why}")
            progress.finish("skipped")
        except Exception as e:  # one broken run must not end hours of others; reported at the end
            skipped.append(f"{label}: failed, {type(e).__name__}: {e}")
            progress.finish("failed")
        else:
            continue
        print(f"    {skipped[-1]}", file=sys.stderr)
    return skipped
