"""Reports: loaders on real tiny runs, tables against hand-computed numbers, figures, pages, browser."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from hpexp.report import command, pages, plots
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
    # best epochs 2, 3 (first of the tied 0.72s), 1 -> mean 2, s = 1, half-width 4.3027 / sqrt(3)
    assert a["n"] == 3
    assert a["best_epoch"] == pytest.approx(2.0)
    assert a["best_epoch_ci"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    # best val 0.70, 0.72, 0.74 -> mean 0.72, s = 0.02
    assert a["best_val_accuracy"] == pytest.approx(0.72)
    assert a["best_val_accuracy_ci"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    # final val 0.65, 0.72, 0.61; train at best 0.80, 0.80, 0.80; gap 0.10, 0.08, 0.06
    assert a["final_val_accuracy"] == pytest.approx((0.65 + 0.72 + 0.61) / 3)
    assert a["train_accuracy_at_best"] == pytest.approx(0.80) and a[
        "train_accuracy_at_best_ci"
    ] == pytest.approx(0)
    assert a["gap_at_best"] == pytest.approx(0.08)
    assert a["gap_at_best_ci"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert a["test_accuracy_at_best"] == pytest.approx(0.71)
    b = table.loc["k=B"]
    assert b["n"] == 1 and b["best_epoch"] == 2 and math.isnan(b["best_val_accuracy_ci"])
    assert math.isnan(b["test_accuracy_at_best"])
    shown = report.format_summary(report.summarize(_made_up(), "k")).set_index("config")
    assert shown.loc["k=A", "best_val_accuracy %"] == "72.00 ± 4.97"
    assert shown.loc["k=B", "best_val_accuracy %"] == "40.00"


def test_learning_curves_one_line_per_config_and_split(df):
    ended = report.label_configs(df[~df["incomplete"]], "regularizer")
    ax = plots.plot_learning_curves(ended, "accuracy")
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 4  # 2 configurations x (train, val); seeds pooled into one line
    assert "regularizer=none: validation" in labels and "regularizer=l2: training" in labels
    assert len(ax.collections) == 2  # the 95% bands of the two-seed configuration (train, val)
    assert len(plots.plot_learning_curves(ended, "cost").get_lines()) == 4


def test_gap_marks_best_epoch_and_early_stop():
    made = _made_up().assign(**{"train.epochs": 4})
    ax = plots.plot_gap(report.label_configs(made, "k"))
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels.count("k=A") == 1 and labels.count("_best") == 2
    assert labels.count("_stop") == 1 and "early stop" in labels  # b0 ran 2 of 4 epochs


def test_overfitting_and_n_train_figures(df):
    ended = report.label_configs(df[~df["incomplete"]], "regularizer")
    axes = plots.plot_overfitting(ended)
    assert axes.shape == (2, 2)
    assert axes[0, 0].get_shared_y_axes().joined(axes[0, 0], axes[0, 1])
    assert [len(ax.get_lines()) for ax in axes.flat] == [2, 2, 2, 2]
    runs = pd.DataFrame(
        {
            "data.n_train": [100, 100, 1000, 1000, 10000],
            "final_val_accuracy": [0.6, 0.7, 0.8, 0.82, 0.9],
            "best_val_accuracy": [0.65, 0.7, 0.81, 0.83, 0.9],
        }
    )
    ax = plots.plot_accuracy_vs_n_train(runs)
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 2


@pytest.fixture(scope="module")
def study_dir(runs_dir, tmp_path_factory) -> Path:
    """A small Journal-file study as hpexp.study.workers writes it: val_accuracy reported per epoch, user
    attrs run_dir/status/best_epoch, one pruned trial."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState as State

    folder = tmp_path_factory.mktemp("studies") / "demo"
    folder.mkdir()
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    study = optuna.create_study(study_name="demo", storage=storage, direction="maximize")
    study.set_user_attr("objective", "val_accuracy")
    space = {
        "optimizer.eta": FloatDistribution(0.01, 10, log=True),
        "regularizer.lmbda": FloatDistribution(0.001, 10, log=True),
    }
    rng = np.random.default_rng(0)
    for number in range(8):
        eta, lmbda = 10 ** rng.uniform(-2, 1), 10 ** rng.uniform(-3, 1)
        curve = [0.5 + 0.1 * e - 0.05 * abs(math.log10(eta) + 0.3) for e in range(3)]
        pruned = number == 3
        history = rundir.read_history(runs_dir / "none-0")
        trial_dir = folder / "trials" / f"{number:04d}"
        shutil.copytree(runs_dir / "none-0", trial_dir)
        rundir.write_history(trial_dir, history[:1] if pruned else history)
        study.add_trial(
            optuna.trial.create_trial(
                params={"optimizer.eta": eta, "regularizer.lmbda": lmbda},
                distributions=space,
                value=None if pruned else max(curve),
                state=State.PRUNED if pruned else State.COMPLETE,
                intermediate_values=dict(enumerate(curve[: 1 if pruned else 3], start=1)),
                user_attrs={
                    "run_dir": str(trial_dir),
                    "status": "pruned" if pruned else "completed",
                    "best_epoch": 3,
                },
            )
        )
    (folder / "final.json").write_text(json.dumps({"val_accuracy": {"mean": 0.7}, "note": "<b>x</b>"}))
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
    importances = report.param_importances(study_dir)  # PED-ANOVA: no scikit-learn, no scipy
    assert set(importances.index) == {"optimizer.eta", "regularizer.lmbda"}


