"""Residual-width (hidden-dimension) pruning of BERT-family encoders (``prune_hidden``).

A tiny BERT (hidden 32, 2 layers, 4 heads, FFN 64): squeezed equals masked (its
LayerNorms over the kept dims) for MI, L1 and random selection at several sparsities;
the kept hidden dims and their count by hand; the refit of the projections that read the
width; and one federated round trip through the client handlers, where the server
expands squeezed replies back to full width.
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedprune import wire
from fedprune.clients.state import ClientMemory
from fedprune.config import ConfigError, make_config
from fedprune.models.factory import new_model
from fedprune.models.structure import HIDDEN, expand_unit_mask, unit_groups
from fedprune.models.text import TINY_SHAPE, TextClassifier, pack_tokens
from fedprune.pruning.pruner import PruneData
from fedprune.pruning.schedule import CubicSchedule
from fedprune.pruning.squeeze import KeptLayerNorm, masked, squeeze
from fedprune.pruning.structured import unit_sparsity
from fedprune.pruning.units import (
    L1StructuredPruner,
    MIPruner,
    RandomStructuredPruner,
    StructuredPruner,
    post_prune,
)
from helpers import InProcessGrid, new_strategy

pytest.importorskip("transformers")

HIDDEN_GROUP = "net.bert.hidden"
PRUNERS = {"mi": MIPruner, "l1": L1StructuredPruner, "random": RandomStructuredPruner}


def tiny_bert(seed: int = 0, **shape) -> TextClassifier:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, num_labels=2, **{**TINY_SHAPE, "max_position_embeddings": 32, **shape})
    return TextClassifier(BertForSequenceClassification(config)).eval()


def tokens(rows: int, seed: int) -> torch.Tensor:
    """Random packed tokens, some rows padded (padding must not matter)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (rows, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0
    return pack_tokens(ids, mask)


def prune_data(rows: int = 64) -> PruneData:
    x = tokens(rows, 1)
    y = (x[:, 0, 0] % 2).long()  # labels the first token decides: MI has a signal
    return PruneData(x, y, client=0, step=1, base_seed=0)


def pruner(kind: str, **settings) -> StructuredPruner:
    return PRUNERS[kind](CubicSchedule(0.0, 0.9, 1, 1), {"prune_hidden": True, **settings})


def width_by_hand(sparsity: float, exponent: float = 0.33, width: int = 32) -> int:
    return max(1, round(width * (1 - sparsity) ** exponent))


@pytest.mark.parametrize("kind", list(PRUNERS))
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
def test_squeezed_equals_masked_with_the_width_pruned(kind: str, sparsity: float) -> None:
    model = tiny_bert()
    units = pruner(kind).prune(model, None, sparsity, prune_data())
    width = int(units[HIDDEN_GROUP].sum())
    # (1 - s)^0.33 of 32 by hand: 0.5 -> 25.46, 0.7 -> 21.51, 0.9 -> 14.97
    assert width == {0.5: 25, 0.7: 22, 0.9: 15}[sparsity] == width_by_hand(sparsity)
    # heads and FFN neurons share the rest of the budget: the sparsity over the encoder's
    # Linear weights is near the target (integer counts of a tiny model)
    assert unit_sparsity(model, unit_groups(model), units) == pytest.approx(sparsity, abs=0.04)
    small, twin = squeeze(model, units), masked(model, units)
    assert small.net.bert.embeddings.word_embeddings.embedding_dim == width
    assert isinstance(twin.net.bert.encoder.layer[1].output.LayerNorm, KeptLayerNorm)
    inputs = tokens(7, 5)
    with torch.no_grad():
        got, expected = small(inputs), twin(inputs)
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())


@pytest.mark.parametrize("allocation", ["global", "kind"])
def test_other_allocations_keep_the_width_count_and_meet_the_budget(allocation: str) -> None:
    model = tiny_bert()
    units = pruner("mi", mi_allocation=allocation).prune(model, None, 0.7, prune_data())
    assert int(units[HIDDEN_GROUP].sum()) == width_by_hand(0.7)
    assert unit_sparsity(model, unit_groups(model), units) == pytest.approx(0.7, abs=0.04)
    with torch.no_grad():
        inputs = tokens(5, 3)
        assert torch.allclose(squeeze(model, units)(inputs), masked(model, units)(inputs), atol=1e-5)


def test_masked_layernorm_is_not_a_full_layernorm_with_zeros() -> None:
    """Why the twin needs KeptLayerNorm: zeros in the pruned dims change mean and variance."""
    norm = torch.nn.LayerNorm(4)
    kept = torch.tensor([True, False, True, True])
    x = torch.tensor([[1.0, 0.0, 2.0, 6.0]])
    # by hand over the kept dims 1, 2, 6: mean 3, variance (4 + 1 + 9) / 3
    by_hand = torch.tensor([[(1 - 3) / (14 / 3 + 1e-5) ** 0.5, 0.0, (2 - 3) / (14 / 3 + 1e-5) ** 0.5,
                             (6 - 3) / (14 / 3 + 1e-5) ** 0.5]])
    with torch.no_grad():
        assert torch.allclose(KeptLayerNorm(norm, kept)(x), by_hand, atol=1e-6)
        assert not torch.allclose(norm(x) * kept, by_hand, atol=1e-2)


