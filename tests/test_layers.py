"""A dense layer's x W^T and delta W compiled (hpexp.kernels.dense, the optional `fast` extra)
against NumPy's."""

from __future__ import annotations

import numpy as np
import pytest

from hpexp.nn import layers
from hpexp.nn.activations import Sigmoid
from hpexp.nn.layers import Dense, weighted_input


@pytest.fixture
def kernels():
    pytest.importorskip("numba", reason="the compiled kernels need the optional `fast` extra (numba)")
    from hpexp.kernels import dense

    return dense


def close(got, want, w, x, dtype):
    """Equal to 1e-6 (float32; 1e-14 in float64) of the sum of the terms' sizes: the kernel adds
    each sum's terms in another order than BLAS."""
    scale = np.abs(x) @ np.abs(w).T
    return np.all(np.abs(got - want) <= (1e-6 if dtype == "float32" else 1e-14) * scale)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("n_out", "n_in", "m"),
    [
        *[(100, 2880, 10), (7, 13, 3), (1, 5, 1), (10, 1000, 11), (4, 3, 5)],
        *[(7, 2500, 13), (3, 1500, 9), (1, 1100, 1)],  # longer than a span
    ],
)
@pytest.mark.parametrize("rows", [4, 2])
def test_compiled_weighted_input_equals_numpy(kernels, dtype, n_out, n_in, m, rows):
    """Layers not a multiple of `rows` and mini-batches not a multiple of 5 take the kernel's
    repeated last rows; inputs longer than a span (SPAN bytes: two rows per pass take the sums in
    spans, each added once to what the earlier left) with them too."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(n_out, n_in)).astype(dtype)
    x = rng.uniform(0, 1, (m, n_in)).astype(dtype)
    got = kernels.weighted_input(w, x, rows)
    assert got.shape == (m, n_out) and got.dtype == w.dtype
    assert close(got, weighted_input(w, x), w, x, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("n_out", "n_in", "m"),
    [(100, 2880, 10), (1000, 640, 10), (7, 13, 3), (1, 5, 1), (10, 100, 11), (4, 3, 5)],
)
def test_compiled_input_gradient_equals_numpy(kernels, dtype, n_out, n_in, m):
    """delta W to 1e-6 (float32) of the terms' sizes; mini-batches and layers that are not
    multiples of the kernel's blocks (5 rows of delta, 4 of W) take its padded rows."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(n_out, n_in)).astype(dtype)
    delta = rng.normal(size=(m, n_out)).astype(dtype)
    got = kernels.back(delta, w)
    assert got.shape == (m, n_in) and got.dtype == w.dtype
    scale = np.abs(delta) @ np.abs(w)
    assert np.all(np.abs(got - delta @ w) <= (1e-6 if dtype == "float32" else 1e-14) * scale)


@pytest.mark.parametrize("way", ["compiled", "compiled_back"])
def test_a_compiled_dense_layer_gives_the_same_gradients(kernels, monkeypatch, way):
    """`compiled` changes how forward computes x W^T, `compiled_back` how backward computes delta W,
    nothing else."""
    calls = []
    kernel = getattr(kernels, {"compiled": "weighted_input", "compiled_back": "back"}[way])
    monkeypatch.setattr(layers, "KERNELS", kernels)
    monkeypatch.setattr(kernels, kernel.__name__, lambda *a: calls.append(1) or kernel(*a))
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(30, 50)).astype("float32"), rng.normal(size=(1, 30)).astype("float32")
    x, delta = rng.uniform(0, 1, (10, 50)).astype("float32"), rng.normal(size=(10, 30)).astype("float32")
    results = []
    for compiled in (False, True):
        layer = Dense(w.copy(), b.copy(), Sigmoid())
        setattr(layer, way, compiled)
        a = layer.forward(x)
        results.append((a, layer.backward(delta), layer.gw.copy(), layer.gb.copy()))
    assert calls == [1]  # the compiled way was taken, once
    for want, got in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [3, 0, True])
def test_the_compiled_product_takes_four_or_two_rows_per_pass(kernels, rows):
    w, x = np.ones((4, 3), "float32"), np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match=rf"rows must be one of \(4, 2\), got {rows!r}"):
        kernels.weighted_input(w, x, rows)
