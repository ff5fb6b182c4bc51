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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpexp.report.runs import _value
from hpexp.train import rundir

__all__ = [
    "Page",
    "html",
    "markdown",
    "plotly_js",
    "runs_page",
    "study_page",
    "write_page",
    "write_plotly_asset",
]

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Page:
    """A report being assembled: blocks in order, the figures (PNG bytes, and optionally interactive
    plotly figures that report.html shows instead) and the tables they show."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    interactive: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, kind: str, content: Any) -> None:
        self.blocks.append((kind, content))

    def figure(self, name: str, png: bytes, caption: str, interactive: Sequence[Any] = ()) -> None:
        self.figures[name] = png
        if interactive:
            self.interactive[name] = list(interactive)
        self.add("figure", (name, caption))

    def table(self, name: str, data: pd.DataFrame, shown: pd.DataFrame | None = None) -> None:
        self.tables[name] = data
        self.add("table", (name, data if shown is None else shown))

    def note_after_lead(self, text: str) -> None:
        """A paragraph after the page's lead (its verdict), before the first section."""
        first = next((i for i, (kind, _) in enumerate(self.blocks) if kind == "h2"), len(self.blocks))
        self.blocks.insert(first, ("p", text))


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
        elif kind == "verdict":
            out.append(f"**{content}**")
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
th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow:auto}
.verdict{font-size:110%;background:#f4f8ff;border-left:4px solid #3b6fd1;padding:.6em .8em}"""
# The page may load nothing from anywhere: scripts and styles are inline, images data: URIs (plotly
# draws its own with blob: and data:). 'self' lets a shared plotly.min.js beside the pages load.
CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)
PLOTLY_JS = "plotly.min.js"


