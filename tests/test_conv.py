"""Convolution and pooling against finite differences and a direct loop convolution; conv networks
built from config: whole-network gradient checks, shapes, weights for L2, network3 init, training."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import SMALL
from threadpoolctl import threadpool_limits

from hpexp.nn.activations import Identity, ReLU, Sigmoid, Tanh
from hpexp.nn.conv import Conv2D, ConvPool, ConvPoolSpec, ConvStack, Flatten, L2Pool, MaxPool, parity_order
from hpexp.nn.init import Fan, Network3
from hpexp.nn.network import DenseSpec, shapes
from hpexp.train import rundir
from hpexp.train.runner import ConfigError, build_network, compose, run, validate


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


@pytest.mark.parametrize("activation", [Sigmoid(), Tanh(), ReLU(), Identity()])
def test_conv_pool_gradients(activation):
    rng = np.random.default_rng(3)
    layer = ConvPool(rng.normal(size=(2, 1, 3, 3)) * 0.3, rng.normal(size=(2, 1, 1)), activation, MaxPool(2))
    numeric_check(layer, rng.normal(size=(2, 1, 8, 8)), rng)


def test_flatten_is_c_order_and_invertible():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    flat = Flatten()
    assert flat.forward(x)[1].tolist() == list(range(12, 24))
    np.testing.assert_array_equal(flat.backward(flat.forward(x)), x)


# --- conv networks built from config ---------------------------------------------------------------


def conv_network(overrides, seed=0, dtype="float64"):
    cfg = compose([*overrides, f"dtype={dtype}"])
    parts = validate(cfg)
    return build_network(cfg, parts, np.random.default_rng(seed)), parts, cfg


def mnist_rows(mnist_dir, m):
    from hpexp.data import mnist as data

    split = data.load_splits(mnist_dir, n_train=m, dtype="float64", splits=["train"])["train"]
    return split.x, split.y


def sampled_gradcheck(network, regularizer, x, y, n, masks=None, entries=12, eps=1e-6, seed=0):
    """Backprop (plus the penalty's gradient) against central differences of the total cost, on
    `entries` sampled entries of every parameter array; returns the worst relative error
    ||g_backprop - g_numeric|| / (||g_backprop|| + ||g_numeric||), that sum floored at 1e-2."""
    rng = np.random.default_rng(seed)

    def cost():
        pen = sum(float(regularizer.value(w, n)) for w in network.weights)
        return float(network.cost.value(network.logits(x, masks), y)) + pen

    network.backprop(x, y, masks)
    for w, g in zip(network.weights, network.weight_grads, strict=True):
        g += regularizer.grad(w, n)
    analytic = [g.copy() for g in network.grads]
    worst = 0.0
    with threadpool_limits(limits=1, user_api="blas"):  # tiny products: threads only cost here
        for p, a in zip(network.params, analytic, strict=True):
            worst = max(
                worst, _array_error(p, a, cost, rng.choice(p.size, min(entries, p.size), replace=False), eps)
            )
    return worst


def _array_error(p, a, cost, picks, eps):
    got, want = [], []
    for flat in picks:
        idx = np.unravel_index(flat, p.shape)
        old = p[idx]
        p[idx] = old + eps
        up = cost()
        p[idx] = old - eps
        down = cost()
        p[idx] = old
        want.append((up - down) / (2 * eps))
        got.append(a[idx])
    got, want = np.array(got), np.array(want)
    # Relative error, except for arrays with tiny gradients (a few 1e-6 for the first conv layer),
    # where the differences' rounding noise (~1e-10 on a cost of ~1) dominates.
    scale = max(np.linalg.norm(got) + np.linalg.norm(want), 1e-2)
    return float(np.linalg.norm(got - want) / scale)


@pytest.mark.parametrize(
    "overrides",
    [
        ["network=conv2", "network.fc=7", "activation=sigmoid", "cost=log_likelihood"],
        ["network=conv2_2fc", "network.fc=7", "activation=tanh", "cost=cross_entropy"],
        ["network=conv1", "network.fc=7", "activation=relu", "network.layers.0.pooling=l2"],
        ["network=conv1_nofc", "activation=sigmoid", "cost=quadratic"],
    ],
)
def test_whole_conv_network_gradients_match_finite_differences(overrides, mnist_dir):
    """Real digits (blank borders make ties in max-pooling regions) through the config path."""
    network, _, _ = conv_network([*overrides, "init=default"])
    x, y = mnist_rows(mnist_dir, 3)
    from hpexp.nn.regularizers import L2

    assert sampled_gradcheck(network, L2(3.0), x, y, n=20) < 1e-6


def test_conv_network_gradients_with_dropout_masks(mnist_dir):
    network, _, _ = conv_network(
        ["network=conv2_2fc", "network.fc=6", "activation=sigmoid", "cost=log_likelihood", "init=default"]
    )
    from hpexp.nn.regularizers import Regularizer

    reg = Regularizer(p=0.5, p_input=0.2, inverted=False)
    x, y = mnist_rows(mnist_dir, 3)
    masks = reg.masks(network.input_shapes(len(y)), np.random.default_rng(1), np.float64)
    assert [None if m is None else m.shape for m in masks] == [(3, 784), (3, 640), (3, 6), (3, 6)]
    assert sampled_gradcheck(network, reg, x, y, n=20, masks=masks) < 1e-6


def test_max_pool_sends_a_tied_regions_gradient_to_one_element():
    """A constant region's max moves with any one element: its gradient must not count four times."""
    x = np.zeros((1, 1, 2, 2))
    pool = MaxPool(2)
    pool.forward(x)
    assert pool.backward(np.ones((1, 1, 1, 1))).sum() == 1.0


def test_conv_networks_compose_from_config():
    for name, kinds, n_in in [
        ("conv1", ["ConvStack", "Dense", "Dense"], [784, 2880, 100]),
        ("conv1_nofc", ["ConvStack", "Dense"], [784, 2880]),
        ("conv2", ["ConvStack", "Dense", "Dense"], [784, 640, 100]),
        ("conv2_2fc", ["ConvStack", "Dense", "Dense", "Dense"], [784, 640, 100, 100]),
    ]:
        network, _, _ = conv_network([f"network={name}", "init=network3"], dtype="float32")
        assert [type(layer).__name__ for layer in network.layers] == kinds
        assert [s[-1] for s in network.input_shapes(10)] == n_in
        assert network.flat_params.dtype == np.float32
    network, _, _ = conv_network(["network=conv2", "network.fc=300"])
    assert network.layers[1].w.shape == (300, 640)


def test_sizes_is_the_dense_shorthand():
    a, _, _ = conv_network(["network=mlp30"], seed=3)
    cfg = compose(
        [
            "+network.input=[784]",
            "+network.layers=[{_target_: hpexp.nn.network.DenseSpec, units: 30},"
            "{_target_: hpexp.nn.network.DenseSpec, units: 10}]",
            "dtype=float64",
        ]
    )
    b = build_network(cfg, validate(cfg), np.random.default_rng(3))
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("network.layers.0.filters=0", "filters, size and pool"),
        ("network.layers.0.size=29", "do not fit"),
        ("network.layers.0.pooling=avg", "pooling must be one of"),
        ("network.input=[784]", "needs \\(channels, height, width\\)"),
        ("network.input=[1,27,27]", "does not match MNIST"),
        ("network.layers.2.units=9", "does not match MNIST"),
    ],
)
def test_bad_conv_specs_fail_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(["network=conv1", override]))


