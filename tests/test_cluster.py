"""Studies beyond one machine's processes: a real Dask scheduler and workers (the `dask scheduler` and
`dask worker` commands on 127.0.0.1), PostgreSQL and DaskStorage, submitit's local executor,
artifacts that follow the trials, a worker lost mid-study, and launcher options that are refused."""

from __future__ import annotations

import contextlib
import filecmp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import _free_port as free_port
from conftest import background, foreground
from optuna.trial import TrialState
from test_study import write_spec as tiny_spec

from hpexp.study import artifacts, storage
from hpexp.study.coordinator import search
from hpexp.study.spec import load_spec, parse_space
from hpexp.train.runner import ConfigError

distributed = pytest.importorskip("distributed", reason="needs the dask extra (pip install -e '.[dask]')")
pytest.importorskip("optuna_integration", reason="needs the dask extra (pip install -e '.[dask]')")


BIN = Path(sys.executable).parent


def write_spec(folder: Path, name: str, **changes) -> Path:
    """test_study's tiny spec, with a cluster's budget: 12 trials, 2 workers, batching by the default."""
    return tiny_spec(folder, name, **({"n_trials": 12, "workers": 2, "population": "auto"} | changes))


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{time.time_ns() % 10**9}"


class Cluster:
    """A Dask scheduler and workers started as the commands a user types, on loopback ports."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        self._start(
            "scheduler",
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--dashboard-address", "127.0.0.1:0", "--no-dashboard"],
        )

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        # Its own session: killing a worker kills its nanny and the process it runs tasks in.
        proc = subprocess.Popen(
            cmd, cwd=self.folder, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def add_worker(self, name: str) -> None:
        cmd = [str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--nworkers", "1"]
        cmd += ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--no-dashboard", "--name", name]
        self.workers[name] = self._start(name, cmd)

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        with distributed.Client(self.address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, name: str) -> None:
        """The machine dies: the worker, its nanny and everything they run, at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.workers[name].pid, signal.SIGKILL)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if password := os.environ.get("HPEXP_TEST_POSTGRES_PASSWORD"):
        env[storage.PASSWORD_ENV] = password  # the workers read the password from their own environment
    return env | (extra or {})


@pytest.fixture
def cluster(tmp_path_factory, mnist_dir) -> Iterator[Cluster]:
    """A scheduler and two workers, each in a folder of its own (not the coordinator's)."""
    folder = tmp_path_factory.mktemp("dask")
    c = Cluster(folder, worker_env({"HPEXP_DATA_DIR": str(mnist_dir)}))
    try:
        c.add_worker("w1")
        c.add_worker("w2")
        c.wait_for_workers(2)
        yield c
    finally:
        c.stop()


def trials_of(spec, runs: Path) -> list[optuna.trial.FrozenTrial]:
    return storage._load(spec, runs, parse_space(spec.search), 0, create=False).get_trials()


def check_exact(spec, runs: Path, n: int) -> list[optuna.trial.FrozenTrial]:
    """n completed trials, none twice with the same parameters; the failed ones each retried once."""
    trials = trials_of(spec, runs)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    told = "; ".join(f"{t.number} {t.state.name} {t.user_attrs.get('fail_reason', '')}" for t in trials)
    assert len(complete) == n, told
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == n, "a parameter set was drawn twice"
    for f in failed:  # a lost trial runs again with its parameters; a duplicate draw is replaced
        retries = [t for t in trials if t.user_attrs.get("retry_of") == f.number]
        replaced = [t for t in trials if t.user_attrs.get("replaces") == f.number]
        assert len(retries) + len(replaced) == 1 and all(t.params == f.params for t in retries)
    assert len(trials) == n + len(failed)
    return trials


def check_artifacts_and_report(
    study_obj: optuna.Study, trials, elsewhere: Path, monkeypatch, url: str | None = None
) -> None:
    """From another working directory: every finished trial's files come back from the artifact
    store equal to the run directory the worker wrote, and a report is built from them; with the
    storage's `url`, `hpexp report --study NAME --storage URL` fetches them itself."""
    from hpexp.report import command as report
    from hpexp.report.runs import load_runs

    monkeypatch.chdir(elsewhere)
    got = artifacts.download_trials(study_obj, Path("downloaded"))
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert set(got) >= {t.number for t in finished}
    for t in finished:
        for name in ("config.yaml", "history.csv", "summary.json"):
            assert filecmp.cmp(got[t.number] / name, Path(t.user_attrs["run_dir"]) / name, shallow=False)
    assert load_runs([str(got[t.number]) for t in finished])["run"].nunique() == len(finished)
    report.main([str(got[t.number]) for t in finished] + ["--name", "from-artifacts", "--out", "reports"])
    assert (elsewhere / "reports" / "from-artifacts" / "report.html").stat().st_size > 0
    if url is None:
        return
    name = study_obj.study_name
    workers_trials = Path(finished[0].user_attrs["run_dir"]).parent
    workers_trials.rename(workers_trials.with_name("trials-on-the-workers"))  # as on another machine
    report.main(["--study", name, "--storage", url, "--out", "reports"])
    fetched = elsewhere / "runs" / "studies" / name / "trials"
    for t in finished:
        assert filecmp.cmp(fetched / f"{t.number:04d}" / "history.csv", got[t.number] / "history.csv")
    page = (elsewhere / "reports" / name / "README.md").read_text()
    assert "Run directories not found" not in page and "learning curves" in page


