"""`hpexp gradcheck [overrides]`: check backpropagation against finite differences, for a config.

The derivative of the cost C with respect to one parameter p can be estimated without calculus as
the central difference (C(p + eps) - C(p - eps)) / 2 eps, with error O(eps^2). That takes two
forward passes per parameter, far too slow to train with, but it is how one learns to trust
backpropagation. This command builds the configured network, cost and regularizer in float64,
draws a few real training examples (random pixels if no MNIST is found) and one fixed dropout mask
if dropout is configured, and compares the two for every weight and bias array:

    relative error = ||g_backprop - g_numeric|| / (||g_backprop|| + ||g_numeric||)

It passes when every array's error is below the threshold, and exits with status 1 otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from hpexp.nn.network import Masks, Network

__all__ = ["backprop_grads", "check", "main", "numeric_grad", "relative_error", "total_cost"]

THRESHOLD = 1e-6


def total_cost(network: Network, regularizer, x: np.ndarray, y: np.ndarray, n: int, masks) -> float:
    """The regularized cost: mean data cost over (x, y) plus the penalty of every weight array."""
    penalty = sum(float(regularizer.value(w, n)) for w in network.weights)
    return float(network.cost.value(network.logits(x, masks), y)) + penalty


def backprop_grads(network: Network, regularizer, x, y, n: int, masks) -> list[np.ndarray]:
    network.backprop(x, y, masks)
    for w, g in zip(network.weights, network.weight_grads, strict=True):
        g += regularizer.grad(w, n)
    return [g.copy() for g in network.grads]


def numeric_grad(network: Network, regularizer, x, y, n: int, masks, p: np.ndarray, idx, eps: float):
    """Central difference of the total cost in the entry p[idx]."""
    old = p[idx]
    p[idx] = old + eps
    up = total_cost(network, regularizer, x, y, n, masks)
    p[idx] = old - eps
    down = total_cost(network, regularizer, x, y, n, masks)
    p[idx] = old
    return (up - down) / (2 * eps)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def check(
    network: Network,
    regularizer,
    x: np.ndarray,
    y: np.ndarray,
    n: int,
    masks: Masks | None = None,
    eps: float = 1e-6,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, relative error) per parameter array; `max_entries` samples that many per array."""
    rng = rng or np.random.default_rng(0)
    analytic = backprop_grads(network, regularizer, x, y, n, masks)
    # Every layer's parameters alternate weights, biases (a conv stack: filters, biases per conv-pool).
    names = [
        f"layer {i + 1} {'biases' if j % 2 else 'weights'}{f' {j // 2 + 1}' if len(layer.params) > 2 else ''}"
        for i, layer in enumerate(network.layers)
        for j in range(len(layer.params))
    ]
    rows = []
    for name, p, a in zip(names, network.params, analytic, strict=True):
        flat = np.arange(p.size)
        if max_entries is not None and p.size > max_entries:
            flat = rng.choice(p.size, max_entries, replace=False)
        indices = [np.unravel_index(i, p.shape) for i in flat]
        numeric = np.array([numeric_grad(network, regularizer, x, y, n, masks, p, i, eps) for i in indices])
        rows.append((name, p.shape, relative_error(np.array([a[i] for i in indices]), numeric)))
    return rows


def _problem(cfg, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    from hpexp.data.files import DataError
    from hpexp.data.splits import load
    from hpexp.train.runner import data_config, data_info

    info = data_info(cfg)
    try:  # a check never downloads
        config = {**data_config(cfg), "n_train": m, "download": False}
        split = load(config, splits=["train"], dtype="float64")
        return split["train"].x, split["train"].y, f"the first {m} {info.name} training examples"
    except (DataError, ValueError):
        x, y = rng.uniform(0, 1, (m, info.n_features)), rng.integers(0, info.n_classes, m)
        return x, y, f"{m} random examples (no {info.name} data found)"


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="hpexp gradcheck",
        description="compare backpropagation with central finite differences (float64)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `hpexp train`")
    parser.add_argument("--examples", type=int, default=5, help="training examples in the cost (default 5)")
    parser.add_argument("--eps", type=float, default=1e-6, help="finite-difference step (default 1e-6)")
    parser.add_argument(
        "--threshold", type=float, default=THRESHOLD, help=f"largest passing relative error ({THRESHOLD:g})"
    )
    parser.add_argument(
        "--max-entries", type=int, default=500, help="entries checked per array, sampled (default 500)"
    )
    args = parser.parse_intermixed_args(argv)
    if args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")

    from hpexp.train.loop import rng_streams
    from hpexp.train.runner import build_network, compose, validate

    cfg = compose([*args.overrides, "dtype=float64"])
    parts = validate(cfg)
    streams = rng_streams(cfg.seed)
    network = build_network(cfg, parts, streams["init"], "float64")
    x, y, source = _problem(cfg, args.examples, streams["shuffle"])
    reg = parts.regularizer
    masks = reg.masks(network.input_shapes(len(y)), streams["dropout"], np.float64) if reg.dropout else None
    sizes = cfg.choices.network
    print(
        f"gradcheck {sizes} {cfg.choices.activation} {cfg.choices.cost} {reg!r}: {source}, eps {args.eps:g}"
    )
    if masks is not None:
        print(
            "dropout: one fixed mask, drawn from the 'dropout' stream, in both backprop and the differences"
        )
    with threadpool_limits(limits=1, user_api="blas"):  # tiny products: threads only cost time
        rows = check(network, reg, x, y, cfg.data.n_train, masks, args.eps, args.max_entries)
    worst = max(err for _, _, err in rows)
    for name, shape, err in rows:
        verdict = "ok" if err < args.threshold else "FAIL"
        print(f"  {name:<18} {str(shape):<12} relative error {err:.2e}  {verdict}")
    if worst < args.threshold:
        print(f"PASS: largest relative error {worst:.2e} < threshold {args.threshold:g}")
        return
    print(f"FAIL: largest relative error {worst:.2e} >= threshold {args.threshold:g}")
    raise SystemExit(1)
