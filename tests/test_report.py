"""Reports: loaders on real tiny runs, tables against hand-computed numbers, figures, pages, browser."""

from __future__ import annotations

import html as html_lib
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from hpexp.report import command, compare, interactive, pages, plots
from hpexp.report import runs as report
from hpexp.train import rundir  # noqa: E402
from hpexp.train.runner import compose, run  # noqa: E402

TINY = ["data.n_train=300", "data.n_validation=100", "train.epochs=3", "network=linear"]
CONFIGS = {
    "none-0": ["regularizer=none", "seed=0"],
    "none-1": ["regularizer=none", "seed=1"],
    "l2-0": ["regularizer=l2", "regularizer.lmbda=0.1", "seed=0"],
}


@pytest.fixture(scope="module")
def runs_dir(mnist_dir, tmp_path_factory) -> Path:
    """Three real tiny runs (none x 2 seeds, l2 x 1), one interrupted after an epoch, one that
    crashed before its first epoch."""
    root = tmp_path_factory.mktemp("runs")
    for name, overrides in CONFIGS.items():
        run(compose([*TINY, *overrides, f"data.dir={mnist_dir}"]), root / name, progress=False)
    cut = root / "cut"
    shutil.copytree(root / "none-0", cut)
    rundir.write_history(cut, rundir.read_history(cut)[:1])
    rundir.write_summary(cut, {"status": "interrupted", "stop_reason": "KeyboardInterrupt()", "seed": 0})
    crashed = root / "crashed"
    crashed.mkdir()
    shutil.copy(root / "none-0" / "config.yaml", crashed)
    return root


@pytest.fixture(scope="module")
def df(runs_dir) -> pd.DataFrame:
    return report.load_runs(runs_dir)


def test_load_runs_one_row_per_epoch_with_config_joined(df):
    ended = df[~df["incomplete"]]
    assert sorted(ended["run"].unique()) == ["l2-0", "none-0", "none-1"]
    assert (
        ended.groupby("run")["epoch"].apply(list)
        == pd.Series([[1, 2, 3]] * 3, index=["l2-0", "none-0", "none-1"])
    ).all()
    assert df["epoch"].dtype == np.int64
    for column in ("train_accuracy", "val_accuracy", "train_cost", "val_loss", "eta", "weight_norm"):
        assert df[column].dtype == np.float64, column
    assert pd.api.types.is_string_dtype(df["run"]) and pd.api.types.is_string_dtype(df["status"])
    assert df["incomplete"].dtype == bool
    assert "test_accuracy" not in df  # not monitored
    by_run = df.drop_duplicates("run").set_index("run")
    assert by_run.loc["l2-0", "regularizer"] == "l2" and by_run.loc["none-0", "regularizer"] == "none"
    assert by_run.loc["l2-0", "regularizer.lmbda"] == 0.1
    assert by_run.loc["none-1", "seed"] == 1 and by_run.loc["none-1", "data.n_train"] == 300
    assert by_run.loc["none-0", "network.sizes"] == "[784, 10]"
    assert by_run.loc["none-0", "status"] == "completed"


def test_incomplete_runs_are_flagged_not_dropped(df):
    by_run = df.drop_duplicates("run").set_index("run")
    assert by_run.loc["cut", "incomplete"] and by_run.loc["cut", "status"] == "interrupted"
    assert (df["run"] == "cut").sum() == 1
    crashed = df[df["run"] == "crashed"]
    assert len(crashed) == 1 and crashed["epoch"].item() == 0 and crashed["val_accuracy"].isna().all()
    assert by_run.loc["crashed", "status"] == "unknown" and by_run.loc["crashed", "incomplete"]
    notes = report.check_runs(df)
    assert any("cut is incomplete (status interrupted" in n for n in notes)


def test_globs_and_hydra_copies(runs_dir, tmp_path):
    multirun = tmp_path / "multirun"
    shutil.copytree(runs_dir / "none-0", multirun / "0")
    (multirun / "0" / ".hydra").mkdir()
    shutil.copy(runs_dir / "none-0" / "config.yaml", multirun / "0" / ".hydra")
    assert report.find_run_dirs([multirun]) == [(multirun / "0").resolve()]
    found = report.find_run_dirs([str(runs_dir / "none-*")])
    assert [p.name for p in found] == ["none-0", "none-1"]