def test_weights_and_input_shapes_of_a_conv_network():
    network, _, _ = conv_network(["network=conv2", "network.fc=5"])
    stack = network.layers[0]
    assert isinstance(stack, ConvStack)
    assert [w.shape for w in network.weights] == [(20, 25), (40, 500), (5, 640), (10, 5)]
    assert network.input_shapes(7) == [(7, 784), (7, 640), (7, 5)]
    for w, g in zip(network.weights, network.weight_grads, strict=True):
        assert np.shares_memory(w, network.flat_params) and np.shares_memory(g, network.flat_grads)
    # A row of a conv weight view is one filter; changing the view changes the filter.
    np.testing.assert_array_equal(network.weights[1][3], stack.layers[1].w[3].ravel())
    network.weights[0][...] *= 2.0
    np.testing.assert_array_equal(network.weights[0][0], stack.layers[0].w[0].ravel())
    # L2 acts on every weight array and on no bias: sum of squares of filters and matrices.
    from hpexp.nn.regularizers import L2

    total = sum(float(L2(2.0).value(w, 10)) for w in network.weights)
    squares = sum(float(np.sum(layer.w**2)) for layer in stack.layers) + sum(
        float(np.sum(layer.w**2)) for layer in network.layers[1:]
    )
    assert total == pytest.approx(2.0 / 10 / 2 * squares)


