"""reports/book/: one page per experiment and README.md, the summary of every row.

A page gives each of the book's numbers in two views, by the book's rule (one run, chosen as the
book chose) and as the mean over seeds with its 95% interval, with the derived tolerance of each
row; the book's own per-epoch curves beside ours with their differences; the per-epoch data behind
the page (history.csv) and the commit and wall time that produced it.

Data first: `curves()`, `points()` and `book_series()` return DataFrames; `plot_*` draw them on an
Axes; `write()` saves pages, figures (never one without data), their sidecar and the summary.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
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
    "page",
    "plot_curves",
    "plot_gradient_bars",
    "plot_points",
    "points",
    "summary",
    "write",
]

CURVES = Path(__file__).with_name("curves.json")
VERDICT = {"yes": "yes", "no": "**no**", "qualitative": "qualitative", None: "-"}


def _percent(metric: str) -> float:
    return 100.0 if metric.endswith("accuracy") else 1.0


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
    """One row per run and seed: the run's config value `x` and the selected `metric`."""
    check = book.Check(metric=metric, selection=selection, value=None)
    rows = []
    for name in experiment.runs:
        for d in book.run_dirs(experiment, name, runs_dir):
            value = OmegaConf.select(OmegaConf.load(d / "config.yaml"), x)
            rows.append({"run": name, "x": value, "y": book.select(rundir.read_history(d), check)})
    return pd.DataFrame(rows, columns=["run", "x", "y"])


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
                ax.fill_between(
                    stats.index,
                    mean - half,
                    mean + half,
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
    elif spec.get("x", "epoch") != "epoch":
        drawn = plot_points(ax, experiment, runs_dir, spec)
    else:
        drawn = plot_curves(ax, df, experiment, spec, chosen)
    if drawn:
        ax.set_title(spec.get("title", spec["name"]))
        ax.set_ylabel(", ".join(f"{m}{' (%)' if _percent(m) > 1 else ''}" for m in spec.get("y", [])))
        if spec.get("logx"):
            ax.set_xscale("log")
        if spec.get("logy"):
            ax.set_yscale("log")
        if spec.get("kind") != "gradient_bars":
            _fit_limits(ax, spec)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="best")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


# --- text ----------------------------------------------------------------------------------------


def _is_pct(row: dict[str, Any]) -> bool:
    return row["metric"].endswith("accuracy") and not row["selection"].startswith("epoch_of")


def _value(row: dict[str, Any], value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.2f}%" if _is_pct(row) else f"{value:.4g}"


