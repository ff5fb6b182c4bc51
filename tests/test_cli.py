"""The `hpexp` command as a user runs it: real processes, real exit codes, readable errors."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import SMALL

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


def test_bad_value_is_one_clear_line(tmp_path):
    result = hpexp("train", "optimizer.eta=-0.5", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "optimizer.eta must be > 0, got -0.5" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not list(tmp_path.glob("runs/**/history.csv"))


def test_unknown_command_and_usage(tmp_path):
    result = hpexp("trian", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr
    assert hpexp("--help", cwd=tmp_path).stdout.startswith("usage: hpexp")


def test_data_where_and_verify(mnist_dir, tmp_path):
    assert Path(hpexp("data", "where", cwd=tmp_path).stdout.strip()) == mnist_dir
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


def test_a_preset_that_is_not_one_training_run_points_to_hpexp_book(tmp_path):
    result = hpexp("train", "+experiment=book/ch6-ensemble5", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "use `hpexp book run ch6-ensemble5`" in result.stderr
