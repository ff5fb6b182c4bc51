"""Ensembles (chapter 6): K networks trained independently, combined by what they predict.

The book's best result (99.67%) is a plurality vote of 5 conv nets: each digit gets the class most
members predicted. We also report the other usual combination, the class of the averaged output
probabilities. An ensemble is a run of its own, written in the run-directory format:

    OUT/members/member{k}/   each member's ordinary run directory (with weights.npz, final epoch)
    OUT/history.csv          one record: {split}_accuracy (vote), {split}_accuracy_mean_prob,
                             members_{split}_accuracy_mean, for every monitored split
    OUT/summary.json         status, that record as `final`, each member's accuracies, errors
    OUT/filters.png          member 0's first-layer filters, drawn as the book does

A config with `ensemble.members: K` runs through `run()` below, which has hpexp.train.runner.run's signature,
so a book preset names it as its runner (`hpexp book run ch6-ensemble5`); from a shell,
`python -m hpexp.train.ensemble +experiment=book/ch6-ensemble5 [overrides]`. Member k of seed s trains
with seed s * K + k, so seeds never share members. Members already completed with the same config
are not retrained.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from threadpoolctl import threadpool_limits

from hpexp.nn.network import Network
from hpexp.train import rundir
from hpexp.train.runner import build_network, load_data, run_population, validate
from hpexp.train.runner import run as run_one

__all__ = [
    "average",
    "combine",
    "draw_filters",
    "filters",
    "load_network",
    "main",
    "member_config",
    "plot_filters",
    "probabilities",
    "run",
    "vote",
]

Record = dict[str, Any]
CHUNK = 2_000  # images per evaluation product: bounds the conv patches held at once


def vote(predictions: np.ndarray) -> np.ndarray:
    """Plurality vote of (K, n) predicted classes -> (n,). A tie goes to the tied class that the
    earliest member predicted, as conv.py's Counter(...).most_common(1) does."""
    k, n = predictions.shape
    classes = int(predictions.max()) + 1
    counts = np.zeros((n, classes), np.int64)
    first = np.full((n, classes), k, np.int64)  # the first member voting for each class
    rows = np.arange(n)
    for member in range(k - 1, -1, -1):
        counts[rows, predictions[member]] += 1
        first[rows, predictions[member]] = member
    return np.argmax(counts * (k + 1) - first, axis=1)


def average(probabilities: np.ndarray) -> np.ndarray:
    """The class of the mean of (K, n, classes) output probabilities -> (n,)."""
    return np.argmax(probabilities.mean(axis=0), axis=-1)


def probabilities(network: Network, x: np.ndarray, masks: Any = None) -> np.ndarray:
    """The network's output probabilities (softmax or sigmoid, as its cost says), in chunks."""
    return np.concatenate(
        [network.cost.output(network.logits(x[i : i + CHUNK], masks)) for i in range(0, len(x), CHUNK)]
    )


def load_network(run_dir: Path) -> tuple[Network, DictConfig, Any]:
    """A run directory's network with its saved (final) weights, its config and components."""
    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    assert isinstance(cfg, DictConfig)
    parts = validate(cfg)
    network = build_network(cfg, parts, np.random.default_rng(0))
    with np.load(Path(run_dir) / "weights.npz") as saved:
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    for p, a in zip(network.params, arrays, strict=True):
        p[...] = a
    return network, cfg, parts


def plot_filters(w: np.ndarray, columns: int = 5, title: str | None = None) -> Any:
    """The first layer's filters (filters, 1, kh, kw) as the book draws them (conv.py plot_filters):
    one small image each, in a grid `columns` wide, darker for larger weights. Returns the Figure."""
    import matplotlib.pyplot as plt

    count = len(w)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 0.9 + (0.4 if title else 0)))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.set_axis_off()
        if i < count:
            ax.matshow(w[i, 0], cmap="binary")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def draw_filters(run_dir: Path, out: Path) -> Path:
    """filters.png from a run directory's first conv layer (nothing for a network without one)."""
    network, _, _ = load_network(run_dir)
    first = network.layers[0]
    if not hasattr(first, "layers"):
        raise ValueError(f"{run_dir}: the first layer is not convolutional; no filters to draw")
    fig = plot_filters(np.asarray(first.layers[0].w), title="first-layer filters")
    path = Path(out) / "filters.png"
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _same_config(out: Path, cfg: DictConfig) -> bool:
    if not (out / "config.yaml").exists():
        return False
    keep = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "out_dir"}  # type: ignore[union-attr]
    previous = OmegaConf.to_container(OmegaConf.load(out / "config.yaml"))
    return keep == {k: v for k, v in previous.items() if k != "out_dir"}  # type: ignore[union-attr]


def _done(out: Path, cfg: DictConfig) -> bool:
    finished = rundir.read_summary(out).get("status") == "completed" and (out / "weights.npz").exists()
    return finished and _same_config(out, cfg)


