"""Training: the one loop (`fit`), schedules, stopping rules, run directories and `run(cfg)`.

`run(cfg)` is where the core meets Hydra: a composed config becomes a trained network and a run
directory (`config.yaml`, `history.csv`, `summary.json`); studies, the book and the command line
all train through it. Imports the engine and the data, never studies, reports or the book.
"""

from hpexp._lazy import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "fit": "loop",
        "fit_population": "loop",
        "evaluate": "loop",
        "train_epoch": "loop",
        "Member": "loop",
        "Result": "loop",
        "Stop": "loop",
        "rng_streams": "loop",
        "fit_pbt": "pbt",
        "run_pbt": "pbt_runner",
        "Truncation": "plans",
        "Replay": "plans",
        "run": "runner",
        "run_seeds": "runner",
        "run_population": "runner",
        "compose": "runner",
        "build_network": "runner",
        "load_data": "runner",
        "validate": "runner",
        "ConfigError": "runner",
        "read_history": "rundir",
        "read_summary": "rundir",
        "write_history": "rundir",
        "write_summary": "rundir",
        "write_atomic": "rundir",
        "Schedule": "schedules",
        "Constant": "schedules",
        "StepDecay": "schedules",
        "Exponential": "schedules",
        "Book": "schedules",
        "Rule": "stopping",
        "Never": "stopping",
        "MaxEpochs": "stopping",
        "NoImprovement": "stopping",
        "GeneralizationLoss": "stopping",
        "ProgressQuotient": "stopping",
        "UpStrips": "stopping",
    },
)
