"""The engine against two oracles: central finite differences, and the book's per-example backprop."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import group_options, load_option
from oracle import sgd_epoch

from hpexp.nn.activations import Identity
from hpexp.nn.costs import softplus
from hpexp.nn.layers import Dense
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.regularizers import NoPenalty
from hpexp.train.loop import train_epoch

SIZES = [6, 5, 4, 3]


def total_cost(network, regularizer, x, y, n):
    pen = sum(regularizer.value(w, n) for w in network.weights)
    return float(network.cost.value(network.logits(x), y) + pen)


def numeric_grads(network, regularizer, x, y, n, eps=1e-6):
    """Central differences (C(p + eps) - C(p - eps)) / 2 eps for every parameter entry."""
    grads = []
    for p in network.params:
        g = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = total_cost(network, regularizer, x, y, n)
            p[idx] = old - eps
            down = total_cost(network, regularizer, x, y, n)
            p[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def analytic_grads(network, regularizer, x, y, n):
    network.backprop(x, y)
    for w, g in zip(network.weights, network.weight_grads, strict=True):
        g += regularizer.grad(w, n)
    return [g.copy() for g in network.grads]


def small_problem(seed=0, m=7, sizes=SIZES):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (m, sizes[0]))
    y = rng.integers(0, sizes[-1], m)
    return x, y, rng


def relative_error(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a)) + np.max(np.abs(b)), 1e-12)


@pytest.mark.parametrize("init", group_options("init"))
@pytest.mark.parametrize("cost", group_options("cost"))
@pytest.mark.parametrize("activation", group_options("activation"))
def test_backprop_matches_finite_differences(activation, cost, init):
    x, y, rng = small_problem()
    network = Network.create(
        SIZES,
        load_option("activation", activation),
        load_option("cost", cost),
        load_option("init", init),
        rng,
        dtype="float64",
    )
    for a, n in zip(
        analytic_grads(network, NoPenalty(), x, y, 50),
        numeric_grads(network, NoPenalty(), x, y, 50),
        strict=True,
    ):
        assert relative_error(a, n) < 1e-6


@pytest.mark.parametrize("regularizer", group_options("regularizer"))
def test_regularized_cost_gradient(regularizer):
    x, y, rng = small_problem(1)
    network = Network.create(
        SIZES,
        load_option("activation", "sigmoid"),
        load_option("cost", "cross_entropy"),
        load_option("init", "default"),
        rng,
        dtype="float64",
    )
    reg = load_option("regularizer", regularizer)
    for a, n in zip(
        analytic_grads(network, reg, x, y, 20), numeric_grads(network, reg, x, y, 20), strict=True
    ):
        assert relative_error(a, n) < 1e-6


@pytest.mark.parametrize("activation", group_options("activation"))
def test_dense_layer_input_gradient(activation):
    """A layer alone: backward's dC/dx against finite differences of C = sum(a * r)."""
    rng = np.random.default_rng(2)
    layer = Dense(rng.normal(size=(3, 4)), rng.normal(size=(1, 3)), load_option("activation", activation))
    x, r = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    layer.forward(x)
    dx = layer.backward(r)
    eps, numeric = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (np.sum(layer.infer(up) * r) - np.sum(layer.infer(down) * r)) / (2 * eps)
    assert relative_error(dx, numeric) < 1e-6


def book_layout(network):
    return [layer.w.copy() for layer in network.layers], [layer.b.T.copy() for layer in network.layers]


@pytest.mark.parametrize(
    ("activation", "cost", "batch_size", "lmbda"),
    [
        ("sigmoid", "quadratic", 10, 0.0),
        ("sigmoid", "cross_entropy", 7, 5.0),
        ("tanh", "log_likelihood", 1, 0.1),
        ("relu", "cross_entropy", 32, 1.0),
    ],
)
def test_epoch_matches_per_example_backprop(activation, cost, batch_size, lmbda):
    """From the same weights and mini-batch order, one epoch agrees with the book's algorithm."""
    from hpexp.nn.regularizers import L2

    sizes = [20, 8, 6, 10]
    x, y, rng = small_problem(3, m=203, sizes=sizes)
    network = Network.create(
        sizes,
        load_option("activation", activation),
        load_option("cost", cost),
        load_option("init", "default"),
        rng,
        dtype="float64",
    )
    weights, biases = book_layout(network)
    order = rng.permutation(len(y))
    eta = 0.3
    train_epoch(
        network,
        SGD(eta=eta),
        L2(lmbda) if lmbda else NoPenalty(),
        x[order],
        y[order],
        batch_size,
        eta,
    )
    want_w, want_b = sgd_epoch(weights, biases, x, y, order, batch_size, eta, lmbda, activation, cost)
    got_w, got_b = book_layout(network)
    for got, want in zip(got_w + got_b, want_w + want_b, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_output_layer_is_linear():
    network = Network.create(
        [4, 3, 2],
        load_option("activation", "relu"),
        load_option("cost", "log_likelihood"),
        load_option("init", "he"),
        np.random.default_rng(0),
    )
    assert isinstance(network.layers[-1].activation, Identity)
    assert not isinstance(network.layers[0].activation, Identity)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_through_training(dtype):
    x, y, rng = small_problem(4, m=30)
    network = Network.create(
        SIZES,
        load_option("activation", "sigmoid"),
        load_option("cost", "cross_entropy"),
        load_option("init", "default"),
        rng,
        dtype=dtype,
    )
    x = x.astype(dtype)
    train_epoch(network, SGD(eta=0.5), NoPenalty(), x, y, 10, 0.5)
    assert all(p.dtype == np.dtype(dtype) for p in network.params + network.grads)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_is_ln_1_plus_exp_everywhere(dtype):
    """The cross-entropy's softplus against the definition, in the range where the definition is
    exact, and its limits max(z, 0) where e^z overflows or vanishes."""
    z = np.linspace(-30, 30, 601).astype(dtype)
    np.testing.assert_allclose(softplus(z), np.log1p(np.exp(z.astype(np.float64))), rtol=1e-6, atol=1e-7)
    huge = np.array([-1e4, -800.0, 800.0, 1e4], dtype)
    np.testing.assert_array_equal(softplus(huge), np.maximum(huge, 0))
    assert softplus(z).dtype == np.dtype(dtype)
