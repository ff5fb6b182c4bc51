"""Conv-net speed, measured in one process: hpexp's NumPy engine against PyTorch CPU.

    python benchmarks/bench_conv.py [--images 5000] [--repeats 3] [--no-profile]

The network is the book's basic_conv (ch6-conv1-fc100): conv-pool(20 maps, 5x5, 2x2 max-pool) ->
FC(100) -> softmax(10), sigmoid, log-likelihood, mini-batch 10, built through the config path
(`network=conv1`). Prints seconds per training epoch on the 50,000 training images: each engine
trains on the first `--images` of them (a fraction of an epoch, in stored order), the best of
`--repeats` passes is scaled to 50,000; then the ratio hpexp / PyTorch (target <= 2) when torch is
installed (optional, benchmark only: `pip install torch`). Both use one thread. Evaluation is not
timed. The profile splits one mini-batch step of hpexp into its parts, to show what limits it.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from hpexp.data.mnist import load_splits
from hpexp.nn.regularizers import NoPenalty
from hpexp.train.loop import train_epoch
from hpexp.train.runner import build_network, compose, validate

N_EPOCH, BATCH = 50_000, 10
OVERRIDES = [
    "network=conv1",
    "activation=sigmoid",
    "cost=log_likelihood",
    "init=network3",
    "optimizer.eta=0.1",
]


def best_of(repeats: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def hpexp_seconds(x: np.ndarray, y: np.ndarray, repeats: int) -> tuple[float, object]:
    cfg = compose(OVERRIDES)
    parts = validate(cfg)
    net = build_network(cfg, parts, np.random.default_rng(0), "float32")
    train_epoch(net, parts.optimizer, NoPenalty(), x[:500], y[:500], BATCH, 0.1)  # warm-up
    seconds = best_of(repeats, lambda: train_epoch(net, parts.optimizer, NoPenalty(), x, y, BATCH, 0.1))
    return seconds * N_EPOCH / len(y), net


def torch_seconds(x: np.ndarray, y: np.ndarray, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 20, 5),
        torch.nn.MaxPool2d(2),
        torch.nn.Sigmoid(),
        torch.nn.Flatten(),
        torch.nn.Linear(2880, 100),
        torch.nn.Sigmoid(),
        torch.nn.Linear(100, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt = torch.from_numpy(x.reshape(-1, 1, 28, 28).copy())  # the loaded splits are read-only
    yt = torch.from_numpy(y.astype(np.int64))

    def epoch() -> None:
        for start in range(0, len(yt), BATCH):
            optimizer.zero_grad(set_to_none=False)
            loss_fn(model(xt[start : start + BATCH]), yt[start : start + BATCH]).backward()
            optimizer.step()

    epoch()  # warm-up
    return best_of(repeats, epoch) * N_EPOCH / len(y)


def profile(net, x: np.ndarray, y: np.ndarray, steps: int = 2000) -> dict[str, float]:
    """Microseconds per mini-batch of each part of one SGD step of hpexp's conv1 network."""
    from hpexp.nn.conv import patches

    stack, fc, out = net.layers
    cp = stack.layers[0]
    xb, yb = x[:BATCH], y[:BATCH]
    img = xb.reshape(BATCH, 1, 28, 28)
    cols = patches(img, 5, 5)
    conv_out = cp.conv.forward(img)
    pooled = cp.pool.forward(conv_out)
    d_pooled = np.ones_like(pooled)
    flat = stack.forward(xb)
    d_flat = np.ones_like(flat)
    parts: dict[str, Callable[[], object]] = {
        "im2col (patches, a copy)": lambda: patches(img, 5, 5),
        "conv matmul (20 x 25) @ (25 x 10*24*24)": lambda: cp.conv.matrix() @ cols,
        "max-pool forward": lambda: cp.pool.forward(conv_out),
        "max-pool backward": lambda: cp.pool.backward(d_pooled),
        "conv weight grad (20 x 5760) @ (5760 x 25)": lambda: cp.conv.backward(np.ones_like(conv_out), False),
        "conv-pool layer forward": lambda: stack.forward(xb),
        "conv-pool layer backward": lambda: stack.backward(d_flat, False),
        "FC(100) + softmax forward + backward": lambda: (fc.forward(flat), out.forward(fc.a)),
        "whole step (backprop + SGD update)": lambda: (
            net.backprop(xb, yb),
            np.subtract(net.flat_params, 0.0, out=net.flat_params),
        ),
    }

    def repeat(f: Callable[[], object]) -> None:
        for _ in range(steps):  # each result dropped at once: a list of them would time the allocator
            f()

    return {name: best_of(3, lambda f=f: repeat(f)) / steps * 1e6 for name, f in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images trained per timing (default 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="passes timed, best taken (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-part profile")
    args = parser.parse_args()
    data_dir = os.environ.get("HPEXP_DATA_DIR")
    train = load_splits(data_dir, n_train=args.images, splits=["train"])["train"]
    x, y = train.x, train.y
    fraction = f"{args.images:,} of {N_EPOCH:,} images, best of {args.repeats}, scaled"
    print(
        f"conv-pool(20, 5x5, pool 2) + FC(100) + softmax, mini-batch {BATCH}, float32, "
        f"one thread ({fraction})"
    )
    with threadpool_limits(limits=1, user_api="blas"):
        ours, net = hpexp_seconds(x, y, args.repeats)
        print(f"  hpexp (NumPy)   {ours:7.2f} s/epoch")
        theirs = torch_seconds(x, y, args.repeats)
        if theirs is None:
            print("  PyTorch         not installed (optional: pip install torch)")
        else:
            print(f"  PyTorch CPU     {theirs:7.2f} s/epoch")
            print(f"  ratio hpexp / PyTorch: {ours / theirs:.2f} (target <= 2)")
        if not args.no_profile:
            print("profile of one mini-batch step (microseconds, best of 3 x 2000):")
            for name, us in profile(net, x, y).items():
                print(f"  {name:<44} {us:8.1f}")


if __name__ == "__main__":
    main()