def test_network3_init_standard_deviations():
    """conv: sqrt(1/(maps * 25 / 4)); FC: sqrt(1/n_out); the softmax layer: zeros; biases N(0, 1)."""
    fan = Fan(25, 20 * 25 / 4)
    got = Network3().weights((20, 1, 5, 5), np.random.default_rng(0), fan)
    np.testing.assert_allclose(
        got, math.sqrt(1 / 125) * np.random.default_rng(0).standard_normal((20, 1, 5, 5))
    )
    assert math.sqrt(1 / 125) == pytest.approx(0.0894, abs=1e-4)
    rng = np.random.default_rng(1)
    big = ConvPoolSpec(400, 5, 2).build((40, 12, 12), Identity(), Network3(), rng, "float64")
    assert np.std(big.w) == pytest.approx(math.sqrt(1 / (400 * 25 / 4)), rel=0.01)
    assert np.std(big.b) == pytest.approx(1.0, rel=0.15)
    fc = DenseSpec(1000).build((640,), Identity(), Network3(), rng, "float64")
    assert np.std(fc.w) == pytest.approx(math.sqrt(1 / 1000), rel=0.01)
    out = DenseSpec(10).build((1000,), Identity(), Network3(), rng, "float64", output=True)
    assert not out.w.any() and not out.b.any()
    network, _, _ = conv_network(["network=conv2", "init=network3"])
    assert np.std(network.layers[0].layers[1].w) == pytest.approx(math.sqrt(1 / 250), rel=0.05)
    assert not network.layers[-1].w.any()


def test_shapes_of_the_book_architectures():
    specs = [ConvPoolSpec(20), ConvPoolSpec(40), DenseSpec(100), DenseSpec(10)]
    assert shapes((1, 28, 28), specs) == [(1, 28, 28), (20, 12, 12), (40, 4, 4), (100,), (10,)]


@pytest.mark.parametrize(
    ("network", "extra", "above"),
    [
        ("conv1", ["optimizer.eta=0.1"], 0.2),  # 50 steps on 500 images: clearly above chance
        ("conv2_2fc", ["regularizer=dropout", "regularizer.inverted=false", "regularizer.lmbda=1.0"], 0.0),
    ],
)
def test_conv_network_trains_one_epoch_on_a_tiny_subset(network, extra, above, mnist_dir, tmp_path):
    overrides = [*SMALL, f"data.dir={mnist_dir}", f"network={network}", "network.fc=20", "train.epochs=1"]
    cfg = compose([*overrides, "cost=log_likelihood", "init=network3", "activation=relu", *extra])
    out = run(cfg, tmp_path / "run", progress=False)
    summary = rundir.read_summary(out)
    assert summary["status"] == "completed"
    assert math.isfinite(summary["final"]["val_cost"]) and summary["final"]["val_accuracy"] > above
    built = conv_network([f"network={network}", "network.fc=20"])[0]
    assert summary["n_params"] == sum(p.size for p in built.params)


# --- the compiled kernels (optional `fast` extra): the NumPy code is the reference -----------------


@pytest.fixture
def kernels():
    pytest.importorskip("numba", reason="the compiled kernels need the optional `fast` extra (numba)")
    from hpexp.kernels import conv as compiled

    return compiled


def maps_first(a):
    """The same values stored map by map, as a convolution's output is (a non-contiguous view)."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


def test_parity_order_is_the_even_rows_then_the_odd_ones():
    assert parity_order(5).tolist() == [0, 2, 4, 1, 3]
    assert parity_order(6).tolist() == [0, 2, 4, 1, 3, 5]
    assert parity_order(1).tolist() == [0]


def in_parity_order(a):
    """a (..., H, W) with its rows stored as a conv-pool layer's float32 maps are: even, then odd."""
    return np.concatenate([a[..., 0::2, :], a[..., 1::2, :]], axis=-2)


