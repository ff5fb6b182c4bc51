"""Conv-net speed: this engine against the engine before the speed work (issue 19) and PyTorch CPU.

    python benchmarks/bench_conv.py [--images 5000] [--rounds 3] [--old 83ffd9a] [--old-compiled]
                                    [--no-profile]

The chapter 6 networks at mini-batch 10, built through the config path: conv1 (ch6-conv1-fc100:
conv-pool 20 maps, 5x5, 2x2 max-pool -> FC(100) -> softmax, sigmoid), conv2 (ch6-conv2-relu: conv-pool
20 -> conv-pool 40 -> FC(100), ReLU) and conv2-2fc1000-dropout (ch6-dropout-2fc1000: two FC(1000)
with network3's dropout 0.5). Each trains on the first `--images` training images (a fraction of
an epoch, in stored order), scaled to 50,000 images, with three engines:

  old      the engine of commit `--old` (default 83ffd9a, the one issue 19 was filed against),
           taken from git into a temporary folder: the figure to be twice as fast as; on its
           NumPy path, or with `--old-compiled` as it ran (its compiled kernels: an A/B of two
           commits of this engine)
  NumPy    this engine with HPEXP_KERNELS=numpy (the reference path the tests compare with)
  new      this engine as it runs, with the compiled kernels if the `fast` extra is installed

Each engine runs in a process of its own (one warm-up pass, then one timed pass), the three taking
turns `--rounds` times; each keeps its best. Times are the process's CPU seconds with one BLAS
thread, so other processes on a busy machine count only through the caches they share. PyTorch CPU
(one thread, the same layers, optional: `pip install torch`) is timed in this process where
installed. The profile splits one mini-batch step of conv1 into its parts, to show what limits it.
The BLAS line names each BLAS library loaded (NumPy's, and SciPy's for the `fast` extra's steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import hpexp
from hpexp.data.mnist import load_splits
from hpexp.train.loop import train_epoch
from hpexp.train.runner import build_network, compose, validate

N_EPOCH, BATCH = 50_000, 10
OLD = "83ffd9a"  # the commit issue 19 was filed against
REPO = Path(__file__).resolve().parents[1]
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
    """The least CPU time of `repeats` calls of run()."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def trainer(overrides: list[str], x: np.ndarray, y: np.ndarray) -> tuple[Callable[[], None], object]:
    """A function training one pass over (x, y), and the network it trains."""
    cfg = compose(overrides)
    parts = validate(cfg)
    net = build_network(cfg, parts, np.random.default_rng(0), "float32")
    rng, eta = np.random.default_rng(0), float(cfg.optimizer.eta)
    return lambda: train_epoch(net, parts.optimizer, parts.regularizer, x, y, BATCH, eta, rng), net


def worker(network: str, images: int) -> None:
    """The child process: one warm-up pass and one timed pass of `network` with the hpexp found on
    sys.path (this checkout, or the old engine's folder), printing seconds per 50,000 images."""
    train = load_splits(os.environ.get("HPEXP_DATA_DIR"), n_train=images, splits=["train"])["train"]
    with threadpool_limits(limits=1, user_api="blas"):
        run, _ = trainer(NETWORKS[network], train.x, train.y)
        run()
        seconds = best_of(1, run) * N_EPOCH / images
    print(json.dumps({"seconds": seconds, "hpexp": str(Path(hpexp.__file__).parent.parent)}))


