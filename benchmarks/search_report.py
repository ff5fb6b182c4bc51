"""reports/search/README.md from the benchmark's rows alone (reports/search/tables/runs.csv): one
table per study x budget x baseline, the targets of issue 20, and PBT - TPE with its interval.
`python benchmarks/bench_search.py --report` runs `write`; the rows are the only input, so the page
regenerates byte for byte from a clone."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from hpexp.report.pages import _md_table
from hpexp.stats import MIN_N_INTERVAL, Estimate, mean_interval, welch_difference
from hpexp.study.spec import tpe_startup
from hpexp.train import rundir

ORDER = {"random": 0, "tpe": 1, "pbt": 2}
# study -> (finalized mean test accuracy to reach, wall seconds allowed for search + finalize)
# Issue 20's targets are about a network, whatever the study spec that searches it.
TARGETS = {
    "784-30-10 with L2": (("book_l2_mlp30",), 0.968, 600),
    "784-100-10": (("mlp100", "mlp100_step", "mlp100_shift"), 0.982, 1200),
}
GROUP = ["study", "budget", "baseline"]


def pct(e: Estimate) -> str:
    """A mean in % with its interval, or the values when there are too few for one."""
    if not math.isfinite(e.value):
        return "n/a"
    if e.has_interval:
        return f"{e.value:.2f} [{e.lo:.2f}, {e.hi:.2f}]"
    return f"{e.value:.2f} (values {', '.join(f'{v:.2f}' for v in e.values)}; no interval)"


def searches(part: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The searches of one group, labelled by method (and by a letter when a method was run with
    more than one setting), in the order random, TPE, PBT."""
    out = []
    for method, rows in sorted(part.groupby("method", sort=False), key=lambda m: ORDER.get(m[0], 9)):
        kinds = list(dict.fromkeys(rows["settings"]))
        for i, settings in enumerate(kinds):
            label = method if len(kinds) == 1 else f"{method} [{'abcdefgh'[i]}]"
            out.append((label, rows[rows["settings"] == settings].sort_values("sampler_seed")))
    return out


def against_tpe(found: list[tuple[str, pd.DataFrame]]) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Each PBT search of a group (one per setting, e.g. warm-up 0 and 24) with each TPE search's
    rows, named as their table rows are ("PBT [b] - TPE", "PBT - TPE [a]")."""
    tpes = [(label, r) for label, r in found if label.startswith("tpe")]
    return [
        (f"PBT{label[3:]} - TPE{tpe_label[3:]}", r, tpe)
        for label, r in found
        if label.startswith("pbt")
        for tpe_label, tpe in tpes
    ]


def startup_argument(settings: str) -> dict[str, int]:
    """A TPE setting's own n_startup_trials, if it has one (the pruner's arguments follow the
    sampler's, with one of the same name)."""
    found = re.search(r"\bn_startup_trials=(\d+)", settings.split(";", 1)[0])
    return {"n_startup_trials": int(found.group(1))} if found else {}


