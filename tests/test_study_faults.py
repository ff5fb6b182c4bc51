"""Studies under faults: a killed worker is replaced and the study goes on to its budget; one that
cannot finish exits non-zero saying why; Ctrl-C and SIGTERM stop it promptly and it resumes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import background, foreground
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState
from test_study import states, trials_of, write_spec

from hpexp.study.spec import load_spec
from hpexp.train import rundir
from hpexp.train.runner import ConfigError

SLOW_TRIALS = [  # about 1 s per trial (35 ms an epoch), so trials can be caught between epochs
    "network=mlp30",
    "data.n_train=5000",
    "data.n_validation=200",
    "train.batch_size=10",
    "train.epochs=30",
]


def command(path: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(runs), *extra]


def start(path: Path, runs: Path, *extra: str, ctrl_c: bool = True) -> subprocess.Popen:
    """`hpexp study` in a session of its own, with SIGINT at its default (a terminal's foreground
    job) or, `ctrl_c=False`, ignored (a shell script's `&`)."""
    cmd = command(path, runs, *extra)
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=foreground if ctrl_c else background,
    )


def running_past_an_epoch(spec, runs: Path, process: subprocess.Popen, n: int = 1) -> list[FrozenTrial]:
    """Wait until `n` trials are RUNNING past their first epoch (the moment the issue's kill hung)."""
    for _ in range(1200):
        time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        if not (runs / "studies" / "tiny" / "journal.log").exists():
            continue
        with contextlib.suppress(ConfigError):  # the journal exists a moment before the study
            trials = trials_of(spec, runs)
            running = [
                t for t in trials if t.state == TrialState.RUNNING and t.last_step and "pid" in t.user_attrs
            ]
            if len(running) >= n:
                return running
    raise AssertionError("no trial reached its first epoch")


def retried(trials: list[FrozenTrial], t: FrozenTrial) -> list[FrozenTrial]:
    return [r for r in trials if r.user_attrs.get("retry_of") == t.number]


@pytest.mark.parametrize("population", [1, 3])
def test_a_killed_worker_is_replaced_and_the_study_reaches_its_budget(mnist_dir, tmp_path, population):
    """Issue rows: SIGKILL of a worker right after an epoch hung the study; studies whose workers
    died exited 0 with "run the same command again", 43 of 48 trials waiting."""
    path = write_spec(tmp_path, base=SLOW_TRIALS, n_trials=3, population=population)
    spec = load_spec(str(path))
    first = start(path, tmp_path)
    victim = running_past_an_epoch(spec, tmp_path, first)[0].user_attrs["pid"]
    os.kill(victim, signal.SIGKILL)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert f"worker 0 (pid {victim}) was killed by SIGKILL" in err
    assert "started worker 0 again (restart 1 of 10)" in err
    trials = trials_of(spec, tmp_path)
    lost = [t for t in trials if t.user_attrs.get("pid") == victim and t.state == TrialState.FAIL]
    assert len(lost) == population  # its whole population
    for t in lost:
        assert "died" in t.user_attrs["fail_reason"]
        (retry,) = retried(trials, t)
        assert retry.params == t.params and retry.state == TrialState.COMPLETE
        assert retry.user_attrs["attempt"] == 2
    assert states(trials) == {"COMPLETE": 3, "FAIL": population}


