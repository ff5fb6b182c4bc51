"""Comparisons by the design of the experiment, the flags a reader must see, and the verdict a page
opens with.

Settings that share seeds (the default: every setting run with the same seeds) are compared seed by
seed: the mean of the per-seed differences and its t-interval over the shared seeds. Otherwise the
groups are independent and Welch's interval applies. Every comparison names its metric, the epoch
it is read at (the best-validation epoch, or the final one) and n, and says when a difference is
within the resolution of the evaluation set (twice the binomial standard error of one accuracy).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from hpexp.report.runs import ENDED, STATUSES, bounds, summary_cell
from hpexp.stats import Estimate, binomial_se, paired_difference, welch_difference

__all__ = ["COMPARED", "baseline_config", "compare", "flags", "format_comparisons", "split_size", "verdict"]

# (per-run column, what is measured, the epoch it is read at)
COMPARED = (
    ("test_accuracy_at_best", "test accuracy", "best-validation epoch"),
    ("best_val_accuracy", "validation accuracy", "best-validation epoch"),
    ("final_test_accuracy", "test accuracy", "final epoch"),
    ("final_val_accuracy", "validation accuracy", "final epoch"),
    ("gap_at_best", "train - validation gap", "best-validation epoch"),
)
NOISE_SE = 2.0  # a difference below this many standard errors of one accuracy is within test noise
MNIST_TEST = 10_000  # the t10k images (MNIST and Fashion-MNIST)
NEUTRAL = ("0", "0.0", "none", "false", "null", "unset", "constant")


def baseline_config(runs: pd.DataFrame, baseline: str | None = None) -> str:
    """The configuration others are compared with: `baseline` (a configuration label, or a value of
    the compared key such as 0 or none), else the first whose values are all neutral (0, none,
    false), else the first configuration."""
    configs = [str(c) for c in runs["config"].cat.categories if (runs["config"] == c).any()]
    if not configs:
        raise ValueError("no configurations to compare")
    values = {c: [part.split("=", 1)[-1].strip().lower() for part in c.split(", ")] for c in configs}
    if baseline is not None:
        wanted = str(baseline).strip().lower()
        for c in configs:
            if wanted in (c.lower(), *values[c]):
                return c
        raise ValueError(
            f"--baseline {baseline!r} names no configuration; configurations: {'; '.join(configs)}"
        )
    return next((c for c in configs if all(v in NEUTRAL for v in values[c])), configs[0])


def split_size(runs: pd.DataFrame, split: str) -> int | None:
    """How many examples an accuracy on `split` was measured on (None where the config cannot say)."""
    key = {"train": "data.n_train", "val": "data.n_validation", "test": "data.n_test"}[split]
    if key in runs and runs[key].notna().all() and runs[key].nunique() == 1:
        return int(runs[key].iloc[0])
    if split == "test" and str(runs.get("data", pd.Series(["mnist"])).iloc[0]) in ("mnist", "fashion_mnist"):
        return MNIST_TEST
    return None


def _by_seed(group: pd.DataFrame, column: str) -> dict[Any, float] | None:
    """{seed: value} when each seed appears once, else None (not pairable)."""
    if "seed" not in group or group["seed"].isna().any() or group["seed"].duplicated().any():
        return None
    return dict(zip(group["seed"], group[column].astype(float), strict=True))


def _difference(a: pd.DataFrame, b: pd.DataFrame, column: str) -> tuple[str, Estimate]:
    low, high = bounds(column)
    lo, hi = (low - high, high - low) if math.isfinite(high - low) else (-math.inf, math.inf)
    pa, pb = _by_seed(a, column), _by_seed(b, column)
    shared = set(pa or {}) & set(pb or {})
    if pa is not None and pb is not None and len(shared) >= 2:
        return "paired by seed", paired_difference(pa, pb, lo, hi)
    return "independent (Welch)", welch_difference(a[column], b[column], lo, hi)


def compare(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Each configuration against the baseline, for each metric of COMPARED the runs have: design,
    n, the difference (fractions: x100 for points), its 95% interval (NaN below 3 pairs), the
    per-seed differences, the split's resolution (binomial SE at the two groups' mean accuracy)
    and whether the difference is within NOISE_SE of it."""
    base = baseline_config(runs, baseline)
    rows = []
    for config in [c for c in runs["config"].cat.categories if str(c) != base]:
        a, b = runs[runs["config"] == config], runs[runs["config"] == base]
        if not len(a):
            continue
        for column, what, selection in COMPARED:
            if column not in runs or a[column].isna().all() or b[column].isna().all():
                continue
            design, est = _difference(a, b, column)
            split = column.replace("final_", "").replace("best_", "").split("_")[0]
            n_split = split_size(runs, split) if split in ("val", "test") else None
            mean = (a[column].mean() + b[column].mean()) / 2
            se = binomial_se(mean, n_split) if n_split else math.nan
            rows.append(
                {
                    "config": str(config),
                    "baseline": base,
                    "metric": what,
                    "column": column,
                    "selection": selection,
                    "design": design,
                    "n": est.n,
                    "difference": est.value,
                    "lo": est.lo,
                    "hi": est.hi,
                    "method": est.method,
                    "per_seed": ", ".join(f"{100 * d:+.2f}" for d in est.values)
                    if "paired" in design
                    else "",
                    "n_examples": n_split,
                    "se": se,
                    "within_noise": bool(n_split) and abs(est.value) < NOISE_SE * se,
                }
            )
    return pd.DataFrame(rows)


