"""Conv-net speed, measured in one process: hpexp's engine with and without its compiled kernels,
and against PyTorch CPU.

    python benchmarks/bench_conv.py [--images 5000] [--repeats 3] [--no-profile]

The chapter 6 networks at mini-batch 10, built through the config path: conv1 (ch6-conv1-fc100:
conv-pool 20 maps, 5x5, 2x2 max-pool -> FC(100) -> softmax, sigmoid), conv2 (ch6-conv2-relu: conv-pool
20 -> conv-pool 40 -> FC(100), ReLU) and conv2-2fc1000-dropout (ch6-dropout-2fc1000: two FC(1000)
with network3's dropout 0.5). Each trains on the first `--images` training images (a fraction of
an epoch, in stored order) with the NumPy reference path (hpexp.nn.conv.KERNELS = None: the
engine as it was before the kernels, unchanged) and with the compiled kernels (hpexp.kernels, the
`fast` extra), the two taking turns `--repeats` times; the best pass of each is scaled to 50,000
images, and the ratio is printed (target >= 2, issue 19). For conv1, PyTorch CPU too, when torch is
installed (optional, benchmark only: `pip install torch`). All use one thread; evaluation is not
timed. The profile splits one mini-batch step of conv1 into its parts, to show what limits it.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from hpexp.data.mnist import load_splits
from hpexp.nn import conv
from hpexp.train import batching
from hpexp.train.loop import train_epoch
from hpexp.train.runner import build_network, compose, validate

N_EPOCH, BATCH = 50_000, 10
COMMON = ["cost=log_likelihood", "init=network3"]
OVERRIDES = ["network=conv1", "activation=sigmoid", *COMMON, "optimizer.eta=0.1"]
NETWORKS = {
    "conv1 (20) + FC 100, sigmoid": OVERRIDES,
    "conv2 (20, 40) + FC 100, ReLU": ["network=conv2", "activation=relu", *COMMON, "optimizer.eta=0.03"],
    "conv2 + 2 FC 1000, dropout 0.5": [
        "network=conv2_2fc",
        "network.fc=1000",
        "activation=relu",
        *COMMON,
        "regularizer=dropout",
        "regularizer.p=0.5",
        "regularizer.inverted=false",
        "optimizer.eta=0.03",
    ],
}


def best_of(repeats: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def trainer(overrides: list[str], x: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], object]:
    """A function training one pass over (x, y), and the network it trains."""
    cfg = compose(overrides)
    parts = validate(cfg)
    net = build_network(cfg, parts, np.random.default_rng(0), "float32")
    rng, eta = np.random.default_rng(0), float(cfg.optimizer.eta)
    return lambda: train_epoch(net, parts.optimizer, parts.regularizer, x, y, BATCH, eta, rng), net


def engines_seconds(overrides: list[str], x: np.ndarray, y: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per 50,000-image epoch with the NumPy reference and with the compiled kernels,
    taking turns so a busy machine slows both alike."""
    kernels = conv.compiled_kernels()
    engines = {"numpy": None, "kernels": kernels} if kernels is not None else {"numpy": None}
    run, _ = trainer(overrides, x, y)
    best = dict.fromkeys(engines, np.inf)
    try:
        for k in engines.values():  # warm-up (and compilation)
            conv.KERNELS = k
            run()
        for _ in range(repeats):
            for name, k in engines.items():
                conv.KERNELS = k
                best[name] = min(best[name], best_of(1, run))
    finally:
        conv.KERNELS = kernels
    return {name: t * N_EPOCH / len(y) for name, t in best.items()}


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
    with threadpool_limits(limits=1, user_api="blas"):
        print(f"mini-batch {BATCH}, float32, one thread ({fraction}); machine: {batching.machine()}")
        print(f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'network':<34} {'NumPy':>8} {'kernels':>8} {'speed-up':>8}  (s/epoch)")
        for name, overrides in NETWORKS.items():
            seconds = engines_seconds(overrides, x, y, args.repeats)
            ours = seconds.get("kernels", seconds["numpy"])
            ratio = f"{seconds['numpy'] / ours:7.2f}x" if "kernels" in seconds else "  (no numba)"
            print(f"{name:<34} {seconds['numpy']:8.2f} {ours:8.2f} {ratio}", flush=True)
            if name.startswith("conv1"):
                conv1 = ours
        theirs = torch_seconds(x, y, args.repeats)
        if theirs is None:
            print("PyTorch: not installed (optional: pip install torch)")
        else:
            print(f"PyTorch CPU, conv1: {theirs:.2f} s/epoch; hpexp / PyTorch: {conv1 / theirs:.2f}")
        if not args.no_profile:
            _, net = trainer(OVERRIDES, x, y)
            print("profile of one mini-batch step of conv1 (microseconds, best of 3 x 2000):")
            for name, us in profile(net, x, y).items():
                print(f"  {name:<44} {us:8.1f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