def old_engine(commit: str, into: Path) -> Path:
    """The `hpexp` package and `conf/` of `commit`, extracted from git into `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "hpexp", "conf"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def engines_seconds(
    network: str, images: int, rounds: int, old: Path, old_compiled: bool = False
) -> dict[str, float]:
    """Seconds per 50,000-image epoch of each engine, each in its own process, taking turns."""
    here = os.environ.get("PYTHONPATH", "")
    envs = {
        "old": {"PYTHONPATH": f"{old}{os.pathsep}{here}", "HPEXP_KERNELS": "" if old_compiled else "numpy"},
        "NumPy": {"PYTHONPATH": f"{REPO}{os.pathsep}{here}", "HPEXP_KERNELS": "numpy"},
        "new": {"PYTHONPATH": f"{REPO}{os.pathsep}{here}", "HPEXP_KERNELS": ""},
    }
    best = dict.fromkeys(envs, np.inf)
    command = [sys.executable, __file__, "--worker", network, "--images", str(images)]
    for _ in range(rounds):
        for name, env in envs.items():
            # from the old engine's folder, so its own `hpexp` (not an installed one) is imported
            cwd = old if name == "old" else REPO
            out = subprocess.run(
                command, env=os.environ | env, cwd=cwd, check=True, capture_output=True, text=True
            )
            result = json.loads(out.stdout.splitlines()[-1])
            if Path(result["hpexp"]) != cwd:  # an installed hpexp shadowing the one asked for
                raise RuntimeError(f"the {name} engine ran hpexp from {result['hpexp']}, not {cwd}")
            best[name] = min(best[name], result["seconds"])
    return best


def torch_model(network: str):  # -> torch.nn.Sequential
    """The same layers in PyTorch (dropout on each dense layer's input, as hpexp's masks)."""
    from torch import nn

    if network.startswith("conv1"):
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Sigmoid(), nn.Flatten(),
            nn.Linear(2880, 100), nn.Sigmoid(), nn.Linear(100, 10),
        )  # fmt: skip
    convs = [
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(20, 40, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
    ]
    if "dropout" not in network:
        return nn.Sequential(*convs, nn.Flatten(), nn.Linear(640, 100), nn.ReLU(), nn.Linear(100, 10))
    return nn.Sequential(
        *convs, nn.Flatten(), nn.Dropout(0.5), nn.Linear(640, 1000), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(1000, 1000), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1000, 10),
    )  # fmt: skip


def torch_seconds(network: str, x: np.ndarray, y: np.ndarray, repeats: int) -> float | None:
    """Seconds per 50,000-image epoch of PyTorch CPU (one thread), None if torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch_model(network)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
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


