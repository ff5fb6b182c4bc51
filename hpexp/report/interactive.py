"""Interactive figures for report.html (plotly): hover for values, click a legend entry to hide or
show a series, drag to zoom, double-click to reset. The same data and conventions as the PNGs of
`hpexp.report.plots` (accuracy in percent, bands = 95% interval of the mean from 3 seeds, the range
below, the search space's log axes, the best trial marked); each function returns a plotly Figure.

`to_html` turns a figure into a <div> and its script without plotly.js; `hpexp.report.pages` puts
plotly.js into the page once (or links one shared copy).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from hpexp.report.plots import (
    NAMES,
    STATE_STYLE,
    best_trial,
    is_log_scale,
    metric_label,
    objective_scale,
    scale_of,
)
from hpexp.report.runs import SPLITS, band_label, epoch_stats, label_configs, run_metrics

__all__ = [
    "gap",
    "learning_curves",
    "optimization_history",
    "parallel_coordinates",
    "param_importances",
    "param_map",
    "slices",
    "to_html",
    "trial_curves",
]

DASH = {"train": "dash", "val": "solid", "test": "dot"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["toImage"]}


def _text(s: Any) -> str:
    """Plotly draws labels as a subset of HTML: escape them so a config value is shown, not parsed."""
    return html.escape(str(s), quote=False)


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=_text(title),
        xaxis_title=_text(x),
        yaxis_title=_text(y),
        template="plotly_white",
        height=height,
        hovermode="closest",
        legend={"font": {"size": 11}},
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig: go.Figure, part: pd.DataFrame, color: str, group: str, scale: float, **where: Any) -> None:
    """The shaded band as one closed polygon, toggled with its curve (same legend group)."""
    if not (part["n"] > 1).any():
        return
    x = np.concatenate([part["epoch"], part["epoch"][::-1]])
    y = np.concatenate([part["hi"] * scale, part["lo"][::-1] * scale])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            fill="toself",
            fillcolor=_rgba(color, 0.18),
            line={"width": 0},
            hoverinfo="skip",
            legendgroup=group,
            showlegend=False,
        ),
        **where,
    )


def _curves(
    fig: go.Figure, df: pd.DataFrame, column: str, color: str, name: str, dash: str, unit: str, **where: Any
) -> list[int]:
    scale = scale_of(column)
    stats = epoch_stats(df, column).dropna(subset=["mean"])
    if not len(stats):
        return []
    group = f"{name}"
    _band(fig, stats, color, group, scale, **where)
    band = np.where(stats["band"] == "interval", "95% interval", "range")
    fig.add_trace(
        go.Scatter(
            x=stats["epoch"],
            y=stats["mean"] * scale,
            mode="lines",
            name=_text(name),
            legendgroup=group,
            line={"color": color, "dash": dash, "width": 1.6},
            customdata=np.column_stack([stats["lo"] * scale, stats["hi"] * scale, stats["n"], band]),
            hovertemplate=f"{_text(name)}<br>epoch %{{x}}<br>mean %{{y:.3f}}{unit}"
            f"<br>%{{customdata[3]}} %{{customdata[0]:.3f}} to %{{customdata[1]:.3f}} (n=%{{customdata[2]}})"
            "<extra></extra>",
        ),
        **where,
    )
    return list(stats["n"].unique())


def learning_curves(
    df: pd.DataFrame,
    metric: str = "accuracy",
    splits: Sequence[str] = SPLITS,
    references: Mapping[str, float] | None = None,
) -> go.Figure:
    """Per epoch `{split}_{metric}` of every configuration: mean line with its band; one legend entry
    per configuration and split (click to hide)."""
    df = df if "config" in df else label_configs(df)
    fig = go.Figure()
    unit = "%" if metric == "accuracy" else ""
    counts: list[int] = []
    for i, config in enumerate(df["config"].cat.categories):
        part = df[df["config"] == config]
        for split in [s for s in splits if f"{s}_{metric}" in df]:
            counts += _curves(
                fig,
                part,
                f"{split}_{metric}",
                PALETTE[i % len(PALETTE)],
                f"{config}: {NAMES[split]}",
                DASH[split],
                unit,
            )
    for label, value in (references or {}).items():
        fig.add_hline(
            y=value * scale_of(f"x_{metric}"),
            line_dash="dash",
            line_color="black",
            annotation_text=_text(label),
            annotation_position="top left",
        )
    title = {"accuracy": "Accuracy", "loss": "Data loss", "cost": "Cost with penalty"}.get(metric, metric)
    _layout(
        fig,
        f"{title} per epoch ({band_label(counts) or 'one run per configuration'})",
        "epoch",
        metric_label(metric),
    )
    return fig


def gap(df: pd.DataFrame) -> go.Figure:
    """Training minus validation accuracy (points) per configuration; the median best-validation
    epoch of each configuration as a marker."""
    df = df if "config" in df else label_configs(df)
    df = df.assign(gap=df["train_accuracy"] - df["val_accuracy"])
    runs = run_metrics(df)
    fig, counts = go.Figure(), []
    for i, config in enumerate(df["config"].cat.categories):
        color = PALETTE[i % len(PALETTE)]
        part = df[df["config"] == config]
        counts += _curves(fig, part, "gap", color, str(config), "solid", " points")
        best = runs.loc[runs["config"] == config, "best_epoch"].median()
        stats = epoch_stats(part, "gap").dropna(subset=["mean"])
        if not math.isnan(best) and len(stats):
            fig.add_trace(
                go.Scatter(
                    x=[best],
                    y=[float(np.interp(best, stats["epoch"], stats["mean"] * 100))],
                    mode="markers",
                    marker={"symbol": "circle-open", "size": 11, "color": color, "line": {"width": 2}},
                    name=_text(f"{config}: best validation epoch (median {best:g})"),
                    legendgroup=str(config),
                    hovertemplate="best validation epoch %{x}<br>gap %{y:.2f} points<extra></extra>",
                )
            )
    fig.add_hline(y=0, line_color="black", line_width=1)
    _layout(
        fig,
        f"Generalization gap ({band_label(counts) or 'one run per configuration'})",
        "epoch",
        "train - validation accuracy (points)",
    )
    return fig


# --- studies ----------------------------------------------------------------------------------


def optimization_history(
    trials: pd.DataFrame, objective: str = "val_accuracy", maximize: bool = True
) -> go.Figure:
    scale, label = objective_scale(objective)
    fig = go.Figure()
    for state, style in STATE_STYLE.items():
        part = trials[trials["state"] == state]
        y = part["value"] if state == "COMPLETE" else part["last_value"]
        if len(part) and y.notna().any():
            fig.add_trace(
                go.Scatter(
                    x=part["number"],
                    y=y * scale,
                    mode="markers",
                    name=style["label"],
                    opacity=style["alpha"],
                    marker={"color": PALETTE[0] if state == "COMPLETE" else "grey"},
                    hovertemplate="trial %{x}<br>%{y:.3f}<extra>" + state.lower() + "</extra>",
                )
            )
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    if len(done):
        best = done["value"].cummax() if maximize else done["value"].cummin()
        fig.add_trace(
            go.Scatter(
                x=done["number"],
                y=best * scale,
                mode="lines",
                line_shape="hv",
                name="best so far",
                line={"color": PALETTE[3]},
            )
        )
    if (b := best_trial(trials, maximize)) is not None:
        fig.add_trace(
            go.Scatter(
                x=[b["number"]],
                y=[b["value"] * scale],
                mode="markers+text",
                text=[f"trial {int(b['number'])}"],
                textposition="top center",
                marker={"symbol": "star", "size": 14, "color": "red"},
                name=f"best: trial {int(b['number'])}",
            )
        )
    return _layout(fig, "Optimization history", "trial", label)


def trial_curves(curves: pd.DataFrame, objective: str = "val_accuracy", best: int | None = None) -> go.Figure:
    """One trace per trial, named 'trial N (state)': hover shows the trial, the legend hides it."""
    scale, label = objective_scale(objective)
    fig = go.Figure()
    for (number, state), part in curves.groupby(["number", "state"]):
        style = STATE_STYLE.get(str(state), STATE_STYLE["RUNNING"])
        thick = number == best
        color = "black" if thick else (PALETTE[int(number) % len(PALETTE)] if state == "COMPLETE" else "grey")
        name = (
            f"trial {number}"
            + ("" if state == "COMPLETE" else f" ({str(state).lower()})")
            + (" best" if thick else "")
        )
        fig.add_trace(
            go.Scatter(
                x=part["step"],
                y=part["value"] * scale,
                mode="lines",
                name=name,
                opacity=1 if thick else style["alpha"],
                line={"color": color, "width": 3 if thick else 1.2},
                hovertemplate=f"{name}<br>epoch %{{x}}<br>%{{y:.3f}}<extra></extra>",
            )
        )
    return _layout(fig, "Reported curve of every trial", "epoch (reported step)", label)


def param_importances(importances: pd.DataFrame) -> go.Figure:
    ordered = importances.sort_values("importance")
    error = None
    if {"lo", "hi"} <= set(ordered.columns) and ordered["lo"].notna().all():
        error = {
            "type": "data",
            "symmetric": False,
            "array": ordered["hi"] - ordered["importance"],
            "arrayminus": ordered["importance"] - ordered["lo"],
        }
    fig = go.Figure(
        go.Bar(
            x=ordered["importance"],
            y=[_text(i) for i in ordered.index],
            orientation="h",
            error_x=error,
            marker_color=PALETTE[0],
        )
    )
    return _layout(
        fig,
        "Parameter importances (bars: bootstrap 90% interval)",
        "importance (PED-ANOVA, sums to 1)",
        "",
        height=120 + 40 * len(ordered),
    )


def slices(
    trials: pd.DataFrame,
    objective: str = "val_accuracy",
    log: Mapping[str, bool] | None = None,
    maximize: bool = True,
) -> go.Figure:
    params = [c for c in trials if c.startswith("params_")]
    done = trials[trials["state"] == "COMPLETE"]
    scale, label = objective_scale(objective)
    fig = make_subplots(
        rows=1,
        cols=len(params),
        shared_yaxes=True,
        subplot_titles=[_text(p.removeprefix("params_")) for p in params],
    )
    b = best_trial(trials, maximize)
    for i, param in enumerate(params, start=1):
        fig.add_trace(
            go.Scatter(
                x=done[param],
                y=done["value"] * scale,
                mode="markers",
                showlegend=False,
                customdata=done["number"],
                marker={
                    "color": done["number"],
                    "colorscale": "Viridis",
                    "showscale": i == 1,
                    "colorbar": {"title": "trial"},
                },
                hovertemplate="trial %{customdata}<br>%{x:.4g}<br>%{y:.3f}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        if b is not None:
            fig.add_trace(
                go.Scatter(
                    x=[b[param]],
                    y=[b["value"] * scale],
                    mode="markers",
                    showlegend=i == 1,
                    name=f"best: trial {int(b['number'])}",
                    marker={"symbol": "star", "size": 14, "color": "red"},
                ),
                row=1,
                col=i,
            )
        if is_log_scale(param, log, trials[param]):
            fig.update_xaxes(type="log", row=1, col=i)
    fig.update_yaxes(title_text=_text(label), row=1, col=1)
    return _layout(
        fig, f"{objective} against each parameter (log axes where the search space is log)", "", label
    )


def param_map(
    trials: pd.DataFrame,
    x: str,
    y: str,
    objective: str = "val_accuracy",
    log: Mapping[str, bool] | None = None,
    maximize: bool = True,
) -> go.Figure:
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[x, y, "value"])
    scale, label = objective_scale(objective)
    fig = go.Figure(
        go.Scatter(
            x=done[x],
            y=done[y],
            mode="markers",
            customdata=np.column_stack([done["number"], done["value"] * scale]),
            marker={
                "color": done["value"] * scale,
                "colorscale": "Viridis",
                "size": 10,
                "showscale": True,
                "colorbar": {"title": _text(label)},
                "line": {"width": 1, "color": "black"},
            },
            hovertemplate="trial %{customdata[0]}<br>%{x:.4g}, %{y:.4g}<br>"
            "%{customdata[1]:.3f}<extra></extra>",
            name="completed trials",
        )
    )
    if (b := best_trial(trials, maximize)) is not None:
        fig.add_trace(
            go.Scatter(
                x=[b[x]],
                y=[b[y]],
                mode="markers",
                name=f"best: trial {int(b['number'])}",
                marker={"symbol": "star", "size": 16, "color": "red"},
            )
        )
    fig.update_xaxes(type="log" if is_log_scale(x, log, trials[x]) else "linear")
    fig.update_yaxes(type="log" if is_log_scale(y, log, trials[y]) else "linear")
    _layout(
        fig,
        f"{objective} over {x.removeprefix('params_')} x {y.removeprefix('params_')}",
        x.removeprefix("params_"),
        y.removeprefix("params_"),
    )
    return fig.update_layout(legend={"orientation": "h", "y": -0.2})  # clear of the colour bar


def parallel_coordinates(
    trials: pd.DataFrame, objective: str = "val_accuracy", log: Mapping[str, bool] | None = None
) -> go.Figure:
    """Completed trials across one axis per parameter (log10 where the search space is log) and the
    objective; drag along an axis to select a range."""
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=["value"])
    scale, label = objective_scale(objective)
    dims = []
    for param in [c for c in trials if c.startswith("params_")]:
        v = pd.to_numeric(done[param], errors="coerce")
        name = param.removeprefix("params_")
        if v.isna().all():
            codes = done[param].astype("category")
            dims.append(
                {
                    "label": _text(name),
                    "values": codes.cat.codes,
                    "tickvals": list(range(len(codes.cat.categories))),
                    "ticktext": [_text(c) for c in codes.cat.categories],
                }
            )
        elif is_log_scale(param, log, trials[param]):
            dims.append({"label": _text(f"log10 {name}"), "values": np.log10(v)})
        else:
            dims.append({"label": _text(name), "values": v})
    dims.append({"label": _text(label), "values": done["value"] * scale})
    fig = go.Figure(
        go.Parcoords(
            line={"color": done["value"] * scale, "colorscale": "Viridis", "showscale": True}, dimensions=dims
        )
    )
    _layout(fig, f"Parallel coordinates of {len(done)} completed trials", "", "")
    return fig.update_layout(margin={"t": 100})  # room for the axis names above the axes


def to_html(fig: go.Figure, div_id: str) -> str:
    """The figure's <div> and script (plotly.js not included: the page loads it once)."""
    return pio.to_html(
        fig,
        include_plotlyjs=False,
        full_html=False,
        div_id=div_id,
        config=CONFIG,
        default_height=f"{fig.layout.height or 420}px",
    )
