"""run(): config in, run directory out; bad input rejected before any work; divergence kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL
from omegaconf import OmegaConf

from hpexp.data import splits as data_splits
from hpexp.train import rundir
from hpexp.train.runner import ConfigError, compose, run


@pytest.fixture
def no_data(monkeypatch):
    """Fail loudly if anything tries to load data: errors must come before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(data_splits, "load", refuse)


def test_compose_records_group_choices():
    cfg = compose(["network=mlp100", "cost=quadratic"])
    assert cfg.choices.network == "mlp100"
    assert cfg.choices.cost == "quadratic"
    assert list(cfg.network.sizes) == [784, 100, 10]


def test_unknown_option_lists_the_valid_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="mlp30"):
        compose(["network=mlp31"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.eta=0", "optimizer.eta must be > 0"),
        ("optimizer.eta=-1", "optimizer.eta must be > 0"),
        ("optimizer.eta=inf", r"^optimizer\.eta must be a finite number, got inf"),
        ("optimizer.eta=nan", r"^optimizer\.eta must be a finite number"),
        ("regularizer=l2 regularizer.lmbda=-inf", r"^regularizer\.lmbda must be a finite number"),
        ("optimizer.eta=abc", r"^optimizer\.eta must be a number, got 'abc'"),
        ("optimizer=momentum optimizer.momentum=[0.9]", r"^optimizer\.momentum must be a number"),
        ("optimizer=nesterov optimizer.nesterov=1", r"^optimizer\.nesterov must be true or false"),
        ("seed=abc", r"^seed must be an integer >= 0, got 'abc'"),
        ("seed=-1", r"^seed must be an integer >= 0, got -1"),
        ("seed=1.5", r"^seed must be an integer"),
        ("seed=true", r"^seed must be an integer"),
        ("train.seeds=[1,1]", r"^train\.seeds lists \[1\] more than once"),
        ("train.seeds=[1,-2]", r"^train\.seeds\[1\] must be an integer >= 0"),
        ("train.seeds=[]", r"^train\.seeds must be a non-empty list"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.batch_size=501", "data.n_train=500"),
        ("data.n_train=0", r"^data\.n_train must be an integer in 1\.\.50000, got 0"),
        ("data.n_train=50001", "data.n_train"),
        ("data.n_validation=10001", "data.n_validation"),
        ("network.sizes=[784,30,9]", "does not match MNIST"),
        ("network.sizes=[700,30,10]", "does not match MNIST"),
        ("train.epochs=0", "train.epochs"),
        ("train.monitor=[train,valid]", "valid"),
        ("train.monitor=[]", r"^train\.monitor must list the splits"),
        ("train.monitor=[train,train]", r"^train\.monitor lists a split more than once"),
        ("train.monitor=[train] train.restore_best=true", r"^train\.restore_best=true .* add val"),
        ("train.monitor=[train] stopping=no_improvement", "stopping reads 'val_accuracy'"),
        ("dtype=float16", "dtype"),
        ("regularizer=none regularizer.lmbda=0.1", r"^regularizer=none with regularizer\.lmbda=0\.1 would"),
        ("regularizer=none regularizer.p=0.5", r"^regularizer=none with regularizer\.p=0\.5"),
        ("regularizer=l2 regularizer.l1_ratio=1", r"^regularizer=l2 with regularizer\.l1_ratio=1"),
        ("regularizer=l1 regularizer.l1_ratio=0.5", r"^regularizer=l1 with regularizer\.l1_ratio=0\.5"),
        ("regularizer=elastic_net regularizer.l1_ratio=0", r"^regularizer=elastic_net needs"),
        ("regularizer=l2", None),
        ("regularizer=l2 regularizer.lmbda=0", None),  # an L2 sweep's zero-strength baseline
        ("regularizer=dropout regularizer.lmbda=5 regularizer.max_norm=3", None),  # techniques combine
        ("regularizer=l2 regularizer.p=0.5", None),
        ("seed=7 train.seeds=[1,2]", None),
    ],
)
def test_bad_values_fail_before_any_work(override, message, no_data, tmp_path):
    cfg = compose([*SMALL, *override.split()])
    if message is None:  # a valid override: it gets as far as loading data
        with pytest.raises(AssertionError, match="data was loaded"):
            run(cfg, tmp_path, progress=False)
        return
    with pytest.raises(ConfigError, match=message):
        run(cfg, tmp_path, progress=False)
    assert not (tmp_path / "history.csv").exists()


def test_a_search_trial_needs_the_validation_split(no_data, tmp_path):
    cfg = compose([*SMALL, "train.monitor=[train]"])
    with pytest.raises(ConfigError, match="a search selects by the validation split"):
        run(cfg, tmp_path, progress=False, allow_test=False)


def test_a_refused_config_leaves_no_folder(no_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        run(compose([*SMALL, "seed=-1"]), progress=False)
    assert not list(tmp_path.rglob("*"))


def test_run_directory_format(mnist_dir, tmp_path):
    cfg = compose([*SMALL, "train.save_weights=true", "seed=3"])
    out = run(cfg, tmp_path / "run", progress=False)
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.seed == 3 and saved.choices.cost == "cross_entropy"
    history = rundir.read_history(out)
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"train_cost", "train_accuracy", "val_cost", "val_accuracy", "eta", "weight_norm"} <= set(
        history[0]
    )
    assert not any(k.startswith("test_") for k in history[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    best = max(history, key=lambda r: r["val_accuracy"])
    assert summary["best_epoch"] == best["epoch"]
    weights = np.load(out / "weights.npz")
    assert [weights[k].shape for k in weights.files] == [(30, 784), (1, 30), (10, 30), (1, 10)]


def test_same_seed_same_history_other_seed_differs(mnist_dir, tmp_path):
    runs = [
        run(compose([*SMALL, f"seed={s}"]), tmp_path / str(i), progress=False)
        for i, s in enumerate([5, 5, 6])
    ]
    acc = [[r["val_cost"] for r in rundir.read_history(d)] for d in runs]
    assert acc[0] == acc[1] and acc[0] != acc[2]


def test_test_split_only_when_monitored(mnist_dir, tmp_path):
    out = run(compose([*SMALL, "train.monitor=[train,val,test]"]), tmp_path, progress=False)
    assert "test_accuracy" in rundir.read_history(out)[0]


def test_divergence_ends_the_run_and_keeps_history(mnist_dir, tmp_path):
    deep_relu = ["activation=relu", "init=large", "network.sizes=[784,100,100,10]"]
    cfg = compose([*SMALL, *deep_relu, "optimizer.eta=1e3", "train.epochs=5"])
    out = run(cfg, tmp_path, progress=False)
    summary = rundir.read_summary(out)
    assert summary["status"] == "diverged"
    assert "not finite" in summary["stop_reason"]
    assert len(rundir.read_history(out)) == summary["epochs_run"] >= 1


def test_learns_on_a_real_mnist_subset(mnist_dir, tmp_path):
    """Learning check: 784-30-10 on 5,000 real images for 3 epochs beats 85% on 1,000 held out."""
    cfg = compose(["data.n_train=5000", "data.n_validation=1000", "train.epochs=3"])
    out = run(cfg, tmp_path, progress=False)
    history = rundir.read_history(out)
    assert history[-1]["val_accuracy"] > 0.85
    assert history[-1]["train_cost"] < history[0]["train_cost"]


def test_float64_runs(mnist_dir, tmp_path):
    out = run(compose([*SMALL, "dtype=float64"]), tmp_path, progress=False)
    assert rundir.read_summary(out)["status"] == "completed"


def _curves(out):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rundir.read_history(out)]


def test_seeds_trained_together_equal_separate_runs(mnist_dir, tmp_path):
    """train.seeds with independent orders: each seed's run is the run it would be alone."""
    from hpexp.train.runner import run_seeds

    base = [*SMALL, "dtype=float64", "train.shared_order=false", "regularizer=l2", "regularizer.lmbda=1"]
    together = run_seeds(compose([*base, "train.seeds=[3,4]"]), tmp_path / "pop", progress=False)
    assert [p.name for p in together] == ["seed_3", "seed_4"]
    for seed, out in zip([3, 4], together, strict=True):
        alone = run(compose([*base, f"seed={seed}"]), tmp_path / f"alone{seed}", progress=False)
        assert len(_curves(out)) == len(_curves(alone)) == 2
        for a, b in zip(_curves(out), _curves(alone), strict=True):
            assert a == pytest.approx(b, abs=1e-9)
        assert rundir.read_summary(out)["best_epoch"] == rundir.read_summary(alone)["best_epoch"]


def test_population_refuses_configs_that_cannot_share_a_pass(tmp_path, no_data):
    from hpexp.train.runner import run_population

    cfgs = [compose([*SMALL]), compose([*SMALL, "train.batch_size=20"])]
    with pytest.raises(ConfigError, match="train.batch_size"):
        run_population(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False)


def test_eval_every_records_every_kth_epoch_and_the_last(mnist_dir, tmp_path):
    out = run(compose([*SMALL, "train.epochs=7", "train.eval_every=3"]), tmp_path, progress=False)
    assert [r["epoch"] for r in rundir.read_history(out)] == [3, 6, 7]


def test_a_history_row_cut_short_is_skipped(tmp_path):
    writer = rundir.HistoryWriter(tmp_path)
    writer.append({"epoch": 1, "val_accuracy": 0.5})
    writer.append({"epoch": 2, "val_accuracy": 0.6})
    with (tmp_path / "history.csv").open("a") as f:
        f.write("3")  # a crash in the middle of the third row
    assert rundir.read_history(tmp_path) == [
        {"epoch": 1, "val_accuracy": 0.5},
        {"epoch": 2, "val_accuracy": 0.6},
    ]


def test_without_shuffling_the_run_differs_from_the_shuffled_one(mnist_dir, tmp_path):
    a = run(compose([*SMALL, "train.shuffle=false", "seed=1"]), tmp_path / "a", progress=False)
    shuffled = run(compose([*SMALL, "seed=1"]), tmp_path / "b", progress=False)
    assert _curves(a) != _curves(shuffled)


def test_conv_nets_with_several_seeds_train_one_by_one(mnist_dir, tmp_path):
    """Populations stack fully-connected networks only; conv nets still get one run per seed."""
    from hpexp.train.runner import run_seeds

    cfg = compose(
        [
            "data.n_train=50",
            "data.n_validation=20",
            "train.epochs=1",
            "network=conv1",
            "network.fc=8",
            "train.seeds=[1,2]",
        ]
    )
    outs = run_seeds(cfg, tmp_path, progress=False)
    assert [rundir.read_summary(o)["status"] for o in outs] == ["completed", "completed"]
