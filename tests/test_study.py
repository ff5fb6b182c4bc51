"""Studies end to end on a tiny network and a small MNIST subset: budget, pruning, guards, resume."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hpexp.data import splits as data_splits
from hpexp.study import finalize as study_final
from hpexp.study import storage
from hpexp.study import workers as study
from hpexp.study.coordinator import search
from hpexp.study.finalize import finalize
from hpexp.study.spec import load_spec
from hpexp.train import rundir
from hpexp.train.runner import ConfigError, SealedSplitError, compose, run

TINY = [
    "network=linear",
    "data.n_train=500",
    "data.n_validation=200",
    "train.epochs=3",
    "train.batch_size=50",
]


def write_spec(folder: Path, name: str = "tiny", **changes) -> Path:
    spec = {
        "base": TINY,
        "search": {"optimizer.eta": {"type": "float", "low": 0.05, "high": 2.0, "log": True}},
        "baseline": {"optimizer.eta": 0.5},
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "n_trials": 6,
        "workers": 1,
        "population": 1,  # trials one by one unless a test says otherwise (the default is auto)
    } | changes
    path = folder / f"{name}.yaml"
    OmegaConf.save(OmegaConf.create(spec), path)
    return path


def trials_of(spec, runs: Path) -> list[optuna.trial.FrozenTrial]:
    return study._load(spec, runs, study.parse_space(spec.search), 0, create=False).get_trials()


def states(trials) -> dict[str, int]:
    return {
        s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)
    }


def test_six_trial_study_end_to_end_then_finalize(mnist_dir, tmp_path, capsys):
    spec = load_spec(str(write_spec(tmp_path)))
    search(spec, tmp_path)
    trials = trials_of(spec, tmp_path)
    assert states(trials) == {"COMPLETE": 6}
    assert trials[0].params == {"optimizer.eta": 0.5} and trials[0].user_attrs["baseline"]
    for t in trials:
        out = Path(t.user_attrs["run_dir"])
        assert out == (tmp_path / "studies" / "tiny" / "trials" / f"{t.number:04d}").resolve()
        assert rundir.read_summary(out)["status"] == t.user_attrs["status"] == "completed"
        history = rundir.read_history(out)
        assert [r["epoch"] for r in history] == [1, 2, 3] and "train_accuracy" in history[0]
        assert t.value == max(r["val_accuracy"] for r in history)
        assert t.intermediate_values == {r["epoch"]: r["val_accuracy"] for r in history}
        assert history[t.user_attrs["best_epoch"] - 1]["val_accuracy"] == t.value
    printed = capsys.readouterr().out
    assert "best trial #" in printed and "hpexp report --study tiny" in printed
    result = finalize(spec, tmp_path, seeds=2)
    folder = tmp_path / "studies" / "tiny"
    assert [r["seed"] for r in result["seeds"]] == [1, 2]
    assert all(0.5 < r["test_accuracy"] <= 1 for r in result["seeds"])
    assert (folder / "final.json").exists()
    assert (folder / "final.csv").read_text().splitlines()[-2].startswith("mean,")


def test_aggressive_pruner_prunes(mnist_dir, tmp_path):
    path = write_spec(
        tmp_path,
        base=[*TINY[:-2], "train.epochs=4", "train.batch_size=50"],
        search={"optimizer.eta": {"type": "float", "low": 0.001, "high": 1.0, "log": True}},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        n_trials=8,
    )
    spec = load_spec(str(path))
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and len(trials) == 8
    for t in pruned:
        summary = rundir.read_summary(Path(t.user_attrs["run_dir"]))
        assert summary["status"] == "pruned" and "MedianPruner" in summary["stop_reason"]
        assert summary["epochs_run"] < 4


def test_conditional_parameter_only_when_its_guard_holds():
    space = study.parse_space(
        {
            "regularizer": {"type": "categorical", "choices": ["none", "l2"]},
            "regularizer.lmbda": {
                "type": "float",
                "low": 0.1,
                "high": 10,
                "log": True,
                "when": {"regularizer": "l2"},
            },
        }
    )
    base = compose(TINY)
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = s.ask()
        overrides = study.sample(trial, space, base)
        cfg = compose([*TINY, *overrides])
        l2 = trial.params["regularizer"] == "l2"
        assert ("regularizer.lmbda" in trial.params) == l2
        assert cfg.choices.regularizer == trial.params["regularizer"]
        if l2:
            assert cfg.regularizer.lmbda == trial.params["regularizer.lmbda"]
        seen.add(l2)
        s.tell(trial, 0.0)
    assert seen == {True, False}


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer.eta=0.25", "regularizer=l2", "regularizer.lmbda=3.5", "train.monitor=[train,val]"],
        ["regularizer=none", "train.batch_size=20", "network=mlp30"],
    ],
)
def test_compose_trial_equals_compose(overrides):
    assert study.compose_trial([*TINY, *overrides]) == compose([*TINY, *overrides])
    with pytest.raises(Exception, match="etaa"):
        study.compose_trial([*TINY, "optimizer.etaa=1"])


def test_two_workers_make_exactly_n_trials(mnist_dir, tmp_path):
    spec = load_spec(str(write_spec(tmp_path, n_trials=7, workers=2)))
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    assert len(trials) == 7 and states(trials) == {"COMPLETE": 7}
    assert len({t.user_attrs["pid"] for t in trials}) == 2


def test_diverging_trial_fails_with_reason_and_study_goes_on(mnist_dir, tmp_path):
    path = write_spec(
        tmp_path,
        base=[*TINY, "cost=quadratic"],
        # five values, so a fresh one is always likely to be drawn: of three, after 1e30 and one
        # other, 11 redraws in a row (then a repeat is run: MAX_REDRAWS) drew a used one 1% of runs
        search={"optimizer.eta": {"type": "categorical", "choices": [0.5, 0.4, 0.3, 0.2, 1.0e30]}},
        baseline={"optimizer.eta": 1.0e30},
        n_trials=3,
    )
    spec = load_spec(str(path))
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    assert trials[0].state == TrialState.FAIL and len(trials) - len(storage.superseded(trials)) == 3
    assert trials[0].user_attrs["status"] == "diverged"
    assert "not finite" in trials[0].user_attrs["fail_reason"]
    done = [t for t in trials[1:] if t.user_attrs["status"] != "duplicate"]  # sampled again: replaced
    etas = [t.params["optimizer.eta"] for t in done]
    assert len(set(etas)) == 2 and set(etas) <= {0.5, 0.4, 0.3, 0.2}
    assert all(t.state == TrialState.COMPLETE for t in done)


def test_search_never_loads_the_test_split(mnist_dir, tmp_path, monkeypatch):
    asked: list[list[str]] = []
    load = data_splits.load

    def spy(*args, splits=data_splits.SPLITS, **kwargs):
        asked.append(list(splits))
        return load(*args, splits=splits, **kwargs)

    monkeypatch.setattr(data_splits, "load", spy)
    path = write_spec(tmp_path, base=[*TINY, "train.monitor=[train,val,test]"], n_trials=2)
    spec = load_spec(str(path))
    study.prepare(spec, tmp_path)
    assert study.work(OmegaConf.to_container(spec), tmp_path) == 2  # in this process, under the spy
    assert asked and all("test" not in splits for splits in asked)
    for t in trials_of(spec, tmp_path):
        assert t.state == TrialState.COMPLETE
        assert "test_accuracy" not in rundir.read_history(Path(t.user_attrs["run_dir"]))[0]
    finalize(spec, tmp_path, seeds=1)
    assert sum("test" in splits for splits in asked) == 1
    with pytest.raises(SealedSplitError, match="sealed"):
        run(compose([*TINY, "train.monitor=[train,val,test]"]), tmp_path / "r", allow_test=False)


# --- populations: several trials in one vectorized pass ----------------------------------------


@pytest.fixture
def populations(monkeypatch):
    """Spy on run_population calls in this process: the run directory names of each pass."""
    passes: list[list[str]] = []
    real = study.run_population

    def spy(cfgs, out_dirs, **kwargs):
        passes.append([Path(o).name for o in out_dirs])
        return real(cfgs, out_dirs, **kwargs)

    monkeypatch.setattr(study, "run_population", spy)
    monkeypatch.setattr(study_final, "run_population", spy)
    return passes


def test_population_study_runs_n_trials_and_prunes_members_individually(mnist_dir, tmp_path, populations):
    path = write_spec(
        tmp_path,
        base=[*TINY[:-2], "train.epochs=4", "train.batch_size=50"],
        search={"optimizer.eta": {"type": "float", "low": 0.001, "high": 1.0, "log": True}},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        n_trials=8,
        population=3,
    )
    spec = load_spec(str(path))
    s = study._load(spec, tmp_path, study.parse_space(spec.search), 0, create=True)
    for eta in (0.5, 0.3, 0.005, 0.4, 0.003, 0.6, 0.002, 0.8):  # good and hopeless side by side
        s.enqueue_trial({"optimizer.eta": eta})
    study.prepare(spec, tmp_path)  # the budget is already full
    assert study.work(OmegaConf.to_container(spec), tmp_path) == 8
    assert populations == [["0000", "0001", "0002"], ["0003", "0004", "0005"], ["0006", "0007"]]
    trials = trials_of(spec, tmp_path)
    # A hopeless member of the first population cannot be pruned yet (no trial has completed): it
    # runs its 4 epochs at chance and ends stalled, which fails the trial with that reason.
    assert len(trials) == 8 and {"COMPLETE", "PRUNED"} <= set(states(trials)) <= {
        "COMPLETE",
        "PRUNED",
        "FAIL",
    }
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"].startswith("stalled: stuck at chance"), t.user_attrs
    mixed = False
    for numbers in populations:
        members = [trials[int(n)] for n in numbers]
        for t in members:  # each run directory as if the trial had run alone
            out = Path(t.user_attrs["run_dir"])
            assert out == (tmp_path / "studies" / "tiny" / "trials" / f"{t.number:04d}").resolve()
            assert {"config.yaml", "history.csv", "summary.json"} <= {p.name for p in out.iterdir()}
            summary, history = rundir.read_summary(out), rundir.read_history(out)
            assert summary["status"] == t.user_attrs["status"] and len(history) == summary["epochs_run"]
            assert t.intermediate_values == {r["epoch"]: r["val_accuracy"] for r in history}
            assert (summary["epochs_run"] < 4) == (t.state == TrialState.PRUNED)
            assert t.user_attrs["pid"] == os.getpid() and t.user_attrs["host"] == storage.HOST
        mixed |= len({t.state for t in members}) > 1  # pruned members left, the others went on
    assert mixed


def test_population_trial_equals_the_trial_run_alone(mnist_dir, tmp_path, populations):
    """All trials share the study's seed, so a population's shared mini-batch order is each trial's
    own order: every member's history is the one it would have alone (float64, to 1e-9)."""
    path = write_spec(tmp_path, base=[*TINY, "dtype=float64"], n_trials=3, population=3)
    spec = load_spec(str(path))
    study.prepare(spec, tmp_path)
    study.work(OmegaConf.to_container(spec), tmp_path)
    assert populations == [["0000", "0001", "0002"]]
    for t in trials_of(spec, tmp_path):
        cfg = compose([*spec.base, *t.user_attrs["overrides"], "train.monitor=[train,val]"])
        alone = rundir.read_history(run(cfg, tmp_path / "alone" / str(t.number), progress=False))
        together = rundir.read_history(Path(t.user_attrs["run_dir"]))
        assert len(together) == len(alone) == 3
        for a, b in zip(together, alone, strict=True):
            assert {k: v for k, v in a.items() if k != "seconds"} == pytest.approx(
                {k: v for k, v in b.items() if k != "seconds"}, abs=1e-9
            )
    result = finalize(spec, tmp_path, seeds=2)  # the seeds as one population, own orders
    assert populations[-1] == ["seed_1", "seed_2"]
    for row in result["seeds"]:
        fixed = ["train.restore_best=true", f"seed={row['seed']}", "train.monitor=[train,val]"]
        cfg = compose([*spec.base, *result["overrides"], *fixed])
        summary = rundir.read_summary(run(cfg, tmp_path / "alone" / f"seed_{row['seed']}", progress=False))
        assert row["best_epoch"] == summary["best_epoch"]
        assert row["val_accuracy"] == pytest.approx(summary["best"]["val_accuracy"], abs=1e-9)