def test_bad_input_has_clear_messages(df, tmp_path, monkeypatch):
    with pytest.raises(report.ReportError, match="no run directories"):
        report.load_runs(tmp_path)
    with pytest.raises(report.ReportError, match="no such file"):
        report.load_runs(tmp_path / "nope")
    with pytest.raises(report.ReportError, match=r"no config key regulariser.*regularizer"):
        report.label_configs(df, "regulariser")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        report.ReportError, match=r"no study 'missing': runs/studies/missing/journal.log does"
    ):
        report.load_trials("missing")


def test_configs_pool_seeds(df):
    labelled = report.label_configs(df[~df["incomplete"]], "regularizer")
    assert list(labelled["config"].cat.categories) == ["regularizer=l2", "regularizer=none"]
    auto = report.label_configs(df[~df["incomplete"]])
    assert set(auto["config"]) == {
        "regularizer=l2, regularizer.lmbda=0.1",
        "regularizer=none, regularizer.lmbda=0",
    }
    table = report.summarize(df[~df["incomplete"]], "regularizer").set_index("config")
    assert table.loc["regularizer=none", "n"] == 2 and table.loc["regularizer=l2", "n"] == 1


def _made_up() -> pd.DataFrame:
    """Config A: three seeds of four epochs; config B: one seed. Numbers chosen to check by hand."""
    val = {0: [0.50, 0.70, 0.60, 0.65], 1: [0.50, 0.60, 0.72, 0.72], 2: [0.74, 0.70, 0.60, 0.61]}
    train = {0: [0.60, 0.80, 0.90, 0.95], 1: [0.55, 0.70, 0.80, 0.90], 2: [0.80, 0.85, 0.90, 0.95]}
    rows = []
    for seed in range(3):
        for e in range(4):
            rows.append(
                {
                    "run": f"a{seed}",
                    "status": "completed",
                    "incomplete": False,
                    "epoch": e + 1,
                    "train_accuracy": train[seed][e],
                    "val_accuracy": val[seed][e],
                    "test_accuracy": val[seed][e] - 0.01,
                    "seed": seed,
                    "k": "A",
                }
            )
    for e, v in enumerate([0.3, 0.4]):
        rows.append(
            {
                "run": "b0",
                "status": "completed",
                "incomplete": False,
                "epoch": e + 1,
                "train_accuracy": v + 0.1,
                "val_accuracy": v,
                "test_accuracy": math.nan,
                "seed": 0,
                "k": "B",
            }
        )
    return pd.DataFrame(rows)


def test_table_numbers_by_hand():
    table = report.summarize(_made_up(), "k").set_index("config")
    a = table.loc["k=A"]
    # best epochs 2, 3 (first of the tied 0.72s), 1 -> an integer: median 2, range 1-3
    assert a["n"] == 3
    assert (a["best_epoch"], a["best_epoch_lo"], a["best_epoch_hi"]) == (2.0, 1.0, 3.0)
    # best val 0.70, 0.72, 0.74 -> mean 0.72, s = 0.02, half-width 4.302653 * 0.02 / sqrt(3)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert a["best_val_accuracy"] == pytest.approx(0.72)
    assert a["best_val_accuracy_lo"] == pytest.approx(0.72 - half, rel=1e-5)
    assert a["best_val_accuracy_hi"] == pytest.approx(0.72 + half, rel=1e-5)
    # final val 0.65, 0.72, 0.61; train at best 0.80, 0.80, 0.80; gap 0.10, 0.08, 0.06
    assert a["final_val_accuracy"] == pytest.approx((0.65 + 0.72 + 0.61) / 3)
    assert a["train_accuracy_at_best"] == pytest.approx(0.80)
    assert a["train_accuracy_at_best_hi"] - a["train_accuracy_at_best_lo"] == pytest.approx(0)
    assert a["gap_at_best"] == pytest.approx(0.08)
    assert a["gap_at_best_hi"] == pytest.approx(0.08 + half, rel=1e-5)
    assert a["test_accuracy_at_best"] == pytest.approx(0.71)
    b = table.loc["k=B"]
    assert b["n"] == 1 and b["best_epoch"] == 2 and math.isnan(b["best_val_accuracy_lo"])
    assert math.isnan(b["test_accuracy_at_best"])
    shown = report.format_summary(report.summarize(_made_up(), "k")).set_index("config")
    assert shown.loc["k=A", "val % at best epoch"] == "72.00 [67.03, 76.97]"
    assert shown.loc["k=A", "best epoch"] == "2 (range 1-3)"
    assert shown.loc["k=B", "val % at best epoch"] == "40.00"


