"""What regularization costs per epoch: none vs L2 vs dropout (and max-norm), 784-30-10, mini-batch 10.

    python benchmarks/bench_regularizers.py [--epochs 5] [--n 50000]

Each configuration trains `--epochs` epochs of `train_epoch` on the same data (real MNIST if
$HPEXP_DATA_DIR or the cache has it, else random pixels: the speed does not depend on the values),
float32, one BLAS thread. The figure is the median epoch time without the first epoch (warm-up);
medians because the machine is shared and single epochs are noisy. Targets: L2 within 1.15x of none,
dropout within 1.5x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from hpexp.nn.activations import Sigmoid
from hpexp.nn.costs import CrossEntropy
from hpexp.nn.init import Default
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.regularizers import Regularizer
from hpexp.train.loop import train_epoch

CONFIGS = {
    "none": Regularizer(),
    "l2": Regularizer(lmbda=5.0),
    "dropout": Regularizer(p=0.5),
    "dropout+l2+max_norm": Regularizer(lmbda=5.0, p=0.5, max_norm=3.0),
}
TARGETS = {"l2": 1.15, "dropout": 1.5}


def training_data(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    from hpexp.data import mnist as data

    try:
        train = data.load_splits(data.find_data_dir(download=False), n_train=n, splits=["train"])["train"]
        return train.x, train.y, "MNIST"
    except (data.DataError, ValueError):
        rng = np.random.default_rng(0)
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n), "random pixels"


def interleaved_epoch_times(x: np.ndarray, y: np.ndarray, epochs: int) -> dict[str, list[float]]:
    """Epoch times per configuration, taking turns epoch by epoch so that load from other users
    of the machine falls on all configurations alike."""
    networks = {
        name: Network.create([784, 30, 10], Sigmoid(), CrossEntropy(), Default(), np.random.default_rng(1))
        for name in CONFIGS
    }
    optimizers = {name: SGD(eta=0.5) for name in CONFIGS}
    rng, times = np.random.default_rng(2), {name: [] for name in CONFIGS}
    for _ in range(epochs):
        order = rng.permutation(len(y))
        xs, ys = x[order], y[order]
        for name, reg in CONFIGS.items():
            start = time.perf_counter()
            train_epoch(networks[name], optimizers[name], reg, xs, ys, 10, 0.5, rng)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=5, help="epochs per configuration (the first is dropped)"
    )
    parser.add_argument("--n", type=int, default=50_000, help="training images")
    args = parser.parse_args()
    x, y, source = training_data(args.n)
    print(
        f"784-30-10, mini-batch 10, float32, 1 BLAS thread, {args.n} {source}; "
        f"median of epochs 2..{args.epochs}"
    )
    with threadpool_limits(limits=1, user_api="blas"):
        times = {name: t[1:] for name, t in interleaved_epoch_times(x, y, args.epochs).items()}
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["none"]
    for name, m in medians.items():
        ratio = m / base
        target = (
            f"  (target <= {TARGETS[name]}x: {'met' if ratio <= TARGETS[name] else 'MISSED'})"
            if name in TARGETS
            else ""
        )
        spread = f"[{min(times[name]):.3f}-{max(times[name]):.3f}]"
        print(f"  {name:<20} {m:.3f} s/epoch {spread:<15} ratio {ratio:.2f}x{target}")


if __name__ == "__main__":
    main()
