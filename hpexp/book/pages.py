"""reports/book/: one page per experiment (our curves beside the book's numbers, ours per seed and as
mean +/- std, the difference, reproduced or not) and README.md, the summary of every row.

Data first: `curves()` and `points()` return DataFrames read from the run directories; `plot_*`
draw them on an Axes; `write()` saves pages, figures and summary.csv.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from hpexp.book import experiments as book
from hpexp.train import rundir  # noqa: E402

__all__ = [
    "curves",
    "figure",
    "page",
    "plot_curves",
    "plot_gradient_bars",
    "plot_points",
    "points",
    "summary",
    "write",
]

MARK = {True: "yes", False: "**no**", None: "-"}


def _percent(metric: str) -> float:
    return 100.0 if metric.endswith("accuracy") else 1.0


def curves(experiment: book.Experiment, runs_dir: Path) -> pd.DataFrame:
    """Every history row of every run and seed: columns run, seed, epoch and the metrics."""
    rows = []
    for name in experiment.runs:
        for d in book.run_dirs(experiment, name, runs_dir):
            seed = int(d.relative_to(runs_dir / experiment.id).parts[0][4:])
            rows += [{"run": name, "seed": seed, **r} for r in rundir.read_history(d)]
    return pd.DataFrame(rows)


def points(experiment: book.Experiment, runs_dir: Path, x: str, metric: str, selection: str) -> pd.DataFrame:
    """One row per run and seed: the run's config value `x` and the selected `metric`."""
    check = book.Check(metric=metric, selection=selection, value=None, tolerance=None)
    rows = []
    for name in experiment.runs:
        for d in book.run_dirs(experiment, name, runs_dir):
            value = OmegaConf.select(OmegaConf.load(d / "config.yaml"), x)
            rows.append({"run": name, "x": value, "y": book.select(rundir.read_history(d), check)})
    return pd.DataFrame(rows, columns=["run", "x", "y"])


def _book_marks(ax: Any, experiment: book.Experiment, metric: str, run: str, color: Any) -> None:
    scale = _percent(metric)
    for c in experiment.checks:
        if c.metric != metric or c.run != run or c.value is None:
            continue
        if c.selection == "epoch":
            ax.plot(
                [c.epoch],
                [c.value * scale],
                marker="*",
                ms=12,
                color=color,
                ls="none",
                label=f"book {c.label}",
            )
        elif c.selection == "epoch_of_min" or c.selection == "epoch_of_max":
            ax.axvline(c.value, color=color, ls=":", label=f"book: {c.label} = {c.value:g}")
        else:
            ax.axhline(c.value * scale, color=color, ls="--", lw=1, label=f"book {c.label}")


def plot_curves(ax: Any, df: pd.DataFrame, experiment: book.Experiment, spec: dict[str, Any]) -> Any:
    """Each metric of `spec['y']` per epoch for each run: each seed thin, the mean thick, +/- std."""
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for metric in spec.get("y", []):
        for run in spec.get("runs") or list(experiment.runs):
            part = df[df["run"] == run] if not df.empty else df
            if part.empty or metric not in part:
                continue
            color, scale = next(colors), _percent(metric)
            label = " ".join(s for s in (run, metric) if s)
            for _, seed in part.groupby("seed"):
                ax.plot(seed["epoch"], seed[metric] * scale, color=color, lw=0.6, alpha=0.35)
            stats = part.groupby("epoch")[metric].agg(["mean", "std"]).fillna(0.0) * scale
            ax.plot(stats.index, stats["mean"], color=color, lw=1.8, label=f"ours: {label}")
            ax.fill_between(
                stats.index,
                stats["mean"] - stats["std"],
                stats["mean"] + stats["std"],
                color=color,
                alpha=0.15,
                lw=0,
            )
            _book_marks(ax, experiment, metric, run, color)
    ax.set_xlabel(spec.get("xlabel", "epoch (ours count passes from 1; the book prints them from 0)"))
    return ax


def plot_points(ax: Any, experiment: book.Experiment, runs_dir: Path, spec: dict[str, Any]) -> Any:
    """The selected metric against a config value (training-set size, eta), ours against the book's."""
    metric, selection = spec["y"][0], spec.get("selection", "final")
    scale = _percent(metric)
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for other in [experiment.id, *spec.get("also", [])]:
        color = next(colors)
        e = experiment if other == experiment.id else book.load(other)
        df = points(e, runs_dir, spec["x"], metric, selection)
        kind = "SVM" if "svm" in e.id else "network"
        if not df.empty:
            stats = df.groupby("x")["y"].agg(["mean", "std"]).fillna(0.0) * scale
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"],
                marker="o",
                capsize=3,
                color=color,
                label=f"ours ({kind})",
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
                label=f"book ({kind})",
            )
    ax.set_xlabel(spec.get("xlabel", spec["x"]))
    return ax


