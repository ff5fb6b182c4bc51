"""Populations: K networks trained in one pass end exactly where each would end alone."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from conftest import load_option

from hpexp.data.mnist import Split
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import select, stack, stack_fields, take, take_fields
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


@pytest.mark.parametrize("chunk", [None, 1, 3])
@pytest.mark.parametrize("momentum", [(0.0, 0.0, 0.0, 0.0), (0.9, 0.0, 0.5, 0.9)])
def test_each_member_ends_where_it_would_alone(momentum, chunk):
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
        chunk=chunk,
    )
    assert [len(r.history) for r in results] == [s["epochs"] for s in specs]
    for seed, (spec, result) in enumerate(zip(specs, results, strict=True)):
        assert_same(result, train_alone(seed, spec, train, val, order_seed=42))


@pytest.mark.parametrize("chunk", [None, 2])
def test_independent_orders_match_their_own_generator(chunk):
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
        chunk=chunk,
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


REGULARIZED = [  # every part of the step, and per-member values where a population allows them
    dict(lmbda=0.0, l1_ratio=0.0, p=0.5, max_norm=None, eta=0.5, momentum=0.0),
    dict(lmbda=5.0, l1_ratio=0.5, p=0.2, max_norm=2.0, eta=0.2, momentum=0.0),
    dict(lmbda=0.5, l1_ratio=1.0, p=0.3, max_norm=None, eta=1.0, momentum=0.0),
    dict(lmbda=1.0, l1_ratio=0.0, p=0.5, max_norm=1.0, eta=0.3, momentum=0.0),
    dict(lmbda=2.0, l1_ratio=0.2, p=0.1, max_norm=3.0, eta=0.6, momentum=0.0),
]


def train_regularized(chunk, momentum, dropout):
    train, val = problem(3)
    members = [
        Member(
            SGD(s["eta"], momentum=momentum * (k % 2)),
            3,
            Regularizer(lmbda=s["lmbda"], l1_ratio=s["l1_ratio"], p=s["p"] * dropout, max_norm=s["max_norm"]),
        )
        for k, s in enumerate(REGULARIZED)
    ]
    return fit_population(
        stack([new_network(seed) for seed in range(len(members))]),
        train,
        {"val": val},
        members,
        batch_size=10,
        rng=np.random.default_rng(5),
        dropout_rng=np.random.default_rng(6),
        augment_rng=np.random.default_rng(7),
        chunk=chunk,
    )


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_every_chunking_gives_the_weights_of_one_wide_pass(chunk, momentum, dropout):
    """Chunks of members take the same steps as all members at once: L1, weight decay, max-norm
    and momentum per member, and with dropout each chunk its rows of the masks (float64, 1e-9).
    Without dropout each chunk runs the whole epoch, with it each mini-batch. The wide pass itself
    equals each member alone (the tests above), so every chunking does too."""
    reference = train_regularized(None, momentum, dropout)
    chunked = train_regularized(chunk, momentum, dropout)
    for want, got in zip(reference, chunked, strict=True):
        assert_same(got, want)
    # and the members did train (a chunking that skipped some would still "match" the initial weights)
    assert any(not np.allclose(a, b) for a, b in zip(reference[0].params, new_network(0).params, strict=True))


def test_parts_are_views_of_their_members():
    from hpexp.nn.population import parts

    population = stack([new_network(seed) for seed in range(5)])
    groups = parts(population, 2)
    assert [rows for rows, _ in groups] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    for rows, part in groups:
        assert part.lead == (rows.stop - rows.start,)
        for p, whole in zip(part.params, population.params, strict=True):
            assert np.shares_memory(p, whole)
            np.testing.assert_array_equal(p, whole[rows])


def test_batching_measures_every_population_and_chunk_once_per_machine(monkeypatch, tmp_path):
    from hpexp.train import batching, timings

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    measured = batching.table(SIZES, 10, "float64")
    assert set(measured) == {str(k) for k in batching.SIZES}
    assert all(0 < t < 1 for t in measured.values())  # seconds per network-step of a tiny network
    on_disk = json.loads((tmp_path / "batching.json").read_text())
    assert on_disk[timings.machine()]["12-7-5 mb10 float64"] == measured

    def must_not_measure(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(batching, "measure", must_not_measure)
    monkeypatch.setattr(timings, "_tables", {})  # a new process: the file answers
    assert batching.table(SIZES, 10, "float64") == measured
    remeasured = {str(k): 1.0 / k for k in batching.SIZES}
    monkeypatch.setattr(batching, "measure", lambda *a: remeasured)
    for damage in ("{not json", json.dumps({timings.machine(): {"12-7-5 mb10 float64": {"1": {"1": 2}}}})):
        (tmp_path / "batching.json").write_text(damage)  # damaged, or another format: measured again
        monkeypatch.setattr(timings, "_tables", {})
        assert batching.table(SIZES, 10, "float64") == remeasured
        assert json.loads((tmp_path / "batching.json").read_text())[timings.machine()] == {
            "12-7-5 mb10 float64": remeasured
        }


def test_the_machine_has_one_name_whatever_order_its_blas_libraries_are_listed_in(monkeypatch):
    """threadpoolctl lists them in no fixed order (on Linux a set of paths, ordered by each process's
    string hashing): a key in that order made processes miss the tables others had measured."""
    from hpexp.train import timings

    library = {"user_api": "blas", "internal_api": "openblas", "architecture": "SkylakeX", "num_threads": 1}
    blas = [library | {"version": v} for v in ("0.3.30", "0.3.31")]
    names = set()
    for listed in (blas, blas[::-1]):
        monkeypatch.setattr(timings, "threadpool_info", lambda listed=listed: listed)
        names.add(timings.machine())
    assert len(names) == 1 and "openblas 0.3.30 SkylakeX x1, openblas 0.3.31 SkylakeX x1" in names.pop()


def test_an_engine_change_measures_again(monkeypatch, tmp_path):
    """Tables are keyed by the engine's code too: timings taken by other code do not choose."""
    from hpexp.train import batching, timings

    assert re.fullmatch(r"[0-9a-f]{12}", timings.engine()) and timings.machine().endswith(timings.engine())
    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    calls = []
    monkeypatch.setattr(
        batching, "measure", lambda *a: calls.append(a) or {str(k): 1.0 / k for k in batching.SIZES}
    )
    batching.table(SIZES, 10, "float64")
    monkeypatch.setattr(timings, "_tables", {})  # a new process, same engine: the file answers
    batching.table(SIZES, 10, "float64")
    assert len(calls) == 1
    monkeypatch.setattr(timings, "engine", lambda: "0123456789ab")  # another engine's process
    monkeypatch.setattr(timings, "_tables", {})
    batching.table(SIZES, 10, "float64")
    assert len(calls) == 2


