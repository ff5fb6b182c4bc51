"""`run(cfg)`: one training run from a composed config to a run directory.

This is the only place the NumPy core meets Hydra: it checks the config, instantiates the
components named by the config groups, loads the data, calls `fit()` and writes the run directory.
`compose()` builds the same config `hpexp train` would, for tests, studies and notebooks.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from threadpoolctl import threadpool_limits

import hpexp
from hpexp.data import datasets as data_sets
from hpexp.data import splits as data_splits
from hpexp.nn.network import DenseSpec, LayerSpec, Network, Shape, shapes
from hpexp.nn.population import stack, stackable
from hpexp.paths import config_dir, source_commit
from hpexp.progress import Progress, log, use_console
from hpexp.train import checkpoint as checkpoints
from hpexp.train import checks, loggers, rundir
from hpexp.train.checks import ConfigError
from hpexp.train.loop import Member, Record, Stop, fit_population, rng_streams
from hpexp.train.stopping import Never

__all__ = [
    "ConfigError",
    "Parts",
    "SealedSplitError",
    "build_network",
    "compose",
    "load_data",
    "network_specs",
    "plain_overrides",
    "population_key",
    "restore_best",
    "resume",
    "run",
    "run_population",
    "run_seeds",
    "task_config",
    "validate",
]

SPLITS = ("train", "val", "test")


def data_config(cfg: DictConfig) -> dict[str, Any]:
    """The data config as a plain mapping for the data layer (without `expand`)."""
    node = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(node, dict)
    return {str(k): v for k, v in node.items() if k != "expand"}


def data_info(cfg: DictConfig) -> data_sets.Info:
    """What the configured dataset is (input shape, classes); reads no test data."""
    return data_sets.describe(data_config(cfg))


def _resolve_data(key: str, *, _root_: DictConfig) -> Any:
    """`${hpexp.data:shape}`, `${hpexp.data:n_classes}`, `${hpexp.data:n_features}` in configs."""
    info = data_info(_root_)
    return {"shape": list(info.shape), "n_classes": info.n_classes, "n_features": info.n_features}[key]


def _resolve_dense(hidden: Any, *, _root_: DictConfig) -> list[int]:
    """`${hpexp.dense:${network.hidden}}`: [inputs, *hidden, classes], the ends from the data."""
    info = data_info(_root_)
    return [info.n_features, *hidden, info.n_classes]


for _name, _resolver in (("hpexp.data", _resolve_data), ("hpexp.dense", _resolve_dense)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


_RUN_DIRS: dict[str, str] = {}


def _new_run_dir(parent: str) -> str:
    """`${hpexp.run_dir:PARENT}` (conf/train.yaml's hydra.run.dir and sweep.dir): a folder made
    exclusively for this process, however often Hydra resolves the key (see rundir.new_run_dir)."""
    if parent not in _RUN_DIRS:
        _RUN_DIRS[parent] = str(rundir.new_run_dir(parent))
    return _RUN_DIRS[parent]


OmegaConf.register_new_resolver("hpexp.run_dir", _new_run_dir, replace=True)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config `hpexp train OVERRIDES` would run, with the group choices under `choices`."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=plain_overrides(overrides), return_hydra_config=True)
    return task_config(cfg)


def plain_overrides(overrides: Sequence[str]) -> list[str]:
    """`+experiment=X` as `experiment=X`: conf/train.yaml lists `experiment` as an optional default
    (so `experiment=book/ch3-l2-1k` needs no `+`), which Hydra would refuse to add a second time."""
    return [o.removeprefix("+") if o.startswith("+experiment=") else o for o in overrides]


def task_config(hydra_cfg: DictConfig) -> DictConfig:
    """The run's config from a config Hydra composed for a job: without `hydra`, with `choices`."""
    choices = {k: v for k, v in hydra_cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    cfg = hydra_cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.choices = choices
    return cfg


@dataclass
class Parts:
    """The instantiated components of a run."""

    activation: Any
    cost: Any
    init: Any
    regularizer: Any
    optimizer: Any
    schedule: Any
    stopping: Any
    expansion: Any


def _instantiate(cfg: DictConfig, group: str) -> Any:
    node = OmegaConf.select(cfg, group)
    if not (isinstance(node, DictConfig) and "_target_" in node):
        options = sorted(p.stem for p in (config_dir() / group.replace(".", "/")).glob("*.yaml"))
        raise ConfigError(
            f"{group} must be chosen with {group.replace('.', '/')}=NAME, one of {options}; got {node!r}"
        )
    checks.check_types(node, group)
    try:
        return instantiate(node)
    except InstantiationException as e:
        raise ConfigError(f"{group}: {e.__cause__ or e}") from e


def _check_monitored(cfg: DictConfig, parts: Parts) -> None:
    """The stopping rule and the schedule read record keys such as val_accuracy: monitor them."""
    for group in ("stopping", "schedule"):
        for key in getattr(parts, group).requires:
            if key.split("_")[0] not in cfg.train.monitor:
                raise ConfigError(
                    f"{group} reads {key!r}, but train.monitor={list(cfg.train.monitor)} does not "
                    f"evaluate that split; add it to train.monitor"
                )


def restore_best(cfg: DictConfig, parts: Parts) -> bool:
    """train.restore_best, where null means: restore when an early-stopping rule is configured."""
    if cfg.train.restore_best is None:
        return not isinstance(parts.stopping, Never)
    return bool(cfg.train.restore_best)


def network_specs(cfg: DictConfig) -> tuple[Shape, list[LayerSpec]]:
    """(input shape, layer specs) of `network`: `input` + `layers`, or the shorthand `sizes`."""
    net = cfg.network
    if net.get("layers") is not None:
        try:
            given = net.get("input")
            input_shape = tuple(given) if given else data_info(cfg).shape
            return input_shape, [instantiate(layer) for layer in net.layers]
        except InstantiationException as e:
            raise ConfigError(f"network.layers: {e.__cause__ or e}") from e
    sizes = list(net.sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ConfigError(f"network.sizes must be >= 2 positive integers, got {sizes}")
    return (sizes[0],), [DenseSpec(n) for n in sizes[1:]]


def build_network(
    cfg: DictConfig, parts: Parts, rng: np.random.Generator, dtype: str | None = None
) -> Network:
    """The configured network with freshly drawn weights."""
    input_shape, specs = network_specs(cfg)
    return Network.build(
        input_shape, specs, parts.activation, parts.cost, parts.init, rng, dtype or cfg.dtype
    )


def _check_network(cfg: DictConfig, info: data_sets.Info) -> None:
    """The layers fit together, take the data's input values and end in one unit per class."""
    input_shape, specs = network_specs(cfg)
    try:
        out = shapes(input_shape, specs)
    except ValueError as e:
        raise ConfigError(f"network: {e}") from None
    described = cfg.network.sizes if cfg.network.get("layers") is None else f"input {list(input_shape)}"
    if math.prod(out[0]) != info.n_features or out[-1] != (info.n_classes,):
        title = data_sets.DATASETS[info.name].title if info.name in data_sets.DATASETS else info.name
        raise ConfigError(
            f"network {described} -> {list(out[-1])} does not match {title}: the input must have "
            f"{info.n_features} values (shape {list(info.shape)}) and the last layer {info.n_classes} "
            f"units (classes); name only the hidden layers (network.hidden) to size it by the data"
        )


def validate(cfg: DictConfig, *, selection: bool = False) -> Parts:
    """Check every value and build the components; raises ConfigError before any work is done.

    `selection`: the run is a search trial, which selects by the validation split."""
    t = cfg.train
    checks.check_finite(cfg)
    checks.check_seeds(cfg)
    if cfg.dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got {cfg.dtype!r}")
    if not (isinstance(t.epochs, int) and t.epochs >= 1):
        raise ConfigError(f"train.epochs must be an integer >= 1, got {t.epochs!r}")
    try:
        n_train, _ = data_splits.sizes(data_config(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not (isinstance(t.batch_size, int) and 1 <= t.batch_size <= n_train):
        raise ConfigError(
            f"train.batch_size must be an integer in [1, data.n_train={n_train}], got {t.batch_size!r}"
        )
    checks.check_splits(cfg, SPLITS, selection=selection)
    checks.check_preset(cfg)
    _check_network(cfg, data_info(cfg))
    groups = ("activation", "cost", "init", "regularizer", "optimizer", "schedule", "stopping")
    parts = Parts(**{g: _instantiate(cfg, g) for g in groups}, expansion=_instantiate(cfg, "data.expand"))
    _check_monitored(cfg, parts)
    return parts


class SealedSplitError(ConfigError):
    """The config asks for the test split where it must not be read (a hyperparameter search)."""


def load_data(
    cfg: DictConfig,
    *,
    allow_test: bool = True,
    splits: Sequence[str] | None = None,
    dtype: str | None = None,
) -> dict[str, data_splits.Split]:
    """The splits the run needs (or `splits`); with `allow_test=False` asking for the test split
    is an error, for every dataset."""
    needed = list(splits or ["train", "val", *(s for s in cfg.train.monitor if s == "test")])
    if "test" in needed and not allow_test:
        raise SealedSplitError(
            "the test split is sealed here (a search reads validation only): "
            "remove `test` from train.monitor; score the test set with `hpexp study NAME --finalize`"
        )
    return data_splits.load(data_config(cfg), splits=needed, dtype=dtype or cfg.dtype)


def data_summary(cfg: DictConfig) -> dict[str, Any]:
    """The data a run used, for summary.json: the dataset, its shape and classes, the split sizes,
    where it was read and whether its checksums were verified (data.verify)."""
    config, info = data_config(cfg), data_info(cfg)
    n_train, n_validation = data_splits.sizes(config)
    return {
        "name": info.name,
        "shape": list(info.shape),
        "n_classes": info.n_classes,
        "class_names": list(info.class_names) if info.class_names else None,
        "n_train": n_train,
        "n_validation": n_validation,
        "preprocess": config.get("preprocess") or "scale",
        "verify": config.get("verify", True),
        "checksums": info.checksums,
    }


def _progress_line(record: Record, epochs: int, label: str = "") -> str:
    parts = [f"{label}epoch {record['epoch']:>{len(str(epochs))}}/{epochs}"]
    for split in SPLITS:
        if f"{split}_accuracy" in record:
            parts.append(
                f"{split} cost {record[f'{split}_cost']:.4f} acc {100 * record[f'{split}_accuracy']:.2f}%"
            )
    parts.append(f"eta {record['eta']:.4g}  {record['seconds']:.2f}s")
    return "  ".join(parts)


def _summary(cfg: DictConfig, parts: Parts, result: Any, seconds: float, n_params: int) -> Record:
    history = result.history
    best = next((r for r in history if r["epoch"] == result.best_epoch), None)
    return {
        "status": result.status,
        "stop_reason": result.stop_reason,
        "stopping": repr(parts.stopping),
        "schedule": repr(parts.schedule),
        "epochs": cfg.train.epochs,
        "epochs_run": len(history),
        "stopped_epoch": len(history),
        "best_epoch": result.best_epoch,
        "restored_epoch": result.restored_epoch,
        "best": best,
        "final": history[-1] if history else None,
        "seconds": round(seconds, 3),
        "seed": cfg.seed,
        "n_params": n_params,
        "data": data_summary(cfg),
        "choices": OmegaConf.to_container(cfg.get("choices", {})),
        "versions": {
            "hpexp": hpexp.__version__,
            "commit": source_commit(),  # the code this process ran (a resumed run: its last part)
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


# Keys that must agree for configs to train together as one population; everything else (seed,
# eta, lmbda, momentum, dropout p, epochs, schedule, stopping, init) may differ per member.
SHARED = (
    "data",
    "network",
    "activation",
    "cost",
    "dtype",
    "train.batch_size",
    "train.monitor",
    "train.eval_every",
    "train.shared_order",
)


def population_key(cfg: DictConfig) -> str:
    """Configs with equal keys can be trained as one population (see `run_population`)."""
    return OmegaConf.to_yaml({k: OmegaConf.select(cfg, k) for k in SHARED}, resolve=True)


def run(
    cfg: DictConfig,
    out_dir: str | Path | None = None,
    *,
    on_epoch: Callable[[Record], Stop | None] | None = None,
    progress: bool = True,
    allow_test: bool = True,
) -> Path:
    """Train the configured network and write its run directory; returns the directory.

    Studies pass `allow_test=False`, so no trial of a search can read the test split.
    """
    out = out_dir or cfg.out_dir
    if not out:
        validate(cfg, selection=not allow_test)  # a refused config leaves no folder behind
        out = rundir.new_run_dir("runs/train")
    (path,) = run_population([cfg], [out], on_epochs=[on_epoch], progress=progress, allow_test=allow_test)
    return path


def run_seeds(cfg: DictConfig, out_dir: str | Path, **kwargs: Any) -> list[Path]:
    """`train.seeds=[1,2,3]`: one run per seed in OUT/seed_S/, trained together as one population."""
    checks.check_seeds(cfg)  # distinct seeds: two members must never share a folder
    cfgs = []
    for seed in cfg.train.seeds:
        member = cfg.copy()
        with open_dict(member):
            member.seed, member.train.seeds = int(seed), None
        cfgs.append(member)
    outs = [Path(out_dir) / f"seed_{c.seed}" for c in cfgs]
    return run_population(cfgs, outs, checkpoint=Path(out_dir) / CHECKPOINT, **kwargs)


def run_population(
    cfgs: Sequence[DictConfig],
    out_dirs: Sequence[str | Path],
    *,
    on_epochs: Sequence[Callable[[Record], Stop | None] | None] | None = None,
    progress: bool = True,
    allow_test: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> list[Path]:
    """Train several configs that differ only in per-member values (seed, eta, lmbda, momentum,
    dropout p, epochs, schedule, stopping, init) in one vectorized pass; one run directory each,
    exactly as `run` writes it. With `train.shared_order` every member sees the first config's
    mini-batch order (common random numbers); otherwise each its own seed's order, as it would alone.

    The population checkpoints itself into `checkpoint` (default: the first run folder's
    checkpoint.npz) after every evaluated epoch; it is removed when every member has ended, kept
    when training is interrupted or fails. `resume=True` goes on from it (see `resume`).
    """
    parts = [validate(cfg, selection=not allow_test) for cfg in cfgs]
    source_commit()  # asked (once per process) now: the checkout's HEAD may move during hours of training
    if len({population_key(cfg) for cfg in cfgs}) > 1:
        differ = [k for k in SHARED if len({str(OmegaConf.select(c, k)) for c in cfgs}) > 1]
        raise ConfigError(f"configs differ in {differ}, which must be equal to train as one population")
    cfg0, outs = cfgs[0], [Path(o) for o in out_dirs]
    hooks = list(on_epochs or [None] * len(cfgs))
    if len(cfgs) > 1 and not stackable(network_specs(cfg0)[1]):  # conv nets train one by one
        return [
            o
            if resume and not (o / CHECKPOINT).exists() and rundir.read_summary(o).get("status") in ENDED
            else run_population(
                [c],
                [o],
                on_epochs=[h],
                progress=progress,
                allow_test=allow_test,
                resume=resume and (o / CHECKPOINT).exists(),
            )[0]
            for c, o, h in zip(cfgs, outs, hooks, strict=True)
        ]
    path = Path(checkpoint) if checkpoint else outs[0] / CHECKPOINT
    names = member_names(path, outs)
    saved = _saved_state(path, outs) if resume else None
    trackers = [loggers.build(cfg) for cfg in cfgs]  # a missing optional package is named before work
    splits = load_data(cfg0, allow_test=allow_test)
    if not cfg0.data.get("verify", True):
        log.warning(f"data: {data_info(cfg0).name} read without checking checksums (data.verify=false)")
    streams = [rng_streams(cfg.seed) for cfg in cfgs]
    networks = [build_network(cfg, p, s["init"]) for cfg, p, s in zip(cfgs, parts, streams, strict=True)]
    network = networks[0] if len(networks) == 1 else stack(networks)
    n_params = sum(p.size for p in networks[0].params)
    members, locks = [], _lock(outs)
    bar = None
    if progress:
        use_console()
        bar = Progress(max(cfg.train.epochs for cfg in cfgs), "train", unit="epoch")
        if saved:
            bar.update(saved.epoch)
    tracked = []
    for k, (cfg, p, out, hook, chosen) in enumerate(zip(cfgs, parts, outs, hooks, trackers, strict=True)):
        rundir.write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        rundir.write_summary(out, {"status": "running", "seed": cfg.seed, **rundir.RunLock.owner()})
        history = saved.histories[k] if saved else []
        tracked.append(loggers.start(cfg, out, chosen, resumed=saved is not None))
        on_epoch = _recorder(out, cfg, hook, bar, tracked[-1], label=len(cfgs) > 1, history=history)
        members.append(
            Member(
                p.optimizer,
                cfg.train.epochs,
                p.regularizer,
                p.schedule,
                p.stopping,
                on_epoch,
                restore_best(cfg, p),
            )
        )
    started = time.perf_counter()
    try:
        # One BLAS thread: the products are small, so threads cost more than they give. Overflow
        # warnings are silenced because divergence is detected and reported by fit() itself.
        with threadpool_limits(limits=1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
            results = fit_population(
                network,
                splits["train"],
                {s: splits[s] for s in cfg0.train.monitor},
                members,
                batch_size=cfg0.train.batch_size,
                rng=streams[0]["shuffle"] if cfg0.train.shared_order else [s["shuffle"] for s in streams],
                expansion=parts[0].expansion,
                dropout_rng=streams[0]["dropout"],
                augment_rng=streams[0]["augment"],
                eval_every=cfg0.train.get("eval_every") or 1,
                shuffle=cfg0.train.get("shuffle", True),
                checkpoint=lambda state: checkpoints.save(path, replace(state, members=names)),
                resume=saved,
            )
    except BaseException as e:
        if bar is not None:
            bar.close()
        interrupted = isinstance(e, KeyboardInterrupt)
        reason = "interrupted (Ctrl-C or SIGTERM)" if interrupted else _reason(e)
        for cfg, out, tracker in zip(cfgs, outs, tracked, strict=True):
            history = rundir.read_history(out)
            summary = {
                "status": "interrupted" if interrupted else "failed",
                "stop_reason": reason,
                "epochs_run": len(history),
                "seed": cfg.seed,
            }
            # A full disk may have no room for this either: the summary then still says `running`,
            # which read_summary reports as interrupted once this process is gone.
            with contextlib.suppress(OSError):
                rundir.write_summary(out, summary)
            with contextlib.suppress(OSError):
                tracker.finish(summary, out)
        raise
    else:
        if bar is not None:
            bar.close()
        seconds = (time.perf_counter() - started) / len(cfgs)
        for cfg, p, out, result, tracker in zip(cfgs, parts, outs, results, tracked, strict=True):
            summary = _summary(cfg, p, result, seconds, n_params)
            rundir.write_summary(out, summary)
            if cfg.train.save_weights:
                rundir.write_weights(out, result.params)
            tracker.finish(summary, out)
        path.unlink(missing_ok=True)  # every member ended: nothing left to resume
    finally:
        for lock in locks:
            lock.release()
    return outs


def _reason(e: BaseException) -> str:
    """A failed run's stop reason: a write that failed names its file (`No space left on device:
    .../checkpoint.npz`); any other error its type and message."""
    return rundir.describe(e) if isinstance(e, OSError) and e.strerror else repr(e)


CHECKPOINT = rundir.CHECKPOINT
ENDED = ("completed", "diverged", "stalled", "pruned")  # statuses a run ends in (not resumed)


def member_names(path: Path, outs: Sequence[Path]) -> list[str]:
    """How a checkpoint names the runs it holds: relative to its own folder, so a study or run folder
    moved or copied elsewhere resumes from it."""
    return [os.path.relpath(o, path.parent) for o in outs]


def _saved_state(path: Path, outs: Sequence[Path]) -> checkpoints.State:
    if not path.exists():
        raise ConfigError(f"{path.parent} has no {path.name} to resume from (it is removed once a run ends)")
    saved = checkpoints.load(path)
    names = member_names(path, outs)
    if saved.members not in (names, [str(Path(o).resolve()) for o in outs]):  # or absolute, as written before
        raise ConfigError(f"{path} is the checkpoint of runs {saved.members}, not of {names}")
    return saved


def resume(run_dir: str | Path, *, progress: bool = True) -> list[Path]:
    """Go on with an interrupted run (or a `train.seeds` population) from its last checkpoint, as
    if it had never stopped: `hpexp train resume=RUN_DIR`. Returns the run folders."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.exists() and not (run_dir / "config.yaml").exists():  # one by one: seed_S/checkpoint.npz
        members = sorted(p.parent for p in run_dir.glob(f"*/{CHECKPOINT}"))
        if members:
            return [out for member in members for out in resume(member, progress=progress)]
    if not path.exists():
        status = rundir.read_summary(run_dir).get("status")
        raise ConfigError(f"{run_dir} has no {CHECKPOINT} to resume from (its status: {status})")
    outs = [(run_dir / name).resolve() for name in checkpoints.load(path).members]
    cfgs = [OmegaConf.load(out / "config.yaml") for out in outs]
    return run_population(
        cfgs,  # type: ignore[arg-type]
        outs,
        progress=progress,
        checkpoint=path,
        resume=True,
    )


def _lock(outs: Sequence[Path]) -> list[rundir.RunLock]:
    """Each run folder's lock (see rundir.RunLock), or ConfigError if another process holds one."""
    locks: list[rundir.RunLock] = []
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
        lock = rundir.RunLock(out)
        try:
            lock.acquire()
        except BlockingIOError:
            for held in locks:
                held.release()
            raise ConfigError(f"{out} is being trained by another process; choose another out_dir") from None
        locks.append(lock)
    return locks


def _recorder(
    out: Path,
    cfg: DictConfig,
    hook: Callable[[Record], Stop | None] | None,
    bar: Progress | None,
    tracker: loggers.Trackers,
    label: bool,
    history: Sequence[Record] = (),
) -> Callable[[Record], Stop | None]:
    """The per-epoch hook of one run: append to history.csv, log progress, tell the trackers, call
    the caller's hook. A resumed run starts from the checkpoint's `history` (dropping rows of a
    later, lost epoch)."""
    writer = rundir.HistoryWriter(out, history)

    def on_epoch(record: Record) -> Stop | None:
        writer.append(record)
        tracker.log_epoch(record)
        if bar is not None:
            if record["epoch"] > bar.done:  # a population's members share the bar
                bar.update(
                    record["epoch"] - bar.done,
                    note=f"val acc {100 * record.get('val_accuracy', 0):.2f}%"
                    if "val_accuracy" in record
                    else "",
                )
            line = _progress_line(record, cfg.train.epochs, f"[{out.name}]  " if label else "")
            bar.write(f"{line}  {bar.left_text()}".rstrip())
        return hook(record) if hook else None

    return on_epoch
