"""The book registry: every preset composes, trains and carries its metadata; the computed
experiments (baselines, the single neuron, chapter 5's speeds) give the book's numbers."""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import foreground
from hydra.utils import get_method
from omegaconf import OmegaConf, open_dict

from hpexp.book import command
from hpexp.book import experiments as book
from hpexp.book import figures as book_figures
from hpexp.book import pages as book_report
from hpexp.train import rundir
from hpexp.train.runner import compose
from hpexp.train.runner import run as hpexp_run

PRESETS = sorted(p.stem for p in book.presets_dir().glob("*.yaml"))
IDS = [e.id for e in book.registry()]
# Chapter 6's convolutional presets take over a minute together for one epoch: marked slow.
TRAINABLE = [pytest.param(e.id, marks=[pytest.mark.slow] if e.chapter == 6 else []) for e in book.registry()]


def test_registry_reads_every_preset_of_chapters_1_3_5():
    assert sorted(IDS) == PRESETS
    assert {e.chapter for e in book.registry()} >= {1, 3, 5}
    assert len(PRESETS) >= 35


@pytest.mark.parametrize("experiment_id", PRESETS)
def test_every_preset_carries_complete_metadata(experiment_id):
    e = book.load(experiment_id)
    for key in book.REQUIRED:
        assert key in e.meta, key
    for key in ("section", "demonstrates", "source", "note"):
        assert str(e.meta[key]).strip(), key
    assert e.checks, "at least the headline check"
    assert "tolerance" not in e.meta, "tolerances are derived (book.tolerance), never set by hand"
    for check in e.checks:
        assert check.metric and check.selection in book.SELECTIONS
    if all(c.value is None for c in e.checks):
        assert e.meta.get("figure") and e.plots, "a preset without a number must draw the book's figure"
    get_method(e.runner)  # the runner exists


@pytest.mark.parametrize("experiment_id", PRESETS)
def test_every_run_of_every_preset_composes(experiment_id):
    e = book.load(experiment_id)
    for name in e.runs:
        cfg = book.compose_run(e, name, seed=1)
        assert cfg.choices.experiment == f"book/{experiment_id}"
        assert cfg.seed == 1 and cfg.book.chapter == e.chapter
        if e.runner == "hpexp.train.runner.run":
            assert cfg.data.scale == 256.0, "the book's pixels are byte / 256"


def _tiny(cfg, mnist_dir):
    """One epoch on 200 images: enough to see the preset run end to end."""
    with open_dict(cfg):
        cfg.data.dir = str(mnist_dir)
        cfg.data.n_train = 200
        cfg.data.n_validation = min(cfg.data.n_validation, 200)
        cfg.train.epochs = 1
        cfg.train.batch_size = min(cfg.train.batch_size, 200)
    return cfg


@pytest.mark.parametrize("experiment_id", TRAINABLE)
def test_every_preset_trains_one_epoch_on_a_small_subset(experiment_id, mnist_dir, tmp_path):
    e = book.load(experiment_id)
    if e.runner.endswith(".svm"):
        pytest.importorskip("sklearn")
    name = next(iter(e.runs))
    out = get_method(e.runner)(_tiny(book.compose_run(e, name, seed=0), mnist_dir), tmp_path / "run")
    summary = rundir.read_summary(out)
    assert summary["status"] in ("completed", "diverged")
    history = rundir.read_history(out)
    assert history and all(c.metric in history[-1] for c in e.checks if c.run == name)


def test_average_darkness_gives_exactly_22_25_percent(mnist_dir, tmp_path):
    e = book.load("ch1-baseline-darkness")
    cfg = book.compose_run(e, "", seed=0, extra=[f"data.dir={mnist_dir}"])
    out = get_method(e.runner)(cfg, tmp_path)
    assert rundir.read_history(out)[-1]["test_accuracy"] == 2225 / 10_000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chapter_5_initial_speeds_have_the_books_ordering_and_size(seed, mnist_dir, tmp_path):
    e = book.load("ch5-speed-init")
    for name, layers in (("2-layers", 2), ("3-layers", 3), ("4-layers", 4)):
        cfg = book.compose_run(e, name, seed, extra=[f"data.dir={mnist_dir}"])
        history = rundir.read_history(get_method(e.runner)(cfg, tmp_path / name))
        speeds = [history[0][f"speed_{i}"] for i in range(1, layers + 1)]
        assert speeds == sorted(speeds), f"{name}: earlier layers must learn slower, got {speeds}"
        book_speeds = [c.value for c in e.checks if c.run == name]
        for ours, theirs in zip(speeds, book_speeds, strict=True):
            assert abs(math.log10(ours / theirs)) < 0.6, (name, speeds, book_speeds)  # within 4x
    assert speeds[-1] / speeds[0] > 20, "with 4 hidden layers the first learns ~100x slower than the last"


@pytest.mark.parametrize(
    ("experiment_id", "epoch", "output"),
    [
        ("ch3-toy-quad-good", 0, 0.8176),
        ("ch3-toy-quad-good", 300, 0.0940),
        ("ch3-toy-quad-bad", 0, 0.9820),
        ("ch3-toy-quad-bad", 150, 0.9334),
        ("ch3-toy-quad-bad", 300, 0.2028),
    ],
)
def test_single_neuron_matches_the_books_numbers(experiment_id, epoch, output, tmp_path):
    e = book.load(experiment_id)
    history = rundir.read_history(get_method(e.runner)(book.compose_run(e, "", 0), tmp_path))
    assert history[epoch]["epoch"] == epoch
    assert history[epoch]["output"] == pytest.approx(output, abs=5e-5)


