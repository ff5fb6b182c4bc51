"""The package's layering is a checked rule: import-linter's contracts in pyproject.toml hold, and
they would catch a wrong import (checked on a copy of the package with one planted)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hpexp

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # the console script of the same environment, on the package under `root`
    script = Path(sys.executable).with_name("lint-imports")
    if not script.exists():
        pytest.fail(f"lint-imports not installed beside {sys.executable}: pip install -e '.[dev]'")
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(script), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("nn/layers.py", "import pandas", "The engine imports NumPy only"),
        ("nn/conv.py", "import numba", "The engine imports NumPy only"),
        (
            "kernels/conv.py",
            "from hpexp.nn import activations",
            "The compiled kernels import NumPy, numba and SciPy",
        ),
        ("train/loop.py", "from hpexp.study import spec", "Layers"),
        ("report/plots.py", "from hpexp.report import pages", "No import circles"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, module, planted, contract):
    shutil.copytree(ROOT / "hpexp", tmp_path / "hpexp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "hpexp" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_the_public_api_is_listed_and_importable():
    assert "load_runs" in hpexp.__all__ and "Network" in hpexp.__all__ and "compose" in hpexp.__all__
    assert set(hpexp.__all__) <= set(dir(hpexp))
    for name in hpexp.__all__:
        assert getattr(hpexp, name) is not None
    for package in ("nn", "data", "train", "study", "report", "book"):
        module = __import__(f"hpexp.{package}", fromlist=["__all__"])
        assert module.__doc__ and len(module.__doc__.splitlines()[0]) > 20
        for name in module.__all__:
            assert getattr(module, name) is not None, f"hpexp.{package}.{name}"
