"""Random unstructured masks: each prunable weight keeps a uniformly random subset, drawn once."""

from __future__ import annotations

import torch
from torch import nn

from fedprune.pruning.magnitude import keep_top
from fedprune.pruning.masks import Masks, prunable_names
from fedprune.pruning.pruner import PruneData, Pruner


def random_masks(model: nn.Module, sparsity: float, generator: torch.Generator) -> Masks:
    """Per weight, keep ``round(numel * (1 - sparsity))`` entries chosen at random."""
    params = dict(model.named_parameters())
    masks = {}
    for name in prunable_names(model):
        scores = torch.rand(params[name].shape, generator=generator)
        masks[name] = keep_top(scores, round(scores.numel() * (1 - sparsity)))
    return masks


class RandomPruner(Pruner):
    """A random mask at the schedule's final sparsity, drawn at the first pruning step
    (seeded by client), then fixed: a baseline that uses neither weights nor data."""

    def sparsity_at(self, step: int) -> float | None:
        return self.schedule.final if self.schedule.prunes_at(step) else None

    def prune(self, model: nn.Module, current: Masks | None, sparsity: float, data: PruneData) -> Masks:
        if current is not None:
            return current
        return random_masks(model, sparsity, torch.Generator().manual_seed(data.seed_for("random-mask", data.client)))