def test_study_figures(study_dir):
    trials = report.load_trials(study_dir)
    ax = plots.plot_trial_curves(report.load_trial_curves(study_dir))
    assert len([line for line in ax.get_lines() if line.get_label() == "_trial"]) == 8
    assert [line.get_alpha() for line in ax.get_lines()].count(0.3) == 2  # pruned trial + its legend entry
    ax = plots.plot_optimization_history(trials)
    assert len(ax.collections) == 2 and len(ax.get_lines()) == 1
    axes = plots.plot_slices(trials)
    assert len(axes) == 2 and axes[0].get_xscale() == "log"
    ax = plots.plot_param_map(trials, "params_optimizer.eta", "params_regularizer.lmbda")
    assert len(ax.collections) >= 2  # filled contours and the trial points


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
    assert {p.name for p in (out / "tables").iterdir()} == {"summary.csv", "runs.csv"}
    page = (out / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    assert page.count("<img src='data:image/png;base64,") == 3
    assert "![" in (out / "README.md").read_text()
    summary = pd.read_csv(out / "tables" / "summary.csv")
    assert list(summary["config"]) == ["regularizer=l2", "regularizer=none"]
    command.main(["--study", str(study_dir), "--out", str(tmp_path / "reports")])
    study_page = (tmp_path / "reports" / "demo" / "report.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in study_page and "<b>x</b>" not in study_page
    figures = {p.stem for p in (tmp_path / "reports" / "demo" / "figures").iterdir()}
    assert figures == {
        "optimization_history",
        "trial_curves",
        "importances",
        "slices",
        "eta_lmbda",
        "best_trial_curves",
    }
    with pytest.raises(SystemExit):
        command.main([])
    with pytest.raises(report.ReportError, match="plain folder name"):
        command.main([str(runs_dir / "l2-0"), "--name", "../x", "--out", str(tmp_path)])


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.browser
def test_report_renders_in_a_real_browser(df, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium: apt-get install chromium)")
    page = pages.runs_page(df[~df["incomplete"]], "regularizer")
    out = pages.write_page(page, tmp_path / "report")
    # A copy of the page with a probe that, after load, puts "<loaded>/<total>" images in the title.
    probe = (
        "<script>addEventListener('load',()=>{const i=[...document.images];"
        "document.title=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})</script>"
    )
    checked = out / "checked.html"
    checked.write_text((out / "report.html").read_text().replace("</body>", probe + "</body>"))
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
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    title = re.search(r"<title>(\d+)/(\d+)</title>", dom)
    assert title, dom[:500]
    assert title.group(1) == title.group(2) == str(len(page.figures)) == "3"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", (out / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 20_000  # a page of text and figures, not a blank screen
