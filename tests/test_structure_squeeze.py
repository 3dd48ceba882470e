"""Unit groups, expanded masks, squeeze (== masked model) and expand (inverse of squeeze)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedprune.models import CNN, MLP
from fedprune.models.structure import expand_unit_mask, unit_groups, weight_names
from fedprune.pruning.selectors import RandomSelector
from fedprune.pruning.squeeze import expand, masked, squeeze
from fedprune.pruning.structured import ParamBudget, select_units, unit_sparsity

SPARSITIES = (0.3, 0.5, 0.9)


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def _bert_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (6, 10), generator=generator)
    mask = torch.ones(6, 10, dtype=torch.long)
    mask[:3, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _build(kind: str) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    if kind == "mlp":
        return MLP(20, 3, (32, 16)).eval(), torch.randn(40, 20)
    if kind == "cnn":
        return CNN((3, 8, 8), 4, (6, 8), 16).eval(), torch.randn(40, 3, 8, 8)
    return _bert(), _bert_inputs()


def _outputs(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(inputs, dict):
            return model(**inputs).logits
        return model(inputs)


def _random_masks(groups, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Random masks keeping about ``fraction`` of each group (always >= 1 unit)."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for group in groups:
        mask = torch.rand(group.size, generator=generator) < fraction
        mask[torch.randint(group.size, (1,), generator=generator)] = True
        masks[group.name] = mask
    return masks


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_groups_of_each_family() -> None:
    mlp, cnn, bert = MLP(20, 3, (32, 16)), CNN((3, 8, 8), 4, (6, 8), 16), _bert()
    assert [(g.name, g.size) for g in unit_groups(mlp)] == [("body.0", 32), ("body.2", 16)]
    assert [(g.name, g.size) for g in unit_groups(cnn)] == [("features.0", 6), ("features.3", 8), ("fc", 16)]
    prefix = "bert.encoder.layer"
    assert [(g.name, g.size) for g in unit_groups(bert)] == [
        (f"{prefix}.0.heads", 4), (f"{prefix}.0.ffn", 64), (f"{prefix}.1.heads", 4), (f"{prefix}.1.ffn", 64),
        ("bert.hidden", 32),
    ]
    # the residual width: 3 embeddings + 5 LayerNorms (x2) + per layer q/k/v, attention output (x2),
    # FFN in, FFN out (x2), + the pooler input; only the encoder's Linear weights are counted
    hidden = unit_groups(bert)[-1]
    assert len(hidden.slices) == 3 + 5 * 2 + 2 * 8 + 1
    assert {s.param for s in hidden.slices if not s.counted} == {
        "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight", "bert.pooler.dense.weight"}
    # the last conv owns blocks of H*W = 2*2 fc columns
    last_conv = unit_groups(cnn)[1]
    assert [(s.param, s.dim, s.block) for s in last_conv.slices][-1] == ("fc.weight", 1, 4)
    with pytest.raises(TypeError):
        unit_groups(nn.Linear(3, 3))


def test_expand_unit_mask_is_the_outer_product_of_unit_masks() -> None:
    model = MLP(5, 2, (4, 3))
    m0 = torch.tensor([True, False, True, True])
    m1 = torch.tensor([False, True, True])
    masks = expand_unit_mask(model, unit_groups(model), {"body.0": m0, "body.2": m1})
    for i in range(3):
        for j in range(4):
            assert masks["body.2.weight"][i, j] == (m1[i] and m0[j])
    assert torch.equal(masks["body.0.weight"], m0[:, None].expand(4, 5))
    assert torch.equal(masks["body.0.bias"], m0)
    assert torch.equal(masks["head.weight"], m1[None, :].expand(2, 3))
    assert "head.bias" not in masks


def test_cnn_flatten_coupling_masks_channel_blocks() -> None:
    model = CNN((1, 8, 8), 2, (2, 3), 5)  # feature map 3 x 2 x 2
    keep = torch.tensor([True, False, True])
    masks = expand_unit_mask(model, unit_groups(model), {"features.3": keep})
    columns = masks["fc.weight"][0]
    assert torch.equal(columns, torch.tensor([True] * 4 + [False] * 4 + [True] * 4))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bert"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_squeezed_equals_masked(kind: str, sparsity: float) -> None:
    model, inputs = _build(kind)
    groups = unit_groups(model)
    unit_masks = select_units(model, RandomSelector(), sparsity, seed=3)
    small, reference = squeeze(model, unit_masks), masked(model, unit_masks)
    out_small, out_masked = _outputs(small.eval(), inputs), _outputs(reference.eval(), inputs)
    assert (out_small - out_masked).abs().max() <= 1e-5
    assert (out_masked - _outputs(model, inputs)).abs().max() > 1e-4  # the mask did something
    assert _param_count(small) < _param_count(model)
    # every squeezed weight holds exactly the kept entries
    params = dict(small.named_parameters())
    for name, mask in expand_unit_mask(model, groups, unit_masks).items():
        assert params[name].numel() == int(mask.sum())
    assert abs(unit_sparsity(model, groups, unit_masks) - sparsity) < 0.1


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bert"])
def test_squeezed_equals_masked_random_masks(kind: str) -> None:
    model, inputs = _build(kind)
    for seed, fraction in enumerate((0.7, 0.5, 0.1)):
        unit_masks = _random_masks(unit_groups(model), fraction, seed)
        out_small = _outputs(squeeze(model, unit_masks).eval(), inputs)
        out_masked = _outputs(masked(model, unit_masks).eval(), inputs)
        assert (out_small - out_masked).abs().max() <= 1e-5


def test_squeezed_shapes() -> None:
    mlp = MLP(20, 3, (32, 16))
    masks = _random_masks(unit_groups(mlp), 0.5, 0)
    k0, k1 = int(masks["body.0"].sum()), int(masks["body.2"].sum())
    small = squeeze(mlp, masks)
    assert small.body[0].weight.shape == (k0, 20) and small.body[0].bias.shape == (k0,)
    assert small.body[2].weight.shape == (k1, k0)
    assert small.head.weight.shape == (3, k1) and small.head.bias.shape == (3,)

    cnn = CNN((3, 8, 8), 4, (6, 8), 16)
    masks = _random_masks(unit_groups(cnn), 0.5, 1)
    c0, c1, h = (int(masks[name].sum()) for name in ("features.0", "features.3", "fc"))
    small = squeeze(cnn, masks)
    assert small.features[0].weight.shape == (c0, 3, 3, 3)
    assert small.features[3].weight.shape == (c1, c0, 3, 3)
    assert small.fc.weight.shape == (h, c1 * 2 * 2)
    assert small.head.weight.shape == (4, h)
    assert small.feature_map == (c1, 2, 2)

    bert = _bert()
    masks = _random_masks(unit_groups(bert), 0.5, 2)
    width = int(masks["bert.hidden"].sum())
    assert width < 32
    small = squeeze(bert, masks)
    for index in range(2):
        heads = int(masks[f"bert.encoder.layer.{index}.heads"].sum())
        ffn = int(masks[f"bert.encoder.layer.{index}.ffn"].sum())
        layer = small.bert.encoder.layer[index]
        for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
            assert proj.weight.shape == (heads * 8, width) and proj.bias.shape == (heads * 8,)
        assert layer.attention.output.dense.weight.shape == (width, heads * 8)
        assert layer.attention.self.num_attention_heads == heads
        assert layer.intermediate.dense.weight.shape == (ffn, width)
        assert layer.output.dense.weight.shape == (width, ffn)
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            assert norm.weight.shape == norm.bias.shape == (width,) and norm.normalized_shape == (width,)
    embeddings = small.bert.embeddings
    assert embeddings.word_embeddings.weight.shape[1] == embeddings.position_embeddings.weight.shape[1] == width
    assert embeddings.LayerNorm.normalized_shape == (width,)
    assert small.bert.pooler.dense.weight.shape == (32, width)  # the pooler's output and the classifier stay
    assert small.classifier.weight.shape[1] == 32
    # the original is untouched
    assert bert.bert.encoder.layer[0].attention.self.query.weight.shape == (32, 32)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bert"])
def test_expand_restores_kept_entries(kind: str) -> None:
    model, _ = _build(kind)
    unit_masks = _random_masks(unit_groups(model), 0.5, 4)
    small = squeeze(model, unit_masks)
    zeros = expand(small, model, unit_masks)
    reference = masked(model, unit_masks).state_dict()
    assert zeros.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(zeros[name], value), name
    template = expand(small, model, unit_masks, fill="template")
    for name, value in model.state_dict().items():
        assert torch.equal(template[name], value), name


def test_expand_then_squeeze_round_trips_new_values() -> None:
    model = CNN((3, 8, 8), 4, (6, 8), 16)
    unit_masks = _random_masks(unit_groups(model), 0.5, 5)
    small = squeeze(model, unit_masks)
    with torch.no_grad():
        for param in small.parameters():
            param.copy_(torch.randn_like(param))
    full = expand(small.state_dict(), model, unit_masks)
    restored = CNN((3, 8, 8), 4, (6, 8), 16)
    restored.load_state_dict(full)
    again = squeeze(restored, unit_masks)
    for (name, a), (_, b) in zip(small.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_squeeze_rejects_an_empty_group() -> None:
    model = MLP(5, 2, (4,))
    with pytest.raises(ValueError):
        squeeze(model, {"body.0": torch.zeros(4, dtype=torch.bool)})


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bert"])
def test_closed_form_budget_matches_expanded_masks(kind: str) -> None:
    model, _ = _build(kind)
    groups = unit_groups(model)
    budget = ParamBudget(model, groups)
    unit_masks = _random_masks(groups, 0.4, 6)
    counts = [int(unit_masks[g.name].sum()) for g in groups]
    assert math.isclose(budget.sparsity(counts), unit_sparsity(model, groups, unit_masks))
    params = dict(model.named_parameters())
    assert budget.total == sum(params[name].numel() for name in weight_names(model, groups))