def model_chosen(r: pd.DataFrame) -> str:
    """How many of a TPE search's trials its model chose, against those it drew at random."""
    startup = tpe_startup(startup_argument(r["settings"].iloc[0]))
    chosen = (r["trials"] - startup).clip(lower=0)
    return (
        f"TPE's model chose {chosen.mean():.1f} of its {r['trials'].mean():.1f} trials on average "
        f"(the first {startup}, n_startup_trials, are random draws"
        + ("; so at this budget TPE was a random search" if chosen.max() == 0 else "")
        + ")"
    )


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per search: n, the finalized test mean and its interval (in %, inside [0, 100])."""
    out = []
    for key, part in rows.groupby(GROUP, sort=True):
        for label, r in searches(part):
            test = mean_interval(100 * r["test"], 0, 100)
            out.append(
                {
                    **dict(zip(GROUP, key, strict=True)),
                    "search": label,
                    "settings": r["settings"].iloc[0],
                    "n": test.n,
                    "test_mean": round(test.value, 4),
                    "test_lo": round(test.lo, 4),
                    "test_hi": round(test.hi, 4),
                    "best_val_mean": round(100 * r["best_val"].mean(), 4),
                    "final_val_mean": round(100 * r["final_val"].mean(), 4),
                    "wall_s_mean": round(r["wall_s"].mean(), 1),
                    "wall_s_max": round(r["wall_s"].max(), 1),
                    "trial_epochs_mean": round(r["trial_epochs"].mean(), 1),
                }
            )
    return pd.DataFrame(out)


def flags(settings: str) -> str:
    """A setting's non-default arguments as bench_search.py's flags: PBT's interval and warm-up,
    TPE's n_startup_trials ("" for others)."""
    if settings.startswith("tpe"):
        own = startup_argument(settings)
        return f" --startup {own['n_startup_trials']}" if own else ""
    pbt = dict(re.findall(r"\b(interval|warmup)=(\d+)", settings)) if settings.startswith("pbt") else {}
    if not pbt or pbt == {"interval": "4", "warmup": "0"}:
        return ""
    return "".join(f" --{k} {v}" for k, v in pbt.items())


def commands(study: str, budget: int, baseline: str, n: int, searches: list[tuple[str, str]]) -> list[str]:
    """The commands that add these rows, for `searches` as (method, settings): one per set of flags,
    naming its methods unless it ran all three (a PBT run with a non-default interval or warm-up, or
    a TPE run with its own n_startup_trials, names them, and a re-run of another command never runs
    them with the defaults instead)."""
    flag = "" if baseline == "yes" else " --no-baseline"
    by_flags: dict[str, list[str]] = {}
    for method, settings in searches:
        methods = by_flags.setdefault(flags(settings), [])
        if method not in methods:
            methods.append(method)
    out = []
    for extra, methods in by_flags.items():
        chosen = "" if sorted(methods) == sorted(ORDER) else " --methods " + " ".join(methods)
        out.append(
            f"python benchmarks/bench_search.py --studies {study} --budget {budget} --repetitions {n}"
            f"{flag}{chosen}{extra}"
        )
    return out


def difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """mean(a) - mean(b) of the finalized test accuracy in points, Welch (the repetitions of two
    searches are independent draws: nothing but the seed's number ties repetition k of one to k of
    the other), inside [-100, 100]."""
    d = welch_difference(100 * a["test"], 100 * b["test"], -100, 100)
    if not d.has_interval:
        return f"{d.value:+.2f} points (n = {len(a)} and {len(b)}: too few for an interval)"
    interval = f"95% interval [{d.lo:+.2f}, {d.hi:+.2f}]"
    return f"{d.value:+.2f} points, {interval} ({d.method}; n = {len(a)} and {len(b)})"


def code(r: pd.DataFrame) -> str:
    """The commits the repetitions ran on (rows from before they were recorded: 'not recorded')."""
    commits = r["commits"]  # empty for rows made before the column (read_rows adds it)
    known = [c for row in commits.dropna() for c in str(row).split()]
    missing = int(commits.isna().sum())
    parts = list(dict.fromkeys(known)) + ([f"not recorded ({missing} of {len(r)})"] if missing else [])
    return ", ".join(parts)