@pytest.mark.parametrize("parity", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("shape", "kernel"), [((3, 1, 9, 8), (5, 5)), ((2, 4, 7, 6), (3, 2)), ((1, 2, 5, 5), (5, 5))]
)
def test_compiled_im2col_and_its_adjoint_equal_numpy_bit_for_bit(
    kernels, monkeypatch, shape, kernel, dtype, parity
):
    """Both ways, with each image's rows of patches in order or in parity order (those the rows in
    order, moved: the adjoint then adds the same gradients onto the same pixels)."""
    from hpexp.nn import conv

    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    monkeypatch.setattr(conv, "KERNELS", None)
    want = conv.patches(x, *kernel, parity)
    d = rng.normal(size=want.shape).astype(dtype)
    want_back = conv.unpatch(d, shape, *kernel, parity)
    for given in (x, maps_first(x)):
        got = kernels.patches(given, *kernel, parity)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    got_back = kernels.unpatch(d, shape, *kernel, parity)
    assert got_back.shape == want_back.shape and np.array_equal(got_back, want_back)
    if parity:  # the same patches and pixels' gradients as in order, the rows moved
        (kh, kw), (m, c, height, width) = kernel, shape
        grid = (c * kh * kw, m, height - kh + 1, width - kw + 1)
        in_order = conv.patches(x, *kernel).reshape(grid)
        assert np.array_equal(got.reshape(grid), in_parity_order(in_order))
        d_in_order = np.empty(grid, dtype)
        d_in_order[..., parity_order(grid[2]), :] = d.reshape(grid)
        assert np.array_equal(got_back, conv.unpatch(d_in_order.reshape(d.shape), shape, *kernel))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("shape", "parity"),
    # 9 x 7: a border row and column left over
    [((3, 4, 8, 8), False), ((2, 3, 9, 7), False), ((3, 4, 8, 8), True), ((2, 3, 6, 10), True)],
)
def test_compiled_max_pool_gradient_equals_numpy_with_ties_bit_for_bit(
    kernels, monkeypatch, shape, parity, dtype
):
    """Given the maps' rows in parity order, the pooling is the same as of the rows in order, and
    the gradient the same, its rows moved as the input's were."""
    from hpexp.nn import conv

    rng = np.random.default_rng(1)
    in_order = np.round(rng.uniform(0, 2, shape)).astype(dtype)  # 0, 1, 2: many tied regions
    x = maps_first(in_parity_order(in_order) if parity else in_order)
    delta = rng.normal(size=(shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(dtype)
    pool = MaxPool(2)
    monkeypatch.setattr(conv, "KERNELS", None)
    out = pool.forward(maps_first(in_order))
    want = pool.backward(delta)
    if parity:
        assert np.array_equal(pool.forward(x, parity=True), out)
        want = in_parity_order(want)
        assert np.array_equal(pool.backward(delta), want)
    monkeypatch.setattr(conv, "KERNELS", kernels)
    assert np.array_equal(pool.forward(x, parity=parity), out)
    got = pool.backward(delta)
    assert np.array_equal(got, want)
    assert np.count_nonzero(got) == np.count_nonzero(delta)  # one winner per region, ties or not
    got, win = kernels.maxpool2_winners(np.ascontiguousarray(x), parity=parity)
    assert np.array_equal(got, out)
    assert np.array_equal(kernels.maxpool2_grad(win, delta, shape, parity=parity)[0], want)


@pytest.mark.parametrize("parity", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_max_pool_equals_numpy_bit_for_bit_with_signed_zeros_and_nan(
    kernels, monkeypatch, dtype, parity
):
    """np.maximum's rules, in the NumPy code's order: of two equal values the later is kept (so
    -0.0 then 0.0 pools to 0.0), and a NaN anywhere in a region makes its maximum NaN; with the
    rows in parity order too (the regions' elements then read from two runs of the map)."""
    from hpexp.nn import conv

    rng = np.random.default_rng(5)
    in_order = rng.choice(np.array([-0.0, 0.0, 1.0, -1.0, np.nan], dtype), size=(3, 4, 10, 8))
    x = maps_first(in_parity_order(in_order) if parity else in_order)
    pool = MaxPool(2)
    monkeypatch.setattr(conv, "KERNELS", None)
    want = pool.infer(maps_first(in_order))
    monkeypatch.setattr(conv, "KERNELS", kernels)
    given = (
        pool.infer(x, parity),
        pool.forward(x, parity=parity),
        kernels.maxpool2(np.ascontiguousarray(x), parity),
    )
    for got in given:
        assert got.shape == want.shape and np.array_equal(got, want, equal_nan=True)
        assert np.array_equal(np.signbit(got), np.signbit(want))
    assert np.isnan(want).any() and (np.signbit(want) & (want == 0)).any()  # the cases occurred


def test_maps_in_parity_order_need_an_even_height_and_width(kernels):
    for shape in [(1, 1, 8, 7), (1, 1, 7, 8)]:
        with pytest.raises(ValueError, match=f"even height and width, got {shape[2]} x {shape[3]}"):
            kernels.maxpool2(np.zeros(shape), parity=True)


@dataclass(frozen=True)
class Softsign:
    """An activation the compiled pooling's backward does not know: f(z) = z / (1 + |z|)."""

    def value(self, z):
        return z / (1 + np.abs(z))

    def grad(self, z, a):
        return (1 - np.abs(a)) ** 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", [Sigmoid(), Tanh(), ReLU(), Identity(), Softsign()])
@pytest.mark.parametrize(
    ("shape", "parity"),
    # maps 10 x 11 and 9 x 8 (3 x 2 filters): a border left over; in parity order, even sizes
    [((4, 2, 12, 12), False), ((3, 1, 11, 9), False), ((3, 1, 10, 9), True), ((3, 1, 8, 13), True)],
)
def test_a_compiled_conv_pool_layer_equals_numpy(kernels, monkeypatch, activation, shape, parity, dtype):
    """Forward with the bias added in the pooling's pass, backward with f'(z) applied and the bias's
    gradient summed in the pooling's backward: the output and the input's and filters' gradients bit
    for bit, the bias's gradient (float64 sums) to 1e-6 (float32; 1e-13 float64) of its terms' sizes.
    Rounded inputs make tied regions and ReLU's zeros; a larger f(z) keeps sigmoid off 1/2. Both
    engines with the maps' rows in order, or both in parity order (BLAS then sums the filters'
    gradient over the positions in that order), whatever dtype."""
    from hpexp.nn import conv

    monkeypatch.setattr(ConvPool, "parity_for", lambda self, x: parity)
    rng = np.random.default_rng(8)
    x = np.round(rng.uniform(0, 2, shape)).astype(dtype)
    w = rng.normal(size=(5, shape[1], 3, 2)).astype(dtype)
    b = rng.normal(size=(5, 1, 1)).astype(dtype)
    results = []
    for engine in (None, kernels):
        monkeypatch.setattr(conv, "KERNELS", engine)
        layer = ConvPool(w.copy(), b.copy(), activation, MaxPool(2))
        out = layer.forward(x)
        delta = np.random.default_rng(9).normal(size=out.shape).astype(dtype)
        dz = delta * activation.grad(layer.z, layer.a)  # the terms of the bias's gradient
        results.append((out, layer.backward(delta), layer.conv.gw.copy(), layer.gb.copy()))
    (out, dx, gw, gb), got = results
    assert all(r.dtype == np.dtype(dtype) for r in got)
    for want, have in zip((out, dx, gw), got[:3], strict=True):
        assert have.shape == want.shape and np.array_equal(have, want)
    tol = 1e-6 if dtype == "float32" else 1e-13
    assert np.all(np.abs(got[3] - gb) <= tol * np.abs(dz).sum(axis=(0, 2, 3)).reshape(gb.shape))
    if isinstance(activation, ReLU):
        assert (out == 0).any()  # zeros occurred


def test_a_conv_pool_layer_stores_its_maps_in_parity_order_with_compiled_max_pooling_in_float32(
    kernels, monkeypatch
):
    """Only there (maps of an even height and width), and then equal to the NumPy layer (rows in order) to
    rounding: BLAS sums the filters' gradient over the positions in another order."""
    from hpexp.nn import conv

    rng = np.random.default_rng(11)
    w, b = rng.normal(size=(6, 2, 5, 5)), rng.normal(size=(6, 1, 1))
    x = rng.uniform(0, 1, (5, 2, 16, 16))  # 12 x 12 maps

    def layer(dtype, pool=None, x=x):
        x = x.astype(dtype)
        return ConvPool(w.astype(dtype), b.astype(dtype), Sigmoid(), pool or MaxPool(2)), x

    monkeypatch.setattr(conv, "KERNELS", kernels)
    assert ConvPool.parity_for(*layer("float32"))
    assert not ConvPool.parity_for(*layer("float64"))
    assert not ConvPool.parity_for(*layer("float32", L2Pool(2)))
    assert not ConvPool.parity_for(*layer("float32", MaxPool(3)))
    assert not ConvPool.parity_for(*layer("float32", x=x[..., :15]))  # maps 11 wide
    assert not ConvPool.parity_for(*layer("float32", x=x[..., :15, :]))  # maps 11 high
    results = []
    for engine in (None, kernels):
        monkeypatch.setattr(conv, "KERNELS", engine)
        cp, x32 = layer("float32")
        out = cp.forward(x32)
        assert cp.pool.parity == (engine is not None)
        delta = np.random.default_rng(12).normal(size=out.shape).astype(np.float32)
        results.append((out, cp.backward(delta), cp.conv.gw.copy(), cp.infer(x32)))
    for want, have in zip(*results, strict=True):
        assert have.dtype == np.float32
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(results[0][2], results[1][2])  # the test tests: another order of the sums


def test_max_pool_backward_reads_the_compiled_forwards_winners_without_the_kernels(kernels, monkeypatch):
    """Forward compiled, then backward on the NumPy path (the kernels turned off in between): the
    winners recorded are used, the gradient as NumPy's own, ties and a border included."""
    from hpexp.nn import conv

    rng = np.random.default_rng(10)
    x = maps_first(np.round(rng.uniform(0, 2, (3, 4, 9, 7))))
    delta = rng.normal(size=(3, 4, 4, 3))
    pool = MaxPool(2)
    monkeypatch.setattr(conv, "KERNELS", None)
    pool.forward(x)
    want = pool.backward(delta)
    monkeypatch.setattr(conv, "KERNELS", kernels)
    pool.forward(x)
    monkeypatch.setattr(conv, "KERNELS", None)
    assert pool.win is not None and np.array_equal(pool.backward(delta), want)


def train_few_steps(network, filter_grads, monkeypatch, tmp_path, winners="numpy"):
    """The float32 weights after four SGD steps (with dropout) of a small conv net, each conv
    layer's filter gradient taken compiled or by BLAS as `filter_grads` says it measured faster, and
    its backward over the pooling's winners or not as `winners` says."""
    from hpexp.train import timings, ways
    from hpexp.train.loop import train_epoch

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / f"{filter_grads}-{winners}.json"))
    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    faster = {"numpy": 1.0, "compiled": 1.0} | {filter_grads: 0.5}
    monkeypatch.setattr(ways, "measure_conv", lambda *a: faster)
    blas = {"numpy": 1.0, "formed": 1.0, "compiled": 2.0, "product": 2.0}  # the dense ways: fixed
    monkeypatch.setattr(ways, "measure_dense", lambda *a: blas)
    monkeypatch.setattr(ways, "measure_back", lambda *a: blas)
    backward = {"numpy": 1.0, "winners": 1.0} | {winners: 0.5}
    monkeypatch.setattr(ways, "measure_winners", lambda *a: backward)
    cfg = compose(
        [
            f"network={network}",
            "network.fc=20",
            "activation=relu",
            "cost=log_likelihood",
            "init=network3",
            "regularizer=dropout",
            "dtype=float32",
        ]
    )
    parts = validate(cfg)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (40, 784)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    net = build_network(cfg, parts, np.random.default_rng(3), "float32")
    train_epoch(net, parts.optimizer, parts.regularizer, x, y, 10, 0.1, np.random.default_rng(4))
    assert not np.array_equal(
        net.flat_params, build_network(cfg, parts, np.random.default_rng(3), "float32").flat_params
    )
    return net.flat_params.copy()


@pytest.mark.parametrize("network", ["conv1", "conv2"])
def test_a_conv_net_trains_to_rounding_the_same_weights_with_and_without_kernels(
    kernels, monkeypatch, tmp_path, network
):
    """The kernels change the weights by rounding only (filter gradients by BLAS): they move data
    bit for bit (the tests above), but add each bias's gradient in float64."""
    from hpexp.nn import conv

    weights = []
    for engine in (None, kernels):
        monkeypatch.setattr(conv, "KERNELS", engine)
        weights.append(train_few_steps(network, "numpy", monkeypatch, tmp_path))
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-4, atol=1e-6)  # as below


