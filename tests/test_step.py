"""One mini-batch step: plain SGD stepping dense weights by their gradients left as products
(SGD.step's `products`) against the same step with every gradient formed first."""

from __future__ import annotations

import numpy as np
import pytest

from hpexp.nn import optimizers
from hpexp.nn.optimizers import SGD
from hpexp.nn.regularizers import Regularizer
from hpexp.train.runner import build_network, compose, validate
from hpexp.train.step import mini_batch_steps

N = 1000  # the training-set size the penalty divides by
REGULARIZERS = {
    "none": Regularizer(),
    "L2 (weight decay)": Regularizer(lmbda=5.0),
    "L2, dropout, max-norm": Regularizer(lmbda=5.0, p=0.5, p_input=0.2, max_norm=1.0),
}


@pytest.fixture(scope="module")
def config():
    cfg = compose(["network=conv1", "network.fc=20", "cost=log_likelihood", "init=network3"])
    return cfg, validate(cfg)


def network(config, dtype):
    """network3's conv-pool(20) -> FC(20) -> softmax: conv and dense weights, biases of both kinds."""
    return build_network(*config, np.random.default_rng(3), dtype)


def formed_step(network, optimizer, regularizer, eta):
    """The step with every gradient formed: backprop, then one SGD step over the flat buffer."""
    factor = regularizer.weight_decay(eta, N)

    def step(xb, yb, masks):
        network.backprop(xb, yb, masks, scale=eta)
        optimizer.step([network.flat_params], [network.flat_grads], network.weights, factor or 1.0)
        for w in network.weights:
            regularizer.constrain(w)

    return step


def train(step, regularizer, shapes, batches, dtype):
    rng = np.random.default_rng(5)
    for xb, yb in batches:
        step(xb, yb, regularizer.masks(shapes, rng, np.dtype(dtype)) if regularizer.dropout else None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(REGULARIZERS))
@pytest.mark.parametrize("engine", ["numpy", "blas", "compiled"])
def test_stepping_by_products_equals_stepping_by_formed_gradients(config, monkeypatch, dtype, name, engine):
    """Bit for bit in NumPy (the same product, then the same step); to rounding with SciPy's BLAS,
    which adds each product's terms straight into the weights, and with the compiled step."""
    calls = []
    if engine == "blas":
        pytest.importorskip("scipy", reason="the BLAS step needs the optional `fast` extra (SciPy)")
        from hpexp.kernels import blas

        monkeypatch.setattr(optimizers, "BLAS", blas)
    elif engine == "compiled":
        pytest.importorskip("numba", reason="the compiled step needs the optional `fast` extra (numba)")
        from hpexp.kernels import dense

        kernel = dense.descend
        monkeypatch.setattr(optimizers, "BLAS", None)
        monkeypatch.setattr(optimizers, "KERNELS", dense)
        monkeypatch.setattr(dense, "descend", lambda *args: calls.append(1) or kernel(*args))
    else:
        monkeypatch.setattr(optimizers, "BLAS", None)
    regularizer, eta = REGULARIZERS[name], 0.1
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 1, (30, 784)).astype(dtype), rng.integers(0, 10, 30)
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 30, 10)]
    nets = [network(config, dtype) for _ in range(2)]
    for layer in nets[0].layers[1:]:
        layer.by_product = True  # as hpexp.train.ways sets them where measured faster
        layer.compiled_step = engine == "compiled"
    (step,) = mini_batch_steps(nets[0], SGD(eta), regularizer, eta, N)
    shapes = nets[0].input_shapes(10)
    train(step, regularizer, shapes, batches, dtype)
    if engine == "compiled":
        assert len(calls) == 2 * len(batches)  # both dense layers, every step
    train(formed_step(nets[1], SGD(eta), regularizer, eta), regularizer, shapes, batches, dtype)
    by_products, formed = (net.flat_params for net in nets)
    assert not np.array_equal(formed, network(config, dtype).flat_params)  # it trained
    if engine == "numpy":
        assert np.array_equal(by_products, formed)
    else:
        np.testing.assert_allclose(by_products, formed, rtol=0, atol=1e-6 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["shared", "per member"])
@pytest.mark.parametrize("engine", ["numpy", "blas"])
def test_a_population_steps_by_products_as_by_formed_gradients(monkeypatch, dtype, order, engine):
    """Three members with their own eta and lmbda (weight decay, one factor per member): stepping
    every dense layer inside its gradient's product (the first layer's input shared by all members in
    shared order: one gemm for the members' rows together, after the decay) gives the weights that
    the formed gradients give; and each member's weights are those of the same member trained alone,
    with its gradient formed."""
    from hpexp.nn import activations, costs, init
    from hpexp.nn.network import Network
    from hpexp.nn.population import select, stack, stack_fields

    if engine == "blas":
        pytest.importorskip("scipy", reason="the BLAS step needs the optional `fast` extra (SciPy)")
        from hpexp.kernels import blas

        monkeypatch.setattr(optimizers, "BLAS", blas)
        wide = []  # the members' one-gemm steps taken
        members = blas.descend_members
        monkeypatch.setattr(blas, "descend_members", lambda *args: wide.append(members(*args)) or wide[-1])
    else:
        monkeypatch.setattr(optimizers, "BLAS", None)
    k, etas, lmbdas = 3, [0.5, 0.1, 1.0], [5.0, 0.0, 1.0]

    def population():
        parts = activations.Sigmoid(), costs.CrossEntropy(), init.Default()
        nets = [Network.create([12, 7, 4], *parts, np.random.default_rng(s), dtype) for s in range(k)]
        optimizer = stack_fields([SGD(e) for e in etas], (1, 1), dtype)
        regularizer = stack_fields([Regularizer(lmbda=lm) for lm in lmbdas], (1, 1), dtype)
        return stack(nets), optimizer, regularizer

    rng = np.random.default_rng(6)
    shape = (30,) if order == "shared" else (k, 30)
    x, y = rng.uniform(0, 1, (*shape, 12)).astype(dtype), rng.integers(0, 4, shape)
    batches = [(x[..., i : i + 10, :], y[..., i : i + 10]) for i in range(0, 30, 10)]
    trained = []
    for by_product in (True, False):
        network, optimizer, regularizer = population()
        for layer in network.layers:
            layer.by_product = by_product  # as hpexp.train.ways sets it where measured faster
        (step,) = mini_batch_steps(network, optimizer, regularizer, optimizer.eta, N)
        for xb, yb in batches:
            step(xb, yb, None)
        trained.append(network)
    assert all(np.all(layer.gw == 0) for layer in trained[0].layers)  # stepped by products: none formed
    if engine == "blas":  # the first layer's, 3 steps, in shared order; a member's own input otherwise
        assert wide == ([True] * 3 if order == "shared" else [])
    by_products, formed = (np.concatenate([p.ravel() for p in net.params]) for net in trained)
    atol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(by_products, formed, rtol=0, atol=atol)
    start, _, _ = population()
    assert np.abs(formed - np.concatenate([p.ravel() for p in start.params])).max() > 1e-3  # it trained
    for member in range(k):  # the same member alone, its gradient formed (no `by_product`)
        alone, eta = select(population()[0], member), etas[member]
        (step,) = mini_batch_steps(alone, SGD(eta), Regularizer(lmbda=lmbdas[member]), eta, N)
        for xb, yb in batches:
            step(xb if order == "shared" else xb[member], yb if order == "shared" else yb[member], None)
        for mine, own in zip(select(trained[0], member).params, alone.params, strict=True):
            np.testing.assert_allclose(mine, own, rtol=0, atol=atol)
