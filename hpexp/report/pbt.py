"""Population-based training in a study report: each member's hyperparameter schedule and the
lineage (who copied whom, when) as DataFrames, and the two figures drawn from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from hpexp.train.plans import lineage_of

__all__ = ["is_pbt", "load_lineage", "load_schedules", "plot_lineage", "plot_schedules"]


def _members(study: Any) -> list[Any]:
    trials = [t for t in study.get_trials(deepcopy=False) if "pbt_schedule" in t.user_attrs]
    return sorted(trials, key=lambda t: t.user_attrs["member"])


def is_pbt(study: Any) -> bool:
    return bool(_members(study))


def load_schedules(study: Any) -> pd.DataFrame:
    """One row per member x epoch x searched key: the value the member's lineage trained with,
    with its trial number and final value (`value`)."""
    rows = []
    for t in _members(study):
        schedule, epochs = t.user_attrs["pbt_schedule"], t.user_attrs.get("epochs_run") or 0
        ends = [e["epoch"] for e in schedule[1:]] + [epochs + 1]
        for entry, end in zip(schedule, ends, strict=True):
            for epoch in range(entry["epoch"], end):
                for key, v in entry["values"].items():
                    rows.append(
                        {
                            "member": t.user_attrs["member"],
                            "number": t.number,
                            "epoch": epoch,
                            "key": key,
                            "param_value": v,
                            "value": t.value,
                        }
                    )
    return pd.DataFrame(rows, columns=["member", "number", "epoch", "key", "param_value", "value"])


def load_lineage(study: Any) -> pd.DataFrame:
    """One row per exploit: after `epoch`, `member` took `parent`'s weights (scores before)."""
    rows = [
        {
            "epoch": e["epoch"],
            "member": e["member"],
            "parent": e["parent"],
            "score": e["score"],
            "parent_score": e["parent_score"],
        }
        for t in _members(study)
        for e in t.user_attrs["pbt_lineage"]
    ]
    columns = ["epoch", "member", "parent", "score", "parent_score"]
    return pd.DataFrame(rows, columns=columns).sort_values(["epoch", "member"]).reset_index(drop=True)


def plot_lineage(
    lineage: pd.DataFrame, members: int, epochs: int, best: int | None, ax: Axes | None = None
) -> Axes:
    """Members as rows, epochs across; an arrow where a member copied a parent; the best member's
    ancestry (whose weights it carried, stretch by stretch) drawn thick."""
    import matplotlib.pyplot as plt

    ax = ax or plt.figure(figsize=(7.0, 0.35 * members + 1.6)).subplots()
    for k in range(members):
        ax.plot([0.5, epochs + 0.5], [k, k], color="0.85", lw=1, zorder=1)
    for row in lineage.itertuples():
        ax.annotate(
            "",
            xy=(row.epoch + 0.5, row.member),
            xytext=(row.epoch + 0.5, row.parent),
            arrowprops={"arrowstyle": "->", "color": "C0", "alpha": 0.6, "lw": 1},
        )
    if best is not None:
        events = lineage.to_dict("records")
        segments = lineage_of(best, events)
        starts = [s for s, _ in segments] + [epochs + 1]
        for (start, slot), end in zip(segments, starts[1:], strict=True):
            ax.plot([start - 0.5, end - 0.5], [slot, slot], color="C3", lw=3, zorder=3)
        for (_, a), (start, b) in zip(segments, segments[1:], strict=False):
            ax.plot([start - 0.5, start - 0.5], [a, b], color="C3", lw=3, zorder=3)
        ax.plot([], [], color="C3", lw=3, label=f"best member {best}: its lineage")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set(
        xlabel="epoch", ylabel="member", xlim=(0.5, epochs + 0.5), title="PBT lineage (arrow: parent -> copy)"
    )
    ax.set_yticks(range(members))
    ax.invert_yaxis()
    ax.get_figure(root=True).tight_layout()  # type: ignore[union-attr]
    return ax


def plot_schedules(
    schedules: pd.DataFrame, key: str, best: int | None, log: bool, ax: Axes | None = None
) -> Axes:
    """`key`'s value per epoch for each member (as its lineage trained), the best member thick."""
    import matplotlib.pyplot as plt

    ax = ax or plt.figure(figsize=(6.4, 3.6)).subplots()
    part = schedules[schedules["key"] == key]
    for member, rows in part.groupby("member"):
        is_best = member == best
        ax.step(
            rows["epoch"],
            rows["param_value"].astype(float),
            where="mid",
            color="C3" if is_best else "0.6",
            lw=2.5 if is_best else 0.8,
            alpha=1 if is_best else 0.7,
            zorder=3 if is_best else 2,
            label=f"best member {best}" if is_best else None,
        )
    if log and np.all(part["param_value"].astype(float) > 0):
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=key, title=f"{key} per epoch (every member's lineage)")
    if best is not None:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.get_figure(root=True).tight_layout()  # type: ignore[union-attr]
    return ax
