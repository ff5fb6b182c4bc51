"""hpexp: hyperparameter and regularization experiments from Nielsen's book."""

__version__ = "0.1.0"
