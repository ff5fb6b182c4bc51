"""The figures of reports/book/ and the data behind them: our per-epoch curves, the book's published
series (hpexp/book/curves.json, from the book's fig/*.json) and their differences.

Data first: `curves()`, `points()` and `book_series()` return DataFrames; `plot_*` draw them on an
Axes; `figure()` saves one figure, never one without data.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from hpexp.book import experiments as book  # noqa: E402
from hpexp.stats import t_quantile  # noqa: E402
from hpexp.train import rundir  # noqa: E402

__all__ = [
    "book_series",
    "curve_differences",
    "curves",
    "figure",
    "history_table",
    "plot_curves",
    "plot_gradient_bars",
    "plot_points",
    "points",
]

CURVES = Path(__file__).with_name("curves.json")


BARS = ("gradient_bars", "ensemble")  # figures of bars, not curves: their own limits and labels


def _percent(metric: str) -> float:
    return 100.0 if "accuracy" in metric else 1.0  # test_accuracy, members_test_accuracy_mean, ...


# --- data ----------------------------------------------------------------------------------------


def curves(experiment: book.Experiment, runs_dir: Path) -> pd.DataFrame:
    """Every history row of every run and seed: columns run, seed, epoch and the metrics."""
    rows = []
    for name in experiment.runs:
        for d in book.run_dirs(experiment, name, runs_dir):
            seed = book.seed_of(d, runs_dir / experiment.id)
            rows += [{"run": name, "seed": seed, **r} for r in rundir.read_history(d)]
    return pd.DataFrame(rows)


def history_table(experiment: book.Experiment, df: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch data behind a page: run, seed, epoch and every metric a check, plot or the
    book's rule reads (what history.csv commits)."""
    if df.empty:
        return df
    pick = experiment.meta.get("pick") or {}
    used = {c.metric for c in experiment.checks} | {m for s in experiment.plots for m in s.get("y", [])}
    used |= {pick.get("metric", "")} | {k for k, _ in _series_keys(experiment.id)}
    return df[["run", "seed", "epoch", *[c for c in df.columns if c in used]]]


def points(experiment: book.Experiment, runs_dir: Path, x: str, metric: str, selection: str) -> pd.DataFrame:
    """One row per run and seed: the run's config value `x`, the selected `metric` and how the run
    ended (`status`)."""
    check = book.Check(metric=metric, selection=selection, value=None)
    rows = []
    for name in experiment.runs:
        for d in book.run_dirs(experiment, name, runs_dir):
            value = OmegaConf.select(OmegaConf.load(d / "config.yaml"), x)
            y = book.select(rundir.read_history(d), check)
            rows.append({"run": name, "x": value, "y": y, "status": rundir.read_summary(d).get("status")})
    return pd.DataFrame(rows, columns=["run", "x", "y", "status"])


def _series_keys(experiment_id: str) -> list[tuple[str, str]]:
    keys = json.loads(CURVES.read_text())["series"]
    parts = [k.split("/") for k in keys if k.startswith(experiment_id + "/")]
    return [(p[1], p[2].replace("=", "") if len(p) > 2 else "") for p in parts]


def book_series(experiment_id: str) -> pd.DataFrame:
    """The book's published per-epoch series of an experiment (hpexp/book/curves.json, from the
    book's fig/*.json): columns metric, run, epoch (ours, from 1) and value (history units)."""
    rows = []
    for key, values in json.loads(CURVES.read_text())["series"].items():
        name, metric, *run = key.split("/")
        if name != experiment_id:
            continue
        scale = _percent(metric)
        run_name = run[0].replace("=", "") if run else ""
        rows += [
            {"metric": metric, "run": run_name, "epoch": i + 1, "value": v / scale}
            for i, v in enumerate(values)
        ]
    return pd.DataFrame(rows, columns=["metric", "run", "epoch", "value"])