def profile(net, optimizer, regularizer, x: np.ndarray, y: np.ndarray, steps: int = 2000) -> dict[str, float]:
    """Microseconds per mini-batch of each part of one SGD step of hpexp's conv1 network, as
    training runs it (the dense products and filter gradients compiled where hpexp.train.ways
    measured them faster)."""
    from hpexp.nn.conv import patches
    from hpexp.nn.optimizers import descend
    from hpexp.train import ways
    from hpexp.train.step import mini_batch_steps

    ways.dense_choices(net, BATCH)
    ways.conv_choices(net, BATCH)
    ways.activation_choices(net, BATCH)
    (step,) = mini_batch_steps(net, optimizer, regularizer, 1e-6, N_EPOCH)
    stack, fc, out = net.layers
    cp = stack.layers[0]
    xb, yb = x[:BATCH], y[:BATCH]
    img = xb.reshape(BATCH, 1, 28, 28)
    parity = cp.parity_for(img)  # the maps' rows as the layer stores them (hpexp.nn.conv)
    cols = patches(img, 5, 5, parity)
    in_order = cp.conv.forward(img)  # the maps' rows in order, for the pooling's comparison
    in_order_pool = type(cp.pool)(cp.pool.size)
    d_pooled = np.ones_like(in_order_pool.forward(in_order))
    conv_out = cp.conv.forward(img, parity)
    cp.pool.forward(conv_out, parity=parity)
    flat = stack.forward(xb)
    d_flat = np.ones_like(flat)
    a = fc.forward(flat)
    d_fc = np.full_like(a, 1e-6)
    w = fc.w.copy()
    compiled = f"compiled ({fc.rows} rows)" if fc.compiled else "BLAS"
    filters = f"compiled ({cp.conv.rows} rows)" if cp.conv.compiled else "BLAS"
    d_conv = np.ones_like(conv_out)
    stored = ", the maps' rows in parity order" if parity else ""
    stepped = "by the formed gradient"
    if fc.by_product:
        stepped = f"inside the product ({'compiled' if fc.compiled_step else 'gemm'})"

    def formed() -> None:
        np.matmul(d_fc.T, flat, out=fc.gw)
        np.subtract(w, fc.gw, out=w)

    parts: dict[str, Callable[[], object]] = {
        "im2col (patches, a copy)": lambda: patches(img, 5, 5, parity),
        "conv matmul (20 x 25) @ (25 x 10*24*24)": lambda: cp.conv.matrix() @ cols,
        f"max-pool forward{stored}": lambda: cp.pool.forward(conv_out, parity=parity),
        f"max-pool backward{stored}": lambda: cp.pool.backward(d_pooled),
        "max-pool forward, the maps' rows in order": lambda: in_order_pool.forward(in_order),
        "max-pool backward, the maps' rows in order": lambda: in_order_pool.backward(d_pooled),
        f"conv filter grad (20x5760 @ 5760x25) {filters}": lambda: cp.conv.backward(d_conv, False),
        "conv-pool layer forward": lambda: stack.forward(xb),
        "conv-pool layer backward": lambda: stack.backward(d_flat, False),
        f"FC(100) forward, x W^T by {compiled}": lambda: fc.forward(flat),
        "FC(100) backward": lambda: fc.backward(d_fc, True, factored=fc.by_product),
        f"FC(100) SGD step {stepped}": lambda: (
            descend(w, d_fc, flat, compiled=fc.compiled_step) if fc.by_product else formed()
        ),
        "output layer + softmax forward + backward": lambda: (out.forward(a), out.backward(d_fc[:, :10])),
        "whole step (backprop + SGD step)": lambda: step(xb, yb, None),
    }

    def repeat(f: Callable[[], object]) -> None:
        for _ in range(steps):  # each result dropped at once: a list of them would time the allocator
            f()

    return {name: best_of(3, lambda f=f: repeat(f)) / steps * 1e6 for name, f in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images trained per timing (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the engines, best taken (default 3)")
    parser.add_argument(
        "--old", default=OLD, help=f"the commit of the engine to compare with (default {OLD})"
    )
    parser.add_argument(
        "--old-compiled", action="store_true", help="run the old engine with its compiled kernels"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the per-part profile")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a child process timing one engine
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.images)
    from hpexp.train import timings  # here: the old engine (in a worker) may not have it

    data_dir = os.environ.get("HPEXP_DATA_DIR")
    train = load_splits(data_dir, n_train=args.images, splits=["train"])["train"]
    x, y = train.x, train.y
    fraction = f"{args.images:,} of {N_EPOCH:,} images, best of {args.rounds}, scaled"
    with threadpool_limits(limits=1, user_api="blas"), tempfile.TemporaryDirectory() as tmp:
        old = old_engine(args.old, Path(tmp))
        print(f"mini-batch {BATCH}, float32, one thread, CPU s/epoch ({fraction})")
        print(f"machine: {timings.machine()}")
        path = "as it ran (compiled kernels)" if args.old_compiled else "on its NumPy path"
        print(f"load average {os.getloadavg()[0]:.2f}; old = the engine of {args.old}, {path}")
        columns = f"{'old':>7} {'NumPy':>7} {'new':>7} {'old/new':>8} {'PyTorch':>8} {'new/PyTorch':>11}"
        print(f"{'network':<32} {columns}")
        for name in NETWORKS:
            seconds = engines_seconds(name, args.images, args.rounds, old, args.old_compiled)
            theirs = torch_seconds(name, x, y, args.rounds)
            vs_torch = (
                "     (no torch)" if theirs is None else f"{theirs:8.2f} {seconds['new'] / theirs:10.2f}x"
            )
            print(
                f"{name:<32} {seconds['old']:7.2f} {seconds['NumPy']:7.2f} {seconds['new']:7.2f} "
                f"{seconds['old'] / seconds['new']:7.2f}x {vs_torch}",
                flush=True,
            )
        if not args.no_profile:
            cfg = compose(OVERRIDES)
            parts = validate(cfg)
            net = build_network(cfg, parts, np.random.default_rng(0), "float32")
            print("profile of one mini-batch step of conv1 (microseconds, best of 3 x 2000):")
            for name, us in profile(net, parts.optimizer, parts.regularizer, x, y).items():
                print(f"  {name:<44} {us:8.1f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
