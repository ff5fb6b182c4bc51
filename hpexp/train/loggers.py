"""Experiment trackers: the `logger` config group sends each run to MLflow or TensorBoard as well.

The run directory (config.yaml, history.csv, summary.json: the `csv` logger) is always written;
`logger=[csv,mlflow]` or `logger=[csv,tensorboard]` adds a tracker. A tracker sees the run as the
run directory does: `start` with the config, `log_epoch` with each record of history.csv, `finish`
with the summary, after the files are written.

    mlflow       a run per training run: params = the flattened config with the group choices,
                 metrics per epoch (step = epoch), the summary's best and final values as metrics
                 and its status as a tag, the run directory's files as artifacts; a study's trials
                 are child runs of the study's run (`parent_run_id`)
    tensorboard  scalars per epoch in RUN_DIR/tensorboard/ (tensorboardX: no deep-learning framework)

Both are optional extras (`pip install 'hpexp[mlflow]'`, `'hpexp[tensorboard]'`); a missing one is
named before any training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from hpexp.train import rundir
from hpexp.train.loop import Record

__all__ = [
    "MLflowLogger",
    "TensorBoardLogger",
    "Tracker",
    "TrackerError",
    "Trackers",
    "build",
    "end_study_run",
    "flatten",
    "start",
    "study_run",
]

DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"
RUN_ID_FILE = ".mlflow_run.json"  # in the run folder: its MLflow run (tracking URI, run id), for a resume
PARAM_LIMIT = 6000  # MLflow's longest parameter value


class TrackerError(ValueError):
    """A logger that cannot work (its package is missing, a bad setting), found before training."""


class Tracker(Protocol):
    def start(self, cfg: DictConfig, run_dir: Path, resumed: bool = False) -> None:
        """`resumed`: the run goes on from its checkpoint; a tracker continues what it logged."""

    def log_epoch(self, record: Record) -> None: ...

    def finish(self, summary: Record, run_dir: Path) -> None: ...


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackerError(
            f"logger={extra} needs {module.split('.')[0]}: pip install 'hpexp[{extra}]' ({e})"
        ) from None


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a config; lists stay values."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def _metrics(record: Record) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@dataclass
class MLflowLogger:
    """One MLflow run per training run, through MLflow's client (no global active run, so the
    members of a population are logged side by side)."""

    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "hpexp"
    parent_run_id: str | None = None  # set by `hpexp study`: the study's run

    def __post_init__(self) -> None:
        mlflow = _require("mlflow", "mlflow")
        self.client = mlflow.MlflowClient(self.tracking_uri or _default_uri())
        self.run_id: str | None = None
        self.logged = 0  # the last epoch already in the MLflow run (a resumed run's)

    def start(self, cfg: DictConfig, run_dir: Path, resumed: bool = False) -> None:
        from mlflow.entities import Param

        if resumed and (earlier := self._earlier(run_dir)) is not None:  # one MLflow run per run
            self.run_id = earlier
            self.client.update_run(earlier, status="RUNNING")
            # Epochs logged after the checkpoint are trained again, to the same values: logged once.
            metrics = self.client.get_run(earlier).data.metrics
            steps = [m.step for k in metrics for m in self.client.get_metric_history(earlier, k)]
            self.logged = max(steps, default=0)
            return
        tags = {"hpexp.run_dir": str(run_dir.resolve())}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(
            _experiment_id(self.client, self.experiment), run_name=run_dir.name, tags=tags
        )
        self.run_id = run.info.run_id
        where = {"tracking_uri": self.client.tracking_uri, "run_id": self.run_id}
        rundir.write_atomic(run_dir / RUN_ID_FILE, json.dumps(where) + "\n")
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        config.pop("logger", None)
        params = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in flatten(config)]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _earlier(self, run_dir: Path) -> str | None:
        """The MLflow run this run folder logged to before it was interrupted, if this store has it."""
        try:
            where = json.loads((run_dir / RUN_ID_FILE).read_text())
        except (OSError, ValueError):
            return None
        if where.get("tracking_uri") != self.client.tracking_uri:
            return None
        run_id = str(where.get("run_id"))
        try:
            return str(self.client.get_run(run_id).info.run_id)
        except Exception:  # deleted from the store meanwhile: a new MLflow run
            return None

    def log_epoch(self, record: Record) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["epoch"])
        if step <= self.logged:
            return
        metrics = [Metric(k, v, now, step) for k, v in _metrics(record).items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)  # type: ignore[arg-type]

    def finish(self, summary: Record, run_dir: Path) -> None:
        from mlflow.entities import Metric

        assert self.run_id is not None
        now = int(time.time() * 1000)
        values = {"best_epoch": summary.get("best_epoch"), "epochs_run": summary.get("epochs_run")}
        for which in ("best", "final"):
            values |= {
                f"{which}_{k}": v for k, v in _metrics(summary.get(which) or {}).items() if k != "epoch"
            }
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=metrics)
        for key in ("status", "stop_reason"):
            if summary.get(key) is not None:
                self.client.set_tag(self.run_id, f"hpexp.{key}", str(summary[key]))
        for path in sorted(run_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                self.client.log_artifact(self.run_id, str(path))
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(str(summary.get("status")), "FAILED")
        if summary.get("status") in ("stopped", "pruned"):
            status = "FINISHED"
        self.client.set_terminated(self.run_id, status)


def _default_uri() -> str:
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # created meanwhile by another worker
        return str(client.get_experiment_by_name(name).experiment_id)


@dataclass
class TensorBoardLogger:
    """Scalars per epoch (tag = the record's key, step = epoch) in RUN_DIR/`subdir`/."""

    subdir: str = "tensorboard"

    def __post_init__(self) -> None:
        self.writer_class = _require("tensorboardX", "tensorboard").SummaryWriter
        self.writer: Any = None

    def start(self, cfg: DictConfig, run_dir: Path, resumed: bool = False) -> None:
        self.writer = self.writer_class(logdir=str(run_dir / self.subdir))  # a resumed run adds a file

    def log_epoch(self, record: Record) -> None:
        for key, value in _metrics(record).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, int(record["epoch"]))
        self.writer.flush()

    def finish(self, summary: Record, run_dir: Path) -> None:
        self.writer.close()