def curve_differences(experiment: book.Experiment, df: pd.DataFrame) -> list[dict[str, Any]]:
    """For each of the book's series: mean and max |our mean over seeds - book| over the epochs both
    have (in points for accuracies)."""
    theirs = book_series(experiment.id)
    rows = []
    for (metric, run), part in theirs.groupby(["metric", "run"], sort=False):
        ours = (
            df[df["run"] == run].groupby("epoch")[metric].mean() if metric in df else pd.Series(dtype=float)
        )
        both = part.set_index("epoch")["value"].to_frame("book").join(ours.rename("ours"), how="inner")
        gap = (both["ours"] - both["book"]).abs() * _percent(str(metric))
        seeds = df[df["run"] == run]["seed"].nunique() if not df.empty else 0
        rows.append(
            {
                "id": experiment.id,
                "series": f"{metric}{f' ({run})' if run else ''}",
                "epochs": len(both),
                "seeds": seeds,
                "mean_abs": float(gap.mean()) if len(both) else math.nan,
                "max_abs": float(gap.max()) if len(both) else math.nan,
                "unit": "points" if _percent(str(metric)) > 1 else "cost",
            }
        )
    return rows


# --- drawing -------------------------------------------------------------------------------------


def _mark(ax: Any, check: book.Check, epochs: pd.Series, color: Any) -> None:
    """The book's number on our axes: a star where it has an epoch, a line where it is a level."""
    value = check.value * _percent(check.metric) if check.value is not None else math.nan
    at = {"epoch": check.epoch, "first": epochs.min(), "final": epochs.max()}.get(check.selection)
    if check.selection in ("epoch_of_min", "epoch_of_max"):
        ax.axvline(
            check.value, color=color, ls=":", gid="vmark", label=f"book: {check.label} = {check.value:g}"
        )
    elif at is not None and math.isfinite(float(at)):
        ax.plot(
            [at], [value], marker="*", ms=12, color=color, ls="none", gid="mark", label=f"book: {check.label}"
        )
    else:
        ax.axhline(value, color=color, ls="--", lw=1, gid="hmark", label=f"book: {check.label}")


def plot_curves(
    ax: Any, df: pd.DataFrame, experiment: book.Experiment, spec: dict[str, Any], chosen: int | None = None
) -> int:
    """Each metric of `spec['y']` per epoch for each run: each seed thin, the book's-rule run dashed,
    the mean thick with its 95% interval as a band, the book's curve and numbers; returns the number
    of our points drawn."""
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    theirs, drawn = book_series(experiment.id), 0
    for metric in spec.get("y", []):
        for run in spec.get("runs") or list(experiment.runs):
            part = df[df["run"] == run] if not df.empty else df
            if part.empty or metric not in part or part[metric].isna().all():
                continue
            color, scale = next(colors), _percent(metric)
            label = " ".join(s for s in (run, metric) if s)
            style = {"marker": "o", "ms": 4} if part["epoch"].nunique() <= 3 else {}
            n = part["seed"].nunique()
            for i, (seed, rows) in enumerate(part.groupby("seed")):
                ax.plot(
                    rows["epoch"],
                    rows[metric] * scale,
                    color=color,
                    lw=0.6,
                    alpha=0.35,
                    gid="data",
                    label=f"ours: {label}, each of {n} seeds" if i == 0 and n > 1 else None,
                    **style,
                )
                if seed == chosen and n > 1:
                    ax.plot(
                        rows["epoch"],
                        rows[metric] * scale,
                        color=color,
                        lw=1.0,
                        ls="--",
                        gid="data",
                        label=f"ours: {label}, the book's-rule run (seed {seed})",
                        **style,
                    )
            stats = part.groupby("epoch")[metric].agg(["mean", "std", "count"])
            mean = stats["mean"] * scale
            ax.plot(
                stats.index,
                mean,
                color=color,
                lw=1.8,
                gid="data",
                label=f"ours: {label}, mean of {n}",
                **style,
            )
            drawn += int(part[metric].notna().sum())
            if n > 1:
                half = stats["std"] * scale * t_quantile(0.95, n - 1) / math.sqrt(n)
                low, high = mean - half, mean + half
                if scale == 100.0:  # an accuracy's interval stays inside [0%, 100%]
                    low, high = low.clip(lower=0.0), high.clip(upper=100.0)
                ax.fill_between(
                    stats.index,
                    low,
                    high,
                    color=color,
                    alpha=0.15,
                    lw=0,
                    label=f"ours: {label}, 95% interval of the mean (t, n={n})",
                )
            book_curve = theirs[(theirs["metric"] == metric) & (theirs["run"] == run)]
            if not book_curve.empty:
                ax.plot(
                    book_curve["epoch"],
                    book_curve["value"] * scale,
                    color="black",
                    lw=1.0,
                    ls="-.",
                    alpha=0.8,
                    gid="data",
                    label=f"book: {label} (its fig/*.json)",
                )
            for check in experiment.checks:
                if check.metric == metric and check.run == run and check.value is not None:
                    _mark(ax, check, part["epoch"], color)
    ax.set_xlabel(spec.get("xlabel", "epoch (ours count passes from 1; the book prints them from 0)"))
    return drawn