def test_measurements_time_cpu_where_blas_has_one_thread_and_the_wall_otherwise(monkeypatch):
    """The wall clock charged a timing with other processes' turns on the core, the longer timings
    (larger populations) more often: CPU time, where BLAS does its work on the calling thread."""
    from hpexp.train import timings

    blas = {"user_api": "blas", "internal_api": "openblas"}
    for threads, want in (([1, 1], time.thread_time), ([1, 2], time.perf_counter), ([], time.thread_time)):
        listed = [blas | {"num_threads": n} for n in threads]
        monkeypatch.setattr(timings, "threadpool_info", lambda listed=listed: listed)
        assert timings.clock() is want


def test_population_sizes_are_timed_computing_as_their_epochs_do(monkeypatch, tmp_path):
    """The population-size table timed every K with BLAS's products while epochs take the ways
    measured faster (one network's compiled products, a population's first layer's compiled x W^T
    and step inside its product), so it could rate one network, or a population, slower than its
    epochs run. Each K is now timed with its epochs' ways."""
    from hpexp.nn import layers, optimizers
    from hpexp.train import batching, timings, ways

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    monkeypatch.setattr(layers, "KERNELS", object())  # installed (never called: the timings are given)
    monkeypatch.setattr(optimizers, "BLAS", object())
    compiled = {"numpy": 2.0, "compiled": 1.0, "compiled-2": 1.5, "formed": 1.0, "product": 0.5}
    monkeypatch.setattr(ways, "measure_dense", lambda shape, m, dtype, *how: compiled)
    monkeypatch.setattr(ways, "measure_back", lambda shape, m, dtype: {"numpy": 1.0, "compiled": 0.5})
    timed = []
    monkeypatch.setattr(batching, "mini_batch_steps", lambda network, *a: timed.append(network) or [])
    data = batching._inputs([784, 30, 10], 10, "float32")
    for k in (1, 4):
        batching._case_steps([784, 30, 10], 10, "float32", k, data)
    one, population = timed
    assert [(layer.compiled, layer.compiled_back, layer.by_product) for layer in one.layers] == [
        (True, True, True)
    ] * 2
    assert [(layer.compiled, layer.by_product) for layer in population.layers] == [
        (True, True),  # the members' first layers as one wide layer: its x W^T compiled
        (False, False),
    ]


