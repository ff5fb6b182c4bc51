"""The study journal's lock: appends per second with hpexp's OwnedLock (it names its owner, so a
dead owner's lock is released at once) against Optuna's own JournalFileSymlinkLock and
JournalFileOpenLock, in one run on the same disk. Target: OwnedLock within 1.5x of Optuna's
fastest (each append also fsyncs, which dominates on most disks).

    nice -n 10 python benchmarks/bench_journal.py [--appends 400] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalFileSymlinkLock

from hpexp.study.journal import OwnedLock
from hpexp.train import timings

LOCKS = {
    "OwnedLock": OwnedLock,
    "JournalFileSymlinkLock": JournalFileSymlinkLock,
    "JournalFileOpenLock": JournalFileOpenLock,
}
LOG = {"op_code": 7, "worker_id": "bench", "trial_id": 1, "user_attr": {"status": "completed"}}


def appends_per_second(folder: Path, name: str, appends: int) -> float:
    path = str(folder / f"{name}.log")
    backend = JournalFileBackend(path, lock_obj=LOCKS[name](path))
    started = time.perf_counter()
    for _ in range(appends):
        backend.append_logs([LOG])
    return appends / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {timings.machine()}; load average {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {name: [] for name in LOCKS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved, so a load change hits every lock alike
            for name in LOCKS:
                rates[name].append(appends_per_second(Path(tmp), name, args.appends))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    fastest = max(medians[n] for n in LOCKS if n != "OwnedLock")
    for name, rate in medians.items():
        print(f"{name:24} {rate:8.0f} appends/s (median of {args.repeats} x {args.appends})")
    print(f"OwnedLock / Optuna's fastest: {medians['OwnedLock'] / fastest:.2f} (target >= 0.67)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
