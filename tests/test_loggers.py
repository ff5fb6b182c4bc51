"""Trackers read back through their own tools: MLflow's client on a real SQLite store, TensorBoard's
event files, each checked against the run directory's history.csv and summary.json."""

from __future__ import annotations

import csv
import os
import struct
import sys
from pathlib import Path

import pytest
from conftest import SMALL
from omegaconf import OmegaConf
from test_cli import hpexp

from hpexp.train import rundir
from hpexp.train.loggers import flatten
from hpexp.train.runner import compose, run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    pytest.importorskip("mlflow", reason="pip install 'hpexp[mlflow]'")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _history_columns(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {k: [(int(r["epoch"]), float(r[k])) for r in rows] for k in rows[0] if k != "epoch"}


def _check_mlflow_run(client, run, run_dir: Path, timings: bool = True) -> None:
    """The MLflow run holds the run directory: params, metrics per epoch, summary, artifacts
    (`timings`: each epoch's seconds too, not for a resumed run's epochs trained twice)."""
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    config.pop("logger")
    expected = {k: str(v) for k, v in flatten(config)}
    assert run.data.params == expected
    assert run.data.params["choices.network"] == "mlp30"  # the group choices are params too
    for key, values in _history_columns(run_dir).items():
        if key == "seconds" and not timings:
            continue
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(logged) == values, key  # exactly: both hold the record's float64
    summary = rundir.read_summary(run_dir)
    assert run.data.tags["hpexp.status"] == summary["status"]
    assert run.data.metrics["best_epoch"] == summary["best_epoch"]
    assert run.data.metrics["best_val_accuracy"] == summary["best"]["val_accuracy"]
    assert run.data.metrics["final_train_cost"] == pytest.approx(summary["final"]["train_cost"], rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.csv", "summary.json"} <= artifacts
    copy = client.download_artifacts(run.info.run_id, "history.csv", str(run_dir.parent))
    assert Path(copy).read_text() == (run_dir / "history.csv").read_text()


def test_a_run_with_csv_and_mlflow(mnist_dir, store, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns

    overrides = [
        "logger=[csv,mlflow]",
        f"logger.mlflow.tracking_uri={store}",
        "logger.mlflow.experiment=single",
    ]
    cfg = compose([*SMALL, *overrides])
    out = run(cfg, tmp_path / "run", progress=False)
    assert (out / "history.csv").exists()  # csv: the run directory as always
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("single")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    _check_mlflow_run(client, logged, out)


def test_a_resumed_run_goes_on_in_its_mlflow_run(mnist_dir, store, tmp_path, monkeypatch):
    """An interrupted run resumed from its checkpoint opened a second MLflow run holding only the
    later epochs; now the one MLflow run gets every epoch, once, and ends FINISHED."""
    import mlflow

    from hpexp.train.runner import resume

    monkeypatch.chdir(tmp_path)
    overrides = [*SMALL, "train.epochs=4", "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={store}"]
    cfg = compose([*overrides, "logger.mlflow.experiment=resumed"])

    def stop_at_2(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", progress=False, on_epoch=stop_at_2)
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("resumed")
    (cut,) = client.search_runs([experiment.experiment_id])
    assert cut.info.status == "KILLED"
    out = resume(tmp_path / "run", progress=False)[0]
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_id == cut.info.run_id and logged.info.status == "FINISHED"
    # Epochs 1-4, each once, equal to history.csv: epoch 2, recorded before the interrupt but not
    # checkpointed, was trained again to the same values (its time excepted) and not logged again.
    _check_mlflow_run(client, logged, out, timings=False)


def test_a_four_trial_study_logs_each_trial_as_a_child_run(mnist_dir, store, tmp_path):
    import mlflow

    hpexp(
        "study", "book_l2_mlp30", "n_trials=4", "workers=1",
        "--base", "data.n_train=500", "--base", "data.n_validation=200", "--base", "train.epochs=2",
        "--base", "logger=[csv,mlflow]", "--base", f"logger.mlflow.tracking_uri={store}",
        "--base", "logger.mlflow.experiment=study",
        cwd=tmp_path,
    )  # fmt: skip
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("hpexp.study") == "book_l2_mlp30"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    assert parent.data.params["study.n_trials"] == "4" and parent.info.status == "FINISHED"
    for child in children:
        _check_mlflow_run(client, child, Path(child.data.tags["hpexp.run_dir"]))
    best = max(
        rundir.read_summary(Path(c.data.tags["hpexp.run_dir"]))["best"]["val_accuracy"] for c in children
    )
    assert parent.data.metrics["best_val_accuracy"] == best


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars from TensorBoard event files, read from the TFRecord framing (length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_scalars_per_epoch(mnist_dir, tmp_path):
    pytest.importorskip("tensorboardX", reason="pip install 'hpexp[tensorboard]'")
    out = run(compose([*SMALL, "logger=[csv,tensorboard]"]), tmp_path / "run", progress=False)
    scalars = _events(out / "tensorboard")
    history = _history_columns(out)
    assert set(scalars) == set(history)
    for key, values in history.items():
        steps, logged = zip(*sorted(scalars[key]), strict=True)
        assert list(steps) == [step for step, _ in values], key
        assert list(logged) == pytest.approx([v for _, v in values], rel=1e-6), key  # float32 in events


def test_a_missing_tracker_names_the_extra_before_any_training(tmp_path):
    blocked = tmp_path / "blocked" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocked.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "hpexp.cli", "train", *SMALL, "logger=[csv,mlflow]", "out_dir=run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'hpexp[mlflow]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "history.csv").exists()
