"""Report pages: a `Page` of headings, text, figures and tables, written as `reports/<name>/`
(README.md, a self-contained report.html with images embedded as data: URIs, figures/*.png,
tables/*.csv), and the two pages hpexp makes: `runs_page` and `study_page`.

Rendering here is plain text work; the data comes from `hpexp.report.runs`, the drawing from
`hpexp.report.plots`.
"""

from __future__ import annotations

import base64
import html as html_lib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpexp.report.runs import _value
from hpexp.train import rundir

__all__ = ["Page", "html", "markdown", "runs_page", "study_page", "write_page"]

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Page:
    """A report being assembled: blocks in order, the figures (PNG bytes) and tables they show."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def add(self, kind: str, content: Any) -> None:
        self.blocks.append((kind, content))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        self.add("figure", (name, caption))

    def table(self, name: str, data: pd.DataFrame, shown: pd.DataFrame | None = None) -> None:
        self.tables[name] = data
        self.add("table", (name, data if shown is None else shown))


def _md_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return _value(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def markdown(page: Page) -> str:
    out = [f"# {page.title}"]
    for kind, content in page.blocks:
        if kind == "figure":
            out.append(f"![{content[1]}](figures/{content[0]}.png)\n\n*{content[1]}*")
        elif kind == "table":
            out.append(f"{_md_table(content[1])}\n\n([tables/{content[0]}.csv](tables/{content[0]}.csv))")
        else:
            out.append(
                {"h2": "## {}", "p": "{}", "pre": "```\n{}\n```"}[kind].format(content)
                if kind != "list"
                else "\n".join(f"- {item}" for item in content)
            )
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{color:#555;font-size:90%}
table{border-collapse:collapse;font-size:90%;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow:auto}"""


def html(page: Page) -> str:
    """One self-contained page: images embedded as data: URIs, every text escaped, no network."""
    esc = html_lib.escape
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(page.title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{esc(page.title)}</h1>",
    ]
    for kind, content in page.blocks:
        if kind == "figure":
            data = base64.b64encode(page.figures[content[0]]).decode()
            out.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{esc(content[1])}'>"
                f"<figcaption>{esc(content[1])}</figcaption></figure>"
            )
        elif kind == "table":
            head = "".join(f"<th>{esc(str(c))}</th>" for c in content[1].columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(_value(v))}</td>" for v in row) + "</tr>"
                for row in content[1].itertuples(index=False)
            )
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in content) + "</ul>")
        else:
            out.append(
                {"h2": "<h2>{}</h2>", "p": "<p>{}</p>", "pre": "<pre>{}</pre>"}[kind].format(esc(content))
            )
    return "\n".join(out) + "\n</body></html>\n"


def write_page(page: Page, out_dir: Path) -> Path:
    """Save figures/*.png, tables/*.csv, README.md and report.html under out_dir (atomically)."""
    for name, png in page.figures.items():
        rundir.write_atomic(out_dir / "figures" / f"{name}.png", png)
    for name, table in page.tables.items():
        rundir.write_atomic(out_dir / "tables" / f"{name}.csv", table.to_csv(index=False))
    rundir.write_atomic(out_dir / "README.md", markdown(page))
    rundir.write_atomic(out_dir / "report.html", html(page))
    return out_dir


# --- the pages ----------------------------------------------------------------------------------


def runs_page(df: pd.DataFrame, by: str | list[str] | None = None, title: str = "Runs") -> Page:
    """Overfitting comparison of runs: summary table, learning curves, gap, side-by-side panels."""
    from matplotlib import pyplot as plt

    from hpexp.report import plots
    from hpexp.report import runs as report

    df = report.label_configs(df, by)
    configs = list(df["config"].cat.categories)
    page = Page(title)
    keys = ", ".join([by] if isinstance(by, str) else by or report.varying_keys(df)) or "nothing (seeds only)"
    page.add(
        "p",
        f"{df['run'].nunique()} runs in {len(configs)} configurations, compared by {keys}. "
        "The summary gives accuracies in %, mean ± the 95% confidence half-width over the runs of a "
        "configuration (Student's t, n-1 degrees of freedom; blank for one run), all at each run's "
        "best validation epoch except final_val; the runs table and the CSVs give fractions.",
    )
    if notes := report.check_runs(df):
        page.add("h2", "Notes")
        page.add("list", notes)
    page.add("h2", "Summary per configuration")
    table = report.summarize(df)
    page.table("summary", table, report.format_summary(table))
    page.add("h2", "Learning curves")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), layout="constrained")
    plots.plot_learning_curves(df, "accuracy", ax=axes[0])
    plots.plot_learning_curves(df, "cost", ax=axes[1])
    page.figure(
        "learning_curves",
        plots.png(fig),
        "Accuracy and cost per epoch (train dashed, validation solid, test dotted)",
    )
    if {"train_accuracy", "val_accuracy"} <= set(df.columns):
        page.figure(
            "gap",
            plots.png(plots.plot_gap(df).figure),
            "Training minus validation accuracy; o best-validation epoch, x early stop",
        )
    if len(configs) > 1:
        axes = plots.plot_overfitting(df)
        page.figure(
            "overfitting",
            plots.png(axes[0, 0].figure),
            "Overfitting comparison: one column per configuration, shared axes",
        )
    runs = report.run_metrics(df)
    if "data.n_train" in runs and runs["data.n_train"].nunique() > 1:
        page.figure(
            "accuracy_vs_n_train",
            plots.png(plots.plot_accuracy_vs_n_train(runs).figure),
            "Accuracy against training-set size (log axis)",
        )
    page.add("h2", "Runs")
    columns = [
        "run",
        "config",
        "status",
        "epochs_run",
        "stop_reason",
        "best_epoch",
        "best_val_accuracy",
        "final_val_accuracy",
        "gap_at_best",
        "test_accuracy_at_best",
    ]
    shown = runs[[c for c in columns if c in runs]]
    page.table("runs", runs, shown.round(4))
    return page


