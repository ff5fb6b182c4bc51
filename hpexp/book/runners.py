"""The book's experiments that are not one `run()`: the single-neuron toys, chapter 5's speed of
learning, and the chapter 1 baselines (random guessing, average darkness, an SVM).

Each runner has `run()`'s signature, `(cfg, out_dir, *, on_epoch=None, progress=False) -> Path`, and
writes the same run directory (config.yaml, history.csv, summary.json), so reports read them alike.
A preset names its runner in `book.runner`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from hpexp.data import mnist as data
from hpexp.train import rundir, timings

__all__ = [
    "Skip",
    "average_darkness",
    "matrix_speed",
    "network2_run",
    "random_guess",
    "speed_of_learning",
    "svm",
    "toy_neuron",
]

Record = dict[str, Any]
Hook = Callable[[Record], Any] | None


class Skip(Exception):
    """The experiment cannot run here (e.g. an optional dependency is missing); not a failure."""


def _write(cfg: DictConfig, out_dir: str | Path, history: list[Record], started: float, **extra: Any) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    rundir.write_history(out, history)
    summary = {
        "status": "completed",
        "stop_reason": "done",
        "epochs_run": len(history),
        "final": history[-1] if history else None,
        "seconds": round(time.perf_counter() - started, 3),
        "seed": cfg.seed,
        **extra,
    }
    rundir.write_summary(out, summary)
    return out


# --- chapter 3: one sigmoid neuron learning x = 1 -> y = 0 ----------------------------------------


def toy_neuron(
    cfg: DictConfig, out_dir: str | Path, *, on_epoch: Hook = None, progress: bool = False
) -> Path:
    """Gradient descent on one sigmoid neuron, a = sigma(w x + b), with the book's toy example.

    dC/dz is (a - y) sigma'(z) for the quadratic cost and a - y for the cross-entropy, so a saturated
    neuron (a near 1) learns slowly only under the quadratic cost. Record `epoch` k is after k steps.
    """
    started, toy, eta = time.perf_counter(), cfg.toy, float(cfg.optimizer.eta)
    w, b, x, y = float(toy.w), float(toy.b), float(toy.x), float(toy.y)
    quadratic = cfg.choices.cost == "quadratic"
    history = []
    for step in range(int(toy.steps) + 1):
        a = 1.0 / (1.0 + np.exp(-(w * x + b)))
        cost = 0.5 * (a - y) ** 2 if quadratic else -(y * np.log(a) + (1 - y) * np.log(1 - a))
        history.append({"epoch": step, "output": a, "cost": cost, "w": w, "b": b})
        delta = (a - y) * a * (1 - a) if quadratic else a - y
        w, b = w - eta * delta * x, b - eta * delta
    return _write(cfg, out_dir, history, started)


# --- chapter 5: the speed of learning of each hidden layer ---------------------------------------


def _speeds(network: Any, split: data.Split) -> tuple[Record, list[list[float]]]:
    """||dC/db^l|| for each hidden layer l, the gradient of the mean cost over the whole split."""
    network.backprop(split.x, split.y)
    hidden = [layer.gb.ravel() for layer in network.layers[:-1]]
    return {f"speed_{i + 1}": float(np.linalg.norm(g)) for i, g in enumerate(hidden)}, [
        g.tolist() for g in hidden
    ]


def speed_of_learning(
    cfg: DictConfig, out_dir: str | Path, *, on_epoch: Hook = None, progress: bool = False
) -> Path:
    """Train as `run()` would, recording `speed_l` = ||dC/db^l|| over the training set per hidden layer.

    Record `epoch` 0 is the initialization; record k is after k epochs, i.e. before update k+1 in the
    book's full-batch runs (generate_gradient.py measures before each update). The initial per-neuron
    dC/db (the book's bar picture) goes to gradients.json.
    """
    from hpexp.train.loop import evaluate, fit, rng_streams
    from hpexp.train.runner import build_network, load_data, validate

    started, parts = time.perf_counter(), validate(cfg)
    splits = load_data(cfg)
    streams = rng_streams(cfg.seed)
    network = build_network(cfg, parts, streams["init"])
    train, monitor = splits["train"], {s: splits[s] for s in cfg.train.monitor}
    speeds, gradients = _speeds(network, train)
    first: Record = {"epoch": 0}
    for name, split in monitor.items():
        loss, accuracy = evaluate(network, split)
        first |= {f"{name}_loss": float(loss), f"{name}_accuracy": float(accuracy)}
    history = [first | speeds]

    def hook(record: Record) -> None:
        history.append(record | _speeds(network, train)[0])
        if on_epoch:
            on_epoch(record)

    with threadpool_limits(limits=1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
        result = fit(
            network,
            train,
            monitor,
            optimizer=parts.optimizer,
            epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size,
            rng=streams["shuffle"],
            regularizer=parts.regularizer,
            schedule=parts.schedule,
            stopping=parts.stopping,
            on_epoch=hook,
        )
    out = _write(cfg, out_dir, history, started, status=result.status, stop_reason=result.stop_reason)
    rundir.write_atomic(out / "gradients.json", json.dumps({"initial_db": gradients}) + "\n")
    return out


# --- the book's own algorithm (hpexp.book.reference) ---------------------------------------------


def _reference_network(cfg: DictConfig) -> tuple[Any, dict[str, data.Split], float, float]:
    from hpexp.book.reference import Network2

    if cfg.choices.activation != "sigmoid" or cfg.choices.cost not in ("quadratic", "cross_entropy"):
        raise ValueError(
            f"the book's network2 algorithm has sigmoid layers and the quadratic or cross-entropy cost, "
            f"not {cfg.choices.activation} with {cfg.choices.cost}"
        )
    if cfg.choices.init not in ("large", "default"):
        raise ValueError(f"network2 initializes as `default` or `large`, not {cfg.choices.init}")
    splits = _splits(cfg)
    sizes = [splits["train"].x.shape[1], *cfg.network.hidden, 10]
    network = Network2(
        sizes,
        cross_entropy=cfg.choices.cost == "cross_entropy",
        large=cfg.choices.init == "large",
        seed=cfg.seed,
    )
    lmbda = float(cfg.regularizer.get("lmbda", 0.0)) if cfg.choices.regularizer == "l2" else 0.0
    if cfg.choices.regularizer not in ("none", "l2"):
        raise ValueError(f"network2 regularizes with L2 or not at all, not {cfg.choices.regularizer}")
    return network, splits, float(cfg.optimizer.eta), lmbda


def network2_run(
    cfg: DictConfig, out_dir: str | Path, *, on_epoch: Hook = None, progress: bool = False
) -> Path:
    """An MLP preset trained by the book's algorithm itself (hpexp.book.reference.Network2: one
    example at a time, NumPy's legacy generator seeded with `seed` for the weights, Python's random
    for the shuffles, float64), recording what network2's monitors print after each epoch."""
    started = time.perf_counter()
    network, splits, eta, lmbda = _reference_network(cfg)
    train, history = splits["train"], []
    for epoch in range(1, int(cfg.train.epochs) + 1):
        seconds = network.epoch(train.x, train.y, int(cfg.train.batch_size), eta, lmbda)
        record: Record = {"epoch": epoch}
        for name in cfg.train.monitor:
            split = splits[name]
            record[f"{name}_cost"] = network.cost(split.x, split.y, lmbda)
            record[f"{name}_accuracy"] = network.accuracy(split.x, split.y)
        history.append(record | {"seconds": seconds})
        if on_epoch:
            on_epoch(record)
    return _write(cfg, out_dir, history, started)


