"""Figures for generalization reports: each function takes a DataFrame from `hpexp.report.runs` and
returns the Axes it drew on (pass `ax=` to draw into your own figure).

Colours follow configurations, line styles follow splits (train dashed, validation solid, test
dotted), as in the book's ch3 figures where training and test curves share one panel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import FuncFormatter

from hpexp.report.runs import SPLITS, epoch_stats, label_configs, run_metrics

__all__ = [
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


def _curve(ax: Axes, stats: pd.DataFrame, color, style: str, label: str, alpha: float = 1.0) -> None:
    ax.plot(stats["epoch"], stats["mean"], style, color=color, label=label, alpha=alpha, lw=1.4)
    if (stats["n"] > 1).any():
        ax.fill_between(stats["epoch"], stats["lo"], stats["hi"], color=color, alpha=0.2 * alpha, lw=0)


def plot_learning_curves(
    df: pd.DataFrame, metric: str = "accuracy", splits: Sequence[str] = SPLITS, ax: Axes | None = None
) -> Axes:
    """`{split}_{metric}` per epoch: one colour per configuration, one line style per split; several
    runs of a configuration (seeds) as their mean with a 95% confidence band."""
    df, ax = _configs(df), _ax(ax)
    colors = _colors(list(df["config"].cat.categories))
    for split in [s for s in splits if f"{s}_{metric}" in df]:
        stats = epoch_stats(df, f"{split}_{metric}").dropna(subset=["mean"])
        for config, part in stats.groupby("config", observed=True):
            _curve(ax, part, colors[config], STYLES[split], f"{config}: {NAMES[split]}")
    ax.set(xlabel="epoch", ylabel=metric.replace("_", " "), title=f"{metric.capitalize()} per epoch")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_gap(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Training minus validation accuracy per epoch; o marks the best-validation epoch (mean over
    runs), x the epoch where early stopping ended a run before its configured epochs."""
    df, ax = _configs(df), _ax(ax)
    colors = _colors(list(df["config"].cat.categories))
    stats = epoch_stats(df.assign(gap=df["train_accuracy"] - df["val_accuracy"]), "gap")
    runs = run_metrics(df)
    for config, part in stats.dropna(subset=["mean"]).groupby("config", observed=True):
        _curve(ax, part, colors[config], "-", str(config))
        mine = runs[runs["config"] == config]
        best = mine["best_epoch"].mean()
        if not math.isnan(best):
            y = np.interp(best, part["epoch"], part["mean"])
            ax.plot([best], [y], "o", color=colors[config], ms=7, mfc="white", label="_best")
        last = df[df["config"] == config].groupby("run")["epoch"].max()
        planned = mine.set_index("run")["train.epochs"] if "train.epochs" in mine else last
        ended = ~mine.set_index("run")["incomplete"] if "incomplete" in mine else last > 0
        for epoch in last[(last < planned.reindex(last.index)) & ended.reindex(last.index)]:
            y = np.interp(epoch, part["epoch"], part["mean"])
            ax.plot([epoch], [y], "x", color=colors[config], ms=8, mew=2, label="_stop")
    ax.plot([], [], "o", color="grey", mfc="white", label="best validation epoch")
    if any(line.get_label() == "_stop" for line in ax.lines):
        ax.plot([], [], "x", color="grey", mew=2, label="early stop")
    ax.axhline(0, color="black", lw=0.6)
    ax.set(xlabel="epoch", ylabel="train - validation accuracy", title="Generalization gap")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_overfitting(
    df: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "cost"), axes: np.ndarray | None = None
) -> np.ndarray:
    """The book's ch3 comparison: one column per configuration (e.g. without and with a
    regularizer, or several training-set sizes), one row per metric, shared axes along rows."""
    df = _configs(df)
    configs = list(df["config"].cat.categories)
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
        for ax, config in zip(row, configs, strict=True):
            part = df[df["config"] == config]
            for split in [s for s in SPLITS if f"{s}_{metric}" in df]:
                stats = epoch_stats(part, f"{split}_{metric}").dropna(subset=["mean"])
                _curve(ax, stats, f"C{SPLITS.index(split)}", "-", NAMES[split])
            ax.set(title=str(config) if metric == metrics[0] else "", ylabel=metric)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    return axes


