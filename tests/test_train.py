"""fit() with the chapter 3 techniques switched on, and run() checking them before any work."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import SMALL
from test_regularizers import make_network, toy_data

from hpexp.data import splits as data_splits
from hpexp.data.augment import BookShifts
from hpexp.data.mnist import Split
from hpexp.nn.optimizers import SGD
from hpexp.nn.regularizers import Regularizer
from hpexp.train.loop import evaluate, fit
from hpexp.train.runner import ConfigError, compose, run
from hpexp.train.schedules import StepDecay
from hpexp.train.stopping import NoImprovement


def splits(seed=0):
    x, y = toy_data(seed, n=400)
    return Split(x[:300], y[:300]), Split(x[300:], y[300:])


def test_eta_of_the_schedule_is_in_every_record():
    train, val = splits()
    result = fit(
        make_network(),
        train,
        {"val": val},
        optimizer=SGD(eta=0.4),
        epochs=5,
        batch_size=10,
        rng=np.random.default_rng(0),
        schedule=StepDecay(step=2, factor=0.5),
    )
    assert [r["eta"] for r in result.history] == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1])


@dataclass(frozen=True)
class EndsAfter:
    """A schedule that ends training after `epochs` epochs, as the book's rule does at 1/128."""

    epochs: int
    requires = ()

    def eta(self, eta0, history):
        return eta0

    def check(self, history):
        return "schedule says stop" if len(history) >= self.epochs else None


def test_a_schedule_can_end_training():
    train, val = splits()
    result = fit(
        make_network(),
        train,
        {"val": val},
        optimizer=SGD(eta=2.0),  # at 0.4 it is still at a constant guess after 3 epochs: `stalled`
        epochs=10,
        batch_size=10,
        rng=np.random.default_rng(0),
        schedule=EndsAfter(3),
    )
    assert len(result.history) == 3 and result.stop_reason == "schedule says stop"


def test_early_stopping_restores_the_best_validation_weights():
    train, val = splits(1)
    network = make_network(1)
    # eta 8 is rough enough that validation accuracy goes down after its best
    result = fit(
        network,
        train,
        {"val": val},
        optimizer=SGD(eta=8.0),
        epochs=40,
        batch_size=10,
        rng=np.random.default_rng(0),
        stopping=NoImprovement(patience=3),
        restore_best=True,
    )
    best = result.best_epoch
    accuracies = [r["val_accuracy"] for r in result.history]
    assert accuracies[best - 1] == max(accuracies) and result.restored_epoch == best
    assert len(result.history) == best + 3 and "no improvement" in result.stop_reason
    assert float(evaluate(network, val)[1]) == accuracies[best - 1]


def test_expansion_multiplies_the_training_set_and_the_penalty_n():
    x = np.random.default_rng(0).uniform(0, 1, (30, 784))
    y = np.arange(30) % 10
    seen = []

    class Spy(BookShifts):
        def augment(self, x, rng):
            seen.append(len(x))
            return x

    network = make_network(sizes=[784, 5, 10])
    fit(
        network,
        Split(x, y),
        {},
        optimizer=SGD(eta=0.1),
        epochs=2,
        batch_size=10,
        rng=np.random.default_rng(0),
        expansion=Spy(),
    )
    assert seen == [150, 150]