def test_two_seeds_show_values_and_high_accuracies_stay_below_100():
    rows = []
    for seed, (train, val) in enumerate([(0.999, 0.8304), (1.0, 0.8554)]):
        rows += [
            {
                "run": f"r{seed}",
                "status": "completed",
                "incomplete": False,
                "epoch": e,
                "seed": seed,
                "k": "A",
                "train_accuracy": train,
                "val_accuracy": val - 0.01 * (2 - e),
            }
            for e in (1, 2)
        ]
    two = pd.DataFrame(rows)
    shown = report.format_summary(report.summarize(two, "k")).iloc[0]
    assert shown["val % at best epoch"] == "84.29 (values 83.04, 85.54)"  # no t-interval from 2 seeds
    assert shown["best epoch"] == "2"
    three = pd.concat([two, two.assign(run="r2", seed=2, train_accuracy=0.997)])
    table = report.summarize(three, "k").iloc[0]
    assert table["train_accuracy_at_best_hi"] == 1.0  # the t-interval would reach 100.25%
    stats = report.epoch_stats(report.label_configs(three, "k"), "train_accuracy")
    assert (stats["hi"] <= 1.0).all() and (stats["band"] == "interval").all()
    assert (report.epoch_stats(report.label_configs(two, "k"), "train_accuracy")["band"] == "range").all()


def _paired() -> pd.DataFrame:
    """Two settings, three shared seeds, test accuracy at the best-validation epoch set by hand."""
    rows = []
    test = {
        ("none", 0): 0.8279,
        ("none", 1): 0.8223,
        ("none", 2): 0.8268,
        ("l2", 0): 0.8756,
        ("l2", 1): 0.8748,
        ("l2", 2): 0.8791,
    }
    for (reg, seed), acc in test.items():
        for epoch, val in (
            (1, 0.7),
            (2, 0.8 if reg == "none" else 0.85),
            (3, 0.79 if reg == "none" else 0.86),
        ):
            rows.append(
                {
                    "run": f"{reg}/{seed}",
                    "status": "completed",
                    "incomplete": False,
                    "epoch": epoch,
                    "seed": seed,
                    "regularizer": reg,
                    "train.epochs": 3,
                    "data": "mnist",
                    "data.n_validation": 10000,
                    "train_accuracy": 1.0,
                    "val_accuracy": val,
                    "test_accuracy": acc if epoch == (2 if reg == "none" else 3) else 0.5,
                }
            )
    return pd.DataFrame(rows)


def test_comparison_is_paired_by_seed_with_its_interval():
    df = report.label_configs(_paired(), "regularizer")
    runs = report.run_metrics(df)
    table = compare.compare(runs)  # baseline: regularizer=none, a neutral value
    row = table[table["column"] == "test_accuracy_at_best"].iloc[0]
    assert (row["config"], row["baseline"], row["design"], row["n"]) == (
        "regularizer=l2",
        "regularizer=none",
        "paired by seed",
        3,
    )
    # differences 0.0477, 0.0525, 0.0523: mean 0.050833, s = 0.0027154, half 4.302653 s / sqrt(3)
    diffs = np.array([0.0477, 0.0525, 0.0523])
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)
    assert row["difference"] == pytest.approx(0.0508333, abs=1e-7)
    assert (row["lo"], row["hi"]) == pytest.approx((0.0508333 - half, 0.0508333 + half), abs=1e-6)
    assert row["per_seed"] == "+4.77, +5.25, +5.23" and row["selection"] == "best-validation epoch"
    assert row["se"] == pytest.approx(math.sqrt(0.851083 * 0.148917 / 10_000), rel=1e-4)
    assert not row["within_noise"]
    unpaired = compare.compare(
        report.label_configs(_paired().drop(columns="seed"), "regularizer").pipe(report.run_metrics)
    )
    assert unpaired["design"].iloc[0] == "independent (Welch)"
    sentence, small = compare.verdict(table, report.summarize(df), compare.flags(df, runs))
    assert sentence.startswith(
        "regularizer=l2 vs regularizer=none: +5.08 points test accuracy at the best-validation epoch "
        "(paired over 3 seeds: 95% interval [+4.41, +5.76]; per seed +4.77, +5.25, +5.23)"
    )
    assert "validation agrees (+6.00)" in sentence
    flags = dict(zip(small["config"], small["flags"], strict=True))
    assert flags["regularizer=l2"].startswith("still improving at the last epoch (3 of 3 runs")
    assert flags["regularizer=none"] == ""  # best epoch 2 of 3: not at the end
    with pytest.raises(ValueError, match="--baseline 'nothing' names no configuration"):
        compare.compare(runs, "nothing")