def plotly_js() -> str:
    """The plotly.js bundle that the installed plotly ships (offline; no CDN)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def write_plotly_asset(folder: Path) -> Path:
    """Write plotly.js once into `folder` (e.g. reports/book/) for pages written with
    `html(page, plotly_src="../plotly.min.js")`: many pages, one copy, still offline."""
    path = folder / PLOTLY_JS
    rundir.write_atomic(path, plotly_js())
    return path


def _figure_html(page: Page, name: str, caption: str) -> str:
    esc = html_lib.escape
    if name in page.interactive:
        from hpexp.report.interactive import to_html

        divs = "".join(to_html(fig, f"fig-{name}-{i}") for i, fig in enumerate(page.interactive[name]))
        return f"<figure class='interactive'>{divs}<figcaption>{esc(caption)}</figcaption></figure>"
    data = base64.b64encode(page.figures[name]).decode()
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{esc(caption)}'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def html(page: Page, plotly_src: str | None = None) -> str:
    """One self-contained page: every text escaped, no network (a Content-Security-Policy forbids
    it). Interactive figures need plotly.js: embedded once in the page by default, or loaded from
    `plotly_src`, a relative path to one shared copy (`write_plotly_asset`)."""
    esc = html_lib.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        f"<title>{esc(page.title)}</title><style>{CSS}</style>",
    ]
    if page.interactive:
        if plotly_src is None:
            out.append(f"<script>{plotly_js()}</script>")  # plotly.js escapes '</' in its own strings
        else:
            out.append(f"<script src='{esc(plotly_src)}'></script>")
    out.append(f"</head><body><h1>{esc(page.title)}</h1>")
    for kind, content in page.blocks:
        if kind == "figure":
            out.append(_figure_html(page, *content))
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
                {
                    "h2": "<h2>{}</h2>",
                    "p": "<p>{}</p>",
                    "pre": "<pre>{}</pre>",
                    "verdict": "<p class='verdict'>{}</p>",
                }[kind].format(esc(content))
            )
    return "\n".join(out) + "\n</body></html>\n"


def write_page(page: Page, out_dir: Path, plotly_src: str | None = None) -> Path:
    """Save figures/*.png, tables/*.csv, README.md and report.html under out_dir (atomically);
    `plotly_src` as for `html`."""
    for name, png in page.figures.items():
        rundir.write_atomic(out_dir / "figures" / f"{name}.png", png)
    for name, table in page.tables.items():
        rundir.write_atomic(out_dir / "tables" / f"{name}.csv", table.to_csv(index=False))
    rundir.write_atomic(out_dir / "README.md", markdown(page))
    rundir.write_atomic(out_dir / "report.html", html(page, plotly_src))
    return out_dir


# --- the pages ----------------------------------------------------------------------------------

READING = (
    "How to read the numbers: accuracies in percent, differences and gaps in points. Each run is "
    "read at its best-validation epoch (the first epoch with its highest validation accuracy) or at "
    "its final epoch, as each column says. Per configuration, from 3 seeds on: the mean and its 95% "
    "t-interval (n-1 df) intersected with the metric's range [0, 100] (the true mean lies in that "
    "range, so the intersection keeps the interval's coverage and never shows an impossible bound); "
    "with 2 seeds the values themselves, with 1 the value; the best epoch as median and range. "
    "Comparisons follow the design: settings run with the same seeds are compared seed by seed (the "
    "mean of the per-seed differences and its t-interval), others by Welch's interval. A difference "
    "smaller than twice the binomial standard error of one accuracy on the evaluation set "
    "(sqrt(p(1-p)/n)) is flagged as within test noise."
)


def runs_page(
    df: pd.DataFrame,
    by: str | list[str] | None = None,
    title: str = "Runs",
    baseline: str | None = None,
    cost: bool = False,
) -> Page:
    """Overfitting comparison of runs: the verdict (one sentence and a small table), comparisons by
    the design of the experiment, the summary per configuration, learning curves (accuracy and the
    data loss; the penalized cost only with `cost=True`), the gap, side-by-side panels, the runs."""
    from matplotlib import pyplot as plt

    from hpexp.report import compare, interactive, plots
    from hpexp.report import runs as report

    df = report.label_configs(df, by)
    configs = list(df["config"].cat.categories)
    page = Page(title)
    runs = report.run_metrics(df)
    table = report.summarize(df)
    flags = compare.flags(df, runs)
    comparisons = compare.compare(runs, baseline) if len(configs) > 1 else runs.iloc[0:0]
    sentence, verdict = compare.verdict(comparisons, table, flags)
    page.add("verdict", sentence)
    if len(verdict):
        page.table("verdict", verdict)
    elif flags.get(str(configs[0])):
        page.add("p", "Flags: " + "; ".join(flags[str(configs[0])]) + ".")
    keys = ", ".join([by] if isinstance(by, str) else by or report.varying_keys(df)) or "nothing (seeds only)"
    page.add("h2", "What was compared")
    page.add(
        "p", f"{df['run'].nunique()} runs in {len(configs)} configurations, compared by {keys}. {READING}"
    )
    if notes := report.check_runs(df):
        page.add("h2", "Notes")
        page.add("list", notes)
    if len(comparisons):
        page.add("h2", f"Differences from {comparisons['baseline'].iloc[0]}")
        page.table("comparisons", comparisons, compare.format_comparisons(comparisons))
    page.add("h2", "Summary per configuration")
    page.table("summary", table, report.format_summary(table))
    page.add("h2", "Learning curves")
    metrics = ["accuracy", "loss" if any(f"{s}_loss" in df for s in report.SPLITS) else "cost"]
    if cost and "cost" not in metrics:
        metrics.append("cost")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.4), layout="constrained")
    for ax, metric in zip(axes, metrics, strict=True):
        plots.plot_learning_curves(df, metric, ax=ax)
    page.figure(
        "learning_curves",
        plots.png(fig),
        "Accuracy (%) and " + " and ".join(plots.metric_label(m) for m in metrics[1:]) + " per epoch "
        "(train dashed, validation solid, test dotted; the legend says what the bands are)",
        [interactive.learning_curves(df, m) for m in metrics],
    )
    if {"train_accuracy", "val_accuracy"} <= set(df.columns):
        page.figure(
            "gap",
            plots.png(plots.plot_gap(df).figure),
            "Training minus validation accuracy (points); o the median best-validation epoch, x early stop",
            [interactive.gap(df)],
        )
    if len(configs) > 1:
        axes = plots.plot_overfitting(df, ("accuracy", metrics[1]))
        page.figure(
            "overfitting",
            plots.png(axes[0, 0].figure),
            "Overfitting comparison: one column per configuration, shared axes",
        )
    if "data.n_train" in runs and runs["data.n_train"].nunique() > 1:
        page.figure(
            "accuracy_vs_n_train",
            plots.png(plots.plot_accuracy_vs_n_train(runs).figure),
            "Accuracy against training-set size (log axis)",
        )
    page.add("h2", "Runs")
    shown = runs[[c for c in RUN_TABLE if c in runs]].copy()
    for column in shown.columns:
        if column.endswith("accuracy") or column.startswith(("gap", "final_gap")) or "_accuracy_" in column:
            shown[column] = (100 * shown[column]).round(2)
    shown = shown.rename(columns=lambda c: f"{c} (%)" if c.endswith("accuracy") or "_accuracy_" in c else c)
    page.table("runs", shown.assign(path=runs["path"]), shown)
    return page


RUN_TABLE = [
    "run",
    "config",
    "seed",
    "status",
    "epochs_run",
    "stop_reason",
    "best_epoch",
    "best_val_accuracy",
    "final_val_accuracy",
    "gap_at_best",
    "test_accuracy_at_best",
    "final_test_accuracy",
    "val_loss_at_best",
]


def study_page(study: Any, title: str | None = None, storage: str | None = None) -> Page:
    """Study report: the best trial and the finalized result first, then the search (history, trial
    curves, importances or why there are none, slices and the eta x lmbda map on the search space's
    axes, parallel coordinates), the trials, and the best trial's learning curves (from its run
    directory, else from the values it reported to the storage)."""
    from hpexp.report import interactive, plots
    from hpexp.report import runs as report

    study_obj = report.open_study(study, storage)
    folder = None if report._is_study(study) else report.study_dir(study)
    folder = folder.parent if folder is not None and folder.is_file() else folder
    trials = report.load_trials(study_obj)
    page = Page(title or f"Study {study_obj.study_name}")
    objective = str(study_obj.user_attrs.get("objective", "objective"))
    maximize = study_obj.direction.name == "MAXIMIZE"
    log = report.search_space_log(study_obj, folder)
    states = trials["state"].value_counts()
    counts = ", ".join(f"{n} {s.lower()}" for s, n in states.items())
    best = plots.best_trial(trials, maximize)
    params = [c for c in trials if c.startswith("params_")]
    scale, _ = plots.objective_scale(objective)
    unit = "%" if scale == 100 else ""
    if best is not None:
        chosen = ", ".join(f"{c.removeprefix('params_')}={_value(best[c])}" for c in params)
        if (
            start := _pbt_start(study_obj, int(best["number"]))
        ) is not None:  # its params: only its slot's draw
            began = ", ".join(f"{k}={_value(v)}" for k, v in start.items())
            chosen = f"the schedule drawn below (population-based training; its lineage began at {began})"
        page.add(
            "verdict",
            f"Best of {len(trials)} trials ({counts}): trial {int(best['number'])}, {objective} "
            f"{best['value'] * scale:.2f}{unit} at its best epoch with {chosen} (a validation score "
            "chosen as the best of many, so optimistic; "
            + (
                "the finalized result below is the one to cite)."
                if folder is not None and (folder / "final.json").is_file()
                else f"`hpexp study {study_obj.study_name} --finalize` scores the test set once, to cite)."
            ),
        )
    else:
        page.add("verdict", f"{len(trials)} trials ({counts}): none completed yet.")
    report.fetch_run_dirs(study_obj, folder)  # trials run elsewhere: their files from the artifact store
    times = [(t.datetime_start, t.datetime_complete) for t in study_obj.get_trials(deepcopy=False)]
    if spans := [(a, b) for a, b in times if a is not None and b is not None]:
        wall = str(max(b for _, b in spans) - min(a for a, _ in spans)).split(".")[0]
        page.add("p", f"Search wall time: {wall} (first trial's start to last trial's end).")
    missing = report.missing_run_dirs(study_obj, folder)
    if missing:
        shown = ", ".join(f"trial {n}: {p}" for n, p in list(missing.items())[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        page.add(
            "p",
            f"Run directories not found on this machine for {len(missing)} trial(s) ({shown}{more}): "
            "their curves come from the values they reported to the study's storage.",
        )
    if folder is not None:
        _final(page, folder)
    page.add("h2", "Search")
    page.figure(
        "optimization_history",
        plots.png(plots.plot_optimization_history(trials, None, objective, maximize).figure),
        f"{objective} per trial; trials that did not complete at their last report, faded; the best circled",
        [interactive.optimization_history(trials, objective, maximize)],
    )
    curves = report.load_trial_curves(study_obj)
    number = int(best["number"]) if best is not None else None
    if len(curves):
        page.figure(
            "trial_curves",
            plots.png(plots.plot_trial_curves(curves, None, objective, number).figure),
            "Every trial's reported curve, numbered at its end; the best thick (hover for the trial)",
            [interactive.trial_curves(curves, objective, number)],
        )
    importances = report.param_importances(study_obj)
    done = int((trials["state"] == "COMPLETE").sum())
    if len(importances):
        page.figure(
            "importances",
            plots.png(plots.plot_param_importances(importances).figure),
            f"Parameter importances over {done} completed trials (Optuna's PED-ANOVA; bars: bootstrap "
            "90% interval over resampled trials)",
            [interactive.param_importances(importances)],
        )
    elif len(params) > 1:
        page.add(
            "p",
            f"Parameter importances: too few trials ({done} completed; importances need at least "
            f"{report.MIN_IMPORTANCE_TRIALS}).",
        )
    if params and best is not None:
        fig = plots.plot_slices(trials, params, None, objective, log, maximize)[0].figure
        page.figure(
            "slices",
            plots.png(fig),
            f"{objective} against each parameter (completed trials; x scaled as the search space: "
            + ", ".join(
                f"{p.removeprefix('params_')} {'log' if plots.is_log_scale(p, log, trials[p]) else 'linear'}"
                for p in params
            )
            + "); colour: trial number; the best circled",
            [interactive.slices(trials, objective, log, maximize)],
        )
    eta = [c for c in params if c.endswith("eta")]
    lmbda = [c for c in params if c.endswith("lmbda")]
    if eta and lmbda and best is not None:
        fig = plots.plot_param_map(trials, eta[0], lmbda[0], None, objective, log, maximize).figure
        page.figure(
            "eta_lmbda",
            plots.png(fig),
            f"{objective} over eta x lmbda on the search space's axes: completed trials, the best starred"
            + (
                "; between trials a linear interpolation (inside their hull)"
                if done >= plots.MIN_MAP_TRIALS
                else f"; no interpolated surface under {plots.MIN_MAP_TRIALS} completed trials"
            ),
            [interactive.param_map(trials, eta[0], lmbda[0], objective, log, maximize)],
        )
    if len(params) > 1 and done:
        page.figure(
            "parallel_coordinates",
            plots.png(plots.plot_parallel_coordinates(trials, None, objective, log).figure),
            "Parallel coordinates: one line per completed trial, coloured by the objective (interactive: "
            "drag along an axis to select)",
            [interactive.parallel_coordinates(trials, objective, log)],
        )
    _pbt(page, study_obj, log, number)
    page.add("h2", "Trials")
    shown = trials.drop(columns=["run_dir"]).sort_values("value", ascending=not maximize, na_position="last")
    if scale == 100:
        shown[["value", "last_value"]] = (100 * shown[["value", "last_value"]]).round(2)
        shown = shown.rename(columns={"value": f"{objective} (%)", "last_value": "last reported (%)"})
    page.table("trials", trials, shown.round(4))
    if best is not None:
        _best_run(page, study_obj, number, folder, curves, objective)  # type: ignore[arg-type]
    return page


def _pbt_start(study: Any, number: int) -> dict[str, Any] | None:
    """A PBT trial's lineage's first values (what it began from), or None for any other trial."""
    schedule = study.get_trials(deepcopy=False)[number].user_attrs.get("pbt_schedule")
    return dict(schedule[0]["values"]) if schedule else None


def _pbt(page: Page, study: Any, log: dict[str, bool], number: int | None) -> None:
    """Population-based training: the lineage and every searched value's schedule."""
    from hpexp.report import pbt, plots

    if not pbt.is_pbt(study):
        return
    schedules, lineage = pbt.load_schedules(study), pbt.load_lineage(study)
    members, epochs = int(schedules["member"].max()) + 1, int(schedules["epoch"].max())
    best = schedules.loc[schedules["number"] == number, "member"]
    member = int(best.iloc[0]) if len(best) else None
    page.add("h2", "Population-based training")
    page.add(
        "p",
        f"{members} members trained together for {epochs} epochs; {len(lineage)} exploits (a member "
        "below took a member above's weights, momentum and history, then perturbed or resampled its "
        f"values). The best trial is member {member}; `--finalize` replays its schedule from scratch.",
    )
    page.figure(
        "pbt_lineage",
        plots.png(pbt.plot_lineage(lineage, members, epochs, member).figure),
        "Lineage: an arrow where a member copied a parent after that epoch; thick: the stretches "
        "of members whose weights the best member carries",
    )
    for key in schedules["key"].unique():
        page.figure(
            f"pbt_schedule_{key.replace('.', '_')}",
            plots.png(pbt.plot_schedules(schedules, key, member, log.get(key, False)).figure),
            f"{key} per epoch as each member's lineage trained with it; thick: the best member",
        )
    page.table("pbt_lineage", lineage)


def _best_run(
    page: Page, study: Any, number: int, folder: Path | None, curves: pd.DataFrame, objective: str
) -> None:
    from hpexp.report import interactive, plots
    from hpexp.report import runs as report

    try:
        runs = report._load_study_runs(study, folder)
    except report.ReportError:
        runs = None
    best = runs[runs["trial"] == number] if runs is not None else None
    if best is not None and len(best):
        page.add("h2", f"Best trial {number}: learning curves")
        labelled = report.label_configs(best, [])
        page.figure(
            "best_trial_curves",
            plots.png(plots.plot_learning_curves(labelled, "accuracy").figure),
            f"Trial {number}: accuracy (%) per epoch, from its run directory",
            [interactive.learning_curves(labelled, "accuracy")],
        )
        return
    reported = curves[curves["number"] == number]
    if len(reported):
        page.add("h2", f"Best trial {number}: reported curve")
        page.figure(
            "best_trial_curves",
            plots.png(plots.plot_trial_curves(reported, None, objective, number).figure),
            f"Trial {number}: {objective} as reported to the storage (its run directory was not found)",
            [interactive.trial_curves(reported, objective, number)],
        )


def _final(page: Page, folder: Path) -> None:
    from hpexp.report import runs as report
    from hpexp.stats import mean_interval

    if (final := folder / "final.json").is_file():
        result = json.loads(final.read_text())
        page.add("h2", "Finalized on the test set")
        seeds = result.get("seeds") if isinstance(result, dict) else None
        if isinstance(seeds, list) and seeds and all(isinstance(r, dict) for r in seeds):
            import pandas

            rows = pandas.DataFrame(seeds)
            cells = []
            for column in [c for c in ("val_accuracy", "test_accuracy") if c in rows]:
                est = mean_interval(rows[column], 0.0, 1.0)
                cells.append(
                    f"{column.replace('_', ' ')} "
                    + report.format_cell(
                        est.value, est.lo, est.hi, rows[column].min(), rows[column].max(), est.n
                    )
                    + "%"
                )
            page.add(
                "p",
                f"Trial {result.get('best_trial')} retrained with {len(rows)} seeds, each read at its "
                f"best-validation epoch, the test set scored once: " + "; ".join(cells) + ".",
            )
            page.table("final_seeds", rows)
        page.add("pre", json.dumps(result, indent=2))
    if (folder / "final").is_dir():
        finals = report.label_configs(report.load_runs(folder / "final"), [])
        table = report.summarize(finals)
        page.add("p", "The finalized seeds' run directories (final/), summarized like any runs:")
        page.table("final", table, report.format_summary(table))
