"""`hpexp report RUNS... [--by KEY] | --study NAME`: write a report folder under reports/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hpexp.report.runs import ReportError, load_runs

__all__ = ["main"]


def _folder_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ReportError(f"--name must be a plain folder name, got {name!r}")
    return name


def main(argv: Sequence[str] | None = None) -> None:
    """`hpexp report RUNS... [--by KEY] | --study NAME` -> reports/<name>/."""
    import matplotlib

    matplotlib.use("Agg")
    from hpexp.report import pages  # after matplotlib.use

    parser = argparse.ArgumentParser(
        prog="hpexp report",
        description="Write a generalization report (README.md, report.html, figures/, tables/) "
        "on training runs or an Optuna study to reports/<name>/.",
    )
    parser.add_argument(
        "runs", nargs="*", help="run directories, globs, or folders of runs (a multirun folder)"
    )
    parser.add_argument(
        "--by",
        action="append",
        metavar="KEY",
        help="compare by this config key or group (regularizer, regularizer.lmbda, "
        "data.n_train); repeat for several; default: every key that varies",
    )
    parser.add_argument("--study", metavar="NAME", help="report on a study (runs/studies/NAME or a path)")
    parser.add_argument("--name", help="output folder under --out (default: the study or run folder name)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="parent folder (default: reports)")
    args = parser.parse_intermixed_args(argv)
    if bool(args.runs) == bool(args.study):
        parser.error("name either runs (paths, globs, a multirun folder) or --study NAME")
    if args.study:
        name = _folder_name(args.name or Path(args.study).name.removesuffix(".log"))
        page = pages.study_page(args.study)
    else:
        default = Path(args.runs[0]).name if len(args.runs) == 1 else "runs"
        name = _folder_name(args.name or default)
        page = pages.runs_page(load_runs(args.runs), args.by, title=f"Report: {name}")
    page.blocks.insert(0, ("p", "Made with: hpexp report " + " ".join(argv or sys.argv[2:])))
    out = pages.write_page(page, args.out / name)
    print(f"report: {out / 'README.md'}\n        {out / 'report.html'}")