def test_a_study_that_cannot_finish_exits_1_saying_why_and_resumes(mnist_dir, tmp_path):
    path = write_spec(tmp_path, base=SLOW_TRIALS, n_trials=3, max_restarts=0, max_attempts=1)
    spec = load_spec(str(path))
    first = start(path, tmp_path)
    victim = running_past_an_epoch(spec, tmp_path, first)[0]
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 1, err
    assert "no restarts left (max_restarts=0)" in err
    assert (
        "study tiny cannot finish: 2 trial(s) never ran because workers died 1 times (max_restarts=0)" in err
    )
    rerun = subprocess.run(command(path, tmp_path), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = trials_of(spec, tmp_path)
    lost = trials[victim.number]
    assert lost.state == TrialState.FAIL and "attempt 1 of 1, not run again" in lost.user_attrs["fail_reason"]
    assert not retried(trials, lost)  # max_attempts=1: it counts as a finished (failed) trial
    assert states(trials) == {"COMPLETE": 2, "FAIL": 1}


@pytest.mark.parametrize(
    ("signum", "group", "code"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["Ctrl-C (SIGINT to the process group)", "SIGTERM to the coordinator"],
)
def test_an_interrupted_study_stops_promptly_in_one_line_and_resumes(
    mnist_dir, tmp_path, signum, group, code
):
    """Issue rows: Ctrl-C did not stop a hung study; SIGTERM (SLURM, containers) is handled like it."""
    path = write_spec(tmp_path, base=SLOW_TRIALS, n_trials=4, workers=2)
    spec = load_spec(str(path))
    first = start(path, tmp_path)
    caught = running_past_an_epoch(spec, tmp_path, first, n=2)
    sent = time.monotonic()
    if group:
        os.killpg(first.pid, signum)
    else:
        os.kill(first.pid, signum)
    _, err = first.communicate(timeout=60)
    assert time.monotonic() - sent < 15
    assert first.returncode == code
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == (
        f"hpexp study: interrupted ({name}); run the same command again to resume study tiny"
    )
    trials = trials_of(spec, tmp_path)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    rerun = subprocess.run(command(path, tmp_path), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = trials_of(spec, tmp_path)
    assert states(trials) == {"COMPLETE": 4, "FAIL": len(caught)}
    for t in caught:
        stopped = trials[t.number]
        assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == "interrupted"
        assert [r.params for r in retried(trials, stopped)] == [stopped.params]
        summary = rundir.read_summary(Path(stopped.user_attrs["run_dir"]))
        assert summary["status"] in ("interrupted", "completed")  # never left "running" (it may have
        # finished its last epoch just before the signal, and not been told yet)


@pytest.mark.parametrize("phase", ["search", "finalize"])
def test_a_study_started_with_ctrl_c_ignored_ignores_it_and_stops_on_sigterm(mnist_dir, tmp_path, phase):
    """`hpexp study ... &` in a shell script starts it with SIGINT ignored. The search used to catch
    SIGINT all the same and finalizing did not (Python keeps an inherited SIG_IGN): one command,
    two behaviours. Now both keep it ignored, workers too, as `hpexp train` does; SIGTERM stops it."""
    long = [*SLOW_TRIALS, "train.epochs=1000"]  # trials that outlast the test
    path = write_spec(tmp_path, base=long if phase == "search" else SLOW_TRIALS, n_trials=2, workers=2)
    spec = load_spec(str(path))
    if phase == "search":
        process = start(path, tmp_path, ctrl_c=False)
        running_past_an_epoch(spec, tmp_path, process, n=2)
    else:
        from hpexp.study.coordinator import search

        search(spec, tmp_path, quiet=True)
        process = start(
            path, tmp_path, "--finalize", "--seeds", "2", "--base", "train.epochs=10000", ctrl_c=False
        )
        while not list((tmp_path / "studies" / "tiny" / "final").glob("seed_*/history.csv")):
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(2)
    assert process.poll() is None  # still training, workers and all
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("hpexp study: interrupted")
    if phase == "search":
        trials = trials_of(spec, tmp_path)
        assert [t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL] == [
            "interrupted"
        ] * 2  # stopped by the SIGTERM, not by the ignored SIGINT


def ended(pid: int) -> bool:
    """Process `pid` is gone or a zombie (ended, not yet reaped by whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_sigkilled_coordinator_stops_its_workers_and_the_study_resumes(mnist_dir, tmp_path):
    """SIGKILL of `hpexp study` itself (no handler runs) left its workers training on through the
    rest of the budget, unsupervised; now each worker sees its coordinator end and interrupts its
    trials as on Ctrl-C (failed and enqueued again), and the same command finishes the study."""
    path = write_spec(tmp_path, base=SLOW_TRIALS, n_trials=8, workers=2)
    spec = load_spec(str(path))
    first = start(path, tmp_path)
    caught = running_past_an_epoch(spec, tmp_path, first, n=2)
    workers = {t.user_attrs["pid"] for t in caught}
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while not all(ended(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers still running 20 s after their coordinator died"
        time.sleep(0.1)
    trials = trials_of(spec, tmp_path)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.state == TrialState.COMPLETE for t in trials) < 8  # they did not run the budget out
    for t in caught:
        stopped = trials[t.number]
        assert stopped.state in (TrialState.FAIL, TrialState.COMPLETE)  # COMPLETE: done just before
        if stopped.state == TrialState.FAIL:
            assert stopped.user_attrs["fail_reason"] == "interrupted"
    rerun = subprocess.run(command(path, tmp_path), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = trials_of(spec, tmp_path)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 8 and len({tuple(t.params.items()) for t in done}) == 8


@pytest.mark.parametrize("join", [False, True], ids=["same command twice at once", "--join"])
def test_two_coordinators_on_one_study_never_repeat_each_other(mnist_dir, tmp_path, join):
    """Issue row: a second coordinator (same machine, or --join) repeated the first one's
    parameter sets exactly: both seeded their samplers alike."""
    search_space = {"optimizer.eta": {"type": "float", "low": 0.05, "high": 2.0, "log": True}}
    # SLOW_TRIALS' 1 s trials: the first coordinator must not finish all eight in the seconds the
    # second takes to start
    path = write_spec(tmp_path, base=SLOW_TRIALS, search=search_space, n_trials=8)
    spec = load_spec(str(path))
    first = start(path, tmp_path)
    while join and not (tmp_path / "studies" / "tiny" / "spec.yaml").exists():  # the study exists
        time.sleep(0.05)
    second = start(path, tmp_path, *(["--join"] if join else []))
    for process in (first, second):
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    trials = trials_of(spec, tmp_path)
    assert states(trials) == {"COMPLETE": 8}
    by_pid = {t.user_attrs["pid"]: t.user_attrs["sampler_seed"] for t in trials}
    assert len(by_pid) == 2 and len(set(by_pid.values())) == 2  # both worked, with their own seeds
    drawn = [tuple(t.params.items()) for t in trials if not t.user_attrs.get("baseline")]
    assert len(drawn) == 7 and len(set(drawn)) == 7


def test_a_trial_that_draws_an_earlier_trials_parameters_is_replaced(mnist_dir, tmp_path):
    """Four values and four trials: random draws repeat (with probability 1 - 4!/4^4 = 0.91),
    yet the finished trials hold four distinct parameter sets, and the budget stays exact. The
    last trial hits the one value left with probability 1/4 a draw, so it misses all MAX_REDRAWS
    redraws with probability (3/4)^10 = 0.056: then the repeat runs, marked as such."""
    from hpexp.study.coordinator import search
    from hpexp.study.storage import superseded
    from hpexp.study.workers import MAX_REDRAWS

    choices = [0.1, 0.2, 0.4, 0.8]
    path = write_spec(
        tmp_path,
        base=[*SLOW_TRIALS[:-1], "train.epochs=1", "network=linear"],
        search={"optimizer.eta": {"type": "categorical", "choices": choices}},
        baseline=None,
        n_trials=4,
        workers=2,
    )
    spec = load_spec(str(path))
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    done = [t for t in trials if t.number not in superseded(trials)]
    assert len(done) == 4 and all(t.state == TrialState.COMPLETE for t in done)
    accepted = [t for t in done if "duplicate_of" in t.user_attrs]  # a repeat run after MAX_REDRAWS
    assert all(t.user_attrs["redraws"] == MAX_REDRAWS for t in accepted)
    distinct = {t.params["optimizer.eta"] for t in done}
    assert len(distinct) == 4 - len(accepted) and distinct <= set(choices)
    for t in trials:
        if t.user_attrs.get("status") == "duplicate":
            assert t.params == trials[t.user_attrs["duplicate_of"]].params and t.state == TrialState.FAIL


def test_ctrl_c_while_finalizing_is_one_line_and_records_no_scoring(mnist_dir, tmp_path):
    from hpexp.study.coordinator import search

    path = write_spec(tmp_path, base=SLOW_TRIALS, n_trials=1)
    spec = load_spec(str(path))
    search(spec, tmp_path, quiet=True)
    # 300 epochs (seconds of training) and the first epoch recorded: the signal lands in training
    # however slowly this test is scheduled
    process = start(path, tmp_path, "--finalize", "--seeds", "2", "--base", "train.epochs=300")
    final = tmp_path / "studies" / "tiny" / "final"
    while not list(final.glob("seed_*/history.csv")):  # training the seeds has begun
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines() == ["hpexp study: interrupted; run the same command again"]
    assert not (final.parent / "final.json").exists()
    again = subprocess.run(
        command(path, tmp_path, "--finalize", "--seeds", "1"), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr  # not refused: the test set was never scored


def test_a_study_with_no_completed_trial_says_why_even_when_quiet(capsys):
    """A quiet search (the search benchmark's) printed no trial lines, yet its verdict pointed to the
    fail reasons "above"; the verdict now carries them, commonest first, with counts."""
    from types import SimpleNamespace

    from hpexp.study.coordinator import _verdict

    study = optuna.create_study()
    for reason in ["ConfigError: moved checkpoint"] * 3 + ["interrupted"]:
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": reason}))
    pool = SimpleNamespace(full=False, gave_up=False, died=[], restarts=0, past_deadline=lambda: False)
    with pytest.raises(SystemExit) as stop:
        _verdict(study, pool, OmegaConf.create({"name": "tiny", "max_restarts": 0, "timeout": None}))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert (
        "study tiny: no trial completed; 3 trial(s): ConfigError: moved checkpoint; 1 trial(s): interrupted"
        in err
    )


def test_an_interrupt_while_a_trial_is_popped_fails_it_and_enqueues_it_again(monkeypatch):
    """The worker's SIGTERM (its coordinator gone) raised inside the storage's pop left the popped
    trial RUNNING with no owner (seen in CI after a SIGKILLed coordinator). The signal now waits
    until the trial is the worker's, which fails it and enqueues it again."""
    from hpexp.study import workers

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    study = optuna.create_study()
    study.enqueue_trial({})
    pop = study._pop_waiting_trial_id

    def pop_then_signal():
        trial_id = pop()
        os.kill(os.getpid(), signal.SIGTERM)  # lands at the next bytecode, inside the pop
        return trial_id

    monkeypatch.setattr(study, "_pop_waiting_trial_id", pop_then_signal)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            workers._pop(study, 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed, again = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["status"] == "interrupted"
    assert again.state == TrialState.WAITING and again.user_attrs["retry_of"] == failed.number


class RecordedSpares:
    """`coordinator.Spares`, keeping each instance's processes for the test to look at."""

    made: list = []

    @classmethod
    def patch(cls, monkeypatch):
        from hpexp.study import coordinator

        cls.made = []

        class Recording(coordinator.Spares):
            def __init__(self, count: int) -> None:
                super().__init__(count)
                self.spawned = [p for p, _ in self.waiting]
                cls.made.append(self)

        monkeypatch.setattr(coordinator, "Spares", Recording)
        return coordinator


def test_workers_import_while_the_study_is_prepared_and_then_run_its_trials(mnist_dir, tmp_path, monkeypatch):
    """A spawned worker spends about a second importing hpexp; it used to start only after the
    coordinator had checked the spec, opened the study and enqueued the budget. The workers are now
    spawned first: alive while `prepare` runs, and the very processes that run the trials."""
    coordinator = RecordedSpares.patch(monkeypatch)
    alive_while_preparing = []
    real_prepare = coordinator.prepare

    def prepare(*args, **kwargs):
        alive_while_preparing.extend(p.pid for p in RecordedSpares.made[-1].spawned if p.is_alive())
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(coordinator, "prepare", prepare)
    spec = load_spec(str(write_spec(tmp_path, n_trials=4, workers=2)))
    coordinator.search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    assert states(trials) == {"COMPLETE": 4}
    assert len(alive_while_preparing) == 2
    assert {t.user_attrs["pid"] for t in trials} <= set(alive_while_preparing)


def test_a_bad_spec_ends_the_spawned_workers_at_once_and_quietly(tmp_path, monkeypatch, capfd):
    """The workers spawned ahead of the spec's checks must not outlive a refused spec, nor speak."""
    coordinator = RecordedSpares.patch(monkeypatch)
    spec = load_spec(str(write_spec(tmp_path, workers=2, objective={"metric": "val_acuracy"})))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="val_acuracy"):
        coordinator.search(spec, tmp_path, quiet=True)
    assert time.monotonic() - started < 10
    (spares,) = RecordedSpares.made
    assert len(spares.spawned) == 2 and not any(p.is_alive() for p in spares.spawned)
    assert not spares.waiting
    assert "Traceback" not in capfd.readouterr().err


def test_the_coordinator_wakes_when_a_worker_ends_not_at_its_next_poll(tmp_path):
    """It slept half a second between looks at its workers, and a study's end waited for the next
    look; it now waits on the workers' sentinels, so it returns as soon as one ends."""
    from hpexp.study.coordinator import Pool, Spares

    pool = Pool(load_spec(str(write_spec(tmp_path))), tmp_path, 1)
    process, jobs = Spares(0).take()
    jobs.close()  # no job: the worker ends once it has imported hpexp
    pool.slots[0] = process
    started = time.monotonic()
    pool.wait(120)
    assert time.monotonic() - started < 60
    process.join(5)
    assert process.exitcode == 0


def spawned_workers(pid: int) -> list[int]:
    """The worker processes `pid` has spawned (its other children, such as multiprocessing's
    resource tracker, left out)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                    found.append(int(child))
    return found


SPAWN_UNDER_CTRL_C = """
import os, signal, sys, time
from pathlib import Path
from hpexp.study import coordinator

def bits(pid, field):
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1

with coordinator._signals_interrupt():
    spares = coordinator.Spares(2)  # the first starts multiprocessing's resource tracker
    try:
        with coordinator._children_hold_sigint():  # as around each worker's start
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C then
            time.sleep(0.05)
            print("held to the block's end", flush=True)
    except coordinator.Interrupted as e:
        print("interrupted", e.signum, "mask", bits(os.getpid(), "SigBlk"), flush=True)
for process, jobs in spares.waiting:  # before they have imported hpexp (about a second)
    print("worker blocked", bits(process.pid, "SigBlk"), "ignored", bits(process.pid, "SigIgn"), flush=True)
for process, jobs in spares.waiting:  # the Ctrl-C reaches them too: held until they can take it
    os.kill(process.pid, signal.SIGINT)
for process, jobs in spares.waiting:
    process.join(20)
    print("worker exit", process.exitcode, flush=True)
    process.kill()
"""


def test_ctrl_c_while_workers_are_started_is_not_lost():
    """The coordinator ignored SIGINT while it started a worker (so the worker began with it
    ignored): a Ctrl-C in that window was lost and the study ran on to its end, exit status 0. Now
    the signal is held there and raised when the block ends; the workers begin with it blocked
    (multiprocessing's resource tracker, started with the first, would unblock it), not ignored,
    and end quietly with 130 once they can take it (`_worker_boot`). In a process of its own, so
    that the resource tracker is not already running."""
    done = subprocess.run(
        [sys.executable, "-c", SPAWN_UNDER_CTRL_C], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "held to the block's end",
        f"interrupted {int(signal.SIGINT)} mask 0",
        *["worker blocked 1 ignored 0"] * 2,
        *["worker exit 130"] * 2,
    ], done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


def test_ctrl_c_while_the_workers_start_is_one_line(mnist_dir, tmp_path):
    """The workers spawn before the study is ready and spend about a second importing hpexp; a
    Ctrl-C then reached them before they handled it, and each printed a KeyboardInterrupt traceback
    under the study's one line. They now start with SIGINT blocked and take it once they can (a
    Ctrl-C held since they started ends them quietly), or are stopped by the coordinator (SIGTERM)."""
    path = write_spec(tmp_path, base=SLOW_TRIALS, n_trials=4, workers=2)
    process = start(path, tmp_path)
    while len(spawned_workers(process.pid)) < 2:  # both spawned, neither past its imports
        assert process.poll() is None, process.communicate()
        time.sleep(0.005)
    time.sleep(0.2)  # inside their imports
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 15
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines() == [
        "hpexp study: interrupted (SIGINT); run the same command again to resume study tiny"
    ]