def plot_points(ax: Any, experiment: book.Experiment, runs_dir: Path, spec: dict[str, Any]) -> int:
    """The selected metric against a config value (training-set size, eta), ours against the book's."""
    metric, selection = spec["y"][0], spec.get("selection", "final")
    scale, drawn = _percent(metric), 0
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for other in [experiment.id, *spec.get("also", [])]:
        color = next(colors)
        e = experiment if other == experiment.id else book.load(other)
        df = points(e, runs_dir, spec["x"], metric, selection)
        kind = "SVM" if "svm" in e.id else "network"
        if not df.empty:
            stats = df.groupby("x")["y"].agg(["mean", "std", "count"]).fillna(0.0) * scale
            n = int(df.groupby("x")["y"].count().max())
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"],
                marker="o",
                capsize=3,
                color=color,
                gid="data",
                label=f"ours ({kind}): mean of {n}, bars +/- 1 std" if n > 1 else f"ours ({kind})",
            )
            drawn += len(df)
            for status, ended in df[df["status"] != "completed"].groupby("status"):
                ax.plot(  # where a run stopped is not what its setting reaches: marked, not hidden
                    ended["x"],
                    ended["y"] * scale,
                    marker="x",
                    ms=10,
                    mew=2,
                    ls="none",
                    color="crimson",
                    gid="data",
                    label=f"{status} (did not complete: its value where it stopped)",
                )
        xs = {name: _run_x(e, name, spec["x"]) for name in e.runs}
        marks = [
            (xs[c.run], c.value * scale)
            for c in e.checks
            if c.value is not None and c.metric == metric and c.selection == selection
        ]
        if marks:
            ax.plot(
                *zip(*sorted(marks), strict=True),
                marker="s",
                ls="--",
                mfc="none",
                color=color,
                gid="mark",
                label=f"book ({kind})",
            )
    ax.set_xlabel(spec.get("xlabel", spec["x"]))
    return drawn


def _run_x(experiment: book.Experiment, run: str, key: str) -> Any:
    for override in experiment.runs[run]:
        name, _, value = override.lstrip("+").partition("=")
        if name == key:
            return float(value)
    return math.nan


def plot_gradient_bars(ax: Any, experiment: book.Experiment, runs_dir: Path, spec: dict[str, Any]) -> int:
    """The book's bars: dC/db of the first six neurons of each hidden layer, at initialization."""
    dirs = book.run_dirs(experiment, "", runs_dir)
    if not dirs or not (dirs[0] / "gradients.json").exists():
        return 0
    layers = json.loads((dirs[0] / "gradients.json").read_text())["initial_db"]
    for i, g in enumerate(layers):
        ax.barh(
            [f"layer {i + 1} neuron {j + 1}" for j in range(6)],
            [abs(v) for v in g[:6]],
            label=f"ours: hidden layer {i + 1} (seed 0)",
        )
    ax.set_xlabel("|dC/db| at initialization (seed 0)")
    ax.invert_yaxis()
    return sum(min(6, len(g)) for g in layers)


