"""Shared fixtures: where the real MNIST is, small configs, and every option of every config group.

With HPEXP_REQUIRE_DATA=1 (CI sets it in .ci/run) a missing dataset fails the tests that need it,
and any skip not listed in EXPECTED_SKIPS fails too: a suite that quietly skipped half of itself
must not pass.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest
from omegaconf import OmegaConf

from hpexp.paths import config_dir

REQUIRE_DATA = os.environ.get("HPEXP_REQUIRE_DATA") == "1"

# Tests that may skip even with HPEXP_REQUIRE_DATA=1, by test function name, with why. .ci/run
# installs Chromium, PostgreSQL, hatchling and scikit-learn, so none of the others may skip there.
EXPECTED_SKIPS: dict[str, str] = {}


def missing(reason: str) -> NoReturn:
    """Skip for want of data or a tool, or fail where HPEXP_REQUIRE_DATA=1 says it must be there."""
    if REQUIRE_DATA:
        pytest.fail(f"HPEXP_REQUIRE_DATA=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def foreground() -> None:
    """A child's `preexec_fn` for a terminal's Ctrl-C: SIGINT at its default. A suite started in the
    background (`pytest &` in a script) passes SIGINT on ignored, and hpexp then ignores it, as
    Python does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def background() -> None:
    """A child's `preexec_fn` for a shell script's `&`: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_DATA and report.skipped and item.originalname not in EXPECTED_SKIPS:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but HPEXP_REQUIRE_DATA=1 allows only EXPECTED_SKIPS: {reason}"


@pytest.fixture(scope="session", autouse=True)
def batching_cache(tmp_path_factory):
    """Populations measure how to run on this machine (hpexp.train.batching); tests keep that
    measurement in a file of their own, never in the user's cache."""
    from hpexp.train import timings

    path = tmp_path_factory.mktemp("batching") / "batching.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(timings.CACHE_ENV_VAR, str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def converted_copies(tmp_path_factory):
    """The datasets' converted copies (hpexp.data.converted) are made once for the session, in a
    folder of its own, never in the user's cache; the test processes it starts share them."""
    from hpexp.data import converted

    path = tmp_path_factory.mktemp("converted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(converted.ENV_VAR, str(path))
        yield path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST: $HPEXP_DATA_DIR (CI sets it) or hpexp's cache (filled by `hpexp data fetch`)."""
    from hpexp.data import mnist as data

    try:
        return data.find_data_dir(os.environ.get("HPEXP_DATA_DIR"), download=False)
    except data.DataError as e:
        missing(f"no MNIST here ({e}); set HPEXP_DATA_DIR or run `hpexp data fetch`")


def group_options(group: str) -> list[str]:
    """Every option of a config group, read from conf/ so a new YAML file is tested automatically."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def load_option(group: str, name: str):
    from hydra.utils import instantiate

    return instantiate(OmegaConf.load(config_dir() / group / f"{name}.yaml"))


SMALL = [
    "data.n_train=500",
    "data.n_validation=200",
    "train.epochs=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """$HPEXP_TEST_POSTGRES_URL (CI starts a server), else a throwaway local server, else skip."""
    if url := os.environ.get("HPEXP_TEST_POSTGRES_URL"):
        yield url
        return
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[postgres]')")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    initdb = shutil.which("initdb") or (str(bins[-1] / "initdb") if bins else None)
    if initdb is None:
        pytest.skip("no PostgreSQL server: set HPEXP_TEST_POSTGRES_URL or install postgresql")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    # Not under pytest's tmp folder: that is private to its owner, and the server may run as postgres.
    folder, port = Path(tempfile.mkdtemp(prefix="hpexp-pg-")), _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data_dir = folder / "data"
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data_dir), "-U", "hpexp", "--auth=trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
        subprocess.run(  # the server would hold a pipe open: it logs to a file instead
            [*as_user, pg_ctl, "-D", str(data_dir), "-o", options, "-l", str(folder / "log"), "-w", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"could not start a local PostgreSQL ({e})")
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="hpexp", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE hpexp_test")
        connection.close()
        yield f"postgresql://hpexp@127.0.0.1:{port}/hpexp_test"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data_dir), "-m", "immediate", "stop"], capture_output=True
        )