def matrix_speed(
    cfg: DictConfig, out_dir: str | Path, *, on_epoch: Hook = None, progress: bool = False
) -> Path:
    """Chapter 2's claim: backpropagation over a mini-batch as one matrix is "about a factor of two"
    faster than network.py's loop over its examples. Both forms (hpexp.book.reference) compute the
    summed gradients of every mini-batch of the first `data.n_train` training images, `repeats`
    times, alternating which goes first; `speedup` is the ratio of their median times. Both give the
    same gradients (checked here to 1e-9), in float64, with one BLAS thread."""
    from hpexp.book.reference import Network2, matrix_gradient, per_example_gradient

    started, splits = time.perf_counter(), _splits(cfg)
    train, m = splits["train"], int(cfg.train.batch_size)
    sizes = [train.x.shape[1], *cfg.network.hidden, 10]
    network = Network2(sizes, cross_entropy=cfg.choices.cost == "cross_entropy", seed=cfg.seed)
    y = np.eye(10)[train.y]
    batches = [(train.x[k : k + m], y[k : k + m]) for k in range(0, len(train.x), m)]
    forms = {"per_example": per_example_gradient, "matrix": matrix_gradient}
    for a, b in zip(
        *(f(network.weights, network.biases, *batches[0], network.cross_entropy) for f in forms.values()),
        strict=True,
    ):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)
    times: dict[str, list[float]] = {name: [] for name in forms}
    with threadpool_limits(limits=1, user_api="blas"):
        for r in range(int(cfg.timing.repeats)):
            for name in list(forms)[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                for xb, yb in batches:
                    forms[name](network.weights, network.biases, xb, yb, network.cross_entropy)
                times[name].append(time.perf_counter() - t0)
    median = {name: float(np.median(t)) for name, t in times.items()}
    record: Record = {
        "epoch": 1,
        "per_example_seconds": median["per_example"],
        "matrix_seconds": median["matrix"],
        "speedup": median["per_example"] / median["matrix"],
        "images": len(train.x),
        "batch_size": m,
    }
    return _write(cfg, out_dir, [record], started, machine=timings.machine(), times=times)


# --- chapter 1 baselines -------------------------------------------------------------------------


def _splits(cfg: DictConfig) -> dict[str, data.Split]:
    names = ["train", *[s for s in cfg.train.monitor if s != "train"]]
    return data.load_splits(
        cfg.data.dir,
        n_train=cfg.data.n_train,
        n_validation=cfg.data.n_validation,
        scale=cfg.data.scale,
        dtype="float64",
        splits=names,
    )


def _baseline(
    cfg: DictConfig,
    out_dir: str | Path,
    predict: Callable[[np.ndarray], np.ndarray],
    splits: dict[str, data.Split],
    started: float,
) -> Path:
    record: Record = {"epoch": 1}
    for name in cfg.train.monitor:
        record[f"{name}_accuracy"] = float(np.mean(predict(splits[name].x) == splits[name].y))
    return _write(cfg, out_dir, [record], started)


def random_guess(
    cfg: DictConfig, out_dir: str | Path, *, on_epoch: Hook = None, progress: bool = False
) -> Path:
    """Guess a digit uniformly at random: about 10%."""
    started, splits = time.perf_counter(), _splits(cfg)
    rng = np.random.default_rng(cfg.seed)
    return _baseline(cfg, out_dir, lambda x: rng.integers(0, 10, len(x)), splits, started)


def average_darkness(
    cfg: DictConfig, out_dir: str | Path, *, on_epoch: Hook = None, progress: bool = False
) -> Path:
    """The book's mnist_average_darkness.py: darkness = the sum of an image's pixels; predict the
    digit whose mean training darkness is nearest (2,225 of 10,000 test images)."""
    started, splits = time.perf_counter(), _splits(cfg)
    train = splits["train"]
    darkness = train.x.sum(axis=1)
    means = np.array([darkness[train.y == d].mean() for d in range(10)])
    return _baseline(
        cfg, out_dir, lambda x: np.abs(x.sum(axis=1)[:, None] - means).argmin(axis=1), splits, started
    )


def svm(cfg: DictConfig, out_dir: str | Path, *, on_epoch: Hook = None, progress: bool = False) -> Path:
    """The book's mnist_svm.py: scikit-learn's SVC with the defaults of its time (RBF, C = 1,
    gamma = 1/784, which is gamma='auto' since scikit-learn 0.22 changed the default)."""
    try:
        from sklearn.svm import SVC
    except ImportError:
        raise Skip("scikit-learn is not installed; `pip install 'hpexp[svm]'` adds it") from None
    started, splits = time.perf_counter(), _splits(cfg)
    model = SVC(gamma="auto").fit(splits["train"].x, splits["train"].y)
    return _baseline(cfg, out_dir, model.predict, splits, started)
