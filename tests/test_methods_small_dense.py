"""The small-dense baseline has about the sparse models' kept parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedprune.config import make_config
from fedprune.data import load_dataset
from fedprune.methods import METHODS
from fedprune.models import CNN, MLP
from fedprune.models.factory import new_model, sparse_kept_parameters
from fedprune.models.small_dense import count, shrink_widths


def kept_by_hand(model: nn.Module, sparsity: float) -> int:
    """Linear/Conv weights keep round(n * (1 - s)); biases stay dense."""
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            total += round(module.weight.numel() * (1 - sparsity))
            total += module.bias.numel() if module.bias is not None else 0
        else:
            assert not list(module.parameters(recurse=False)), type(module)  # nothing else holds parameters
    return total


# default MLP 64-128-64-10 at 0.8: weights 8192, 8192, 640 keep 1638, 1638, 128; biases 128 + 64 + 10
# CNN 16/32 channels, hidden 64 at 0.8: conv 144 -> 29 (+16), conv 4608 -> 922 (+32),
#   fc 128x64 = 8192 -> 1638 (+64), head 640 -> 128 (+10)
@pytest.mark.parametrize(("model", "kind", "expected"), [("mlp", MLP, 3606), ("cnn", CNN, 2839)])
def test_small_dense_matches_sparse_kept_count(model: str, kind: type, expected: int) -> None:
    cfg = make_config({"model": model})
    assert cfg.final_sparsity == 0.8
    full = new_model(cfg)
    assert kept_by_hand(full, cfg.final_sparsity) == expected
    assert sparse_kept_parameters(cfg) == expected

    small = new_model(cfg, "small-dense")
    assert isinstance(small, kind)
    size = count(small)
    assert size < count(full)
    assert abs(size - expected) <= 0.02 * expected, (size, expected)
    # same inputs and outputs as the full model
    x = torch.rand(3, 64)
    assert small(x).shape == full(x).shape == (3, 10)
    # every other method trains the configured model
    assert {METHODS[m].model for m in METHODS if m != "small-dense"} == {"full"}
    assert count(new_model(cfg, "full")) == count(full)
    with pytest.raises(ValueError, match="variant"):
        new_model(cfg, "fedavg")


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_small_dense_is_the_closest_common_scaling(model: str) -> None:
    """No common width factor f gives a count closer to the target (checked on a fine grid)."""
    cfg = make_config({"model": model})
    widths = [*cfg.cnn_channels, cfg.cnn_hidden] if model == "cnn" else list(cfg.mlp_widths)
    target = sparse_kept_parameters(cfg)
    size = count(new_model(cfg, "small-dense"))
    _, info = load_dataset(cfg.dataset)

    def build(c: tuple[int, ...]) -> nn.Module:
        if model == "cnn":
            return CNN(info.input_shape, info.num_classes, c[:-1], c[-1])
        return MLP(64, info.num_classes, c)

    candidates = {tuple(max(1, round(w * k / 2000)) for w in widths) for k in range(1, 2001)}
    best = min(abs(count(build(c)) - target) for c in candidates)
    assert abs(size - target) == best


def test_shrink_widths_hand_worked() -> None:
    # a "model" with w0 * w1 parameters: widths (10, 10), target 25 -> f = 0.5 gives (5, 5) exactly
    def build(widths: list[int]) -> nn.Module:
        return nn.Linear(widths[0], widths[1], bias=False)

    assert shrink_widths(build, [10, 10], 25) == [5, 5]
    assert shrink_widths(build, [10, 10], 100) == [10, 10]
    assert shrink_widths(build, [10, 20], 1) == [1, 1]  # widths never drop below 1
