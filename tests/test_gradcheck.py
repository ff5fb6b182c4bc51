"""`hpexp gradcheck`: passes on correct backprop, fails (exit 1) on a wrong one."""

from __future__ import annotations

import pytest
from test_regularizers import make_network, toy_data

from hpexp.nn.regularizers import Regularizer
from hpexp.train.gradcheck import check, main


@pytest.fixture
def no_mnist(monkeypatch):
    monkeypatch.setenv("HPEXP_DATA_DIR", "/nonexistent")


def test_passes_and_prints_every_array(no_mnist, capsys):
    main(["network=linear", "regularizer=l1", "--max-entries", "50"])
    out = capsys.readouterr().out
    assert "random examples" in out and "layer 1 weights" in out and "layer 1 biases" in out
    assert out.strip().splitlines()[-1].startswith("PASS")


def test_dropout_is_checked_through_a_fixed_mask(no_mnist, capsys):
    main(["regularizer=dropout", "regularizer.lmbda=5", "--max-entries", "30", "--examples", "3"])
    out = capsys.readouterr().out
    assert "fixed mask" in out and "PASS" in out


def test_fails_with_exit_status_1_above_the_threshold(no_mnist, capsys):
    with pytest.raises(SystemExit) as e:
        main(["network=linear", "--threshold", "1e-30", "--max-entries", "20"])
    assert e.value.code == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_wrong_gradient_is_caught():
    network = make_network()
    x, y = toy_data(n=5)

    class Wrong(Regularizer):
        def grad(self, w, n):  # twice the true gradient of the penalty
            return 2 * super().grad(w, n)

    rows = check(network, Wrong(lmbda=50.0), x, y, 10)
    assert all(err > 1e-3 for name, _, err in rows if "weights" in name)
    assert all(err < 1e-6 for name, _, err in rows if "biases" in name)