def _diff(row: dict[str, Any], value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if row["log"]:
        return f"{value:+.2f} log10"
    return f"{100 * value:+.2f}" if _is_pct(row) else f"{value:+.3g}"


def _tolerance(row: dict[str, Any]) -> str:
    tol = row["tolerance"]
    if not math.isfinite(tol):
        return "-"
    text = f"{tol:.2f} log10" if row["log"] else f"{100 * tol:.2f}" if _is_pct(row) else f"{tol:.3g}"
    return f"{text} ({row['tolerance_term']})"


def _rule(row: dict[str, Any]) -> str:
    if not row["seeds"]:
        return "not run"
    return f"{_value(row, row['rule'])} ({_diff(row, row['diff_rule'])}; seed {row['chosen_seed']})"


def _mean(row: dict[str, Any]) -> str:
    if not row["seeds"]:
        return "not run"
    interval = ""
    if math.isfinite(row["ci"]):
        low, high = row["mean"] - row["ci"], row["mean"] + row["ci"]
        if _is_pct(row):  # an accuracy's interval stays inside [0, 1]
            low, high = max(low, 0.0), min(high, 1.0)
        interval = f" [{_value(row, low)}, {_value(row, high)}]"
    return f"{_value(row, row['mean'])}{interval} ({_diff(row, row['diff'])}; n={row['n']})"


def _table(rows: list[dict[str, Any]], with_id: bool) -> list[str]:
    head = ["id", "ch"] if with_id else []
    columns = [
        "check",
        "book",
        "by the book's rule (one run)",
        "mean of seeds [95% interval]",
        "tolerance (set by)",
        "reproduced: rule / mean",
    ]
    lines = ["| " + " | ".join([*head, *columns]) + " |", "|" + " --- |" * (len(head) + len(columns))]
    for r in rows:
        ident = [f"[{r['id']}]({r['id']}/README.md)", str(r["chapter"])] if with_id else []
        verdicts = f"{VERDICT[r['reproduced_rule']]} / {VERDICT[r['reproduced']]}"
        cells = [r["check"], _value(r, r["book"]), _rule(r), _mean(r), _tolerance(r), verdicts]
        lines.append("| " + " | ".join([*ident, *cells]) + " |")
    return lines


def _curve_table(rows: list[dict[str, Any]], with_id: bool) -> list[str]:
    head = ["id"] if with_id else []
    lines = [
        "| "
        + " | ".join(
            [*head, "book's series", "epochs", "seeds", "mean abs(ours - book)", "max abs(ours - book)"]
        )
        + " |",
        "|" + " --- |" * (len(head) + 5),
    ]
    for r in rows:
        ident = [f"[{r['id']}]({r['id']}/README.md)"] if with_id else []
        fmt = "{:.2f} points" if r["unit"] == "points" else "{:.3f}"
        cells = [
            r["series"],
            str(r["epochs"]),
            str(r["seeds"]),
            fmt.format(r["mean_abs"]),
            fmt.format(r["max_abs"]),
        ]
        lines.append("| " + " | ".join([*ident, *cells]) + " |")
    return lines


def _why(row: dict[str, Any]) -> str:
    """Why a row is qualitative or missed, in numbers, then the preset's note."""
    tol = _tolerance(row)
    if row["reproduced"] == "qualitative":
        text = f"the tolerance {tol} exceeds 3 points, so ours and the book's are compared qualitatively"
    else:
        text = f"|difference| beyond the tolerance {tol}"
    return text + (f"; {row['note']}" if row["note"] else "")


def _provenance(experiment: book.Experiment, runs_dir: Path) -> list[str]:
    path = runs_dir / experiment.id / "provenance.json"
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    commits = sorted({r["commit"] for r in runs.values()})
    seconds = sum(r["seconds"] for r in runs.values())
    finished = max(r["finished"] for r in runs.values())
    return [
        f"Produced by commit {', '.join(commits)}; wall time {seconds / 60:.1f} min over {len(runs)} "
        f"run group(s) (the seeds of one run train together), finished {finished}.",
        "",
    ]


def page(
    experiment: book.Experiment,
    rows: list[dict[str, Any]],
    figures: dict[str, int],
    differences: Sequence[dict[str, Any]] = (),
    provenance: Sequence[str] = (),
) -> str:
    m = experiment.meta
    rule = m.get("pick")
    chosen = next((r["chosen_seed"] for r in rows if r["chosen_seed"] is not None), None)
    out = [
        f"# {experiment.id}",
        "",
        f"Chapter {m['chapter']}, *{m['section']}*: {m['demonstrates']}.",
        "",
        f"Source: {m['source']} (docs/book.md lists every experiment of the book).",
        "",
        str(m["note"]).strip(),
        "",
        "## Our numbers against the book's",
        "",
    ]
    if rows:
        out += [
            "The book's rule: "
            + (
                f"the book quotes the best of its runs by {rule['selection']} {rule['metric']}, "
                "so we take our best seed by the same number"
                if rule
                else "the book ran once, so we take our first seed"
            )
            + (f" (seed {chosen})" if chosen is not None else "")
            + " and read every row below from that one run. The mean is over every seed, with its 95% "
            "Student-t interval. Tolerance = max(the book's rounding, 2 x our seed std, the binomial SE "
            "of an accuracy on the images evaluated); accuracy rows whose tolerance exceeds 3 points are "
            "qualitative. Differences are ours - book (points for accuracies).",
            "",
            *_table(rows, with_id=False),
            "",
        ]
    else:
        out += ["The book gives no number here: compare the figures.", ""]
    seeds = [r for r in rows if r["seeds"]]
    if seeds:
        out += (
            ["Each seed:", ""]
            + [
                f"- {r['check']}: "
                + ", ".join(
                    f"seed {k} {_value(r, v)}" for k, v in zip(r["seed_ids"], r["seeds"], strict=True)
                )
                for r in seeds
            ]
            + [""]
        )
    notes = [
        f"- {r['check']}: {_why(r)}"
        for r in rows
        if r["reproduced"] in ("no", "qualitative") or r["reproduced_rule"] in ("no", "qualitative")
    ]
    notes += [
        f"- {r['check']}: {r['note']}"
        for r in rows
        if r["note"] and r["reproduced"] == "yes" and r["reproduced_rule"] == "yes"
    ]
    out += ["Notes on rows:", "", *notes, ""] if notes else []
    if differences:
        out += [
            "## The book's curves beside ours",
            "",
            "Our mean over seeds against the book's published per-epoch series (hpexp/book/curves.json, "
            "from the book's fig/*.json), epoch by epoch:",
            "",
            *_curve_table(list(differences), False),
            "",
        ]
    trains = experiment.runner == book.DEFAULT_RUNNER
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
    out += ["", *provenance]
    if seeds:
        out += [
            "Per-epoch data behind this page: [history.csv](history.csv) (run, seed, epoch, metrics).",
            "",
        ]
    for name, drawn in figures.items():
        out += [f"![{name}]({name}.png)" if drawn else f"Figure {name}: not run (no data yet).", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _rate(rows: list[dict[str, Any]], key: str) -> str:
    measured = [r for r in rows if r[key] in ("yes", "no")]
    ok = sum(r[key] == "yes" for r in measured)
    share = f" ({100 * ok / len(measured):.0f}%)" if measured else ""
    qualitative = sum(r[key] == "qualitative" for r in rows)
    return f"{ok} of {len(measured)} reproduced{share}, {qualitative} qualitative"


def summary(
    rows: list[dict[str, Any]],
    experiments: Sequence[book.Experiment],
    differences: Sequence[dict[str, Any]] = (),
) -> str:
    numbered = [r for r in rows if r["book"] is not None]
    trained = [r for r in numbered if not r["deterministic"]]
    checks = [r for r in numbered if r["deterministic"]]
    measured = [r for r in trained if r["seeds"]]
    figure_only = [e.id for e in experiments if all(c.value is None for c in e.checks)]
    lines = [
        "# The book, reproduced",
        "",
        "Every experiment of Nielsen's *Neural Networks and Deep Learning* (chapters 1, 3, 5 and 6) that "
        "has a number or a figure, re-run by `hpexp book run` (chapters 1, 3 and 5 with `--seeds 3`) and "
        "written by `hpexp book report`. Each of the book's numbers is compared in two views: **by the "
        "book's rule**, one run chosen as the book chose (its best of three where it says so, else our "
        "first seed, as the book ran once), every row of an experiment read from that one run; and the "
        "**mean of the seeds** with its 95% Student-t interval. A row is reproduced when "
        "|ours - book| <= tolerance, the largest of the book's rounding, twice our seed standard "
        "deviation and, for accuracies, the binomial standard error on the images evaluated; an "
        "accuracy row whose tolerance exceeds 3 points is *qualitative* and not counted. Accuracies are "
        "percentages, differences in points. Deterministic checks (baselines, single neurons, SVMs) are "
        "in their own table, not in the rates.",
        "",
        f"Rows of trained networks with a number: {len(trained)}; measured: {len(measured)}.",
        "",
        f"- By the book's rule: {_rate(measured, 'reproduced_rule')}.",
        f"- Mean of seeds: {_rate(measured, 'reproduced')}.",
        f"- Deterministic checks (own table): {_rate([r for r in checks if r['seeds']], 'reproduced')}.",
        "",
        "## Trained networks",
        "",
        *_table(trained, with_id=True),
        "",
        "## Deterministic checks",
        "",
        *_table(checks, with_id=True),
        "",
    ]
    if differences:
        lines += [
            "## The book's per-epoch curves",
            "",
            "The eleven series the book published (fig/*.json) against our mean over seeds:",
            "",
            *_curve_table(list(differences), with_id=True),
            "",
        ]
    if figure_only:
        lines += ["Figures without a number: " + ", ".join(f"[{i}]({i}/README.md)" for i in figure_only), ""]
    lines += [
        "Left out, having neither a number nor a figure of a run: the exercises ch1-ex-no-hidden, ch3-l1, "
        "ch3-early-stop, ch3-lr-schedule, ch3-momentum, ch3-tanh, ch3-relu; the procedures "
        "ch3-eta-threshold and ch3-monitor-demo; the illustrations ch3-rotate-demo, ch3-poly-toy; the "
        "analytic ch5-exploding-toy. Chapter 2's timing claim (matrix mini-batch backpropagation about "
        "twice as fast as a per-example loop) is a speed, measured by benchmarks/bench_engine.py, not here.",
        "",
    ]
    misses = [r for r in measured if "no" in (r["reproduced"], r["reproduced_rule"])]
    if misses:
        lines += (
            ["## Rows that miss", ""]
            + [
                f"- {r['id']}, {r['check']} (rule: {VERDICT[r['reproduced_rule']]}, mean: "
                f"{VERDICT[r['reproduced']]}; book {_value(r, r['book'])}, rule {_value(r, r['rule'])}, "
                f"mean {_value(r, r['mean'])}): {_why(r)}"
                for r in misses
            ]
            + [""]
        )
    qualitative = [r for r in measured if r["reproduced"] == "qualitative"]
    if qualitative:
        lines += (
            ["## Qualitative rows", ""]
            + [f"- {r['id']}, {r['check']}: {_why(r)}" for r in qualitative]
            + [""]
        )
    return "\n".join(lines).rstrip("\n") + "\n"


def write(ids: Sequence[str], runs_dir: Path = book.RUNS_DIR, reports_dir: Path = book.REPORTS_DIR) -> Path:
    """Write the pages of `ids` (with history.csv and figures.json, the data of every figure) and
    the summary of every experiment; returns reports_dir."""
    experiments = book.registry()
    all_rows: list[dict[str, Any]] = []
    all_differences: list[dict[str, Any]] = []
    for e in experiments:
        chosen = book.chosen_seed(e, runs_dir)
        rows = [book.compare(e, c, runs_dir, chosen) for c in e.checks if c.value is not None]
        df = curves(e, runs_dir)
        differences = curve_differences(e, df)
        all_rows += rows
        all_differences += differences
        if e.id not in ids:
            continue
        out = reports_dir / e.id
        figures: dict[str, int] = {}
        for spec in e.plots or [{"name": e.checks[0].metric, "y": [e.checks[0].metric]}]:
            png = out / f"{spec['name']}.png"
            png.unlink(missing_ok=True)  # a figure whose data is gone must not stay behind
            figures[spec["name"]] = figure(e, df, runs_dir, spec, png, chosen)
        out.mkdir(parents=True, exist_ok=True)
        table = history_table(e, df)
        if not table.empty:
            rundir.write_atomic(out / "history.csv", table.to_csv(index=False, float_format="%.6g"))
        rundir.write_atomic(out / "figures.json", json.dumps({"points": figures}, indent=1) + "\n")
        text = page(e, rows, figures, differences, _provenance(e, runs_dir))
        rundir.write_atomic(out / "README.md", text)
    rundir.write_atomic(reports_dir / "README.md", summary(all_rows, experiments, all_differences))
    table = pd.DataFrame(all_rows).drop(columns=["seeds", "seed_ids", "note"])
    rundir.write_atomic(reports_dir / "summary.csv", table.to_csv(index=False))
    return reports_dir
