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
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "val_accuracy" in out and "best_val_accuracy" in out
    assert (tmp_path / "runs/notebook/mlp30/history.csv").exists()
    assert (tmp_path / "curves.png").stat().st_size > 1000
