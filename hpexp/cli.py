"""The `hpexp` command: `hpexp train|data ...`.

`hpexp train` is a Hydra app (overrides, `-m` multirun); the other subcommands use argparse.
Errors in user input end with one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["complete", "data_command", "exit_for", "hydra_argv", "main", "train"]

USAGE = """usage: hpexp COMMAND [ARGS]

commands:
  train [OVERRIDES]   train a network (Hydra overrides, e.g. network=mlp100 optimizer.eta=0.1; -m for grids;
                      --quiet: warnings only on the console)
  data fetch|verify|where [NAME]   download, check or locate a dataset (mnist, fashion_mnist)
  eval RUN_DIR [split=val|test]   score a run's saved weights on a split
  gradcheck [OVERRIDES]     compare backpropagation with finite differences for a config
  study NAME [OVERRIDES]    run an Optuna study from studies/NAME.yaml
  report ...          write reports on runs and studies to reports/
  book list|run|report      reproduce the book's experiments

`hpexp COMMAND --help` shows the options of a command."""


# What `hpexp train` exits with for each status a run can end in (conf/train.yaml's help footer).
EXIT_STATUS = {"completed": 0, "pruned": 0, "failed": 1, "diverged": 3, "stalled": 4, "interrupted": 130}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or a container's stop), handled like Ctrl-C."""

    exit_status = 143  # Ctrl-C's is 130


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _discard(out: Path, sweep: Path | None) -> None:
    """Remove the folder Hydra made for a refused job (and an emptied sweep folder), never a run."""
    import shutil

    for folder, hydra_files in ((out, {".hydra", "train.log"}), (sweep, {"multirun.yaml"})):
        if folder is None or not folder.is_dir():
            continue
        if {p.name for p in folder.iterdir()} <= hydra_files:
            shutil.rmtree(folder)


def _write_failed(e: OSError, out: Path) -> NoReturn:
    """One line for a run stopped by a file it could not write (exit 1, as a failed run), with
    the command that goes on from its last checkpoint when it has one."""
    from hpexp.train import rundir

    what = rundir.describe(e)
    kept = any(out.rglob(rundir.CHECKPOINT))
    then = f"; free space, then `hpexp train resume={out}` goes on from its last checkpoint" if kept else ""
    print(f"hpexp train: error: {what}; the run's history so far is kept{then}", file=sys.stderr)
    raise SystemExit(1) from None