def test_cross_entropy_neuron_has_no_slow_start(tmp_path):
    """From w = b = 2 the quadratic cost barely moves in 50 steps; the cross-entropy learns at once."""
    drops = {}
    for experiment_id in ("ch3-toy-quad-bad", "ch3-toy-ce-bad"):
        e = book.load(experiment_id)
        h = rundir.read_history(get_method(e.runner)(book.compose_run(e, "", 0), tmp_path / experiment_id))
        drops[experiment_id] = (h[0]["cost"] - h[50]["cost"]) / h[0]["cost"]
    assert drops["ch3-toy-ce-bad"] > 5 * drops["ch3-toy-quad-bad"]


HISTORY = [
    {"epoch": 1, "val_accuracy": 0.5, "test_accuracy": 0.40, "test_cost": 3.0},
    {"epoch": 2, "val_accuracy": 0.7, "test_accuracy": 0.60, "test_cost": 1.0},
    {"epoch": 3, "val_accuracy": 0.6, "test_accuracy": 0.65, "test_cost": 2.0},
]


@pytest.mark.parametrize(
    ("metric", "selection", "epoch", "expected"),
    [
        ("test_accuracy", "peak", None, 0.65),
        ("test_accuracy", "final", None, 0.65),
        ("test_accuracy", "first", None, 0.40),
        ("test_accuracy", "epoch", 2, 0.60),
        ("test_cost", "min", None, 1.0),
        ("test_cost", "epoch_of_min", None, 2),
        ("test_accuracy", "epoch_of_max", None, 3),
        ("test_accuracy", "best_val", None, 0.60),
        ("train_accuracy", "peak", None, math.nan),
    ],
)
def test_select_reads_the_books_selection_rules(metric, selection, epoch, expected):
    check = book.Check(metric=metric, selection=selection, epoch=epoch, value=None)
    assert book.select(HISTORY, check) == pytest.approx(expected, nan_ok=True)


def test_run_then_report_compares_with_the_book(tmp_path, capsys):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    argv = ["--runs-dir", str(runs), "--reports-dir", str(reports)]
    command.main([*argv, "run", "ch3-toy-quad-good", "ch3-toy-quad-bad"])
    assert "left ~" in capsys.readouterr().out
    command.main([*argv, "run", "ch3-toy-quad-good"])  # already done: nothing to rerun
    assert "[1/" not in capsys.readouterr().out
    summary = (reports / "README.md").read_text()
    assert "| [ch3-toy-quad-good](ch3-toy-quad-good/README.md) | 3 | output at epoch 300 | 0.09 |" in summary
    page = (reports / "ch3-toy-quad-bad" / "README.md").read_text()
    assert "| output at epoch 150 | 0.93 | 0.9334 (+0.00342; seed 0) |" in page and "| yes / yes |" in page
    assert (reports / "ch3-toy-quad-bad" / "toy.png").stat().st_size > 0
    command.main([*argv, "list"])
    listed = capsys.readouterr().out
    assert "ch3-toy-quad-good" in listed and "ch5-speed-init" in listed
    row = next(line for line in listed.splitlines() if line.startswith("ch3-toy-quad-bad "))
    assert "0.2028 (seed 0)" in row and "0.2028 (n=1)" in row


def test_report_with_no_runs_lists_every_row_as_not_run_and_writes_no_figure(tmp_path):
    book_report.write([e.id for e in book.registry()], tmp_path / "runs", tmp_path / "reports")
    summary = (tmp_path / "reports" / "README.md").read_text()
    rows = sum(c.value is not None for e in book.registry() for c in e.checks)
    contrasts = sum(len(e.contrasts) for e in book.registry())
    assert summary.count("| not run | not run | - |") == rows
    assert summary.count("| not run | not run | not run | not run |") == contrasts
    assert not list((tmp_path / "reports").rglob("*.png")), "a figure with no data is never written"
    page = (tmp_path / "reports" / "ch6-filters" / "README.md").read_text()
    assert "not run" in page


def test_unknown_experiment_and_missing_ids_are_clear_errors():
    with pytest.raises(ValueError, match="hpexp book list"):
        book.load("ch9-nothing")
    with pytest.raises(ValueError, match="--all"):
        command.main(["run"])


def test_estimate_grows_with_the_work():
    small = compose(["+experiment=book/ch1-mlp30-quad"])
    large = compose(["+experiment=book/ch1-mlp100-quad"])
    assert 0 < book.estimate_seconds(small) < book.estimate_seconds(large)
    assert np.isfinite(book.estimate_seconds(compose(["+experiment=book/ch3-toy-quad-good"])))


