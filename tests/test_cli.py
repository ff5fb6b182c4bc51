"""The `hpexp` command as a user runs it: real processes, real exit codes, readable errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import SMALL, foreground
from omegaconf import OmegaConf

from hpexp.train import rundir


def hpexp(*args, cwd, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "hpexp.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_train_prints_progress_and_writes_a_run(mnist_dir, tmp_path):
    result = hpexp("train", *SMALL, f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "epoch 1/2" in result.stdout and "val cost" in result.stdout
    assert rundir.read_summary(tmp_path / "run")["status"] == "completed"


def test_multirun_grid_makes_one_run_per_point(mnist_dir, tmp_path):
    hpexp("train", "-m", *SMALL, "train.epochs=1", "optimizer.eta=0.1,1.0", cwd=tmp_path)
    runs = sorted(p.parent for p in tmp_path.glob("runs/multirun/*/*/summary.json"))
    assert len(runs) == 2
    etas = sorted(rundir.read_history(r)[0]["eta"] for r in runs)
    assert etas == [0.1, 1.0]


def test_unknown_option_lists_valid_ones(tmp_path):
    result = hpexp("train", "cost=crossentropy", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "cross_entropy" in result.stderr and "log_likelihood" in result.stderr


def _folders(root):
    return [p for p in root.glob("runs/*/*") if p.is_dir()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer.eta=-0.5"], "optimizer.eta must be > 0, got -0.5"),
        (["seed=abc"], "seed must be an integer >= 0, got 'abc'"),
        (["regularizer=none", "regularizer.lmbda=0.1"], "regularizer=none with regularizer.lmbda=0.1"),
        (["-m", "regularizer=none,l2", "regularizer.lmbda=0.1"], "regularizer=none with regularizer.lmbda"),
    ],
)
def test_a_refused_config_is_one_clear_line_and_leaves_no_folder(args, message, tmp_path):
    result = hpexp("train", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hpexp train: error: {result.stderr.strip().split('error: ', 1)[1]}"
    assert message in result.stderr and "Traceback" not in result.stderr
    assert _folders(tmp_path) == []


def test_eight_runs_started_together_get_eight_folders(mnist_dir, tmp_path):
    """Eight `hpexp train` at once, without out_dir: each its own complete run directory."""
    small = ["data.n_train=100", "data.n_validation=100", "train.epochs=2"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hpexp.cli", "train", *small, f"seed={seed}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(8)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    folders = _folders(tmp_path)
    assert len(folders) == 8
    seeds = set()
    for folder in folders:
        summary = rundir.read_summary(folder)
        assert summary["status"] == "completed"
        assert [r["epoch"] for r in rundir.read_history(folder)] == [1, 2]
        assert OmegaConf.load(folder / "config.yaml").seed == summary["seed"]
        seeds.add(summary["seed"])
    assert seeds == set(range(8))


def test_unknown_command_and_usage(tmp_path):
    result = hpexp("trian", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr
    assert hpexp("--help", cwd=tmp_path).stdout.startswith("usage: hpexp")


def test_data_where_and_verify(mnist_dir, tmp_path, converted_copies):
    where = hpexp("data", "where", cwd=tmp_path)
    assert Path(where.stdout.strip()) == mnist_dir
    assert f"converted copies: {converted_copies / 'mnist'} (" in where.stderr  # the session's folder
    assert hpexp("data", "verify", cwd=tmp_path).stdout.count("OK") == 4


def test_configs_are_found_from_an_installed_wheel(tmp_path):
    """Build the wheel, and import hpexp from the unpacked wheel alone: conf/ and studies/ travel."""
    pytest.importorskip("hatchling")
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("hpexp-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "hpexp/conf/train.yaml").exists()
    code = (
        "from hpexp.paths import config_dir, studies_dir; from hpexp.train.runner import compose;"
        "print(config_dir()); print(studies_dir()); print(compose(['network=mlp100']).network.sizes)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split("\n")
    assert out[0] == str(site / "hpexp/conf")
    assert out[1] == str(site / "hpexp/studies")
    assert out[2] == "[784, 100, 10]"


def test_train_with_several_seeds_writes_one_run_each(mnist_dir, tmp_path):
    result = hpexp("train", *SMALL, "train.seeds=[1,2]", f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "[seed_2]  epoch 2/2" in result.stdout
    for seed in (1, 2):
        assert rundir.read_summary(tmp_path / "run" / f"seed_{seed}")["seed"] == seed


def test_population_launcher_trains_a_grid_as_the_basic_launcher_does(mnist_dir, tmp_path):
    """`hydra/launcher=population` gives each job the run directory the basic launcher gives it."""
    grid = [*SMALL, "dtype=float64", "train.shared_order=false", "optimizer.eta=0.1,1.0", "seed=1,2"]
    hpexp("train", "-m", *grid, "hydra.sweep.dir=basic", cwd=tmp_path)
    result = hpexp("train", "-m", "hydra/launcher=population", *grid, "hydra.sweep.dir=pop", cwd=tmp_path)
    assert "report: hpexp report pop" in result.stdout
    for job in ("0", "1", "2", "3"):
        pop, basic = (
            rundir.read_history(tmp_path / "pop" / job),
            rundir.read_history(tmp_path / "basic" / job),
        )
        assert len(pop) == len(basic) == 2
        for a, b in zip(pop, basic, strict=True):
            assert a["val_cost"] == pytest.approx(b["val_cost"], abs=1e-9)
            assert a["eta"] == b["eta"]


@pytest.mark.parametrize("launcher", ["basic", "population"])
def test_a_grid_with_a_run_that_diverged_exits_non_zero_with_either_launcher(mnist_dir, tmp_path, launcher):
    """The population launcher exited 0 whatever its runs' statuses; now, as the basic launcher
    does, the worst status sets the exit code (diverged: 3) after one line."""
    grid = [
        *SMALL,
        "activation=relu",
        "network.sizes=[784,100,100,10]",
        "optimizer.eta=0.1,1e3",
    ]
    result = hpexp(
        "train", "-m", f"hydra/launcher={launcher}", *grid, "hydra.sweep.dir=grid", cwd=tmp_path, check=False
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1] == "hpexp train: 2 run(s), not completed: diverged"
    assert [rundir.read_summary(tmp_path / "grid" / job)["status"] for job in ("0", "1")] == [
        "completed",
        "diverged",
    ]


@pytest.mark.parametrize("launcher", ["checked", "population"])
def test_a_grid_with_a_bad_point_is_refused_before_any_run_and_leaves_no_folder(tmp_path, launcher):
    """Both launchers trained the grid's points before they met a bad value in another: Hydra's basic
    launcher runs jobs one by one and failed at the bad one with a traceback, the population launcher
    trained the good populations first (batch sizes make separate populations), and each left its
    sweep folder behind. `checked` is `hpexp train -m`'s default; the bad point comes last here."""
    grid = [*SMALL, "train.batch_size=10,0"]
    result = hpexp(
        "train", "-m", f"hydra/launcher={launcher}", *grid, "hydra.sweep.dir=grid", cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hpexp train: error: train.batch_size")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "grid").exists()


def test_the_default_multirun_launcher_is_the_checked_one(mnist_dir, tmp_path):
    result = hpexp("train", "-m", *SMALL, "seed=1,2", "hydra.sweep.dir=grid", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "grid").iterdir() if p.is_dir()) == ["0", "1"]
    assert (
        "hydra_plugins.hpexp_launchers.checked_launcher.CheckedLauncher"
        in (tmp_path / "grid" / "0" / ".hydra" / "hydra.yaml").read_text()
    ), result.stderr


