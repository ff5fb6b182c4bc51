"""Ensembles: the plurality vote and the averaged probabilities against hand-made predictions, and an
ensemble run end to end (members, one record, the filters figure, members reused on a second run)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL

from hpexp.train import ensemble, rundir
from hpexp.train.runner import compose


def test_plurality_vote_against_hand_made_predictions():
    predictions = np.array(
        [
            [1, 2, 3, 0, 7],
            [1, 5, 3, 4, 8],
            [2, 5, 9, 4, 9],
            [2, 6, 3, 1, 8],
            [1, 6, 4, 1, 9],
        ]
    )
    # column 0: 1 x3; column 2: 3 x3; column 4: 8 and 9 tie twice each, 8 was voted first;
    # column 1: 5 and 6 tie, 5 first; column 3: 4 and 1 tie, 4 first (member 1, before member 3).
    np.testing.assert_array_equal(ensemble.vote(predictions), [1, 5, 3, 4, 8])


def test_vote_ties_go_to_the_earliest_member_like_counter_most_common():
    from collections import Counter

    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 4, (4, 500))  # small class count: many ties
    want = [Counter(column.tolist()).most_common(1)[0][0] for column in predictions.T]
    np.testing.assert_array_equal(ensemble.vote(predictions), want)


def test_one_member_votes_for_itself():
    np.testing.assert_array_equal(ensemble.vote(np.array([[3, 1, 4]])), [3, 1, 4])


def test_averaged_probabilities_can_disagree_with_the_vote():
    # Two members barely prefer class 0, one is sure of class 1: the vote says 0, the average 1.
    probs = np.array([[[0.55, 0.45]], [[0.55, 0.45]], [[0.0, 1.0]]])
    assert ensemble.vote(probs.argmax(axis=-1))[0] == 0
    assert ensemble.average(probs)[0] == 1


@pytest.mark.parametrize("members", [2])
def test_ensemble_run_writes_a_run_directory(members, mnist_dir, tmp_path):
    overrides = [
        *SMALL,
        f"data.dir={mnist_dir}",
        "network=conv1",
        "network.fc=10",
        "cost=log_likelihood",
        "init=network3",
        "optimizer.eta=0.1",
        "train.epochs=1",
        "train.monitor=[val]",  # the test split would triple the time
        f"+ensemble.members={members}",
    ]
    out = ensemble.run(compose(overrides), tmp_path / "ens", progress=False)
    (record,) = rundir.read_history(out)
    summary = rundir.read_summary(out)
    assert summary["status"] == "completed" and len(summary["members"]) == members
    for split in ("val",):
        for key in (f"{split}_accuracy", f"{split}_accuracy_mean_prob", f"members_{split}_accuracy_mean"):
            assert 0.0 <= record[key] <= 1.0
        accs = [m[f"{split}_accuracy"] for m in summary["members"]]
        assert record[f"members_{split}_accuracy_mean"] == pytest.approx(np.mean(accs))
    seeds = [rundir.read_summary(tmp_path / "ens" / "members" / f"member{k}")["seed"] for k in range(members)]
    assert seeds == [0, 1]  # seed s, member k -> s * members + k
    assert (out / "filters.png").stat().st_size > 0
    # A second run reuses the finished members: same result, no retraining.
    mtime = (out / "members" / "member0" / "weights.npz").stat().st_mtime
    again = ensemble.run(compose(overrides), tmp_path / "ens", progress=False)
    assert rundir.read_history(again) == [record]
    assert (out / "members" / "member0" / "weights.npz").stat().st_mtime == mtime


def test_member_predictions_match_the_member_run(mnist_dir, tmp_path):
    """The reloaded network scores exactly what its own run recorded at the final epoch."""
    from hpexp.train.runner import run

    cfg = compose([*SMALL, f"data.dir={mnist_dir}", "train.epochs=1", "train.save_weights=true"])
    out = run(cfg, tmp_path / "one", progress=False)
    network, _, parts = ensemble.load_network(out)
    from hpexp.train.runner import load_data

    val = load_data(cfg)["val"]
    p = ensemble.probabilities(network, val.x)
    assert np.mean(p.argmax(axis=1) == val.y) == pytest.approx(rundir.read_history(out)[-1]["val_accuracy"])


class _Cut(KeyboardInterrupt):
    pass


def test_an_interrupted_member_goes_on_from_its_checkpoint(mnist_dir, tmp_path):
    """The book's ensemble trains for hours: a member cut mid-training resumes from its checkpoint
    (the epochs before the cut are not trained again) and the ensemble equals an uncut one."""
    overrides = [
        *SMALL,
        f"data.dir={mnist_dir}",
        "train.epochs=3",
        "train.monitor=[val]",
        "+ensemble.members=2",
    ]
    whole = ensemble.run(compose(overrides), tmp_path / "whole", progress=False)

    cfg = compose(overrides)
    calls = []

    def cut_in_epoch_3(record):
        calls.append(record["epoch"])
        if record["epoch"] == 3 and len(calls) > 3:  # member 1, after its epoch-2 checkpoint
            raise _Cut

    with pytest.raises(_Cut):
        ensemble.run(cfg, tmp_path / "cut", on_epoch=cut_in_epoch_3, progress=False)
    member1 = tmp_path / "cut" / "members" / "member1"
    before = rundir.read_history(member1)
    assert (member1 / rundir.CHECKPOINT).exists() and [r["epoch"] for r in before] == [1, 2, 3]
    again = ensemble.run(cfg, tmp_path / "cut", progress=False)
    resumed = rundir.read_history(member1)
    assert [r["seconds"] for r in resumed[:2]] == [r["seconds"] for r in before[:2]]  # kept, not retrained
    assert rundir.read_history(again) == rundir.read_history(whole)
    for k in range(2):
        a = np.load(tmp_path / "cut" / "members" / f"member{k}" / "weights.npz")
        b = np.load(tmp_path / "whole" / "members" / f"member{k}" / "weights.npz")
        assert all(np.array_equal(a[f], b[f]) for f in a.files)
