"""Figures for generalization reports: each function takes a DataFrame from `hpexp.report.runs` and
returns the Axes it drew on (pass `ax=` to draw into your own figure).

Colours follow configurations, line styles follow splits (train dashed, validation solid, test
dotted), as in the book's ch3 figures where training and test curves share one panel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import FuncFormatter

from hpexp.report.runs import SPLITS, band_label, epoch_stats, label_configs, run_metrics
from hpexp.stats import mean_interval

__all__ = [
    "add_reference",
    "best_trial",
    "is_log_scale",
    "metric_label",
    "objective_scale",
    "plot_parallel_coordinates",
    "scale_of",
    "plot_accuracy_vs_n_train",
    "plot_gap",
    "plot_learning_curves",
    "plot_optimization_history",
    "plot_overfitting",
    "plot_param_importances",
    "plot_param_map",
    "plot_slices",
    "plot_trial_curves",
    "png",
]

STYLES = {"train": "--", "val": "-", "test": ":"}
NAMES = {"train": "training", "val": "validation", "test": "test"}


def metric_label(metric: str) -> str:
    """Axis label of a per-epoch metric, with its unit: accuracies in percent; `loss` is the data
    loss (the cost function alone), `cost` adds the regularization penalty and says so."""
    return {
        "accuracy": "accuracy (%)",
        "loss": "data loss (cost function, no penalty)",
        "cost": "cost (data loss + regularization penalty)",
    }.get(metric, metric.replace("_", " "))


def scale_of(column: str) -> float:
    """Accuracies and gaps are stored as fractions and drawn in percent (points)."""
    return 100.0 if column.endswith("accuracy") or column.startswith("gap") else 1.0


def png(fig: Figure | SubFigure) -> bytes:
    """The figure as PNG bytes (90 dpi: sharp enough on screen, small in a report); closes it."""
    figure = fig.get_figure(root=True) if isinstance(fig, SubFigure) else fig
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _ax(ax: Axes | None, size: tuple[float, float] = (6.4, 4.0)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size, layout="constrained")[1]


def _colors(configs: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(configs) <= 10 else "viridis")
    n = max(len(configs) - 1, 1)
    return {c: cmap(i if len(configs) <= 10 else i / n) for i, c in enumerate(configs)}


def _configs(df: pd.DataFrame) -> pd.DataFrame:
    return df if "config" in df else label_configs(df)


def _curve(
    ax: Axes, stats: pd.DataFrame, color, style: str, label: str, scale: float = 1.0, alpha: float = 1.0
) -> None:
    ax.plot(stats["epoch"], stats["mean"] * scale, style, color=color, label=label, alpha=alpha, lw=1.4)
    if (stats["n"] > 1).any():
        ax.fill_between(
            stats["epoch"], stats["lo"] * scale, stats["hi"] * scale, color=color, alpha=0.2 * alpha, lw=0
        )


def _legend(ax: Axes, counts: Sequence[int] = ()) -> None:
    """The legend, with what the shaded bands mean when there are any."""
    if label := band_label(list(counts)):
        ax.fill_between([], [], [], color="grey", alpha=0.25, lw=0, label=label)
    ax.legend(fontsize="small")


def add_reference(ax: Axes, y: float, label: str, color: str = "black") -> None:
    """A horizontal reference line (the book's number, a baseline) labelled inside the axes, at the
    left end of the line, so it reads without a legend and never leaves the plot area."""
    ax.axhline(y, color=color, lw=0.9, ls=(0, (4, 3)), alpha=0.8)
    ax.annotate(
        label,
        xy=(0.01, y),
        xycoords=("axes fraction", "data"),
        xytext=(0, 3),
        textcoords="offset points",
        fontsize="small",
        color=color,
        va="bottom",
        ha="left",
        clip_on=True,
    )


def plot_learning_curves(
    df: pd.DataFrame,
    metric: str = "accuracy",
    splits: Sequence[str] = SPLITS,
    ax: Axes | None = None,
    references: Mapping[str, float] | None = None,
) -> Axes:
    """`{split}_{metric}` per epoch: one colour per configuration, one line style per split; several
    runs of a configuration (seeds) as their mean with a band (the 95% interval of the mean from 3
    runs, their range below). Accuracy in percent; `metric="loss"` is the data loss, `"cost"` the
    penalized cost. `references` maps a label to a value in the metric's unit (fractions for
    accuracy), drawn as labelled lines inside the axes."""
    df, ax = _configs(df), _ax(ax)
    colors = _colors(list(df["config"].cat.categories))
    scale, counts = scale_of(f"x_{metric}"), []
    for split in [s for s in splits if f"{s}_{metric}" in df]:
        stats = epoch_stats(df, f"{split}_{metric}").dropna(subset=["mean"])
        counts += list(stats["n"].unique())
        for config, part in stats.groupby("config", observed=True):
            _curve(ax, part, colors[config], STYLES[split], f"{config}: {NAMES[split]}", scale)
    for label, value in (references or {}).items():
        add_reference(ax, value * scale, label)
    title = {"accuracy": "Accuracy", "loss": "Data loss", "cost": "Cost with penalty"}.get(metric, metric)
    ax.set(xlabel="epoch", ylabel=metric_label(metric), title=f"{title} per epoch")
    _legend(ax, counts)
    ax.grid(alpha=0.3)
    return ax


def plot_gap(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Training minus validation accuracy per epoch in points; o marks the best-validation epoch
    (median over runs), x the epoch where early stopping ended a run before its configured epochs."""
    df, ax = _configs(df), _ax(ax)
    colors = _colors(list(df["config"].cat.categories))
    stats = epoch_stats(df.assign(gap=df["train_accuracy"] - df["val_accuracy"]), "gap")
    runs = run_metrics(df)
    for config, part in stats.dropna(subset=["mean"]).groupby("config", observed=True):
        _curve(ax, part, colors[config], "-", str(config), 100.0)
        mine = runs[runs["config"] == config]
        best = mine["best_epoch"].median()
        if not math.isnan(best):
            y = np.interp(best, part["epoch"], part["mean"] * 100)
            ax.plot([best], [y], "o", color=colors[config], ms=7, mfc="white", label="_best")
        last = df[df["config"] == config].groupby("run")["epoch"].max()
        planned = mine.set_index("run")["train.epochs"] if "train.epochs" in mine else last
        ended = ~mine.set_index("run")["incomplete"] if "incomplete" in mine else last > 0
        for epoch in last[(last < planned.reindex(last.index)) & ended.reindex(last.index)]:
            y = np.interp(epoch, part["epoch"], part["mean"] * 100)
            ax.plot([epoch], [y], "x", color=colors[config], ms=8, mew=2, label="_stop")
    ax.plot([], [], "o", color="grey", mfc="white", label="best validation epoch (median)")
    if any(line.get_label() == "_stop" for line in ax.lines):
        ax.plot([], [], "x", color="grey", mew=2, label="early stop")
    ax.axhline(0, color="black", lw=0.6)
    ax.set(xlabel="epoch", ylabel="train - validation accuracy (points)", title="Generalization gap")
    _legend(ax, list(stats["n"].unique()))
    ax.grid(alpha=0.3)
    return ax


