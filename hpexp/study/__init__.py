"""Studies: Optuna searches over the training configs, on the validation split only.

A spec (`studies/NAME.yaml`) names the base overrides, the search space, objective, sampler,
pruner and budget; workers train trials through `hpexp.train.run_population` (or, with
`sampler: {name: pbt}`, one population-based training run through `hpexp.train.run_pbt`);
`finalize` retrains the best configuration with fresh seeds and scores the test set once. Only this package
imports Optuna's samplers and storages.
"""

from hpexp._lazy import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "load_spec": "spec",
        "parse_space": "spec",
        "check_spec": "spec",
        "sample": "spec",
        "Param": "spec",
        "open_storage": "storage",
        "mask": "storage",
        "study_dir": "storage",
        "compose_trial": "spec",
        "search": "coordinator",
        "prepare": "workers",
        "work": "workers",
        "worker_seed": "workers",
        "explore": "pbt",
    },
)
