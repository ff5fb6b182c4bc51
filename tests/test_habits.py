"""Habits users bring from Hydra apps: shell completion, `experiment=` presets, options anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL
from test_cli import hpexp

from hpexp.train import rundir
from hpexp.train.runner import compose


def _complete(line: str, tmp_path: Path) -> list[str]:
    """What bash offers for `line` through the function `hpexp -sc install=bash` installs."""
    exe = Path(sys.executable).parent / "hpexp"
    if not exe.exists() or shutil.which("bash") is None:
        pytest.skip("needs the installed hpexp script and bash")
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}"}
    script = subprocess.run(
        [exe, "-sc", "install=bash"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert script.rstrip().endswith("hydra_bash_completion hpexp")  # installed for the hpexp command
    words = line.split(" ")
    shell = (
        f'{script}\nCOMP_LINE="{line}"; COMP_POINT={len(line)}; COMP_WORDS=({line}); '
        f"COMP_CWORD={len(words) - 1}; hydra_bash_completion; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    done = subprocess.run(
        ["bash", "-c", shell], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert "unknown command" not in done.stderr, done.stderr
    return done.stdout.split()


def test_shell_completion_offers_train_overrides(tmp_path):
    assert {"network=mlp30", "network=mlp100"} <= set(_complete("hpexp train network=mlp", tmp_path))
    assert _complete("hpexp train optimizer.et", tmp_path) == ["optimizer.eta="]
    assert _complete("hpexp tra", tmp_path) == ["train"]
    offered = _complete("hpexp train experiment=book/ch3-l2", tmp_path)
    assert "experiment=book/ch3-l2-1k" in offered
    assert all(o.startswith("experiment=book/ch3-l2") for o in offered)


def test_experiment_preset_without_plus_equals_with_plus():
    plain, plus = compose(["experiment=book/ch3-l2-1k"]), compose(["+experiment=book/ch3-l2-1k"])
    assert plain == plus
    assert plain.regularizer.lmbda == 0.1 and plain.data.n_train == 1000  # the preset's values
    assert plain.choices.experiment == "book/ch3-l2-1k"
    assert compose(["experiment=book/ch3-l2-1k", "train.epochs=3"]).train.epochs == 3  # overrides win
    assert compose([]).regularizer.lmbda == 0.0  # and no preset by default


def test_train_takes_a_preset_without_plus_and_options_anywhere(mnist_dir, tmp_path):
    result = hpexp(
        "train", "experiment=book/ch3-l2-1k", "train.epochs=1", "--cfg", "job", "seed=7", cwd=tmp_path
    )
    assert "seed: 7" in result.stdout and "lmbda: 0.1" in result.stdout and "epochs: 1" in result.stdout
    out = tmp_path / "run"
    hpexp("train", *SMALL, "-m", "train.epochs=1", f"hydra.sweep.dir={out}", "seed=1,2", cwd=tmp_path)
    assert sorted(rundir.read_summary(out / n)["seed"] for n in ("0", "1")) == [1, 2]


def test_study_and_book_take_options_after_their_arguments(tmp_path):
    # --storage after an override: parsed (the URL is then refused for its scheme, not as an argument)
    result = hpexp(
        "study", "book_l2_mlp30", "n_trials=2", "--storage", "nosuch://x", cwd=tmp_path, check=False
    )
    assert "unrecognized arguments" not in result.stderr
    assert "nosuch" in result.stderr
    # --runs-dir after `run` and its ids
    result = hpexp(
        "book", "run", "ch1-mlp30-quad", "--seeds", "0", "--runs-dir", "X", cwd=tmp_path, check=False
    )
    assert result.returncode == 2 and "--seeds must be >= 1, got 0" in result.stderr
    listing = hpexp("book", "list", "--chapter", "1", "--runs-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert "ch1-mlp30-quad" in listing.stdout and "ch3-l2-1k" not in listing.stdout


def test_piped_train_logs_plain_lines_and_train_log_holds_them(mnist_dir, tmp_path):
    result = hpexp("train", *SMALL, "hydra.run.dir=out", cwd=tmp_path)
    assert "\r" not in result.stdout + result.stderr
    shown = result.stdout.splitlines()
    assert shown[0].startswith("epoch 1/2") and shown[0].endswith("left")  # time left on every epoch
    logged = (tmp_path / "out/train.log").read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in logged] == shown  # train.log holds what the console shows
    quiet = hpexp("train", *SMALL, "--quiet", "hydra.run.dir=quiet", cwd=tmp_path)
    assert quiet.stdout == ""
    assert "epoch 2/2" in (tmp_path / "quiet/train.log").read_text()


def test_train_on_a_terminal_draws_a_bar_with_time_left(mnist_dir, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 x 120 characters
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpexp.cli", "train", *SMALL, "hydra.run.dir=out"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    text = screen.decode(errors="replace")
    assert "train:" in text and "epoch/s" in text and "<" in text  # tqdm: elapsed<left
    assert "\r" in text  # the bar redraws in place on a terminal
    assert "\r" not in (tmp_path / "out/train.log").read_text()
