"""`hpexp study NAME [OVERRIDES]`: run or resume a study, or `--finalize` it (the test set, once)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna

from hpexp.study import launchers
from hpexp.study.coordinator import search
from hpexp.study.finalize import finalize
from hpexp.study.spec import load_spec

__all__ = ["main"]


def main(argv: Sequence[str]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(
        prog="hpexp study",
        description="Run or resume the Optuna study studies/NAME.yaml; --finalize scores the test set once.",
        epilog="Overrides are Hydra-style on the spec: n_trials=20 workers=2 pruner.name=hyperband "
        "'base=[network=mlp100]' search.optimizer.eta.high=3 (for dotted search keys use "
        "+search.optimizer.eta.high=3). Database password: $HPEXP_DB_PASSWORD or a file "
        "($HPEXP_DB_PASSWORD_FILE or storage_password_file=PATH), never in the URL.",
    )
    parser.add_argument("name", help="a spec in studies/ (e.g. book_l2_mlp30) or a path to a YAML file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the spec")
    parser.add_argument(
        "--finalize", action="store_true", help="retrain the best config with K seeds, score test"
    )
    parser.add_argument(
        "--again", action="store_true", help="with --finalize: score the test set again (it was scored)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="K for --finalize (default: final_seeds, 3)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes on this machine")
    parser.add_argument(
        "--storage", default=None, help="a database URL (postgresql://user@host/db) for many machines"
    )
    parser.add_argument(
        "--join", action="store_true", help="work on an existing study (another machine started it)"
    )
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a training override appended to the spec's base (repeat), e.g. --base train.epochs=5",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (default: runs)")
    launchers.add_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    try:
        _run(args)
    except KeyboardInterrupt as e:  # before the search starts, or while finalizing (the search has its own)
        print("\nhpexp study: interrupted; run the same command again", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_status", 130)) from None  # 143: SIGTERM (hpexp.cli)


def _run(args: argparse.Namespace) -> None:
    launchers.refuse_hydra_overrides(args.overrides)
    spec = load_spec(args.name, args.overrides)
    launchers.apply_arguments(args, spec)
    if args.workers is not None:
        spec.workers = args.workers
    if args.storage is not None:
        spec.storage = args.storage
    spec.base = [*spec.base, *args.base]
    if not args.finalize:
        search(spec, args.runs, join=args.join)
    if args.finalize or spec.finalize:
        finalize(spec, args.runs, args.seeds, again=args.again)


if __name__ == "__main__":
    main(sys.argv[1:])
