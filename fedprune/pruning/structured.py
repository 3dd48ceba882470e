"""Structured (whole-unit) selection: unit masks at a parameter sparsity from unit rankings.

``select_units(model, selector, sparsity, data)`` returns a unit mask per group (True =
kept) so that the *parameter* sparsity over the groups' weights (``weight_names``: every
>= 2-D parameter a group owns a slice of; biases, embeddings, norms and the classifier's
own rows are not counted) is close to ``sparsity``. The ranking of units comes from a
``UnitSelector`` (``fedprune.pruning.selectors``: MI, L1, random); this module decides how
many units each group keeps and collects the activations MI scores are computed on.
Activations come from forward hooks (``fedprune.models.structure``) on at most
``max_rows`` examples, in eval mode under ``torch.no_grad``.

Allocation:

* ``uniform``: every group keeps the same fraction f (at least 1 unit), f found by
  bisection so that the parameter sparsity is as close to the target as the integer
  counts allow.
* ``global``: scores are normalised within each group (score / max score in the group,
  negative scores clipped to 0); units are removed in increasing normalised score
  (each group from its worst unit up, never its last unit) until the budget is met. For
  a top-down selector (MI) the scores of that ranking come from a first top-down pass
  with the uniform counts; the counts it yields are then filled by a second top-down pass
  so that every group's target is the final kept set of the group above. Caveat: a group
  with few units (4-12 heads) often has all its scores near its own maximum, so global
  mode tends to keep heads and prune FFN neurons harder.
* ``kind``: the global ranking decides how much of each *kind* of unit is kept (the
  ``UnitGroup.kind`` the model family gives: BERT heads, BERT FFN neurons, the hidden
  neurons of an MLP, CNN channels); every layer then keeps the same fraction of a kind (one
  scale factor, found by bisection, meets the budget). Scores of different layers are
  measured against different targets, so they set proportions between kinds, not
  between layers: on MiniLM the per-layer counts of ``global`` range from 116 to 840
  FFN neurons, while ``kind`` keeps every head and 384 FFN neurons in each layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedprune.models import family_of
from fedprune.models.structure import (
    UnitGroup,
    expand_unit_mask,
    reduce_activation,
    unit_groups,
    weight_names,
)

if TYPE_CHECKING:
    from fedprune.pruning.selectors import UnitSelector

ALLOCATIONS = ("uniform", "global", "kind")
LABEL_KEYS = ("labels", "label")

Data = torch.Tensor | Mapping[str, torch.Tensor] | Iterable
Ranking = tuple[torch.Tensor, torch.Tensor]  # unit indices best first, their scores


class ParamBudget:
    """Kept weight entries as a closed form of the per-group kept counts.

    Exact because every (param, dim) has a single owner (``unit_groups`` checks it):
    a weight keeps prod over dims of (owner's kept units * block, or the full size).
    """

    def __init__(self, model: nn.Module, groups: list[UnitGroup]) -> None:
        params = dict(model.named_parameters())
        self.shapes = {name: tuple(params[name].shape) for name in weight_names(model, groups)}
        self.owner: dict[str, dict[int, tuple[int, int]]] = {name: {} for name in self.shapes}
        self.touches: list[list[str]] = [[] for _ in groups]
        for index, group in enumerate(groups):
            for piece in group.slices:
                if piece.param in self.shapes:
                    self.owner[piece.param][piece.dim] = (index, piece.block)
                    self.touches[index].append(piece.param)
        self.total = sum(math.prod(shape) for shape in self.shapes.values())

    def param_kept(self, name: str, counts: list[int]) -> int:
        """Kept entries of weight ``name`` for the given per-group counts."""
        owned = self.owner[name]
        return math.prod(
            counts[owned[d][0]] * owned[d][1] if d in owned else size
            for d, size in enumerate(self.shapes[name])
        )

    def kept(self, counts: list[int]) -> int:
        """Kept weight entries over all counted weights."""
        return sum(self.param_kept(name, counts) for name in self.shapes)

    def sparsity(self, counts: list[int]) -> float:
        """Pruned fraction of the counted weights."""
        return 1.0 - self.kept(counts) / self.total if self.total else 0.0


def unit_sparsity(model: nn.Module, groups: list[UnitGroup], unit_masks: dict[str, torch.Tensor]) -> float:
    """Exact parameter sparsity of ``unit_masks`` over ``weight_names`` (via expand_unit_mask)."""
    masks = expand_unit_mask(model, groups, unit_masks)
    params = dict(model.named_parameters())
    names = weight_names(model, groups)
    total = sum(params[name].numel() for name in names)
    return 1.0 - sum(int(masks[name].sum()) if name in masks else params[name].numel() for name in names) / total


def uniform_counts(budget: ParamBudget, sizes: list[int], sparsity: float,
                   shares: list[float] | None = None, fixed: Mapping[int, int] | None = None) -> list[int]:
    """Kept fraction ``t * share`` in every group (>= 1 unit, shares default 1), with
    the scale ``t`` whose sparsity is closest to the target; group ``i`` in ``fixed``
    keeps ``fixed[i]`` units whatever ``t``."""
    shares = shares or [1.0] * len(sizes)
    fixed = fixed or {}

    def counts(fraction: float) -> list[int]:
        return [fixed[i] if i in fixed else min(size, max(1, round(fraction * share * size)))
                for i, (size, share) in enumerate(zip(sizes, shares, strict=True))]

    # sparsity(counts(low)) > target >= sparsity(counts(high))
    low, high = 0.0, 1.0 / min(shares)  # global_counts keeps >= 1 unit per group: shares > 0
    if budget.sparsity(counts(low)) <= sparsity:
        return counts(low)
    for _ in range(50):
        middle = (low + high) / 2
        if budget.sparsity(counts(middle)) > sparsity:
            low = middle
        else:
            high = middle
    return min(counts(low), counts(high), key=lambda c: abs(budget.sparsity(c) - sparsity))


def global_counts(budget: ParamBudget, rankings: list[Ranking], sparsity: float,
                  fixed: Mapping[int, int] | None = None) -> list[int]:
    """Remove units in increasing normalised score until the budget is met (>= 1 per group;
    a group in ``fixed`` keeps its given count)."""
    fixed = fixed or {}
    counts = [fixed.get(index, len(order)) for index, (order, _) in enumerate(rankings)]
    queue = []
    for index, (_, ranked) in enumerate(rankings):
        if index in fixed:
            continue
        normalised = ranked.clamp_min(0) / max(float(ranked.max()), 1e-12)
        queue += [(float(normalised[pos]), -pos, index) for pos in range(1, len(ranked))]
    queue.sort()
    goal = (1.0 - sparsity) * budget.total
    kept = {name: budget.param_kept(name, counts) for name in budget.shapes}
    total = sum(kept.values())
    for _, _, index in queue:
        if total <= goal:
            break
        previous = total
        counts[index] -= 1
        for name in budget.touches[index]:
            total -= kept[name]
            kept[name] = budget.param_kept(name, counts)
            total += kept[name]
        if total < goal and goal - total > previous - goal:
            counts[index] += 1  # the step before was closer to the target
            break
    return counts


def kind_counts(budget: ParamBudget, groups: list[UnitGroup], rankings: list[Ranking],
                sparsity: float, fixed: Mapping[int, int] | None = None) -> list[int]:
    """``global_counts`` pooled per kind (``UnitGroup.kind``, as the model family labels its
    groups), then spread as one kept fraction per kind (``fixed`` groups keep their count)."""
    kept = global_counts(budget, rankings, sparsity, fixed)
    kinds = [group.kind for group in groups]
    totals: dict[str, list[int]] = {}
    for kind, group, count in zip(kinds, groups, kept, strict=True):
        total = totals.setdefault(kind, [0, 0])
        total[0] += count
        total[1] += group.size
    shares = [totals[kind][0] / totals[kind][1] for kind in kinds]
    return uniform_counts(budget, [group.size for group in groups], sparsity, shares, fixed)


def allocated_counts(allocation: str, budget: ParamBudget, groups: list[UnitGroup],
                     rankings: list[Ranking], sparsity: float, uniform: list[int],
                     fixed: Mapping[int, int] | None = None) -> list[int]:
    """Kept units per group under ``allocation`` (``uniform`` returns the given ``uniform`` counts)."""
    if allocation == "global":
        return global_counts(budget, rankings, sparsity, fixed)
    if allocation == "kind":
        return kind_counts(budget, groups, rankings, sparsity, fixed)
    return uniform


def ranking(scores: torch.Tensor) -> Ranking:
    """Units best first (stable on ties) and their scores in that order."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order, scores[order]


def _batches(
    data: Data, labels: torch.Tensor | None, max_rows: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor | dict, torch.Tensor | None]]:
    """``(inputs, labels)`` batches; a whole tensor/mapping is subsampled to ``max_rows``."""
    if isinstance(data, (torch.Tensor, Mapping)):
        if labels is None and isinstance(data, Mapping):
            labels = next((data[key] for key in LABEL_KEYS if key in data), None)
        rows = torch.arange(_rows(data))
        if len(rows) > max_rows:
            generator = torch.Generator().manual_seed(seed)
            rows = torch.randperm(len(rows), generator=generator)[:max_rows].sort().values
        for start in range(0, len(rows), batch_size):
            index = rows[start : start + batch_size]
            yield _take(data, index), None if labels is None else labels[index]
        return
    offset = 0
    for batch in data:
        if isinstance(batch, (tuple, list)):
            inputs, batch_labels = batch[0], batch[1]
        elif isinstance(batch, Mapping):
            inputs = batch
            batch_labels = next((batch[key] for key in LABEL_KEYS if key in batch), None)
        else:
            inputs, batch_labels = batch, None
        size = _rows(inputs)
        if labels is not None:
            batch_labels = labels[offset : offset + size]
        offset += size
        yield inputs, batch_labels


