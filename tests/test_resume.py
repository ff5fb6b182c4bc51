"""Resumable runs: a run stopped at any moment and resumed ends exactly as one that never stopped."""

from __future__ import annotations

import inspect
import random
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from hpexp.train import rundir
from hpexp.train.runner import CHECKPOINT, ConfigError, compose, resume, run, run_population, run_seeds

# Every source of state at once: dropout and augmentation streams, momentum, the book's schedule
# (halve eta after 1 epoch without improvement), early stopping with the best weights put back.
EVERYTHING = [
    "data.n_train=300",
    "data.n_validation=100",
    "train.epochs=6",
    "train.save_weights=true",
    "regularizer=dropout",
    "regularizer.lmbda=1",
    "optimizer=momentum",
    "data/expand=random",
    "schedule=book",
    "schedule.n=1",
    "stopping=no_improvement",
    "stopping.patience=3",
]


class Stopped(KeyboardInterrupt):
    """What the test raises from the epoch hook: an interruption at a chosen epoch."""


def stop_at(epoch):
    def hook(record):
        if record["epoch"] == epoch:
            raise Stopped

    return hook


def timeless(record):
    return {k: v for k, v in (record or {}).items() if k != "seconds"}


def curves(out):
    return [timeless(r) for r in rundir.read_history(out)]


def assert_same_run(a, b):
    assert curves(a) == curves(b) and len(curves(a)) >= 1
    sa, sb = rundir.read_summary(a), rundir.read_summary(b)
    for key in ("status", "stop_reason", "best_epoch", "restored_epoch", "epochs_run"):
        assert sa[key] == sb[key], key
    assert timeless(sa["best"]) == timeless(sb["best"]) and timeless(sa["final"]) == timeless(sb["final"])
    wa, wb = np.load(a / "weights.npz"), np.load(b / "weights.npz")
    assert wa.files == wb.files
    for k in wa.files:
        assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k])
    assert not (a / CHECKPOINT).exists() and not (b / CHECKPOINT).exists()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("epoch", [1, 4])
def test_a_resumed_run_is_the_run_that_never_stopped(mnist_dir, tmp_path, dtype, epoch):
    cfg = compose([*EVERYTHING, f"dtype={dtype}"])
    whole = run(cfg, tmp_path / "whole", progress=False)
    with pytest.raises(Stopped):
        run(cfg, tmp_path / "cut", progress=False, on_epoch=stop_at(epoch))
    cut = tmp_path / "cut"
    assert rundir.read_summary(cut)["status"] == "interrupted"
    assert len(rundir.read_history(cut)) == epoch  # the epoch in flight was recorded, not checkpointed
    resume(cut, progress=False)
    assert_same_run(whole, cut)


def test_the_book_expansion_resumes_too(mnist_dir, tmp_path):
    cfg = compose(
        [
            "data.n_train=100",
            "data.n_validation=100",
            "train.epochs=3",
            "train.save_weights=true",
            "data/expand=book",
            "regularizer=l2",
            "regularizer.lmbda=1",
        ]
    )
    whole = run(cfg, tmp_path / "whole", progress=False)
    with pytest.raises(Stopped):
        run(cfg, tmp_path / "cut", progress=False, on_epoch=stop_at(2))
    resume(tmp_path / "cut", progress=False)
    assert_same_run(whole, tmp_path / "cut")


def test_a_population_resumes_every_member(mnist_dir, tmp_path):
    """Members with their own orders and epochs (one ends before the interruption) all resume."""
    base = [*EVERYTHING, "dtype=float64", "train.shared_order=false"]
    cfgs = [
        compose([*base, "seed=1", "train.epochs=2"]),
        compose([*base, "seed=2"]),
        compose([*base, "seed=3"]),
    ]
    whole = run_population(cfgs, [tmp_path / "whole" / str(i) for i in range(3)], progress=False)
    cut = [tmp_path / "cut" / str(i) for i in range(3)]
    with pytest.raises(Stopped):
        run_population(cfgs, cut, progress=False, on_epochs=[None, stop_at(4), None])
    assert [rundir.read_summary(o)["status"] for o in cut] == ["interrupted"] * 3
    resume(cut[0], progress=False)  # the population's checkpoint is in its first folder
    for a, b in zip(whole, cut, strict=True):
        assert_same_run(a, b)