def test_gradual_width_pruning_nests_and_still_squeezes_exactly() -> None:
    model, data = tiny_bert(), prune_data()
    chosen = pruner("mi")
    first = chosen.prune(model, None, 0.5, data)
    second = chosen.prune(model, first, 0.9, data)
    for name, mask in second.items():
        assert not bool((mask & ~first[name]).any()), name  # nested
    assert int(second[HIDDEN_GROUP].sum()) == width_by_hand(0.9)
    with torch.no_grad():
        inputs = tokens(5, 9)
        assert torch.allclose(squeeze(model, second)(inputs), masked(model, second)(inputs), atol=1e-5)


def test_l1_keeps_the_hidden_dims_with_the_largest_weights_by_hand() -> None:
    """Hidden 8, 2 heads, 1 layer, FFN 4, every weight 1; the entries of hidden dim d scaled
    by c_d. Every dim owns as many entries, so its L1 score is c_d times one constant."""
    model = tiny_bert(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=4)
    scale = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0])
    hidden = next(group for group in unit_groups(model) if group.kind == HIDDEN)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for param in params.values():
            param.fill_(1.0)
        for piece in hidden.slices:
            shape = [1] * params[piece.param].dim()
            shape[piece.dim] = 8
            params[piece.param].mul_(scale.view(shape))
    # 0.5: round(8 * 0.5^0.33) = round(6.36) = 6, so the two smallest (c = 1, 1.5: dims 1, 3) go
    units = L1StructuredPruner(CubicSchedule(0.0, 0.5, 1, 1), {"prune_hidden": True}).prune(
        model, None, 0.5, prune_data())
    assert units[HIDDEN_GROUP].nonzero().flatten().tolist() == [0, 2, 4, 5, 6, 7]
    # 0.9: round(8 * 0.1^0.33) = round(3.74) = 4: c = 9, 6, 5, 4 (dims 5, 7, 4, 2)
    units = L1StructuredPruner(CubicSchedule(0.0, 0.9, 1, 1), {"prune_hidden": True}).prune(
        model, None, 0.9, prune_data())
    assert units[HIDDEN_GROUP].nonzero().flatten().tolist() == [2, 4, 5, 7]
    # exponent 1/2: round(8 * 0.1^(1/2)) = round(2.53) = 3: dims 5, 7, 4
    units = L1StructuredPruner(CubicSchedule(0.0, 0.9, 1, 1), {"prune_hidden": True, "hidden_keep_exponent": 0.5}
                               ).prune(model, None, 0.9, prune_data())
    assert units[HIDDEN_GROUP].nonzero().flatten().tolist() == [4, 5, 7]


def test_without_prune_hidden_the_width_is_left_alone() -> None:
    model = tiny_bert()
    units = MIPruner(CubicSchedule(0.0, 0.5, 1, 1), {}).prune(model, None, 0.5, prune_data())
    assert HIDDEN_GROUP not in units
    masks = expand_unit_mask(model, unit_groups(model), units)
    assert not any(".embeddings." in name or "LayerNorm" in name or "pooler" in name for name in masks)
    assert squeeze(model, units).net.bert.embeddings.word_embeddings.embedding_dim == 32


def test_post_prune_refits_the_projections_that_read_the_width() -> None:
    teacher, data = tiny_bert(), prune_data()
    small, units = post_prune(teacher, pruner("mi"), 0.7, data)
    assert int(units[HIDDEN_GROUP].sum()) == width_by_hand(0.7)
    plain = squeeze(teacher, units)
    with torch.no_grad():
        # the refit changed what reads the width: query and FFN input, not only the outputs
        for name in ("net.bert.encoder.layer.0.attention.self.query.weight",
                     "net.bert.encoder.layer.1.intermediate.dense.weight", "net.bert.pooler.dense.weight"):
            assert not torch.equal(small.state_dict()[name], plain.state_dict()[name]), name
        assert torch.isfinite(small(data.x)).all()


# ------------------------------------------------------------------------ federated


@pytest.fixture(scope="module")
def amazon(tmp_path_factory):
    from test_text_models import write_domains

    return write_domains(tmp_path_factory.mktemp("amazon"))


def width_config(amazon, **changes):
    from test_text_models import settings

    return make_config(settings(amazon, **{"prune_hidden": True, "rounds": 2, **changes}))


def test_prune_hidden_needs_a_transformer() -> None:
    with pytest.raises(ConfigError, match="prune_hidden: only transformer models"):
        make_config({"prune_hidden": True})