def plot_ensemble(ax: Any, experiment: book.Experiment, runs_dir: Path, spec: dict[str, Any]) -> int:
    """An ensemble against its members: each member's TEST accuracy (final epoch), their mean, the
    plurality vote, the averaged probabilities, and the book's number (one ensemble: seed 0)."""
    dirs = [d for d in book.run_dirs(experiment, "", runs_dir) if (d / "summary.json").exists()]
    if not dirs:
        return 0
    summary = rundir.read_summary(dirs[0])
    final = summary["final"]
    rows = [(f"member {k}", m["test_accuracy"], "C0") for k, m in enumerate(summary["members"])]
    rows += [
        ("members' mean", final["members_test_accuracy_mean"], "C0"),
        ("vote (the book's)", final["test_accuracy"], "C1"),
        ("averaged probabilities", final["test_accuracy_mean_prob"], "C2"),
    ]
    labels, values, colors = zip(*rows, strict=True)
    for i, (v, c) in enumerate(zip(values, colors, strict=True)):  # dots: a cut axis would make bars lie
        ax.plot([100 * v], [i], "o", color=c, ms=8, gid="data")
        ax.annotate(f"{100 * v:.2f}", (100 * v, i), xytext=(7, 0), textcoords="offset points", va="center")
    ax.set_yticks(range(len(labels)), list(labels))
    book_value = next((c.value for c in experiment.checks if c.metric == "test_accuracy"), None)
    if book_value is not None:
        ax.axvline(100 * book_value, color="k", ls="--", label=f"book: the vote, {100 * book_value:.2f}%")
    every = [100 * v for v in values] + ([100 * book_value] if book_value is not None else [])
    ax.set_xlim(min(every) - 0.05, max(every) + 0.08)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("test accuracy (%), final epoch, one ensemble (seed 0)")
    return len(values)


def _fit_limits(ax: Any, spec: dict[str, Any]) -> None:
    """Limits that hold all our data, the book's curves and its numbers: the preset's limits widened
    where something would fall outside; with a preset x-range (the book's figure shows epochs
    200-399), what lies outside it stays outside."""
    xlim = spec.get("xlim")
    if xlim:
        ax.set_xlim(*xlim)
    low_x, high_x = ax.get_xlim()
    ys = [
        y
        for line in ax.lines
        if line.get_gid() in ("data", "mark")
        for x, y in zip(*line.get_data(), strict=False)
        if low_x <= x <= high_x
    ]
    ys += [line.get_ydata()[0] for line in ax.lines if line.get_gid() == "hmark"]
    ys = [float(y) for y in ys if math.isfinite(y) and (y > 0 or not spec.get("logy"))]
    if not ys:
        return
    low, high = min(ys), max(ys)
    if spec.get("ylim"):
        low, high = min(low, spec["ylim"][0]), max(high, spec["ylim"][1])
    if spec.get("logy"):
        ax.set_ylim(low / 1.3, high * 1.3)
    else:
        pad = 0.04 * (high - low) or 0.05 * abs(high) or 0.1
        ax.set_ylim(low - pad, high + pad)


def figure(
    experiment: book.Experiment,
    df: pd.DataFrame,
    runs_dir: Path,
    spec: dict[str, Any],
    path: Path,
    chosen: int | None = None,
) -> int:
    """Draw and save one figure; returns the number of our data points in it. A figure with no data
    is not written (0 is returned and the page says "not run")."""
    if spec.get("kind") == "filters":
        dirs = book.run_dirs(experiment, "", runs_dir)
        images = [d / "filters.png" for d in dirs if (d / "filters.png").exists()]
        if images:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(images[0], path)
        return len(images)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if spec.get("kind") == "gradient_bars":
        drawn = plot_gradient_bars(ax, experiment, runs_dir, spec)
    elif spec.get("kind") == "ensemble":
        drawn = plot_ensemble(ax, experiment, runs_dir, spec)
    elif spec.get("x", "epoch") != "epoch":
        drawn = plot_points(ax, experiment, runs_dir, spec)
    else:
        drawn = plot_curves(ax, df, experiment, spec, chosen)
    if drawn:
        ax.set_title(spec.get("title", spec["name"]))
        if spec.get("kind") not in BARS:
            ax.set_ylabel(", ".join(f"{m}{' (%)' if _percent(m) > 1 else ''}" for m in spec.get("y", [])))
        if spec.get("logx"):
            ax.set_xscale("log")
        if spec.get("logy"):
            ax.set_yscale("log")
        if spec.get("kind") not in BARS:
            _fit_limits(ax, spec)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="best")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