def group_section(key: tuple[Any, ...], part: pd.DataFrame) -> list[str]:
    study, budget, baseline = key
    found = searches(part)
    n = int(part.groupby(["method", "settings"]).size().max())
    start = (
        "from the spec's baseline (its trial 0, PBT's member 0)"
        if baseline == "yes"
        else "without the baseline"
    )
    lines = [
        f"## {study}: {budget:,} trial-epochs, searches {start}",
        "",
        "| search | n | finalized test % (mean, 95% CI) | best val % (search) | val % (finalize) "
        "| wall s mean (max) | trial-epochs used / budget | load (1 min) | sessions | code |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in found:
        test = mean_interval(100 * r["test"], 0, 100)
        loads = pd.concat([r["load_before"], r["load_after"]])
        lines.append(
            f"| {label} | {test.n} | {pct(test)} | {100 * r['best_val'].mean():.2f} "
            f"| {100 * r['final_val'].mean():.2f} | {r['wall_s'].mean():.0f} ({r['wall_s'].max():.0f}) "
            f"| {r['trial_epochs'].mean():.0f} / {budget} | {loads.min():.1f}-{loads.max():.1f} "
            f"| {int(r['sessions'].max())} | {code(r)} |"
        )
    lines += ["", "Settings:", ""]
    lines += [
        f"- {label}: {r['settings'].iloc[0]}" + (f"; {model_chosen(r)}" if label.startswith("tpe") else "")
        for label, r in found
    ]
    for name, pbt, tpe in against_tpe(found):
        lines += ["", f"{name}, finalized test accuracy: {difference(pbt, tpe)}."]
    same = [
        f"{label}: {int(r['best_is_baseline'].sum())} of {len(r)}"
        for label, r in found
        if r["best_is_baseline"].any()
    ]
    if same:
        lines += [
            "",
            "The finalized setting was the spec's baseline in " + "; ".join(same) + " repetitions: those "
            "finalizations are one and the same retraining (seeds 1..K), so their spread is not the "
            "search's.",
        ]
    ran = [(r["method"].iloc[0], r["settings"].iloc[0]) for _, r in found]
    lines += ["", "Rows: " + "; ".join(f"`{c}`" for c in commands(study, budget, baseline, n, ran)), ""]
    return lines


def targets(rows: pd.DataFrame) -> list[str]:
    """Issue 20's targets, each met or not, from the rows."""
    lines = []
    for network, (studies, accuracy, seconds) in TARGETS.items():
        part = rows[rows["study"].isin(studies)]
        target = f"{network} ({', '.join(studies)}): {100 * accuracy:.1f}% within {seconds / 60:.0f} min"
        if part.empty:
            lines.append(f"- {target}: **not run yet**.")
            continue
        best = None
        for key, g in part.groupby(GROUP, sort=True):
            for label, r in searches(g):
                mean, wall = 100 * r["test"].mean(), r["wall_s"].max()
                met = mean >= 100 * accuracy and wall <= seconds
                if best is None or (met, mean) > (best[0], best[1]):
                    best = (met, mean, wall, label, key, len(r), int(r["best_is_baseline"].sum()))
        assert best is not None
        met, mean, wall, label, key, n, by_baseline = best
        verdict, start = "met" if met else "not met", "with" if key[2] == "yes" else "without"
        if n < MIN_N_INTERVAL:
            verdict += f" so far (n = {n} < {MIN_N_INTERVAL}: provisional)"
        lines.append(
            f"- {target}: **{verdict}**; "
            f"best: {key[0]} {label} at {key[1]:,} trial-epochs ({start} the baseline), "
            f"mean {mean:.2f}% over n = {n}, slowest repetition {wall:.0f} s"
            + (
                f"; {'every repetition' if by_baseline == n else f'{by_baseline} of {n} repetitions'} "
                "finalized the spec's baseline (the hand-tuned setting: the search found nothing better "
                "on validation), one and the same retraining."
                if by_baseline
                else "."
            )
        )
    wins = []
    for key, g in rows.groupby(GROUP, sort=True):
        for name, pbt, tpe in against_tpe(searches(g)):
            diff = 100 * (pbt["test"].mean() - tpe["test"].mean())
            d = welch_difference(100 * pbt["test"], 100 * tpe["test"], -100, 100)
            span = f", interval [{d.lo:+.2f}, {d.hi:+.2f}]" if d.has_interval else ""
            wins.append(
                (
                    diff >= 0,
                    min(len(pbt), len(tpe)),
                    f"{key[0]} at {key[1]:,} ({'with' if key[2] == 'yes' else 'without'} "
                    f"the baseline): {name} {diff:+.2f} points{span}, n = {len(pbt)} and {len(tpe)}",
                    d.has_interval and d.lo < 0,
                )
            )
    verdict = "not compared yet" if not wins else ("met" if any(w[0] for w in wins) else "not met")
    if any(w[0] for w in wins) and all(w[3] for w in wins if w[0]):
        verdict += " by the means only (each such interval also holds PBT below TPE: a tie within noise)"
    if any(w and n < MIN_N_INTERVAL for w, n, *_ in wins) and not any(
        w and n >= MIN_N_INTERVAL for w, n, *_ in wins
    ):
        verdict += f" so far (only where n < {MIN_N_INTERVAL}: provisional)"
    lines.append(
        f"- PBT at least matches TPE's mean finalized test accuracy on one study: **{verdict}**"
        + (f" ({'; '.join(w[2] for w in wins)})." if wins else ".")
    )
    return lines


HOW = """How to read it. Each search ran on the budget of trial-epochs its heading names (one trial-epoch:
one network trained one epoch on the 50,000 training images), then was finalized: its best setting
retrained with K fresh seeds (seeds 1..K, each its own init and mini-batch order, read at its
best-validation epoch) and the test set scored once; its row holds the mean over those K seeds
(per seed in `test_seeds`). n is the number of repetitions (searches with sampler seeds 1..n); the
interval is the 95% Student-t interval over them (n - 1 df) intersected with [0, 100]%, and none is
given below n = 3. Best val is the search's best trial (optimistic: the best of many, on one training
seed); val (finalize) is the same setting's mean validation over the fresh seeds. Wall time is
search + finalize, summed over the sessions a search took, on a machine shared with other jobs (the
1-minute load average at the start and end of each search is in the rows): compare wall times only
at equal load. Equal trial-epochs are not equal compute where the batch size is searched: in mlp100's
searches an epoch at mini-batch 5-9 took two to three times one at 40-100.

What is paired and what is not. Random search and TPE mix the sampler seed with fresh OS entropy
in each worker (the project's rule, so two workers never draw alike): their draws cannot be replayed
from it, and repetition k of one search shares nothing with repetition k of another but the
number. PBT's draws follow its seed exactly. Every search trains its trials with the spec's training
seed, and every finalization uses seeds 1..K, whatever the method: the training randomness is shared
across all rows, not between some. So PBT - TPE is an unpaired difference of means over
repetitions (Welch's interval); with n = 3 a difference of a few tenths of a point is within noise."""


def markdown(rows: pd.DataFrame) -> str:
    lines = [
        "# Search quality at equal compute",
        "",
        "Random search, TPE (with the spec's pruner) and population-based training at equal budgets of "
        "trial-epochs, each finalized on the test set once. Targets (issue 20, on this 2-core machine):",
        "",
        *targets(rows),
        "",
        "Rebuilt from [tables/runs.csv](tables/runs.csv) alone by `python benchmarks/bench_search.py "
        "--report`; the command under each table adds its rows (a re-run skips the rows already there "
        "and resumes an interrupted search from its Optuna storage).",
        "",
    ]
    for key, part in rows.groupby(GROUP, sort=True):
        lines += group_section(key, part)
    show = rows.drop(columns=["settings"]).copy()
    for c in ("best_val", "final_val", "test"):
        show[c] = (100 * show[c]).map(lambda v: f"{v:.2f}")
    lines += [HOW, "", "## Every run (accuracies in %)", "", _md_table(show), ""]
    return "\n".join(lines)


def write(out: Path, rows: pd.DataFrame) -> None:
    rows = rows.sort_values(["study", "budget", "baseline", "sampler_seed"], kind="stable")
    rundir.write_atomic(out / "tables" / "search.csv", summary(rows).to_csv(index=False))
    rundir.write_atomic(out / "README.md", markdown(rows))
