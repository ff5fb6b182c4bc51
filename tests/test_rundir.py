"""The run directory: folders of their own, and what a reader can tell about a run."""

from __future__ import annotations

import itertools
import json
import signal
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


SWEEP = """
import gc, signal, sys
from pathlib import Path
import numpy as np
from hpexp.train import checkpoint, rundir

def interrupt(signum, frame):  # a study worker's handler (hpexp.study.coordinator)
    raise KeyboardInterrupt

signal.signal(signal.SIGINT, interrupt)
where = Path(sys.argv[1])
params = [np.full((3, 2), 0.5), np.full((1, 3), 0.5)]
state = checkpoint.State(
    epoch=1, active=[0], params=params, velocity=params, histories=[[]], best=[None],
    best_params=[params], ended={}, rngs={},
)
writes = {  # and the stride of the lines tried (a checkpoint's writing has twice as many)
    "weights": (lambda: rundir.write_weights(where, params), 1),
    "checkpoint": (lambda: checkpoint.save(where / rundir.CHECKPOINT, state), 3),
}
problems = []
sys.unraisablehook = lambda u: problems.append(f"ignored {u.exc_type.__name__}: {u.exc_value}")
for name, (write, stride) in writes.items():
    write()  # imports done
    point = 0
    while True:  # Ctrl-C at each line the write runs, in turn
        point += stride
        seen = 0

        def trace(frame, event, arg):
            global seen
            seen += 1
            if seen == point:
                signal.raise_signal(signal.SIGINT)
            return trace

        sys.settrace(trace)
        try:
            write()
            if seen >= point:
                problems.append(f"{name} {point}: not interrupted")
        except KeyboardInterrupt:
            pass
        except BaseException as e:
            problems.append(f"{name} {point}: {type(e).__name__}: {e}")
        finally:
            sys.settrace(None)
        gc.collect()  # an abandoned zip file complains here
        if signal.getsignal(signal.SIGINT) is not interrupt:
            problems.append(f"{name} {point}: the handler is not restored")
        left = sorted(p.name for p in where.iterdir() if p.name.endswith(".tmp"))
        if left:
            problems.append(f"{name} {point}: {left} left")
        if seen < point:  # the write ran whole before the point: every line tried
            break
    print(name, point, problems[:3], flush=True)
with np.load(where / "weights.npz") as saved:
    assert [saved["arr_0"].shape, saved["arr_1"].shape] == [(3, 2), (1, 3)]
assert checkpoint.load(where / rundir.CHECKPOINT).epoch == 1
"""


def test_ctrl_c_at_any_line_of_a_write_leaves_no_broken_writer_and_whole_files(tmp_path):
    """CI row: Ctrl-C reached a study worker inside np.savez, building a checkpoint in memory; the
    zip file it abandoned raised "Can't close the ZIP file while there is an open writing handle on
    it" when collected, which broke the one-line stop message. SIGINT raised at each line a weights
    write runs, in turn (a trace function counts them), and at every third of a checkpoint's: each
    one interrupts the write, nothing complains, the handler is restored, no temporary file is left
    and the files read whole.
    (Before signals were held: 141 of 1,904 lines of a weights write complained.)"""
    out = subprocess.run(
        [sys.executable, "-c", SWEEP, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert [line.split(" ", 1)[0] for line in lines[:2]] == ["weights", "checkpoint"]
    for line in lines[:2]:
        name, points, problems = line.split(" ", 2)
        assert int(points) > 1000 and problems == "[]", line


HELD = """
import os, signal, sys
from hpexp.train import rundir

signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIGTERM keeps its default: the process ends
with rundir.signals_held():
    with rundir.signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    print("held", flush=True)
print("not reached", flush=True)
"""


def test_held_signals_reach_their_old_handlers_when_the_outer_block_ends():
    """Nested blocks hold SIGTERM until the outer one ends; then it takes its default action (the
    process ends by it), and an ignored SIGINT stays ignored."""
    out = subprocess.run([sys.executable, "-c", HELD], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (-signal.SIGTERM, "held\n", "")
