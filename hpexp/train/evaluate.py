"""`hpexp eval RUN_DIR [split=val|test] [data.KEY=VALUE ...]`: score a run's saved weights on a split.

The run's `config.yaml` rebuilds the network, `weights.npz` (`train.save_weights=true`) fills it,
and the split is read as the run read its data, unless `data=NAME` or `data.KEY=VALUE` says
otherwise (e.g. `data.n_validation=5000`). The result is printed and appended to
`RUN_DIR/eval_SPLIT.json`, a list of every evaluation of that split, so each look at the test set
is on record (as `hpexp study NAME --finalize` records its one look). The test split is scored only
when asked for by name.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from hpexp.train import rundir
from hpexp.train.loop import evaluate, rng_streams
from hpexp.train.runner import SPLITS, ConfigError, build_network, compose, load_data, validate

__all__ = ["evaluate_run", "load_network", "main", "run_config"]


def run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's config with `data=NAME` / `data.KEY=VALUE` overrides applied."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no config.yaml")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not (key == "data" or key.startswith("data.")):
            raise ConfigError(
                f"hpexp eval takes split=val|test and data overrides (data=NAME, data.KEY=VALUE); "
                f"got {override!r}"
            )
        if key == "data":  # an option of conf/data/, composed as `hpexp train data=NAME` would
            with open_dict(cfg):
                cfg.data = compose([f"data={value}"]).data
        elif OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            raise ConfigError(f"{key} is not a key of the run's data config {sorted(cfg.data)}")
        else:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
    assert isinstance(cfg, DictConfig)
    return cfg


def load_network(run_dir: str | Path, cfg: DictConfig | None = None) -> tuple[DictConfig, Any, Any]:
    """(config, components, network with the run's saved weights) of a run directory."""
    cfg = cfg if cfg is not None else run_config(run_dir)
    weights = Path(run_dir) / "weights.npz"
    if not weights.is_file():
        raise ConfigError(f"{run_dir} has no weights.npz: train with train.save_weights=true to evaluate it")
    parts = validate(cfg)
    network = build_network(cfg, parts, rng_streams(cfg.seed)["init"])
    with np.load(weights) as saved:
        if len(saved.files) != len(network.params):
            raise ConfigError(
                f"{weights} has {len(saved.files)} arrays; the config's network has {len(network.params)}"
            )
        for i, p in enumerate(network.params):
            if saved[f"arr_{i}"].shape != p.shape:
                raise ConfigError(
                    f"{weights}: array {i} has shape {saved[f'arr_{i}'].shape}, the "
                    f"config's network {p.shape}"
                )
            p[...] = saved[f"arr_{i}"]
    return cfg, parts, network


def evaluate_run(run_dir: str | Path, split: str = "val", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Score the run's weights on `split`; append the result to RUN_DIR/eval_SPLIT.json; return it."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    cfg = run_config(run_dir, overrides)
    with open_dict(cfg):
        cfg.train.monitor = [split]
    cfg, parts, network = load_network(run_dir, cfg)
    data = load_data(cfg)[split]
    loss, accuracy = evaluate(network, data, parts.regularizer.eval_masks(len(network.layers)))
    result = {
        "split": split,
        "n": len(data),
        f"{split}_loss": float(loss),
        f"{split}_accuracy": float(accuracy),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "overrides": list(overrides),
        "evaluated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path = Path(run_dir) / f"eval_{split}.json"
    with rundir.updating(path):  # two `hpexp eval` of one run at once: both results kept
        earlier = json.loads(path.read_text()) if path.is_file() else []
        rundir.write_atomic(path, json.dumps([*earlier, result], indent=2) + "\n")
    return result


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="hpexp eval",
        description="Score a run's saved weights (train.save_weights=true) on a split; the result is "
        "printed and appended to RUN_DIR/eval_SPLIT.json. The test split only when asked: split=test.",
    )
    parser.add_argument(
        "args",
        nargs="+",
        metavar="RUN_DIR | OVERRIDE",
        help="a run directory with config.yaml and weights.npz; split=val|test (default val); "
        "data=NAME or data.KEY=VALUE",
    )
    args = parser.parse_intermixed_args(argv)
    is_override = [re.fullmatch(r"[\w.]+=.*", a) is not None for a in args.args]
    run_dirs = [Path(a) for a, o in zip(args.args, is_override, strict=True) if not o]
    if len(run_dirs) != 1:
        parser.error(f"name one run directory, got {[str(d) for d in run_dirs]}")
    splits = [
        a.partition("=")[2]
        for a, o in zip(args.args, is_override, strict=True)
        if o and a.startswith("split=")
    ]
    others = [a for a, o in zip(args.args, is_override, strict=True) if o and not a.startswith("split=")]
    run_dir = run_dirs[0]
    result = evaluate_run(run_dir, splits[-1] if splits else "val", others)
    split = result["split"]
    print(
        f"{run_dir}: {split} accuracy {100 * result[f'{split}_accuracy']:.2f}%  "
        f"loss {result[f'{split}_loss']:.4f}  (n={result['n']})\n"
        f"wrote {run_dir / f'eval_{split}.json'}"
    )
