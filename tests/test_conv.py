"""Convolution and pooling against finite differences and a direct loop convolution."""

from __future__ import annotations

import numpy as np
import pytest

from hpexp.activations import Sigmoid, Tanh
from hpexp.conv import Conv2D, ConvPool, Flatten, L2Pool, MaxPool


def direct_conv(x, w):
    """Valid cross-correlation written as loops over filters, channels and positions."""
    m, c, height, width = x.shape
    f, _, kh, kw = w.shape
    out = np.zeros((m, f, height - kh + 1, width - kw + 1))
    for n in range(m):
        for k in range(f):
            for i in range(height - kh + 1):
                for j in range(width - kw + 1):
                    out[n, k, i, j] = np.sum(x[n, :, i : i + kh, j : j + kw] * w[k])
    return out


def numeric_check(layer, x, rng, eps=1e-6):
    """Compare backward's parameter and input gradients of C = sum(out * r) with central differences."""
    r = rng.normal(size=layer.forward(x).shape)
    dx = layer.backward(r)
    analytic = [g.copy() for g in layer.grads] + [dx]
    targets = [*layer.params, x]

    def cost():
        return np.sum(layer.infer(x) * r)

    for target, want in zip(targets, analytic, strict=True):
        numeric = np.zeros_like(target)
        for idx in np.ndindex(target.shape):
            old = target[idx]
            target[idx] = old + eps
            up = cost()
            target[idx] = old - eps
            down = cost()
            target[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(want, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(2, 1, 6, 6), (3, 2, 7, 5)])
@pytest.mark.parametrize("kernel", [(3, 1, 3, 3), (2, 1, 2, 4)])
def test_conv_matches_direct_loops(shape, kernel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    w = rng.normal(size=(kernel[0], shape[1], *kernel[2:]))
    np.testing.assert_allclose(Conv2D(w).infer(x), direct_conv(x, w), atol=1e-12)


def test_conv_gradients():
    rng = np.random.default_rng(1)
    numeric_check(Conv2D(rng.normal(size=(3, 2, 3, 2))), rng.normal(size=(2, 2, 6, 5)), rng)


@pytest.mark.parametrize("pool", [MaxPool(2), L2Pool(2), MaxPool(3)])
def test_pool_gradients(pool):
    rng = np.random.default_rng(2)
    numeric_check(pool, rng.normal(size=(2, 3, 7, 8)), rng)  # 7 and 8 leave a border remainder


def test_max_pool_values_and_remainder():
    x = np.arange(2 * 5 * 5, dtype=float).reshape(1, 2, 5, 5)
    out = MaxPool(2).infer(x)
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0].tolist() == [[6, 8], [16, 18]]
    np.testing.assert_allclose(L2Pool(2).infer(np.full((1, 1, 2, 2), 3.0)), [[[[6.0]]]])


@pytest.mark.parametrize("activation", [Sigmoid(), Tanh()])
def test_conv_pool_gradients(activation):
    rng = np.random.default_rng(3)
    layer = ConvPool(rng.normal(size=(2, 1, 3, 3)) * 0.3, rng.normal(size=(2, 1, 1)), activation, MaxPool(2))
    numeric_check(layer, rng.normal(size=(2, 1, 8, 8)), rng)


def test_flatten_is_c_order_and_invertible():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    flat = Flatten()
    assert flat.forward(x)[1].tolist() == list(range(12, 24))
    np.testing.assert_array_equal(flat.backward(flat.forward(x)), x)
