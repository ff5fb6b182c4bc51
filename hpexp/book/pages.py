"""reports/book/: one page per experiment and README.md, the summary of every row.

A page gives each of the book's numbers in two views, by the book's rule (one run, chosen as the
book chose) and as the mean over seeds with its 95% interval, with the derived tolerance of each
row; the book's own per-epoch curves beside ours with their differences; the per-epoch data behind
the page (history.csv), the data count of every figure (figures.json) and the commit and training time
that produced it. The figures are drawn by hpexp.book.figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from hpexp.book import experiments as book
from hpexp.book import figures
from hpexp.train import rundir

__all__ = ["page", "summary", "write"]

VERDICT = {"yes": "yes", "no": "**no**", "qualitative": "qualitative", None: "-"}


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
    if math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]):
        interval = f" [{_value(row, row['ci_low'])}, {_value(row, row['ci_high'])}]"
    mean = "geometric mean " if row["log"] else ""
    return f"{mean}{_value(row, row['mean'])}{interval} ({_diff(row, row['diff'])}; n={row['n']})"


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
    return text + "".join(f"; {n}" for n in (row["note"], row["explain"]) if n)


def _estimate(row: dict[str, Any], est: Any, signed: bool = False) -> str:
    """A mean (or a paired difference) with its interval and n; points for accuracies."""
    if est.n == 0:
        return "not run"
    scale, unit = (100.0, "%") if row["accuracy"] else (1.0, "")
    unit = "" if signed else unit
    fmt = "{:+.2f}" if signed else "{:.2f}"
    text = fmt.format(est.value * scale) + unit
    if est.has_interval:
        text += f" [{fmt.format(est.lo * scale)}, {fmt.format(est.hi * scale)}]"
    return f"{text} (n={est.n})"


def _contrast_table(rows: Sequence[dict[str, Any]], with_id: bool) -> list[str]:
    head = ["the book says", "measure", "a", "b", "mean of a", "mean of b", "a - b paired by seed", "reading"]
    lines = [
        "| " + " | ".join((["experiment"] if with_id else []) + head) + " |",
        "|" + " --- |" * (len(head) + with_id),
    ]
    for r in rows:
        cells = [
            r["claim"],
            r["measure"],
            r["a"],
            r["b"],
            _estimate(r, r["mean_a"]),
            _estimate(r, r["mean_b"]),
            _estimate(r, r["difference"], signed=True),
            r["reading"],
        ]
        ident = [f"[{r['id']}]({r['id']}/README.md)"] if with_id else []
        lines.append("| " + " | ".join(ident + cells) + " |")
    return lines


CONTRASTS_INTRO = (
    "The book's claims that compare two runs, measured: each side's mean over seeds with its 95% "
    "t-interval, and a - b paired by seed (our runs share their seeds: the same data order and, where "
    "the shapes agree, the same initial draws), in points for accuracies. The reading says only what "
    "the interval resolves; with 3 seeds a difference of a few tenths may stay unresolved."
)


def _trained_runs(experiment_dir: Path, copied: Sequence[str]) -> list[Path]:
    """The run folders trained for this experiment (those with a history), copies of a twin's left out."""
    twins = {c.split(" <- ")[0] for c in copied}
    return [
        h.parent
        for h in sorted(experiment_dir.rglob("history.csv"))
        if h.parent.relative_to(experiment_dir.parent).as_posix() not in twins
    ]


def _training_minutes(runs: Sequence[Path]) -> tuple[float, int]:
    """Minutes spent training `runs` and the epochs they hold: the sum of the `seconds` column of
    their history.csv. A run resumed across processes counts each epoch once, which a process's own
    clock cannot do."""
    seconds, epochs = 0.0, 0
    for run in runs:
        frame = pd.read_csv(run / "history.csv")
        if "seconds" in frame:
            seconds += float(frame["seconds"].sum())
            epochs += len(frame)
    return seconds / 60, epochs