def test_federated_round_trip_with_the_width_pruned(task_identity, amazon) -> None:
    """Round 1 prunes (width 25 of 32 at sparsity 0.5); the server expands the squeezed
    replies to full width and averages each entry over the clients that kept it; round 2
    sends each client only its kept slices and it trains its squeezed model."""
    cfg = width_config(amazon, methods=["mi"])
    nodes = {1: 0, 2: 1}
    strategy, template = new_strategy(cfg, "mi", nodes)
    grid = InProcessGrid(cfg, dict(nodes))
    arrays = ArrayRecord(template)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    assert not any(reply.has_error() for reply in replies)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.rejected == []
    model = new_model(cfg)
    groups = unit_groups(model)
    units, values, weights = [], [], []
    for reply in replies:
        record = reply.content["arrays"]
        assert wire.UNITS_PREFIX + HIDDEN_GROUP in record
        client = wire.units_in(record, {g.name: g.size for g in groups})
        assert int(client[HIDDEN_GROUP].sum()) == width_by_hand(0.5)
        masks = expand_unit_mask(model, groups, client)
        vocab = len(template["net.bert.embeddings.word_embeddings.weight"])
        assert masks["net.bert.embeddings.word_embeddings.weight"].sum() == vocab * width_by_hand(0.5)
        assert reply.content["metrics"]["sparsity"] == pytest.approx(unit_sparsity(model, groups, client))
        units.append(client)
        values.append(wire.unpack(wire.values_only(record), template, masks))
        weights.append(float(reply.content["metrics"]["num-examples"]))
    merged = {k: torch.from_numpy(v.numpy().copy()) for k, v in arrays.items()}
    assert {k: tuple(v.shape) for k, v in merged.items()} == {k: tuple(v.shape) for k, v in template.items()}
    # per entry: the weighted mean over the clients that kept it; nobody's: the previous value
    for name in ("net.bert.embeddings.word_embeddings.weight", "net.bert.encoder.layer.1.output.LayerNorm.weight",
                 "net.bert.encoder.layer.0.attention.self.query.weight"):
        kept = [expand_unit_mask(model, groups, u)[name] for u in units]
        total = sum(w * k for w, k in zip(weights, kept, strict=True))
        mean = sum(w * k * v[name] for w, k, v in zip(weights, kept, values, strict=True)) / total.clamp_min(1)
        expected = torch.where(total > 0, mean, template[name])
        assert torch.allclose(merged[name], expected, atol=1e-6), name
    assert not torch.equal(units[0][HIDDEN_GROUP], units[1][HIDDEN_GROUP])  # personal widths

    # round 2: only the kept slices go down; the client trains the squeezed model
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), grid))
    for message in messages:
        node = message.metadata.dst_node_id
        mine = units[nodes[node]]
        down = message.content["arrays"]
        assert down["net.bert.embeddings.word_embeddings.weight"].numpy().size == vocab * int(mine[HIDDEN_GROUP].sum())
    replies = grid.send_and_receive(messages)
    assert not any(reply.has_error() for reply in replies)
    strategy.aggregate_train(2, replies)
    assert strategy.rejected == []
    for node in nodes:
        memory = ClientMemory(grid.contexts[node].state, "mi")
        personal = squeeze(new_model(cfg), memory.units())
        assert personal.net.bert.embeddings.word_embeddings.embedding_dim == width_by_hand(0.5)
        assert personal.net.bert.encoder.layer[0].output.LayerNorm.normalized_shape == (width_by_hand(0.5),)
    # evaluation: the personal models are accepted and scored
    messages = list(strategy.configure_evaluate(2, arrays, ConfigRecord(), grid))
    answers = grid.send_and_receive(messages)
    assert not any(answer.has_error() for answer in answers)
    for answer in answers:
        assert 0.0 <= answer.content["metrics"]["accuracy"] <= 1.0


@pytest.mark.parametrize("method", ["mi-post", "l1-structured", "random-structured"])
def test_every_structured_method_prunes_the_width(task_identity, amazon, method: str) -> None:
    cfg = width_config(amazon, methods=[method], rounds=1)
    nodes = {1: 0, 2: 1}
    strategy, template = new_strategy(cfg, method, nodes)
    grid = InProcessGrid(cfg, dict(nodes))
    arrays = ArrayRecord(template)
    replies = grid.send_and_receive(list(strategy.configure_train(1, arrays, ConfigRecord(), grid)))
    arrays, _ = strategy.aggregate_train(1, replies)
    answers = grid.send_and_receive(list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)))
    strategy.aggregate_evaluate(1, answers)
    assert strategy.rejected == []
    for node in nodes:
        if method == "mi-post":  # pruned at evaluation: the reply reports the units
            answer = next(a for a in answers if a.metadata.src_node_id == node)
            found = wire.units_in(answer.content["arrays"], {g.name: g.size for g in unit_groups(new_model(cfg))})
        else:
            found = ClientMemory(grid.contexts[node].state, method).units()
        assert int(found[HIDDEN_GROUP].sum()) == width_by_hand(0.5)
