"""Every registered model family, through its adapter: squeezed equals masked, names are real."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedprune.models import CNN, FAMILIES, MLP, expand_unit_mask, family_named, family_of, find_family, unit_groups
from fedprune.models.text import TextClassifier, pack_tokens
from fedprune.pruning.masks import prunable_names
from fedprune.pruning.squeeze import masked, squeeze


def tiny_bert() -> TextClassifier:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=24, max_position_embeddings=32, num_labels=3)
    return TextClassifier(BertForSequenceClassification(config)).eval()


def bert_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (5, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0  # padding must not matter either
    return pack_tokens(ids, mask)


#: one small model and a batch of inputs per family: a family without a sample fails below
SAMPLES = {
    "mlp": lambda: (MLP(10, 3, [12, 8]), torch.randn(6, 10, generator=torch.Generator().manual_seed(1))),
    "cnn": lambda: (CNN((1, 8, 8), 3, [4, 6], 10), torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))),
    "transformer": lambda: (tiny_bert(), bert_inputs()),
}


def test_every_family_has_a_sample_here() -> None:
    assert {family.name for family in FAMILIES} == set(SAMPLES)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_the_family_owns_its_models_and_names_real_tensors(name: str) -> None:
    torch.manual_seed(0)
    model, _ = SAMPLES[name]()
    family = family_named(name)
    assert family_of(model) is family
    state = model.state_dict()
    params = dict(model.named_parameters())
    assert set(prunable_names(model)) <= set(params) and all(params[n].dim() >= 2 for n in prunable_names(model))
    assert family.head_names(model) and set(family.head_names(model)) <= set(state)
    assert set(family.embedding_names(model)) <= set(state)
    for group in unit_groups(model):
        assert {piece.param for piece in group.slices} <= set(params)


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_squeezed_equals_masked_through_the_adapter(name: str, keep: float) -> None:
    torch.manual_seed(0)
    model, inputs = SAMPLES[name]()
    model.eval()
    generator = torch.Generator().manual_seed(int(keep * 100))
    units = {}
    for group in unit_groups(model):
        mask = torch.rand(group.size, generator=generator) < keep
        mask[int(torch.randint(group.size, (1,), generator=generator))] = True  # every group keeps a unit
        units[group.name] = mask
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, twin = squeeze(model, units), masked(model, units)
    with torch.no_grad():
        expected = twin(inputs)
        got = small(inputs)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    # the squeezed model holds exactly the kept entries, and the original is untouched
    kept = sum(int(m.sum()) for m in expand_unit_mask(model, unit_groups(model), units).values())
    owned = sum(m.numel() for m in expand_unit_mask(model, unit_groups(model), units).values())
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in model.parameters()) - owned + kept
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_token_mask_only_for_packed_text() -> None:
    bert, inputs = SAMPLES["transformer"]()
    family = family_of(bert)
    assert torch.equal(family.token_mask(bert, inputs), inputs[:, 1])
    mlp, x = SAMPLES["mlp"]()
    assert family_of(mlp).token_mask(mlp, x) is None


def test_models_no_family_knows() -> None:
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert find_family(plain) is None
    assert prunable_names(plain) == ["0.weight", "2.weight"]  # unstructured pruning still works
    with pytest.raises(TypeError, match="no model family knows Sequential"):
        unit_groups(plain)