@pytest.mark.postgres
def test_dask_workers_with_postgresql(cluster, postgres_url, tmp_path, monkeypatch):
    if password := os.environ.get("HPEXP_TEST_POSTGRES_PASSWORD"):
        monkeypatch.setenv(storage.PASSWORD_ENV, password)
    name = unique_name("dask_pg")
    path = write_spec(
        tmp_path, name, storage=postgres_url, launcher={"name": "dask", "scheduler": cluster.address}
    )
    spec = load_spec(str(path))
    monkeypatch.chdir(tmp_path)
    search(spec, Path("runs"), quiet=True)
    trials = check_exact(spec, tmp_path / "runs", 12)
    assert len({t.user_attrs["pid"] for t in trials}) == 2, "both Dask workers took trials"
    other = tmp_path / "elsewhere"
    other.mkdir()
    check_artifacts_and_report(
        storage._load(spec, tmp_path / "runs", [], 0, create=False), trials, other, monkeypatch, postgres_url
    )
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage.open_storage(spec, tmp_path))


def test_dask_workers_with_dask_storage(cluster, tmp_path, monkeypatch):
    name = unique_name("dask_ds")
    # Populations on remote workers: each task trains up to 3 trials in one pass.
    path = write_spec(tmp_path, name, storage=f"dask://127.0.0.1:{cluster.port}", population=3)
    spec = load_spec(str(path))
    spec.launcher = {"name": "dask"}  # the scheduler: the storage's
    monkeypatch.chdir(tmp_path)
    search(spec, Path("runs"), quiet=True)
    trials = check_exact(spec, tmp_path / "runs", 12)
    assert len({t.user_attrs["pid"] for t in trials}) == 2, "both Dask workers took trials"
    assert {t.user_attrs["pid"] for t in trials}.isdisjoint({os.getpid()})
    other = tmp_path / "elsewhere"
    other.mkdir()
    check_artifacts_and_report(
        storage._load(spec, tmp_path / "runs", [], 0, create=False), trials, other, monkeypatch, spec.storage
    )


def wait_running(spec, runs: Path, n: int, process: subprocess.Popen | None = None) -> None:
    """Wait until `n` trials are RUNNING past their first epoch (the process, if given, alive)."""
    for _ in range(2400):
        time.sleep(0.05)
        assert process is None or process.poll() is None, process.communicate()
        with contextlib.suppress(ConfigError, KeyError):
            if sum(t.state == TrialState.RUNNING and bool(t.last_step) for t in trials_of(spec, runs)) >= n:
                return


def _kill_mid_trial(cluster: Cluster, spec, runs: Path, name: str, pid: int) -> optuna.trial.FrozenTrial:
    """Wait until worker `name` (process `pid`) trains a trial past its first epoch; kill its machine."""
    for _ in range(2400):
        time.sleep(0.05)
        with contextlib.suppress(ConfigError, KeyError):
            running = [t for t in trials_of(spec, runs) if t.state == TrialState.RUNNING]
            if victim := next((t for t in running if t.last_step and t.user_attrs["pid"] == pid), None):
                cluster.kill_worker(name)
                return victim
    raise AssertionError(f"no trial reached its first epoch on {name}")


