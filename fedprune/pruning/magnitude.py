"""Magnitude pruning: keep the largest |w| per layer (``gmp``) or across all layers (``gmp-global``).

With the cubic schedule this is gradual magnitude pruning (Zhu & Gupta 2017).
"""

from __future__ import annotations

import torch
from torch import nn

from fedprune.pruning.masks import Masks, full_masks
from fedprune.pruning.pruner import PruneData, Pruner

SCOPES = ("layer", "global")


def keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest scores (ties broken by position)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(scores.reshape(-1), keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module, current: Masks, sparsity: float, scope: str = "layer"
) -> Masks:
    """New masks at ``sparsity`` that keep the largest |w| among entries ``current`` keeps.

    Pruned entries never come back: the new mask is a subset of ``current``.
    ``scope="layer"`` prunes each weight to ``sparsity``; ``"global"`` ranks all
    prunable weights together, so layers end up with different sparsities.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope: unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    params = dict(model.named_parameters())
    scores = {
        name: params[name].abs().masked_fill(~mask, -1.0) for name, mask in current.items()
    }
    if scope == "layer":
        return {
            name: keep_top(score, min(round(score.numel() * (1 - sparsity)), int(current[name].sum())))
            for name, score in scores.items()
        }
    flat = torch.cat([score.reshape(-1) for score in scores.values()])
    kept_now = sum(int(mask.sum()) for mask in current.values())
    flat_mask = keep_top(flat, min(round(flat.numel() * (1 - sparsity)), kept_now))
    masks, offset = {}, 0
    for name, score in scores.items():
        masks[name] = flat_mask[offset : offset + score.numel()].reshape(score.shape)
        offset += score.numel()
    return masks


class MagnitudePruner(Pruner):
    """Each prunable weight keeps its largest |w| among the entries it still keeps."""

    scope = "layer"

    def prune(self, model: nn.Module, current: Masks | None, sparsity: float, data: PruneData) -> Masks:
        return magnitude_masks(model, current or full_masks(model), sparsity, self.scope)


class GlobalMagnitudePruner(MagnitudePruner):
    """One |w| threshold over all prunable weights together (layers end at different sparsities)."""

    scope = "global"