def plot_overfitting(
    df: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "loss"), axes: np.ndarray | None = None
) -> np.ndarray:
    """The book's ch3 comparison: one column per configuration (e.g. without and with a
    regularizer, or several training-set sizes), one row per metric, shared axes along rows."""
    df = _configs(df)
    configs = list(df["config"].cat.categories)
    metrics = [m for m in metrics if any(f"{s}_{m}" in df for s in SPLITS)]
    if axes is None:
        _, axes = plt.subplots(
            len(metrics),
            len(configs),
            figsize=(4.2 * len(configs), 3.2 * len(metrics)),
            sharex=True,
            sharey="row",
            squeeze=False,
            layout="constrained",
        )
    for row, metric in zip(axes, metrics, strict=True):
        counts: list[int] = []
        for ax, config in zip(row, configs, strict=True):
            part = df[df["config"] == config]
            for split in [s for s in SPLITS if f"{s}_{metric}" in df]:
                stats = epoch_stats(part, f"{split}_{metric}").dropna(subset=["mean"])
                counts += list(stats["n"].unique())
                _curve(ax, stats, f"C{SPLITS.index(split)}", "-", NAMES[split], scale_of(f"x_{metric}"))
            ax.set(title=str(config) if metric == metrics[0] else "")
            ax.grid(alpha=0.3)
        row[0].set_ylabel(metric_label(metric))
        _legend(row[0], counts)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    return axes