@pytest.mark.parametrize("network", ["conv1", "conv2"])
def test_a_conv_net_trains_to_rounding_the_same_with_compiled_filter_gradients_and_backward(
    kernels, monkeypatch, tmp_path, network
):
    """The compiled filter gradient and the backward over the winners, each where measured faster,
    change the weights by rounding only."""
    from hpexp.nn import conv

    monkeypatch.setattr(conv, "KERNELS", kernels)
    blas = train_few_steps(network, "numpy", monkeypatch, tmp_path)
    for ways in [("compiled", "numpy"), ("numpy", "winners"), ("compiled", "winners")]:
        compiled = train_few_steps(network, ways[0], monkeypatch, tmp_path, ways[1])
        assert not np.array_equal(blas, compiled)  # the test tests: another order of the sums
        np.testing.assert_allclose(compiled, blas, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("filters", "shape", "kernel"),
    [
        (20, (10, 1, 28, 28), (5, 5)),
        (7, (3, 2, 9, 8), (3, 2)),
        (1, (1, 1, 5, 5), (5, 5)),
        (6, (2, 3, 6, 7), (2, 3)),
    ],
)
@pytest.mark.parametrize("rows", [4, 2])
def test_compiled_filter_gradient_equals_numpy(kernels, filters, shape, kernel, dtype, rows):
    """delta patches^T to 1e-6 (float32; 1e-14 in float64) of the sum of the terms' sizes: the
    kernel adds each sum's terms in another order than BLAS. Filters not a multiple of 4 (or 2) and
    patch sizes not a multiple of 5 take the kernel's repeated last rows."""
    from hpexp.nn import conv

    rng = np.random.default_rng(6)
    cols = conv.patches(rng.uniform(0, 1, shape).astype(dtype), *kernel)
    delta = rng.normal(size=(filters, cols.shape[1])).astype(dtype)
    want = (cols @ delta.T).T
    got = np.full_like(want, np.nan)
    kernels.filter_grad(delta, cols, got, rows)
    scale = np.abs(delta) @ np.abs(cols).T
    assert np.all(np.abs(got - want) <= (1e-6 if dtype == "float32" else 1e-14) * scale)


