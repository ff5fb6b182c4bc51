"""hpexp: hyperparameter and regularization experiments from Nielsen's book.

The package is built in layers, lowest first; a layer imports only the ones below it:

    hpexp.stats, hpexp.paths   statistics for conclusions; where configs and specs live
    hpexp.nn                   the engine: layers, costs, initializers, regularizers, optimizers
    hpexp.data                 datasets, checksums, splits, augmentation
    hpexp.train                the training loop, run directories, run(cfg) from a Hydra config
    hpexp.study                Optuna studies: specs, storage, workers, finalize
    hpexp.report               runs and studies as DataFrames, statistics, plots, pages
    hpexp.book                 the book's experiments, their runners and pages
    hpexp.cli                  the `hpexp` command

From Python, the names below are enough for a notebook (imported on first use, so `import hpexp`
stays light):

    cfg = hpexp.compose(["network=mlp30", "train.epochs=3"])   # what `hpexp train ...` would run
    out = hpexp.run(cfg, "runs/notebook")                        # train; the run directory
    df = hpexp.load_runs(out)                                    # one row per run x epoch
    hpexp.plot_learning_curves(df)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # scripting a run
    "compose": "hpexp.train.runner",
    "run": "hpexp.train.runner",
    "fit": "hpexp.train.loop",
    "evaluate": "hpexp.train.loop",
    "Network": "hpexp.nn.network",
    "load_splits": "hpexp.data.mnist",
    # reading results
    "load_runs": "hpexp.report.runs",
    "run_metrics": "hpexp.report.runs",
    "summarize": "hpexp.report.runs",
    "load_trials": "hpexp.report.runs",
    "load_trial_curves": "hpexp.report.runs",
    "read_history": "hpexp.train.rundir",
    "read_summary": "hpexp.train.rundir",
    "mean_ci": "hpexp.stats",
    # drawing
    "plot_learning_curves": "hpexp.report.plots",
    "plot_gap": "hpexp.report.plots",
    "plot_overfitting": "hpexp.report.plots",
    "plot_optimization_history": "hpexp.report.plots",
    "plot_trial_curves": "hpexp.report.plots",
    "plot_param_importances": "hpexp.report.plots",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'hpexp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
