"""A full disk: `hpexp train` stops with one line naming the file it could not write (exit 1), the
run keeps its history and its last whole checkpoint, and once there is room again
`hpexp train resume=RUN_DIR` ends exactly where an uninterrupted run ends.

The disk fills in a child process: from the Nth write of checkpoint.npz on, every file written
through `os.fdopen` (the atomic writes: checkpoint, summary, config) fails with ENOSPC, as a
write to a full file system does. The code under test is unchanged; only the disk is faked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpexp.train import checkpoint, rundir

RUN = ["network=mlp30", "data.n_train=1000", "data.n_validation=500", "train.epochs=4", "dtype=float64"]

FULL_DISK = textwrap.dedent(
    """
    import errno, os, sys
    full_from, writes = int(sys.argv[1]), []
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
    from hpexp.cli import main
    main(sys.argv[2:])
    """
)


def train(*args: str, full_from: int | None = None) -> subprocess.CompletedProcess:
    prefix = ["-c", FULL_DISK, str(full_from)] if full_from else ["-m", "hpexp.cli"]
    return subprocess.run([sys.executable, *prefix, *args], capture_output=True, text=True, timeout=300)


def curve(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rundir.read_history(out)]


@pytest.mark.parametrize("full_from", [1, 3], ids=["before epoch 1", "at epoch 2's checkpoint"])
def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_to_the_uninterrupted_result(
    mnist_dir, tmp_path, full_from
):
    data = f"data.dir={mnist_dir}"
    reference = train("train", *RUN, data, f"out_dir={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    stopped = train("train", *RUN, data, f"out_dir={out}", full_from=full_from)
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
    resumed = train("train", f"resume={out}")  # room again
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