def _resumable(out: Path, cfg: DictConfig) -> bool:
    """A member interrupted mid-training (a killed process, the end of a session) goes on from its
    checkpoint when its config is unchanged; otherwise it is trained afresh."""
    return (out / rundir.CHECKPOINT).exists() and _same_config(out, cfg)


def member_config(cfg: DictConfig, k: int, out: Path) -> DictConfig:
    member = copy.deepcopy(cfg)
    with open_dict(member):
        member.seed = int(cfg.seed) * int(cfg.ensemble.members) + k
        member.train.save_weights = True
        member.out_dir = str(out)
    return member


def combine(run_dirs: Sequence[Path], splits: dict[str, Any]) -> tuple[Record, list[Record]]:
    """The ensemble's record and each member's accuracies on `splits` (final weights)."""
    probs: dict[str, list[np.ndarray]] = {name: [] for name in splits}
    members = []
    for d in run_dirs:
        network, _, parts = load_network(d)
        masks = parts.regularizer.eval_masks(len(network.layers))
        row: Record = {"run_dir": str(d)}
        for name, split in splits.items():
            p = probabilities(network, split.x, masks)
            probs[name].append(p)
            row[f"{name}_accuracy"] = float(np.mean(np.argmax(p, axis=1) == split.y))
        members.append(row)
    record: Record = {"epoch": 1, "members": len(run_dirs)}
    for name, split in splits.items():
        stacked = np.stack(probs[name])
        record[f"{name}_accuracy"] = float(np.mean(vote(np.argmax(stacked, axis=-1)) == split.y))
        record[f"{name}_accuracy_mean_prob"] = float(np.mean(average(stacked) == split.y))
        record[f"members_{name}_accuracy_mean"] = float(np.mean([m[f"{name}_accuracy"] for m in members]))
    return record, members


def run(
    cfg: DictConfig,
    out_dir: str | Path | None = None,
    *,
    on_epoch: Callable[[Record], Any] | None = None,
    progress: bool = True,
) -> Path:
    """Train `ensemble.members` networks of the config (or reuse finished ones), then combine them."""
    validate(cfg)
    k_members = int(cfg.ensemble.members)
    if k_members < 1:
        raise ValueError(f"ensemble.members must be >= 1, got {k_members}")
    out = Path(out_dir or cfg.out_dir or Path("runs/ensemble") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    started = time.perf_counter()
    dirs = [out / "members" / f"member{k}" for k in range(k_members)]
    configs = [member_config(cfg, k, d) for k, d in enumerate(dirs)]
    todo = [k for k in range(k_members) if not _done(dirs[k], configs[k])]
    for i, k in enumerate(todo):
        d, member = dirs[k], configs[k]
        if progress:
            print(f"member {k + 1}/{k_members} (seed {member.seed})", flush=True)
        # Which of the members left to train this is, for a progress display that counts epochs.
        left = {"member": i, "members_to_train": len(todo)}
        hook = None if on_epoch is None else (lambda r, left=left: on_epoch(r | left))
        if _resumable(d, member):
            run_population([member], [d], on_epochs=[hook], progress=progress, resume=True)
        else:
            (d / rundir.CHECKPOINT).unlink(missing_ok=True)
            run_one(member, d, on_epoch=hook, progress=progress)
    splits = {s: v for s, v in load_data(cfg).items() if s in cfg.train.monitor}
    with threadpool_limits(limits=1, user_api="blas"):  # as in training: threads only cost here
        record, members = combine(dirs, splits)
    rundir.write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    rundir.write_history(out, [record])
    statuses = {rundir.read_summary(d).get("status") for d in dirs}
    summary = {
        "status": "completed" if statuses == {"completed"} else "diverged",
        "stop_reason": f"combined {k_members} members",
        "epochs_run": 1,
        "best_epoch": None,
        "final": record,
        "members": members,
        "seconds": round(time.perf_counter() - started, 3),
        "seed": cfg.seed,
    }
    rundir.write_summary(out, summary)
    try:
        draw_filters(dirs[0], out)
    except ValueError:
        pass  # a fully-connected ensemble has no filters to draw
    if progress:
        print("  ".join(f"{k} {100 * v:.2f}%" for k, v in record.items() if "accuracy" in k))
    return out


def filters(
    cfg: DictConfig,
    out_dir: str | Path | None = None,
    *,
    on_epoch: Callable[[Record], Any] | None = None,
    progress: bool = True,
) -> Path:
    """One ordinary run, keeping its weights, then filters.png of its first conv layer (ch6-filters).
    A run already finished in `out_dir` with this config (copied from a twin by `hpexp book run`:
    the book draws the first ensemble member's filters) is drawn, not trained again."""
    if not cfg.train.save_weights:
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.train.save_weights = True
    if out_dir is not None and _done(Path(out_dir), cfg):
        out = Path(out_dir)
    else:
        out = run_one(cfg, out_dir, on_epoch=on_epoch, progress=progress)
    draw_filters(out, out)
    return out


def main(argv: Sequence[str]) -> None:
    from hpexp.train.runner import compose

    print(f"ensemble: {run(compose(argv))}")


if __name__ == "__main__":
    main(sys.argv[1:])