def _provenance(experiment: book.Experiment, runs_dir: Path) -> list[str]:
    path = runs_dir / experiment.id / "provenance.json"
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    finished = max(r["finished"] for r in runs.values())
    copied = [c for r in runs.values() for c in r.get("copied", [])]
    trained = _trained_runs(path.parent, copied)
    own = {d: rundir.read_summary(d).get("versions", {}).get("commit") for d in trained}
    commits = sorted({r["commit"] for r in runs.values()} | {c for c in own.values() if c})
    minutes, epochs = _training_minutes(trained)
    covered = {path.parent / r for label in runs for r in book.group_runs(label)}
    unknown = [
        d
        for d, c in own.items()
        if c is None and not covered & {d, *d.parents} and not (d / rundir.CHECKPOINT).exists()
    ]  # an ensemble's members too; a run under way is listed by `_under_way`
    caveat = (
        f" (not recorded for {', '.join(d.relative_to(path.parent).as_posix() for d in unknown)}: trained "
        "by a command cut off before it wrote provenance.json, and before runs recorded their commit)"
        if unknown
        else ""
    )
    twins = (
        [
            f"Copied, not trained again: {'; '.join(copied)} (the same training config, trained once "
            "for the experiment named on the right).",
            "",
        ]
        if copied
        else []
    )
    time = (
        f"training time {minutes:.1f} min over {epochs} epochs, the sum of the epochs' times in the runs' "
        "history.csv (evaluation included; the machine and its load are not recorded)"
        if epochs or not copied
        else "no training of its own (its time is on the page of the experiment it was copied from)"
    )
    return [
        f"Produced by commit {', '.join(commits)}{caveat}, finished {finished}; {time}.",
        "",
        *twins,
    ]


def _under_way(experiment: book.Experiment, runs_dir: Path) -> list[str]:
    """Runs stopped in the middle of their training with their checkpoint kept (chapter 6's runs
    span sessions): where each stands, and the command that goes on from there. Their rows stay
    "not run" until they end."""
    base = runs_dir / experiment.id
    stands = []
    for checkpoint in sorted(base.rglob(rundir.CHECKPOINT)):
        run = checkpoint.parent
        done = max((int(r["epoch"]) for r in rundir.read_history(run)), default=0)
        config = run / "config.yaml"
        total = OmegaConf.select(OmegaConf.load(config), "train.epochs") if config.exists() else None
        stands.append(f"{run.relative_to(base).as_posix()} at epoch {done}{f' of {total}' if total else ''}")
    if not stands:
        return []
    return [
        f"Under way: {'; '.join(stands)} (stopped with its checkpoint kept; `hpexp book run "
        f"{experiment.id}` goes on from there).",
        "",
    ]