@pytest.mark.parametrize("rows", [4, 2])
def test_a_compiled_conv_layer_passes_the_gradient_check(kernels, monkeypatch, rows):
    """`Conv2D.compiled` changes how backward sums the filters' gradient, nothing else."""
    from hpexp.nn import conv

    calls, kernel = [], kernels.filter_grad

    def filter_grad(delta, cols, out, by):
        calls.append((delta.shape, by))
        kernel(delta, cols, out, by)

    monkeypatch.setattr(conv, "KERNELS", kernels)
    monkeypatch.setattr(kernels, "filter_grad", filter_grad)
    rng = np.random.default_rng(1)
    layer = Conv2D(rng.normal(size=(5, 2, 3, 2)))
    layer.compiled, layer.rows = True, rows
    numeric_check(layer, rng.normal(size=(2, 2, 6, 5)), rng)
    assert calls == [((5, 2 * 4 * 4), rows)]  # the kernel took the filters' gradient


def test_conv_layers_take_the_filter_gradient_measured_faster(monkeypatch, tmp_path):
    """Per conv layer shape (and its input's) and mini-batch size, measured once per machine as
    the dense layers' ways are, float32 only, and kept in the run's record."""
    from hpexp.nn import conv
    from hpexp.train import timings, ways

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    monkeypatch.setattr(conv, "KERNELS", object())  # installed (never called: the timings are given)
    times = {  # compiled-2: two rows of delta per pass
        (20, 1, 5, 5): {"numpy": 2.0, "compiled": 1.0, "compiled-2": 0.5},
        (40, 20, 5, 5): {"numpy": 1.0, "compiled": 0.95, "compiled-2": 0.96},
    }
    asked = []

    def measure_conv(shape, in_shape, m, dtype):
        asked.append((shape, in_shape, m, dtype))
        return times[shape]

    monkeypatch.setattr(ways, "measure_conv", measure_conv)
    winners = {"numpy": 1.0, "winners": 0.5}  # the backward over the winners measured faster
    monkeypatch.setattr(
        ways, "measure_winners", lambda layer, shape, m, propagate: asked.append(propagate) or winners
    )
    exact, _, _ = conv_network(["network=conv2"])  # float64: NumPy's order, whatever was measured
    ways.conv_choices(exact, 10)
    assert not any(layer.conv.compiled or layer.by_winners for layer in exact.layers[0].layers)
    assert not asked
    network, _, _ = conv_network(["network=conv2"], dtype="float32")
    measured = {}
    ways.conv_choices(network, 10, measured)
    compiled = [layer.conv.compiled for layer in network.layers[0].layers]
    assert compiled == [True, False]  # 5%: inside the margin
    assert network.layers[0].layers[0].conv.rows == 2  # the faster of the two blockings
    assert asked == [
        ((20, 1, 5, 5), (1, 28, 28), 10, "float32"),
        False,  # the first layer's backward does not propagate
        ((40, 20, 5, 5), (20, 12, 12), 10, "float32"),
        True,
    ]
    assert [layer.by_winners for layer in network.layers[0].layers] == [True, True]
    assert measured["conv-back 40x20x5x5 on 20x12x12 mb10 float32 Sigmoid"] == winners
    assert measured["conv 20x1x5x5 on 1x28x28 mb10 float32"] == times[(20, 1, 5, 5)]
    monkeypatch.setattr(conv, "KERNELS", None)
    ways.conv_choices(network, 10, measured)  # without the `fast` extra: BLAS
    assert not any(layer.conv.compiled or layer.by_winners for layer in network.layers[0].layers)