def test_two_workers_with_populations_make_exactly_n_trials(mnist_dir, tmp_path):
    spec = load_spec(str(write_spec(tmp_path, n_trials=9, workers=2, population=4)))
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    assert len(trials) == 9 and states(trials) == {"COMPLETE": 9}


BAD = [
    ({"search": {"optimizer.etaa": {"type": "float", "low": 0.1, "high": 1}}}, "not a config key"),
    ({"search": {"optimizer.eta": {"type": "float", "low": 1, "high": 1}}}, "low must be < high"),
    ({"search": {"optimizer.eta": {"type": "float", "low": 0, "high": 1, "log": True}}}, "log scale"),
    ({"search": {"optimizer.eta": {"type": "categorical", "choices": []}}}, "non-empty"),
    ({"search": {"optimizer.eta": {"type": "real", "low": 0, "high": 1}}}, "type must be"),
    ({"search": {"regularizer": {"type": "categorical", "choices": ["l3"]}}}, "its options"),
    ({"baseline": {"train.epochs": 3}}, "not in the search space"),
    ({"n_trials": 0}, "n_trials"),
    ({"pruner": {"name": "oracle"}}, "pruner.name"),
    ({"population": 0}, "population must be"),
    # without the postgres extra (a plain `pip install -e ".[dev]"`) the driver is named first
    (
        {"storage": "postgresql://nobody@127.0.0.1:9/nothing"},
        "cannot reach storage" if importlib.util.find_spec("psycopg2") else "needs a driver",
    ),
    ({"storage": "postgresql://me:hunter2@127.0.0.1:9/db"}, "has a password in it"),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_a_clear_error_before_any_trial(tmp_path, changes, message):
    spec = load_spec(str(write_spec(tmp_path, **changes)))
    with pytest.raises(ConfigError, match=message) as error:
        search(spec, tmp_path)
    assert "hunter2" not in str(error.value)
    assert not (tmp_path / "studies" / "tiny" / "trials").exists()


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_two_workers_against_postgresql(mnist_dir, tmp_path, postgres_url, monkeypatch):
    if password := os.environ.get("HPEXP_TEST_POSTGRES_PASSWORD"):
        monkeypatch.setenv(storage.PASSWORD_ENV, password)
    name = f"pg_{os.getpid()}_{int(time.time())}"
    spec = load_spec(str(write_spec(tmp_path, name=name, n_trials=5, workers=2, storage=postgres_url)))
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    assert len(trials) == 5 and states(trials) == {"COMPLETE": 5}
    assert not (tmp_path / "studies" / name / "journal.log").exists()
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage.open_storage(spec, tmp_path))


def test_a_tpe_study_with_few_trials_says_how_many_its_model_chooses(tmp_path, capsys):
    """Optuna's TPE draws its first n_startup_trials (10 by default) at random: a 6-trial TPE study
    is a random search, and its start says so, as whenever at least half its trials are random."""
    from hpexp.study.coordinator import _print_start

    default = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    for sampler, n_trials, expected in [
        (
            {"name": "tpe"},
            6,
            f"  TPE draws its first {default} trials at random (sampler n_startup_trials): "
            f"its model chooses 0 of these 6",
        ),
        ({"name": "tpe", "n_startup_trials": 3}, 6, "its model chooses 3 of these 6"),
        ({"name": "tpe", "n_startup_trials": 2}, 6, None),  # most of its trials chosen by the model
        ({"name": "random"}, 6, None),
    ]:
        spec = load_spec(str(write_spec(tmp_path, sampler=sampler, n_trials=n_trials)))
        _print_start(spec, tmp_path, 1)
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("study tiny: ")
        if expected is None:
            assert len(lines) == 1, lines
        else:
            assert len(lines) == 2 and expected in lines[1], (sampler, n_trials, lines)