def test_one_configuration_leads_with_its_own_number():
    alone = report.label_configs(_made_up().query("k == 'A'"), "k")
    runs = report.run_metrics(alone)
    sentence, small = compare.verdict(runs.iloc[0:0], report.summarize(alone), compare.flags(alone, runs))
    # test at the best-validation epoch: 0.69, 0.71, 0.73 -> 71.00 [66.03, 75.97] (as val above, -1 point)
    assert sentence == (
        "Nothing to compare (one configuration). k=A: test accuracy (%) 71.00 [66.03, 75.97] at the "
        "best-validation epoch over 3 runs."
    )
    assert not len(small)


def test_small_differences_are_within_test_noise_and_flags_name_statuses():
    df = _paired()
    df.loc[df["regularizer"] == "l2", "test_accuracy"] = (
        df.loc[df["regularizer"] == "l2", "test_accuracy"] - 0.048
    )
    df.loc[df["run"] == "l2/2", "status"] = "stalled"
    df.loc[df["run"] == "none/2", "status"] = "frozen"  # a status a later version might write
    df = df[df["run"] != "l2/1"]
    df = report.label_configs(df, "regularizer")
    runs = report.run_metrics(df)
    row = compare.compare(runs).iloc[0]
    assert abs(row["difference"]) < 2 * row["se"] and row["within_noise"] and row["n"] == 2
    sentence, _ = compare.verdict(compare.compare(runs), report.summarize(df), compare.flags(df, runs))
    assert "within test noise (2 SE of one accuracy on 10,000 images" in sentence
    assert "(paired over 2 seeds: per seed" in sentence  # values, no interval from 2 pairs
    flags = compare.flags(df, runs)
    assert "1 of 2 runs stalled" in flags["regularizer=l2"]
    assert "fewer seeds than others (2 vs 3)" in flags["regularizer=l2"]
    assert any("frozen (a status this report does not know)" in f for f in flags["regularizer=none"])
    assert any("frozen is not one this report knows" in n for n in report.check_runs(df))


def test_learning_curves_one_line_per_config_and_split(df):
    ended = report.label_configs(df[~df["incomplete"]], "regularizer")
    ax = plots.plot_learning_curves(ended, "accuracy")
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 4  # 2 configurations x (train, val); seeds pooled into one line
    assert "regularizer=none: validation" in labels and "regularizer=l2: training" in labels
    assert len(ax.collections) == 3  # the two-seed configuration's bands (train, val) + their legend entry
    assert "band: range over 2 seeds" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_ylabel() == "accuracy (%)" and max(max(line.get_ydata()) for line in ax.get_lines()) > 1
    loss = plots.plot_learning_curves(ended, "loss")
    assert len(loss.get_lines()) == 4 and loss.get_ylabel().startswith("data loss")
    none = ended[ended["regularizer"] == "l2"]
    l2_loss, l2_cost = (none[c].to_numpy() for c in ("val_loss", "val_cost"))
    assert (l2_cost > l2_loss).all()  # the penalty: why the loss, not the cost, is drawn by default
    plotted = plots.plot_learning_curves(report.label_configs(none, "regularizer"), "loss", ("val",))
    assert np.allclose(plotted.get_lines()[0].get_ydata(), l2_loss)
    ax = plots.plot_learning_curves(ended, "accuracy", references={"book: 82.27%": 0.8227})
    text = [t for t in ax.texts if t.get_text() == "book: 82.27%"][0]
    assert text.xy[1] == pytest.approx(82.27) and 0 <= text.xy[0] <= 1  # inside the axes (axes fraction)


def test_gap_marks_best_epoch_and_early_stop():
    made = _made_up().assign(**{"train.epochs": 4})
    ax = plots.plot_gap(report.label_configs(made, "k"))
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels.count("k=A") == 1 and labels.count("_best") == 2
    assert labels.count("_stop") == 1 and "early stop" in labels  # b0 ran 2 of 4 epochs
    assert "band: mean, 95% interval over 3 seeds" in [t.get_text() for t in ax.get_legend().get_texts()]
    # k=A's gap at epoch 1: (0.60-0.50 + 0.55-0.50 + 0.80-0.74) / 3 = 0.07 -> 7 points
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(7.0)


