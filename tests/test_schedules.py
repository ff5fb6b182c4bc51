"""Learning-rate schedules on hand-made histories."""

from __future__ import annotations

import pytest
from conftest import group_options, load_option

from hpexp.train.schedules import Book, Constant, Exponential, StepDecay


def history(accuracies):
    return [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(accuracies)]


@pytest.mark.parametrize("option", group_options("schedule"))
def test_every_option_starts_at_eta0(option):
    schedule = load_option("schedule", option)
    assert schedule.eta(0.5, []) == 0.5
    assert schedule.check([]) is None


def test_constant():
    assert Constant().eta(0.3, history([0.1] * 50)) == 0.3


def test_step_decay():
    s = StepDecay(step=20, factor=0.1)
    assert [s.eta(0.25, history([0.5] * t)) for t in (0, 19, 20, 39, 40)] == pytest.approx(
        [0.25, 0.25, 0.025, 0.025, 0.0025]
    )


def test_exponential():
    assert Exponential(decay=0.9).eta(1.0, history([0.5] * 3)) == pytest.approx(0.729)


def test_book_rule_halves_when_no_improvement_in_n_fires():
    s = Book(n=3)
    acc = [0.5, 0.6, 0.6, 0.6, 0.6]  # best at epoch 2; epochs 3, 4, 5 no better: fires after epoch 5
    assert [s.eta(1.0, history(acc[:t])) for t in range(6)] == [1.0] * 5 + [0.5]
    # after a firing the count starts again; a new best resets it too
    acc += [0.6, 0.7, 0.7, 0.7, 0.7]
    assert s.firings(history(acc)) == 2  # epochs 6, 8 -> count 1, then 0 (best at 7), 8 9 10 -> fires
    assert s.eta(0.4, history(acc)) == pytest.approx(0.1)


def test_book_rule_ends_training_at_one_128th():
    s = Book(n=2)  # a flat history fires every 2 epochs after the first: at 3, 5, ..., 15
    flat = history([0.5] * 20)
    stop = next(t for t in range(1, 21) if s.check(flat[:t]))
    assert stop == 15 and s.firings(flat[:15]) == 7
    assert s.eta(1.0, flat[:14]) == pytest.approx(1 / 64)
    assert "1/128" not in s.check(flat[:15]) and "0.5^7" in s.check(flat[:15])
    assert Book(n=2, factor=0.1, floor=0.001).firings_to_stop == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Book(factor=1.0), "never falls"),
        (lambda: Book(factor=0.0), "factor"),
        (lambda: Book(floor=0.0), "floor"),
        (lambda: Book(floor=1.5), "floor"),
        (lambda: Book(n=0), "n "),
        (lambda: StepDecay(step=0), "step"),
        (lambda: StepDecay(factor=1.5), "factor"),
        (lambda: Exponential(decay=0), "decay"),
    ],
)
def test_bad_values_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()