def _run_x(experiment: book.Experiment, run: str, key: str) -> Any:
    for override in experiment.runs[run]:
        name, _, value = override.lstrip("+").partition("=")
        if name == key:
            return float(value)
    return math.nan


def plot_gradient_bars(ax: Any, experiment: book.Experiment, runs_dir: Path, spec: dict[str, Any]) -> Any:
    """The book's bars: dC/db of the first six neurons of each hidden layer, at initialization."""
    dirs = book.run_dirs(experiment, "", runs_dir)
    if not dirs:
        return ax
    layers = json.loads((dirs[0] / "gradients.json").read_text())["initial_db"]
    for i, g in enumerate(layers):
        ax.barh(
            [f"layer {i + 1} neuron {j + 1}" for j in range(6)],
            [abs(v) for v in g[:6]],
            label=f"hidden layer {i + 1}",
        )
    ax.set_xlabel("|dC/db| at initialization (seed 0)")
    ax.invert_yaxis()
    return ax


def _fit_y(ax: Any, low: float, high: float) -> None:
    """Scale y to what is visible in [low, high] (matplotlib scales to all the data)."""
    ys = [y for line in ax.lines for x, y in zip(*line.get_data(), strict=False) if low <= x <= high]
    ys = [y for y in ys if math.isfinite(y)]
    if ys:
        pad = 0.05 * (max(ys) - min(ys)) or 0.05 * abs(max(ys)) or 0.1
        ax.set_ylim(min(ys) - pad, max(ys) + pad)