def test_overfitting_and_n_train_figures(df):
    ended = report.label_configs(df[~df["incomplete"]], "regularizer")
    axes = plots.plot_overfitting(ended)
    assert axes.shape == (2, 2)
    assert axes[0, 0].get_shared_y_axes().joined(axes[0, 0], axes[0, 1])
    assert [len(ax.get_lines()) for ax in axes.flat] == [2, 2, 2, 2]
    assert axes[1, 0].get_ylabel().startswith("data loss")
    runs = pd.DataFrame(
        {
            "data.n_train": [100, 100, 1000, 1000, 10000],
            "final_val_accuracy": [0.6, 0.7, 0.8, 0.82, 0.9],
            "best_val_accuracy": [0.65, 0.7, 0.81, 0.83, 0.9],
        }
    )
    ax = plots.plot_accuracy_vs_n_train(runs)
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 2
    assert ax.get_ylabel() == "accuracy (%)"


SPACE_SPEC = """name: demo
search:
  optimizer.eta: {type: float, low: 0.01, high: 10.0, log: true}
  regularizer.lmbda: {type: float, low: 0.001, high: 10.0}
"""


def _make_study(folder: Path, storage, runs_dir: Path, n: int = 8, pruned=(3,), dirs: bool = True):
    """A study as hpexp.study.workers writes it: val_accuracy reported per epoch, user attrs
    run_dir/status/best_epoch; eta on a log scale, lmbda on a linear one (as SPACE_SPEC says)."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState as State

    study = optuna.create_study(study_name=folder.name, storage=storage, direction="maximize")
    study.set_user_attr("objective", "val_accuracy")
    space = {
        "optimizer.eta": FloatDistribution(0.01, 10, log=True),
        "regularizer.lmbda": FloatDistribution(0.001, 10, log=False),
    }
    rng = np.random.default_rng(0)
    history = rundir.read_history(runs_dir / "none-0")
    for number in range(n):
        eta, lmbda = 10 ** rng.uniform(-2, 1), 10 ** rng.uniform(-3, 1)
        curve = [0.5 + 0.1 * e - 0.05 * abs(math.log10(eta) + 0.3) for e in range(3)]
        is_pruned = number in pruned
        trial_dir = folder / "trials" / f"{number:04d}"
        if dirs:
            shutil.copytree(runs_dir / "none-0", trial_dir)
            rundir.write_history(trial_dir, history[:1] if is_pruned else history)
        study.add_trial(
            optuna.trial.create_trial(
                params={"optimizer.eta": eta, "regularizer.lmbda": lmbda},
                distributions=space,
                value=None if is_pruned else max(curve),
                state=State.PRUNED if is_pruned else State.COMPLETE,
                intermediate_values=dict(enumerate(curve[: 1 if is_pruned else 3], start=1)),
                user_attrs={
                    "run_dir": str(trial_dir),
                    "status": "pruned" if is_pruned else "completed",
                    "best_epoch": 3,
                },
            )
        )
    return study


@pytest.fixture(scope="module")
def study_dir(runs_dir, tmp_path_factory) -> Path:
    """A small Journal-file study with its spec.yaml and a final.json."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = tmp_path_factory.mktemp("studies") / "demo"
    folder.mkdir()
    _make_study(folder, JournalStorage(JournalFileBackend(str(folder / "journal.log"))), runs_dir)
    (folder / "spec.yaml").write_text(SPACE_SPEC)
    seeds = [
        {"seed": s, "best_epoch": 3, "val_accuracy": v, "test_accuracy": v - 0.01}
        for s, v in ((1, 0.7), (2, 0.72), (3, 0.74))
    ]
    (folder / "final.json").write_text(json.dumps({"best_trial": 1, "seeds": seeds, "note": "<b>x</b>"}))
    return folder


