"""Schedules are ordinary search keys: the learning-rate schedule and its parameters (step and
factor, the book's halving patience n, the exponential rate) and the early-stopping patience,
each sampled only when its `when:` guard holds, reach the trial's config and its run."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_study import states, trials_of, write_spec

from hpexp.study.coordinator import search
from hpexp.study.spec import check_spec, load_spec, parse_space
from hpexp.study.storage import _load
from hpexp.train import rundir
from hpexp.train.runner import ConfigError

SCHEDULES = {
    "optimizer.eta": {"type": "float", "low": 0.05, "high": 2.0, "log": True},
    "schedule": {"type": "categorical", "choices": ["constant", "step", "exponential", "book"]},
    "schedule.step": {"type": "int", "low": 1, "high": 3, "when": {"schedule": "step"}},
    "schedule.factor": {"type": "float", "low": 0.1, "high": 0.9, "when": {"schedule": ["step", "book"]}},
    "schedule.decay": {"type": "float", "low": 0.5, "high": 0.99, "when": {"schedule": "exponential"}},
    "schedule.n": {"type": "int", "low": 1, "high": 3, "when": {"schedule": "book"}},
    "stopping": {"type": "categorical", "choices": ["none", "no_improvement"]},
    "stopping.patience": {"type": "int", "low": 1, "high": 3, "when": {"stopping": "no_improvement"}},
}
GUARDED = {  # key -> the group choice it needs
    "schedule.step": ("schedule", {"step"}),
    "schedule.factor": ("schedule", {"step", "book"}),
    "schedule.decay": ("schedule", {"exponential"}),
    "schedule.n": ("schedule", {"book"}),
    "stopping.patience": ("stopping", {"no_improvement"}),
}
REPR = {"step": "StepDecay", "exponential": "Exponential", "book": "Book", "constant": "Constant"}


def test_schedule_and_patience_are_searched_under_their_guards(mnist_dir, tmp_path):
    spec = load_spec(str(write_spec(tmp_path, search=SCHEDULES, baseline=None, n_trials=16, population=4)))
    # Workers' samplers mix in OS entropy, so 16 draws may miss a kind: one trial of each is
    # enqueued with only its schedule fixed (its other keys, guarded ones included, are drawn).
    study = _load(spec, tmp_path, parse_space(spec.search), 0, create=True)
    for kind in REPR:
        study.enqueue_trial({"schedule": kind})
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    assert states(trials) == {"COMPLETE": 16}
    assert [t.params["schedule"] for t in trials[:4]] == list(REPR)
    for t in trials:
        for key, (group, needs) in GUARDED.items():
            assert (key in t.params) == (t.params[group] in needs), (t.number, key, t.params)
        out = Path(t.user_attrs["run_dir"])
        config, summary = OmegaConf.load(out / "config.yaml"), rundir.read_summary(out)
        assert summary["schedule"].startswith(REPR[t.params["schedule"]] + "(")
        for key, value in t.params.items():
            if "." in key:
                assert OmegaConf.select(config, key) == value  # the sampled value is the one trained
                group, field = key.split(".")
                if group in ("schedule", "stopping"):  # the run built its rule with that value
                    assert f"{field}={value!r}" in summary[group]
        history = rundir.read_history(out)
        if t.params["schedule"] == "step":  # the run's eta is the searched schedule's
            p = t.params
            eta0, step, factor = p["optimizer.eta"], p["schedule.step"], p["schedule.factor"]
            for r in history:
                assert r["eta"] == pytest.approx(eta0 * factor ** ((r["epoch"] - 1) // step))


@pytest.mark.parametrize(
    "guard, says",
    [
        ({"schedule": "stepp"}, "its guard `when: {schedule: stepp}` names no option of schedule"),
        ({"stopping": "patience"}, "its guard `when: {stopping: patience}` names no option of stopping"),
    ],
)
def test_a_guard_naming_no_option_is_refused(tmp_path, guard, says):
    space = SCHEDULES | {"schedule.step": {"type": "int", "low": 1, "high": 3, "when": guard}}
    spec = load_spec(str(write_spec(tmp_path, search=space, baseline=None)))
    with pytest.raises(ConfigError, match="names no option") as e:
        check_spec(spec)
    assert says in str(e.value)