def study_page(study: Any, title: str | None = None) -> Page:
    """Study report: trials, optimization history, curves, importances, slices, eta x lmbda map,
    the best trial's learning curves and the finalized result (final.json, final/) where present."""
    from hpexp.report import plots
    from hpexp.report import runs as report

    study_obj = report.open_study(study)
    trials = report.load_trials(study_obj)
    page = Page(title or f"Study {study_obj.study_name}")
    objective = str(study_obj.user_attrs.get("objective", "objective"))
    maximize = study_obj.direction.name == "MAXIMIZE"
    states = trials["state"].value_counts()
    page.add("p", f"{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in states.items()) + ".")
    done = trials[trials["state"] == "COMPLETE"]
    best = done.loc[done["value"].idxmax() if maximize else done["value"].idxmin()] if len(done) else None
    params = [c for c in trials if c.startswith("params_")]
    if best is not None:
        chosen = ", ".join(f"{c.removeprefix('params_')}={_value(best[c])}" for c in params)
        page.add("p", f"Best trial {best['number']}: {objective} {best['value']:.4f} with {chosen}.")
    page.add("h2", "Search")
    history = plots.plot_optimization_history(trials, None, objective, maximize)
    caption = f"{objective} per trial; pruned trials at their last report, faded"
    page.figure("optimization_history", plots.png(history.figure), caption)
    curves = report.load_trial_curves(study_obj)
    if len(curves):
        fig = plots.plot_trial_curves(curves, None, objective).figure
        page.figure("trial_curves", plots.png(fig), "Every trial's reported curve; pruned trials faded")
    importances = report.param_importances(study_obj)
    if len(importances):
        fig = plots.plot_param_importances(importances).figure
        page.figure("importances", plots.png(fig), "Parameter importances (Optuna's default, PED-ANOVA)")
    if params and best is not None:
        fig = plots.plot_slices(trials, params, None, objective)[0].figure
        page.figure("slices", plots.png(fig), f"{objective} against each parameter (completed trials)")
    eta = [c for c in params if c.endswith("eta")]
    lmbda = [c for c in params if c.endswith("lmbda")]
    if eta and lmbda and best is not None:
        fig = plots.plot_param_map(trials, eta[0], lmbda[0], None, objective).figure
        caption = f"{objective} over eta x lmbda: completed trials, linear interpolation between them"
        page.figure("eta_lmbda", plots.png(fig), caption)
    page.add("h2", "Trials")
    shown = trials.drop(columns=["run_dir"]).sort_values("value", ascending=not maximize, na_position="last")
    page.table("trials", trials, shown.round(4))
    folder = None if report._is_study(study) else report.study_dir(study)
    folder = folder.parent if folder is not None and folder.is_file() else folder
    if best is not None:
        _best_run(page, study_obj, int(best["number"]), folder)
    if folder is not None:
        _final(page, folder)
    return page


def _best_run(page: Page, study: Any, number: int, folder: Path | None) -> None:
    from hpexp.report import plots
    from hpexp.report import runs as report

    try:
        runs = report._load_study_runs(study, folder)
    except report.ReportError:
        return
    best = runs[runs["trial"] == number]
    if len(best):
        page.add("h2", f"Best trial {number}: learning curves")
        fig = plots.plot_learning_curves(report.label_configs(best, []), "accuracy").figure
        page.figure("best_trial_curves", plots.png(fig), f"Trial {number}: accuracy per epoch")


def _final(page: Page, folder: Path) -> None:
    from hpexp.report import runs as report

    if (final := folder / "final.json").is_file():
        page.add("h2", "Finalized on the test set")
        page.add("pre", json.dumps(json.loads(final.read_text()), indent=2))
    if (folder / "final").is_dir():
        finals = report.label_configs(report.load_runs(folder / "final"), [])
        table = report.summarize(finals)
        page.add("p", "The finalized seeds' run directories (final/), summarized like any runs:")
        page.table("final", table, report.format_summary(table))
