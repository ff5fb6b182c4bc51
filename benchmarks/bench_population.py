"""Population speed: network-epochs per second for K networks trained in one vectorized pass.

    python benchmarks/bench_population.py [--examples 10000] [--repeats 3]

For 784-30-10 and 784-100-10 at mini-batch 10 and 100 (float32, one BLAS thread, shared order),
trains K = 1, 4, 8, 16 members with different eta and lmbda through `train_epoch` on the first
`--examples` MNIST training images (scaled to a 50,000-image epoch) and prints seconds per
network-epoch and the speed-up over K = 1, measured in the same run. Target: >= 2.5x at K = 8,
mini-batch 10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from hpexp.data.mnist import load_splits
from hpexp.nn import activations, costs, init
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import stack, stack_fields
from hpexp.nn.regularizers import Regularizer
from hpexp.train.loop import train_epoch


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


def seconds_per_network_epoch(k, sizes, batch_size, x, y, repeats):
    network, optimizer, regularizer, eta = members(k, sizes)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(repeats + 1):
        order = rng.permutation(len(y))
        start = time.perf_counter()
        train_epoch(network, optimizer, regularizer, x, y, batch_size, eta, order=order)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 50_000 / len(y) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train = load_splits(splits=("train",))["train"]
    x, y = train.x[: args.examples], train.y[: args.examples]
    print(f"{'network':<11} {'mb':>4} {'K':>3} {'s/network-epoch':>16} {'vs K=1':>7}")
    with threadpool_limits(limits=1, user_api="blas"):
        for sizes in ([784, 30, 10], [784, 100, 10]):
            for batch_size in (10, 100):
                base = None
                for k in (1, 4, 8, 16):
                    seconds = seconds_per_network_epoch(k, sizes, batch_size, x, y, args.repeats)
                    base = base or seconds
                    name = "-".join(map(str, sizes))
                    print(
                        f"{name:<11} {batch_size:>4} {k:>3} {seconds:>16.3f} {base / seconds:>6.2f}x",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