def test_load_trials_and_curves(study_dir):
    trials = report.load_trials(study_dir)
    assert len(trials) == 8 and list(trials["number"]) == list(range(8))
    assert set(trials["state"]) == {"COMPLETE", "PRUNED"}
    assert {"params_optimizer.eta", "params_regularizer.lmbda", "value", "best_epoch", "run_dir"} <= set(
        trials
    )
    assert trials["value"].dtype == np.float64 and math.isnan(trials.loc[3, "value"])
    assert trials.loc[3, "epochs"] == 1 and trials.loc[0, "epochs"] == 3
    curves = report.load_trial_curves(study_dir / "journal.log")
    assert len(curves) == 7 * 3 + 1 and list(curves.columns) == ["number", "state", "step", "value"]
    runs = report.load_runs(report.open_study(study_dir))
    assert set(runs["trial"]) == set(range(8)) and runs["run"].iloc[0] == "trial 0000"
    assert len(report.param_importances(study_dir)) == 0  # 7 completed trials: too few


def test_importances_with_enough_trials_have_intervals(runs_dir, tmp_path):
    import optuna

    def importances(n: int) -> pd.DataFrame:
        storage = optuna.storages.InMemoryStorage()
        study = _make_study(tmp_path / f"s{n}", storage, runs_dir, n=n, pruned=(), dirs=False)
        table = report.param_importances(study)
        assert set(table.index) == {"optimizer.eta", "regularizer.lmbda"}
        assert table["importance"].sum() == pytest.approx(1.0)
        assert ((table["lo"] <= table["importance"]) & (table["importance"] <= table["hi"])).all()
        return table

    # The objective depends on eta alone. From 24 trials PED-ANOVA still ranks lmbda first: the
    # bootstrap intervals overlap widely, which is what the page shows; from 60 eta clearly leads.
    few, many = importances(24), importances(60)
    assert few.loc["regularizer.lmbda", "lo"] < few.loc["optimizer.eta", "hi"]
    assert few.loc["optimizer.eta", "lo"] < few.loc["regularizer.lmbda", "hi"]
    assert many.loc["optimizer.eta", "importance"] > 0.9


def test_study_axes_follow_the_search_space(study_dir, tmp_path):
    study = report.open_study(study_dir)
    trials = report.load_trials(study)
    log = report.search_space_log(study, study_dir)
    assert log == {"optimizer.eta": True, "regularizer.lmbda": False}  # from spec.yaml
    axes = plots.plot_slices(trials, log=log)
    assert [ax.get_xscale() for ax in axes] == ["log", "linear"]  # lmbda spans 3 decades, yet linear
    ax = plots.plot_param_map(trials, "params_optimizer.eta", "params_regularizer.lmbda", log=log)
    assert ax.get_xlabel() == "optimizer.eta (log scale)" and ax.get_ylabel() == "regularizer.lmbda"
    best = plots.best_trial(trials)
    assert int(best["number"]) == int(trials["value"].idxmax())
    assert any(t.get_text() == f"best: trial {int(best['number'])}" for t in ax.get_legend().get_texts())
    assert len(ax.collections) == 2 + 0  # points and the best star: too few trials for a surface
    # without a spec, the distributions stored with the trials say the same
    assert report.search_space_log(study, tmp_path) == log
    fig = interactive.slices(trials, log=log)
    assert (fig.layout.xaxis.type, fig.layout.xaxis2.type) == ("log", None)
    fig = interactive.param_map(trials, "params_optimizer.eta", "params_regularizer.lmbda", log=log)
    assert (fig.layout.xaxis.type, fig.layout.yaxis.type) == ("log", "linear")


def test_study_figures(study_dir):
    trials = report.load_trials(study_dir)
    curves = report.load_trial_curves(study_dir)
    ax = plots.plot_trial_curves(curves, best=1)
    assert len([line for line in ax.get_lines() if line.get_label() == "_trial"]) == 8
    assert sorted(int(t.get_text()) for t in ax.texts) == list(range(8))  # every curve numbered
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pruned", "best: trial 1"]
    only_complete = curves[curves["state"] == "COMPLETE"]
    assert plots.plot_trial_curves(only_complete).get_legend() is None  # no "pruned" when none was
    ax = plots.plot_optimization_history(trials)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["completed", "pruned (last report)"] and legend[-1].startswith("best: trial")
    assert "failed (last report)" not in legend
    ax = plots.plot_parallel_coordinates(trials, log={"optimizer.eta": True, "regularizer.lmbda": False})
    assert len(ax.get_lines()) == 7 + 3  # one line per completed trial, one axis per dimension
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "optimizer.eta (log)",
        "regularizer.lmbda",
        "val_accuracy (%)",
    ]
    fig = interactive.trial_curves(curves, best=1)
    assert sorted(tr.name for tr in fig.data)[:2] == ["trial 0", "trial 1 best"]
    assert "trial 3 (pruned)" in [tr.name for tr in fig.data]


