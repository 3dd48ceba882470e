"""Unit selectors: how a structured pruner ranks the units of every group, best first.

``fedprune.pruning.structured.select_units`` turns rankings into unit masks at a
parameter sparsity (with an allocation of kept units over groups); a selector only
ranks. Three small classes:

* ``MISelector``: layer-wise mutual information, top-down from the labels (Fan et al.
  2021). The last group (the one feeding the classifier) is scored by I(unit; labels),
  every group below by I(unit; kept units of the next group up), so its rankings depend
  on how many units the groups above keep (``top_down``).
* ``L1Selector``: the L1 norm of the weight entries each unit owns.
* ``RandomSelector``: a seeded random order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from fedprune.models.structure import UnitGroup
from fedprune.pruning.mi import ESTIMATORS, greedy_order, make_estimator
from fedprune.pruning.structured import Data, Ranking, collect_activations, ranking

__all__ = ["L1Selector", "MISelector", "RandomSelector", "UnitSelector", "l1_scores"]


class UnitSelector(ABC):
    """Ranks every group's units; ``prepare`` runs once per selection, ``rank`` once or twice."""

    #: rankings depend on the kept counts of the groups above (ranked again once counts are final)
    top_down: ClassVar[bool] = False
    #: ``prepare`` reads the data (activations); selectors without it ignore ``data``
    needs_data: ClassVar[bool] = False

    def prepare(self, model: nn.Module, groups: list[UnitGroup], data: Data | None,
                labels: torch.Tensor | None, seed: int) -> Any:
        """Whatever ``rank`` needs from the model and the data (computed once)."""
        return None

    @abstractmethod
    def rank(self, model: nn.Module, groups: list[UnitGroup], counts: list[int], prepared: Any,
             final: bool) -> list[Ranking]:
        """One ranking per group. ``counts`` are the units each group will keep so far;
        ``final`` is True when they will not change any more."""


def l1_scores(model: nn.Module, group: UnitGroup) -> torch.Tensor:
    """L1 norm of the weight entries (>= 2-D parameters) each unit owns."""
    params = dict(model.named_parameters())
    total = torch.zeros(group.size, dtype=torch.float64)
    for piece in group.slices:
        weight = params[piece.param].detach()
        if weight.dim() < 2:
            continue
        others = [d for d in range(weight.dim()) if d != piece.dim]
        total += weight.abs().sum(dim=others).view(group.size, piece.block).sum(dim=1).cpu().double()
    return total


class L1Selector(UnitSelector):
    """Largest L1 weight norm first."""

    def rank(self, model: nn.Module, groups: list[UnitGroup], counts: list[int], prepared: Any,
             final: bool) -> list[Ranking]:
        return [ranking(l1_scores(model, group)) for group in groups]


class RandomSelector(UnitSelector):
    """A random order per group, drawn from ``seed``."""

    def prepare(self, model: nn.Module, groups: list[UnitGroup], data: Data | None,
                labels: torch.Tensor | None, seed: int) -> list[Ranking]:
        generator = torch.Generator().manual_seed(seed)
        return [ranking(torch.rand(group.size, generator=generator)) for group in groups]

    def rank(self, model: nn.Module, groups: list[UnitGroup], counts: list[int], prepared: Any,
             final: bool) -> list[Ranking]:
        return list(prepared)


class MISelector(UnitSelector):
    """Top-down mutual information with the labels and the kept units above.

    ``estimator``: ``gaussian`` or ``binned`` (``fedprune.pruning.mi``); ``greedy``:
    redundancy-aware forward selection by Gaussian conditional MI (its scores are the
    running minimum of the pick gains, so the top-m units by score are the first m
    picks); ``max_rows``: at most this many examples feed the activations;
    ``batch_size``: rows per forward pass.
    """

    top_down = True
    needs_data = True

    def __init__(self, estimator: str = "gaussian", greedy: bool = False, max_rows: int = 2048,
                 batch_size: int = 256) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: unknown {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
        if greedy and estimator != "gaussian":
            raise ValueError("greedy selection uses the Gaussian conditional MI: set estimator='gaussian'")
        self.estimator, self.greedy, self.max_rows, self.batch_size = estimator, greedy, max_rows, batch_size

    def prepare(self, model: nn.Module, groups: list[UnitGroup], data: Data | None,
                labels: torch.Tensor | None, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if data is None:
            raise ValueError("MI selection needs data")
        acts, found = collect_activations(model, groups, data, labels, self.max_rows, self.batch_size, seed)
        if found is None:
            raise ValueError("MI selection needs labels (argument or inside the batches)")
        return acts, found

    def rank(self, model: nn.Module, groups: list[UnitGroup], counts: list[int], prepared: Any,
             final: bool) -> list[Ranking]:
        """Group g's target is the top ``counts`` units of the group above (the labels for the
        last group). Greedy selection makes only ``counts[g]`` picks when ``final``."""
        acts, labels = prepared
        scorer = make_estimator(self.estimator)
        rankings: list[Ranking] = []
        target = labels
        for index in reversed(range(len(groups))):
            units = acts[groups[index].name]
            if self.greedy:
                order, gains = greedy_order(units, target, counts[index] if final else None)
                rankings.append((order, torch.cummin(gains, dim=0).values))
            else:
                rankings.append(ranking(scorer.scores(units, target)))
            kept = rankings[-1][0][: counts[index]].sort().values
            target = units[:, kept]
        return rankings[::-1]
