"""A full disk: `hpexp train` stops with one line naming the file it could not write (exit 1), the
run keeps its history and its last whole checkpoint, and once there is room again
`hpexp train resume=RUN_DIR` ends exactly where an uninterrupted run ends. `hpexp study` stops
too (its trials are not failed as if they were at fault) and the same command finishes it.

The disk fills in a child process: from the Nth write of checkpoint.npz on, every file written
through `os.fdopen` (the atomic writes: checkpoint, summary, config) fails with ENOSPC, as a
write to a full file system does. The code under test is unchanged; only the disk is faked.
(Checked by hand on a real 300-600 KB tmpfs as well; mounting one needs privileges tests lack.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpexp.train import checkpoint, rundir

RUN = ["network=mlp30", "data.n_train=1000", "data.n_validation=500", "train.epochs=4", "dtype=float64"]

NO_ROOM = textwrap.dedent(
    """
    import errno, os
    full_from, writes = int(os.environ["HPEXP_TEST_FULL_FROM"]), []
    real_fdopen = os.fdopen

    class NoRoom:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()
        def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if ".checkpoint.npz." in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)
        return NoRoom(f) if len(writes) >= full_from else f

    os.fdopen = fdopen
    """
)


def hpexp(tmp_path: Path, *args: str, full_from: int | None = None) -> subprocess.CompletedProcess:
    """`hpexp ARGS`; with `full_from`, in processes (spawned workers too) whose disk fills at their
    `full_from`-th checkpoint write: sitecustomize.py, which Python runs at start-up, fakes it."""
    env = dict(os.environ)
    if full_from:
        site = tmp_path / "full_disk_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(NO_ROOM)
        env |= {
            "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")]),
            "HPEXP_TEST_FULL_FROM": str(full_from),
        }
    command = [sys.executable, "-m", "hpexp.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def train(*args: str, full_from: int | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    return hpexp(tmp_path, "train", *args, full_from=full_from)


def curve(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rundir.read_history(out)]


@pytest.mark.parametrize("full_from", [1, 3], ids=["before epoch 1", "at epoch 2's checkpoint"])
def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_to_the_uninterrupted_result(
    mnist_dir, tmp_path, full_from
):
    data = f"data.dir={mnist_dir}"
    reference = train(*RUN, data, f"out_dir={tmp_path / 'ref'}", tmp_path=tmp_path)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    stopped = train(*RUN, data, f"out_dir={out}", full_from=full_from, tmp_path=tmp_path)
    assert stopped.returncode == 1, stopped.stderr
    assert "Traceback" not in stopped.stderr
    kept = full_from > 1  # the checkpoint before the one that failed is whole
    resume = f"; free space, then `hpexp train resume={out}` goes on from its last checkpoint"
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"hpexp train: error: No space left on device: {out / 'checkpoint.npz'}; the run's history so far "
        f"is kept{resume if kept else ''}"
    )
    assert not list(out.glob(".*.tmp"))  # no half-written file left behind
    # The summary could not be written either (the disk stays full): it still says `running`,
    # which reads as `interrupted` now that the process is gone.
    assert rundir.read_summary(out)["status"] == "interrupted"
    if not kept:
        return
    # Checkpoints are saved before epoch 1 and after each epoch: the last whole one is epoch N - 2.
    assert checkpoint.load(out / "checkpoint.npz").epoch == full_from - 2
    assert [r["epoch"] for r in rundir.read_history(out)] == list(range(1, full_from))
    resumed = train(f"resume={out}", tmp_path=tmp_path)  # room again
    assert resumed.returncode == 0, resumed.stderr
    assert rundir.read_summary(out)["status"] == "completed"
    assert curve(out) == curve(tmp_path / "ref")
    assert not (out / "checkpoint.npz").exists()


def test_a_write_that_fails_names_its_file_and_leaves_the_old_one_whole(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    rundir.write_atomic(path, "old")

    def no_room(fd, *args, **kwargs):
        import errno
        import os

        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fdopen", no_room)
    with pytest.raises(OSError, match="No space left on device") as e:
        rundir.write_atomic(path, "new")
    assert e.value.filename == str(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_full_disk_stops_a_study_and_the_same_command_finishes_it(mnist_dir, tmp_path):
    """A study on a full disk failed trial after trial with ENOSPC, counting each as finished, then
    crashed with tracebacks; now the worker stops (one line), the coordinator exits 1 saying the
    disk is full, the trial in flight runs again, and the same command reaches the budget."""
    from optuna.trial import TrialState
    from test_study import trials_of, write_spec

    from hpexp.study.spec import load_spec

    base = ["network=mlp30", "data.n_train=500", "data.n_validation=200", "train.epochs=3"]
    path = write_spec(tmp_path, base=base, n_trials=4, baseline=None)
    runs = tmp_path / "runs"
    # Each trial saves 4 checkpoints (before epoch 1, after each of 3): the 6th is trial 1's second.
    stopped = hpexp(tmp_path, "study", str(path), "--runs", str(runs), full_from=6)
    assert stopped.returncode == 1, stopped.stderr
    assert "Traceback" not in stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert (
        lines[-1]
        == "hpexp study: the disk is full; free space, then run the same command again to resume study tiny"
    )
    assert "hpexp study: worker 0 stopped: No space left on device: " in stopped.stderr
    spec = load_spec(str(path))
    trials = trials_of(spec, runs)
    (cut,) = [t for t in trials if t.state == TrialState.FAIL]
    assert cut.user_attrs["fail_reason"].startswith("stopped: No space left on device: ")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 1
    again = hpexp(tmp_path, "study", str(path), "--runs", str(runs))  # room again
    assert again.returncode == 0, again.stderr
    trials = trials_of(spec, runs)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == cut.number]
    assert retry.params == cut.params and retry.state == TrialState.COMPLETE