def _outside_scripts(page: str) -> str:
    return re.sub(r"<script>.*?</script>", "", page, flags=re.S)


def test_cli_writes_escaped_self_contained_report(runs_dir, study_dir, tmp_path, capsys):
    evil = tmp_path / "src" / "<script>alert(1)</script>"
    shutil.copytree(runs_dir / "none-0", evil)
    shutil.copytree(runs_dir / "l2-0", tmp_path / "src" / "l2")
    command.main(
        [str(tmp_path / "src"), "--by", "regularizer", "--name", "cmp", "--out", str(tmp_path / "reports")]
    )
    out = tmp_path / "reports" / "cmp"
    assert "hpexp report" not in capsys.readouterr().err
    assert {p.name for p in (out / "figures").iterdir()} == {
        "learning_curves.png",
        "gap.png",
        "overfitting.png",
    }
    assert {p.name for p in (out / "tables").iterdir()} == {
        "summary.csv",
        "runs.csv",
        "verdict.csv",
        "comparisons.csv",
    }
    page = (out / "report.html").read_text()
    assert page.count("<script>") == 1 + 3  # plotly.js once, then one script per interactive figure
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    html_text = _outside_scripts(page)
    assert "<script>alert" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", html_text)
    assert page.count("<img src='data:image/png;base64,") == 1  # the static side-by-side panels
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Report: cmp\n\n**regularizer=l2 vs regularizer=none: ")
    assert "1 seed" in readme.splitlines()[2]
    assert readme.count("![") == 3
    summary = pd.read_csv(out / "tables" / "summary.csv")
    assert list(summary["config"]) == ["regularizer=l2", "regularizer=none"]
    with pytest.raises(report.ReportError, match="--baseline 'l3' names no configuration"):
        command.main(
            [str(tmp_path / "src"), "--by", "regularizer", "--baseline", "l3", "--out", str(tmp_path)]
        )
    command.main(["--study", str(study_dir), "--out", str(tmp_path / "reports")])
    study_page = (tmp_path / "reports" / "demo" / "report.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in study_page and "<b>x</b>" not in _outside_scripts(study_page)
    study_readme = (tmp_path / "reports" / "demo" / "README.md").read_text()
    assert "too few trials (7 completed; importances need at least 20)" in study_readme
    # the finalized seeds: 0.70, 0.72, 0.74 -> 72.00 [67.03, 76.97] (mean, t-interval by hand)
    assert "val accuracy 72.00 [67.03, 76.97]%" in study_readme
    figures = {p.stem for p in (tmp_path / "reports" / "demo" / "figures").iterdir()}
    assert figures == {
        "optimization_history",
        "trial_curves",
        "slices",
        "eta_lmbda",
        "parallel_coordinates",
        "best_trial_curves",
    }
    with pytest.raises(SystemExit):
        command.main([])
    with pytest.raises(report.ReportError, match="plain folder name"):
        command.main([str(runs_dir / "l2-0"), "--name", "../x", "--out", str(tmp_path)])


def test_study_from_another_machine_uses_reported_curves(study_dir, tmp_path):
    moved = tmp_path / "demo"
    shutil.copytree(study_dir, moved)
    shutil.rmtree(moved / "trials")
    # the trials ran elsewhere: the run_dir each recorded is not on this machine
    shutil.move(study_dir / "trials", tmp_path / "elsewhere")
    try:
        page = pages.study_page(moved)
    finally:
        shutil.move(tmp_path / "elsewhere", study_dir / "trials")
    text = pages.markdown(page)
    assert "Run directories not found on this machine for 8 trial(s)" in text
    assert "reported to the storage (its run directory was not found)" in text
    assert "best_trial_curves" in page.figures


@pytest.mark.postgres
def test_report_on_a_postgresql_study(runs_dir, tmp_path, postgres_url, monkeypatch):
    import optuna

    from hpexp.study.storage import PASSWORD_ENV

    if password := os.environ.get("HPEXP_TEST_POSTGRES_PASSWORD"):
        monkeypatch.setenv(PASSWORD_ENV, password)
    name = f"report_{os.getpid()}_{int(time.time())}"
    folder = tmp_path / "studies" / name
    folder.mkdir(parents=True)
    storage = optuna.storages.RDBStorage(_with_password(postgres_url))
    try:
        _make_study(folder, storage, runs_dir)
        # as `hpexp study` leaves it: spec.yaml names the database (no password), no journal.log
        (folder / "spec.yaml").write_text(
            SPACE_SPEC.replace("name: demo", f"name: {name}") + f"storage: {postgres_url}\n"
        )
        command.main(["--study", str(folder), "--out", str(tmp_path / "reports")])
        readme = (tmp_path / "reports" / name / "README.md").read_text()
        assert f"# Study {name}" in readme and "Best of 8 trials (7 complete, 1 pruned)" in readme
        assert not (folder / "journal.log").exists()
        trials = report.load_trials(report.open_study(folder))
        assert len(trials) == 8
        assert report.search_space_log(report.open_study(folder), folder)["optimizer.eta"] is True
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def _with_password(url: str) -> str:
    """The URL for SQLAlchemy itself: the psycopg2 driver (the postgres extra) and the password."""
    password = os.environ.get("HPEXP_TEST_POSTGRES_PASSWORD")
    url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    return url.replace("://hpexp@", f"://hpexp:{password}@") if password else url


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


# Runs first in <head>: records errors (console.error, uncaught, CSP violations); after load, puts
# into the title how many plotly figures drew their SVG, which resources the page fetched, the errors.
PROBE = """<script>window.__errors=[];const __ce=console.error;
console.error=(...a)=>{window.__errors.push(a.join(' '));__ce(...a)};
addEventListener('error',e=>window.__errors.push('error: '+e.message));
document.addEventListener('securitypolicyviolation',e=>window.__errors.push('csp: '+e.blockedURI));
addEventListener('load',()=>setTimeout(()=>{const d=[...document.querySelectorAll('.plotly-graph-div')];
document.title=JSON.stringify({divs:d.length,drawn:d.filter(x=>x.querySelector('svg.main-svg')).length,
resources:performance.getEntriesByType('resource').map(r=>r.name),errors:window.__errors})},500))</script>"""


def _open_in_browser(browser: str, page: Path, tmp_path: Path) -> tuple[dict, str]:
    checked = page.with_name("checked.html")
    checked.write_text(
        page.read_text().replace("<meta charset='utf-8'>", "<meta charset='utf-8'>" + PROBE, 1)
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--enable-logging=stderr",
        "--v=0",
    ]
    done = subprocess.run(
        [browser, *flags, "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    title = re.search(r"<title>(\{.*?\})</title>", done.stdout, flags=re.S)
    assert title, done.stdout[:500]
    return json.loads(html_lib.unescape(title.group(1))), done.stderr


@pytest.mark.browser
def test_report_renders_in_a_real_browser(df, study_dir, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium: apt-get install chromium)")
    page = pages.runs_page(df[~df["incomplete"]], "regularizer")
    out = pages.write_page(page, tmp_path / "report")
    result, log = _open_in_browser(browser, out / "report.html", tmp_path)
    n = sum(len(figs) for figs in page.interactive.values())
    assert n == 3 and result["divs"] == result["drawn"] == n  # accuracy, loss, gap: each drew its SVG
    assert result["errors"] == [] and "CONSOLE" not in log.replace('CONSOLE(0)] "[.WebGL', "")
    assert all(r.startswith(("file:", "data:", "blob:")) for r in result["resources"]), result["resources"]
    # the study page: several kinds of plotly figure (scatter, lines, parallel coordinates)
    study_out = pages.write_page(pages.study_page(study_dir), tmp_path / "study")
    result, _ = _open_in_browser(browser, study_out / "report.html", tmp_path)
    assert result["divs"] == result["drawn"] >= 5 and result["errors"] == []
    assert all(r.startswith(("file:", "data:", "blob:")) for r in result["resources"]), result["resources"]
    # a page sharing one plotly.js beside it (reports/book/ style) works the same, offline
    shared = tmp_path / "shared"
    pages.write_plotly_asset(shared)
    (shared / "one" / "figures").mkdir(parents=True)
    (shared / "one" / "report.html").write_text(pages.html(page, plotly_src="../plotly.min.js"))
    assert (shared / "one" / "report.html").stat().st_size < 1_000_000  # plotly.js alone is ~4.8 MB
    result, _ = _open_in_browser(browser, shared / "one" / "report.html", tmp_path)
    assert result["divs"] == result["drawn"] == n and result["errors"] == []
