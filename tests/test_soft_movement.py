"""Soft movement pruning: scores, threshold and masks against hand-worked values; a tiny
in-process federation reaching its sparsity."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn

from fedprune.clients.state import ClientMemory
from fedprune.config import make_config
from fedprune.methods import METHODS
from fedprune.pruning.schedule import CubicSchedule
from fedprune.pruning.soft_movement import CONFIGURED_KEEPS, EFFECTIVE_THRESHOLD, SoftMovementPruner, SoftMovementScores
from helpers import InProcessGrid, new_strategy

T, F = True, False
EVERYTHING = {"weight": torch.ones(2, 2, dtype=torch.bool)}


def _step(layer: nn.Linear, x: list[float], coefficients: list[float]) -> None:
    """One backward pass of loss = sum_i c_i * (W x)_i, so dL/dW[i, j] = c_i * x_j."""
    layer.zero_grad()
    (layer(torch.tensor([x])) * torch.tensor([coefficients])).sum().backward()


def _layer() -> nn.Linear:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    return layer


def _close(tensor: torch.Tensor, expected: list[list[float]]) -> bool:
    return torch.allclose(tensor, torch.tensor(expected), atol=1e-5)


def test_scores_two_sgd_updates_and_threshold_mask_hand_worked() -> None:
    layer = _layer()
    scores = SoftMovementScores(layer, ["weight"], lr=0.1, l1=4.0, optimizer="sgd")
    assert scores.scores["weight"].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # the paper's constant start

    # update 1: g1 = [[1, 2], [-1, -2]], g1 * w1 = [[1, 4], [-3, -8]]
    # penalty gradient lambda * s(1 - s) / numel at S = 0: 4 * 0.25 / 4 = 0.25 everywhere
    # S1 = 0 - 0.1 * ([[1, 4], [-3, -8]] + 0.25) = [[-0.125, -0.425], [0.275, 0.775]]
    _step(layer, [1.0, 2.0], [1.0, -1.0])
    scores.update()
    assert _close(scores.scores["weight"], [[-0.125, -0.425], [0.275, 0.775]])

    with torch.no_grad():  # plain SGD on the weights, lr 0.5: w2 = [[0.5, 1], [3.5, 5]]
        layer.weight -= 0.5 * layer.weight.grad

    # update 2: g2 = [[6, -3], [2, -1]], g2 * w2 = [[3, -3], [7, -5]]
    # sigmoid(S1) = [[0.46879, 0.39532], [0.56832, 0.68459]]
    # penalty = s(1 - s) (4 / 4) = [[0.24903, 0.23904], [0.24533, 0.21592]]
    # S2 = S1 - 0.1 * (g2 w2 + penalty)
    #    = [[-0.125 - 0.32490, -0.425 + 0.27610], [0.275 - 0.72453, 0.775 + 0.47841]]
    #    = [[-0.44990, -0.14890], [-0.44953, 1.25341]]
    _step(layer, [2.0, -1.0], [3.0, 1.0])
    scores.update()
    assert _close(scores.scores["weight"], [[-0.44990, -0.14890], [-0.44953, 1.25341]])
    # sigmoid(S2) = [[0.38938, 0.46284], [0.38947, 0.77789]]

    # tau = 0.45 keeps exactly the two entries above it: at sparsity 0.5 it is used as is
    masks, used, configured = scores.masks(EVERYTHING, 0.5, 0.45)
    assert masks["weight"].tolist() == [[F, T], [F, T]]
    assert configured == 0.5 and used == pytest.approx(0.46284, abs=1e-5)
    # not magnitude pruning: |w| = 1 kept, |w| = 3.5 pruned
    # tau = 0.5 would keep only 0.77789 (a quarter); sparsity 0.5 lowers it to 0.46284
    masks, used, configured = scores.masks(EVERYTHING, 0.5, 0.5)
    assert masks["weight"].tolist() == [[F, T], [F, T]]
    assert configured == 0.25 and used == pytest.approx(0.46284, abs=1e-5)
    # sparsity 0.25 keeps three: -0.44953 beats -0.44990 by 0.00037
    masks, used, _ = scores.masks(EVERYTHING, 0.25, 0.5)
    assert masks["weight"].tolist() == [[F, T], [T, T]] and used == pytest.approx(0.38947, abs=1e-5)
    # tau = 0.3 would keep all four; sparsity 0.75 raises it to 0.77789
    masks, used, configured = scores.masks(EVERYTHING, 0.75, 0.3)
    assert masks["weight"].tolist() == [[F, F], [F, T]] and configured == 1.0
    assert used == pytest.approx(0.77789, abs=1e-5)


def test_adam_first_step_moves_every_score_by_the_learning_rate() -> None:
    # Adam's first step is lr * g / (|g| + eps): -0.1 * sign(g1 * w1 + 0.25)
    # g1 * w1 + 0.25 = [[1.25, 4.25], [-2.75, -7.75]] -> S1 = [[-0.1, -0.1], [0.1, 0.1]]
    layer = _layer()
    scores = SoftMovementScores(layer, ["weight"], lr=0.1, l1=4.0, optimizer="adam")
    _step(layer, [1.0, 2.0], [1.0, -1.0])
    scores.update()
    assert _close(scores.scores["weight"], [[-0.1, -0.1], [0.1, 0.1]])


def test_one_threshold_over_all_matrices_and_no_revival() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    scores = SoftMovementScores(model, ["0.weight", "1.weight"], lr=0.1, l1=0.0, optimizer="sgd",
                                scores={"0.weight": torch.tensor([[5.0, 4.0], [3.0, -1.0]]),
                                        "1.weight": torch.tensor([[2.0, 1.0]])})
    # entry with score 5 already pruned: it must stay pruned
    current = {"0.weight": torch.tensor([[F, T], [T, T]]), "1.weight": torch.tensor([[T, T]])}
    # 6 entries, sparsity 0.5 keeps 3 of the allowed scores {4, 3, -1, 2, 1}: 4, 3 and 2
    masks, used, configured = scores.masks(current, 0.5, 0.5)
    assert masks["0.weight"].tolist() == [[F, T], [T, F]] and masks["1.weight"].tolist() == [[T, F]]
    assert used == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert configured == pytest.approx(4 / 5)  # sigmoid(S) > 0.5 for 4, 3, 2, 1 of the 5 allowed
    # one threshold over both matrices: the second keeps 1 of its 2 entries, the first 2 of its 4


def test_pruner_state_keeps_scores_and_the_threshold_used() -> None:
    layer = _layer()
    pruner = SoftMovementPruner(CubicSchedule(0.0, 0.5, 1, 1), {"soft_movement_optimizer": "sgd"})
    hook = pruner.observe(layer, None)
    _step(layer, [1.0, 2.0], [1.0, -1.0])
    hook()
    pruner.prune(layer, None, 0.5, None)  # type: ignore[arg-type]
    state = pruner.state()
    assert set(state) == {"weight", EFFECTIVE_THRESHOLD, CONFIGURED_KEEPS}
    again = SoftMovementPruner(CubicSchedule(0.0, 0.5, 1, 1), {"soft_movement_optimizer": "sgd"})
    again.observe(layer, state)
    assert torch.equal(again.scores.scores["weight"], state["weight"])
    assert set(again.state()) == set(state)


def test_bad_option_names_itself() -> None:
    with pytest.raises(ValueError, match="soft_movement_optimizer"):
        SoftMovementPruner(CubicSchedule(0.0, 0.5, 1, 1), {"soft_movement_optimizer": "lion"})
    with pytest.raises(ValueError, match="soft_movement_threshold"):
        SoftMovementPruner(CubicSchedule(0.0, 0.5, 1, 1), {"soft_movement_threshold": 1.0})


def test_in_process_federation_reaches_its_sparsity(task_identity) -> None:
    assert "soft-movement" in METHODS and "local-soft-movement" in METHODS
    cfg = make_config(dict(num_clients=2, mlp_widths=[16], partitioner="iid", local_epochs=2, rounds=2,
                           prune_start_round=1, prune_end_round=2, final_sparsity=0.7, methods=["soft-movement"]))
    nodes = {11: 0, 12: 1}
    strategy, template = new_strategy(cfg, "soft-movement", nodes)
    grid = InProcessGrid(cfg, dict(nodes))
    arrays = ArrayRecord(template)
    previous: dict[int, dict[str, torch.Tensor]] = {}
    for server_round, target in ((1, 0.0), (2, 0.7)):
        replies = grid.send_and_receive(list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid)))
        assert replies and not any(r.has_error() for r in replies)
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert strategy.rejected == []
        for node in nodes:
            memory = ClientMemory(grid.contexts[node].state, "soft-movement")
            masks = memory.mask()
            if target == 0.0:  # round 1 is the schedule's start: s(1) = initial = 0, no mask yet
                assert masks is None
                continue
            total = sum(m.numel() for m in masks.values())
            kept = sum(int(m.sum()) for m in masks.values())
            assert kept == round(total * (1 - target))
            state = memory.pruner_state()
            assert 0.0 < float(state[EFFECTIVE_THRESHOLD]) < 1.0
            for name, mask in masks.items():
                assert state[name].shape == mask.shape
                if node in previous:
                    assert not bool((mask & ~previous[node][name]).any())
            previous[node] = masks
