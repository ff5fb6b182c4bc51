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


def _sweeps(sources: Sequence[str]) -> list[str]:
    """The `hpexp train -m ...` commands of Hydra multirun folders among the sources (multirun.yaml)."""
    import yaml

    made = []
    for source in sources:
        path = Path(source) / "multirun.yaml"
        if path.is_file():
            overrides = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("overrides", {})
            hydra = [o for o in overrides.get("hydra", []) if not o.startswith("hydra.mode=")]
            words = [*hydra, *overrides.get("task", [])]
            made.append("hpexp train -m " + " ".join(f"'{w}'" if "[" in w or " " in w else w for w in words))
    return made


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
    parser.add_argument(
        "--baseline",
        metavar="VALUE",
        help="the configuration others are compared with (a value of the --by key, e.g. 0 or none, "
        "or a configuration label); default: the one whose values are 0/none, else the first",
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="also plot the cost with the regularization penalty (default: the data loss only)",
    )
    parser.add_argument("--study", metavar="NAME", help="report on a study (runs/studies/NAME or a path)")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database (postgresql://USER@HOST/DB; password from $HPEXP_DB_PASSWORD); "
        "default: the one its spec.yaml names, else its journal.log",
    )
    parser.add_argument("--name", help="output folder under --out (default: the study or run folder name)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="parent folder (default: reports)")
    args = parser.parse_intermixed_args(argv)
    if bool(args.runs) == bool(args.study):
        parser.error("name either runs (paths, globs, a multirun folder) or --study NAME")
    if args.study:
        name = _folder_name(args.name or Path(args.study).name.removesuffix(".log"))
        page = pages.study_page(args.study, storage=args.storage)
    else:
        default = Path(args.runs[0]).name if len(args.runs) == 1 else "runs"
        name = _folder_name(args.name or default)
        try:
            page = pages.runs_page(
                load_runs(args.runs), args.by, title=f"Report: {name}", baseline=args.baseline, cost=args.cost
            )
        except ValueError as e:  # a --baseline naming no configuration
            raise ReportError(str(e)) from None
    made = "hpexp report " + " ".join(argv or sys.argv[2:])
    sweeps = [] if args.study else _sweeps(args.runs)
    if sweeps:  # the runs' own command first: the whole report comes back from one line
        page.note_after_lead("Made with one command: " + " && ".join([*sweeps, made]))
    else:
        page.note_after_lead(f"Made with: {made}")
    out = pages.write_page(page, args.out / name)
    print(f"report: {out / 'README.md'}\n        {out / 'report.html'}")
