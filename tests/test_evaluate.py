"""`hpexp eval`: a run's saved weights scored again give the numbers the run recorded."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL
from test_cli import hpexp

from hpexp.train import rundir
from hpexp.train.evaluate import evaluate_run
from hpexp.train.runner import ConfigError, compose, run


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """A run without restore_best that monitored test too, so its last record is the oracle."""
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = compose([*SMALL, "train.save_weights=true", "train.monitor=[train,val,test]"])
    return run(cfg, out, progress=False)


def test_val_equals_the_runs_last_validation_record(trained):
    last = rundir.read_history(trained)[-1]
    result = evaluate_run(trained, "val")
    assert result["n"] == 200
    assert result["val_accuracy"] == last["val_accuracy"]
    assert result["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert not (trained / "eval_test.json").exists()  # the test split only when asked


def test_test_split_is_scored_when_asked_and_every_look_is_recorded(trained, tmp_path):
    last = rundir.read_history(trained)[-1]
    first = hpexp("eval", "split=test", str(trained), cwd=tmp_path)  # options in any order
    assert f"test accuracy {100 * last['test_accuracy']:.2f}%" in first.stdout
    hpexp("eval", str(trained), "split=test", cwd=tmp_path)
    looks = json.loads((trained / "eval_test.json").read_text())
    assert [look["test_accuracy"] for look in looks] == [last["test_accuracy"]] * 2
    assert looks[0]["n"] == 10_000


def test_data_overrides_change_the_split(trained):
    result = evaluate_run(trained, "val", ["data.n_validation=50"])
    assert result["n"] == 50 and result["data"]["n_validation"] == 50


@pytest.mark.parametrize(
    ("split", "overrides", "message"),
    [
        ("valid", [], "split must be one of ['train', 'val', 'test'], got 'valid'"),
        ("val", ["network.sizes=[784,10]"], "takes split=val|test and data overrides"),
        ("val", ["data.nope=1"], "data.nope is not a key of the run's data config"),
    ],
)
def test_bad_input_is_refused(trained, split, overrides, message):
    with pytest.raises(ConfigError) as e:
        evaluate_run(trained, split, overrides)
    assert message in str(e.value)


def test_a_run_without_weights_names_the_setting(mnist_dir, tmp_path):
    out = run(compose([*SMALL, "train.epochs=1"]), tmp_path / "run", progress=False)
    result = hpexp("eval", str(out), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "train.save_weights=true" in result.stderr


def test_finalize_scores_with_the_evaluation_masks(mnist_dir, tmp_path):
    """network3's dropout (inverted: false) scales weighted inputs at evaluation: finalize's test
    score of the saved weights must equal the test accuracy the run itself recorded."""
    from hpexp.data import mnist as data
    from hpexp.study.finalize import _score

    cfg = compose(
        [
            *SMALL,
            "regularizer=dropout",
            "regularizer.p=0.5",
            "regularizer.inverted=false",
            "train.save_weights=true",
            "train.monitor=[train,val,test]",
        ]
    )
    out = run(cfg, tmp_path / "run", progress=False)
    test = data.load_splits(cfg.data.dir, n_train=cfg.data.n_train, n_validation=cfg.data.n_validation)[
        "test"
    ]
    last = rundir.read_history(out)[-1]
    assert _score(cfg, out, test)["test_accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-12)
