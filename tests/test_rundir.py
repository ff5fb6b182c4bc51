"""The run directory: folders of their own, and what a reader can tell about a run."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from hpexp.train import rundir


def test_new_run_dir_never_reuses_a_folder(tmp_path, monkeypatch):
    """Suffixes that collide (forced here) are retried: a folder is never handed out twice."""
    suffixes = itertools.chain(["beef", "beef", "beef"], itertools.cycle(["cafe", "f00d"]))
    monkeypatch.setattr(rundir.secrets, "token_hex", lambda n: next(suffixes))
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "2026-01-01_00-00-00")  # one second
    made = [rundir.new_run_dir(tmp_path / "runs") for _ in range(3)]
    assert len(set(made)) == 3
    assert [p.name[-4:] for p in made] == ["beef", "cafe", "f00d"]
    assert all(p.is_dir() and p.parent == tmp_path / "runs" for p in made)


ADDER = """
import json, sys, time
from pathlib import Path
from hpexp.book.experiments import record_provenance
from hpexp.train import rundir
sys.path.insert(0, "benchmarks")
import bench_search as bench

where, who = Path(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
while not (where / "go").exists():
    time.sleep(0.001)
for i in range(25):
    record_provenance(where, "exp", f"{who} {i}", 1.0, "completed")  # read, add, write
    row = {c: "" for c in bench.COLUMNS} | {"study": who, "sampler_seed": i}
    bench.add_row(where / "runs.csv", row)
    path = where / "eval.json"
    with rundir.updating(path):
        earlier = json.loads(path.read_text()) if path.is_file() else []
        rundir.write_atomic(path, json.dumps([*earlier, f"{who} {i}"]))
"""


def test_two_processes_adding_to_one_file_at_once_lose_nothing(tmp_path):
    """Two `hpexp book run` adding to one experiment's provenance.json, two search benchmarks to one
    runs.csv, two `hpexp eval` to one eval_SPLIT.json: read, add, write raced, and whichever wrote
    last dropped the other's addition. Under the file's update lock both are kept."""
    repo = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ADDER, str(tmp_path), who], cwd=repo, stdout=subprocess.PIPE, text=True
        )
        for who in ("a", "b")
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    (tmp_path / "go").touch()
    for p in procs:
        assert p.wait(timeout=120) == 0
    want = {f"{who} {i}" for who in ("a", "b") for i in range(25)}
    assert set(json.loads((tmp_path / "exp" / "provenance.json").read_text())) == want
    rows = pd.read_csv(tmp_path / "runs.csv")
    assert {f"{s} {i}" for s, i in zip(rows["study"], rows["sampler_seed"], strict=True)} == want
    assert set(json.loads((tmp_path / "eval.json").read_text())) == want
