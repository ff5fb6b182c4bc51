"""The book registry: every preset composes, trains and carries its metadata; the computed
experiments (baselines, the single neuron, chapter 5's speeds) give the book's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hydra.utils import get_method
from omegaconf import open_dict

from hpexp.book import command
from hpexp.book import experiments as book
from hpexp.book import pages as book_report
from hpexp.train import rundir
from hpexp.train.runner import compose

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
    for check in e.checks:
        assert check.metric and check.selection in book.SELECTIONS
        if check.value is not None:
            assert check.tolerance is not None and check.tolerance >= 0, check.label
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
    check = book.Check(metric=metric, selection=selection, epoch=epoch, value=None, tolerance=None)
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
    assert "| output at epoch 150 | 0.93 | 0.9334" in page and "| yes |" in page
    assert (reports / "ch3-toy-quad-bad" / "toy.png").stat().st_size > 0
    command.main([*argv, "list"])
    listed = capsys.readouterr().out
    assert "ch3-toy-quad-good" in listed and "ch5-speed-init" in listed
    row = next(line for line in listed.splitlines() if line.startswith("ch3-toy-quad-bad "))
    assert "0.2028 (n=1)" in row


def test_report_with_no_runs_lists_every_row_as_not_run(tmp_path):
    book_report.write([], tmp_path / "runs", tmp_path / "reports")
    summary = (tmp_path / "reports" / "README.md").read_text()
    assert summary.count("not run") == sum(c.value is not None for e in book.registry() for c in e.checks)


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


def test_run_selects_by_id_chapter_or_all():
    from argparse import Namespace

    def chosen(ids=(), chapter=None, all=False):
        return [e.id for e in command._select(Namespace(ids=list(ids), chapter=chapter, all=all))]

    assert chosen(["ch3-overfit-1k"]) == ["ch3-overfit-1k"]
    assert set(chosen(chapter=[1, 5])) == {e.id for e in book.registry() if e.chapter in (1, 5)}
    assert chosen(all=True) == IDS
    assert chosen(["ch3-overfit-1k"], chapter=[5]) == []


def test_best_of_three_compares_our_best_seed(tmp_path):
    """Chapter 1 quotes the best of three runs: the row compares our best seed, and still shows the mean."""
    e = book.load("ch1-mlp30-quad")
    for seed, peak in enumerate([0.950, 0.955, 0.940]):
        d = tmp_path / e.id / f"seed{seed}"
        rundir.write_history(d, [{"epoch": 1, "test_accuracy": 0.9}, {"epoch": 2, "test_accuracy": peak}])
        rundir.write_summary(d, {"status": "completed"})
    row = book.compare(e, e.checks[0], tmp_path)
    assert row["seeds"] == [0.950, 0.955, 0.940]
    assert row["mean"] == pytest.approx((0.950 + 0.955 + 0.940) / 3)
    assert row["diff"] == pytest.approx(0.955 - 0.9542) and row["reproduced"]