def figure(
    experiment: book.Experiment, df: pd.DataFrame, runs_dir: Path, spec: dict[str, Any], path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if spec.get("kind") == "gradient_bars":
        plot_gradient_bars(ax, experiment, runs_dir, spec)
    elif spec.get("x", "epoch") != "epoch":
        plot_points(ax, experiment, runs_dir, spec)
    else:
        plot_curves(ax, df, experiment, spec)
    ax.set_title(spec.get("title", spec["name"]))
    ax.set_ylabel(", ".join(f"{m}{' (%)' if _percent(m) > 1 else ''}" for m in spec.get("y", [])))
    if spec.get("logx"):
        ax.set_xscale("log")
    if spec.get("logy"):
        ax.set_yscale("log")
    if spec.get("xlim"):
        ax.set_xlim(*spec["xlim"])
        if not spec.get("ylim"):
            _fit_y(ax, *spec["xlim"])
    if spec.get("ylim"):
        ax.set_ylim(*spec["ylim"])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    pct = row["metric"].endswith("accuracy") and not row["selection"].startswith("epoch_of")
    if key == "diff" and row["log"]:
        return f"{value:+.2f} (log10)"
    if pct:
        return f"{100 * value:+.2f}" if key == "diff" else f"{100 * value:.2f}%"
    return f"{value:+.4g}" if key == "diff" else f"{value:.4g}"


def _ours(row: dict[str, Any]) -> str:
    if not row["seeds"]:
        return "not run"
    text = f"{_fmt(row, 'mean')} +/- {_fmt(row, 'std').rstrip('%')} (n={len(row['seeds'])})"
    if row["across_seeds"] == "max":  # the book's best of three: compare our best seed
        text += f"; best {_fmt({**row, 'v': max(row['seeds'])}, 'v')}"
    return text


def _table(rows: list[dict[str, Any]], with_id: bool) -> list[str]:
    head = ["id", "ch"] if with_id else []
    lines = [
        "| "
        + " | ".join([*head, "check", "book", "ours (mean +/- std)", "difference", "tolerance", "reproduced"])
        + " |",
        "|" + " --- |" * (len(head) + 6),
    ]
    for r in rows:
        tol = (
            "-"
            if r["tolerance"] is None
            else (
                f"{r['tolerance']:g} (log10)"
                if r["log"]
                else _fmt({**r, "v": r["tolerance"]}, "v").rstrip("%")
            )
        )
        ident = [f"[{r['id']}]({r['id']}/README.md)", str(r["chapter"])] if with_id else []
        lines.append(
            "| "
            + " | ".join(
                [*ident, r["check"], _fmt(r, "book"), _ours(r), _fmt(r, "diff"), tol, MARK[r["reproduced"]]]
            )
            + " |"
        )
    return lines


def page(experiment: book.Experiment, rows: list[dict[str, Any]], figures: list[str]) -> str:
    m = experiment.meta
    out = [
        f"# {experiment.id}",
        "",
        f"Chapter {m['chapter']}, *{m['section']}*: {m['demonstrates']}.",
        "",
        f"Source: {m['source']}.",
        "",
        str(m["note"]).strip(),
        "",
        "## Our numbers against the book's",
        "",
        *(_table(rows, with_id=False) if rows else ["The book gives no number here: compare the figures."]),
        "",
    ]
    seeds = [r for r in rows if r["seeds"]]
    if seeds:
        out += (
            ["Each seed:", ""]
            + [f"- {r['check']}: " + ", ".join(_fmt({**r, "v": v}, "v") for v in r["seeds"]) for r in seeds]
            + [""]
        )
    notes = [f"- {r['check']}: {r['note']}" for r in rows if r["note"]]
    out += ["Notes on checks:", "", *notes, ""] if notes else []
    trains = experiment.runner == "hpexp.train.runner.run"
    out += [
        "## Runs",
        "",
        f"`hpexp book run {experiment.id}` runs"
        + ("" if trains else f" `{experiment.runner}` on")
        + " these configs:",
        "",
    ]
    out += [
        f"- `{'hpexp train ' if trains else ''}+experiment=book/{experiment.id}"
        f"{''.join(' ' + o for o in overrides)}`{f' ({name})' if name else ''}"
        for name, overrides in experiment.runs.items()
    ]
    out += [""] + [f"![{f}]({f}.png)" for f in figures]
    return "\n".join(out) + "\n"


def summary(rows: list[dict[str, Any]], experiments: Sequence[book.Experiment]) -> str:
    numbered = [r for r in rows if r["book"] is not None]
    measured = [r for r in numbered if r["reproduced"] is not None]
    ok = sum(bool(r["reproduced"]) for r in measured)
    share = f"{100 * ok / len(measured):.0f}%" if measured else "-"
    figure_only = [e.id for e in experiments if all(c.value is None for c in e.checks)]
    lines = [
        "# The book, reproduced",
        "",
        "Every experiment of Nielsen's *Neural Networks and Deep Learning* (chapters 1, 3, 5 and 6) that "
        "has a number or a figure, re-run by `hpexp book run` (n = the seeds run; chapters 1, 3 and 5 "
        "with `--seeds 3`) and written by `hpexp book report`; presets whose runs take hours here are "
        "listed but not yet run (their pages give the estimate). Accuracies are percentages "
        "(differences and tolerances in points); ours are the mean +/- standard deviation over seeds; "
        "a row is reproduced when "
        "|ours - book| <= tolerance. Where the book reports a best of three runs (chapter 1), "
        "the row compares our best seed (marked `best`); mean, std and every seed are still shown.",
        "",
        f"Rows with a number: {len(numbered)}; measured: {len(measured)}; reproduced: {ok} ({share}).",
        "",
        *_table(rows, with_id=True),
        "",
    ]
    if figure_only:
        lines += ["Figures without a number: " + ", ".join(f"[{i}]({i}/README.md)" for i in figure_only), ""]
    lines += [
        "Left out, having neither a number nor a figure of a run: the exercises ch1-ex-no-hidden, ch3-l1, "
        "ch3-early-stop, ch3-lr-schedule, ch3-momentum, ch3-tanh, ch3-relu; the procedures ch3-eta-threshold "
        "and ch3-monitor-demo; the illustrations ch3-rotate-demo, ch3-poly-toy; the analytic "
        "ch5-exploding-toy; and chapter 2's timing claim (see benchmarks/).",
        "",
    ]
    misses = [r for r in measured if not r["reproduced"]]
    if misses:
        lines += ["## Rows that miss", ""] + [
            f"- {r['id']}, {r['check']}: see [its page]({r['id']}/README.md)"
            f"{'; ' + r['note'] if r['note'] else ''}"
            for r in misses
        ]
    return "\n".join(lines) + "\n"


def write(ids: Sequence[str], runs_dir: Path = book.RUNS_DIR, reports_dir: Path = book.REPORTS_DIR) -> Path:
    """Write the pages of `ids` and the summary of every experiment; returns reports_dir."""
    experiments = book.registry()
    all_rows: list[dict[str, Any]] = []
    for e in experiments:
        rows = [book.compare(e, c, runs_dir) for c in e.checks if c.value is not None]
        all_rows += rows
        if e.id not in ids:
            continue
        df, names = curves(e, runs_dir), []
        for spec in e.plots or [{"name": e.checks[0].metric, "y": [e.checks[0].metric]}]:
            figure(e, df, runs_dir, spec, reports_dir / e.id / f"{spec['name']}.png")
            names.append(spec["name"])
        rundir.write_atomic(reports_dir / e.id / "README.md", page(e, rows, names))
    rundir.write_atomic(reports_dir / "README.md", summary(all_rows, experiments))
    table = pd.DataFrame(all_rows).drop(columns=["seeds", "note"])
    rundir.write_atomic(reports_dir / "summary.csv", table.to_csv(index=False))
    return reports_dir
