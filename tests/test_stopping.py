"""Early-stopping rules on hand-made histories where the right stop epoch is known."""

from __future__ import annotations

import pytest
from conftest import group_options, load_option

from hpexp.train.stopping import (
    GeneralizationLoss,
    MaxEpochs,
    Never,
    NoImprovement,
    ProgressQuotient,
    UpStrips,
    generalization_loss,
    stalled,
    training_progress,
)


def history(**columns):
    """Records from columns of per-epoch values, e.g. history(val_accuracy=[0.5, 0.6])."""
    n = len(next(iter(columns.values())))
    return [{"epoch": i + 1, **{k: v[i] for k, v in columns.items()}} for i in range(n)]


def stop_epoch(rule, records):
    """The first epoch after which `rule` says stop, as fit() would ask it, or None."""
    for t in range(1, len(records) + 1):
        if rule.check(records[:t]):
            return t
    return None


@pytest.mark.parametrize("option", group_options("stopping"))
def test_every_option_loads_and_never_stops_on_an_improving_history(option):
    rule = load_option("stopping", option)
    records = history(
        val_accuracy=[0.5 + 0.01 * t for t in range(12)],
        val_loss=[1.0 - 0.05 * t for t in range(12)],
        train_loss=[1.0 - 0.06 * t for t in range(12)],
    )
    assert set(rule.requires) <= set(records[0])
    assert stop_epoch(rule, records) in (None, getattr(rule, "epochs", None))


def test_no_improvement_in_n_on_accuracy():
    # best 0.9 at epoch 3; epochs 4..6 do not beat it (a tie is not an improvement)
    records = history(val_accuracy=[0.8, 0.85, 0.9, 0.9, 0.88, 0.89, 0.95])
    assert stop_epoch(NoImprovement(patience=3), records) == 6
    assert stop_epoch(NoImprovement(patience=4), records) is None
    assert "no improvement of val_accuracy in 3 epochs" in NoImprovement(patience=3).check(records[:6])


def test_no_improvement_on_cost_with_min_delta():
    records = history(val_cost=[1.0, 0.8, 0.79, 0.785, 0.70])
    assert stop_epoch(NoImprovement(patience=2, metric="val_cost"), records) is None
    # improvements smaller than 0.05 do not count: best stays 0.8 from epoch 2
    assert stop_epoch(NoImprovement(patience=2, metric="val_cost", min_delta=0.05), records) == 4


def test_generalization_loss():
    records = history(val_loss=[1.0, 0.8, 0.82, 0.83, 0.85, 0.9])
    assert generalization_loss(records[:4], "val_loss") == pytest.approx(100 * (0.83 / 0.8 - 1))
    # GL: 0, 0, 2.5, 3.75, 6.25 -> first above 5 at epoch 5
    assert stop_epoch(GeneralizationLoss(alpha=5.0), records) == 5
    assert stop_epoch(GeneralizationLoss(alpha=15.0), records) is None  # at most 12.5


def test_generalization_loss_on_accuracy_uses_the_error_rate():
    records = history(val_accuracy=[0.90, 0.95, 0.94])  # errors 0.10, 0.05, 0.06: GL = 20
    assert generalization_loss(records, "val_accuracy") == pytest.approx(20.0)
    assert stop_epoch(GeneralizationLoss(alpha=15.0, metric="val_accuracy"), records) == 3


def test_progress_quotient_checks_only_at_strip_ends():
    train = [1.0, 0.5, 0.4, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    val = [1.0, 0.6, 0.5, 0.5, 0.55, 0.6, 0.6, 0.6, 0.6, 0.6]
    records = history(val_loss=val, train_loss=train)
    # epoch 5: GL = 10, P_5 = 1000 (2.4 / (5 * 0.2) - 1) = 1400, PQ = 1/140
    assert training_progress(records[:5], "train_loss", 5) == pytest.approx(1400.0)
    assert stop_epoch(ProgressQuotient(alpha=0.5), records[:9]) is None  # GL > 0 from epoch 5, no strip end
    # epoch 10: GL = 20, P_5 = 0 (the training loss stalled): PQ is infinite
    assert stop_epoch(ProgressQuotient(alpha=0.5), records) == 10
    assert stop_epoch(ProgressQuotient(alpha=0.007), records) == 5


def test_up_strips():
    # strip ends (k=2) at epochs 2, 4, 6, 8: 0.5, 0.6, 0.7, 0.8 -> up in 1, 2, 3 successive strips
    val = [0.6, 0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8]
    records = history(val_loss=val)
    assert stop_epoch(UpStrips(s=1, k=2), records) == 4
    assert stop_epoch(UpStrips(s=2, k=2), records) == 6
    assert stop_epoch(UpStrips(s=3, k=2), records) == 8
    assert stop_epoch(UpStrips(s=4, k=2), records) is None


def test_max_epochs_and_never():
    records = history(val_accuracy=[0.5] * 10)
    assert stop_epoch(MaxEpochs(epochs=7), records) == 7
    assert stop_epoch(Never(), records) is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NoImprovement(patience=0), "patience must be an integer >= 1"),
        (lambda: NoImprovement(patience=2.5), "patience"),
        (lambda: NoImprovement(metric="val_acc"), "metric must be one of"),
        (lambda: NoImprovement(min_delta=-1), "min_delta"),
        (lambda: GeneralizationLoss(alpha=0), "alpha"),
        (lambda: ProgressQuotient(k=0), "k must be"),
        (lambda: ProgressQuotient(train_metric="loss"), "train_metric"),
        (lambda: UpStrips(s=0), "s must be"),
        (lambda: MaxEpochs(epochs=0), "epochs"),
    ],
)
def test_bad_values_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _accuracies(*values, key="val_accuracy"):
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("values", "chance", "is_stalled"),
    [
        ((0.5, 0.098, 0.096, 0.096), 0.1, True),  # the 9.6%: stuck for the last 3
        ((0.09, 0.10, 0.11, 0.12), 0.1, True),  # 0.12 = chance + margin: still chance
        ((0.09, 0.10, 0.11, 0.121), 0.1, False),  # the last one beat it
        ((0.10, 0.10, 0.10, 0.5), 0.1, False),
        ((0.10, 0.10), 0.1, False),  # too few evaluations to tell
        ((0.14, 0.145, 0.13), 0.145, True),  # a small unbalanced split: the common class's share
        ((0.02, 0.03, 0.01), 0.1, True),  # worse than a constant guess is no better
    ],
)
def test_stalled_is_accuracy_at_chance_for_the_last_evaluations(values, chance, is_stalled):
    why = stalled(_accuracies(*values), {"val_accuracy": chance}, 0.02)
    assert (why is not None) == is_stalled
    if is_stalled:
        assert why.startswith("stuck at chance: val_accuracy") and f"{values[-1]:.4f}" in why


def test_stalled_reads_validation_before_training_accuracy():
    history = [{"epoch": e, "train_accuracy": 0.9, "val_accuracy": 0.1} for e in (1, 2, 3)]
    chance = {"train_accuracy": 0.1, "val_accuracy": 0.1}
    assert "val_accuracy" in stalled(history, chance, 0.02)
    train_only = [{"epoch": e, "train_accuracy": 0.1} for e in (1, 2, 3)]
    assert "train_accuracy" in stalled(train_only, chance, 0.02)
