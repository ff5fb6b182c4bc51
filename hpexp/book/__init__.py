"""The book: every experiment of Nielsen's chapters 1, 3, 5 and 6 as a preset, run and compared.

`experiments` is the registry (presets in conf/experiment/book/ with the book's numbers),
`runners` the experiments that are not one training run, `pages` writes reports/book/.
"""

from hpexp._lazy import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "Experiment": "experiments",
        "Check": "experiments",
        "load": "experiments",
        "registry": "experiments",
        "compare": "experiments",
        "run_experiments": "experiments",
        "write": "pages",
    },
)
