"""Freed memory kept for the next mini-batch: with glibc's malloc, blocks of a step's sizes freed and
allocated again take no new pages once `keep_freed_memory` ran (each case in a process of its own,
the setting being the process's)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import load_option

from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.regularizers import NoPenalty
from hpexp.train import allocator
from hpexp.train.loop import train_epoch

PROGRAM = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from hpexp.train import allocator

    if sys.argv[1] == "keep":
        print(allocator.keep_freed_memory())
    def steps():  # three 4 MB arrays alive at once, then freed: as a conv step's patches and outputs
        for _ in range(20):
            arrays = [np.ones(1_000_000, np.float32) for _ in range(3)]
            del arrays
    steps()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def page_faults(*args: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    return out.stdout.split()


@pytest.fixture
def glibc():
    if not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"):
        pytest.skip("not glibc's malloc: keep_freed_memory leaves the allocator as it is")


def test_freed_memory_is_reused_without_page_faults(glibc):
    (default,) = page_faults("default")
    kept, faults = page_faults("keep")
    assert int(default) > 1000  # glibc hands the freed heap top back: every step faults it in again
    assert kept == "True" and int(faults) < 50


def test_the_users_own_malloc_settings_are_kept(glibc):
    env = os.environ | {"MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}
    kept, faults = page_faults("keep", env=env)
    assert kept == "False" and int(faults) > 1000  # glibc's behaviour as the user set it


def test_training_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    rng = np.random.default_rng(0)
    network = Network.create(
        [4, 3, 2],
        load_option("activation", "sigmoid"),
        load_option("cost", "cross_entropy"),
        load_option("init", "default"),
        rng,
    )
    train_epoch(network, SGD(eta=0.5), NoPenalty(), rng.random((20, 4)), rng.integers(0, 2, 20), 10, 0.5)
    assert calls == [1]  # once per epoch (the setting itself once per process)