def test_a_resumed_run_is_estimated_by_the_epochs_it_has_left(tmp_path):
    cfg = compose(["+experiment=book/ch1-mlp30-quad"])
    out = tmp_path / "run"
    assert book.estimate_left(cfg, out) == book.estimate_seconds(cfg)  # nothing yet: all of it
    done = cfg.train.epochs // 3
    rundir.write_summary(out, {"status": "interrupted", "epochs_run": done})
    assert book.estimate_left(cfg, out) == book.estimate_seconds(cfg)  # no checkpoint: trains anew
    (out / book.CHECKPOINT).write_bytes(b"")
    left = book.estimate_left(cfg, out)
    assert left == pytest.approx(
        book.estimate_seconds(cfg) * (1 - (cfg.train.epochs // 3) / cfg.train.epochs)
    )


def test_run_selects_by_id_chapter_or_all():
    from argparse import Namespace

    def chosen(ids=(), chapter=None, all=False):
        return [e.id for e in command._select(Namespace(ids=list(ids), chapter=chapter, all=all))]

    assert chosen(["ch3-overfit-1k"]) == ["ch3-overfit-1k"]
    assert set(chosen(chapter=[1, 5])) == {e.id for e in book.registry() if e.chapter in (1, 5)}
    assert chosen(all=True) == IDS
    assert chosen(["ch3-overfit-1k"], chapter=[5]) == []


def _fake_runs(root, experiment_id, histories):
    """Finished run directories with the preset's config and the given histories, one per seed."""
    e = book.load(experiment_id)
    for seed, history in enumerate(histories):
        d = root / experiment_id / f"seed{seed}"
        rundir.write_history(d, history)
        rundir.write_summary(d, {"status": "completed"})
        OmegaConf.save(book.compose_run(e, "", seed), d / "config.yaml")


def test_best_of_three_reads_every_row_from_one_run(tmp_path):
    """Chapter 1 quotes the best of three runs: the book's-rule view picks the seed with the best peak
    and reads the first and final epochs from that same seed, not each row's best seed."""
    e = book.load("ch1-mlp30-quad")
    curves = [(0.91, 0.950, 0.949), (0.83, 0.955, 0.950), (0.90, 0.940, 0.939)]  # first, peak, final
    _fake_runs(
        tmp_path, e.id, [[{"epoch": k + 1, "test_accuracy": v} for k, v in enumerate(c)] for c in curves]
    )
    assert book.chosen_seed(e, tmp_path) == 1
    rows = {r["check"]: r for r in (book.compare(e, c, tmp_path) for c in e.checks)}
    assert rows["peak test_accuracy"]["rule"] == 0.955
    assert rows["first test_accuracy"]["rule"] == 0.83, "the best run's own first epoch, not seed 0's 0.91"
    assert rows["final test_accuracy"]["rule"] == 0.950
    assert {r["chosen_seed"] for r in rows.values()} == {1}
    first = rows["first test_accuracy"]
    assert first["mean"] == pytest.approx((0.91 + 0.83 + 0.90) / 3)
    assert first["diff_rule"] == pytest.approx(0.83 - 0.9129)


def test_without_a_pick_the_book_ran_once_and_the_rule_takes_the_first_seed(tmp_path):
    e = book.load("ch3-ce-mlp30")
    _fake_runs(tmp_path, e.id, [[{"epoch": 1, "test_accuracy": v}] for v in (0.950, 0.960, 0.955)])
    row = book.compare(e, e.checks[0], tmp_path)
    assert row["chosen_seed"] == 0 and row["rule"] == 0.950


def test_tolerance_is_the_largest_of_rounding_seed_spread_and_test_set_resolution():
    accuracy = book.Check(metric="test_accuracy", selection="peak", value=0.95)
    # three seeds nearly equal: the binomial SE on 10,000 test images sets it
    tol, term = book.tolerance(accuracy, [0.9500, 0.9501, 0.9499], 10_000)
    assert term == "binomial SE" and tol == pytest.approx(math.sqrt(0.95 * 0.05 / 10_000))
    # seeds far apart: twice their standard deviation
    tol, term = book.tolerance(accuracy, [0.93, 0.95, 0.97], 10_000)
    assert term == "2 x seed std" and tol == pytest.approx(2 * 0.02)
    # a number the book rounds ("about 0.09"): half a unit of its last digit
    toy = book.Check(metric="output", selection="final", value=0.09)
    assert book.tolerance(toy, [0.094], None) == (pytest.approx(0.005), "the book's rounding")
    # in log10 units for orders of magnitude
    speed = book.Check(metric="speed_1", selection="first", value=0.01, log=True)
    tol, _ = book.tolerance(speed, [0.01, 0.1, 1.0], None)
    assert tol == pytest.approx(2.0)  # log10 values 2, 1, 0: std 1


def test_an_accuracy_row_with_a_tolerance_over_3_points_is_qualitative(tmp_path):
    e = book.load("ch3-hp-784-10-d")  # 100 validation images: the binomial SE alone is ~4.9 points
    _fake_runs(tmp_path, e.id, [[{"epoch": 4, "val_accuracy": v}] for v in (0.60, 0.61, 0.62)])
    row = book.compare(e, e.checks[0], tmp_path)
    assert row["tolerance"] > book.QUALITATIVE_POINTS
    assert row["reproduced"] == row["reproduced_rule"] == "qualitative"


def test_a_tolerance_of_exactly_3_points_is_not_over_3(tmp_path):
    e = book.load("ch3-hp-784-10-a")  # 100 validation images at 10%: the binomial SE is 3.0 points
    _fake_runs(tmp_path, e.id, [[{"epoch": 1, "val_accuracy": 0.10}] for _ in range(3)])
    row = book.compare(e, e.checks[0], tmp_path)
    assert row["tolerance"] == pytest.approx(0.03) and row["tolerance_term"] == "binomial SE"
    assert row["reproduced"] == row["reproduced_rule"] == "yes"


def test_the_books_eleven_curves_are_carried_and_compared(tmp_path):
    ids = ["ch3-multiple-eta", "ch3-winit-30", "ch3-winit-100", "ch3-overfit-full", "ch3-l2-full-mlp30"]
    series = [book_figures.book_series(i) for i in ids]
    assert sum(s.groupby(["metric", "run"]).ngroups for s in series) == 11
    e = book.load("ch3-overfit-full")
    theirs = book_figures.book_series(e.id)
    test = theirs[theirs["metric"] == "test_accuracy"]
    assert test["epoch"].min() == 1 and test["value"].max() == pytest.approx(0.9533)  # the book's peak
    # our mean one point above the book at every epoch: mean and max difference 1 point
    ours = pd.DataFrame(
        [
            {"run": "", "seed": s, "epoch": ep, "test_accuracy": v + 0.01 + (s - 1) * 0.002}
            for s in range(3)
            for ep, v in zip(test["epoch"], test["value"], strict=True)
        ]
    )
    rows = {r["series"]: r for r in book_figures.curve_differences(e, ours)}
    assert rows["test_accuracy"]["mean_abs"] == pytest.approx(1.0)
    assert rows["test_accuracy"]["max_abs"] == pytest.approx(1.0) and rows["test_accuracy"]["epochs"] == 30
    assert rows["train_accuracy"]["epochs"] == 0, "no training accuracy of ours: nothing compared"


def test_figures_hold_our_data_and_the_books_marks(tmp_path):
    """The y-limits widen to hold a mean below the preset's range and every mark of the book."""
    e = book.load("ch1-mlp100-quad")  # preset ylim starts at 85; our mean here sits near 83
    _fake_runs(tmp_path, e.id, [[{"epoch": k, "test_accuracy": 0.80 + 0.001 * k} for k in range(1, 31)]] * 3)
    df = book_figures.curves(e, tmp_path)
    fig, ax = plt.subplots()
    book_figures.plot_curves(ax, df, e, e.plots[0], chosen=0)
    book_figures._fit_limits(ax, e.plots[0])
    low, high = ax.get_ylim()
    assert low <= 80.1 and high >= 96.59  # our first epoch and the book's peak
    labels = ax.get_legend_handles_labels()[1]
    assert any("95% interval" in label for label in labels) and any(
        label.startswith("book") for label in labels
    )
    plt.close(fig)


def test_an_accuracy_band_stays_between_0_and_100_percent(tmp_path):
    """Three seeds far apart near 100%: the t interval of their mean (t = 4.30) would pass 100%."""
    e = book.load("ch1-mlp30-quad")
    runs = [[{"epoch": k, "test_accuracy": v} for k in range(1, 4)] for v in (0.999, 0.90, 0.999)]
    _fake_runs(tmp_path, e.id, runs)
    fig, ax = plt.subplots()
    book_figures.plot_curves(ax, book_figures.curves(e, tmp_path), e, e.plots[0], chosen=0)
    (band,) = [c for c in ax.collections if "95% interval" in str(c.get_label())]
    ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
    assert ys.max() <= 100.0 and ys.min() > 80.0
    assert ys.max() == pytest.approx(100.0)  # it was clipped, not narrow
    plt.close(fig)


# --- the committed reports/book: data behind every figure, one run per page, reproducible --------

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "book"


def test_no_committed_figure_is_empty():
    """Every PNG under reports/book has data: its page's figures.json counts our points in it, and a
    curve figure's metrics are columns of the page's committed history.csv."""
    pngs = sorted(REPORTS.glob("*/*.png"))
    assert pngs, "reports/book holds figures"
    for png in pngs:
        sidecar = png.parent / "figures.json"
        assert sidecar.exists(), f"{png}: no figures.json beside it"
        assert json.loads(sidecar.read_text())["points"].get(png.stem, 0) > 0, f"{png}: drawn without data"
        spec = next(
            s
            for s in book.load(png.parent.name).plots or [{"name": png.stem, "y": [png.stem]}]
            if s["name"] == png.stem
        )
        if spec.get("x", "epoch") == "epoch" and not spec.get("kind"):
            history = pd.read_csv(png.parent / "history.csv")
            assert any(history[m].notna().any() for m in spec.get("y", []) if m in history), png


def _page_rows(page: str) -> dict[str, list[str]]:
    table = [
        line
        for line in page.splitlines()
        if line.startswith("| ") and not line.startswith(("| check", "| ---"))
    ]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}


def test_a_chapter_1_page_reads_every_row_from_one_run():
    """ch1-mlp30-quad's committed page: the book's-rule column names one seed for every row, that
    seed has the best peak in the committed history, and each row's value is that seed's own."""
    page = (REPORTS / "ch1-mlp30-quad" / "README.md").read_text()
    history = pd.read_csv(REPORTS / "ch1-mlp30-quad" / "history.csv")
    rows = _page_rows(page)
    assert set(rows) == {"peak test_accuracy", "first test_accuracy", "final test_accuracy"}
    seeds = {re.search(r"seed (\d+)\)", cells[2]).group(1) for cells in rows.values()}
    assert len(seeds) == 1, f"rows from different runs: {seeds}"
    seed = int(seeds.pop())
    peaks = history.groupby("seed")["test_accuracy"].max()
    assert seed == peaks.idxmax(), "the run chosen is the one with the best peak, as the book chose"
    run = history[history["seed"] == seed].sort_values("epoch")["test_accuracy"]
    ours = {
        "peak test_accuracy": run.max(),
        "first test_accuracy": run.iloc[0],
        "final test_accuracy": run.iloc[-1],
    }
    for check, value in ours.items():
        assert rows[check][2].startswith(f"{100 * value:.2f}%"), (check, rows[check][2], value)


@pytest.mark.parametrize(
    ("experiment_id", "run"),
    [("ch5-speed-init", "2-layers"), ("ch5-speed-init", "4-layers"), ("ch3-toy-quad-bad", "")],
)
def test_fast_rows_rerun_equal_what_is_committed(experiment_id, run, mnist_dir, tmp_path):
    """Re-run rows that take seconds and are deterministic (float64, one network, no population) and
    compare with the committed history.csv, written with 6 significant digits: equal to 1e-5
    relative, so an engine change that moves the numbers is seen here."""
    e = book.load(experiment_id)
    committed = pd.read_csv(
        REPORTS / experiment_id / "history.csv", keep_default_na=False, na_values=[""], dtype={"run": str}
    )
    committed = committed[(committed["run"].fillna("") == run) & (committed["seed"] == 0)]
    extra = [f"data.dir={mnist_dir}"] if e.runner.endswith("speed_of_learning") else []
    cfg = book.compose_run(e, run, 0, extra=extra)
    assert cfg.get("dtype", "float64") == "float64" or e.runner.endswith("toy_neuron")
    history = pd.DataFrame(rundir.read_history(get_method(e.runner)(cfg, tmp_path)))
    columns = [
        c for c in committed.columns if c not in ("run", "seed", "epoch") and committed[c].notna().any()
    ]
    assert columns
    merged = committed.merge(history, on="epoch", suffixes=("_committed", ""))
    assert len(merged) == len(committed)
    for c in columns:
        np.testing.assert_allclose(merged[c], merged[f"{c}_committed"], rtol=1e-5, atol=1e-12, err_msg=c)


def test_resume_ignores_the_book_block_and_options_added_since(tmp_path):
    e = book.load("ch3-toy-quad-good")
    cfg = book.compose_run(e, "", 0)
    out = get_method(e.runner)(cfg, tmp_path / "run")
    assert book._is_done(out, cfg)
    saved = OmegaConf.load(out / "config.yaml")
    with open_dict(saved):
        del saved.data["name"]  # an option the engine did not have when the run was made
        saved.book.value = 0.5  # the book's metadata
    OmegaConf.save(saved, out / "config.yaml")
    assert book._is_done(out, cfg)
    with open_dict(saved):
        saved.optimizer.eta = 99.0  # a real change: the run must be redone
    OmegaConf.save(saved, out / "config.yaml")
    assert not book._is_done(out, cfg)


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("experiment_id", ["ch3-overfit-1k", "ch6-conv1-fc100"])
def test_an_interrupted_book_run_goes_on_from_its_checkpoint(experiment_id, mnist_dir, tmp_path):
    """A session ends mid-run: `hpexp book run` continues each run from its checkpoint and ends with
    the history an uninterrupted run has (MLP seeds train as one population, conv nets one by one)."""
    from hpexp.train.runner import run_population

    e = book.load(experiment_id)
    extra = [f"data.dir={mnist_dir}", "data.n_train=200", "data.n_validation=200", "train.epochs=4"]
    book.run_experiments([e], seeds=2, runs_dir=tmp_path / "whole", extra=extra)

    cut = tmp_path / "cut"
    cfgs = [book.compose_run(e, "", k, extra) for k in range(2)]
    outs = [cut / e.id / f"seed{k}" for k in range(2)]

    def stop_after_2(record):
        if record["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_population(cfgs, outs, on_epochs=[stop_after_2, None], progress=False)
    assert (outs[0] / rundir.CHECKPOINT).exists()
    before = rundir.read_history(outs[0])
    assert len(before) == 2
    book.run_experiments([e], seeds=2, runs_dir=cut, extra=extra)
    # The cut came in epoch 2's hook, before its checkpoint: epoch 1 is kept, not trained again (the
    # same timing), epoch 2 is trained again from epoch 1's state.
    assert rundir.read_history(outs[0])[0]["seconds"] == before[0]["seconds"]
    for k in range(2):
        whole = pd.DataFrame(rundir.read_history(tmp_path / "whole" / e.id / f"seed{k}"))
        resumed = pd.DataFrame(rundir.read_history(outs[k]))
        pd.testing.assert_frame_equal(
            resumed.drop(columns="seconds", errors="ignore"), whole.drop(columns="seconds", errors="ignore")
        )
        assert not (outs[k] / rundir.CHECKPOINT).exists()
        status = rundir.read_summary(outs[k])["status"]
        assert status == rundir.read_summary(tmp_path / "whole" / e.id / f"seed{k}")["status"] != "running"


def test_a_checkpoint_of_another_config_is_not_resumed(mnist_dir, tmp_path):
    from hpexp.train.runner import run_population

    e = book.load("ch3-overfit-1k")
    extra = [f"data.dir={mnist_dir}", "data.n_train=200", "data.n_validation=200", "train.epochs=3"]
    out = tmp_path / e.id / "seed0"

    def stop(record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        run_population(
            [book.compose_run(e, "", 0, [*extra, "optimizer.eta=0.01"])],
            [out],
            on_epochs=[stop],
            progress=False,
        )
    assert (out / rundir.CHECKPOINT).exists()
    book.run_experiments([e], seeds=1, runs_dir=tmp_path, extra=extra)
    history = rundir.read_history(out)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert OmegaConf.load(out / "config.yaml").optimizer.eta == 0.5


def test_a_network_trained_for_one_experiment_is_copied_not_retrained_for_another(
    mnist_dir, tmp_path, monkeypatch
):
    """Chapter 6's dropout network is ch6-dropout-2fc1000's seed k, ch6-ensemble5's member k and
    (k = 0) ch6-filters' network: `hpexp book run` trains each once and copies it where the other
    experiments need it, saying so in provenance.json; a member no twin has is trained."""
    from hpexp.train import ensemble

    extra = [f"data.dir={mnist_dir}", "data.n_train=60", "data.n_validation=100", "train.epochs=1"]
    dropout, filters, vote = (book.load(i) for i in ("ch6-dropout-2fc1000", "ch6-filters", "ch6-ensemble5"))
    assert not book.run_experiments([dropout], seeds=1, runs_dir=tmp_path, extra=extra)
    trained = tmp_path / dropout.id / "seed0"
    assert (trained / "weights.npz").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("trained a network that was already trained")

    monkeypatch.setattr(ensemble, "run_one", no_training)
    assert not book.run_experiments([filters], seeds=1, runs_dir=tmp_path, extra=extra)
    drawn = tmp_path / filters.id / "seed0"
    assert (drawn / "filters.png").exists()
    assert (drawn / "history.csv").read_text() == (trained / "history.csv").read_text()
    provenance = json.loads((tmp_path / filters.id / "provenance.json").read_text())
    assert [p["copied"] for p in provenance.values()] == [[f"{filters.id}/seed0 <- {dropout.id}/seed0"]]
    book_report.write([filters.id], tmp_path, tmp_path / "pages")  # the page says so too
    page = (tmp_path / "pages" / filters.id / "README.md").read_text()
    assert f"Copied, not trained again: {filters.id}/seed0 <- {dropout.id}/seed0 (" in page

    monkeypatch.undo()  # member 1 has no twin: it trains
    assert not book.run_experiments([vote], seeds=1, runs_dir=tmp_path, extra=[*extra, "ensemble.members=2"])
    members = tmp_path / vote.id / "seed0" / "members"
    provenance = json.loads((tmp_path / vote.id / "provenance.json").read_text())
    (entry,) = provenance.values()
    assert entry["copied"] == [f"{vote.id}/seed0/members/member0 <- {dropout.id}/seed0"]
    assert (members / "member0" / "history.csv").read_text() == (trained / "history.csv").read_text()
    assert rundir.read_summary(members / "member1")["seed"] == 1
    assert rundir.read_summary(tmp_path / vote.id / "seed0")["status"] == "completed"
    # The twin is another experiment's, whatever its folder: the copy's config is this run's.
    saved = OmegaConf.load(members / "member0" / "config.yaml")
    assert saved.choices.experiment == "book/ch6-ensemble5" and saved.ensemble.members == 2


def test_the_committed_summary_and_pages_regenerate_from_the_committed_runs(tmp_path):
    """reports/book/runs holds the run folders behind every page: `hpexp book report` from a clone
    writes the summary, a page and its per-epoch data exactly as committed (a stale page, or a run
    folder left out of the commit, fails here)."""
    ids = ["ch3-overfit-1k", "ch5-speed-init"]
    book_report.write(ids, REPORTS / "runs", tmp_path)
    assert (tmp_path / "README.md").read_text() == (REPORTS / "README.md").read_text()
    for i in ids:
        for name in ("README.md", "history.csv", "figures.json"):
            assert (tmp_path / i / name).read_text() == (REPORTS / i / name).read_text(), f"{i}/{name}"


def test_a_copied_run_does_not_rescale_the_time_left(capsys):
    """A group copied from a twin takes no time: counted as trained, it made `hpexp book run`
    announce ~0 s left for hours of training."""
    progress = book.Progress(total=5400.0, count=2)
    progress.start("ch6-conv2-tanh/sigmoid seed0,1,2", 3600.0)
    progress.finish("copied")
    assert progress._left(0) == pytest.approx(1800.0)
    assert "left ~30m00s" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_book_run_says_so_in_one_line_and_the_same_command_goes_on(
    mnist_dir, tmp_path, signum, code
):
    """SIGTERM (a session's end, a scheduler) killed `hpexp book run` without a word, and Ctrl-C
    printed a traceback; now both stop it in one line, the run keeps its checkpoint, and the same
    command finishes it."""
    import subprocess
    import sys
    import time

    command = [
        sys.executable, "-m", "hpexp.cli", "book", "run", "ch3-overfit-1k", "--seeds", "1",
        "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "pages"),
        "--override", f"data.dir={mnist_dir}", "--override", "train.epochs=100",
    ]  # fmt: skip
    child = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=foreground,
    )
    out = tmp_path / "runs" / "ch3-overfit-1k" / "seed0"
    while not (out / rundir.CHECKPOINT).exists() or len(rundir.read_history(out)) < 2:
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert (
        err.strip().splitlines()[-1]
        == f"hpexp book: interrupted ({name}); run the same command again to go on"
    )
    assert "Traceback" not in err
    assert rundir.read_summary(out)["status"] == "interrupted" and (out / rundir.CHECKPOINT).exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert rundir.read_summary(out)["status"] == "completed"
    assert [r["epoch"] for r in rundir.read_history(out)] == list(range(1, 101))


def test_a_pages_training_time_counts_each_trained_epoch_once_and_no_copy(tmp_path):
    """A group resumed in a second process records only that process's seconds in provenance.json;
    the page's training time comes from the epochs the runs hold, and leaves out copied runs."""
    runs = tmp_path / "runs"
    exp = runs / "ch6-conv2-tanh"
    for run, seconds in [("seed0/tanh", [60.0, 90.0]), ("seed1/tanh", [30.0]), ("seed0/sigmoid", [600.0])]:
        (exp / run).mkdir(parents=True)
        pd.DataFrame({"epoch": range(1, len(seconds) + 1), "seconds": seconds}).to_csv(
            exp / run / "history.csv", index=False
        )
    (exp / "provenance.json").write_text(
        json.dumps(
            {
                "ch6-conv2-tanh/tanh seed1": {
                    "commit": "c1",
                    "seconds": 31.0,
                    "status": "completed",
                    "finished": "2026-01-01T00:00:00Z",
                },
                "ch6-conv2-tanh/sigmoid seed0": {
                    "commit": "c1",
                    "seconds": 0.5,
                    "status": "completed",
                    "finished": "2026-01-01T00:00:00Z",
                    "copied": ["ch6-conv2-tanh/seed0/sigmoid <- ch6-conv2-fc100-sigmoid/seed0"],
                },
            }
        )
    )
    lines = book_report._provenance(book.load("ch6-conv2-tanh"), runs)
    assert "training time 3.0 min over 3 epochs" in lines[0]
    assert "ch6-conv2-tanh/seed0/sigmoid <- ch6-conv2-fc100-sigmoid/seed0" in lines[2]
    provenance = json.loads((exp / "provenance.json").read_text())
    del provenance["ch6-conv2-tanh/tanh seed1"]  # every run copied (as ch6-filters' one run is)
    (exp / "provenance.json").write_text(json.dumps(provenance))
    for run in ("seed0/tanh", "seed1/tanh"):
        (exp / run / "history.csv").unlink()
        (exp / run).rmdir()
    lines = book_report._provenance(book.load("ch6-conv2-tanh"), runs)
    assert "training time" not in lines[0] and "no training of its own" in lines[0]


def test_a_comparison_of_two_experiments_is_paired_by_seed(tmp_path):
    """ReLU against sigmoid: the seeds move both networks together (+-0.4 points), ReLU is higher by
    0.15-0.25 points on every seed. Unpaired, the two intervals overlap; paired, the difference's
    interval is mean 0.20 +- t(0.975, 2) x 0.05 / sqrt(3) points and excludes 0."""
    e = book.load("ch6-conv2-relu")
    shared = [0.0, 0.004, -0.004]
    gains = [0.0015, 0.0020, 0.0025]
    relu = [0.990 + s for s in shared]
    sigmoid = [0.990 + s - g for s, g in zip(shared, gains, strict=True)]
    for experiment_id, values in [("ch6-conv2-relu", relu), ("ch6-conv2-fc100-sigmoid", sigmoid)]:
        _fake_runs(
            tmp_path,
            experiment_id,
            [[{"epoch": 1, "val_accuracy": 0.99, "test_accuracy": v}] for v in values],
        )
    (contrast,) = e.contrasts
    row = book.measure(e, contrast, tmp_path)
    half = 4.302652729911275 * 0.0005 / math.sqrt(3)  # t quantile with 2 df, from tables
    assert row["difference"].value == pytest.approx(0.002)
    assert (row["difference"].lo, row["difference"].hi) == pytest.approx((0.002 - half, 0.002 + half))
    assert row["mean_a"].lo < row["mean_b"].value < row["mean_a"].value, "unpaired, nothing is resolved"
    assert row["reading"] == "a higher (ch6-conv2-relu)"
    page = book_report.page(e, [], {}, contrasts=[row])
    assert "| +0.20 [+0.08, +0.32] (n=3) | a higher (ch6-conv2-relu) |" in page


def test_a_comparison_with_a_run_that_did_not_complete_says_how_it_ended(tmp_path):
    """A run stuck at chance (L2 so strong the weights vanish) keeps its number, and the reading
    says it stalled: its value is where it stopped, not what the setting reaches."""
    e = book.load("ch6-exp-fc300")
    histories = [[{"epoch": 1, "val_accuracy": 0.99, "test_accuracy": 0.994}]] * 3
    _fake_runs(tmp_path, "ch6-exp-fc100", histories)
    _fake_runs(tmp_path, "ch6-exp-fc300", histories)
    row = book.measure(e, e.contrasts[0], tmp_path)
    assert row["reading"] == "no difference resolved (the interval holds 0)"
    stalled = tmp_path / "ch6-exp-fc300" / "seed1"
    rundir.write_summary(stalled, {"status": "stalled", "stop_reason": "stuck at chance: val_accuracy 0.10"})
    row = book.measure(e, e.contrasts[0], tmp_path)
    assert row["reading"].endswith("; a stalled in seed 1 (stuck at chance)")


def test_a_sweep_figure_marks_a_run_that_did_not_complete():
    """The committed L2 sweep: lmbda3 = 100 (lmbda 1000) stalled at chance. Its point is drawn, and
    marked as a run that did not complete, in the legend too."""
    e = book.load("ch6-conv2-l2-sweep")
    (spec,) = e.meta["plots"]
    _, ax = plt.subplots()
    book_figures.plot_points(ax, e, book.RUNS_DIR, spec)
    (ended,) = [line for line in ax.lines if line.get_marker() == "x"]
    assert list(ended.get_xdata()) == [1000] and 9 < ended.get_ydata()[0] < 12
    assert ended.get_label().startswith("stalled (did not complete")
    plt.close(ax.figure)


def test_a_comparison_with_a_side_not_run_says_so(tmp_path):
    e = book.load("ch6-exp-fc300")
    _fake_runs(tmp_path, "ch6-exp-fc100", [[{"epoch": 1, "val_accuracy": 0.99, "test_accuracy": 0.994}]] * 3)
    row = book.measure(e, e.contrasts[0], tmp_path)
    assert row["reading"] == "not run" and row["mean_a"].n == 0 and row["mean_b"].n == 3


def test_a_bad_comparison_in_a_preset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(book, "presets_dir", lambda: tmp_path)
    block = (
        "book: {chapter: 6, section: s, demonstrates: d, source: s, value: null, metric: test_accuracy,"
        " selection: best_val, note: n, contrasts: [%s]}\n"
    )
    (tmp_path / "bad-ref.yaml").write_text(block % "{a: '', b: no-such-experiment, claim: c}")
    with pytest.raises(ValueError, match="no-such-experiment.*neither a run"):
        book.load("bad-ref")
    (tmp_path / "bad-key.yaml").write_text(block % "{a: '', b: '', claim: c, metrc: val_accuracy}")
    with pytest.raises(ValueError, match=r"unknown contrast keys \['metrc'\]"):
        book.load("bad-key")
    (tmp_path / "bad-selection.yaml").write_text(block % "{a: '', b: '', claim: c, selection: best}")
    with pytest.raises(ValueError, match="unknown selection 'best'"):
        book.load("bad-selection")


def test_a_page_names_the_commit_of_every_run_or_says_it_is_not_recorded(tmp_path):
    """A group cut off by the end of a session writes no provenance; its finished runs then have no
    recorded commit unless their summary.json carries one."""
    runs = tmp_path / "runs"
    exp = runs / "ch6-dropout-2fc1000"
    for seed, commit in [(0, None), (1, "c0ffee"), (2, None), (3, None)]:
        d = exp / f"seed{seed}" / ("members/member0" if seed == 3 else "")  # inside a group's folder
        d.mkdir(parents=True)
        pd.DataFrame({"epoch": [1], "seconds": [60.0]}).to_csv(d / "history.csv", index=False)
        rundir.write_summary(
            d, {"status": "completed"} | ({"versions": {"commit": commit}} if commit else {})
        )
    group = book.group_label("ch6-dropout-2fc1000", "", [2, 3])
    assert book.group_runs(group) == ["seed2", "seed3"]
    assert book.group_runs(book.group_label("ch6-conv2-tanh", "tanh", [0, 1])) == ["seed0/tanh", "seed1/tanh"]
    (exp / "provenance.json").write_text(
        json.dumps({group: {"commit": "abc123", "seconds": 1.0, "status": "completed", "finished": "2026"}})
    )
    line = book_report._provenance(book.load("ch6-dropout-2fc1000"), runs)[0]
    assert line.startswith("Produced by commit abc123, c0ffee (not recorded for seed0: ")


def test_a_run_records_the_commit_of_its_code(mnist_dir, tmp_path):
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cfg = compose(["data.n_train=200", "data.n_validation=100", "train.epochs=1"])
    out = hpexp_run(cfg, tmp_path / "run")
    assert rundir.read_summary(out)["versions"]["commit"] in (head, head + "+changes")


def test_the_ensemble_figure_draws_each_member_the_vote_and_the_books_number(tmp_path):
    """ch6-ensemble5 drew its one final record as curves over 'epoch' 1, the members' mean as 1%
    (a fraction), on a y-range that hid it. It now draws one dot per member, their mean, the vote
    and the averaged probabilities, in percent, with the book's 99.67% as a line inside the axes."""
    e = book.load("ch6-ensemble5")
    fig, ax = plt.subplots()
    assert book_figures.plot_ensemble(ax, e, tmp_path, {}) == 0  # not run: nothing drawn
    members = [0.9953, 0.9958, 0.9958, 0.9959, 0.9957]
    final = {"members_test_accuracy_mean": 0.9957, "test_accuracy": 0.9964, "test_accuracy_mean_prob": 0.9965}
    rundir.write_summary(
        tmp_path / e.id / "seed0",
        {"status": "completed", "final": final, "members": [{"test_accuracy": m} for m in members]},
    )
    assert book_figures.plot_ensemble(ax, e, tmp_path, {}) == 8
    dots = [line.get_xdata()[0] for line in ax.lines if line.get_gid() == "data"]
    assert dots == pytest.approx([100 * m for m in members] + [99.57, 99.64, 99.65])
    (book_line,) = [line for line in ax.lines if line.get_gid() != "data"]
    assert book_line.get_xdata()[0] == pytest.approx(99.67)
    low, high = ax.get_xlim()
    assert low < min(dots) and max(dots + [99.67]) < high
    assert [t.get_text() for t in ax.get_yticklabels()][-2:] == [
        "vote (the book's)",
        "averaged probabilities",
    ]
    plt.close(fig)


@pytest.mark.parametrize(
    ("together", "left"),
    [(True, "1h00m"), (False, "1h10m"), ("ensemble", "1h10m")],
    ids=["seeds together", "one after another", "an ensemble's members"],
)
def test_the_time_left_follows_the_epochs_trained_not_the_presets_guess(capsys, monkeypatch, together, left):
    """The L2 sweep's preset guessed 2 h a run; its runs took minutes, and `hpexp book run` said
    "left ~52h" all along, as nothing had finished to rescale the guess by. The time left now comes
    from the epochs this process trained (a resumed run's earlier epochs not counted as its own),
    whether the group's seeds train together or one after the other."""
    clock = [0.0]
    monkeypatch.setattr(book.time, "perf_counter", lambda: clock[0])
    progress = book.Progress(total=3 * 21600.0, count=3, every=0)  # three groups of 3 runs, 2 h each
    hook = progress.start("sweep/a seed0,1,2", 21600.0)
    # Each run 10 epochs, resumed at epoch 4, one epoch of one run a minute: 30 run-epochs take 30
    # min, so each group 30 min (the ratio 1800 / 21600), and the two groups after this one 1 h.
    if together is True:  # all three at epoch 10: nothing left of this group
        records = [(k, e) for e in range(5, 11) for k in range(3)]
    else:  # seed 0 done, seed 1 from scratch and done, seed 2 not begun: 10 epochs (10 min) left
        records = [(0, e) for e in range(5, 11)] + [(1, e) for e in range(1, 11)]
    for seed, epoch in records:
        clock[0] += 60.0
        if together == "ensemble":  # one run of seed 0 whose 3 members train one after another
            hook({"epoch": epoch, "seed": 0, "member": seed, "members_to_train": 3, "epochs": 10, "runs": 1})
        else:
            hook({"epoch": epoch, "seed": seed, "epochs": 10, "runs": 3})
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(f"left ~{left}")


def test_a_page_says_which_runs_are_under_way_and_how_far(tmp_path):
    """A long run stopped at the end of a session keeps its checkpoint (committed with the runs): its
    page says where it stands and how to go on, while its rows stay "not run"."""
    exp = tmp_path / "ch6-exp-2fc1000"
    for seed, epochs, checkpoint in [(0, 60, False), (1, 25, True)]:
        d = exp / f"seed{seed}"
        d.mkdir(parents=True)
        pd.DataFrame({"epoch": range(1, epochs + 1), "seconds": 1.0}).to_csv(d / "history.csv", index=False)
        (d / "config.yaml").write_text("train:\n  epochs: 60\n")
        if checkpoint:
            (d / rundir.CHECKPOINT).write_bytes(b"")
    e = book.load("ch6-exp-2fc1000")
    assert book_report._under_way(e, tmp_path) == [
        "Under way: seed1 at epoch 25 of 60 (stopped with its checkpoint kept; `hpexp book run "
        "ch6-exp-2fc1000` goes on from there).",
        "",
    ]
    (exp / "seed1" / rundir.CHECKPOINT).unlink()
    assert book_report._under_way(e, tmp_path) == []


def test_every_committed_miss_says_why():
    """The summary lists every row that misses, by either view, with its experiment's explanation:
    a miss without one (a row that began to miss after a re-run, say) fails here, not in review."""
    summary = pd.read_csv(REPORTS / "summary.csv", keep_default_na=False)
    missed = summary[(summary.reproduced_rule == "no") | (summary.reproduced == "no")]
    assert len(missed) > 0  # the committed report has misses; each must be explained
    page = (REPORTS / "README.md").read_text()
    section = page.split("## Rows that miss", 1)[1].split("\n## ", 1)[0]
    for experiment_id, check in zip(missed.id, missed.check, strict=True):
        explanation = str(book.load(experiment_id).meta.get("explain") or "").strip()
        assert len(explanation) > 80, f"{experiment_id} {check}: misses without an explanation"
        assert f"- {experiment_id}, {check} (" in section, f"{experiment_id} {check}: not listed"
