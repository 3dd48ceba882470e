"""Random unstructured masks: each prunable weight keeps a uniformly random subset."""

from __future__ import annotations

import torch
from torch import nn

from fedprune.pruning.magnitude import keep_top
from fedprune.pruning.masks import Masks, prunable_names


def random_masks(model: nn.Module, sparsity: float, generator: torch.Generator) -> Masks:
    """Per weight, keep ``round(numel * (1 - sparsity))`` entries chosen at random."""
    params = dict(model.named_parameters())
    masks = {}
    for name in prunable_names(model):
        scores = torch.rand(params[name].shape, generator=generator)
        masks[name] = keep_top(scores, round(scores.numel() * (1 - sparsity)))
    return masks