def test_measurements_walk_fresh_mini_batches_as_an_epoch_does(monkeypatch):
    """Timings reusing a few mini-batches kept them in cache, flattering one network at a time:
    every timed step takes the next mini-batch of a pool larger than the caches, for every case,
    gathered by a shuffled order as an epoch gathers them (once per step, whatever the K: timed
    without the gather, 784-100-10 at mini-batch 100 measured 1.05x for 4 members, 1.29x by epochs)."""
    from hpexp.train import batching

    x, y, order, position = data = batching._inputs([784, 30, 10], 100, "float32")
    assert x.nbytes >= batching.POOL * 0.99 and len(x) == len(y) and len(y) % 100 == 0
    assert sorted(order) == list(range(len(y))) and not np.array_equal(order, np.arange(len(y)))
    seen = []
    monkeypatch.setattr(batching, "mini_batch_steps", lambda *a: [lambda xb, yb, m: seen.append((xb, yb))])
    runs = [batching._case_steps([784, 30, 10], 100, "float32", k, data) for k in (1, 4)]
    for run in runs * 3:
        run()
    assert position == [6 * batching.STEPS] and len(seen) == 6 * batching.STEPS
    for i, (xb, yb) in enumerate(seen):
        index = order[100 * i : 100 * (i + 1)]
        assert np.array_equal(xb, x[index]) and np.array_equal(yb, y[index])


def test_batching_takes_the_fastest_population_size_up_to_k(monkeypatch):
    from hpexp.train import batching

    def measured(times):  # microseconds per network-step for K = 1, 2, 4, 8, 16
        monkeypatch.setattr(batching, "table", lambda *a, **kw: {str(k): t * 1e-6 for k, t in times.items()})

    measured({1: 40, 2: 30, 4: 24, 8: 23.5, 16: 60})  # 8 gains less than the margin over 4; 16 spills
    chunks = {k: batching.chunk(SIZES, 10, "float32", k) for k in (1, 2, 3, 4, 8, 12, 16, 40)}
    # A population of 8 is given: its chunk is the fastest size (8, by a hair); a study's own
    # population size (`auto`) grows only for a gain of the margin (4).
    assert chunks == {1: 1, 2: 2, 3: 2, 4: 4, 8: 8, 12: 8, 16: 8, 40: 8}
    assert batching.population(SIZES, 10, "float32") == 4
    assert batching.population(SIZES, 10, "float32", largest=2) == 2
    measured({1: 40, 2: 45, 4: 41, 8: 39.5, 16: 42})  # nothing gains 3% on one at a time: one at a time
    assert batching.population(SIZES, 10, "float32") == 1
    assert batching.chunk(SIZES, 10, "float32", 16) == 1
    measured({1: 40, 2: 38.5, 4: 38, 8: 37, 16: 36.5})  # 16 beats one at a time by 8.75%, 8 by 7.5%
    assert batching.chunk(SIZES, 10, "float32", 16) == 16 and batching.population(SIZES, 10, "float32") == 8
    measured({1: 40, 2: 30, 4: 20, 8: 12, 16: 10})
    assert batching.chunk(SIZES, 10, "float32", 16) == 16 and batching.population(SIZES, 10, "float32") == 16


