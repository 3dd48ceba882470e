"""taylor: first-order Taylor importance |w * dL/dw| against hand-worked values, its option and state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedprune.config import ConfigError, make_config
from fedprune.pruning.magnitude import magnitude_masks
from fedprune.pruning.pruner import PruneData
from fedprune.pruning.schedule import CubicSchedule
from fedprune.pruning.taylor import TaylorPruner
from fedprune.sim.cli import main

T, F = True, False
SCHEDULE = CubicSchedule(0.0, 0.5, 1, 1)
NO_DATA = PruneData(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def _step(layer: nn.Linear, x: list[float], coefficients: list[float], hook) -> None:
    """One backward pass of loss = sum_i c_i * (W x)_i, so dL/dW[i, j] = c_i * x_j."""
    layer.zero_grad()
    (layer(torch.tensor([x])) * torch.tensor([coefficients])).sum().backward()
    hook()


def trained_layer(decay: float = 0.0, state=None) -> tuple[nn.Linear, TaylorPruner]:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    pruner = TaylorPruner(SCHEDULE, {"taylor_decay": decay})
    hook = pruner.observe(layer, state)
    # step 1: x = (1, 0), c = (1, -1) -> g1 = [[1, 0], [-1, 0]], |g1 * w1| = [[1, 0], [3, 0]]
    _step(layer, [1.0, 0.0], [1.0, -1.0], hook)
    with torch.no_grad():  # SGD, lr 0.5: w2 = [[0.5, 2], [3.5, 4]]
        layer.weight -= 0.5 * layer.weight.grad
    # step 2: x = (2, 0), c = (3, 1) -> g2 = [[6, 0], [2, 0]], |g2 * w2| = [[3, 0], [7, 0]]
    _step(layer, [2.0, 0.0], [3.0, 1.0], hook)
    return layer, pruner


def test_scores_accumulate_w_times_grad_hand_worked() -> None:
    layer, pruner = trained_layer()
    assert layer.weight.tolist() == [[0.5, 2.0], [3.5, 4.0]]
    assert pruner.scores["weight"].tolist() == [[4.0, 0.0], [10.0, 0.0]]
    # keep round(4 * 0.5) = 2: the scores 10 and 4, i.e. the first column ...
    masks = pruner.prune(layer, None, 0.5, NO_DATA)
    assert masks["weight"].tolist() == [[T, F], [T, F]]
    # ... where magnitude pruning keeps the largest |w|, 4 and 3.5, a different set
    current = {"weight": torch.ones(2, 2, dtype=torch.bool)}
    assert magnitude_masks(layer, current, 0.5)["weight"].tolist() == [[F, F], [T, T]]
    assert pruner.prune(layer, None, 0.75, NO_DATA)["weight"].tolist() == [[F, F], [T, F]]


def test_pruned_entries_never_come_back() -> None:
    layer, pruner = trained_layer()
    current = {"weight": torch.tensor([[T, T], [F, T]])}  # the best score (10) is already pruned
    masks = pruner.prune(layer, current, 0.5, NO_DATA)["weight"]
    assert not bool((masks & ~current["weight"]).any())
    assert int(masks.sum()) == 2 and bool(masks[0, 0])  # 4 is the best allowed score (the rest tie at 0)
    # asking for less sparsity than the current mask keeps exactly the current mask
    assert torch.equal(pruner.prune(layer, current, 0.0, NO_DATA)["weight"], current["weight"])


def test_scores_restart_each_round_unless_decay_carries_them() -> None:
    _, fresh = trained_layer(decay=0.0)
    assert fresh.state() == {}  # nothing to keep: the next round starts from zero
    old = {"weight": torch.tensor([[100.0, 0.0], [0.0, 100.0]])}
    _, carried = trained_layer(decay=0.5, state=old)
    # 0.5 * old + this round's [[4, 0], [10, 0]]
    assert carried.scores["weight"].tolist() == [[54.0, 0.0], [10.0, 50.0]]
    assert torch.equal(carried.state()["weight"], carried.scores["weight"])
    _, ignored = trained_layer(decay=0.0, state=old)
    assert ignored.scores["weight"].tolist() == [[4.0, 0.0], [10.0, 0.0]]


def test_option_is_checked_where_it_is_read_and_in_the_config() -> None:
    with pytest.raises(ValueError, match=r"taylor_decay: 1.5 is outside the allowed range \[0, 1\)"):
        TaylorPruner(SCHEDULE, {"taylor_decay": 1.5})
    with pytest.raises(ConfigError, match="^taylor_decay"):
        make_config({"methods": ["taylor"], "taylor_decay": -0.1})
    assert make_config({"methods": ["taylor"], "taylor_decay": 0.3}).option("taylor_decay") == 0.3


def test_cli_rejects_a_bad_taylor_option(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", "--methods", "taylor", "--set", "taylor_decay=2", "--out", str(out)]) == 2
    assert "taylor_decay" in capsys.readouterr().err and not out.exists()