def plot_accuracy_vs_n_train(runs: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Validation (and test) accuracy against the training-set size on a log axis, from
    `run_metrics`: the final-epoch and best-epoch validation accuracy, mean +/- 95% CI."""
    from hpexp.stats import mean_ci

    ax = _ax(ax)
    series = {
        "final_val_accuracy": "validation, final epoch",
        "best_val_accuracy": "validation, best epoch",
        "test_accuracy_at_best": "test, at best validation epoch",
    }
    for i, (column, label) in enumerate(series.items()):
        if column not in runs or runs[column].isna().all():
            continue
        stats = [(n, *mean_ci(g[column])) for n, g in runs.groupby("data.n_train")]
        n, mean, half, _ = (np.array(v, dtype=float) for v in zip(*stats, strict=True))
        ax.errorbar(n, mean, yerr=np.nan_to_num(half), fmt="o-", color=f"C{i}", label=label, capsize=3)
    ax.set_xscale("log")
    ax.set(
        xlabel="training-set size (data.n_train)", ylabel="accuracy", title="Accuracy vs training-set size"
    )
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return ax


# --- studies ----------------------------------------------------------------------------------


def plot_optimization_history(
    trials: pd.DataFrame, ax: Axes | None = None, objective: str = "val_accuracy", maximize: bool = True
) -> Axes:
    """Objective per trial (completed trials), the best so far, and pruned trials' last value faded."""
    ax = _ax(ax)
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    pruned = trials[trials["state"] == "PRUNED"]
    ax.scatter(
        pruned["number"], pruned["last_value"], color="grey", alpha=0.35, s=14, label="pruned (last report)"
    )
    ax.scatter(done["number"], done["value"], color="C0", s=18, label="completed")
    ax.step(
        done["number"],
        (done["value"].cummax() if maximize else done["value"].cummin()),
        where="post",
        color="C3",
        label="best so far",
    )
    ax.set(xlabel="trial", ylabel=objective, title="Optimization history")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_trial_curves(curves: pd.DataFrame, ax: Axes | None = None, objective: str = "val_accuracy") -> Axes:
    """Every trial's reported validation curve; pruned trials faded grey."""
    ax = _ax(ax)
    for (number, state), part in curves.groupby(["number", "state"]):
        pruned = state == "PRUNED"
        ax.plot(
            part["step"],
            part["value"],
            color="grey" if pruned else f"C{number % 10}",
            alpha=0.3 if pruned else 0.9,
            lw=1.0,
            label="_trial",
        )
    ax.plot([], [], color="grey", alpha=0.3, label="pruned")
    ax.set(xlabel="epoch (reported step)", ylabel=objective, title="Reported curve of every trial")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_param_importances(importances: pd.Series, ax: Axes | None = None) -> Axes:
    """Horizontal bars of parameter importance (from `report.param_importances`)."""
    ax = _ax(ax)
    ordered = importances.sort_values()
    ax.barh([str(i) for i in ordered.index], ordered.to_numpy(), color="C0")
    ax.set(xlabel="importance (PED-ANOVA, sums to 1)", title="Parameter importances")
    return ax


def _log_scale(values: pd.Series) -> bool:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return len(v) > 0 and bool((v > 0).all()) and v.max() / v.min() >= 100


def plot_slices(
    trials: pd.DataFrame, params: Sequence[str] | None = None, axes=None, objective: str = "val_accuracy"
) -> np.ndarray:
    """Validation accuracy against each parameter (completed trials), coloured by trial number."""
    done = trials[trials["state"] == "COMPLETE"]
    params = list(params or [c for c in trials if c.startswith("params_")])
    if axes is None:
        _, axes = plt.subplots(
            1, len(params), figsize=(3.4 * len(params), 3.2), sharey=True, squeeze=False, layout="constrained"
        )
        axes = axes[0]
    for ax, param in zip(axes, params, strict=True):
        ax.scatter(done[param], done["value"], c=done["number"], cmap="Blues", edgecolor="grey", s=22)
        if _log_scale(done[param]):
            ax.set_xscale("log")
        ax.set(xlabel=param.removeprefix("params_"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(objective)
    return np.asarray(axes)


def plot_param_map(
    trials: pd.DataFrame, x: str, y: str, ax: Axes | None = None, objective: str = "val_accuracy"
) -> Axes:
    """Validation accuracy over two parameters (e.g. eta x lmbda), in log10 coordinates where the
    values span decades: completed trials as points, filled contours of a linear interpolation on
    their Delaunay triangulation (matplotlib's own; no scipy)."""
    ax = _ax(ax, (5.6, 4.4))
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[x, y, "value"])
    xs, ys = (done[c].to_numpy(dtype=float) for c in (x, y))
    logs = [_log_scale(done[c]) for c in (x, y)]
    px, py = (np.log10(v) if log else v for v, log in zip((xs, ys), logs, strict=True))
    try:
        filled = ax.tricontourf(px, py, done["value"].to_numpy(), levels=12, cmap="viridis", alpha=0.8)
        plt.colorbar(filled, ax=ax, label=objective)
    except (ValueError, RuntimeError):  # fewer than 3 points or all on a line: points only
        pass
    ax.scatter(px, py, c=done["value"], cmap="viridis", edgecolor="black", s=26, zorder=3)
    ax.margins(0.06)  # keep the outermost trials' points inside the frame
    power = FuncFormatter(lambda v, _: f"{10**v:.3g}")
    for axis, log, name in ((ax.xaxis, logs[0], x), (ax.yaxis, logs[1], y)):
        if log:
            axis.set_major_formatter(power)
        axis.set_label_text(name.removeprefix("params_") + (" (log scale)" if log else ""))
    ax.set_title(f"{objective} over {x.removeprefix('params_')} x {y.removeprefix('params_')}")
    return ax