def test_fit_population_runs_in_the_chunks_batching_chooses(monkeypatch):
    from hpexp.train import batching, loop

    asked, used = [], []
    monkeypatch.setattr(batching, "chunk", lambda *a: asked.append(a[:4]) or 2)
    original = loop.split
    monkeypatch.setattr(loop, "split", lambda *a: used.append(a[-1]) or original(*a))
    train, val = problem()
    specs = MEMBERS[:3]
    results = fit_population(
        stack([new_network(s) for s in range(3)]),
        train,
        {"train": train, "val": val},
        [member(**s) for s in specs],
        batch_size=10,
        rng=np.random.default_rng(42),
    )
    assert asked[0] == (SIZES, 10, "float64", 3) and set(used) == {2}
    assert [k for *_, k in asked] == [3, 3, 3, 2]  # the second member stops after its 3 epochs
    for seed, (spec, result) in enumerate(zip(specs, results, strict=True)):
        assert_same(result, train_alone(seed, spec, train, val, order_seed=42))


def test_study_population_auto_is_the_fastest_size_and_a_number_is_kept(monkeypatch):
    from hpexp.study import spec as study_spec
    from hpexp.train import batching

    asked = []
    monkeypatch.setattr(batching, "population", lambda *a, **kw: asked.append((a, kw)) or 4)
    spec = study_spec.load_spec("book_l2_mlp30", ["~population"])  # the default: auto
    assert spec.population == "auto"
    _, base = study_spec.check_spec(spec)
    assert study_spec.population_size(spec, base) == 4
    share = max(1, spec.n_trials // spec.workers)
    assert asked == [(([784, 30, 10], base.train.batch_size, base.dtype), {"largest": share})]
    spec.population = 3
    assert study_spec.population_size(spec, base) == 3 and len(asked) == 1
    spec.population = "auto"
    conv = study_spec.compose([*spec.base, "network=conv1"])
    assert study_spec.population_size(spec, conv) == 1 and len(asked) == 1  # conv nets: one at a time


@pytest.mark.parametrize("bad", [0, "fast", 2.5])
def test_study_population_must_be_a_count_or_auto(bad):
    from hpexp.study import spec as study_spec
    from hpexp.train.runner import ConfigError

    spec = study_spec.load_spec("book_l2_mlp30", [f"population={bad}"])
    with pytest.raises(ConfigError, match=rf"population must be an integer >= 1 .* or auto .*got {bad!r}"):
        study_spec.check_spec(spec)


def test_one_members_values_are_scalars_of_the_populations_dtype():
    """A chunk of one trains as a single network: its per-member values come as NumPy scalars (the
    same arithmetic as their (1, 1) arrays, without broadcasting's cost); shared values stay as
    they are, and a slice of members keeps the arrays."""
    optimizer = stack_fields([SGD(0.1), SGD(0.3)], (1, 1), np.float32)
    one = take_fields(optimizer, 1)
    assert isinstance(one.eta, np.float32) and one.eta == np.float32(0.3) and one.momentum == 0.0
    assert take(optimizer.eta, 0) == np.float32(0.1) and take(0.5, 1) == 0.5
    assert take_fields(optimizer, slice(1, 2)).eta.shape == (1, 1, 1)


def test_dense_layers_take_the_ways_measured_faster(monkeypatch, tmp_path):
    """Per layer shape and mini-batch size, measured once per machine as the population sizes
    are: x W^T and delta W compiled or by BLAS, the weights' step inside the gradient's product or
    after it; in a population sharing its input, its first layer's x W^T and step as those of one
    layer of K x n_out units."""
    from hpexp.nn import layers, optimizers
    from hpexp.train import timings, ways

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    monkeypatch.setattr(layers, "KERNELS", object())  # installed (never called: the timings are given)
    monkeypatch.setattr(optimizers, "BLAS", object())
    monkeypatch.setattr(optimizers, "KERNELS", object())
    times = {  # compiled-2: two rows of W per pass, which a CPU with 16 vector registers prefers
        (7, 12): {"numpy": 2.0, "compiled": 1.0, "compiled-2": 0.8, "formed": 1.0, "product": 0.95},
        (5, 7): {"numpy": 1.0, "compiled": 0.95, "compiled-2": 0.96, "formed": 2.0, "product": 1.0},
        # a population of two, stepped together: one layer of 2 x n_out units each
        (14, 12): {"numpy": 2.0, "compiled": 0.5, "compiled-2": 0.5, "formed": 2.0, "product": 1.0},
        (10, 7): {"numpy": 2.0, "compiled": 0.5, "compiled-2": 0.5, "formed": 1.0, "product": 0.5},
    }
    steps = {(7, 12): 0.5, (5, 7): 0.95, (14, 12): 0.1, (10, 7): 0.1}  # the compiled step
    for shape, step in steps.items():
        times[shape]["compiled-step"] = step
    monkeypatch.setattr(ways, "measure_dense", lambda shape, m, dtype, *how: times[shape])
    back = {(7, 12): {"numpy": 1.0, "compiled": 0.95}, (5, 7): {"numpy": 1.0, "compiled": 0.5}}
    monkeypatch.setattr(ways, "measure_back", lambda shape, m, dtype: back[shape])
    exact = new_network(0)  # float64: NumPy's order, whatever was measured
    ways.dense_choices(exact, 10)
    assert not any(
        layer.compiled or layer.compiled_back or layer.by_product or layer.compiled_step
        for layer in exact.layers
    )
    network = new_network(0)
    for layer in network.layers:
        layer.w, layer.b = layer.w.astype("float32"), layer.b.astype("float32")
    ways.dense_choices(network, 10)
    assert [layer.compiled for layer in network.layers] == [True, False]  # 5% is inside the margin
    assert [layer.rows for layer in network.layers] == [2, 4]  # the faster of the two blockings
    # the first layer's step by the compiled product beats the formed gradient, BLAS's does not;
    # the second's beats neither BLAS's step by the margin
    assert [layer.by_product for layer in network.layers] == [True, True]
    assert [layer.compiled_step for layer in network.layers] == [True, False]
    assert [layer.compiled_back for layer in network.layers] == [False, True]
    dtype = network.params[0].dtype.name
    on_disk = json.loads((tmp_path / "batching.json").read_text())[timings.machine()]
    assert on_disk[f"dense 7x12 mb10 {dtype}"] == times[(7, 12)]

    population = stack([new_network(s) for s in range(2)])
    ways.dense_choices(population, 10)  # float64: NumPy's order here too
    assert not any(layer.by_product for layer in population.layers)
    population = stack([network, network])  # float32
    ways.dense_choices(population, 10)  # the first layer as one of 2 x 7 units, as measured so
    # ... in the first layer only: the second's input differs per member (K products, not one)
    assert [layer.by_product for layer in population.layers] == [True, False]
    assert [layer.compiled for layer in population.layers] == [True, False]
    assert population.layers[0].rows == 4  # (14, 12): the two blockings tie
    # by BLAS's product: the compiled step is one network's (its table's fast time is not taken)
    assert not any(layer.compiled_back or layer.compiled_step for layer in population.layers)
    ways.dense_choices(population, 10, shared_input=False)  # each member its own mini-batch order
    assert not any(layer.by_product or layer.compiled for layer in population.layers)
    population = stack([new_network(s) for s in range(2)])
    monkeypatch.setattr(layers, "KERNELS", None)
    monkeypatch.setattr(optimizers, "BLAS", None)
    ways.dense_choices(network, 10)  # without the `fast` extra: BLAS, and the formed gradient
    assert not any(
        layer.compiled or layer.compiled_back or layer.by_product
        for net in (population, network)
        for layer in net.layers
    )


def test_a_run_with_weight_decay_chooses_its_steps_by_steps_that_decay(monkeypatch, tmp_path):
    """BLAS's gemm multiplies the weights by the decay factor in a pass of its own (its beta), which
    on some CPUs doubles the step of a large layer: the step by product measured without it won,
    and a run with L2 weight decay then stepped slower than by its formed gradient. A run with decay
    chooses from tables measured with it (their own), one without from the others."""
    from hpexp.nn import layers, optimizers
    from hpexp.train import timings, ways

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    monkeypatch.setattr(layers, "KERNELS", None)
    monkeypatch.setattr(optimizers, "KERNELS", None)
    monkeypatch.setattr(optimizers, "BLAS", object())  # installed (never called: the timings are given)
    asked = []

    def measure(shape, m, dtype, decay=False, members=False):
        asked.append((shape, decay, members))
        return {"numpy": 1.0, "formed": 1.0, "product": 2.0 if decay else 0.5}

    monkeypatch.setattr(ways, "measure_dense", measure)
    network = new_network(0)
    for layer in network.layers:
        layer.w, layer.b = layer.w.astype("float32"), layer.b.astype("float32")
    ways.dense_choices(network, 10)
    assert [layer.by_product for layer in network.layers] == [True, True]
    ways.dense_choices(network, 10, decay=True)
    assert [layer.by_product for layer in network.layers] == [False, False]
    shapes = [(7, 12), (5, 7)]
    assert asked == [(shape, decay, False) for decay in (False, True) for shape in shapes]
    population = stack([network, network])
    ways.dense_choices(population, 10, decay=True)  # its product decays in NumPy first: a table of its own
    assert asked[-1] == ((14, 12), True, True)
    cases = json.loads((tmp_path / "batching.json").read_text())[timings.machine()]
    decaying = ["dense 7x12 mb10 float32 decay", "dense 14x12 mb10 float32 decay members"]
    assert {"dense 7x12 mb10 float32", *decaying} <= set(cases)
    # a run's record written before the decaying tables: the run goes on choosing as it did
    record = {f"dense {n}x{k} mb10 float32": {"numpy": 1.0, "formed": 1.0, "product": 0.5} for n, k in shapes}
    ways.dense_choices(network, 10, record, decay=True)
    assert [layer.by_product for layer in network.layers] == [True, True]
    assert not any(case.endswith("decay") for case in record)


@pytest.mark.parametrize("members", [False, True])
def test_the_decaying_steps_measured_decay_the_weights(monkeypatch, members):
    """measure_dense with `decay` steps as a run with L2 weight decay does: one network's product
    and compiled step take the factor; a population's product multiplies the weights by it first
    (seen between two of its steps, the stand-in descend leaving them as they are) and takes none.
    Without `decay`, no factor and no multiplying."""
    from hpexp.nn import optimizers
    from hpexp.train import ways

    log, taken = [], {}
    monkeypatch.setattr(optimizers, "BLAS", object())
    monkeypatch.setattr(optimizers, "KERNELS", object())
    monkeypatch.setattr(
        optimizers, "descend", lambda w, a, b, factor=1.0, compiled=False: log.append((factor, w.copy()))
    )

    def race(runs):  # each way twice, recording the factors its steps took and the weights they saw
        for name, run in runs.items():
            log.clear()
            run()
            run()
            taken[name] = log[:]
        return dict.fromkeys(runs, 1.0)

    monkeypatch.setattr(ways, "_race", race)
    ways.measure_dense((4, 6), 3, "float32", decay=True, members=members)
    (f1, w1), (f2, w2) = taken["product"]
    assert f1 == f2 == (1.0 if members else ways.DECAY) and ways.DECAY != 1.0
    np.testing.assert_allclose(w2, w1 * ways.DECAY if members else w1, rtol=1e-7)
    assert not np.array_equal(w2, w1) if members else np.array_equal(w2, w1)
    assert [f for f, _ in taken["compiled-step"]] == [ways.DECAY] * 2
    ways.measure_dense((4, 6), 3, "float32")
    (f1, w1), (f2, w2) = taken["product"]
    assert f1 == f2 == 1.0 and np.array_equal(w2, w1)
    assert [f for f, _ in taken["compiled-step"]] == [1.0] * 2


def test_train_epoch_measures_with_decay_where_the_run_decays(monkeypatch):
    """train_epoch asks for the decaying tables when its plain SGD steps with L2 weight decay, not
    without L2 (lmbda 0) or with momentum (which takes L2 as a gradient term)."""
    from hpexp.nn.optimizers import SGD
    from hpexp.nn.regularizers import Regularizer
    from hpexp.train import loop, ways

    seen = []
    monkeypatch.setattr(ways, "dense_choices", lambda *a, decay=False, **k: seen.append(decay))
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 12)), rng.integers(0, 4, 20)
    for optimizer, lmbda in [(SGD(0.1), 1.0), (SGD(0.1), 0.0), (SGD(0.1, momentum=0.5), 1.0)]:
        loop.train_epoch(new_network(0), optimizer, Regularizer(lmbda=lmbda), x, y, 10, 0.1)
    assert seen == [True, False, False]