def test_train_seeds_resume_from_their_folder(mnist_dir, tmp_path):
    cfg = compose([*EVERYTHING, "train.seeds=[1,2]"])
    whole = run_seeds(cfg, tmp_path / "whole", progress=False)
    with pytest.raises(Stopped):
        run_seeds(cfg, tmp_path / "cut", progress=False, on_epochs=[stop_at(3), None])
    assert (tmp_path / "cut" / CHECKPOINT).exists()
    resumed = resume(tmp_path / "cut", progress=False)
    assert [p.name for p in resumed] == ["seed_1", "seed_2"]
    for a, b in zip(whole, resumed, strict=True):
        assert_same_run(a, b)


def test_nothing_to_resume_is_a_clear_error(mnist_dir, tmp_path):
    out = run(
        compose(["data.n_train=100", "data.n_validation=100", "train.epochs=1"]), tmp_path, progress=False
    )
    with pytest.raises(ConfigError, match=r"has no checkpoint.npz to resume from \(its status: completed\)"):
        resume(out, progress=False)


def _train(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "hpexp.cli", "train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_at_five_random_moments_then_resume_gives_the_uninterrupted_run(mnist_dir, tmp_path):
    """Real processes: SIGKILL after a random number of epochs plus a random fraction of one (so
    also inside checkpoint and history writes), `hpexp train resume=DIR`, five times over."""
    args = [*EVERYTHING, "train.epochs=40", "schedule.n=5", "stopping.patience=100", "data.n_train=500"]
    whole = _train(*args, f"out_dir={tmp_path / 'whole'}", cwd=tmp_path)
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    seconds = [float(s) for s in re.findall(r"eta \S+  ([0-9.]+)s", out)]
    epoch_seconds = sum(seconds) / len(seconds)
    rng = random.Random(13)
    cut = tmp_path / "cut"
    proc = _train(*args, f"out_dir={cut}", cwd=tmp_path)
    kills = 0
    while kills < 5:
        for _ in range(rng.randint(1, 5)):  # wait for 1 to 5 epochs to finish
            if not proc.stdout.readline():
                break
        time.sleep(rng.uniform(0, epoch_seconds))
        if proc.poll() is not None:
            break  # it finished first: that moment did not cut a run
        proc.kill()
        proc.wait(timeout=60)
        kills += 1
        assert rundir.read_summary(cut)["status"] == "interrupted"  # its process is gone
        proc = _train(f"resume={cut}", cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert kills == 5
    assert_same_run(tmp_path / "whole", cut)


# --- the machine's choices (hpexp.train.batching) ---------------------------------------------

PLAIN = ["data.n_train=300", "data.n_validation=100", "train.epochs=4", "train.save_weights=true"]
FAST = {"numpy": 1.0, "formed": 1.0, "compiled": 0.5, "product": 0.5, "winners": 0.5}  # compiled ways win
SLOW = {"numpy": 0.5, "formed": 0.5, "compiled": 1.0, "product": 1.0, "winners": 1.0}  # NumPy's win
ONE = {str(k): 1.0 for k in (1, 2, 4, 8, 16)}  # per network: one at a time is as fast as any
WIDE = {str(k): 1.0 / k for k in (1, 2, 4, 8, 16)}  # the widest is fastest


def new_machine(monkeypatch, cache, tables, dense=None):
    """A new process on a machine that measures `tables` (population sizes) and `dense` (a dense
    or conv layer's ways), with its own cache file and nothing remembered from before."""
    from hpexp.train import batching, timings, ways

    monkeypatch.setattr(timings, "_tables", {})
    monkeypatch.setattr(ways, "_ways", {})
    monkeypatch.setattr(batching, "measure", lambda *a: tables)
    monkeypatch.setattr(ways, "measure_dense", lambda *a: dense)
    monkeypatch.setattr(ways, "measure_back", lambda *a: dense)
    monkeypatch.setattr(ways, "measure_conv", lambda *a: dense)
    monkeypatch.setattr(ways, "measure_winners", lambda *a: dense)
    monkeypatch.setenv(timings.CACHE_ENV_VAR, str(cache))


def same_weights(a, b):
    wa, wb = np.load(a / "weights.npz"), np.load(b / "weights.npz")
    return all(np.array_equal(wa[k], wb[k]) for k in wa.files)


CONV = ["data.n_train=100", "train.epochs=3", "network=conv2", "network.fc=7", "cost=log_likelihood"]


@pytest.mark.parametrize(
    ("network", "overrides"),
    [("dense", ["regularizer=l2", "regularizer.lmbda=1"]), ("conv", [*CONV, "regularizer=dropout"])],
)
def test_a_resumed_run_computes_as_before_whatever_the_machine_measures_by_then(
    mnist_dir, tmp_path, monkeypatch, network, overrides
):
    """A dense layer's compiled product and step by product, and a conv layer's filter gradient and
    max-pool backward (over every position, or over the regions' winners), change a float32 run by
    rounding, and whether they are taken comes from a measurement, which may come out otherwise in
    the process that resumes: the run keeps what it chose by, so the resumed run is the
    uninterrupted one."""
    from hpexp.nn import conv, layers, optimizers

    if (conv.KERNELS if network == "conv" else layers.KERNELS and optimizers.BLAS) is None:
        pytest.skip("the compiled ways need the optional `fast` extra (numba, SciPy)")
    cfg = compose([*PLAIN, *overrides, "dtype=float32"])
    new_machine(monkeypatch, tmp_path / "before.json", ONE, FAST)
    whole = run(cfg, tmp_path / "whole", progress=False)
    with pytest.raises(Stopped):
        run(cfg, tmp_path / "cut", progress=False, on_epoch=stop_at(2))
    new_machine(monkeypatch, tmp_path / "after.json", WIDE, SLOW)
    resume(tmp_path / "cut", progress=False)
    assert_same_run(whole, tmp_path / "cut")
    assert not same_weights(run(cfg, tmp_path / "other", progress=False), whole)  # the test tests


def test_a_resumed_population_takes_its_members_in_the_chunks_it_did(mnist_dir, tmp_path, monkeypatch):
    """Which chunk of members a population steps at a time comes from a measurement, kept by the run
    as above: resumed on a machine that measures otherwise, it goes on in the chunks it took. (A
    chunk of one steps as one network, which rounds differently from the population's products on
    some CPUs and not on others: the chunks are read where they are used, every CPU alike.)"""
    from hpexp.train import loop

    chunks: list[int] = []
    epoch = loop.train_epoch
    chunk_of = inspect.signature(epoch).bind_partial

    def recorded(*args, **kwargs):
        if (chunk := chunk_of(*args, **kwargs).arguments.get("chunk")) is not None:  # not a chunk's own
            chunks.append(chunk)
        return epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", recorded)
    cfgs = [compose([*PLAIN, "dtype=float64", f"seed={s}", f"optimizer.eta={s}"]) for s in (1, 3)]
    new_machine(monkeypatch, tmp_path / "before.json", ONE)
    whole = run_population(cfgs, [tmp_path / "whole" / str(i) for i in range(2)], progress=False)
    assert chunks == [1] * 4
    cut = [tmp_path / "cut" / str(i) for i in range(2)]
    with pytest.raises(Stopped):
        run_population(cfgs, cut, progress=False, on_epochs=[stop_at(2), None])
    new_machine(monkeypatch, tmp_path / "after.json", WIDE)
    chunks.clear()
    resume(cut[0], progress=False)
    assert chunks == [1, 1, 1]  # epochs 2 (its hook stopped it before its checkpoint), 3 and 4
    for a, b in zip(whole, cut, strict=True):
        assert_same_run(a, b)
    chunks.clear()
    run_population(cfgs, [tmp_path / "other" / str(i) for i in range(2)], progress=False)
    assert chunks == [2] * 4  # the test tests: this machine's own choice is the whole population
