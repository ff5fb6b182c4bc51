"""SGD with and without (Nesterov) momentum, against the formulas written out."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import group_options, load_option

from hpexp.nn.optimizers import SGD
from hpexp.nn.regularizers import Regularizer


def gradients(steps, shape=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(steps)]


def run(optimizer, w0, grads, eta):
    w, trajectory = w0.copy(), []
    for g in grads:
        optimizer.step([w], [eta * g])  # the training loop passes eta-scaled gradients
        trajectory.append(w.copy())
    return trajectory


def test_momentum_zero_equals_plain_sgd_step_for_step():
    w0, grads = np.ones((4, 3)), gradients(6)
    plain, w = [], w0.copy()
    for g in grads:
        w = w - 0.3 * g
        plain.append(w)
    for got, want in zip(run(SGD(eta=0.3, momentum=0.0), w0, grads, 0.3), plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_follows_the_velocity_formula(nesterov):
    w0, grads, mu, eta = np.ones((4, 3)), gradients(6, seed=1), 0.9, 0.1
    v, w, want = np.zeros_like(w0), w0.copy(), []
    for g in grads:
        v = mu * v - eta * g
        w = w + (mu * v - eta * g if nesterov else v)
        want.append(w)
    got = run(SGD(eta=eta, momentum=mu, nesterov=nesterov), w0, grads, eta)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_momentum_is_a_population_of_independent_rates():
    """eta of shape (K, 1, 1) steps each member with its own rate."""
    w0, grads = np.ones((2, 4, 3)), gradients(3, shape=(2, 4, 3))
    eta = np.array([0.1, 0.2]).reshape(2, 1, 1)
    got = run(SGD(eta=0.1, momentum=0.5), w0, grads, eta)[-1]
    for k in range(2):
        alone = run(SGD(eta=0.1, momentum=0.5), w0[k], [g[k] for g in grads], float(eta[k, 0, 0]))[-1]
        np.testing.assert_allclose(got[k], alone)


@pytest.mark.parametrize("option", group_options("optimizer"))
def test_presets_are_the_one_sgd_class(option):
    optimizer = load_option("optimizer", option)
    assert type(optimizer) is SGD
    assert {"sgd": 0.0, "momentum": 0.9, "nesterov": 0.9}.get(
        option, optimizer.momentum
    ) == optimizer.momentum


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"momentum": -0.1}, "momentum"),
        ({"eta": 0.0}, "eta must be > 0"),
        ({"nesterov": True}, "nesterov needs"),
    ],
)
def test_bad_values_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        SGD(**{"eta": 0.1, **fields})


@pytest.mark.parametrize("l1_ratio", [0.0, 0.3, 1.0])
def test_weight_decay_is_the_penalty_gradient_step_of_plain_sgd(l1_ratio):
    """The training loop's plain step (L2 as weight decay, L1 added to the eta-scaled gradient)
    against w - eta (g + grad of the penalty), the penalty's gradient checked by finite differences
    in test_network."""
    rng = np.random.default_rng(3)
    w0, g = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    w0[0, 0] = 0.0  # sgn(0) = 0
    reg, eta, n = Regularizer(lmbda=2.0, l1_ratio=l1_ratio), 0.4, 10
    w, scaled = w0.copy(), eta * g
    factor = reg.weight_decay(eta, n)
    add = reg.add_grad(eta, n, l2=factor is None)
    if add:
        add(w, scaled)
    SGD(eta).step([w], [scaled], [w] if factor is not None else [], 1.0 if factor is None else factor)
    np.testing.assert_allclose(w, w0 - eta * (g + reg.grad(w0, n)), rtol=1e-12, atol=1e-15)
    assert (factor is None) == (l1_ratio == 1.0)


def test_weight_decay_is_refused_with_momentum():
    w = np.ones((2, 2))
    with pytest.raises(ValueError, match="plain SGD only"):
        SGD(0.1, momentum=0.5).step([w], [np.ones((2, 2))], [w], 0.99)


# --- a step by a gradient left as a product (SGD.step's `products`) --------------------------------


@pytest.fixture
def blas():
    pytest.importorskip("scipy", reason="the BLAS step needs the optional `fast` extra (SciPy)")
    from hpexp.kernels import blas

    return blas


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("orders", ["CCC", "CFC", "CCF", "FFF", "FCC"])
@pytest.mark.parametrize("factor", [1.0, 0.999])
def test_descend_with_blas_equals_numpy(blas, monkeypatch, dtype, orders, factor):
    """w <- factor w - a^T b in place, whatever the arrays' memory order: BLAS's sums to rounding."""
    from hpexp.nn import optimizers

    rng = np.random.default_rng(1)
    w0, a, b = (
        np.asarray(rng.normal(size=shape), dtype, order=order)
        for shape, order in zip([(7, 30), (10, 7), (10, 30)], orders, strict=True)
    )
    steps = []
    for kernel in (None, blas):
        monkeypatch.setattr(optimizers, "BLAS", kernel)
        w = w0.copy(order="K")
        optimizers.descend(w, a, b, factor)
        steps.append(w)
    want, got = steps
    np.testing.assert_array_equal(want, w0 * factor - a.T @ b)  # NumPy: the product, then the step
    # BLAS adds the m terms of each sum in its own order: equal to 1e-6 of their sizes in float32
    scale = factor * np.abs(w0) + np.abs(a.T) @ np.abs(b)
    assert np.all(np.abs(got - want) <= (1e-6 if dtype == "float32" else 1e-14) * scale)


@pytest.fixture
def dense_kernels():
    pytest.importorskip("numba", reason="the compiled kernels need the optional `fast` extra (numba)")
    from hpexp.kernels import dense

    return dense


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("n_out", "m"), [(1, 10), (3, 7), (8, 10), (9, 3), (30, 12), (100, 5)])
@pytest.mark.parametrize("factor", [1.0, 0.999])
def test_descend_with_the_compiled_kernel_equals_numpy(dense_kernels, monkeypatch, dtype, n_out, m, factor):
    """The compiled step: four rows of W by five of b per pass, the last rows repeated where fewer
    are left (so each row must be stepped exactly once) and zero rows past the mini-batch."""
    from hpexp.nn import optimizers

    monkeypatch.setattr(optimizers, "KERNELS", dense_kernels)
    calls = []
    kernel = dense_kernels.descend
    monkeypatch.setattr(dense_kernels, "descend", lambda *args: calls.append(1) or kernel(*args))
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(n_out, 37)).astype(dtype)
    a, b = rng.normal(size=(m, n_out)).astype(dtype), rng.normal(size=(m, 37)).astype(dtype)
    w = w0.copy()
    optimizers.descend(w, a, b, factor, compiled=True)
    assert calls == [1]
    want = w0 * factor - np.einsum("ki,kj->ij", a, b)  # the per-example sum of outer products
    scale = factor * np.abs(w0) + np.abs(a.T) @ np.abs(b)
    assert np.all(np.abs(w - want) <= (1e-6 if dtype == "float32" else 1e-14) * scale)


def test_the_compiled_step_leaves_what_it_cannot_take_to_blas_or_numpy(dense_kernels, monkeypatch):
    """A Fortran-ordered w, or factors of another dtype, are refused untouched (False), and
    `descend` steps them the other way; a population's (K, p, q) weights never reach the kernel."""
    from hpexp.nn import optimizers

    rng = np.random.default_rng(3)
    w, a, b = np.asfortranarray(rng.normal(size=(4, 6))), rng.normal(size=(5, 4)), rng.normal(size=(5, 6))
    before = w.copy()
    assert not dense_kernels.descend(w, a, b)
    assert not dense_kernels.descend(np.ascontiguousarray(w), a.astype("float32"), b)
    np.testing.assert_array_equal(w, before)
    monkeypatch.setattr(optimizers, "KERNELS", dense_kernels)
    monkeypatch.setattr(optimizers, "BLAS", None)
    optimizers.descend(w, a, b, compiled=True)
    np.testing.assert_array_equal(w, before - a.T @ b)
    calls = []
    monkeypatch.setattr(dense_kernels, "descend", lambda *args: calls.append(1))
    population = rng.normal(size=(2, 4, 6))
    optimizers.descend(population, rng.normal(size=(2, 5, 4)), b, compiled=True)
    assert calls == []
