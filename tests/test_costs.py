"""The costs' output error dC/dz compiled for float32 (hpexp.kernels.costs, the optional `fast`
extra): against the definitions evaluated in float64 (the oracle: softmax, sigmoid and the one-hot
targets written out here), against NumPy's float32 path, and its use by the costs: compiled for
float32, NumPy's for float64."""

from __future__ import annotations

import numpy as np
import pytest

from hpexp.nn import costs
from hpexp.nn.costs import CrossEntropy, LogLikelihood, Quadratic

COSTS = {"log_likelihood": LogLikelihood(), "cross_entropy": CrossEntropy(), "quadratic": Quadratic()}


@pytest.fixture
def kernels():
    pytest.importorskip("numba", reason="the compiled kernels need the optional `fast` extra (numba)")
    from hpexp.kernels import costs as compiled

    return compiled


def exact(kind: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dC/dz in float64, from the definitions: softmax(z) - y, sigma(z) - y, (sigma(z) - y) sigma'(z)."""
    z = z.astype(np.float64)
    target = np.zeros(z.shape)
    np.put_along_axis(target, np.broadcast_to(y, z.shape[:-1])[..., None], 1.0, axis=-1)
    if kind == "log_likelihood":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True) - target
    a = 1 / (1 + np.exp(-z))
    return (a - target) * a * (1 - a) if kind == "quadratic" else a - target


def feature_major(z: np.ndarray) -> np.ndarray:
    """z stored as an output layer's is, each output's values over the batch together: a view."""
    return np.ascontiguousarray(z.swapaxes(-1, -2)).swapaxes(-1, -2)


@pytest.mark.parametrize("kind", list(COSTS))
@pytest.mark.parametrize("layout", [np.ascontiguousarray, feature_major])
@pytest.mark.parametrize(
    ("z_shape", "y_shape"), [((10, 10), (10,)), ((4, 7, 3), (7,)), ((4, 7, 3), (4, 7))]
)  # one network; a population sharing its mini-batch; a population with one each
def test_the_compiled_error_is_the_exact_one_to_float32_rounding(kernels, kind, layout, z_shape, y_shape):
    rng = np.random.default_rng(0)
    z = layout(rng.normal(scale=4, size=z_shape).astype(np.float32))
    z[..., 0, :2] = [60.0, -60.0]  # saturated outputs: exp overflows, the sigmoid is 0 or 1
    y = rng.integers(0, z_shape[-1], y_shape)
    got = kernels.delta(z, y, kind)
    assert got.shape == z.shape and got.dtype == np.float32 and got.strides == z.strides
    want = exact(kind, z, y)
    assert np.abs(got - want).max() <= 3e-7  # a few float32 roundings of numbers up to 1
    numpy_value = getattr(COSTS[kind], "delta")(z.astype(np.float64), y)  # noqa: B009
    assert np.abs(got - numpy_value).max() <= 3e-7
    if kind == "log_likelihood":  # each row's softmax sums to 1, its target too
        assert np.abs(got.sum(axis=-1)).max() <= 1e-6


@pytest.mark.parametrize("kind", list(COSTS))
def test_a_nan_spreads_over_its_row_as_numpys_does(kernels, kind):
    z = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
    z[2, 4] = np.nan
    y = np.arange(5)
    got, want = kernels.delta(z, y, kind), getattr(COSTS[kind], "delta")(z.astype(np.float64), y)  # noqa: B009
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[2]).any() and not np.isnan(np.delete(got, 2, axis=0)).any()


@pytest.mark.parametrize("label", [-1, 10])
def test_a_label_outside_the_classes_is_an_error_not_a_stray_write(kernels, label):
    z = np.zeros((3, 10), np.float32)
    with pytest.raises(IndexError, match="outside the output layer's classes"):
        kernels.delta(z, np.array([0, label, 1]), "log_likelihood")


def test_other_dtypes_and_shapes_are_refused(kernels):
    with pytest.raises(TypeError, match="float32.*float64"):
        kernels.delta(np.zeros((2, 3)), np.zeros(2, int), "quadratic")
    with pytest.raises(ValueError, match=r"\(m, n\) or \(K, m, n\), got shape \(3,\)"):
        kernels.delta(np.zeros(3, np.float32), np.zeros(1, int), "quadratic")


@pytest.mark.parametrize("kind", list(COSTS))
def test_float32_runs_compiled_and_float64_on_numpys_path(kernels, monkeypatch, kind):
    cost, calls, kernel = COSTS[kind], [], kernels.delta
    monkeypatch.setattr(costs, "KERNELS", kernels)
    monkeypatch.setattr(kernels, "delta", lambda z, y, k: calls.append((z.dtype, k)) or kernel(z, y, k))
    z = np.random.default_rng(2).normal(scale=3, size=(10, 10))
    y = np.arange(10)
    monkeypatch.setattr(costs, "KERNELS", None)  # HPEXP_KERNELS=numpy, or no numba
    numpy_value, numpy_float32 = cost.delta(z, y), cost.delta(z.astype(np.float32), y)
    monkeypatch.setattr(costs, "KERNELS", kernels)
    assert np.array_equal(cost.delta(z, y), numpy_value)  # float64: NumPy's, bit for bit
    assert calls == []
    got = cost.delta(z.astype(np.float32), y)
    assert calls == [(np.float32, kind)] and got.dtype == np.float32
    assert np.abs(got - numpy_float32).max() <= 3e-7 and not np.array_equal(got, numpy_float32)