def flags(df: pd.DataFrame, runs: pd.DataFrame) -> dict[str, list[str]]:
    """Per configuration, what a reader must know before trusting its numbers: runs still improving
    at their last epoch, runs that diverged, stalled, were pruned or did not end, statuses this
    report does not know, and fewer seeds than other configurations."""
    most = runs.groupby("config", observed=True).size().max()
    out: dict[str, list[str]] = {}
    for config, group in runs.groupby("config", observed=True, sort=False):
        notes = []
        n = len(group)
        if (k := int(group["still_improving"].fillna(0).sum())) > 0:
            notes.append(
                f"still improving at the last epoch ({k} of {n} runs had their best validation epoch "
                "in the last 5% of their epochs)"
            )
        for status, count in group["status"].astype(str).value_counts().items():
            if status == "completed":
                continue
            known = "" if status in STATUSES else " (a status this report does not know)"
            ended = "" if status in ENDED else ", shown as far as they got"
            notes.append(f"{count} of {n} runs {status}{known}{ended}")
        if n < most:
            notes.append(f"fewer seeds than others ({n} vs {most})")
        out[str(config)] = notes
    return out


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def _describe(row: pd.Series) -> str:
    """'+4.73 points test accuracy at the best-validation epoch (paired over 3 seeds: 95% interval
    [+4.20, +5.26]; per seed +4.80, +4.60, +4.79)'."""
    text = f"{_points(row['difference'])} points {row['metric']} at the {row['selection']}"
    paired = "paired" in row["design"]
    how = f"{'paired over' if paired else 'Welch, n ='} {row['n']} seed{'' if row['n'] == 1 else 's'}"
    if math.isfinite(row["lo"]):
        how += f": 95% interval [{_points(row['lo'])}, {_points(row['hi'])}]"
    if paired and row["per_seed"]:
        how += f"{';' if math.isfinite(row['lo']) else ':'} per seed {row['per_seed']}"
    text += f" ({how})"
    if row["within_noise"]:
        text += (
            f", within test noise (2 SE of one accuracy on {int(row['n_examples']):,} images = "
            f"{200 * row['se']:.2f} points)"
        )
    return text


