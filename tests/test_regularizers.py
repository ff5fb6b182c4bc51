"""Regularizers: gradients with dropout masks, and the behaviour each technique promises."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import group_options, load_option

from hpexp.data.mnist import Split
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.regularizers import L2, NoPenalty, Regularizer
from hpexp.train.gradcheck import check
from hpexp.train.loop import evaluate, fit, train_epoch

SIZES = [6, 5, 4, 3]


def make_network(seed=0, sizes=SIZES, dtype="float64", cost="cross_entropy"):
    return Network.create(
        sizes,
        load_option("activation", "sigmoid"),
        load_option("cost", cost),
        load_option("init", "default"),
        np.random.default_rng(seed),
        dtype=dtype,
    )


def toy_data(seed=0, n=300, sizes=SIZES, dtype="float64"):
    """Labels from a fixed random linear map of the inputs: learnable, so weights grow."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, sizes[0])).astype(dtype)
    y = np.argmax(x @ rng.normal(size=(sizes[0], sizes[-1])), axis=1)
    return x, y


@pytest.mark.parametrize("regularizer", group_options("regularizer"))
@pytest.mark.parametrize("inverted", [True, False])
def test_gradient_with_a_fixed_dropout_mask(regularizer, inverted):
    """Every preset, with dropout of inputs and hidden units forced on: backprop through one fixed
    mask equals finite differences of the cost computed through the same mask."""
    reg = load_option("regularizer", regularizer)
    reg = Regularizer(reg.lmbda, reg.l1_ratio, p=0.4, p_input=0.3, inverted=inverted, max_norm=reg.max_norm)
    network = make_network(1)
    x, y = toy_data(1, n=7)
    masks = reg.masks(network.input_shapes(len(y)), np.random.default_rng(5), np.float64)
    assert all(isinstance(m, np.ndarray) for m in masks)
    assert any(np.any(m == 0) for m in masks)
    for name, _, err in check(network, reg, x, y, 20, masks):
        assert err < 1e-6, name


def test_penalty_values_follow_the_formulas():
    w = np.array([[1.0, -2.0], [0.0, 3.0]])
    n = 10
    assert L2(2.0).value(w, n) == pytest.approx(2.0 / (2 * n) * 14)
    assert Regularizer(lmbda=2.0, l1_ratio=1.0).value(w, n) == pytest.approx(2.0 / n * 6)
    elastic = Regularizer(lmbda=2.0, l1_ratio=0.25)
    assert elastic.value(w, n) == pytest.approx(2.0 / n * (0.75 / 2 * 14 + 0.25 * 6))
    np.testing.assert_allclose(
        Regularizer(lmbda=2.0, l1_ratio=1.0).grad(w, n), 0.2 * np.array([[1, -1], [0, 1]])
    )
    assert NoPenalty().value(w, n) == 0 and not NoPenalty().grad(w, n).any()


def test_l1_step_leaves_zero_weights_at_zero():
    """sgn(0) = 0: a weight that is exactly zero gets no L1 push."""
    g = Regularizer(lmbda=1.0, l1_ratio=1.0).grad(np.array([[0.0, 0.5, -0.5]]), 1)
    np.testing.assert_array_equal(g, [[0.0, 1.0, -1.0]])


def test_penalty_broadcasts_over_a_population_axis():
    w = np.random.default_rng(0).normal(size=(3, 4, 5))
    reg = Regularizer(lmbda=1.5, l1_ratio=0.3)
    values = reg.value(w, 7)
    assert values.shape == (3,)
    np.testing.assert_allclose(values, [reg.value(w[k], 7) for k in range(3)])


def train(reg, epochs=20, seed=0):
    network = make_network(seed)
    x, y = toy_data(seed)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        train_epoch(network, SGD(eta=0.5), reg, x[order], y[order], 10, 0.5, rng)
    return network


def norm(network):
    return np.sqrt(sum(np.sum(w * w) for w in network.weights))


def test_larger_lmbda_gives_smaller_weights():
    norms = [norm(train(L2(lmbda))) for lmbda in (0.0, 1.0, 10.0, 50.0)]
    assert norms == sorted(norms, reverse=True)
    assert norms[-1] < 0.6 * norms[0]


def test_l1_gives_more_near_zero_weights_than_l2_at_equal_strength():
    def near_zero(network):
        return sum(int(np.sum(np.abs(w) < 1e-2)) for w in network.weights)

    l1 = train(Regularizer(lmbda=1.0, l1_ratio=1.0), epochs=30)
    l2 = train(Regularizer(lmbda=1.0), epochs=30)
    assert near_zero(l1) > 5 * max(near_zero(l2), 1)