def test_activations_take_the_way_measured_faster_per_layer(monkeypatch, tmp_path):
    """Each conv-pool and dense layer's sigmoid compiled or NumPy's, as measured for the values a
    mini-batch gives it (conv2 at 10: 10 x 20 x 12 x 12, 10 x 40 x 4 x 4, 10 x 100), by the run's
    record; float64, and no kernels installed, always NumPy's; the output layer's identity as is."""
    from hpexp.nn import activations
    from hpexp.train import timings, ways

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    monkeypatch.setattr(activations, "KERNELS", object())  # installed (never called: times given)
    times = {
        28800: {"numpy": 2.0, "compiled": 1.0},
        6400: {"numpy": 1.0, "compiled": 0.95},  # inside the margin: NumPy's
        1000: {"numpy": 1.0, "compiled": 0.5},
    }
    asked = []
    monkeypatch.setattr(
        ways, "measure_activation", lambda act, n, dtype: asked.append((type(act), n, dtype)) or times[n]
    )
    exact, _, _ = conv_network(["network=conv2"])  # float64: NumPy's, whatever was measured
    ways.activation_choices(exact, 10)
    conv_layers, fc, out = exact.layers[0].layers, exact.layers[1], exact.layers[2]
    assert not any(layer.activation.compiled for layer in [*conv_layers, fc]) and not asked
    network, _, _ = conv_network(["network=conv2"], dtype="float32")
    measured = {}
    ways.activation_choices(network, 10, measured)
    conv_layers, fc, out = network.layers[0].layers, network.layers[1], network.layers[2]
    assert [layer.activation.compiled for layer in conv_layers] == [True, False]
    assert fc.activation.compiled and isinstance(out.activation, Identity)
    assert asked == [(Sigmoid, 28800, "float32"), (Sigmoid, 6400, "float32"), (Sigmoid, 1000, "float32")]
    assert measured["activation Sigmoid 28800 float32"] == times[28800]
    ways.activation_choices(network, 10, measured)  # the record's tables: nothing measured again
    assert len(asked) == 3
    monkeypatch.setattr(activations, "KERNELS", None)  # without the `fast` extra: NumPy's
    ways.activation_choices(network, 10, measured)
    assert not any(layer.activation.compiled for layer in [*conv_layers, fc])