def test_a_run_recorded_before_a_way_was_added_chooses_among_the_ways_it_had(monkeypatch, tmp_path):
    """A run's record written before the two-row product existed ("dense" tables without
    compiled-2) keeps choosing as it did, four rows of W per pass, though the machine now measures
    two rows faster; a run without a record measures both and takes two."""
    from hpexp.nn import layers
    from hpexp.train import timings, ways

    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(tmp_path / "batching.json"))
    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    monkeypatch.setattr(layers, "KERNELS", object())  # installed (never called: the timings are given)
    now = {"numpy": 2.0, "formed": 1.0, "product": 2.0, "compiled": 1.0, "compiled-2": 0.5}
    monkeypatch.setattr(ways, "measure_dense", lambda shape, m, dtype, *how: now)
    monkeypatch.setattr(ways, "measure_back", lambda shape, m, dtype: {"numpy": 1.0, "compiled": 2.0})
    network = new_network(0)
    for layer in network.layers:
        layer.w, layer.b = layer.w.astype("float32"), layer.b.astype("float32")
    before = {"numpy": 2.0, "formed": 1.0, "product": 2.0, "compiled": 1.0}
    cases = [f"dense {n}x{k} mb10 float32" for n, k in [(7, 12), (5, 7)]]
    record = {case: dict(before) for case in cases}
    ways.dense_choices(network, 10, record)
    assert [(layer.compiled, layer.rows) for layer in network.layers] == [(True, 4), (True, 4)]
    assert all(record[case] == before for case in cases)  # the record is kept as it was
    ways.dense_choices(network, 10, {})
    assert [(layer.compiled, layer.rows) for layer in network.layers] == [(True, 2), (True, 2)]


