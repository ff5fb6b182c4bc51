"""Populations: K networks trained in one pass end exactly where each would end alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_option

from hpexp.data.mnist import Split
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import select, stack, stack_fields
from hpexp.nn.regularizers import Regularizer
from hpexp.train.loop import Member, fit_population
from hpexp.train.stopping import MaxEpochs, NoImprovement

SIZES = [12, 7, 5]


def problem(seed=0, n=150):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, SIZES[0]))
    y = (x[:, :5].argmax(axis=1) + (x[:, 5] > 0.5)) % SIZES[-1]  # learnable, not trivial
    return Split(x, y), Split(x[:50] + 0.05, y[:50])


def new_network(seed, activation="sigmoid", cost="cross_entropy"):
    return Network.create(
        SIZES,
        load_option("activation", activation),
        load_option("cost", cost),
        load_option("init", "default"),
        np.random.default_rng(seed),
        dtype="float64",
    )


MEMBERS = [
    dict(eta=0.5, lmbda=0.0, momentum=0.0, epochs=4),
    dict(eta=0.1, lmbda=5.0, momentum=0.0, epochs=3),
    dict(eta=1.0, lmbda=0.5, momentum=0.0, epochs=4),
    dict(eta=0.3, lmbda=0.0, momentum=0.0, epochs=2),
]


def member(eta, lmbda, momentum, epochs, **rules):
    return Member(SGD(eta, momentum=momentum), epochs, Regularizer(lmbda=lmbda), **rules)


def without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def train_alone(seed, spec, train, val, order_seed, **rules):
    net = new_network(seed)
    (result,) = fit_population(
        net,
        train,
        {"train": train, "val": val},
        [member(**spec, **rules)],
        batch_size=10,
        rng=np.random.default_rng(order_seed),
        dropout_rng=np.random.default_rng(9),
        augment_rng=np.random.default_rng(9),
    )
    return result


def assert_same(got, want):
    got_h, want_h = without_seconds(got.history), without_seconds(want.history)
    assert [sorted(r) for r in got_h] == [sorted(r) for r in want_h]
    for a, b in zip(got_h, want_h, strict=True):
        assert a == pytest.approx(b, abs=1e-9)
    assert (got.status, got.stop_reason, got.best_epoch) == (want.status, want.stop_reason, want.best_epoch)
    for a, b in zip(got.params, want.params, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("momentum", [(0.0, 0.0, 0.0, 0.0), (0.9, 0.0, 0.5, 0.9)])
def test_each_member_ends_where_it_would_alone(momentum):
    train, val = problem()
    specs = [dict(s, momentum=mu) for s, mu in zip(MEMBERS, momentum, strict=True)]
    population = stack([new_network(seed) for seed in range(len(specs))])
    results = fit_population(
        population,
        train,
        {"train": train, "val": val},
        [member(**s) for s in specs],
        batch_size=10,
        rng=np.random.default_rng(42),
        dropout_rng=np.random.default_rng(9),
        augment_rng=np.random.default_rng(9),
    )
    assert [len(r.history) for r in results] == [s["epochs"] for s in specs]
    for seed, (spec, result) in enumerate(zip(specs, results, strict=True)):
        assert_same(result, train_alone(seed, spec, train, val, order_seed=42))


def test_independent_orders_match_their_own_generator():
    train, val = problem(1)
    specs = MEMBERS[:3]
    results = fit_population(
        stack([new_network(s) for s in range(3)]),
        train,
        {"val": val},
        [member(**s) for s in specs],
        batch_size=7,
        rng=[np.random.default_rng(100 + k) for k in range(3)],
        dropout_rng=np.random.default_rng(9),
        augment_rng=np.random.default_rng(9),
    )
    for seed, (spec, result) in enumerate(zip(specs, results, strict=True)):
        net = new_network(seed)
        (alone,) = fit_population(
            net,
            train,
            {"val": val},
            [member(**spec)],
            batch_size=7,
            rng=np.random.default_rng(100 + seed),
            dropout_rng=np.random.default_rng(9),
            augment_rng=np.random.default_rng(9),
        )
        assert_same(result, alone)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the diverging member overflows, as it should
def test_a_diverging_and_a_stopped_member_leave_the_others_unchanged():
    train, val = problem(2)
    deep = [12, 100, 100, 100, 5]

    def relu_net(seed):
        return Network.create(
            deep,
            load_option("activation", "relu"),
            load_option("cost", "cross_entropy"),
            load_option("init", "large"),
            np.random.default_rng(seed),
            dtype="float64",
        )

    specs = [
        dict(eta=0.05, lmbda=0.0, momentum=0.0, epochs=5),
        dict(eta=1e5, lmbda=0.0, momentum=0.0, epochs=5),
        dict(eta=0.05, lmbda=0.0, momentum=0.0, epochs=5),
    ]
    rules = [{}, {}, {"stopping": MaxEpochs(2)}]
    members = [member(**s, **r) for s, r in zip(specs, rules, strict=True)]
    results = fit_population(
        stack([relu_net(s) for s in range(3)]),
        train,
        {"train": train, "val": val},
        members,
        batch_size=10,
        rng=np.random.default_rng(5),
        dropout_rng=np.random.default_rng(9),
        augment_rng=np.random.default_rng(9),
    )
    assert results[1].status == "diverged" and len(results[1].history) < 5
    assert len(results[2].history) == 2 and results[2].status == "completed"
    assert len(results[0].history) == 5
    for k in (0, 2):
        (alone,) = fit_population(
            relu_net(k),
            train,
            {"train": train, "val": val},
            [member(**specs[k], **rules[k])],
            batch_size=10,
            rng=np.random.default_rng(5),
            dropout_rng=np.random.default_rng(9),
            augment_rng=np.random.default_rng(9),
        )
        assert_same(results[k], alone)


def test_restore_best_per_member():
    train, val = problem(3)
    members = [
        member(**MEMBERS[0], stopping=NoImprovement(patience=1), restore_best=True),
        member(**MEMBERS[2], restore_best=True),
    ]
    results = fit_population(
        stack([new_network(0), new_network(1)]),
        train,
        {"train": train, "val": val},
        members,
        batch_size=10,
        rng=np.random.default_rng(4),
        dropout_rng=np.random.default_rng(9),
        augment_rng=np.random.default_rng(9),
    )
    for k, result in enumerate(results):
        alone = train_alone(
            k,
            MEMBERS[2 * k],
            train,
            val,
            4,
            **(
                {"stopping": NoImprovement(patience=1), "restore_best": True}
                if k == 0
                else {"restore_best": True}
            ),
        )
        assert_same(result, alone)
        assert result.restored_epoch == result.best_epoch


def test_stack_fields_keeps_shared_values_plain():
    opt = stack_fields([SGD(0.1, momentum=0.9), SGD(0.5, momentum=0.9)], (1, 1))
    assert opt.momentum == 0.9 and opt.eta.shape == (2, 1, 1)
    reg = stack_fields([Regularizer(lmbda=1.0), Regularizer(lmbda=2.0, max_norm=3.0)], (1, 1))
    assert reg.lmbda.shape == (2, 1, 1) and reg.max_norm[0, 0, 0] == np.inf
    with pytest.raises(ValueError, match="inverted"):
        stack_fields([Regularizer(p=0.5), Regularizer(p=0.5, inverted=False)], (1, 1))


def test_select_copies_the_kept_members():
    nets = [new_network(s) for s in range(3)]
    kept = select(stack(nets), [0, 2])
    np.testing.assert_array_equal(kept.layers[0].w[1], nets[2].layers[0].w)
    assert kept.lead == (2,)


def test_without_shuffling_the_stored_order_is_used_whatever_the_generator():
    """shuffle=False (network3): every epoch walks the data as stored, so the shuffle stream is unused
    and the result equals training on the data in stored order by hand."""
    train, val = problem(5)
    results = [
        fit_population(
            new_network(0),
            train,
            {"val": val},
            [member(**MEMBERS[0])],
            batch_size=10,
            rng=np.random.default_rng(seed),
            shuffle=False,
        )[0]
        for seed in (1, 2)
    ]
    assert_same(results[0], results[1])
    by_hand = new_network(0)
    for _ in range(MEMBERS[0]["epochs"]):
        from hpexp.train.loop import train_epoch

        train_epoch(by_hand, SGD(MEMBERS[0]["eta"]), Regularizer(), train.x, train.y, 10, MEMBERS[0]["eta"])
    for a, b in zip(results[0].params, by_hand.params, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