def test_inverted_dropout_keeps_the_expected_activation():
    """E[mask] = 1 for inverted dropout: a unit's expected input is what evaluation sees."""
    reg = Regularizer(p=0.3, p_input=0.2)
    masks = reg.masks([(200_000, 3), (200_000, 4)], np.random.default_rng(0), np.float64)
    for m, p in zip(masks, (0.2, 0.3), strict=True):
        assert set(np.unique(m)) == {0.0, 1 / (1 - p)}
        assert m.mean() == pytest.approx(1.0, abs=0.01)
        assert np.mean(m == 0) == pytest.approx(p, abs=0.01)
    assert reg.eval_masks(2) is None


def test_network3_dropout_scales_by_the_keep_probability_at_evaluation():
    reg = Regularizer(p=0.5, inverted=False)
    (first, hidden) = reg.masks([(100_000, 3), (100_000, 4)], np.random.default_rng(0), np.float64)
    assert first is None and set(np.unique(hidden)) == {0.0, 1.0}
    assert hidden.mean() == pytest.approx(reg.eval_masks(2)[1], abs=0.01)
    assert reg.eval_masks(2) == [None, 0.5]
    network = make_network()
    x, _ = toy_data(n=5)
    # Scaling a layer's input by 1/2 is halving the weights out of the units below (the book's words).
    halved = make_network()
    for layer in halved.layers[1:]:
        layer.w[...] *= 0.5
    np.testing.assert_allclose(network.logits(x, reg.eval_masks(3)), halved.logits(x))


def test_evaluation_is_deterministic_with_dropout():
    x, y = toy_data(2)
    split = Split(x, y)
    network = make_network(2)
    reg = Regularizer(p=0.5, p_input=0.2)
    result = fit(
        network,
        split,
        {"val": split},
        optimizer=SGD(eta=0.5),
        epochs=2,
        batch_size=10,
        rng=np.random.default_rng(0),
        regularizer=reg,
    )
    first, second = evaluate(network, split), evaluate(network, split)
    assert first == second
    assert result.history[-1]["val_accuracy"] == pytest.approx(float(first[1]))


def test_dropout_masks_come_from_their_own_stream():
    """Same seeds, different dropout stream: same shuffling, different training."""
    x, y = toy_data(3)
    split = Split(x, y)

    def run(dropout_seed):
        network = make_network(3)
        fit(
            network,
            split,
            {},
            optimizer=SGD(eta=0.5),
            epochs=1,
            batch_size=10,
            rng=np.random.default_rng(0),
            regularizer=Regularizer(p=0.5),
            dropout_rng=np.random.default_rng(dropout_seed),
        )
        return network.flat_params.copy()

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_max_norm_caps_each_units_incoming_weights():
    reg = Regularizer(max_norm=1.0)
    w = np.array([[3.0, 4.0], [0.1, 0.2]])  # a row per unit, as the book writes w
    reg.constrain(w)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), [1.0, np.hypot(0.1, 0.2)])
    np.testing.assert_allclose(w[0], [0.6, 0.8])
    network = train(Regularizer(max_norm=0.5), epochs=3)
    for w in network.weights:
        assert np.linalg.norm(w, axis=1).max() <= 0.5 + 1e-12


def test_off_parts_leave_the_plain_update_unchanged():
    """A Regularizer with everything off trains exactly like no regularizer at all."""
    np.testing.assert_array_equal(train(Regularizer(), 2).flat_params, train(NoPenalty(), 2).flat_params)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lmbda": -0.1}, "lmbda must be >= 0"),
        ({"p": 1.0}, r"regularizer.p .* \[0, 1\)"),
        ({"p": -0.1}, r"regularizer.p "),
        ({"p_input": 1.5}, "p_input"),
        ({"l1_ratio": 1.2}, "l1_ratio"),
        ({"max_norm": 0.0}, "max_norm"),
    ],
)
def test_bad_values_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        Regularizer(**fields)


def test_repr_shows_what_is_on():
    assert repr(Regularizer()) == "Regularizer()"
    assert repr(load_option("regularizer", "l2")) == "Regularizer(lmbda=5.0)"
    assert repr(Regularizer(lmbda=5.0, p=0.5)) == "Regularizer(lmbda=5.0, p=0.5)"


def test_which_parts_are_on_is_decided_from_every_member():
    """The flags the training loop reads once per epoch (decided in __post_init__, not per step):
    any member's dropout or penalty turns that part on, for all."""
    assert not Regularizer().dropout and not Regularizer().penalized
    assert Regularizer(p=0.5).dropout and Regularizer(p_input=0.2).dropout
    assert Regularizer(p=np.array([[[0.0]], [[0.3]]])).dropout
    assert not Regularizer(lmbda=5.0).dropout and Regularizer(lmbda=5.0).penalized
    assert Regularizer(lmbda=np.array([[[0.0]], [[1.0]]])).penalized
    assert not Regularizer(lmbda=np.zeros((2, 1, 1))).penalized