def test_a_preset_that_is_not_one_training_run_points_to_hpexp_book(tmp_path):
    result = hpexp("train", "+experiment=book/ch6-ensemble5", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "use `hpexp book run ch6-ensemble5`" in result.stderr


def _start_and_wait_for_epoch(tmp_path, *args):
    """An `hpexp train` process, returned once it has printed its first epoch."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpexp.cli", "train", *args, f"out_dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=foreground,
    )
    line = proc.stdout.readline()
    if not re.match(r"epoch +1/", line):
        proc.kill()
        raise AssertionError(line + proc.communicate()[1])
    return proc


@pytest.mark.parametrize(
    ("sig", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_ctrl_c_and_sigterm_keep_the_run_and_print_one_line(mnist_dir, tmp_path, sig, code, name):
    proc = _start_and_wait_for_epoch(tmp_path, *SMALL, "train.epochs=100000")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.splitlines() == [f"hpexp train: interrupted ({name}); the run so far is kept"]
    summary = rundir.read_summary(tmp_path / "run")
    assert summary["status"] == "interrupted" and "interrupted" in summary["stop_reason"]
    assert len(rundir.read_history(tmp_path / "run")) == summary["epochs_run"] >= 1


def test_a_killed_run_reads_as_interrupted_not_running(mnist_dir, tmp_path):
    proc = _start_and_wait_for_epoch(tmp_path, *SMALL, "train.epochs=100000")
    assert rundir.read_summary(tmp_path / "run")["status"] == "running"  # alive: it holds the lock
    proc.kill()
    proc.wait(timeout=60)
    summary = rundir.read_summary(tmp_path / "run")
    assert summary["status"] == "interrupted"
    assert f"pid {proc.pid}" in summary["stop_reason"]


@pytest.mark.parametrize(
    ("args", "status", "code"),
    [
        # the run stuck at 9.6%: the quadratic cost's saturated sigmoids never move
        (["optimizer.eta=100", "cost=quadratic", "init=large", "train.epochs=4"], "stalled", 4),
        (
            ["activation=relu", "init=large", "network.sizes=[784,100,100,10]", "optimizer.eta=1e3"],
            "diverged",
            3,
        ),
    ],
)
def test_a_run_that_learned_nothing_exits_non_zero(mnist_dir, tmp_path, args, status, code):
    result = hpexp("train", *SMALL, *args, f"out_dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode == code, result.stderr
    assert result.stderr.splitlines()[-1] == f"hpexp train: 1 run(s), not completed: {status}"
    summary = rundir.read_summary(tmp_path / "run")
    assert summary["status"] == status
    if status == "stalled":
        history = rundir.read_history(tmp_path / "run")
        assert len(history) == 4 and max(r["val_accuracy"] for r in history[-3:]) < 0.2
        assert summary["stop_reason"].startswith("stuck at chance: val_accuracy")


def test_missing_data_fails_where_data_is_required(tmp_path):
    """HPEXP_REQUIRE_DATA=1 (CI): a test needing MNIST fails without it; otherwise it skips."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HPEXP_DATA_DIR": str(tmp_path / "none"), "HPEXP_CACHE_DIR": str(tmp_path / "cache")}
    test = str(root / "tests" / "test_run.py::test_float64_runs")
    runs = {}
    for require in ("0", "1"):
        runs[require] = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
            cwd=root,
            env={**env, "HPEXP_REQUIRE_DATA": require},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert runs["0"].returncode == 0 and "1 skipped" in runs["0"].stdout
    assert runs["1"].returncode == 1 and "HPEXP_REQUIRE_DATA=1 but no MNIST here" in runs["1"].stdout


def test_an_unlisted_skip_fails_where_data_is_required(tmp_path):
    """Under HPEXP_REQUIRE_DATA=1 any skip not in conftest's EXPECTED_SKIPS fails the suite."""
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\ndef test_skips():\n    pytest.skip('no tool here')\n"
    )
    tests = Path(__file__).resolve().parent
    pytest_args = ["-q", "-p", "conftest", "-p", "no:cacheprovider", "test_probe.py"]
    for require, code, said in (("0", 0, "1 skipped"), ("1", 1, "1 failed")):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *pytest_args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tests), "HPEXP_REQUIRE_DATA": require},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == code and said in result.stdout, result.stdout
    assert "allows only EXPECTED_SKIPS: Skipped: no tool here" in result.stdout