def plot_accuracy_vs_n_train(runs: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Validation (and test) accuracy in percent against the training-set size on a log axis, from
    `run_metrics`: the mean with its 95% interval (from 3 runs; the range of fewer)."""
    ax = _ax(ax)
    series = {
        "final_val_accuracy": "validation, final epoch",
        "best_val_accuracy": "validation, best epoch",
        "test_accuracy_at_best": "test, at best validation epoch",
    }
    for i, (column, label) in enumerate(series.items()):
        if column not in runs or runs[column].isna().all():
            continue
        rows = []
        for n, g in runs.groupby("data.n_train"):
            est = mean_interval(g[column], 0.0, 1.0)
            lo, hi = (est.lo, est.hi) if est.has_interval else (g[column].min(), g[column].max())
            rows.append((n, est.value, est.value - lo, hi - est.value))
        n, mean, below, above = (np.array(v, dtype=float) for v in zip(*rows, strict=True))
        ax.errorbar(
            n,
            100 * mean,
            yerr=100 * np.vstack([below, above]),
            fmt="o-",
            color=f"C{i}",
            label=label,
            capsize=3,
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="training-set size (data.n_train)",
        ylabel="accuracy (%)",
        title="Accuracy vs training-set size (bars: 95% interval, or range under 3 seeds)",
    )
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return ax


# --- studies ----------------------------------------------------------------------------------

STATE_STYLE: dict[
    str, dict[str, Any]
] = {  # how each trial state is drawn; legends list only the states that occur
    "COMPLETE": {"color": "C0", "alpha": 0.9, "label": "completed"},
    "PRUNED": {"color": "grey", "alpha": 0.35, "label": "pruned (last report)"},
    "FAIL": {"color": "C3", "alpha": 0.5, "label": "failed (last report)"},
    "RUNNING": {"color": "C1", "alpha": 0.6, "label": "running (last report)"},
}


def objective_scale(objective: str) -> tuple[float, str]:
    return (100.0, f"{objective} (%)") if objective.endswith("accuracy") else (1.0, objective)


def best_trial(trials: pd.DataFrame, maximize: bool = True) -> pd.Series | None:
    """The completed trial with the best value (the first of ties), or None."""
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=["value"])
    if not len(done):
        return None
    return done.loc[done["value"].idxmax() if maximize else done["value"].idxmin()]


def plot_optimization_history(
    trials: pd.DataFrame, ax: Axes | None = None, objective: str = "val_accuracy", maximize: bool = True
) -> Axes:
    """Objective per trial (completed trials; others at their last report, faded), the best so far,
    and the best trial circled and numbered."""
    ax = _ax(ax)
    scale, label = objective_scale(objective)
    for state, style in STATE_STYLE.items():
        part = trials[trials["state"] == state]
        y = part["value"] if state == "COMPLETE" else part["last_value"]
        if len(part) and y.notna().any():
            ax.scatter(
                part["number"],
                y * scale,
                color=style["color"],
                alpha=style["alpha"],
                s=18,
                label=style["label"],
            )
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    if len(done):
        best_so_far = done["value"].cummax() if maximize else done["value"].cummin()
        ax.step(done["number"], best_so_far * scale, where="post", color="C3", label="best so far")
    if (best := best_trial(trials, maximize)) is not None:
        ax.scatter(
            [best["number"]],
            [best["value"] * scale],
            s=120,
            facecolor="none",
            edgecolor="black",
            lw=1.5,
            zorder=4,
            label=f"best: trial {int(best['number'])}",
        )
    ax.set(xlabel="trial", ylabel=label, title="Optimization history")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_trial_curves(
    curves: pd.DataFrame, ax: Axes | None = None, objective: str = "val_accuracy", best: int | None = None
) -> Axes:
    """Every trial's reported curve, numbered at its last point; states other than completed faded
    (legend entries only for states that occur); the best trial drawn thick."""
    ax = _ax(ax)
    scale, label = objective_scale(objective)
    for (number, state), part in curves.groupby(["number", "state"]):
        style = STATE_STYLE.get(str(state), STATE_STYLE["RUNNING"])
        color = f"C{int(number) % 10}" if state == "COMPLETE" else style["color"]
        thick = number == best
        ax.plot(
            part["step"],
            part["value"] * scale,
            color="black" if thick else color,
            alpha=1.0 if thick else style["alpha"],
            lw=2.4 if thick else 1.0,
            label="_trial",
        )
        ax.annotate(
            str(number),
            (part["step"].iloc[-1], part["value"].iloc[-1] * scale),
            fontsize=7,
            color=color,
            xytext=(2, 0),
            textcoords="offset points",
            va="center",
        )
    for state in curves["state"].unique():
        if state != "COMPLETE":
            style = STATE_STYLE.get(str(state), STATE_STYLE["RUNNING"])
            ax.plot([], [], color=style["color"], alpha=style["alpha"], label=style["label"].split(" (")[0])
    if best is not None and (curves["number"] == best).any():
        ax.plot([], [], color="black", lw=2.4, label=f"best: trial {best}")
    ax.set(xlabel="epoch (reported step)", ylabel=label, title="Reported curve of every trial (numbered)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_param_importances(importances: pd.DataFrame | pd.Series, ax: Axes | None = None) -> Axes:
    """Horizontal bars of parameter importance (from `report.param_importances`), with error bars
    from the `lo`/`hi` columns where given (a bootstrap interval over trials)."""
    ax = _ax(ax)
    table = importances.to_frame("importance") if isinstance(importances, pd.Series) else importances
    ordered = table.sort_values("importance")
    errors = None
    if {"lo", "hi"} <= set(ordered.columns):
        errors = np.vstack([ordered["importance"] - ordered["lo"], ordered["hi"] - ordered["importance"]])
    ax.barh(
        [str(i) for i in ordered.index], ordered["importance"].to_numpy(), xerr=errors, color="C0", capsize=3
    )
    ax.set(
        xlabel="importance (PED-ANOVA, sums to 1; bars: bootstrap 90% interval)",
        title="Parameter importances",
    )
    return ax


def is_log_scale(param: str, log: Mapping[str, bool] | None, values: pd.Series) -> bool:
    """Log scale as the search space says (the spec), else where positive values span 2 decades."""
    name = param.removeprefix("params_")
    if log is not None and name in log:
        return bool(log[name])
    v = pd.to_numeric(values, errors="coerce").dropna()
    return len(v) > 0 and bool((v > 0).all()) and v.max() / v.min() >= 100


def plot_slices(
    trials: pd.DataFrame,
    params: Sequence[str] | None = None,
    axes=None,
    objective: str = "val_accuracy",
    log: Mapping[str, bool] | None = None,
    maximize: bool = True,
) -> np.ndarray:
    """The objective against each parameter (completed trials), coloured by trial number (colour
    bar), x scaled as the search space is (`log`: parameter -> log scale), the best trial circled."""
    done = trials[trials["state"] == "COMPLETE"]
    params = list(params or [c for c in trials if c.startswith("params_")])
    scale, label = objective_scale(objective)
    if axes is None:
        fig, axes = plt.subplots(
            1,
            len(params),
            figsize=(3.4 * len(params) + 1, 3.2),
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        axes = axes[0]
    best = best_trial(trials, maximize)
    points = None
    for ax, param in zip(axes, params, strict=True):
        points = ax.scatter(
            done[param], done["value"] * scale, c=done["number"], cmap="viridis", edgecolor="grey", s=22
        )
        if best is not None:
            ax.scatter(
                [best[param]], [best["value"] * scale], s=120, facecolor="none", edgecolor="red", lw=1.5
            )
        if is_log_scale(param, log, trials[param]):
            ax.set_xscale("log")
        ax.set(xlabel=param.removeprefix("params_") + (" (log)" if ax.get_xscale() == "log" else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    if points is not None:
        plt.colorbar(points, ax=list(axes), label="trial number")
    return np.asarray(axes)


MIN_MAP_TRIALS = 15  # fewer completed trials: the map shows points only, no interpolated surface


def plot_param_map(
    trials: pd.DataFrame,
    x: str,
    y: str,
    ax: Axes | None = None,
    objective: str = "val_accuracy",
    log: Mapping[str, bool] | None = None,
    maximize: bool = True,
) -> Axes:
    """The objective over two parameters (e.g. eta x lmbda) in the search space's coordinates (log10
    where it is log): completed trials as points, the best circled; from MIN_MAP_TRIALS trials on,
    filled contours of a linear interpolation on their Delaunay triangulation (inside their hull)."""
    ax = _ax(ax, (5.6, 4.4))
    scale, label = objective_scale(objective)
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[x, y, "value"])
    logs = [is_log_scale(c, log, trials[c]) for c in (x, y)]
    px, py = (
        np.log10(done[c].to_numpy(dtype=float)) if lg else done[c].to_numpy(dtype=float)
        for c, lg in zip((x, y), logs, strict=True)
    )
    values = done["value"].to_numpy() * scale
    if len(done) >= MIN_MAP_TRIALS:
        try:
            filled = ax.tricontourf(px, py, values, levels=12, cmap="viridis", alpha=0.8)
            plt.colorbar(filled, ax=ax, label=label)
        except (ValueError, RuntimeError):  # all on a line: points only
            pass
    points = ax.scatter(px, py, c=values, cmap="viridis", edgecolor="black", s=26, zorder=3)
    if len(done) < MIN_MAP_TRIALS:
        plt.colorbar(points, ax=ax, label=label)
    if (best := best_trial(trials, maximize)) is not None:
        bx, by = (math.log10(best[c]) if lg else best[c] for c, lg in zip((x, y), logs, strict=True))
        ax.scatter(
            [bx],
            [by],
            s=160,
            marker="*",
            color="red",
            edgecolor="black",
            zorder=4,
            label=f"best: trial {int(best['number'])}",
        )
        ax.legend(fontsize="small", loc="best")
    ax.margins(0.06)  # keep the outermost trials' points inside the frame
    power = FuncFormatter(lambda v, _: f"{10**v:.3g}")
    for axis, lg, name in ((ax.xaxis, logs[0], x), (ax.yaxis, logs[1], y)):
        if lg:
            axis.set_major_formatter(power)
        axis.set_label_text(name.removeprefix("params_") + (" (log scale)" if lg else ""))
    ax.set_title(f"{objective} over {x.removeprefix('params_')} x {y.removeprefix('params_')}")
    return ax


def plot_parallel_coordinates(
    trials: pd.DataFrame,
    ax: Axes | None = None,
    objective: str = "val_accuracy",
    log: Mapping[str, bool] | None = None,
) -> Axes:
    """One line per completed trial across one vertical axis per parameter (each scaled to its
    trials' range, log10 where the search space is log) and the objective, coloured by the objective."""
    ax = _ax(ax, (7.5, 4.0))
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=["value"])
    params = [c for c in trials if c.startswith("params_")]
    scale, label = objective_scale(objective)
    columns, names = [], []
    for param in params:
        v = pd.to_numeric(done[param], errors="coerce")
        if v.isna().all():  # categorical: codes in order of appearance
            v = done[param].astype("category").cat.codes.astype(float)
        lg = is_log_scale(param, log, trials[param])
        columns.append(np.log10(v) if lg else v)
        names.append(param.removeprefix("params_") + (" (log)" if lg else ""))
    columns.append(done["value"] * scale)
    names.append(label)
    if not len(done):
        ax.set_title("Parallel coordinates: no completed trials")
        return ax
    data = np.column_stack([np.asarray(c, dtype=float) for c in columns])
    lo, hi = np.nanmin(data, axis=0), np.nanmax(data, axis=0)
    unit = (data - lo) / np.where(hi > lo, hi - lo, 1)
    cmap = plt.get_cmap("viridis")
    for row in unit:
        ax.plot(range(len(names)), row, color=cmap(row[-1]), alpha=0.7, lw=1)
    for i in range(len(names)):
        ax.axvline(i, color="black", lw=0.8)
        ax.annotate(f"{hi[i]:.3g}", (i, 1.0), xytext=(2, 2), textcoords="offset points", fontsize=7)
        ax.annotate(f"{lo[i]:.3g}", (i, 0.0), xytext=(2, -9), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(len(names)), names, fontsize="small")
    ax.set_yticks([])
    ax.set_title(f"Parallel coordinates of {len(done)} completed trials (axes: each value's range)")
    return ax
