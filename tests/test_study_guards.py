"""Study guards: unknown spec keys, passwords in storage URLs, and the test set scored once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_study import trials_of, write_spec

from hpexp.paths import studies_dir
from hpexp.study import storage
from hpexp.study import workers as study
from hpexp.study.coordinator import search
from hpexp.study.finalize import finalize
from hpexp.study.spec import check_spec, load_spec
from hpexp.study.storage import mask
from hpexp.train.runner import ConfigError

# --- unknown keys in a spec --------------------------------------------------------------------

TYPOS = [
    ({"n_trail": 5}, "n_trail; did you mean n_trials?"),
    ({"workrs": 3}, "workrs; did you mean workers?"),
    ({"objective": {"metric": "val_accuracy", "directon": "maximize"}}, "did you mean objective.direction?"),
    ({"sampler": {"name": "tpe", "sead": 1}}, "sampler.sead; did you mean sampler.seed?"),
    ({"pruner": {"name": "median", "n_warmup_step": 2}}, "did you mean pruner.n_warmup_steps?"),
    ({"zzz": 1}, "unknown study spec key zzz; valid keys: search, objective"),
]


@pytest.mark.parametrize(("changes", "message"), TYPOS, ids=[m.split(";")[0] for _, m in TYPOS])
def test_unknown_spec_key_is_refused_before_any_work(tmp_path, changes, message):
    """Issue row: a spec with `n_trail: 5`, `workrs: 3` was silently ignored."""
    path = write_spec(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace(".", r"\.")):
        spec = load_spec(str(path))
        search(spec, tmp_path)
    assert not (tmp_path / "studies").exists()


def test_unknown_spec_key_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    path = write_spec(tmp_path, n_trail=5, workrs=3)
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hpexp study: error: unknown study spec key n_trail; did you mean n_trials?"
    ]
    assert not (tmp_path / "studies").exists()


def test_spec_overrides_set_defaulted_keys_and_refuse_unknown_ones(tmp_path):
    path = write_spec(tmp_path)  # leaves max_restarts and max_attempts to their defaults
    spec = load_spec(str(path), ["max_restarts=20", "max_attempts=5", "n_trials=4"])
    assert (spec.max_restarts, spec.max_attempts, spec.n_trials) == (20, 5, 4)
    for override in ("n_trail=3", "+n_trail=3"):
        with pytest.raises(ConfigError, match=r"unknown study spec key n_trail; did you mean n_trials\?"):
            load_spec(str(path), [override])
    with pytest.raises(ConfigError, match=r"sampler\.sead; did you mean sampler\.seed\?"):
        check_spec(load_spec(str(path), ["+sampler.sead=3"]))


def test_tpes_startup_count_must_be_a_count(tmp_path):
    """n_startup_trials is checked before any work, as the start line and TPE both read it."""
    for bad in ("'x'", "-1", "true", "2.5"):
        spec = load_spec(str(write_spec(tmp_path)), ["sampler.name=tpe", f"+sampler.n_startup_trials={bad}"])
        with pytest.raises(ConfigError, match=r"sampler\.n_startup_trials must be an integer >= 0, got"):
            check_spec(spec)
    check_spec(load_spec(str(write_spec(tmp_path)), ["sampler.name=tpe", "+sampler.n_startup_trials=0"]))


def test_a_spec_missing_a_required_key_says_which(tmp_path):
    path = write_spec(tmp_path)
    raw = OmegaConf.load(path)
    del raw["sampler"]
    OmegaConf.save(raw, path)
    with pytest.raises(ConfigError, match="does not set sampler"):
        load_spec(str(path))


# --- secrets ------------------------------------------------------------------------------------

ENCODED = "s3cr%23t%2Fpw"  # s3cr#t/pw
URLS = [  # every shape a password can take in a storage URL, and the password as written
    (f"postgresql://alice:{ENCODED}@db.example:5432/hpexp", ENCODED),
    (f"postgresql://:{ENCODED}@db.example/hpexp", ENCODED),  # no user name
    (f"postgresql+psycopg2://alice:{ENCODED}@db.example/hpexp?sslmode=require", ENCODED),
    (f"postgresql://alice@db.example/hpexp?password={ENCODED}", ENCODED),
    (f"postgresql://alice@db.example/hpexp?sslmode=require&password={ENCODED}", ENCODED),
    (f"postgresql://db.example/hpexp?PASSWORD={ENCODED}", ENCODED),
    ("postgresql://alice:s3cr@t@db.example/hpexp", "s3cr@t"),  # an unencoded @ in the password
    ("postgresql://alice:s3cr/t@db.example/hpexp", "s3cr/t"),  # an unencoded / in the password
    ("mysql://:s3cr3tpw@db.example/hpexp", "s3cr3tpw"),
]


def _secrets_in(text: str, password: str) -> list[str]:
    from urllib.parse import unquote

    return [s for s in {password, unquote(password)} if s in text]


@pytest.mark.parametrize(("url", "password"), URLS)
def test_mask_hides_the_password_of_every_url_shape(url, password):
    masked = mask(f"cannot reach storage {url}: timeout")
    assert not _secrets_in(masked, password), masked
    assert "db.example" in masked and "***" in masked


@pytest.mark.parametrize(("url", "password"), URLS)
def test_no_password_printed_or_saved_for_any_url_shape(tmp_path, url, password):
    """Issue row: `--storage postgresql://:secret@host/db` printed the password in its error."""
    path = write_spec(tmp_path)
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(tmp_path), "--storage", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "hpexp study: error:" in done.stderr
    assert not _secrets_in(done.stdout + done.stderr, password), done.stderr
    for saved in (tmp_path / "studies").rglob("*") if (tmp_path / "studies").exists() else []:
        if saved.is_file():
            assert not _secrets_in(saved.read_text(errors="replace"), password), saved


def test_mask_keeps_urls_without_a_password_and_hides_the_configured_one(monkeypatch):
    assert (
        mask("postgresql://alice@db/hpexp?sslmode=require") == "postgresql://alice@db/hpexp?sslmode=require"
    )
    monkeypatch.setenv(storage.PASSWORD_ENV, "hunter22")
    assert mask("FATAL: password hunter22 rejected (hunter22)") == "FATAL: password *** rejected (***)"


# --- the test set, scored once -----------------------------------------------------------------


def test_finalize_twice_is_refused_unless_again(mnist_dir, tmp_path, capsys):
    """Issue row: `--finalize` run twice scored the test set again."""
    path = write_spec(tmp_path, n_trials=2)
    spec = load_spec(str(path))
    search(spec, tmp_path, quiet=True)
    first = finalize(spec, tmp_path, seeds=1)
    folder = tmp_path / "studies" / "tiny"
    written = (folder / "final.json").read_text()
    mean = 100 * first["mean"]["test_accuracy"]
    with pytest.raises(ConfigError, match="scored on the test set once at ") as refused:
        finalize(spec, tmp_path, seeds=1)
    assert f"test {mean:.2f}%" in str(refused.value) and "--again" in str(refused.value)
    assert (folder / "final.json").read_text() == written  # nothing scored, nothing written
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path), "--runs", str(tmp_path), "--finalize"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--again" in done.stderr and "seed 1:" not in done.stdout
    again = subprocess.run([*cmd, "--again", "--seeds", "1"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    scorings = study._load(spec, tmp_path, study.parse_space(spec.search), 0, create=False).user_attrs
    assert [s["test_accuracy"] for s in scorings["finalized"]] == [first["mean"]["test_accuracy"]] * 2
    assert len(trials_of(spec, tmp_path)) == 2


def test_a_study_finalized_by_an_earlier_version_is_refused_too(mnist_dir, tmp_path):
    spec = load_spec(str(write_spec(tmp_path, n_trials=1)))
    search(spec, tmp_path, quiet=True)
    result = {
        "best_trial": 0,
        "seeds": [{}, {}],
        "mean": {"test_accuracy": 0.9},
        "ci95": {"test_accuracy": 0.01},
    }
    (tmp_path / "studies" / "tiny" / "final.json").write_text(json.dumps(result))
    with pytest.raises(ConfigError, match=r"best trial #0, 2 seeds: test 90\.00% \+/- 1\.00"):
        finalize(spec, Path(tmp_path), seeds=1)


@pytest.mark.parametrize("name", sorted(p.stem for p in studies_dir().glob("*.yaml")))
def test_every_shipped_study_spec_checks(name):
    """A study shipped in studies/ loads, its search space parses against the config and its
    baseline composes, so a typo in one is a failing test, not a user's first error."""
    spec = load_spec(name)
    params, base = check_spec(spec)
    assert params and base.network