def test_an_activation_measures_both_ways():
    pytest.importorskip("numba", reason="the compiled kernels need the optional `fast` extra (numba)")
    from hpexp.train import ways

    for activation in (Sigmoid(), Tanh()):
        times = ways.measure_activation(activation, 1000, "float32")
        assert set(times) == {"numpy", "compiled"} and all(0 < t < 0.01 for t in times.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("filters", "shape", "kernel", "propagate"),
    [
        (40, (10, 20, 12, 12), (5, 5), True),
        (3, (2, 2, 9, 8), (3, 2), True),
        (5, (3, 1, 10, 10), (5, 5), False),
    ],
)
def test_compiled_backward_over_the_winners_equals_numpy(
    kernels, monkeypatch, filters, shape, kernel, propagate, dtype
):
    """A ReLU conv-pool layer's filter and input gradients summed over the regions' winners equal
    the spread-then-multiply NumPy path to 1e-6 (float32; 1e-13 float64) of the terms' sizes; rounded
    inputs make tied regions (one winner each), and ReLU's zeros are skipped. 9 x 8 inputs leave
    a border row of the conv's output out of every region."""
    from hpexp.nn import conv
    from hpexp.nn.activations import ReLU

    rng = np.random.default_rng(7)
    x = np.round(rng.uniform(0, 2, shape)).astype(dtype)
    w = rng.normal(size=(filters, shape[1], *kernel)).astype(dtype)
    layer = ConvPool(w, rng.normal(size=(filters, 1, 1)).astype(dtype), ReLU(), MaxPool(2))
    delta = rng.normal(size=layer.forward(x).shape).astype(dtype)
    monkeypatch.setattr(conv, "KERNELS", None)
    want = layer.backward(delta, propagate), layer.conv.gw.copy()
    monkeypatch.setattr(conv, "KERNELS", kernels)
    layer.by_winners = True
    got = layer.backward(delta, propagate), layer.conv.gw.copy()
    tol = 1e-6 if dtype == "float32" else 1e-13
    cols, d = layer.conv.cols, conv.MaxPool.backward(layer.pool, np.ones_like(delta))  # terms' sizes
    d = np.abs(d.transpose(1, 0, 2, 3).reshape(filters, -1) * np.abs(delta).max())
    assert np.all(np.abs(got[1] - want[1]) <= tol * (d @ np.abs(cols).T).reshape(want[1].shape))
    if propagate:
        scale = conv.unpatch(np.abs(layer.conv.matrix()).T @ d, shape, *kernel)
        assert got[0].shape == shape and np.all(np.abs(got[0] - want[0]) <= tol * scale)
    else:
        assert got[0] is None and want[0] is None


@pytest.mark.parametrize("activation", [Sigmoid(), Tanh()])
def test_a_conv_pool_layer_over_the_winners_passes_the_gradient_check(kernels, monkeypatch, activation):
    from hpexp.nn import conv

    calls, kernel = [], kernels.pooled_back
    monkeypatch.setattr(conv, "KERNELS", kernels)
    monkeypatch.setattr(kernels, "pooled_back", lambda *a: calls.append(1) or kernel(*a))
    rng = np.random.default_rng(3)
    layer = ConvPool(rng.normal(size=(2, 3, 3, 2)) * 0.3, rng.normal(size=(2, 1, 1)), activation, MaxPool(2))
    layer.by_winners = True
    numeric_check(layer, rng.normal(size=(2, 3, 8, 9)), rng)
    assert calls == [1]


def test_kernels_are_looked_up_at_run_time_and_can_be_turned_off(monkeypatch):
    from hpexp.nn import compiled, conv

    monkeypatch.setenv("HPEXP_KERNELS", "numpy")
    assert conv.compiled_kernels() is None
    monkeypatch.delenv("HPEXP_KERNELS")

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(compiled.importlib, "import_module", missing)
    assert conv.compiled_kernels() is None  # without the `fast` extra: the NumPy path
