"""The README's Python example runs as written (on real MNIST, in a temporary folder)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_example():
    assert any("import hpexp" in block for block in python_blocks())


@pytest.mark.usefixtures("mnist_dir")
def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for block in python_blocks():
        if "import hpexp" in block:
            exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "val_accuracy" in out and "best_val_accuracy" in out
    assert (tmp_path / "runs/notebook/mlp30/history.csv").exists()
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def small_study(mnist_dir, tmp_path_factory):
    """runs/studies/book_l2_mlp30/journal.log of a 3-trial study, as `hpexp study` writes it."""
    from test_cli import hpexp

    folder = tmp_path_factory.mktemp("readme-study")
    base = ["--base", "data.n_train=500", "--base", "data.n_validation=200", "--base", "train.epochs=2"]
    hpexp("study", "book_l2_mlp30", "n_trials=3", "workers=1", *base, cwd=folder)
    return folder


def test_the_plain_optuna_example_loads_a_study(small_study, monkeypatch, capsys):
    (block,) = [b for b in python_blocks() if "optuna.load_study" in b]
    monkeypatch.chdir(small_study)
    namespace = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), namespace)
    study = namespace["study"]
    assert len(study.trials) == 3 and set(study.best_params) == {"optimizer.eta", "regularizer.lmbda"}
    assert str(study.best_value)[:6] in capsys.readouterr().out


def test_the_dashboard_command_serves_the_study(small_study):
    """`optuna-dashboard runs/studies/NAME/journal.log`, as the README says, answers with the study."""
    import json
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("optuna_dashboard", reason="pip install 'hpexp[dashboard]'")
    command = Path(sys.executable).with_name("optuna-dashboard")
    command = command if command.exists() else Path(shutil.which("optuna-dashboard") or "optuna-dashboard")
    (line,) = [text for text in README.read_text().splitlines() if text.startswith("optuna-dashboard ")]
    journal = line.split()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(command), journal, "--host", "127.0.0.1", "--port", str(port)],
        cwd=small_study, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer within 60 s"
        (study,) = studies
        assert study["study_name"] == "book_l2_mlp30" and study["directions"] == ["maximize"]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30
        ) as r:
            detail = json.load(r)
        assert len(detail["trials"]) == 3
        assert all(t["intermediate_values"] for t in detail["trials"])  # the per-epoch curves
    finally:
        server.terminate()
        server.wait(timeout=30)
