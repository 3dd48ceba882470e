"""Movement scores and masks, random masks and consensus masks against hand-worked values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedprune.models import MLP
from fedprune.pruning.consensus import consensus_mask
from fedprune.pruning.movement import MovementScores
from fedprune.pruning.random_masks import random_masks

T, F = True, False


# ---- movement scores -------------------------------------------------------------------
def _step(layer: nn.Linear, x: list[float], coefficients: list[float]) -> None:
    """One backward pass of loss = sum_i c_i * (W x)_i, so dL/dW[i, j] = c_i * x_j."""
    layer.zero_grad()
    output = layer(torch.tensor([x]))
    (output * torch.tensor([coefficients])).sum().backward()


def test_movement_scores_two_steps_hand_worked() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    scores = MovementScores(layer, ["weight"])

    # step 1: x = (1, 2), c = (1, -1) -> g1 = [[1, 2], [-1, -2]]
    #         -(g1 * w1) = -[[1, 4], [-3, -8]] = [[-1, -4], [3, 8]]
    _step(layer, [1.0, 2.0], [1.0, -1.0])
    assert layer.weight.grad.tolist() == [[1.0, 2.0], [-1.0, -2.0]]
    scores.accumulate()
    assert scores.scores["weight"].tolist() == [[-1.0, -4.0], [3.0, 8.0]]

    # plain SGD step, lr = 0.5: w2 = w1 - 0.5 * g1 = [[0.5, 1], [3.5, 5]]
    with torch.no_grad():
        layer.weight -= 0.5 * layer.weight.grad
    assert layer.weight.tolist() == [[0.5, 1.0], [3.5, 5.0]]

    # step 2: x = (2, -1), c = (3, 1) -> g2 = [[6, -3], [2, -1]]
    #         -(g2 * w2) = -[[3, -3], [7, -5]] = [[-3, 3], [-7, 5]]
    _step(layer, [2.0, -1.0], [3.0, 1.0])
    assert layer.weight.grad.tolist() == [[6.0, -3.0], [2.0, -1.0]]
    scores.accumulate()
    # S = -(g1 w1) - (g2 w2) = [[-1 - 3, -4 + 3], [3 - 7, 8 + 5]]
    assert scores.scores["weight"].tolist() == [[-4.0, -1.0], [-4.0, 13.0]]

    # top-v with v = round(4 * 0.5) = 2: the scores 13 and -1
    everything = {"weight": torch.ones(2, 2, dtype=torch.bool)}
    assert scores.masks(everything, 0.5)["weight"].tolist() == [[F, T], [F, T]]
    # v = round(4 * 0.75) = 3 keeps 13, -1 and one of the two -4 entries
    masks = scores.masks(everything, 0.25)["weight"]
    assert int(masks.sum()) == 3 and bool(masks[0, 1]) and bool(masks[1, 1])
    # v = round(4 * 0.25) = 1: only the score 13
    assert scores.masks(everything, 0.75)["weight"].tolist() == [[F, F], [F, T]]
    # not magnitude pruning: at v = 2 the |w| = 1 entry is kept and the |w| = 3.5 entry pruned


def test_movement_scores_skip_parameters_without_gradient() -> None:
    layer = nn.Linear(2, 2, bias=False)
    scores = MovementScores(layer, ["weight"])
    scores.accumulate()  # no backward pass yet: grad is None, nothing accumulates
    assert scores.scores["weight"].tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_movement_scores_start_from_stored_scores() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    stored = {"weight": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}
    scores = MovementScores(layer, ["weight"], stored)
    _step(layer, [1.0, 2.0], [1.0, -1.0])
    scores.accumulate()
    # 10 - 1, 20 - 4, 30 + 3, 40 + 8
    assert scores.scores["weight"].tolist() == [[9.0, 16.0], [33.0, 48.0]]


def _scored_model() -> tuple[MLP, MovementScores]:
    torch.manual_seed(0)
    model = MLP(5, 3, [4])  # body.0.weight 4x5 (20), head.weight 3x4 (12)
    names = ["body.0.weight", "head.weight"]
    generator = torch.Generator().manual_seed(1)
    # distinct scores (a random permutation) so "the highest" is unambiguous
    stored = {name: torch.randperm(model.get_parameter(name).numel(), generator=generator)
              .float().reshape(model.get_parameter(name).shape) - 7.0 for name in names}
    return model, MovementScores(model, names, stored)


@pytest.mark.parametrize(("sparsity", "expected"), [(0.7, {"body.0.weight": 6, "head.weight": 4}),
                                                    (0.75, {"body.0.weight": 5, "head.weight": 3}),
                                                    (0.0, {"body.0.weight": 20, "head.weight": 12})])
def test_movement_masks_keep_top_v_per_matrix(sparsity: float, expected: dict[str, int]) -> None:
    # v = round(numel * (1 - s)): 20 * 0.3 = 6, 12 * 0.3 = 3.6 -> 4; 20 * 0.25 = 5, 12 * 0.25 = 3
    model, scores = _scored_model()
    current = {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.scores.items()}
    masks = scores.masks(current, sparsity)
    for name, score in scores.scores.items():
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == score.shape
        assert int(mask.sum()) == expected[name]
        # exactly the highest scores: the v largest values of the permutation
        top = set(torch.sort(score.reshape(-1), descending=True).values[: expected[name]].tolist())
        assert set(score[mask].tolist()) == top


def test_movement_masks_never_revive_pruned_entries() -> None:
    model, scores = _scored_model()
    current = {}
    for name, score in scores.scores.items():
        # prune (in ``current``) the 3 highest-scoring entries and one more: they must stay pruned
        allowed = torch.ones_like(score, dtype=torch.bool)
        order = torch.argsort(score.reshape(-1), descending=True)
        allowed.view(-1)[order[:3]] = False
        allowed.view(-1)[order[-1]] = False
        current[name] = allowed
    masks = scores.masks(current, 0.5)
    for name, score in scores.scores.items():
        mask = masks[name]
        assert not bool((mask & ~current[name]).any()), name  # subset of current
        keep = round(score.numel() * 0.5)  # 10 and 6; both below the 16 / 8 allowed
        assert int(mask.sum()) == keep
        kept, dropped = score[mask], score[current[name] & ~mask]
        assert float(kept.min()) > float(dropped.max())  # the best of the allowed entries

    # a target that would keep more than ``current`` does: exactly ``current`` survives
    masks = scores.masks(current, 0.0)
    for name in current:
        assert torch.equal(masks[name], current[name])


# ---- random masks ----------------------------------------------------------------------
def test_random_masks_exact_counts_and_seeding() -> None:
    torch.manual_seed(0)
    model = MLP(64, 10, [32, 16])  # 32x64 = 2048, 16x32 = 512, 10x16 = 160
    masks = random_masks(model, 0.8, torch.Generator().manual_seed(7))
    assert set(masks) == {"body.0.weight", "body.2.weight", "head.weight"}  # no biases
    # round(n * 0.2): 409.6 -> 410, 102.4 -> 102, 32
    assert {k: int(v.sum()) for k, v in masks.items()} == {
        "body.0.weight": 410, "body.2.weight": 102, "head.weight": 32}
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == model.get_parameter(name).shape

    again = random_masks(model, 0.8, torch.Generator().manual_seed(7))
    other = random_masks(model, 0.8, torch.Generator().manual_seed(8))
    for name in masks:
        assert torch.equal(masks[name], again[name])
        assert not torch.equal(masks[name], other[name])
        # independent draws of 410 out of 2048 overlap in about 410 * 0.2 = 82 entries
    overlap = int((masks["body.0.weight"] & other["body.0.weight"]).sum())
    assert 40 < overlap < 130


def test_random_masks_do_not_depend_on_weights() -> None:
    torch.manual_seed(0)
    first = MLP(64, 10, [32])
    torch.manual_seed(1)
    second = MLP(64, 10, [32])
    a = random_masks(first, 0.5, torch.Generator().manual_seed(3))
    b = random_masks(second, 0.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["body.0.weight"].sum()) == 1024 and int(a["head.weight"].sum()) == 160


# ---- consensus masks -------------------------------------------------------------------
# Three clients over 8 entries: every combination of keep/prune (entry i = bits of i).
#            entry:  0  1  2  3  4  5  6  7
CLIENT_A = [F, T, F, T, F, T, F, T]
CLIENT_B = [F, F, T, T, F, F, T, T]
CLIENT_C = [F, F, F, F, T, T, T, T]
# votes:           0  1  1  2  1  2  2  3


def three_clients() -> list[dict[str, torch.Tensor]]:
    masks = []
    for row, extra in ((CLIENT_A, [[T, F], [F, F]]), (CLIENT_B, [[T, T], [F, F]]), (CLIENT_C, [[T, F], [T, F]])):
        masks.append({"w": torch.tensor(row).reshape(2, 4), "v": torch.tensor(extra)})
    return masks


@pytest.mark.parametrize(("rule", "threshold", "w", "v"), [
    ("vote", 0.5, [F, F, F, T, F, T, T, T], [[T, F], [F, F]]),      # >= 2 of 3
    ("vote", 2 / 3, [F, F, F, T, F, T, T, T], [[T, F], [F, F]]),    # >= 2 of 3 (2/3 itself counts)
    ("vote", 1 / 3, [F, T, T, T, T, T, T, T], [[T, T], [T, F]]),    # >= 1 of 3
    ("vote", 1.0, [F, F, F, F, F, F, F, T], [[T, F], [F, F]]),      # all 3
    ("union", 0.5, [F, T, T, T, T, T, T, T], [[T, T], [T, F]]),
    ("intersection", 0.5, [F, F, F, F, F, F, F, T], [[T, F], [F, F]]),
])
def test_consensus_hand_worked(rule: str, threshold: float, w: list[bool], v: list[list[bool]]) -> None:
    result = consensus_mask(three_clients(), rule, threshold)
    assert set(result) == {"w", "v"}
    assert result["w"].dtype == torch.bool
    assert result["w"].reshape(-1).tolist() == w
    assert result["v"].tolist() == v


def test_consensus_vote_threshold_separates_half_and_two_thirds_with_four_clients() -> None:
    # votes per entry: 0, 1, 2, 3, 4 of 4 clients
    rows = [[F, T, T, T, T], [F, F, T, T, T], [F, F, F, T, T], [F, F, F, F, T]]
    masks = [{"w": torch.tensor(r)} for r in rows]
    assert consensus_mask(masks, "vote", 0.5)["w"].tolist() == [F, F, T, T, T]   # 2/4 >= 0.5
    assert consensus_mask(masks, "vote", 2 / 3)["w"].tolist() == [F, F, F, T, T]  # 3/4 >= 2/3 > 2/4
    assert consensus_mask(masks, "vote", 0.75)["w"].tolist() == [F, F, F, T, T]
    assert consensus_mask(masks, "vote", 0.76)["w"].tolist() == [F, F, F, F, T]


def test_consensus_vote_exact_fraction_of_ten_clients() -> None:
    # 7 of 10 keep entry 0 and 6 of 10 entry 1: threshold 0.7 keeps exactly entry 0 (7/10 = 0.7
    # is not representable in binary floating point; a vote at the threshold still counts)
    masks = [{"w": torch.tensor([i < 7, i < 6])} for i in range(10)]
    assert consensus_mask(masks, "vote", 0.7)["w"].tolist() == [T, F]
    assert consensus_mask(masks, "vote", 0.9)["w"].tolist() == [F, F]
    assert consensus_mask(masks, "vote", 0.6)["w"].tolist() == [T, T]


def test_consensus_unknown_rule_and_no_masks() -> None:
    with pytest.raises(ValueError, match="majority"):
        consensus_mask(three_clients(), "majority")
    with pytest.raises(ValueError):
        consensus_mask([], "median")
    assert consensus_mask([], "union") == {}