def test_workers_lost_mid_study_and_a_late_joiner(cluster, tmp_path):
    """w1's machine dies while it trains a trial, then w2's; a worker that joins only then finishes
    the study: both lost trials are failed and run again, and exactly n_trials complete."""
    name, storage = unique_name("dask_kill"), f"dask://127.0.0.1:{cluster.port}"
    # epochs of 3,000 images (about 0.1 s): a trial seen past its first epoch is still training
    # when its machine is killed a poll later (with 1,000, one finished in that window once)
    base = ["network=mlp30", "data.n_train=3000", "data.n_validation=200", "train.batch_size=10"]
    path = write_spec(tmp_path, name, base=[*base, "train.epochs=8"], n_trials=10, workers=3)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(runs), "--storage", storage]
    coordinator = subprocess.Popen(
        [*cmd, "--launcher", "dask"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    spec = load_spec(str(path))
    spec.storage = storage
    with distributed.Client(cluster.address, set_as_default=False) as client:
        info, pids = client.scheduler_info(n_workers=-1)["workers"], client.run(os.getpid)
        by_name = {info[a]["name"]: pid for a, pid in pids.items()}
    victims = [_kill_mid_trial(cluster, spec, runs, w, by_name[w]) for w in ("w1", "w2")]
    cluster.add_worker("w3")  # joins late: the only worker left
    out, err = coordinator.communicate(timeout=600)
    assert coordinator.returncode == 0, err
    trials = check_exact(spec, runs, 10)
    for victim in victims:
        lost = trials[victim.number]
        assert lost.state == TrialState.FAIL
        assert (
            "left the cluster" in lost.user_attrs["fail_reason"] or "died" in lost.user_attrs["fail_reason"]
        )
    late = {t.user_attrs["pid"] for t in trials if t.state == TrialState.COMPLETE} - set(pids.values())
    assert late, "the worker that joined late took no trial"


def test_ctrl_c_stops_the_dask_workers(cluster, tmp_path):
    """Ctrl-C at the coordinator interrupts the tasks on the cluster: their trials fail as interrupted
    and wait again, nothing more runs, and the same command resumes to exactly n_trials."""
    name, storage = unique_name("dask_int"), f"dask://127.0.0.1:{cluster.port}"
    base = ["network=mlp30", "data.n_train=1000", "data.n_validation=200", "train.batch_size=10"]
    path = write_spec(tmp_path, name, base=[*base, "train.epochs=20"], n_trials=3, workers=2)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(runs), "--storage", storage]
    cmd += ["--launcher", "dask"]
    coordinator = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, preexec_fn=foreground
    )
    spec = load_spec(str(path))
    spec.storage = storage
    wait_running(spec, runs, 1)
    coordinator.send_signal(signal.SIGINT)
    _, err = coordinator.communicate(timeout=120)
    assert coordinator.returncode == 130, err
    trials = trials_of(spec, runs)
    interrupted = [t for t in trials if t.user_attrs.get("status") == "interrupted"]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    time.sleep(3)  # the tasks have stopped: nothing more starts
    assert [t.state for t in trials_of(spec, runs)] == [t.state for t in trials]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    check_exact(spec, runs, 3)


@pytest.mark.postgres
def test_submitit_local_array_of_three_workers(mnist_dir, tmp_path, postgres_url, monkeypatch):
    pytest.importorskip("submitit", reason="needs the slurm extra (pip install -e '.[slurm]')")
    if password := os.environ.get("HPEXP_TEST_POSTGRES_PASSWORD"):
        monkeypatch.setenv(storage.PASSWORD_ENV, password)
    name = unique_name("submitit")
    path = write_spec(tmp_path, name, n_trials=9, workers=3, storage=postgres_url)
    spec = load_spec(str(path))
    spec.launcher = {"name": "submitit_local"}
    search(spec, tmp_path / "runs", quiet=True)
    trials = check_exact(spec, tmp_path / "runs", 9)
    assert len({t.user_attrs["pid"] for t in trials}) >= 2, "the array's jobs shared the trials"
    assert os.getpid() not in {t.user_attrs["pid"] for t in trials}
    assert list((tmp_path / "runs" / "studies" / name / "submitit").glob("*_log.out"))
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage.open_storage(spec, tmp_path))


