"""Robust aggregation rules and update clipping against hand-worked values."""

from __future__ import annotations

import pytest
import torch

from fedprune.strategies.rules import (
    AGGREGATION_RULES,
    RuleSettings,
    clip_update,
    masked_median,
    masked_trimmed_mean,
)

T, F = True, False
PREVIOUS = torch.tensor([100.0, 200.0, 300.0, 400.0])
VALUES = [torch.tensor([1.0, 10.0, 5.0, 7.0]),
          torch.tensor([2.0, 20.0, 6.0, 8.0]),
          torch.tensor([9.0, 30.0, 7.0, 9.0]),
          torch.tensor([1000.0, 40.0, 8.0, 10.0])]
MASKS = [torch.tensor([T, T, F, T]),
         torch.tensor([T, T, F, F]),
         torch.tensor([T, F, F, F]),
         torch.tensor([T, T, F, F])]


def test_median_hand_worked() -> None:
    result = masked_median(PREVIOUS, VALUES, MASKS, [1.0, 1.0, 1.0, 100.0])
    # entry 0: all four send 1, 2, 9, 1000 -> mean of the middle two (2 + 9) / 2 = 5.5
    # entry 1: clients 0, 1, 3 send 10, 20, 40 -> 20 (client 2's 30 is not sent)
    # entry 2: nobody sends it -> previous 300
    # entry 3: only client 0 -> 7
    assert result.tolist() == [5.5, 20.0, 300.0, 7.0]
    assert result.dtype == PREVIOUS.dtype


def test_median_ignores_weights_and_one_outlier() -> None:
    # a client claiming 100x the examples does not pull the median; the mean would follow it
    heavy = masked_median(PREVIOUS, VALUES, MASKS, [1.0, 1.0, 1.0, 1e9])
    light = masked_median(PREVIOUS, VALUES, MASKS, [1.0, 1.0, 1.0, 1.0])
    assert torch.equal(heavy, light)


def test_trimmed_mean_hand_worked() -> None:
    values = [torch.tensor([float(v), 1.0]) for v in (1, 2, 3, 4, 100)]
    masks = [None, None, None, None, torch.tensor([T, F])]
    # entry 0: k = 5, trim 0.2 -> drop 1 from each end: (2 + 3 + 4) / 3 = 3
    # entry 1: k = 4 (the last client does not send it), floor(0.8) = 0 -> plain mean 1
    result = masked_trimmed_mean(torch.zeros(2), values, masks, [1.0] * 5, trim=0.2)
    assert result.tolist() == pytest.approx([3.0, 1.0])
    # trim 0.4: drop 2 from each end of 5 -> the median 3; of 4, floor(1.6) = 1 -> (1 + 1) / 2
    result = masked_trimmed_mean(torch.zeros(2), values, masks, [1.0] * 5, trim=0.4)
    assert result.tolist() == pytest.approx([3.0, 1.0])


def test_trimmed_mean_keeps_previous_where_nobody_sends() -> None:
    result = masked_trimmed_mean(PREVIOUS, VALUES, MASKS, [1.0] * 4, trim=0.25)
    # entry 0: k = 4, drop 1 each end -> (2 + 9) / 2; entry 1: k = 3, floor(0.75) = 0 -> 70 / 3
    assert result.tolist() == pytest.approx([5.5, 70.0 / 3, 300.0, 7.0])


def test_median_stays_within_the_honest_range_when_30_percent_send_huge_values() -> None:
    generator = torch.Generator().manual_seed(0)
    honest = [torch.randn(50, generator=generator) for _ in range(7)]
    attackers = [torch.full((50,), 1e6) for _ in range(3)]
    result = masked_median(torch.zeros(50), honest + attackers, [None] * 10, [1.0] * 10)
    low, high = torch.stack(honest).min(0).values, torch.stack(honest).max(0).values
    assert bool(((result >= low) & (result <= high)).all())
    mean = AGGREGATION_RULES["mean"](RuleSettings())(torch.zeros(50), honest + attackers, [None] * 10, [1.0] * 10)
    assert float(mean.min()) > 1e5  # the mean is dragged away


def test_median_of_large_tensors_works_in_chunks() -> None:
    values = [torch.full((3, 2**23), float(v)) for v in (1, 5, 9)]  # 3 x 2^24 > torch.quantile's limit
    assert float(masked_median(torch.zeros(3, 2**23), values, [None] * 3, [1.0] * 3).max()) == 5.0


def test_clip_update_hand_worked() -> None:
    global_state = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}
    values = {"w": torch.tensor([4.0, 5.0]), "b": torch.tensor([0.0])}  # update (3, 4, 0): norm 5
    clipped = clip_update(global_state, values, {}, max_norm=2.5)
    assert clipped["w"].tolist() == pytest.approx([2.5, 3.0])  # 1 + 0.5 * (3, 4)
    assert clip_update(global_state, values, {}, max_norm=10.0) is values  # small enough: unchanged
    # only sent entries count: the second entry was not sent, its update is left out of the norm
    sent = {"w": torch.tensor([T, F])}
    clipped = clip_update(global_state, values, sent, max_norm=1.5)
    assert clipped["w"][0].item() == pytest.approx(2.5)  # update 3 scaled to 1.5