def verdict(
    comparisons: pd.DataFrame, summary: pd.DataFrame, notes: dict[str, list[str]]
) -> tuple[str, pd.DataFrame]:
    """The page's first sentence and a small table (one row per configuration: n, the headline
    metric with its interval, the difference from the baseline, flags)."""
    column = comparisons["column"] if len(comparisons) else pd.Series(dtype=str)
    main = "test_accuracy_at_best" if (column == "test_accuracy_at_best").any() else "best_val_accuracy"
    head = comparisons[column == main].copy() if len(comparisons) else comparisons
    if not len(head):
        return _alone(summary), pd.DataFrame()
    best = head.loc[head["difference"].idxmax()]
    sentence = f"{best['config']} vs {best['baseline']}: {_describe(best)}"
    if main == "test_accuracy_at_best":
        val = comparisons[
            (comparisons["config"] == best["config"]) & (comparisons["column"] == "best_val_accuracy")
        ]
        if len(val):
            agrees = math.copysign(1, val["difference"].iloc[0]) == math.copysign(1, best["difference"])
            sentence += (
                f"; validation {'agrees' if agrees else 'disagrees'} ({_points(val['difference'].iloc[0])})"
            )
    table = summary.set_index("config")
    if "gap_at_best" in table and table["gap_at_best"].notna().all():
        g0, g1 = (100 * table.loc[c, "gap_at_best"] for c in (best["baseline"], best["config"]))
        change = "shrinks" if g1 < g0 else "grows"
        sentence += f"; the gap at the best-validation epoch {change} from {g0:.1f} to {g1:.1f} points"
    if len(head) > 1:
        sentence += f" (the largest of {len(head)} differences from {best['baseline']})"
    sentence += "."
    name = {
        "test_accuracy_at_best": "test % at best-val epoch",
        "best_val_accuracy": "val % at best-val epoch",
    }[main]
    rows = []
    for config, row in table.iterrows():
        diff = head[head["config"] == config]
        cell = summary_cell(row, main)
        rows.append(
            {
                "config": config,
                "n": int(row["n"]),
                name: cell,
                f"vs {best['baseline']} (points)": "baseline" if not len(diff) else _short(diff.iloc[0]),
                "flags": "; ".join(notes.get(str(config), [])),
            }
        )
    return sentence, pd.DataFrame(rows)


def _alone(summary: pd.DataFrame) -> str:
    """The lead when nothing can be compared: each configuration's headline number, or why none."""
    main = "test_accuracy_at_best" if summary["test_accuracy_at_best"].notna().any() else "best_val_accuracy"
    what = {"test_accuracy_at_best": "test accuracy", "best_val_accuracy": "validation accuracy"}[main]
    parts = [
        f"{row['config']}: {what} (%) {summary_cell(row, main)} at the best-validation epoch over "
        f"{int(row['n'])} run{'' if row['n'] == 1 else 's'}"
        for _, row in summary.iterrows()
        if pd.notna(row[main])
    ]
    if not parts:
        return "Nothing to compare: no run recorded a validation accuracy."
    lead = (
        "Nothing to compare (one configuration)" if len(summary) == 1 else "No difference could be computed"
    )
    return f"{lead}. " + "; ".join(parts) + "."


def _short(row: pd.Series) -> str:
    text = _points(row["difference"])
    if math.isfinite(row["lo"]):
        text += f" [{_points(row['lo'])}, {_points(row['hi'])}]"
    elif row["per_seed"]:
        text += f" (per seed {row['per_seed']})"
    return text + (" (within test noise)" if row["within_noise"] else "")


def format_comparisons(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The comparisons table for reading: differences in points."""
    if not len(comparisons):
        return comparisons
    shown = comparisons[["config", "baseline", "metric", "selection", "design", "n"]].copy()
    shown["difference (points)"] = comparisons["difference"].map(_points)
    shown["95% interval"] = [
        f"[{_points(lo)}, {_points(hi)}]" if math.isfinite(lo) else "n < 3: none"
        for lo, hi in zip(comparisons["lo"], comparisons["hi"], strict=True)
    ]
    shown["per seed"] = comparisons["per_seed"]
    shown["resolution"] = [
        f"SE {100 * se:.2f} on {int(n):,}" if isinstance(n, int | float) and n and math.isfinite(se) else ""
        for n, se in zip(comparisons["n_examples"], comparisons["se"], strict=True)
    ]
    shown["within test noise"] = comparisons["within_noise"].map({True: "yes", False: ""})
    return shown
