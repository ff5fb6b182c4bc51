"""Engine speed, measured in one process: the vectorized engine against the per-example oracle.

    python benchmarks/bench_engine.py [--epochs 3] [--oracle-examples 5000]

Prints seconds per training epoch (the median epoch, the first one dropped as warm-up) on the
book's 50,000 training images for 784-30-10 and 784-100-10 at mini-batch 10 and 100, in float32
and float64, and the speed-up over the book's per-example backpropagation (tests/oracle.py, timed
on a slice of the data and scaled to 50,000). Also: evaluation of the 10,000 validation images as
a fraction of an epoch, and the peak memory of a default `hpexp train` run. One BLAS thread.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracle import sgd_epoch  # noqa: E402

from hpexp.data.mnist import load_splits  # noqa: E402
from hpexp.nn import (
    activations,
    costs,
    init,  # noqa: E402
)
from hpexp.nn.network import Network  # noqa: E402
from hpexp.nn.optimizers import SGD  # noqa: E402
from hpexp.nn.regularizers import NoPenalty  # noqa: E402
from hpexp.train.loop import evaluate, train_epoch  # noqa: E402


def engine_epoch_seconds(sizes, batch_size, dtype, train, epochs):
    rng = np.random.default_rng(0)
    net = Network.create(sizes, activations.Sigmoid(), costs.CrossEntropy(), init.Default(), rng, dtype)
    times = []
    for _ in range(epochs + 1):
        order = rng.permutation(len(train))
        start = time.perf_counter()
        train_epoch(net, SGD(0.5), NoPenalty(), train.x[order], train.y[order], batch_size, 0.5)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), net


def oracle_epoch_seconds(net, batch_size, train, n_examples):
    weights = [layer.w.astype(np.float64) for layer in net.layers]
    biases = [layer.b.T.astype(np.float64) for layer in net.layers]
    x, y = train.x[:n_examples].astype(np.float64), train.y[:n_examples]
    start = time.perf_counter()
    sgd_epoch(weights, biases, x, y, np.arange(n_examples), batch_size, 0.5, 0.0, "sigmoid", "cross_entropy")
    return (time.perf_counter() - start) * len(train) / n_examples


def peak_memory_of_default_run(out_dir: str) -> float:
    """VmHWM (the resident-set high-water mark) of a fresh process running `hpexp train`, in MiB.

    Read from /proc in the child itself: ru_maxrss would carry over the parent's peak."""
    code = (
        "from hpexp.cli import main\n"
        f"main(['train', 'out_dir={out_dir}'])\n"
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up")
    parser.add_argument("--oracle-examples", type=int, default=5000)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run")
    args = parser.parse_args()
    header = ("network", "mb", "dtype", "engine s/epoch", "oracle s/epoch", "speed-up")
    print("{:<12} {:>4} {:<8} {:>15} {:>15} {:>9}".format(*header))
    with threadpool_limits(limits=1, user_api="blas"):
        for dtype in ("float32", "float64"):
            splits = load_splits(splits=("train", "val"), dtype=dtype)
            for sizes in ([784, 30, 10], [784, 100, 10]):
                for batch_size in (10, 100):
                    seconds, net = engine_epoch_seconds(
                        sizes, batch_size, dtype, splits["train"], args.epochs
                    )
                    oracle = oracle_epoch_seconds(net, batch_size, splits["train"], args.oracle_examples)
                    name = "-".join(map(str, sizes))
                    print(
                        f"{name:<12} {batch_size:>4} {dtype:<8} {seconds:>15.3f} {oracle:>15.2f} "
                        f"{oracle / seconds:>8.1f}x",
                        flush=True,
                    )
                    if batch_size == 10:
                        start = time.perf_counter()
                        evaluate(net, splits["val"])
                        share = (time.perf_counter() - start) / seconds
                        print(f"{'':<12} evaluating 10,000 validation images: {100 * share:.1f}% of an epoch")
    if not args.no_memory:
        with tempfile.TemporaryDirectory() as out_dir:
            print(
                f"peak memory of a default `hpexp train` run: {peak_memory_of_default_run(out_dir):.0f} MiB"
            )


if __name__ == "__main__":
    main()