def page(
    experiment: book.Experiment,
    rows: list[dict[str, Any]],
    drawn: dict[str, int],
    differences: Sequence[dict[str, Any]] = (),
    provenance: Sequence[str] = (),
    contrasts: Sequence[dict[str, Any]] = (),
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
    if contrasts:
        out += [
            "## The book's comparisons, measured",
            "",
            CONTRASTS_INTRO,
            "",
            *_contrast_table(contrasts, False),
            "",
        ]
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
    for name, points in drawn.items():
        out += [f"![{name}]({name}.png)" if points else f"Figure {name}: not run (no data yet).", ""]
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
    contrasts: Sequence[dict[str, Any]] = (),
) -> str:
    numbered = [r for r in rows if r["book"] is not None]
    trained = [r for r in numbered if not (r["deterministic"] or r["timing"])]
    checks = [r for r in numbered if r["deterministic"]]
    timings = [r for r in numbered if r["timing"]]
    measured = [r for r in trained if r["seeds"]]
    figure_only = [e.id for e in experiments if all(c.value is None for c in e.checks)]
    lines = [
        "# The book, reproduced",
        "",
        "Every experiment of Nielsen's *Neural Networks and Deep Learning* (chapters 1, 2, 3, 5 and 6) that "
        "has a number or a figure, re-run by `hpexp book run` (chapters 1, 3 and 5 with `--seeds 3`) and "
        "written by `hpexp book report`. Each of the book's numbers is compared in two views: **by the "
        "book's rule**, one run chosen as the book chose (its best of three where it says so, else our "
        "first seed, as the book ran once), every row of an experiment read from that one run; and the "
        "**mean of the seeds** with its 95% Student-t interval. A row is reproduced when "
        "|ours - book| <= tolerance, the largest of the book's rounding, twice our seed standard "
        "deviation and, for accuracies, the binomial standard error on the images evaluated; an "
        "accuracy row whose tolerance exceeds 3 points is *qualitative* and not counted. Accuracies are "
        "percentages, differences in points. Deterministic checks (baselines, single neurons, SVMs) and "
        "chapter 2's timing claim are in tables of their own, not in the rates.",
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
    if timings:
        lines += [
            "## Timing claims",
            "",
            "A speed measured on this machine (the machine is in the run's summary.json): its direction "
            "is the claim that carries over, its size depends on the CPU and the NumPy.",
            "",
            *_table(timings, with_id=True),
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
    if contrasts:
        lines += [
            "## The book's comparisons, measured",
            "",
            CONTRASTS_INTRO,
            "",
            *_contrast_table(contrasts, True),
            "",
        ]
    if figure_only:
        lines += ["Figures without a number: " + ", ".join(f"[{i}]({i}/README.md)" for i in figure_only), ""]
    lines += [
        "Left out, having neither a number nor a figure of a run: the exercises ch1-ex-no-hidden, ch3-l1, "
        "ch3-early-stop, ch3-lr-schedule, ch3-momentum, ch3-tanh, ch3-relu; the procedures "
        "ch3-eta-threshold and ch3-monitor-demo; the illustrations ch3-rotate-demo, ch3-poly-toy; the "
        "analytic ch5-exploding-toy.",
        "",
    ]
    misses = [
        r for r in [*measured, *timings] if r["seeds"] and "no" in (r["reproduced"], r["reproduced_rule"])
    ]
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
    all_contrasts: list[dict[str, Any]] = []
    for e in experiments:
        chosen = book.chosen_seed(e, runs_dir)
        rows = [book.compare(e, c, runs_dir, chosen) for c in e.checks if c.value is not None]
        df = figures.curves(e, runs_dir)
        differences = figures.curve_differences(e, df)
        contrasts = [book.measure(e, c, runs_dir) for c in e.contrasts]
        all_rows += rows
        all_differences += differences
        all_contrasts += contrasts
        if e.id not in ids:
            continue
        out = reports_dir / e.id
        drawn: dict[str, int] = {}
        for spec in e.plots or [{"name": e.checks[0].metric, "y": [e.checks[0].metric]}]:
            png = out / f"{spec['name']}.png"
            png.unlink(missing_ok=True)  # a figure whose data is gone must not stay behind
            drawn[spec["name"]] = figures.figure(e, df, runs_dir, spec, png, chosen)
        out.mkdir(parents=True, exist_ok=True)
        table = figures.history_table(e, df)
        if not table.empty:
            rundir.write_atomic(out / "history.csv", table.to_csv(index=False, float_format="%.6g"))
        rundir.write_atomic(out / "figures.json", json.dumps({"points": drawn}, indent=1) + "\n")
        text = page(
            e, rows, drawn, differences, _provenance(e, runs_dir) + _under_way(e, runs_dir), contrasts
        )
        rundir.write_atomic(out / "README.md", text)
    rundir.write_atomic(
        reports_dir / "README.md", summary(all_rows, experiments, all_differences, all_contrasts)
    )
    table = pd.DataFrame(all_rows).drop(columns=["seeds", "seed_ids", "note", "explain"])
    rundir.write_atomic(reports_dir / "summary.csv", table.to_csv(index=False))
    return reports_dir
