"""Population-based training: exploit copies a parent exactly, explore stays inside the search
space, a member's recorded schedule replayed alone retraces it, and an interrupted or killed
population goes on to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_population import member, new_network, problem, without_seconds
from test_study import states, trials_of, write_spec

from hpexp.study import pbt
from hpexp.study.spec import Param, load_spec, parse_space
from hpexp.train import checkpoint as checkpoints
from hpexp.train import rundir
from hpexp.train.pbt import fit_pbt
from hpexp.train.pbt_runner import run_pbt, with_values
from hpexp.train.plans import Replay, Truncation, lineage_of
from hpexp.train.runner import ConfigError, SealedSplitError, _saved_state, compose, member_names

# --- the loop: exploit --------------------------------------------------------------------------


def test_exploit_copies_weights_momentum_and_the_parents_history_exactly():
    """Members 2 and 3 both copy member 0 after epoch 2; member 1 is left alone."""
    from hpexp.nn.population import stack

    train, val = problem()
    network = stack([new_network(seed) for seed in (1, 2, 3, 4)])
    members = [
        member(0.5, 0.0, 0.5, 4),
        member(0.1, 1.0, 0.9, 4),
        member(1.0, 0.0, 0.3, 4),
        member(0.2, 0.0, 0.6, 4),
    ]
    seen = {}

    def after(epoch, histories):
        if epoch != 2:
            return []
        seen["before"] = [p.copy() for p in network.params]
        seen["histories"] = [list(map(dict, h)) for h in histories]
        return [(2, 0, member(0.05, 2.0, 0.7, 4)), (3, 0, member(0.3, 0.0, 0.2, 4))]

    saved = {}

    def checkpoint(state):
        saved[state.epoch] = (
            [p.copy() for p in state.params],
            [v.copy() for v in state.velocity],
            [list(map(dict, h)) for h in state.histories],
        )

    results = fit_pbt(
        network,
        train,
        {"val": val},
        members,
        epochs=4,
        batch_size=10,
        rng=np.random.default_rng(5),
        after=after,
        checkpoint=checkpoint,
    )
    params, velocity, histories = saved[2]
    before = seen["before"]
    assert not any(np.array_equal(before[0][k], before[0][0]) for k in (1, 2, 3))  # all differed
    for p, b in zip(params, before, strict=True):
        for child in (2, 3):
            np.testing.assert_array_equal(p[child], b[0])  # each child is the parent's copy ...
        np.testing.assert_array_equal(p[0], b[0])  # ... the parent is untouched, and so is member 1
        np.testing.assert_array_equal(p[1], b[1])
    assert velocity and all(np.array_equal(v[c], v[0]) for v in velocity for c in (2, 3))  # momentum too
    assert not np.array_equal(velocity[0][1], velocity[0][0])
    for child in (2, 3):
        assert histories[child] == seen["histories"][0] != seen["histories"][child]  # the parent's history
    assert members[2].optimizer.eta == 0.05 and members[2].optimizer.momentum == 0.7  # explored
    # The histories are copies: from epoch 3 on, the children and the parent train apart.
    assert [[r["epoch"] for r in result.history] for result in results] == [[1, 2, 3, 4]] * 4
    child, other, parent = results[2].history, results[3].history, results[0].history
    assert without_seconds(child[:2]) == without_seconds(other[:2]) == without_seconds(parent[:2])
    assert (child[2]["eta"], other[2]["eta"], parent[2]["eta"]) == (0.05, 0.3, 0.5)
    assert len({child[2]["val_loss"], other[2]["val_loss"], parent[2]["val_loss"]}) == 3


# --- explore -----------------------------------------------------------------------------------

SPACE = parse_space(
    {
        "optimizer.eta": {"type": "float", "low": 0.02, "high": 5.0, "log": True},
        "optimizer.momentum": {"type": "float", "low": 0.0, "high": 0.9},
        "schedule.step": {"type": "int", "low": 2, "high": 30, "step": 4},
        "regularizer.p": {"type": "float", "low": 0.1, "high": 0.6, "step": 0.05},
        "stopping.patience": {"type": "int", "low": 1, "high": 20, "log": True},
        "optimizer.nesterov": {"type": "categorical", "choices": [True, False]},
    }
)


def inside(p: Param, v) -> bool:
    if p.type == "categorical":
        return v in p.choices
    on_grid = p.step is None or abs((v - p.low) / p.step - round((v - p.low) / p.step)) < 1e-9
    return p.low <= v <= p.high and on_grid and (p.type != "int" or isinstance(v, int))


@pytest.mark.parametrize("resample", [0.0, 0.3, 1.0])
def test_explore_keeps_every_value_inside_its_bounds_and_grid(resample):
    rng = np.random.default_rng(0)
    values = {
        "optimizer.eta": 4.9,
        "optimizer.momentum": 0.05,
        "schedule.step": 30,
        "regularizer.p": 0.1,
        "stopping.patience": 1,
        "optimizer.nesterov": True,
    }
    moved = dict.fromkeys(values, False)
    for _ in range(400):  # factors far outside the bounds: every draw must be brought back inside
        new = pbt.explore(values, SPACE, rng, [0.01, 0.5, 2.0, 100.0], resample)
        for p in SPACE:
            assert inside(p, new[p.name]), (p, new[p.name])
            moved[p.name] |= new[p.name] != values[p.name]
        values = new
    assert all(v for k, v in moved.items() if k != "optimizer.nesterov" or resample)


def test_explore_leaves_keys_a_guard_left_out():
    new = pbt.explore({"optimizer.eta": 1.0}, SPACE, np.random.default_rng(0), [2.0], 0.0)
    assert new == {"optimizer.eta": 2.0}


# --- the plans ---------------------------------------------------------------------------------


def test_truncation_replaces_the_bottom_by_the_top_and_records_the_lineage():
    plan = Truncation([{"a": float(k)} for k in range(8)], interval=2, fraction=0.25, seed=1)
    histories = [
        [{"epoch": 1, "val_accuracy": a}] for a in (0.5, 0.9, 0.1, 0.8, 0.7, float("nan"), 0.6, 0.95)
    ]
    assert plan.decide(1, histories) == [(5, 7, {"a": 7.0})] or plan.decide(1, histories)[0][0] == 5
    plan = Truncation([{"a": float(k)} for k in range(8)], interval=2, fraction=0.25, seed=1)
    changes = plan.decide(2, histories)
    assert sorted(k for k, _, _ in changes) == [2, 5]  # the worst two (NaN is the worst)
    assert {j for _, j, _ in changes} <= {1, 7}  # copy one of the best two
    for k, j, values in changes:
        assert plan.values[k] == values == plan.values[j]  # explore is the identity here
        assert plan.schedules[k] == [{"epoch": 1, "values": {"a": float(j)}}, {"epoch": 3, "values": values}]
    assert [(e["member"], e["epoch"]) for e in plan.lineage] == [(k, 2) for k, _, _ in changes]


def test_truncation_waits_for_its_warmup_but_replaces_a_diverged_member_at_once():
    histories = [
        [{"epoch": 1, "val_accuracy": a}] for a in (0.5, 0.9, 0.1, 0.8, 0.7, float("nan"), 0.6, 0.95)
    ]
    plan = Truncation([{"a": float(k)} for k in range(8)], interval=2, fraction=0.25, warmup=4, seed=1)
    assert [k for k, _, _ in plan.decide(2, histories)] == [5]  # before the warm-up: only the NaN member
    assert sorted(k for k, _, _ in plan.decide(4, histories)) == [2, 5]  # from it on: the bottom quarter
    with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
        Truncation([{"a": 0.0}], warmup=-1)


def test_lineage_of_follows_parents_back_to_epoch_one():
    events = [{"epoch": 2, "member": 3, "parent": 1}, {"epoch": 4, "member": 0, "parent": 3}]
    assert lineage_of(0, events) == [(1, 1), (3, 3), (5, 0)]
    assert lineage_of(2, events) == [(1, 2)]


# --- run_pbt on MNIST: replay and resume --------------------------------------------------------

BASE = [
    "network=mlp30",
    "data.n_train=300",
    "data.n_validation=200",
    "train.batch_size=20",
    "train.epochs=6",
    "regularizer=l2",
    "dtype=float64",
    "train.shared_order=true",
]
SEARCHED = parse_space(
    {
        "optimizer.eta": {"type": "float", "low": 0.05, "high": 3.0, "log": True},
        "regularizer.lmbda": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
    }
)
START = [
    {"optimizer.eta": e, "regularizer.lmbda": m}
    for e, m in [(0.1, 5.0), (2.5, 0.05), (0.5, 1.0), (0.06, 8.0)]
]


def population(tmp_path: Path, name: str, interrupt_at: int | None = None, resume: bool = False):
    cfgs = [with_values(compose(BASE), v) for v in START]
    plan = Truncation(
        [dict(v) for v in START],
        interval=2,
        fraction=0.25,
        seed=3,
        explore=lambda v, rng: pbt.explore(v, SEARCHED, rng, [0.8, 1.25], 0.25),
    )
    outs = [tmp_path / name / f"{k:02d}" for k in range(len(cfgs))]

    def stop(record):
        if record["epoch"] == interrupt_at:
            raise KeyboardInterrupt

    hooks = [stop] + [None] * (len(cfgs) - 1)
    run_pbt(cfgs, outs, plan, checkpoint=tmp_path / name / "checkpoint.npz", on_epochs=hooks, resume=resume)
    return plan, outs


def test_a_members_schedule_replayed_alone_retraces_its_training(mnist_dir, tmp_path):
    plan, outs = population(tmp_path, "pbt")
    exploited = [e["member"] for e in plan.lineage]
    assert exploited, "no member was exploited: the test would prove nothing"
    for out in outs:  # every member's history is one record per epoch, whoever it copied
        assert [r["epoch"] for r in rundir.read_history(out)] == [1, 2, 3, 4, 5, 6]
    for k in sorted(set(exploited)):
        schedule = plan.schedules[k]
        assert len(schedule) >= 2 and schedule[0]["values"] != START[k]  # it lives another's lineage
        cfg = with_values(compose([*BASE, "train.save_weights=true"]), schedule[0]["values"])
        alone = tmp_path / f"alone_{k}"
        run_pbt(
            [cfg],
            [alone],
            Replay([dict(schedule[0]["values"])], schedule=schedule),
            checkpoint=alone / "checkpoint.npz",
        )
        got, want = rundir.read_history(alone), rundir.read_history(outs[k])
        assert len(got) == len(want) == 6
        for a, b in zip(without_seconds(got), without_seconds(want), strict=True):
            assert a == pytest.approx(b, abs=1e-9, rel=0)
        assert rundir.read_summary(alone)["pbt"]["schedule"] == schedule


def test_a_population_cannot_read_the_test_split_where_it_is_sealed(mnist_dir, tmp_path):
    cfgs = [with_values(compose([*BASE, "train.monitor=[train,val,test]"]), v) for v in START[:2]]
    plan = Truncation([dict(v) for v in START[:2]], interval=2, fraction=0.5)
    with pytest.raises(SealedSplitError, match="the test split is sealed here"):
        run_pbt(cfgs, [tmp_path / "a", tmp_path / "b"], plan, checkpoint=tmp_path / "c.npz", allow_test=False)
    assert not (tmp_path / "a").exists()  # refused before any folder is made


def test_an_interrupted_population_resumes_to_the_uninterrupted_result(mnist_dir, tmp_path):
    plan, outs = population(tmp_path, "whole")
    with pytest.raises(KeyboardInterrupt):
        population(tmp_path, "cut", interrupt_at=4)
    cut = [tmp_path / "cut" / f"{k:02d}" for k in range(4)]
    assert rundir.read_summary(cut[0])["status"] == "interrupted"
    assert (tmp_path / "cut" / "checkpoint.npz").exists()
    (tmp_path / "cut").rename(tmp_path / "moved")  # a study folder moved or copied elsewhere resumes too
    resumed, moved = population(tmp_path, "moved", resume=True)
    assert resumed.state() | {"rng": None} == plan.state() | {"rng": None}
    assert resumed.rng.bit_generator.state == plan.rng.bit_generator.state
    for a, b in zip(outs, moved, strict=True):
        assert without_seconds(rundir.read_history(a)) == without_seconds(rundir.read_history(b))
    assert not (tmp_path / "moved" / "checkpoint.npz").exists()


def test_a_checkpoint_names_its_runs_relative_to_itself_and_refuses_others(tmp_path):
    outs = [tmp_path / "pop" / f"{k:02d}" for k in range(2)]
    path = tmp_path / "pop" / "checkpoint.npz"
    path.parent.mkdir()
    state = checkpoints.State(
        epoch=1, active=[0, 1], params=[], velocity=[], histories=[[], []], best=[None, None],
        best_params=[None, None], ended={}, rngs={}, members=member_names(path, outs),
    )  # fmt: skip
    checkpoints.save(path, state)
    assert checkpoints.load(path).members == ["00", "01"]
    assert _saved_state(path, outs).epoch == 1
    checkpoints.save(path, replace(state, members=[str(o.resolve()) for o in outs]))  # as written before
    assert _saved_state(path, outs).epoch == 1
    with pytest.raises(ConfigError, match="is the checkpoint of runs"):
        _saved_state(path, [outs[1], outs[0]])


# --- the study ---------------------------------------------------------------------------------

PBT = {"name": "pbt", "seed": 0, "interval": 2}
SPACE_SPEC = {
    "optimizer.eta": {"type": "float", "low": 0.05, "high": 3.0, "log": True},
    "regularizer.lmbda": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
}


@pytest.mark.parametrize(
    "change, says",
    [
        ({"sampler": PBT | {"interval": 0}}, "sampler.interval must be an integer in [1, train.epochs=3)"),
        ({"sampler": PBT | {"warmup": 3}}, "sampler.warmup must be an integer in [0, train.epochs=3)"),
        ({"sampler": PBT | {"fraction": 0.7}}, "sampler.fraction must be in (0, 0.5]"),
        ({"sampler": PBT | {"perturb": [0.8, -1]}}, "sampler.perturb must be a list of factors > 0"),
        ({"sampler": PBT | {"resample": 2}}, "sampler.resample must be a probability"),
        ({"sampler": PBT | {"intervall": 2}}, "did you mean sampler.interval?"),
        ({"n_trials": 1}, "n_trials is PBT's population size and must be >= 2"),
        (
            {"search": {"train.batch_size": {"type": "int", "low": 10, "high": 50}}},
            "search.train.batch_size: PBT",
        ),
        (
            {"search": {"regularizer": {"type": "categorical", "choices": ["l1", "l2"]}}},
            "search.regularizer: PBT",
        ),
        (
            {"base": ["network=linear", "stopping=no_improvement", "train.epochs=3"]},
            "stopping=no_improvement",
        ),
        (
            {"search": {"optimizer.momentum": {"type": "float", "low": 0.0, "high": 1.0}}},
            "momentum must be in [0, 1)",
        ),
    ],
)
def test_bad_pbt_specs_are_refused_naming_the_value(tmp_path, change, says):
    spec = load_spec(str(write_spec(tmp_path, **({"sampler": PBT, "n_trials": 4} | change))))
    with pytest.raises(ConfigError, match=None) as e:
        pbt.check(spec)
    assert says in str(e.value)


SLOW = [
    "network=mlp30",
    "regularizer=l2",
    "data.n_train=1000",
    "data.n_validation=200",
    "train.batch_size=10",
    "train.epochs=8",
]


def read_population(runs: Path) -> tuple[dict, list]:
    here = runs / "studies" / "tiny" / "pbt"
    result = json.loads((here / "pbt.json").read_text())
    histories = [without_seconds(rundir.read_history(Path(d))) for d in result["run_dirs"]]
    return {k: result[k] for k in ("schedules", "lineage", "best_member")}, histories


def test_a_pbt_study_whose_worker_is_killed_goes_on_from_its_checkpoint(mnist_dir, tmp_path):
    kw = dict(
        base=SLOW,
        search=SPACE_SPEC,
        baseline={"optimizer.eta": 0.5, "regularizer.lmbda": 5.0},
        sampler=PBT,
        n_trials=4,
        workers=2,
    )
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for runs in (whole, cut):
        runs.mkdir()
    path = write_spec(tmp_path, **kw)
    cmd = [sys.executable, "-m", "hpexp.cli", "study", str(path)]
    subprocess.run([*cmd, "--runs", str(whole)], check=True, capture_output=True, text=True, timeout=300)
    first = subprocess.Popen(
        [*cmd, "--runs", str(cut)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    spec = load_spec(str(path))
    victim = None
    for _ in range(2400):  # kill the worker after the first exploit (epoch 2), mid-population
        time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        if (cut / "studies" / "tiny" / "journal.log").exists():
            try:
                running = [
                    t
                    for t in trials_of(spec, cut)
                    if t.state == TrialState.RUNNING and (t.last_step or 0) >= 3
                ]
            except ConfigError:
                continue
            if len(running) == 4:
                victim = running[0].user_attrs["pid"]
                break
    assert victim is not None, "the population never reached epoch 3"
    os.kill(victim, signal.SIGKILL)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "was killed by SIGKILL" in err and "PBT: going on from" in out
    trials = trials_of(spec, cut)
    assert states(trials) == {"COMPLETE": 4, "FAIL": 4}
    assert read_population(cut) == read_population(whole)  # as if it had never been killed
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.user_attrs["member"])
    assert [t.user_attrs["retry_of"] for t in done] == [0, 1, 2, 3]  # each member keeps its trial's place


def test_pbt_study_records_schedules_and_finalize_replays_the_best(mnist_dir, tmp_path):
    from hpexp.study.coordinator import search
    from hpexp.study.finalize import finalize

    path = write_spec(
        tmp_path,
        base=[
            "network=linear",
            "regularizer=l2",
            "data.n_train=500",
            "data.n_validation=200",
            "train.epochs=6",
            "train.batch_size=50",
        ],
        search=SPACE_SPEC,
        baseline={"optimizer.eta": 0.5, "regularizer.lmbda": 1.0},
        sampler=PBT,
        n_trials=6,
        workers=2,
    )
    spec = load_spec(str(path))
    search(spec, tmp_path, quiet=True)
    trials = trials_of(spec, tmp_path)
    assert states(trials) == {"COMPLETE": 6}
    assert trials[0].params == {"optimizer.eta": 0.5, "regularizer.lmbda": 1.0}
    for t in trials:
        history = rundir.read_history(Path(t.user_attrs["run_dir"]))
        assert t.value == max(r["val_accuracy"] for r in history)
        assert "test_accuracy" not in history[0]  # the test split stays sealed during the search
        assert "test" not in OmegaConf.load(Path(t.user_attrs["run_dir"]) / "config.yaml").train.monitor
        schedule = t.user_attrs["pbt_schedule"]
        etas = {r["epoch"]: r["eta"] for r in history}
        for entry, nxt in zip(schedule, [*schedule[1:], {"epoch": 7}], strict=False):
            for e in range(entry["epoch"], nxt["epoch"]):
                assert etas[e] == entry["values"]["optimizer.eta"]  # the schedule is what it trained with
    best = max(trials, key=lambda t: t.value)
    from hpexp.study.progress import summary_text
    from hpexp.study.storage import _load

    text = summary_text(_load(spec, tmp_path, parse_space(spec.search), 0, create=False), spec, tmp_path)
    first = best.user_attrs["pbt_schedule"][0]
    assert f"PBT member {best.user_attrs['member']} began as" in text
    assert f"from epoch 1: optimizer.eta={first['values']['optimizer.eta']:.4g}" in text
    result = finalize(spec, tmp_path)
    assert result["best_trial"] == best.number and result["pbt_schedule"] == best.user_attrs["pbt_schedule"]
    for row in result["seeds"]:
        config = OmegaConf.load(Path(row["run_dir"]) / "config.yaml")
        assert config.seed == row["seed"] and not config.train.shared_order
        assert rundir.read_summary(Path(row["run_dir"]))["pbt"]["schedule"] == best.user_attrs["pbt_schedule"]
    # The report draws the lineage and each searched value's schedule, from what the trials recorded.
    from hpexp.report import pbt as report_pbt
    from hpexp.report.pages import study_page
    from hpexp.report.runs import open_study

    page = study_page(str(tmp_path / "studies" / "tiny"))
    assert {"pbt_lineage", "pbt_schedule_optimizer_eta", "pbt_schedule_regularizer_lmbda"} <= set(
        page.figures
    )
    (verdict,) = [text for kind, text in page.blocks if kind == "verdict"]
    began = best.user_attrs["pbt_schedule"][0]["values"]["optimizer.eta"]
    assert f"its lineage began at optimizer.eta={began:g}" in verdict  # not its slot's own draw
    recorded = json.loads((tmp_path / "studies" / "tiny" / "pbt" / "pbt.json").read_text())
    lineage = report_pbt.load_lineage(open_study(str(tmp_path / "studies" / "tiny")))
    want = sorted(recorded["lineage"], key=lambda e: (e["epoch"], e["member"]))
    assert lineage[["epoch", "member", "parent"]].to_dict("records") == [
        {k: e[k] for k in ("epoch", "member", "parent")} for e in want
    ]
    schedules = report_pbt.load_schedules(open_study(str(tmp_path / "studies" / "tiny")))
    assert len(schedules) == 6 * 6 * 2  # members x epochs x searched keys
