"""Population speed: network-epochs per second for K networks trained in one vectorized pass.

    python benchmarks/bench_population.py [--examples 10000] [--repeats 3] [--remeasure] [--cases ...]

For 784-30-10 and 784-100-10 at mini-batch 10 and 100 (float32, one BLAS thread, shared order),
trains K = 1, 4, 8, 16 members with different eta and lmbda through `train_epoch` on the first
`--examples` MNIST training images (scaled to a 50,000-image epoch) and prints seconds per
network-epoch and the speed-up over training the same K networks one at a time (K single-network
epochs back to back, the path of K = 1), for the way hpexp.train.batching chooses on this machine
(members per pass: K is one wide product, 1 is one by one, else chunks) and for the wide pass alone.
The reference is timed as K epochs, not one epoch times K: the best of a few short runs catches a
quiet moment a long run cannot, which on a busy machine would flatter one at a time by 5-10%.
Times are this process's CPU seconds (one thread), so other processes on a busy machine count
only through the caches and memory they share; the cases take turns `--repeats` times and each
keeps its best. Targets (issue 19): no chosen entry below 0.97x; 784-30-10 mini-batch 10 at K = 8 at least
1.8x.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from hpexp.data.mnist import load_splits
from hpexp.nn import activations, costs, init
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import stack, stack_fields
from hpexp.nn.regularizers import Regularizer
from hpexp.train import batching, timings
from hpexp.train.loop import train_epoch

KS = (1, 4, 8, 16)
CASES = "784-30-10:10,784-30-10:100,784-100-10:10,784-100-10:100"


def members(k: int, sizes: list[int]):
    rng = np.random.default_rng(0)
    nets = [
        Network.create(
            sizes, activations.Sigmoid(), costs.CrossEntropy(), init.Default(), np.random.default_rng(s)
        )
        for s in range(k)
    ]
    optimizers = [SGD(float(eta)) for eta in rng.uniform(0.1, 1.0, k)]
    regularizers = [Regularizer(lmbda=float(lmbda)) for lmbda in rng.uniform(0.5, 5.0, k)]
    if k == 1:
        return nets[0], optimizers[0], regularizers[0], optimizers[0].eta
    optimizer = stack_fields(optimizers, (1, 1), np.float32)
    return stack(nets), optimizer, stack_fields(regularizers, (1, 1), np.float32), optimizer.eta


def epoch_of(k: int, sizes: list[int], batch_size: int, chunk: int | None, x, y) -> Callable[[], float]:
    """A function training one epoch of K members and returning its seconds (chunk 0: the K
    networks one at a time, each a single network with its member's eta and lmbda)."""
    if chunk == 0:
        runs = [epoch_of(1, sizes, batch_size, None, x, y) for _ in range(k)]
        return lambda: sum(run() for run in runs)
    network, optimizer, regularizer, eta = members(k, sizes)
    rng = np.random.default_rng(1)

    def run() -> float:
        order = rng.permutation(len(y))
        start = time.process_time()
        train_epoch(network, optimizer, regularizer, x, y, batch_size, eta, order=order, chunk=chunk)
        return time.process_time() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cases", default=CASES, help=f"network:mini-batch, comma-separated (default {CASES})"
    )
    parser.add_argument("--remeasure", action="store_true", help="measure again instead of the cached choice")
    args = parser.parse_args()
    train = load_splits(splits=("train",))["train"]
    x, y = train.x[: args.examples], train.y[: args.examples]
    with threadpool_limits(limits=1, user_api="blas"):
        print(f"machine: {timings.machine()}; load average {os.getloadavg()[0]:.2f}")
        header = f"{'network':<11} {'mb':>4} {'K':>3} {'per pass':>8} {'s/network-epoch':>16} {'vs 1by1':>7}"
        print(f"{header} {'wide':>7}")
        for case in args.cases.split(","):
            shape, _, mb = case.partition(":")
            sizes, batch_size = [int(n) for n in shape.split("-")], int(mb)
            started = time.perf_counter()
            batching.table(sizes, batch_size, "float32", fresh=args.remeasure)
            chunks = {k: batching.chunk(sizes, batch_size, "float32", k) for k in KS}
            measured = time.perf_counter() - started
            cases = {(k, c): epoch_of(k, sizes, batch_size, c, x, y) for k, c in chunks.items()}
            cases |= {(k, k): epoch_of(k, sizes, batch_size, k, x, y) for k in KS if chunks[k] != k}
            cases |= {(k, 0): epoch_of(k, sizes, batch_size, 0, x, y) for k in KS if k > 1}
            for run in cases.values():
                run()  # warm-up
            best = dict.fromkeys(cases, np.inf)
            for _ in range(args.repeats):
                for key, run in cases.items():
                    best[key] = min(best[key], run())
            per_net = {(k, c): t * 50_000 / len(y) / k for (k, c), t in best.items()}
            name = "-".join(map(str, sizes))
            for k in KS:
                c, wide, base = chunks[k], per_net[k, k], per_net[k, 0 if k > 1 else 1]
                print(
                    f"{name:<11} {batch_size:>4} {k:>3} {c:>8} {per_net[k, c]:>16.3f} "
                    f"{base / per_net[k, c]:>6.2f}x {base / wide:>6.2f}x",
                    flush=True,
                )
            print(f"  (choosing took {measured:.1f} s; the measurement is cached per machine)")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
