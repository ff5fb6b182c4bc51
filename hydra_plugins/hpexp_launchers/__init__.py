"""hpexp's Hydra plugins: the `checked` launcher, `hpexp train -m`'s default, and the `population`
launcher (checked_launcher.py, population_launcher.py)."""
