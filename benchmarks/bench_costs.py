"""The compiled elementwise kernels against NumPy, in one process: the costs' output error dC/dz
(hpexp.kernels.costs) and float32's sigmoid and tanh (hpexp.kernels.activations).

    python benchmarks/bench_costs.py [--rounds 5]

For each cost: the error of a float32 mini-batch of 10 x 10 outputs alone, and the whole SGD step
of 784-30-10 at mini-batch 10 on MNIST images, NumPy's error and the compiled one taking turns
`--rounds` times (microseconds, the best of each; one BLAS thread). Then the sigmoid and tanh of
conv1's pooled units at mini-batch 10 (10 x 20 x 12 x 12 = 28,800 float32 values, normal with
standard deviation 2), each way in turn. Needs the `fast` extra.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from hpexp.data.mnist import load_splits
from hpexp.nn import activations, costs
from hpexp.train import allocator, timings, ways
from hpexp.train.runner import build_network, compose, validate
from hpexp.train.step import mini_batch_steps

COSTS = ("quadratic", "cross_entropy", "log_likelihood")


def microseconds(run: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls * 1e6


def best_times(name: str, compiled: object, batches: list, rounds: int) -> dict[str, dict[str, float]]:
    """The least microseconds of the error alone and of a whole step, each way, for cost `name`."""
    cfg = compose(["network=mlp30", f"cost={name}"])
    parts = validate(cfg)
    net = build_network(cfg, parts, np.random.default_rng(0), "float32")
    ways.dense_choices(net, 10)
    ways.activation_choices(net, 10)
    (step,) = mini_batch_steps(net, parts.optimizer, parts.regularizer, 0.1, 50_000)
    net.backprop(*batches[0])
    z, y = net.layers[-1].z, batches[0][1]

    def epoch_part() -> None:
        for xb, yb in batches:
            step(xb, yb, None)

    best: dict[str, dict[str, float]] = {"error": {}, "step": {}}
    for _ in range(rounds):
        for way, kernels in (("numpy", None), ("compiled", compiled)):
            costs.KERNELS = kernels
            error = microseconds(lambda: net.cost.delta(z, y), 5000)
            steps = microseconds(epoch_part, 10) / len(batches)
            best["error"][way] = min(best["error"].get(way, np.inf), error)
            best["step"][way] = min(best["step"].get(way, np.inf), steps)
    costs.KERNELS = compiled
    return best


def activation_times(compiled: object, rounds: int) -> dict[str, dict[str, float]]:
    """The least microseconds of the sigmoid and tanh of conv1's pooled units, each way."""
    z = np.random.default_rng(0).normal(0.0, 2.0, (10, 20, 12, 12)).astype(np.float32)
    best: dict[str, dict[str, float]] = {"sigmoid": {}, "tanh": {}}
    for _ in range(rounds):
        for way, kernels in (("numpy", None), ("compiled", compiled)):
            activations.KERNELS = kernels
            for name, f in (("sigmoid", activations.Sigmoid()), ("tanh", activations.Tanh())):
                us = microseconds(lambda f=f: f.value(z), 2000)
                best[name][way] = min(best[name].get(way, np.inf), us)
    activations.KERNELS = compiled
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns of the two ways, best taken")
    args = parser.parse_args()
    compiled = costs.KERNELS
    if compiled is None:
        raise SystemExit("the compiled costs need the `fast` extra (and HPEXP_KERNELS not `numpy`)")
    train = load_splits(os.environ.get("HPEXP_DATA_DIR"), n_train=1000, splits=["train"])["train"]
    batches = [(train.x[i : i + 10], train.y[i : i + 10]) for i in range(0, 1000, 10)]
    allocator.keep_freed_memory()
    with threadpool_limits(limits=1, user_api="blas"):
        print(f"machine: {timings.machine()}")
        print(f"{'cost':<16} {'error NumPy':>12} {'compiled':>9} {'step NumPy':>11} {'compiled':>9}  (us)")
        for name in COSTS:
            times = best_times(name, compiled, batches, args.rounds)
            (e, e_kernel), (s, s_kernel) = (tuple(times[part].values()) for part in ("error", "step"))
            print(f"{name:<16} {e:12.2f} {e_kernel:9.2f} {s:11.1f} {s_kernel:9.1f}")
        print(f"{'activation':<16} {'NumPy':>12} {'compiled':>9}  (us, 28,800 float32 values)")
        for name, times in activation_times(activations.KERNELS, args.rounds).items():
            print(f"{name:<16} {times['numpy']:12.2f} {times['compiled']:9.2f}")


if __name__ == "__main__":
    main()
