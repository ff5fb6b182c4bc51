"""Reporting speed: `hpexp report` on 100 synthetic but valid run directories of 30 epochs.

Target: under 20 s for loading, tables, figures and both pages. The runs are written with
hpexp.train.rundir (the format every run uses): 5 configurations (regularizer.lmbda) x 20 seeds,
train/val/test monitored, curves shaped like a small MNIST run.

    python benchmarks/bench_report.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from hpexp.report import runs as report
from hpexp.train import rundir

RUNS, EPOCHS, LIMIT = 100, 30, 20.0


def make_runs(root: Path, rng: np.random.Generator) -> None:
    lmbdas = [0.0, 0.1, 1.0, 5.0, 20.0]
    for i in range(RUNS):
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
            for split, ceiling in (("train", 1.0), ("val", 0.85 + 0.005 * lmbda), ("test", 0.84)):
                accuracy = ceiling * (1 - np.exp(-epoch / 4)) + rng.normal(0, 0.005)
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


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_runs(root / "runs", np.random.default_rng(0))
        started = time.perf_counter()
        report.main([str(root / "runs"), "--by", "regularizer.lmbda", "--name", "bench", "--out", str(root)])
        seconds = time.perf_counter() - started
    share = seconds / LIMIT
    print(
        f"report on {RUNS} runs x {EPOCHS} epochs: {seconds:.2f} s = {share:.2f} x the {LIMIT:.0f} s budget"
    )
    return 0 if seconds < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
