"""The book's own algorithm (hpexp/book/reference.py), checked against finite differences and used as
tests/oracle.py's SGD (the oracle the engine is tested against), and chapter 2's two backprop forms
agree."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import sgd_epoch

from hpexp.book import experiments as book
from hpexp.book.reference import Network2, matrix_gradient, per_example_gradient
from hpexp.book.runners import matrix_speed, network2_run
from hpexp.train import rundir


def _cost(net: Network2, x, y, cross_entropy):
    a = net.output(x)
    if cross_entropy:
        return float(np.sum(-y * np.log(a) - (1 - y) * np.log(1 - a)))
    return float(0.5 * np.sum((a - y) ** 2))


@pytest.mark.parametrize("cross_entropy", [True, False])
def test_per_example_gradient_matches_finite_differences(cross_entropy):
    rng = np.random.default_rng(0)
    net = Network2([6, 5, 4, 3], cross_entropy=cross_entropy, seed=1)
    x, y = rng.random((4, 6)), np.eye(3)[rng.integers(0, 3, 4)]
    nabla_b, nabla_w = per_example_gradient(net.weights, net.biases, x, y, cross_entropy)
    h = 1e-6
    for params, grads in ((net.weights, nabla_w), (net.biases, nabla_b)):
        for p, g in zip(params, grads, strict=True):
            for index in [(0, 0), (p.shape[0] - 1, p.shape[1] - 1)]:
                saved = p[index]
                p[index] = saved + h
                up = _cost(net, x, y, cross_entropy)
                p[index] = saved - h
                down = _cost(net, x, y, cross_entropy)
                p[index] = saved
                assert g[index] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("cross_entropy", [True, False])
def test_the_matrix_form_gives_the_per_example_sums(cross_entropy):
    rng = np.random.default_rng(2)
    net = Network2([784, 30, 10], cross_entropy=cross_entropy, seed=3)
    x, y = rng.random((10, 784)), np.eye(10)[rng.integers(0, 10, 10)]
    for a, b in zip(
        per_example_gradient(net.weights, net.biases, x, y, cross_entropy),
        matrix_gradient(net.weights, net.biases, x, y, cross_entropy),
        strict=True,
    ):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-13)


def test_the_large_initializer_draws_after_the_default_one_as_network2_does():
    legacy = np.random.RandomState(12345678)
    [legacy.randn(y, 1) for y in (30, 10)]
    [legacy.randn(y, x) for x, y in ((784, 30), (30, 10))]  # the default's draws, then the large ones
    biases = [legacy.randn(y, 1) for y in (30, 10)]
    net = Network2([784, 30, 10], large=True, seed=12345678)
    assert all(np.array_equal(a, b) for a, b in zip(net.biases, biases, strict=True))
    assert np.std(net.weights[0]) == pytest.approx(1.0, abs=0.01)  # N(0, 1), not N(0, 1/784)


@pytest.mark.parametrize(("cost", "lmbda"), [("cross_entropy", 0.0), ("quadratic", 5.0)])
def test_an_epoch_equals_the_test_oracles_sgd(cost, lmbda):
    """Two writings of network2's SGD, this one and tests/oracle.py's (against which the engine is
    tested in test_network.py), agree to rounding after 20 mini-batches with weight decay."""
    rng = np.random.default_rng(4)
    x, labels = rng.random((200, 12)), rng.integers(0, 5, 200)
    reference = Network2([12, 7, 5], cross_entropy=cost == "cross_entropy", large=True, seed=8)
    order = list(rng.permutation(200))
    want_w, want_b = sgd_epoch(
        reference.weights, reference.biases, x, labels, order, 10, 0.5, lmbda, "sigmoid", cost
    )
    reference.epoch(x, labels, batch_size=10, eta=0.5, lmbda=lmbda, order=order)
    for got, want in zip([*reference.weights, *reference.biases], [*want_w, *want_b], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_network2_run_and_matrix_speed_write_run_directories(mnist_dir, tmp_path):
    e = book.load("ch3-overfit-1k-network2")
    cfg = book.compose_run(e, "", 0, [f"data.dir={mnist_dir}", "data.n_train=100", "train.epochs=2"])
    history = rundir.read_history(network2_run(cfg, tmp_path / "n2"))
    assert [r["epoch"] for r in history] == [1, 2]
    assert 0.1 < history[-1]["train_accuracy"] <= 1.0 and history[-1]["test_accuracy"] > 0.1
    e = book.load("ch2-matrix-speed")
    cfg = book.compose_run(e, "", 0, [f"data.dir={mnist_dir}", "data.n_train=200", "timing.repeats=1"])
    out = matrix_speed(cfg, tmp_path / "speed")
    (record,) = rundir.read_history(out)
    # chapter 2's claim in direction: the matrix form is faster than the loop over examples
    assert record["speedup"] > 1.5 and record["per_example_seconds"] > record["matrix_seconds"] > 0
    assert "numpy" in rundir.read_summary(out)["machine"]


def test_network2_run_refuses_what_network2_cannot_do(mnist_dir, tmp_path):
    e = book.load("ch3-overfit-1k-network2")
    cfg = book.compose_run(e, "", 0, [f"data.dir={mnist_dir}", "activation=relu"])
    with pytest.raises(ValueError, match="sigmoid"):
        network2_run(cfg, tmp_path / "bad")
