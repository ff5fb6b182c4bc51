"""Reporting speed and weight: `hpexp report` on 100 synthetic but valid run directories of 30
epochs, and the size of report.html for 10 runs.

Target: under 20 s for loading, comparisons, tables, figures (PNGs and the interactive plotly
figures) and both pages. The runs are written with hpexp.train.rundir (the format every run uses):
5 configurations (regularizer.lmbda) x 20 seeds (shared, so comparisons are paired), train/val/test
monitored, curves shaped like a small MNIST run. The 10-run report shows what a page weighs: plotly.js
embedded once, plus the figures' data.

    python benchmarks/bench_report.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from hpexp.report import command
from hpexp.train import rundir

RUNS, EPOCHS, LIMIT = 100, 30, 20.0


def make_runs(root: Path, rng: np.random.Generator, runs: int = RUNS) -> None:
    lmbdas = [0.0, 0.1, 1.0, 5.0, 20.0]
    for i in range(runs):
        lmbda, seed = lmbdas[i % len(lmbdas)], i // len(lmbdas)
        config = {
            "data": {"dir": None, "n_train": 1000, "n_validation": 10000, "scale": 256.0},
            "network": {"sizes": [784, 30, 10]},
            "regularizer": {"_target_": "hpexp.nn.regularizers.Regularizer", "lmbda": lmbda},
            "optimizer": {"_target_": "hpexp.nn.optimizers.SGD", "eta": 0.5},
            "seed": seed,
            "train": {"epochs": EPOCHS, "batch_size": 10, "monitor": ["train", "val", "test"]},
            "choices": {"regularizer": "l2" if lmbda else "none", "network": "mlp30"},
        }
        history = []
        for epoch in range(1, EPOCHS + 1):
            record = {"epoch": epoch}
            for split, ceiling in (("train", 0.999), ("val", 0.85 + 0.005 * lmbda), ("test", 0.84)):
                accuracy = min(1.0, ceiling * (1 - np.exp(-epoch / 4)) + rng.normal(0, 0.005))
                record |= {
                    f"{split}_loss": 2 * (1 - accuracy),
                    f"{split}_cost": 2 * (1 - accuracy) + lmbda / 100,
                    f"{split}_accuracy": float(accuracy),
                }
            history.append(record | {"eta": 0.5, "weight_norm": 10.0 + epoch, "seconds": 0.05})
        run = root / f"{i:03d}"
        rundir.write_atomic(run / "config.yaml", yaml.safe_dump(config))
        rundir.write_history(run, history)
        best = max(range(EPOCHS), key=lambda e: history[e]["val_accuracy"])
        rundir.write_summary(
            run,
            {
                "status": "completed",
                "stop_reason": f"reached {EPOCHS} epochs",
                "epochs": EPOCHS,
                "epochs_run": EPOCHS,
                "best_epoch": best + 1,
                "best": history[best],
                "final": history[-1],
                "seed": seed,
            },
        )


def report(root: Path, runs: int) -> tuple[float, int]:
    """Seconds for `hpexp report` on `runs` fresh runs, and the size of its report.html in bytes."""
    make_runs(root / "runs", np.random.default_rng(0), runs)
    started = time.perf_counter()
    command.main([str(root / "runs"), "--by", "regularizer.lmbda", "--name", "bench", "--out", str(root)])
    seconds = time.perf_counter() - started
    return seconds, (root / "bench" / "report.html").stat().st_size


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    load = f"{os.getloadavg()[0]:.2f}"
    with tempfile.TemporaryDirectory() as tmp:
        seconds, _ = report(Path(tmp) / "big", RUNS)
        _, size = report(Path(tmp) / "small", 10)
    share = seconds / LIMIT
    print(
        f"report on {RUNS} runs x {EPOCHS} epochs: {seconds:.2f} s = {share:.2f} x the {LIMIT:.0f} s budget "
        f"(load average {load} at the start)"
    )
    print(f"report.html for 10 runs x {EPOCHS} epochs: {size / 1e6:.2f} MB (plotly.js embedded once)")
    return 0 if seconds < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