def _take(data: torch.Tensor | Mapping, index: torch.Tensor) -> torch.Tensor | dict:
    if isinstance(data, torch.Tensor):
        return data[index]
    return {key: value[index] if isinstance(value, torch.Tensor) else value for key, value in data.items()}


def _rows(inputs: torch.Tensor | Mapping) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    return next(value for value in inputs.values() if isinstance(value, torch.Tensor)).shape[0]


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    groups: list[UnitGroup],
    data: Data,
    labels: torch.Tensor | None = None,
    max_rows: int = 2048,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Per-group activations ``(rows, size)`` (float32, CPU) and the matching labels.

    ``data``: a tensor of inputs, a mapping of model keyword inputs (``input_ids``,
    ``attention_mask``...), or an iterable of batches (tensors, ``(x, y)`` pairs or
    mappings with an optional ``labels``/``label`` key). Whole tensors/mappings larger
    than ``max_rows`` are subsampled (seeded); iterables are read until ``max_rows`` rows.
    ``labels`` (optional) are aligned with the rows of ``data``.
    """
    modules = dict(model.named_modules())
    stored: dict[str, list[torch.Tensor]] = {group.name: [] for group in groups}
    state: dict[str, torch.Tensor | None] = {"token_mask": None}
    handles = []

    def make_hook(group: UnitGroup):
        source = group.source

        def keep(value: torch.Tensor) -> None:
            reduced = reduce_activation(source, value, state["token_mask"])
            stored[group.name].append(reduced.float().cpu())

        if source.hook == "input":
            return modules[source.module].register_forward_pre_hook(lambda _m, args: keep(args[0]))
        return modules[source.module].register_forward_hook(lambda _m, _a, out: keep(out))

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    label_parts, rows = [], 0
    try:
        handles = [make_hook(group) for group in groups]
        for inputs, batch_labels in _batches(data, labels, max_rows, batch_size, seed):
            if isinstance(inputs, Mapping):
                kwargs = {
                    key: value.to(device) if isinstance(value, torch.Tensor) else value
                    for key, value in inputs.items()
                    if key not in LABEL_KEYS
                }
                state["token_mask"] = kwargs.get("attention_mask")
                model(**kwargs)
            else:
                # packed text inputs: the model family says which tokens are real
                token_mask = family_of(model).token_mask(model, inputs)
                state["token_mask"] = None if token_mask is None else token_mask.to(device)
                model(inputs.to(device))
            if batch_labels is not None:
                label_parts.append(torch.as_tensor(batch_labels).cpu())
            rows += _rows(inputs)
            if rows >= max_rows:
                break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    acts = {name: torch.cat(parts)[:max_rows] for name, parts in stored.items()}
    all_labels = torch.cat(label_parts)[:max_rows] if label_parts else None
    return acts, all_labels


def _masks(groups: list[UnitGroup], rankings: list[Ranking], counts: list[int]) -> dict[str, torch.Tensor]:
    masks = {}
    for group, (order, _), count in zip(groups, rankings, counts, strict=True):
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[order[:count]] = True
        masks[group.name] = mask
    return masks


def select_units(
    model: nn.Module,
    selector: UnitSelector,
    sparsity: float = 0.5,
    data: Data | None = None,
    labels: torch.Tensor | None = None,
    *,
    allocation: str = "uniform",
    seed: int = 0,
    groups: list[UnitGroup] | None = None,
    fixed: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Unit masks (group name -> bool vector, True = kept) at parameter ``sparsity``.

    ``selector`` ranks the units (``MISelector`` needs ``data`` with labels, given or
    inside the batches; the others ignore it); ``allocation`` spreads the kept units
    over the groups; ``seed`` feeds the selector (random order, row subsampling);
    ``fixed`` maps group names to the count they keep whatever the allocation (1 to the
    group's size). At least one unit per group is kept, so very high targets may be
    unreachable.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation: unknown {allocation!r}; allowed: {', '.join(ALLOCATIONS)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    groups = unit_groups(model) if groups is None else groups
    index = {group.name: i for i, group in enumerate(groups)}
    pinned = {index[name]: count for name, count in (fixed or {}).items()}
    for name, count in (fixed or {}).items():
        if not 1 <= count <= groups[index[name]].size:
            raise ValueError(f"fixed: group {name} cannot keep {count} of {groups[index[name]].size} units")
    budget = ParamBudget(model, groups)
    counts = uniform_counts(budget, [group.size for group in groups], sparsity, fixed=pinned)
    prepared = selector.prepare(model, groups, data, labels, seed)
    uniform = allocation == "uniform"
    rankings = selector.rank(model, groups, counts, prepared, final=uniform or not selector.top_down)
    if not uniform:
        counts = allocated_counts(allocation, budget, groups, rankings, sparsity, counts, pinned)
        if selector.top_down:
            rankings = selector.rank(model, groups, counts, prepared, final=True)
    return _masks(groups, rankings, counts)