@pytest.mark.parametrize("rows", [4, 2])
def test_a_population_sharing_its_input_computes_its_first_layer_compiled_as_its_members_do(rows):
    """x W^T of K members' first layers by the compiled kernel, the K weight matrices as one wide
    one: each member's z equals its own network's (by BLAS) to 1e-6 of the terms' sizes (float32),
    in the population's layout, K not a multiple of the kernel's rows of W."""
    from hpexp.nn import layers

    kernels = pytest.importorskip("hpexp.kernels.dense", reason="the compiled kernels need the `fast` extra")
    nets = [new_network(seed) for seed in range(3)]
    for net in nets:
        for layer in net.layers:
            layer.w, layer.b = layer.w.astype("float32"), layer.b.astype("float32")
    population = stack(nets)
    x = np.random.default_rng(4).random((10, 12)).astype("float32")
    first = population.layers[0]
    first.compiled, first.rows = True, rows
    calls = []
    real = kernels.weighted_input
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "KERNELS", kernels)
        patch.setattr(kernels, "weighted_input", lambda *a: calls.append(a[0].shape) or real(*a))
        got = first.forward(x)
    assert calls == [(3, 7, 12)]  # one call for the three members, as one W of 21 rows
    assert got.shape == (3, 10, 7) and got.dtype == np.float32
    for k, net in enumerate(nets):
        want = net.layers[0].forward(x)  # this network alone, by BLAS
        scale = np.abs(x) @ np.abs(net.layers[0].w.T)
        assert np.all(np.abs(got[k] - want) <= 1e-6 * (scale + 1))
