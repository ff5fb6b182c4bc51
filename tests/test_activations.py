"""The sigmoid and tanh of float32 arrays compiled (hpexp.kernels.activations, the optional `fast`
extra), against float64's own tanh (the oracle) and NumPy's float32 path, and their use by the
activations: compiled for float32, NumPy's for float64."""

from __future__ import annotations

import numpy as np
import pytest

from hpexp.nn import activations
from hpexp.nn.activations import Sigmoid, Tanh, sigmoid


@pytest.fixture
def kernels():
    pytest.importorskip("numba", reason="the compiled kernels need the optional `fast` extra (numba)")
    from hpexp.kernels import activations as compiled

    return compiled


def grid() -> np.ndarray:
    """A million float32 points over [-20, 20], denser near 0, with tiny and huge values."""
    wide = np.linspace(-20, 20, 1_000_001)
    near = np.sign(wide) * wide**2 / 20  # half of them within [-5, 5]
    return np.concatenate([near, [1e-30, -1e-30, 1e-8, 3.4e38, -3.4e38, 0.0]]).astype(np.float32)


def test_tanh_is_within_4e7_of_the_exact_tanh_and_keeps_small_values_relative(kernels):
    x = grid()
    exact = np.tanh(x.astype(np.float64))
    got = kernels.tanh(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.abs(got - exact).max() <= 4e-7
    small = np.abs(x) < 1e-3  # tanh(x) = x there: the error relative to x, not to 1
    assert np.all(np.abs(got[small] - exact[small]) <= 1e-6 * np.abs(exact[small]))
    assert np.all(np.abs(got) <= 1.0) and np.all(np.sign(got) == np.sign(exact))


def test_sigmoid_is_within_2e7_of_the_exact_sigmoid_and_of_numpys_float32_path(kernels):
    x = grid()
    with np.errstate(over="ignore"):  # exp(3.4e38): inf, the sigmoid 0
        exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    got = kernels.sigmoid(x)
    assert np.abs(got - exact).max() <= 2e-7
    assert np.abs(got - sigmoid(x)).max() <= 3e-7  # NumPy's float32 path: equal to rounding
    assert np.all((got >= 0) & (got <= 1))


def test_nan_stays_nan_and_infinities_saturate(kernels):
    z = np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)
    t, s = kernels.tanh(z), kernels.sigmoid(z)
    assert np.isnan(t[0]) and np.isnan(s[0])  # a diverged run's NaNs must not be hidden
    assert t[1:].tolist() == [1.0, -1.0, 0.0]
    assert s[1] == 1.0 and 0 <= s[2] < 1e-7 and s[3] == 0.5


@pytest.mark.parametrize("view", ["transposed", "members transposed", "strided", "3-d"])
def test_any_layout_gives_the_same_values_in_the_same_shape_and_layout(kernels, view):
    base = np.random.default_rng(0).normal(scale=4, size=(6, 8, 10)).astype(np.float32)
    views = {"transposed": base[0].T, "members transposed": base.mT, "strided": base[:, ::2, 1], "3-d": base}
    z = views[view]
    for name in ("sigmoid", "tanh"):
        got = getattr(kernels, name)(z)
        want = getattr(kernels, name)(np.ascontiguousarray(z).ravel()).reshape(z.shape)
        assert got.shape == z.shape and np.array_equal(got, want)
        # a transposed z (a dense layer's, feature-major) gives a result laid out as z, no copy made
        if view.endswith("transposed"):
            assert got.mT.flags.c_contiguous and not got.flags.c_contiguous
        else:
            assert got.flags.c_contiguous


def test_other_dtypes_are_refused(kernels):
    with pytest.raises(TypeError, match="float32.*float64"):
        kernels.sigmoid(np.zeros(3))


@pytest.mark.parametrize("activation", [Sigmoid(), Tanh()])
def test_float32_runs_compiled_and_float64_on_numpys_path(kernels, monkeypatch, activation):
    calls = []
    name = type(activation).__name__.lower()
    kernel = getattr(kernels, name)
    monkeypatch.setattr(activations, "KERNELS", kernels)
    monkeypatch.setattr(kernels, name, lambda z: calls.append(z.dtype) or kernel(z))
    z = np.random.default_rng(1).normal(scale=3, size=(10, 100))
    numpy_value = sigmoid(z) if name == "sigmoid" else np.tanh(z)
    assert np.array_equal(activation.value(z), numpy_value)  # float64: NumPy's, bit for bit
    assert calls == []
    got = activation.value(z.astype(np.float32))
    assert calls == [np.float32] and got.dtype == np.float32
    assert np.abs(got - numpy_value).max() <= 4e-7
    monkeypatch.setattr(activations, "KERNELS", None)  # HPEXP_KERNELS=numpy, or no numba
    activation.value(z.astype(np.float32))
    assert calls == [np.float32]


@pytest.mark.parametrize("activation", [Sigmoid(), Tanh()])
def test_compiled_false_takes_numpys_path_in_float32(kernels, monkeypatch, activation):
    """The per-layer choice (hpexp.train.ways.activation_choices): NumPy's float32 path bit for
    bit, the kernel never called; equal to the compiled activation as a value (the choice is no
    part of what the activation is)."""
    calls = []
    name = type(activation).__name__.lower()
    kernel = getattr(kernels, name)
    monkeypatch.setattr(activations, "KERNELS", kernels)
    monkeypatch.setattr(kernels, name, lambda z: calls.append(z.dtype) or kernel(z))
    z = np.random.default_rng(2).normal(scale=3, size=(10, 100)).astype(np.float32)
    numpy_way = type(activation)(compiled=False)
    want = sigmoid(z) if name == "sigmoid" else np.tanh(z)
    assert np.array_equal(numpy_way.value(z), want) and calls == []
    assert not np.array_equal(activation.value(z), want) and calls == [np.float32]  # the kernel's
    assert numpy_way == activation and hash(numpy_way) == hash(activation)
