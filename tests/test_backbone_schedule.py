"""Cubic sparsity schedule (Zhu & Gupta 2017) against hand-worked values."""

from __future__ import annotations

import pytest

from fedprune.pruning import CubicSchedule, cubic_sparsity

# initial 0, final 0.8, start 1, end 4 (n*dt = 3):
#   s_t = 0.8 + (0 - 0.8) * (1 - (t - 1) / 3) ** 3
#   t=2: 0.8 * (1 - (2/3)^3) = 0.8 * 19/27 = 15.2/27
#   t=3: 0.8 * (1 - (1/3)^3) = 0.8 * 26/27 = 20.8/27
HAND = [
    (0, 0.0),            # before start -> initial
    (1, 0.0),            # at start -> initial
    (2, 0.8 * 19 / 27),  # 0.562962...
    (3, 0.8 * 26 / 27),  # 0.770370...
    (4, 0.8),            # at end -> final
    (5, 0.8),            # after end -> final
    (100, 0.8),
]


@pytest.mark.parametrize(("step", "expected"), HAND)
def test_cubic_sparsity_hand_worked(step: int, expected: float) -> None:
    assert cubic_sparsity(step, 0.0, 0.8, 1, 4) == pytest.approx(expected, abs=1e-12)


def test_hand_worked_decimals() -> None:
    assert cubic_sparsity(2, 0.0, 0.8, 1, 4) == pytest.approx(0.562962962962963, abs=1e-12)
    assert cubic_sparsity(3, 0.0, 0.8, 1, 4) == pytest.approx(0.770370370370370, abs=1e-12)


def test_nonzero_initial_sparsity() -> None:
    # initial 0.2, final 0.9, start 0, end 10; halfway: 0.9 + (0.2 - 0.9) * 0.5^3 = 0.9 - 0.0875
    assert cubic_sparsity(5, 0.2, 0.9, 0, 10) == pytest.approx(0.8125, abs=1e-12)
    assert cubic_sparsity(0, 0.2, 0.9, 0, 10) == pytest.approx(0.2)
    assert cubic_sparsity(-3, 0.2, 0.9, 0, 10) == pytest.approx(0.2)
    assert cubic_sparsity(10, 0.2, 0.9, 0, 10) == pytest.approx(0.9)


def test_start_equals_end_reaches_final() -> None:
    assert cubic_sparsity(2, 0.0, 0.8, 2, 2) == pytest.approx(0.8)
    assert cubic_sparsity(1, 0.0, 0.8, 2, 2) == pytest.approx(0.0)


def test_monotone_and_bounded() -> None:
    values = [cubic_sparsity(t, 0.1, 0.95, 3, 17) for t in range(0, 25)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert min(values) == pytest.approx(0.1) and max(values) == pytest.approx(0.95)
    # cubic: most of the pruning happens early; the first half covers 1 - 1/8 of the way
    half = cubic_sparsity(10, 0.1, 0.95, 3, 17)
    assert half == pytest.approx(0.1 + (0.95 - 0.1) * 7 / 8)


def test_schedule_sparsity_matches_function() -> None:
    schedule = CubicSchedule(initial=0.0, final=0.8, start=1, end=4)
    for step, expected in HAND:
        assert schedule.sparsity(step) == pytest.approx(expected, abs=1e-12)


def test_prunes_at_frequency_two() -> None:
    # start 1, end 6, every 2 steps: 1, 3, 5 and always the end step 6
    schedule = CubicSchedule(initial=0.0, final=0.8, start=1, end=6, frequency=2)
    assert [t for t in range(0, 10) if schedule.prunes_at(t)] == [1, 3, 5, 6]
    # end on the grid: 1, 3, 5
    schedule = CubicSchedule(initial=0.0, final=0.8, start=1, end=5, frequency=2)
    assert [t for t in range(0, 10) if schedule.prunes_at(t)] == [1, 3, 5]


def test_prunes_at_frequency_one_and_single_step() -> None:
    schedule = CubicSchedule(initial=0.0, final=0.5, start=2, end=4)
    assert [t for t in range(0, 8) if schedule.prunes_at(t)] == [2, 3, 4]
    schedule = CubicSchedule(initial=0.0, final=0.5, start=3, end=3, frequency=5)
    assert [t for t in range(0, 8) if schedule.prunes_at(t)] == [3]
