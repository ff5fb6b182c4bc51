"""The run directory: folders of their own, and what a reader can tell about a run."""

from __future__ import annotations

import itertools

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