class Trackers:
    """The trackers of one run, called together."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log_epoch(self, record: Record) -> None:
        for t in self.trackers:
            t.log_epoch(record)

    def finish(self, summary: Record, run_dir: Path) -> None:
        for t in self.trackers:
            t.finish(summary, run_dir)


def build(cfg: DictConfig) -> list[Tracker]:
    """The trackers `cfg.logger` names (each entry with a `_target_`), not yet started."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    trackers = []
    for name, node in (cfg.get("logger") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            try:
                trackers.append(instantiate(node))
            except InstantiationException as e:
                cause = e.__cause__ or e
                raise (
                    cause if isinstance(cause, TrackerError) else TrackerError(f"logger.{name}: {cause}")
                ) from None
    return trackers


def start(cfg: DictConfig, run_dir: Path, trackers: Sequence[Tracker], resumed: bool = False) -> Trackers:
    for t in trackers:
        t.start(cfg, run_dir, resumed)
    return Trackers(trackers)


def _study_tracker(base: DictConfig) -> MLflowLogger | None:
    node = OmegaConf.select(base, "logger.mlflow")
    if node is None:
        return None
    tracker = build(OmegaConf.create({"logger": {"mlflow": node}}))[0]
    assert isinstance(tracker, MLflowLogger)
    return tracker


def study_run(base: DictConfig, name: str, spec: dict[Any, Any], run_id: str | None) -> str | None:
    """The MLflow run of a study (its trials' parent), created once (`run_id` when it exists);
    None when the trials' config has no logger.mlflow."""
    tracker = _study_tracker(base)
    if tracker is None or run_id:
        return run_id if tracker is not None else None
    from mlflow.entities import Param

    run = tracker.client.create_run(
        _experiment_id(tracker.client, tracker.experiment),
        run_name=f"study {name}",
        tags={"hpexp.study": name},
    )
    params = [Param(f"study.{k}", str(v)[:PARAM_LIMIT]) for k, v in flatten(spec)]
    for i in range(0, len(params), 100):
        tracker.client.log_batch(run.info.run_id, params=params[i : i + 100])
    return str(run.info.run_id)


def end_study_run(base: DictConfig, run_id: str | None, best: dict[str, float]) -> None:
    """Log the study's best values on its run and mark it finished."""
    tracker = _study_tracker(base)
    if tracker is None or run_id is None:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    tracker.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in best.items()])
    tracker.client.set_terminated(run_id, "FINISHED")
