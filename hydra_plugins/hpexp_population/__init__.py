"""hpexp's Hydra plugin: the `population` launcher (see population_launcher.py)."""
