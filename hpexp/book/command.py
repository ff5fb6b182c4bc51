"""`hpexp book list|run|report`: the book's experiments from the command line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpexp.book.experiments import (
    REPORTS_DIR,
    RUNS_DIR,
    Check,
    Experiment,
    compare,
    load,
    registry,
    run_experiments,
)

__all__ = ["list_command", "main"]


from hpexp.book import pages as book_pages


def _pct(check: Check | dict[str, Any], value: float | None) -> str:
    metric = check.metric if isinstance(check, Check) else check["metric"]
    selection = check.selection if isinstance(check, Check) else check["selection"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric.endswith("accuracy") and not selection.startswith("epoch_of"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def list_command(chapter: int | None, runs_dir: Path) -> None:
    rows = [("id", "ch", "book", "ours: rule", "ours: mean", "what")]
    for e in registry(chapter):
        head = e.checks[0]
        row = compare(e, head, runs_dir)
        rule = "-" if not row["seeds"] else f"{_pct(head, row['rule'])} (seed {row['chosen_seed']})"
        mean = "-" if not row["seeds"] else f"{_pct(head, row['mean'])} (n={len(row['seeds'])})"
        book = _pct(head, head.value) if head.value is not None else f"figure: {e.meta.get('figure', '-')}"
        rows.append((e.id, str(e.chapter), book, rule, mean, head.label))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])


def _select(args: argparse.Namespace) -> list[Experiment]:
    chapters = set(args.chapter or [])
    if args.ids:
        return [e for e in map(load, args.ids) if not chapters or e.chapter in chapters]
    if not (args.all or chapters):
        raise ValueError("name experiments (see `hpexp book list`), or use --all or --chapter N")
    return [e for e in registry() if args.all or e.chapter in chapters]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser and one per action; the folders are options of each, in any position."""
    folders = argparse.ArgumentParser(add_help=False)
    folders.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help=f"default: {RUNS_DIR}")
    folders.add_argument("--reports-dir", type=Path, default=REPORTS_DIR, help="default: reports/book")
    parser = argparse.ArgumentParser(
        prog="hpexp book",
        parents=[folders],
        description="Reproduce the book's experiments. Actions: list (every experiment with the book's "
        "number and our last result), run (experiments with several seeds, then their reports), "
        "report (reports/book/ from the runs so far); `hpexp book ACTION --help` shows its options.",
    )
    parser.add_argument("action", choices=["list", "run", "report"])
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the action's arguments and options")
    listing = argparse.ArgumentParser(prog="hpexp book list", parents=[folders])
    listing.add_argument("--chapter", type=int, default=None)
    run = argparse.ArgumentParser(prog="hpexp book run", parents=[folders])
    run.add_argument("ids", nargs="*", help="experiment ids (see `hpexp book list`)")
    run.add_argument("--seeds", type=int, default=3, help="seeds per run (default 3)")
    run.add_argument("--all", action="store_true", help="every experiment")
    run.add_argument(
        "--chapter", type=int, action="append", help="every experiment of a chapter (repeatable)"
    )
    run.add_argument("--force", action="store_true", help="rerun runs that are already done")
    run.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    report = argparse.ArgumentParser(prog="hpexp book report", parents=[folders])
    report.add_argument("ids", nargs="*", help="experiments to write pages for (default: all)")
    return parser, {"list": listing, "run": run, "report": report}


def main(argv: Sequence[str] | None = None) -> None:
    parser, actions = _parsers()
    top = parser.parse_args(argv)
    args = actions[top.action].parse_intermixed_args(top.args, namespace=top)
    if args.action == "list":
        list_command(args.chapter, args.runs_dir)
        return
    if args.action == "run":
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        chosen = _select(args)
        skipped = run_experiments(chosen, args.seeds, args.runs_dir, args.override, args.force)
        pages = [e.id for e in chosen]
    else:
        skipped, pages = [], list(args.ids) or [e.id for e in registry()]
    written = book_pages.write(pages, args.runs_dir, args.reports_dir)
    print(f"report: {written}")
    for line in skipped:
        print(line, file=sys.stderr)
    if any(": failed, " in line for line in skipped):
        raise SystemExit(1)
