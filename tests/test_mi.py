"""MI estimators against closed forms, and structured selection (MI, L1, random)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedprune.models import CNN, MLP
from fedprune.models.structure import unit_groups
from fedprune.pruning.mi import BinnedMI, GaussianMI, greedy_order
from fedprune.pruning.selectors import L1Selector, MISelector, RandomSelector
from fedprune.pruning.structured import (
    ParamBudget,
    collect_activations,
    global_counts,
    kind_counts,
    select_units,
    unit_sparsity,
)

N = 20_000


def _bivariate(rho: float, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    return x, rho * x + math.sqrt(1 - rho**2) * noise


def _exact_bivariate(rho: float, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal samples whose *sample* correlation is exactly ``rho`` (moments fixed)."""
    x, noise = _bivariate(0.0, n, seed)
    x = x - x.mean()
    noise = noise - noise.mean()
    noise = noise - (noise @ x) / (x @ x) * x
    x, noise = x / x.pow(2).mean().sqrt(), noise / noise.pow(2).mean().sqrt()
    return x, rho * x + math.sqrt(1 - rho**2) * noise


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_gaussian_matches_closed_form(rho: float) -> None:
    # With the sample moments pinned, only the estimator (formula, shrinkage) can err.
    x, y = _exact_bivariate(rho)
    truth = -0.5 * math.log(1 - rho**2)
    assert abs(GaussianMI().mi(x, y) - truth) < 0.01 * truth


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_gaussian_on_raw_samples(rho: float) -> None:
    # Sampling error of the correlation (sd (1 - rho^2) / sqrt(n)) alone moves the MI of
    # rho = 0.3 by about 4.5 % (1 sd) at n = 20,000, so average 4 seeds there.
    truth = -0.5 * math.log(1 - rho**2)
    seeds = range(4) if rho < 0.5 else range(1)
    value = sum(GaussianMI().mi(*_bivariate(rho, seed=s)) for s in seeds) / len(seeds)
    assert abs(value - truth) < 0.05 * truth


def test_gaussian_independent_is_zero() -> None:
    x, _ = _bivariate(0.0, seed=1)
    _, y = _bivariate(0.0, seed=2)
    assert GaussianMI().mi(x, y) < 0.01
    assert float(GaussianMI().scores(x[:, None], y)[0]) < 0.01


def test_gaussian_multivariate_adds_independent_pairs() -> None:
    x1, y1 = _bivariate(0.5, seed=3)
    x2, y2 = _bivariate(0.8, seed=4)
    truth = -0.5 * math.log(1 - 0.25) - 0.5 * math.log(1 - 0.64)
    value = GaussianMI().mi(torch.stack([x1, x2], 1), torch.stack([y1, y2], 1))
    assert abs(value - truth) < 0.05 * truth


def test_gaussian_labels_is_pooled_within_class_formula() -> None:
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (N,), generator=generator)
    x = labels.double() * 0.7 + torch.randn(N, generator=generator, dtype=torch.float64)
    within = sum(((x[labels == c] - x[labels == c].mean()) ** 2).sum() for c in range(3)) / N
    truth = 0.5 * math.log(float(x.var(unbiased=False) / within))
    assert abs(GaussianMI(shrinkage=0.0).mi(x, labels) - truth) < 1e-6


def test_gaussian_scores_equal_columnwise_mi_and_handle_dead_units() -> None:
    generator = torch.Generator().manual_seed(6)
    target = torch.randn(500, 3, generator=generator)
    units = torch.cat([target @ torch.randn(3, 4, generator=generator), torch.zeros(500, 1)], 1)
    units[:, :4] += torch.randn(500, 4, generator=generator)
    estimator = GaussianMI(shrinkage=0.01)
    scores = estimator.scores(units, target)
    for j in range(5):
        assert abs(float(scores[j]) - estimator.mi(units[:, j], target)) < 1e-4
    assert float(scores[4]) == 0.0 and torch.isfinite(scores).all()


