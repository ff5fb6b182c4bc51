"""Data: find, fetch and verify datasets, parse them and cut the splits; expand the training set.

Imports no engine. Arrays come out batch-major (n, features) with int labels; the split is the
book's unless configured (training, validation held out of the official training set, test).
"""

from hpexp._lazy import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "Split": "mnist",
        "DataError": "mnist",
        "load_splits": "mnist",
        "load_raw": "mnist",
        "find_data_dir": "mnist",
        "fetch": "mnist",
        "verify_dir": "mnist",
        "read_idx": "mnist",
        "cache_dir": "mnist",
        "NoExpansion": "augment",
        "BookShifts": "augment",
        "RandomDistortion": "augment",
    },
)