def train(argv: Sequence[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf, open_dict

    from hpexp.data.files import DataError
    from hpexp.paths import config_dir
    from hpexp.progress import log
    from hpexp.train import rundir
    from hpexp.train.runner import ConfigError, plain_overrides, resume, run, run_seeds

    statuses: list[str] = []

    def main(cfg: DictConfig) -> None:
        hydra_cfg = HydraConfig.get()
        with open_dict(cfg):
            cfg.choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
        runner = OmegaConf.select(cfg, "book.runner")
        multirun = hydra_cfg.mode == RunMode.MULTIRUN and not cfg.out_dir
        hydra_out = Path(hydra_cfg.runtime.output_dir)
        if runner:  # e.g. an ensemble or the SVM: not one training run
            experiment = str(hydra_cfg.runtime.choices.get("experiment") or "book/ID").removeprefix("book/")
            print(
                f"hpexp train: error: this preset runs through {runner}, not as one training run; "
                f"use `hpexp book run {experiment}`",
                file=sys.stderr,
            )
            _discard(hydra_out, Path(hydra_cfg.sweep.dir) if multirun else None)
            raise SystemExit(2)
        try:
            out = cfg.out_dir or hydra_out
            outs = run_seeds(cfg, out) if cfg.train.seeds else [run(cfg, out)]
        except (ValueError, DataError) as e:  # Hydra would print these as crashes
            if isinstance(e, ConfigError | DataError):
                _discard(hydra_out, Path(hydra_cfg.sweep.dir) if multirun else None)
            print(f"hpexp train: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as e:  # a write that failed (a full disk): the run recorded it as failed
            _write_failed(e, Path(cfg.out_dir or hydra_out))
        statuses.extend(str(rundir.read_summary(o).get("status")) for o in outs)
        log.info(f"run directory: {out}")
        log.info(f"report: hpexp report {hydra_cfg.sweep.dir if multirun else out}")  # the whole sweep

    def resumed(arg: str, others: list[str]) -> None:
        """`hpexp train resume=RUN_DIR`: no Hydra run (the config is the run's own config.yaml)."""
        if others:
            raise ConfigError(f"resume=RUN_DIR continues the run as it was configured; drop {others}")
        run_dir = arg.split("=", 1)[1]
        try:
            statuses.extend(str(rundir.read_summary(o).get("status")) for o in resume(run_dir))
        except OSError as e:
            _write_failed(e, Path(run_dir))
        log.info(f"run directory: {run_dir}")

    resume_arg = next((a for a in argv if a.startswith("resume=")), None)
    others = [a for a in argv if a not in (resume_arg, "-q", "--quiet")]

    if quiet := [a for a in argv if a in ("-q", "--quiet")]:  # the console shows warnings and errors only
        argv = [a for a in argv if a not in quiet] + ["hydra.job_logging.handlers.console.level=WARNING"]
    completing = any(a in ("-sc", "--shell-completion") for a in argv)
    # Hydra names the program in the completion script it installs after argv[0]: `hpexp`.
    sys.argv = ["hpexp" if completing else "hpexp train", *hydra_argv(plain_overrides(argv))]
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if resume_arg:
            resumed(resume_arg, others)
        else:
            hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(main)()
    except KeyboardInterrupt as e:  # the run itself recorded `interrupted` and kept its history
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        what = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        print(f"hpexp train: interrupted ({what}); the run so far is kept", file=sys.stderr)
        raise SystemExit(143 if isinstance(e, Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    exit_for(statuses)


def exit_for(statuses: Sequence[str]) -> None:
    """How `hpexp train` ends after its runs (whichever launcher ran them): when any did not
    complete, one line naming the statuses, and the exit status of the worst (EXIT_STATUS)."""
    if any(s != "completed" for s in statuses):
        ended = sorted(set(statuses) - {"completed"})
        code = max(EXIT_STATUS.get(s, 1) for s in statuses)
        print(f"hpexp train: {len(statuses)} run(s), not completed: {', '.join(ended)}", file=sys.stderr)
        raise SystemExit(code)


# Hydra's options that take a value; its parser wants every option before the overrides.
HYDRA_VALUED = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
HYDRA_VALUED |= {"--config-dir", "-cd", "--experimental-rerun"}
HYDRA_INFO = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def hydra_argv(argv: Sequence[str]) -> list[str]:
    """`hpexp train` arguments with Hydra's options first, so options and overrides mix freely."""
    options: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        takes_value = arg in HYDRA_VALUED or (
            arg in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in HYDRA_INFO
        )
        if arg.startswith("-"):
            options.extend(argv[i : i + 1 + takes_value])
            i += takes_value
        else:
            overrides.append(arg)
        i += 1
    return [*options, *overrides]


def complete(argv: Sequence[str]) -> None:
    """`hpexp -sc install=bash|query=bash|...`: Hydra's shell completion for `hpexp train` overrides.

    The script Hydra installs asks `hpexp -sc query=bash` with the line typed so far in $COMP_LINE;
    the subcommand's word is answered here, and the overrides after `train` (or `gradcheck`) by Hydra.
    """
    import os

    words = os.environ.get("COMP_LINE", "").split(" ")
    if any(a.startswith("query=") for a in argv) and len(words) >= 2:
        if len(words) == 2:  # still typing the subcommand
            print(" ".join(c for c in COMMANDS if c.startswith(words[1])))
            return
        if words[1] not in ("train", "gradcheck"):
            return  # options of the argparse subcommands: left to the shell's default completion
        if _complete_experiment(words[-1]):
            return
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    train(argv)


def _complete_experiment(word: str) -> bool:
    """Presets are chosen as `experiment=book/ID` (Hydra would offer the nested group `experiment/book=`)."""
    from hpexp.paths import config_dir

    if not word or not ("experiment=".startswith(word) or word.startswith("experiment=")):
        return False
    root = config_dir() / "experiment"
    presets = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    print(" ".join(f"experiment={p}" for p in presets if f"experiment={p}".startswith(word)))
    return True


def data_command(argv: Sequence[str]) -> None:
    from hpexp.data import datasets

    names = ", ".join(datasets.DATASETS)
    parser = argparse.ArgumentParser(
        prog="hpexp data",
        description=f"Published datasets ({names}; default mnist): fetch, verify, where. "
        "Your own data (data=idx, data=npz) need no fetching; data.sha256 checks them in every run.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="download a dataset into the cache (or --dest), verified")
    fetch.add_argument("name", nargs="?", default="mnist", choices=list(datasets.DATASETS))
    fetch.add_argument("--dest", type=Path, default=None, help="target folder (default: cache)")
    fetch.add_argument(
        "--source",
        action="append",
        default=None,
        help="a source to try (npm:PKG@VERSION or a base URL); repeat for several",
    )
    fetch.add_argument("--timeout", type=float, default=10.0, help="seconds per connection")
    verify = sub.add_parser("verify", help="check the SHA-256 of the four files: verify [NAME] [DIR]")
    verify.add_argument("args", nargs="*", metavar="NAME|DIR", help="a dataset name and/or a folder")
    where = sub.add_parser("where", help="print the folder hpexp reads a dataset from, and what it is")
    where.add_argument("name", nargs="?", default="mnist", choices=list(datasets.DATASETS))
    args = parser.parse_args(argv)
    if args.action == "fetch":
        print(datasets.fetch(datasets.DATASETS[args.name], args.dest, args.source, timeout=args.timeout))
    elif args.action == "verify":
        rest = list(args.args)
        name = rest.pop(0) if rest and rest[0] in datasets.DATASETS else "mnist"
        if len(rest) > 1:
            parser.error(f"verify takes [NAME] [DIR]; got {list(args.args)}")
        ds = datasets.DATASETS[name]
        folder = Path(rest[0]) if rest else datasets.find_dir(ds, download=False).path
        for line in datasets.verify(ds, folder):
            print(line)
    else:
        from hpexp.data import converted

        ds = datasets.DATASETS[args.name]
        print(datasets.find_dir(ds, download=False).path)
        info = datasets.describe({"name": ds.name})
        print(
            f"{ds.title}: input {list(info.shape)}, {info.n_classes} classes "
            f"({', '.join(info.class_names or ())}), validation: the last {ds.holdout} training images",
            file=sys.stderr,
        )
        print(f"converted copies: {converted.describe(ds.name)}", file=sys.stderr)


def _delegate(module: str) -> Callable[[Sequence[str]], None]:
    """A subcommand whose argument parsing lives in its own module's `main(argv)`."""

    def command(argv: Sequence[str]) -> None:
        import importlib

        importlib.import_module(f"hpexp.{module}").main(argv)

    return command


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "train": train,
    "data": data_command,
    "eval": _delegate("train.evaluate"),
    "gradcheck": _delegate("train.gradcheck"),
    "study": _delegate("study.command"),
    "report": _delegate("report.command"),
    "book": _delegate("book.command"),
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-sc", "--shell-completion"):
        complete(argv)
        return
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"hpexp: unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from hpexp.data.files import DataError
    from hpexp.progress import use_console

    if argv[0] != "train":  # Hydra configures logging for train
        use_console(sys.stderr)
    # SIGTERM stops every command as Ctrl-C does (runs keep their checkpoints), not in mid-write.
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, DataError) as e:
        print(f"hpexp {argv[0]}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:  # what a command did not handle itself (train and study do)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        what = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        print(
            f"\nhpexp {argv[0]}: interrupted ({what}); run the same command again to go on", file=sys.stderr
        )
        raise SystemExit(getattr(e, "exit_status", 130)) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    main()