def test_binned_is_monotone_in_rho_and_zero_when_independent() -> None:
    values = [BinnedMI().mi(*_bivariate(rho, seed=7)) for rho in (0.0, 0.3, 0.6, 0.9)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert abs(values[0]) < 0.01
    # coarser than the truth (binning loses information) but in the right range
    assert 0.5 * -0.5 * math.log(1 - 0.81) < values[-1] < -0.5 * math.log(1 - 0.81)


def test_miller_madow_removes_small_sample_bias() -> None:
    # plug-in bias under independence is (8 - 1)^2 / (2 n) = 0.049 at n = 500
    pairs = [(_bivariate(0.0, 500, seed)[0], _bivariate(0.0, 500, seed + 100)[0]) for seed in range(10)]
    corrected = sum(BinnedMI().mi(x, y) for x, y in pairs) / len(pairs)
    plug_in = sum(BinnedMI(miller_madow=False).mi(x, y) for x, y in pairs) / len(pairs)
    assert abs(corrected) < 0.01 and plug_in > 0.03


def test_binned_with_labels_and_scores() -> None:
    generator = torch.Generator().manual_seed(8)
    labels = torch.randint(0, 2, (N,), generator=generator)
    informative = labels.double() * 2 + torch.randn(N, generator=generator, dtype=torch.float64)
    noise = torch.randn(N, generator=generator, dtype=torch.float64)
    scores = BinnedMI().scores(torch.stack([informative, noise], 1), labels)
    assert scores[0] > 0.2 and abs(float(scores[1])) < 0.01
    assert abs(float(scores[0]) - BinnedMI().mi(informative, labels)) < 1e-6


def test_greedy_skips_a_redundant_copy() -> None:
    generator = torch.Generator().manual_seed(9)
    a, b, noise = torch.randn(3, 4000, generator=generator)
    target = a + 0.6 * b + 0.1 * torch.randn(4000, generator=generator)
    copy = a + 0.01 * torch.randn(4000, generator=generator)
    units = torch.stack([a, copy, b, noise], 1)
    plain = torch.argsort(GaussianMI().scores(units, target), descending=True)
    assert set(plain[:2].tolist()) == {0, 1}  # marginal MI ranks the copy second
    order, gains = greedy_order(units, target)
    assert order[0] in (0, 1) and order[1] == 2
    assert abs(float(gains[0]) - float(GaussianMI(shrinkage=0.0).scores(units, target).max())) < 1e-4
    assert gains[3] < 0.01


def _copy_mlp() -> tuple[MLP, torch.Tensor, torch.Tensor]:
    """Inputs x0 = strong label signal, x1 = weak label signal, x2, x3 = noise.

    Layer 1 copies (x3, x0, x1, x2) (+5 so ReLU is the identity); layer 2 copies
    (layer-1 unit 2 = weak signal, layer-1 unit 3 = noise).
    """
    generator = torch.Generator().manual_seed(10)
    labels = torch.randint(0, 2, (1000,), generator=generator)
    x = torch.randn(1000, 4, generator=generator) * 0.5
    x[:, 0] += 2.0 * labels
    x[:, 1] += 0.5 * labels
    model = MLP(4, 2, (4, 2))
    with torch.no_grad():
        model.body[0].weight.copy_(torch.eye(4)[[3, 0, 1, 2]])
        model.body[0].bias.fill_(5.0)
        model.body[2].weight.copy_(torch.eye(4)[[2, 3]])
        model.body[2].bias.zero_()
    return model, x, labels


@pytest.mark.parametrize("estimator, greedy", [("gaussian", False), ("binned", False), ("gaussian", True)])
def test_mi_selection_is_top_down(estimator: str, greedy: bool) -> None:
    model, x, labels = _copy_mlp()
    masks = select_units(model, MISelector(estimator, greedy), 0.75, x, labels)
    # top layer: the weak-signal unit beats the noise unit (scored against the labels)
    assert masks["body.2"].tolist() == [True, False]
    # layer 1: scored against the kept unit above (a copy of unit 2), not the labels,
    # so the strong-signal unit 1 loses to unit 2
    assert masks["body.0"].tolist() == [False, False, True, False]
    assert unit_sparsity(model, unit_groups(model), masks) == 0.75


def test_mi_selection_keeps_informative_over_noise_unit() -> None:
    model, x, labels = _copy_mlp()
    model.body = model.body[:2]
    model.head = nn.Linear(4, 2)
    masks = select_units(model, MISelector(), 0.75, x, labels)
    assert masks["body.0"].tolist() == [False, True, False, False]


@pytest.mark.parametrize("allocation", ["uniform", "global", "kind"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_target_sparsity_is_met(kind: str, allocation: str) -> None:
    torch.manual_seed(0)
    if kind == "mlp":
        model, x = MLP(64, 3, (128, 64)), torch.randn(300, 64)
    else:
        model, x = CNN((3, 16, 16), 3, (16, 32), 64), torch.randn(300, 3, 16, 16)
    labels = torch.randint(0, 3, (300,))
    groups = unit_groups(model)
    for sparsity in (0.3, 0.5, 0.9):
        masks = select_units(model, MISelector(), sparsity, x, labels, allocation=allocation)
        assert all(int(mask.sum()) >= 1 for mask in masks.values())
        assert abs(unit_sparsity(model, groups, masks) - sparsity) < 0.02, (sparsity, allocation)


def test_single_class_labels_carry_no_information() -> None:
    """A client whose data hold one class (label skew): every MI is 0, selection still works."""
    torch.manual_seed(0)
    units, labels = torch.randn(40, 5), torch.zeros(40, dtype=torch.long)
    for estimator in (GaussianMI(), BinnedMI()):
        assert torch.equal(estimator.scores(units, labels).abs(), torch.zeros(5))
        assert estimator.mi(units[:, 0], labels) == 0.0
    model = MLP(64, 3, (32, 16))
    groups = unit_groups(model)
    for allocation in ("uniform", "global"):
        masks = select_units(model, MISelector(), 0.5, torch.randn(60, 64), torch.ones(60, dtype=torch.long),
                             allocation=allocation)
        assert abs(unit_sparsity(model, groups, masks) - 0.5) < 0.05


def test_uniform_keeps_equal_fractions_and_global_meets_budget() -> None:
    model = MLP(4, 2, (64, 8))
    torch.manual_seed(1)
    x = torch.randn(500, 4)
    uniform = select_units(model, L1Selector(), 0.5, allocation="uniform")
    fractions = {name: float(mask.float().mean()) for name, mask in uniform.items()}
    assert max(fractions.values()) - min(fractions.values()) < 0.05
    glob = select_units(model, MISelector(), 0.5, x, torch.randint(0, 2, (500,)), allocation="global")
    assert abs(unit_sparsity(model, unit_groups(model), glob) - 0.5) < 0.05


def test_l1_keeps_largest_norm_units() -> None:
    torch.manual_seed(2)
    model = MLP(10, 3, (12,))
    w0, w1 = model.body[0].weight.detach(), model.head.weight.detach()
    norms = w0.abs().sum(1) + w1.abs().sum(0)
    masks = select_units(model, L1Selector(), 0.5)
    kept = int(masks["body.0"].sum())
    assert kept == 6
    assert set(masks["body.0"].nonzero().flatten().tolist()) == set(torch.topk(norms, kept).indices.tolist())


def test_random_is_seeded() -> None:
    model = MLP(10, 3, (40, 20))
    a = select_units(model, RandomSelector(), 0.5, seed=1)
    b = select_units(model, RandomSelector(), 0.5, seed=1)
    c = select_units(model, RandomSelector(), 0.5, seed=2)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)
    assert abs(unit_sparsity(model, unit_groups(model), a) - 0.5) < 0.05


def test_batches_and_tensor_inputs_agree_and_rows_are_bounded() -> None:
    torch.manual_seed(3)
    model = MLP(8, 2, (16, 8))
    x, labels = torch.randn(120, 8), torch.randint(0, 2, (120,))
    batches = [(x[i : i + 32], labels[i : i + 32]) for i in range(0, 120, 32)]
    a = select_units(model, MISelector(), 0.5, x, labels)
    b = select_units(model, MISelector(), 0.5, batches)
    assert all(torch.equal(a[name], b[name]) for name in a)
    acts, found = collect_activations(model, unit_groups(model), batches, max_rows=50)
    assert found.shape == (50,) and acts["body.0"].shape == (50, 16)
    acts, _ = collect_activations(model, unit_groups(model), x, labels, max_rows=50)
    assert acts["body.2"].shape == (50, 8)
    assert model.training  # restored after collection


def test_mi_selection_on_tiny_bert() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
    )
    model = BertForSequenceClassification(config)
    ids = torch.randint(0, 50, (64, 12))
    attention = torch.ones(64, 12, dtype=torch.long)
    attention[::2, 8:] = 0
    labels = torch.randint(0, 2, (64,))
    inputs = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    for allocation in ("uniform", "global", "kind"):
        masks = select_units(model, MISelector(), 0.5, inputs, allocation=allocation)
        assert set(masks) == {g.name for g in unit_groups(model)}
        assert all(mask.any() for mask in masks.values())
        assert abs(unit_sparsity(model, unit_groups(model), masks) - 0.5) < 0.1


def test_families_label_unit_kinds_across_layers() -> None:
    assert [g.kind for g in unit_groups(MLP(8, 2, (16, 16, 4)))] == ["mlp_hidden"] * 3
    assert [g.kind for g in unit_groups(CNN((1, 8, 8), 3, (4, 6), 8))] == ["conv_channel", "conv_channel",
                                                                           "fc_hidden"]


def test_kind_allocation_spreads_each_kinds_global_share_evenly() -> None:
    """Hand-made rankings where ``global`` keeps every unit of layer 0 and few of layer 1:
    ``kind`` keeps one fraction in both layers, at the parameter budget."""
    model = MLP(8, 2, (16, 16))  # body.0 and body.2 are one kind; each unit owns 8 + 16 or 16 + 2 weights
    groups = unit_groups(model)
    budget = ParamBudget(model, groups)
    flat = (torch.arange(16), torch.ones(16))  # all scores at the group maximum: never removed first
    steep = (torch.arange(16), torch.linspace(1.0, 0.0, 16))
    glob = global_counts(budget, [flat, steep], 0.5)
    assert glob[0] == 16 and glob[1] < 8
    kind = kind_counts(budget, groups, [flat, steep], 0.5)
    assert kind[0] == kind[1]
    # same kept fraction in both layers, scaled so that the parameter budget holds
    assert abs(budget.sparsity(kind) - 0.5) <= abs(budget.sparsity([kind[0] + 1] * 2) - 0.5)
    assert abs(budget.sparsity(kind) - 0.5) <= abs(budget.sparsity([kind[0] - 1] * 2) - 0.5)


def test_kind_allocation_keeps_one_fraction_per_kind_on_bert() -> None:
    """Heads and FFN neurons may keep different fractions; layers of one kind keep the same."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    inputs = {"input_ids": torch.randint(0, 50, (64, 12)), "labels": torch.randint(0, 2, (64,))}
    masks = select_units(model, MISelector(), 0.5, inputs, allocation="kind")
    heads = {int(mask.sum()) for name, mask in masks.items() if name.endswith("heads")}
    ffn = {int(mask.sum()) for name, mask in masks.items() if name.endswith("ffn")}
    assert len(heads) == 1 and len(ffn) == 1
    assert abs(unit_sparsity(model, unit_groups(model), masks) - 0.5) < 0.05