def test_dropout_training_changes_weights_but_not_the_shuffle_stream():
    train, val = splits(2)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    fit(make_network(), train, {}, optimizer=SGD(eta=0.4), epochs=1, batch_size=10, rng=rng_a)
    fit(
        make_network(),
        train,
        {},
        optimizer=SGD(eta=0.4),
        epochs=1,
        batch_size=10,
        rng=rng_b,
        regularizer=Regularizer(p=0.5),
    )
    assert rng_a.random() == rng_b.random()


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(data_splits, "load", refuse)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["regularizer=l2", "regularizer.lmbda=-1"], "lmbda must be >= 0"),
        (["regularizer=dropout", "regularizer.p=1.0"], r"p .*must be in \[0, 1\)"),
        (["regularizer=dropout", "regularizer.p_input=-0.5"], "p_input"),
        (["regularizer=elastic_net", "regularizer.l1_ratio=2"], "l1_ratio"),
        (["regularizer=max_norm", "regularizer.max_norm=-3"], "max_norm"),
        (["optimizer=momentum", "optimizer.momentum=1.0"], r"momentum must be in \[0, 1\)"),
        (["stopping=no_improvement", "stopping.patience=0"], "patience must be an integer >= 1"),
        (["stopping=no_improvement", "stopping.metric=val_acc"], "metric must be one of"),
        (["stopping=no_improvement", "train.monitor=[train]"], "add it to train.monitor"),
        (["stopping=pq", "train.monitor=[val]"], "train_loss"),
        (["schedule=book", "schedule.factor=1.0"], "never falls"),
        (["schedule=book", "train.monitor=[train]"], "val_accuracy"),
        (["schedule=step", "schedule.step=0"], "schedule.step"),
        (["data.expand=book"], "data/expand=NAME"),
        (["data/expand=random", "data.expand.max_degrees=-1"], "max_degrees"),
        (["data/expand=shift", "data.expand.max_shift=1.5"], r"max_shift must be an integer, got 1\.5"),
        (["data/expand=shift", "data.expand.max_shift=40"], r"max_shift must be a whole number.*0..27"),
    ],
)
def test_bad_values_fail_before_any_work(overrides, message, no_data, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run(compose([*SMALL, *overrides]), tmp_path, progress=False)
    assert not (tmp_path / "history.csv").exists()


def test_summary_records_the_rule_the_reason_and_the_epochs(mnist_dir, tmp_path):
    overrides = [
        *SMALL,
        "train.epochs=30",
        "stopping=no_improvement",
        "stopping.patience=2",
        "regularizer=dropout",
        "regularizer.lmbda=1",
        "optimizer.eta=3.0",
    ]
    out = run(compose(overrides), tmp_path / "run", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopping"] == "NoImprovement(patience=2, metric='val_accuracy', min_delta=0.0)"
    assert summary["stop_reason"] == "no improvement of val_accuracy in 2 epochs"
    assert summary["stopped_epoch"] == summary["epochs_run"] == summary["best_epoch"] + 2 < 30
    assert summary["restored_epoch"] == summary["best_epoch"]  # restore_best: null -> on with a rule
    assert summary["choices"]["regularizer"] == "dropout"


@pytest.mark.parametrize("expand", ["book", "random", "shift"])
def test_runs_with_expansion(expand, mnist_dir, tmp_path):
    out = run(compose([*SMALL, f"data/expand={expand}", "train.epochs=1"]), tmp_path / expand, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["choices"]["data/expand"] == expand


def fit_toy(epochs: int, **extra):
    train, val = splits()
    kwargs = dict(optimizer=SGD(eta=0.4), batch_size=10, rng=np.random.default_rng(0))
    return fit(make_network(), train, {"val": val}, epochs=epochs, **kwargs, **extra)


def test_a_thread_asked_to_stop_stops_at_its_next_mini_batch_and_not_inside_a_hook():
    """No signal reaches a thread (a Dask task): `request_stop` makes training raise KeyboardInterrupt
    at its next mini-batch, never inside the code that is running (a hook writing to storage), and
    clear_stop lets the thread train again."""
    import threading
    import traceback

    from hpexp.train.loop import clear_stop, request_stop

    seen: list[str] = []

    def hook(record):
        seen.append(f"epoch {record['epoch']}")
        if record["epoch"] == 2:  # a stop asked for while this hook works on
            request_stop(threading.get_ident())
            time.sleep(0.2)
            seen.append("hook finished")

    def train_in_thread(out: dict) -> None:
        try:
            fit_toy(5, on_epoch=hook)
        except KeyboardInterrupt as e:
            out["raised_in"] = traceback.extract_tb(e.__traceback__)[-1].name
        clear_stop(threading.get_ident())
        out["again"] = len(fit_toy(5).history)

    out: dict = {}
    thread = threading.Thread(target=train_in_thread, args=(out,))
    thread.start()
    thread.join(timeout=60)
    assert seen == ["epoch 1", "epoch 2", "hook finished"]
    assert out == {"raised_in": "check_stop", "again": 5}


def test_a_thread_asked_to_stop_from_another_thread_stops_within_a_mini_batch():
    import threading

    from hpexp.train.loop import clear_stop, request_stop

    started, result = threading.Event(), {}

    def train_in_thread() -> None:
        try:  # many epochs: it would train for minutes unless stopped
            fit_toy(100_000, on_epoch=lambda record: started.set())
        except KeyboardInterrupt:
            result["stopped"] = time.perf_counter()
        finally:
            clear_stop(threading.get_ident())

    thread = threading.Thread(target=train_in_thread)
    thread.start()
    assert started.wait(60)
    asked = time.perf_counter()
    request_stop(thread.ident)
    thread.join(timeout=60)
    assert not thread.is_alive() and result["stopped"] - asked < 5


def test_a_run_names_the_commit_of_the_code_it_started_with(tmp_path, monkeypatch):
    """A commit made to the checkout while a run trains (hours, for chapter 6) is not the code the
    run loaded: its summary names the commit it started on."""
    from hpexp import paths
    from hpexp.train import rundir

    repo = tmp_path / "repo"
    (repo / "hpexp").mkdir(parents=True)
    for folder in (paths.config_dir(), paths.studies_dir()):  # the configs, beside the package
        (repo / folder.name).symlink_to(folder)

    def commit(message: str) -> str:
        (repo / "hpexp" / "x.py").write_text(message)
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
        env |= {"GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ["PATH"]}
        for args in (["add", "-A"], ["commit", "-qm", message]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()

    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    started = commit("a")
    monkeypatch.setattr(paths, "_PACKAGE", repo / "hpexp")
    paths.source_commit.cache_clear()
    moved = []
    try:
        out = run(
            compose(SMALL),
            tmp_path / "run",
            on_epoch=lambda r: moved.append(commit(f"b{r['epoch']}")) and None,
        )
    finally:
        paths.source_commit.cache_clear()
    assert len(moved) == 2 and started not in moved
    assert rundir.read_summary(out)["versions"]["commit"] == started
