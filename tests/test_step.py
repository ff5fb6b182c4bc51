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
@pytest.mark.parametrize("engine", ["numpy", "blas"])
def test_stepping_by_products_equals_stepping_by_formed_gradients(config, monkeypatch, dtype, name, engine):
    """Bit for bit in NumPy (the same product, then the same step); to rounding with SciPy's BLAS,
    which adds each product's terms straight into the weights."""
    if engine == "blas":
        pytest.importorskip("scipy", reason="the BLAS step needs the optional `fast` extra (SciPy)")
        from hpexp.kernels import blas

        monkeypatch.setattr(optimizers, "BLAS", blas)
    else:
        monkeypatch.setattr(optimizers, "BLAS", None)
    regularizer, eta = REGULARIZERS[name], 0.1
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 1, (30, 784)).astype(dtype), rng.integers(0, 10, 30)
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 30, 10)]
    nets = [network(config, dtype) for _ in range(2)]
    for layer in nets[0].layers[1:]:
        layer.by_product = True  # as hpexp.train.batching sets it where measured faster
    (step,) = mini_batch_steps(nets[0], SGD(eta), regularizer, eta, N)
    shapes = nets[0].input_shapes(10)
    train(step, regularizer, shapes, batches, dtype)
    train(formed_step(nets[1], SGD(eta), regularizer, eta), regularizer, shapes, batches, dtype)
    by_products, formed = (net.flat_params for net in nets)
    assert not np.array_equal(formed, network(config, dtype).flat_params)  # it trained
    if engine == "numpy":
        assert np.array_equal(by_products, formed)
    else:
        np.testing.assert_allclose(by_products, formed, rtol=0, atol=1e-6 if dtype == "float32" else 1e-12)
