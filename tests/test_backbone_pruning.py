"""Magnitude masks, mask monotonicity, masked training and the bitmap codec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedprune.models import MLP
from fedprune.pruning import (
    apply_masks,
    decode_bitmap,
    encode_bitmap,
    full_masks,
    magnitude_masks,
    mask_sparsity,
    prunable_names,
)
from fedprune.training import train_local

T, F = True, False

# |w| of layer 0 (2x3): .1 .5 .3 / .9 .2 .05 ; layer 1 (2x2): .04 .01 / .02 .07
W0 = [[0.1, -0.5, 0.3], [-0.9, 0.2, 0.05]]
W1 = [[0.04, -0.01], [0.02, -0.07]]


def tiny_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W0))
        model[2].weight.copy_(torch.tensor(W1))
        model[0].bias.fill_(1.0)
        model[2].bias.fill_(1.0)
    return model


def as_lists(masks: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: v.tolist() for k, v in masks.items()}


def test_prunable_names_are_weights_only() -> None:
    model = tiny_model()
    assert prunable_names(model) == ["0.weight", "2.weight"]
    assert set(full_masks(model)) == {"0.weight", "2.weight"}
    assert all(bool(m.all()) for m in full_masks(model).values())


def test_layer_scope_hand_worked() -> None:
    model = tiny_model()
    masks = magnitude_masks(model, full_masks(model), 0.5, "layer")
    # layer 0 keeps round(6 * 0.5) = 3 largest: .9, .5, .3 ; layer 1 keeps 2: .07, .04
    assert as_lists(masks) == {
        "0.weight": [[F, T, T], [T, F, F]],
        "2.weight": [[T, F], [F, T]],
    }


def test_layer_scope_other_sparsity_hand_worked() -> None:
    model = tiny_model()
    masks = magnitude_masks(model, full_masks(model), 0.8, "layer")
    # layer 0: round(6 * 0.2) = round(1.2) = 1 -> .9 ; layer 1: round(4 * 0.2) = round(0.8) = 1 -> .07
    assert as_lists(masks) == {
        "0.weight": [[F, F, F], [T, F, F]],
        "2.weight": [[F, F], [F, T]],
    }


def test_global_scope_hand_worked() -> None:
    model = tiny_model()
    masks = magnitude_masks(model, full_masks(model), 0.5, "global")
    # 10 weights, keep 5 overall: .9 .5 .3 .2 .1 -- all in layer 0; layer 1 (max .07) is emptied
    assert as_lists(masks) == {
        "0.weight": [[T, T, T], [T, T, F]],
        "2.weight": [[F, F], [F, F]],
    }
    assert mask_sparsity(masks) == pytest.approx(0.5)


def test_global_scope_threshold_crosses_layers() -> None:
    model = tiny_model()
    masks = magnitude_masks(model, full_masks(model), 0.3, "global")
    # keep 7: .9 .5 .3 .2 .1 .07 .05 -> layer 0 keeps all 6, layer 1 keeps .07 only
    assert as_lists(masks) == {
        "0.weight": [[T, T, T], [T, T, T]],
        "2.weight": [[F, F], [F, T]],
    }


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.77, 0.9, 0.99])
def test_layer_scope_keeps_exactly_round_n_and_the_largest(sparsity: float) -> None:
    torch.manual_seed(3)
    model = MLP(20, 7, [13])
    masks = magnitude_masks(model, full_masks(model), sparsity, "layer")
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        weight = params[name].detach()
        n = weight.numel()
        assert int(mask.sum()) == round(n * (1 - sparsity)), name
        if 0 < int(mask.sum()) < n:
            # every kept |w| is at least every pruned |w|
            assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


def test_new_mask_is_subset_pruned_never_come_back() -> None:
    model = tiny_model()
    first = magnitude_masks(model, full_masks(model), 0.5, "layer")
    # a pruned entry grows huge (e.g. a server value); it must stay pruned
    with torch.no_grad():
        model[0].weight[0, 0] = 100.0
        model[2].weight[0, 1] = -50.0
    second = magnitude_masks(model, first, 0.75, "layer")
    for name in first:
        assert not bool((second[name] & ~first[name]).any()), name
    # layer 0 keeps round(6 * .25) = round(1.5) = 2 among {.5, .3, .9}: .9 and .5
    assert as_lists(second)["0.weight"] == [[F, T, F], [T, F, F]]
    # layer 1 keeps round(4 * .25) = 1 among {.04, .07}: .07
    assert as_lists(second)["2.weight"] == [[F, F], [F, T]]


def test_subset_also_in_global_scope_and_at_lower_target() -> None:
    torch.manual_seed(0)
    model = MLP(10, 4, [8])
    current = magnitude_masks(model, full_masks(model), 0.6, "global")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) * 10)  # reshuffle magnitudes
    # a lower target than what is already pruned cannot revive entries
    for sparsity, scope in [(0.8, "global"), (0.3, "global"), (0.3, "layer")]:
        new = magnitude_masks(model, current, sparsity, scope)
        for name in current:
            assert not bool((new[name] & ~current[name]).any())
    lower = magnitude_masks(model, current, 0.3, "global")
    assert sum(int(m.sum()) for m in lower.values()) == sum(int(m.sum()) for m in current.values())


def test_unknown_scope_rejected() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(model, full_masks(model), 0.5, "bogus")


def _training_setup() -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = MLP(8, 3, [12])
    x = torch.randn(96, 8)
    y = torch.randint(0, 3, (96,))
    masks = magnitude_masks(model, full_masks(model), 0.6, "layer")
    apply_masks(model, masks)
    return model, masks, x, y


def test_pruned_weights_stay_exactly_zero_through_momentum_training() -> None:
    model, masks, x, y = _training_setup()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # control: the same model trained without masks moves the pruned entries
    control = MLP(8, 3, [12])
    control.load_state_dict(before)
    common = dict(epochs=3, batch_size=16, learning_rate=0.1, momentum=0.9)
    train_local(control, x, y, masks=None, generator=torch.Generator().manual_seed(0), **common)
    control_params = dict(control.named_parameters())
    assert any(bool((control_params[n].detach()[~m] != 0).any()) for n, m in masks.items())

    loss = train_local(model, x, y, masks=masks, generator=torch.Generator().manual_seed(0), **common)
    assert math.isfinite(loss)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        weight = params[name].detach()
        assert bool((weight[~mask] == 0.0).all()), name
        assert bool((weight[mask] != before[name][mask]).any()), name  # kept weights trained
    assert not torch.equal(params["head.bias"].detach(), before["head.bias"])


@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (7,), (2, 3, 4), (8,), (9,), (4, 16)])
def test_bitmap_round_trip_odd_sizes(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=generator) < 0.5
    bits = encode_bitmap(mask)
    n = math.prod(shape)
    assert bits.dtype == np.uint8
    assert bits.size == math.ceil(n / 8)
    back = decode_bitmap(bits, shape)
    assert back.dtype == torch.bool
    assert tuple(back.shape) == shape
    assert torch.equal(back, mask)


def test_bitmap_bit_order_hand_worked() -> None:
    # 9 entries, first and last kept: MSB-first -> 0b10000000, 0b10000000
    mask = torch.tensor([T, F, F, F, F, F, F, F, T])
    assert encode_bitmap(mask).tolist() == [128, 128]
    # a 3x5 mask, row-major: row 0 = 1 0 1 0 1, row 1 = all kept, row 2 = none
    mask = torch.tensor([[T, F, T, F, T], [T, T, T, T, T], [F, F, F, F, F]])
    # bits 10101111 11000000 -> 0xAF, 0xC0
    assert encode_bitmap(mask).tolist() == [0xAF, 0xC0]


def test_decode_rejects_wrong_size_bitmap() -> None:
    bits = encode_bitmap(torch.ones(3, 5, dtype=torch.bool))  # 2 bytes
    with pytest.raises(ValueError):
        decode_bitmap(bits, (5, 5))  # needs 4 bytes
    with pytest.raises(ValueError):
        decode_bitmap(bits, (2, 2))  # needs 1 byte
    with pytest.raises(ValueError):
        decode_bitmap(np.concatenate([bits, bits]), (3, 5))
    with pytest.raises(ValueError):
        decode_bitmap(bits.astype(np.int32), (3, 5))  # wrong dtype