@pytest.mark.postgres
def test_a_submitit_local_study_started_with_ctrl_c_ignored_cancels_its_jobs_on_sigterm(
    mnist_dir, tmp_path, postgres_url, monkeypatch
):
    """submitit cancels a local job with SIGINT. A study started with SIGINT ignored (a script's `&`)
    keeps ignoring it, and its jobs inherited that: cancelled, they trained on unsupervised. Now
    they start with SIGINT at its default: SIGTERM to the study stops everything, trials interrupted."""
    pytest.importorskip("submitit", reason="needs the slurm extra (pip install -e '.[slurm]')")
    if password := os.environ.get("HPEXP_TEST_POSTGRES_PASSWORD"):  # this process reads the trials
        monkeypatch.setenv(storage.PASSWORD_ENV, password)
    name = unique_name("submitit_int")
    base = ["network=mlp30", "data.n_train=1000", "data.n_validation=200", "train.epochs=100000"]
    path = write_spec(tmp_path, name, base=base, n_trials=2, workers=2, population=1)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(runs)]
    cmd += ["--storage", postgres_url, "--launcher", "submitit_local"]
    env = worker_env()
    coordinator = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        preexec_fn=background,
    )
    spec = load_spec(str(path))
    spec.storage = postgres_url
    wait_running(spec, runs, 2, coordinator)
    coordinator.send_signal(signal.SIGTERM)
    _, err = coordinator.communicate(timeout=120)
    assert coordinator.returncode == 143, err
    trials = trials_of(spec, runs)
    told = [(t.number, t.state.name, t.user_attrs.get("status"), t.last_step) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING], told
    # Each trial is interrupted in place or, when submitit's SIGKILL (1 s after its SIGINT) came first,
    # failed by the study as lost: either way failed once and waiting to run again.
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    retries = [t.user_attrs.get("retry_of") for t in trials if t.state == TrialState.WAITING]
    assert len(stopped) == 2 and sorted(retries) == [t.number for t in stopped], told
    time.sleep(3)  # no job trains on: nothing changes
    assert [(t.state, t.last_step) for t in trials_of(spec, runs)] == [(t.state, t.last_step) for t in trials]
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage.open_storage(spec, tmp_path))


def test_lost_worker_trials_are_failed_and_enqueued_again():
    """A worker a cluster's scheduler reports lost (host, pid): its running trials fail with the
    scheduler's reason and wait again with the same parameters; another worker's trial runs on."""
    s = optuna.create_study()
    mine, other = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), s.ask()
    for t, pid in ((mine, 4242), (other, 4343)):
        t.set_user_attr("host", "node-7")
        t.set_user_attr("pid", pid)
        t.set_user_attr("pid_start", None)
    lost = {("node-7", 4242): "dask worker tcp://10.0.0.7:4000 (node-7:4242) left the cluster"}
    assert storage.fail_stale(s, 3, lost) == [mine.number]
    trials = s.get_trials()
    assert trials[mine.number].state == TrialState.FAIL
    assert trials[mine.number].user_attrs["fail_reason"] == lost[("node-7", 4242)]
    assert trials[other.number].state == TrialState.RUNNING
    retry = [t for t in trials if t.user_attrs.get("retry_of") == mine.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].system_attrs["fixed_params"] == trials[mine.number].params
    assert storage.fail_stale(s, 3, lost) == []  # nothing left to fail


def test_local_study_artifacts_come_back_elsewhere(mnist_dir, tmp_path, monkeypatch):
    spec = load_spec(str(write_spec(tmp_path, "local_art", n_trials=3, workers=1)))
    search(spec, tmp_path / "runs", quiet=True)
    trials = check_exact(spec, tmp_path / "runs", 3)
    s = storage._load(spec, tmp_path / "runs", [], 0, create=False)
    assert s.user_attrs["artifact_store"] == str(
        (tmp_path / "runs" / "studies" / "local_art" / "artifacts").resolve()
    )
    other = tmp_path / "elsewhere"
    other.mkdir()
    check_artifacts_and_report(s, trials, other, monkeypatch)
    again = artifacts.download_trials(s, other / "downloaded")  # a second call keeps what is there
    assert sorted(again) == [t.number for t in trials]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hydra/launcher=joblib"], "does not run through Hydra's launchers"),
        (["hydra.sweeper.n_jobs=4"], "does not run through Hydra's launchers"),
        (["--launcher", "dask"], "needs the scheduler's address"),
        (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach this machine's Journal file"),
        (["--launcher", "slurm"], "needs a database every node reaches"),
        (["--launcher", "submitit_local", "--storage", "dask://127.0.0.1:9"], "needs the dask launcher"),
        (["--scheduler", "nonsense", "--storage", "dask://127.0.0.1:9"], "HOST:PORT"),
        (["+artifacts.weights=true"], "train.save_weights=true"),
        (["+artifacts.store=ftp://host/x"], "unknown scheme ftp://"),
        (["+artifacts.store=s3://bucket/prefix"], "takes a bucket, not a prefix"),
        (["+launcher.name=joblib"], "launcher.name must be one of"),
        (["+launcher.nodes=4"], "unknown key(s) ['nodes']"),
    ],
)
def test_launcher_options_it_cannot_honour_are_refused(tmp_path, capsys, argv, message):
    from hpexp import cli

    path = write_spec(tmp_path, "refused")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["study", str(path), *argv, "--runs", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "studies").exists()  # refused before any work
